//! Layouts and states on ratatui's test backend: no terminal needed.

use std::sync::Arc;

use conclave_protocol::StreamChunk;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::Rect;

use super::components::agents::Grid;
use super::state::{Action, AgentHeader, AgentState, App, SessionHeader, View};
use super::view;
use crate::display::Shown;
use crate::journal::JournalEvent;

fn app(agents: usize) -> App {
    App::new(SessionHeader {
        question: "Why test?".into(),
        agents: (0..agents)
            .map(|i| AgentHeader {
                id: format!("agent-{i}"),
                model: "sim".into(),
                node: (i == 1).then(|| "gpu-box".to_owned()),
                price: Some(crate::pricing::Price {
                    input_per_million: 1.0,
                    output_per_million: 2.0,
                }),
            })
            .collect(),
    })
}

fn screen(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| view::draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..height {
        for x in 0..width {
            text.push_str(buffer[(x, y)].symbol());
        }
        text.push('\n');
    }
    text
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn three_agents_fit_side_by_side_at_80_by_24_with_state_node_and_answers() {
    let mut app = app(3);
    app.apply(Shown::Event(JournalEvent::TurnStarted {
        agent: "agent-0".into(),
        turn: 1,
        mode: "coordinate".into(),
        revision: 0,
        may_answer: true,
        answers: vec![],
    }));
    app.apply(Shown::Chunk {
        agent: Arc::from("agent-0"),
        turn: 1,
        chunk: StreamChunk::Content {
            text: "hello there".into(),
        },
    });
    app.apply(Shown::Event(JournalEvent::AnswerAccepted {
        snapshot_dir: None,
        agent: "agent-2".into(),
        label: "agent3.1".into(),
        revision: 1,
        seen_revision: 0,
        stale: false,
        content: "an answer".into(),
    }));
    app.apply(Shown::Event(JournalEvent::VoteAccepted {
        agent: "agent-1".into(),
        label: "agent3.1".into(),
        revision: 1,
        reason: "good".into(),
    }));
    app.apply(Shown::Chunk {
        agent: Arc::from("agent-0"),
        turn: 1,
        chunk: StreamChunk::Usage(conclave_protocol::Usage {
            input_tokens: 1000,
            output_tokens: 500,
        }),
    });
    assert_eq!(app.agents[0].state, AgentState::Thinking);
    assert_eq!(app.tally(), vec![("agent3.1".to_owned(), 1)]);
    let text = screen(&app, 80, 24);
    for expected in [
        "Why test?",
        "1000 in / 500 out tokens · $0.0020",
        "agent-0 thinking",
        "agent-1 waiting @gpu-bo",
        "agent-2 waiting",
        "hello there",
        "voted agent3.1",
        "answers (1)",
        "agent3.1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn many_agents_make_a_grid_then_pages_that_follow_the_focus() {
    assert_eq!(
        Grid::for_area(Rect::new(0, 0, 200, 40), 8),
        Grid {
            columns: 7,
            rows: 2
        }
    );
    let grid = Grid::for_area(Rect::new(0, 0, 80, 16), 20);
    assert_eq!((grid.columns, grid.rows), (3, 2));
    let mut app = app(20);
    app.focus = 19;
    let text = screen(&app, 80, 24);
    assert!(text.contains("agent-19"), "{text}");
    assert!(!text.contains("agent-0 "), "{text}");
    assert!(text.contains("p3/3"), "{text}");
}

#[test]
fn q_interrupts_once_a_second_ctrl_c_aborts_and_after_the_end_q_leaves() {
    let mut app = app(2);
    assert_eq!(app.key(key(KeyCode::Char('q'))), Action::Interrupt);
    assert_eq!(app.key(key(KeyCode::Char('q'))), Action::None);
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(app.key(ctrl_c), Action::Abort);

    let mut app = app_ended();
    assert_eq!(app.view, View::Final);
    assert!(screen(&app, 80, 24).contains("final answer (consensus"));
    assert_eq!(app.key(key(KeyCode::Char('q'))), Action::Quit);
}

fn app_ended() -> App {
    let mut app = app(2);
    app.apply(Shown::Final {
        content: "42".into(),
        winner: Some("agent-0".into()),
        label: Some("agent1.1".into()),
        reason: "consensus".into(),
    });
    app.end();
    app
}

#[test]
fn keys_move_focus_zoom_fold_reasoning_and_open_help() {
    let mut app = app(3);
    app.apply(Shown::Chunk {
        agent: Arc::from("agent-1"),
        turn: 1,
        chunk: StreamChunk::Reasoning {
            text: "secret musing".into(),
        },
    });
    app.key(key(KeyCode::Tab));
    assert_eq!(app.focus, 1);
    app.key(key(KeyCode::Enter));
    assert_eq!(app.view, View::Zoom);
    let zoomed = screen(&app, 80, 24);
    assert!(
        zoomed.contains("secret musing") && !zoomed.contains("agent-0 "),
        "{zoomed}"
    );
    app.key(key(KeyCode::Char('r')));
    let folded = screen(&app, 80, 24);
    assert!(
        !folded.contains("secret musing") && folded.contains("reasoning folded"),
        "{folded}"
    );
    app.key(key(KeyCode::Char('?')));
    assert!(screen(&app, 80, 24).contains("this help"));
    app.key(key(KeyCode::Char('x')));
    assert!(!app.help);
    app.key(key(KeyCode::BackTab));
    assert_eq!(app.focus, 0);
}

#[test]
fn stream_lines_wrap_at_spaces_and_cut_long_words() {
    use super::components::agents::wrap;
    assert_eq!(
        wrap("one two three four", 9),
        vec!["one two", "three", "four"]
    );
    assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
    assert_eq!(wrap("", 4), vec![String::new()]);
}

#[test]
fn a_panic_gives_the_terminal_back() {
    use std::sync::atomic::Ordering;
    super::install_panic_hook();
    super::ACTIVE.store(true, Ordering::SeqCst);
    let panicked = std::thread::spawn(|| panic!("a bug while the UI runs")).join();
    assert!(panicked.is_err());
    assert!(
        !super::ACTIVE.load(Ordering::SeqCst),
        "the hook left the UI's terminal modes"
    );
}

#[test]
fn every_view_draws_at_any_size_without_panicking() {
    let mut app = app(60);
    for at in 0..60 {
        app.apply(Shown::Chunk {
            agent: Arc::from(format!("agent-{at}").as_str()),
            turn: 1,
            chunk: StreamChunk::Content {
                text: "word ".repeat(50),
            },
        });
    }
    app.apply(Shown::Event(JournalEvent::AnswerAccepted {
        snapshot_dir: None,
        agent: "agent-3".into(),
        label: "agent4.1".into(),
        revision: 1,
        seen_revision: 0,
        stale: false,
        content: "long ".repeat(500),
    }));
    for (width, height) in [(1, 1), (10, 3), (40, 10), (80, 24), (250, 70)] {
        for view in [View::Agents, View::Zoom, View::Answer(0)] {
            app.view = view;
            app.help = width > 40;
            screen(&app, width, height);
        }
    }
    let ended = app_ended();
    screen(&ended, 10, 3);
    screen(&ended, 80, 24);
}
