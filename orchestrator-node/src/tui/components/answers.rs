//! The answers so far, newest last, each with its author and the votes it holds at the
//! current revision (a bar and a count).

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::truncate;
use crate::tui::state::App;

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let tally = app.tally();
    let height = usize::from(area.height.saturating_sub(2));
    let width = usize::from(area.width.saturating_sub(2));
    let lines: Vec<Line> = if tally.is_empty() {
        vec![Line::styled(
            "no answer yet",
            Style::default().fg(Color::DarkGray),
        )]
    } else {
        // The newest answers matter most when they do not all fit.
        let skip = tally.len().saturating_sub(height);
        tally
            .iter()
            .zip(&app.answers)
            .skip(skip)
            .map(|((label, votes), answer)| {
                let bar = "■".repeat((*votes).min(10));
                let head = format!("{label:<10} {:<10} ", truncate(&answer.agent, 10));
                let preview_width =
                    width.saturating_sub(head.chars().count() + bar.chars().count() + 5);
                let preview = answer
                    .content
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                Line::from(vec![
                    Span::styled(head, Style::default().add_modifier(Modifier::BOLD)),
                    Span::styled(
                        format!("{bar} {votes} "),
                        Style::default().fg(Color::Yellow),
                    ),
                    Span::styled(
                        truncate(&preview, preview_width),
                        Style::default().fg(Color::Gray),
                    ),
                ])
            })
            .collect()
    };
    let title = format!(
        " answers ({}) · votes at revision {} ",
        app.answers.len(),
        app.revision
    );
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(truncate(&title, width))),
        area,
    );
}
