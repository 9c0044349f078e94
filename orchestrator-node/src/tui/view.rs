//! Drawing: reads [`App`] and paints one frame, never changes it. The body is the agents'
//! panes (or one agent full-screen, an answer, or the final answer); the header, the answers
//! with their votes and the key line sit around it. Each panel is one component in
//! [`super::components`].

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};

use super::components::{agents, answers, footer, header, help, text_view};
use super::state::{App, View};

/// Wide enough for the answers to sit in a column on the right; below it they are a strip
/// under the panes, so 80 columns keep room for three agents side by side.
const SIDEBAR_MIN_WIDTH: u16 = 110;
const SIDEBAR_WIDTH: u16 = 30;

pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(header::HEIGHT),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header::draw(frame, top, app);
    footer::draw(frame, bottom, app);
    match app.view {
        View::Agents | View::Zoom => {
            let (panes, list) = split_answers(body, app);
            if app.view == View::Zoom {
                agents::draw_one(frame, panes, app, app.focus);
            } else {
                agents::draw(frame, panes, app);
            }
            answers::draw(frame, list, app);
        }
        View::Answer(at) => text_view::draw_answer(frame, body, app, at),
        View::Final => text_view::draw_final(frame, body, app),
    }
    if app.help {
        help::draw(frame, frame.area());
    }
}

/// The panes' area and the answers' area.
fn split_answers(body: Rect, app: &App) -> (Rect, Rect) {
    if body.width >= SIDEBAR_MIN_WIDTH {
        let [panes, list] =
            Layout::horizontal([Constraint::Min(20), Constraint::Length(SIDEBAR_WIDTH)])
                .areas(body);
        (panes, list)
    } else {
        let rows = app.answers.len().clamp(1, 3) as u16 + 2;
        let [panes, list] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(rows)]).areas(body);
        (panes, list)
    }
}
