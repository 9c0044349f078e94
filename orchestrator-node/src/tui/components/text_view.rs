//! One answer, or the final answer, in its own view, wrapped and scrollable.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Wrap};

use super::truncate;
use crate::tui::state::App;

pub const HELP: &str = "↑↓ scroll · ←→ other answers · Esc agents · f final · ? help · q end";

pub fn draw_answer(frame: &mut Frame<'_>, area: Rect, app: &App, at: usize) {
    let Some(answer) = app.answers.get(at) else {
        return;
    };
    let tally = app.tally();
    let votes = tally.get(at).map(|(_, v)| *v).unwrap_or(0);
    let title = format!(
        " answer {} by {} · revision {} · {votes} vote(s) · {}/{} ",
        answer.label,
        answer.agent,
        answer.revision,
        at + 1,
        app.answers.len()
    );
    draw_text(
        frame,
        area,
        &title,
        &answer.content,
        app.text_scroll,
        Color::Cyan,
    );
}

pub fn draw_final(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let Some(done) = &app.final_answer else {
        return;
    };
    let by = match (&done.label, &done.winner) {
        (Some(label), Some(winner)) => format!(" — {label} by {winner}"),
        _ => String::new(),
    };
    let title = format!(" final answer ({}{by}) ", done.reason);
    draw_text(
        frame,
        area,
        &title,
        &done.content,
        app.text_scroll,
        Color::Green,
    );
}

fn draw_text(
    frame: &mut Frame<'_>,
    area: Rect,
    title: &str,
    text: &str,
    scroll: usize,
    color: Color,
) {
    let width = usize::from(area.width.saturating_sub(2));
    let lines: Vec<Line> = text.lines().map(|l| Line::from(l.to_owned())).collect();
    let block = Block::bordered()
        .border_style(Style::default().fg(color))
        .title(Line::styled(
            truncate(title, width),
            Style::default().add_modifier(Modifier::BOLD),
        ));
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false })
            .scroll((u16::try_from(scroll).unwrap_or(u16::MAX), 0)),
        area,
    );
}
