//! The header: the question, then the elapsed time, the revision, the tokens, the cost and
//! how the session stands.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::truncate;
use crate::tui::state::App;

pub const HEIGHT: u16 = 2;

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let bar = Style::default().bg(Color::Blue).fg(Color::White);
    let question = app
        .question
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let width = usize::from(area.width);
    let first = Line::from(vec![
        Span::styled(" conclave ", bar.add_modifier(Modifier::BOLD)),
        Span::styled(
            format!(" {}", truncate(&question, width.saturating_sub(11))),
            bar,
        ),
    ])
    .style(bar);
    let cost = match app.cost_usd {
        Some(usd) => format!(" · ${usd:.4}"),
        None => String::new(),
    };
    let state = if let Some(status) = &app.status {
        status.clone()
    } else if app.interrupted {
        "ending with the best answer so far (Ctrl-C again: quit at once)".to_owned()
    } else {
        format!("{} agent(s) at work", app.agents.len())
    };
    let figures = format!(
        " {:.1} s · revision {} · {} in / {} out tokens{cost} · ",
        app.elapsed.as_secs_f64(),
        app.revision,
        app.input_tokens,
        app.output_tokens,
    );
    let second = Line::from(vec![
        Span::raw(figures.clone()),
        Span::styled(
            truncate(&state, width.saturating_sub(figures.chars().count())),
            Style::default().add_modifier(Modifier::BOLD),
        ),
    ])
    .style(Style::default().bg(Color::Black).fg(Color::White));
    frame.render_widget(Paragraph::new(vec![first, second]), area);
}
