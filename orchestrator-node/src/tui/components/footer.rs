//! The key line: what the keys do in the current view, or for a few seconds the latest log
//! line (see [`crate::tui::stderr`]).

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;

use super::{agents, text_view, truncate};
use crate::tui::state::{App, View};

/// How long a log line stays in the key line.
const NOTICE_FOR: Duration = Duration::from_secs(5);

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    if !app.over
        && let Some((notice, since)) = &app.notice
        && app.elapsed.saturating_sub(*since) < NOTICE_FOR
    {
        let line = Line::from(format!(
            " ⚠ {}",
            truncate(notice.trim(), usize::from(area.width).saturating_sub(3))
        ))
        .style(Style::default().bg(Color::Yellow).fg(Color::Black));
        frame.render_widget(Paragraph::new(line), area);
        return;
    }
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
