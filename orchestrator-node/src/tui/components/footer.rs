//! The key line: what the keys do in the current view.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;

use super::{agents, text_view, truncate};
use crate::tui::state::{App, View};

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let keys = if app.over {
        "session over · q leave · f final answer · a answers · Esc agents · ? help"
    } else if app.interrupted {
        "ending the session… Ctrl-C again quits at once"
    } else {
        match app.view {
            View::Agents | View::Zoom => agents::HELP,
            View::Answer(_) | View::Final => text_view::HELP,
        }
    };
    let line = Line::from(format!(" {}", truncate(keys, usize::from(area.width))))
        .style(Style::default().bg(Color::DarkGray).fg(Color::White));
    frame.render_widget(Paragraph::new(line), area);
}
