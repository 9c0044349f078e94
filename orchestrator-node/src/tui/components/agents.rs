//! The agents' panes: one per agent with its live stream, its state, the node it runs on and
//! its latest decision. Up to eight sit side by side; more make a grid, and past what the
//! screen holds, pages that follow the focused agent.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph};

use super::{state_style, truncate};
use crate::tui::state::{AgentView, App, LineKind};

pub const HELP: &str =
    "Tab/←→ focus · ↑↓ scroll · Enter zoom · r reasoning · a answers · f final · ? help · q end";

/// Narrower panes are unreadable.
const MIN_PANE_WIDTH: u16 = 26;
const MAX_SIDE_BY_SIDE: u16 = 8;
/// Lower grid rows are unreadable.
const MIN_PANE_HEIGHT: u16 = 6;

/// How the panes are laid out on `area` for `count` agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub columns: usize,
    pub rows: usize,
}

impl Grid {
    pub fn for_area(area: Rect, count: usize) -> Grid {
        let fit_columns = usize::from((area.width / MIN_PANE_WIDTH).clamp(1, MAX_SIDE_BY_SIDE));
        if count <= fit_columns {
            return Grid {
                columns: count.max(1),
                rows: 1,
            };
        }
        let fit_rows = usize::from((area.height / MIN_PANE_HEIGHT).max(1));
        Grid {
            columns: fit_columns,
            rows: count.div_ceil(fit_columns).min(fit_rows),
        }
    }

    pub fn per_page(&self) -> usize {
        self.columns * self.rows
    }
}

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let count = app.agents.len();
    if count == 0 {
        frame.render_widget(
            Paragraph::new("waiting for the agents…").block(Block::bordered()),
            area,
        );
        return;
    }
    let grid = Grid::for_area(area, count);
    let per_page = grid.per_page();
    let page = app.focus / per_page;
    let pages = count.div_ceil(per_page);
    let first = page * per_page;
    let rows = Layout::vertical(vec![Constraint::Fill(1); grid.rows]).split(area);
    for (row_at, row) in rows.iter().enumerate() {
        let cells = Layout::horizontal(vec![Constraint::Fill(1); grid.columns]).split(*row);
        for (column_at, cell) in cells.iter().enumerate() {
            let at = first + row_at * grid.columns + column_at;
            if at < count {
                draw_pane(frame, *cell, app, at, (pages > 1).then_some((page, pages)));
            }
        }
    }
}

/// The focused agent, full-screen.
pub fn draw_one(frame: &mut Frame<'_>, area: Rect, app: &App, at: usize) {
    if at < app.agents.len() {
        draw_pane(frame, area, app, at, None);
    }
}

fn draw_pane(
    frame: &mut Frame<'_>,
    area: Rect,
    app: &App,
    at: usize,
    page: Option<(usize, usize)>,
) {
    let agent = &app.agents[at];
    let focused = at == app.focus;
    let border = if focused {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default().fg(Color::DarkGray)
    };
    let width = usize::from(area.width.saturating_sub(2));
    let mut title = vec![
        Span::styled(
            format!(" {} ", agent.id),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled(
            format!("{} ", agent.state.word()),
            state_style(&agent.state),
        ),
    ];
    if let Some(node) = &agent.node {
        title.push(Span::raw(format!("@{node} ")));
    }
    let mut block = Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Rounded
        })
        .border_style(border)
        .title(Line::from(title));
    let mut bottom = match &agent.decision {
        Some(decision) => format!(" {decision} "),
        None => String::new(),
    };
    if agent.scroll > 0 {
        bottom.push_str(&format!("↑{} ", agent.scroll));
    }
    if let Some((page, pages)) = page {
        bottom.push_str(&format!("p{}/{} ", page + 1, pages));
    }
    if !bottom.is_empty() {
        block = block.title_bottom(Line::from(truncate(&bottom, width)).right_aligned());
    }
    let height = usize::from(area.height.saturating_sub(2));
    let lines = tail(agent, width, height, app.show_reasoning);
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn line_style(kind: LineKind) -> Style {
    match kind {
        LineKind::Content => Style::default(),
        LineKind::Reasoning => Style::default()
            .fg(Color::DarkGray)
            .add_modifier(Modifier::ITALIC),
        LineKind::Tool => Style::default().fg(Color::Cyan),
        LineKind::Note => Style::default()
            .fg(Color::Blue)
            .add_modifier(Modifier::BOLD),
        LineKind::Error => Style::default().fg(Color::Red),
    }
}

/// The screen lines at the bottom of an agent's stream (minus its scroll), wrapped to
/// `width`. Only the tail is wrapped, so a long stream costs nothing per frame. Folded
/// reasoning shows as one line per run of reasoning.
pub fn tail(
    agent: &AgentView,
    width: usize,
    height: usize,
    show_reasoning: bool,
) -> Vec<Line<'static>> {
    let width = width.max(1);
    let wanted = height + agent.scroll;
    let mut out: Vec<Line<'static>> = Vec::with_capacity(wanted);
    let mut folded_run = false;
    for line in agent.lines.iter().rev() {
        if out.len() >= wanted {
            break;
        }
        if line.kind == LineKind::Reasoning && !show_reasoning {
            if !folded_run {
                out.push(Line::styled(
                    "▸ reasoning folded (r)".to_owned(),
                    line_style(LineKind::Reasoning),
                ));
                folded_run = true;
            }
            continue;
        }
        folded_run = false;
        let style = line_style(line.kind);
        for piece in wrap(&line.text, width).into_iter().rev() {
            out.push(Line::styled(piece, style));
        }
    }
    let skip = agent.scroll.min(out.len());
    let mut shown: Vec<Line<'static>> = out.into_iter().skip(skip).take(height).collect();
    shown.reverse();
    shown
}

/// Cuts a line into pieces of at most `width` characters, at a space when there is one in
/// the piece's second half (a long word is cut where it must be).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut end = (start + width).min(chars.len());
        if end < chars.len()
            && let Some(space) = chars[start..end].iter().rposition(|c| *c == ' ')
            && space >= width / 2
        {
            end = start + space + 1;
        }
        pieces.push(
            chars[start..end]
                .iter()
                .collect::<String>()
                .trim_end()
                .to_owned(),
        );
        start = end;
    }
    pieces
}
