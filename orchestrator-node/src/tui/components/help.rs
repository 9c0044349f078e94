//! `?`: every key, in a box over the screen; any key closes it.

use ratatui::Frame;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph};

const KEYS: &[(&str, &str)] = &[
    ("Tab → l / ⇤ ← h", "focus the next / previous agent"),
    ("1 … 9", "focus agent n"),
    ("↑ ↓ k j, PgUp PgDn", "scroll (back in the stream)"),
    ("End G", "follow the stream again"),
    ("Enter z", "full-screen the focused agent"),
    ("r", "fold / unfold reasoning"),
    ("a, then ← →", "open the answers"),
    ("f", "open the final answer"),
    ("Esc", "back to the agents"),
    ("q Ctrl-C", "end the session with the best answer so far"),
    ("", "(after the end: leave)"),
    ("?", "this help"),
];

pub fn draw(frame: &mut Frame<'_>, area: Rect) {
    let height = KEYS.len() as u16 + 2;
    let [row] = Layout::vertical([Constraint::Length(height)])
        .flex(Flex::Center)
        .areas(area);
    let [box_area] = Layout::horizontal([Constraint::Length(66)])
        .flex(Flex::Center)
        .areas(row);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(key, what)| Line::from(format!(" {key:<20} {what}")))
        .collect();
    frame.render_widget(Clear, box_area);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(" keys ")
                .title_style(Style::default().add_modifier(Modifier::BOLD)),
        ),
        box_area,
    );
}
