//! `--display tui`: a full-screen terminal UI (ratatui on crossterm).
//!
//! Shape (after gitui and bottom): [`state::App`] holds everything shown and is changed only
//! by what the display channel brings ([`state::App::apply`]) and by keys
//! ([`state::App::key`]); [`view::draw`] paints a frame from it and changes nothing; one
//! component per panel in [`components`]. The loop here owns the terminal and runs on the
//! display's own thread, so a slow terminal never slows the coordinator:
//!
//! * it drains the channel (everything queued, without drawing), then redraws at most every
//!   [`FRAME`] — 20 frames a second however many chunks 60 agents stream — and every
//!   [`TICK`] for the clock;
//! * it waits for keys between frames, never longer than a frame, so the channel is read
//!   again promptly.
//!
//! Ending. `q` or Ctrl-C (raw mode turns Ctrl-C into a key, not a signal) cancels the
//! session's interrupt token: the same graceful end as Ctrl-C without the UI, and the UI
//! leaves once the session has ended. A second Ctrl-C leaves at once (exit 130), as outside
//! the UI. SIGTERM and SIGINT from `kill` do the same as the first Ctrl-C. A session that
//! ends by itself shows its final answer and waits for `q`, so it can be read and the
//! answers browsed; after leaving, the final answer is printed on the normal screen too, so
//! it stays in the scrollback.
//!
//! The terminal is always given back: leaving the loop, dropping the screen (also on an
//! early return), and a panic anywhere (a hook installed once) all leave the alternate
//! screen, show the cursor and end raw mode. SIGKILL cannot be caught; `reset` fixes that.
//!
//! Stderr is collected while the UI runs and written out after it (see [`stderr`]), so log
//! lines neither scribble over the picture nor get lost; the latest shows in the key line.
//!
//! Without a usable terminal (setting it up fails), the session is shown as `plain`.

pub mod components;
pub mod state;
pub mod stderr;
pub mod view;

#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use conclave_protocol::config::DisplayKind;
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::crossterm::event::{self, Event};
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::display::Shown;
use state::{Action, App, SessionHeader};

/// The shortest time between two frames.
pub const FRAME: Duration = Duration::from_millis(50);
/// A redraw for the clock while the session runs, even when nothing arrives.
pub const TICK: Duration = Duration::from_millis(250);
/// Most channel messages applied between two looks at the keyboard and the clock.
const DRAIN_BUDGET: usize = 50_000;

/// Whether the terminal is in the UI's modes (raw, alternate screen, cursor hidden).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The session ended and the user left (or nothing was left to show).
    Leave,
    /// A second Ctrl-C while the session still ran: leave at once.
    Abort,
}

/// Runs the UI on the current thread until the session is over and the user leaves. Falls
/// back to the plain display when the terminal cannot be set up.
pub fn run(rx: Receiver<Shown>, header: SessionHeader, interrupt: CancellationToken) {
    let mut screen = match Screen::enter() {
        Ok(screen) => screen,
        Err(error) => {
            warn!(%error, "cannot set up the terminal UI; showing the plain display");
            crate::display::render_loop(DisplayKind::Plain, Box::new(io::stdout()), rx);
            return;
        }
    };
    let signalled = Arc::new(AtomicBool::new(false));
    let hooks: Vec<_> = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]
        .into_iter()
        .filter_map(|signal| signal_hook::flag::register(signal, signalled.clone()).ok())
        .collect();
    let capture = match stderr::StderrCapture::start() {
        Ok(capture) => Some(capture),
        Err(error) => {
            warn!(%error, "cannot collect stderr under the terminal UI; log lines may show through");
            None
        }
    };
    let latest_log = || capture.as_ref().and_then(|c| c.latest_line());
    let mut app = App::new(header);
    let exit = run_loop(
        &mut screen.terminal,
        &mut app,
        &rx,
        &interrupt,
        &signalled,
        &latest_log,
    );
    drop(screen);
    if let Some(capture) = capture {
        capture.finish();
    }
    for hook in hooks {
        signal_hook::low_level::unregister(hook);
    }
    match exit {
        Ok(Exit::Abort) => {
            let _ = writeln!(io::stderr(), "\ninterrupted: quit at once");
            std::process::exit(crate::consensus::EndReason::Interrupted.exit_code());
        }
        Ok(Exit::Leave) => {}
        Err(error) => warn!(%error, "the terminal UI failed; the session goes on without it"),
    }
    // The rest of the session (after a UI failure) and the final answer on the normal screen.
    drain_after(&mut app, &rx);
    if let Some(done) = &app.final_answer {
        let by = match (&done.label, &done.winner) {
            (Some(label), Some(winner)) => format!(" — {label} by {winner}"),
            _ => String::new(),
        };
        let mut out = io::stdout().lock();
        let _ = writeln!(
            out,
            "===== final answer ({}{by}) =====\n{}",
            done.reason, done.content
        );
        let _ = out.flush();
    }
}

/// Applies whatever is still to come, until the session closes the channel.
fn drain_after(app: &mut App, rx: &Receiver<Shown>) {
    while let Ok(shown) = rx.recv() {
        app.apply(shown);
    }
}

/// The event loop, generic over the backend so tests can run it headless.
pub fn run_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    rx: &Receiver<Shown>,
    interrupt: &CancellationToken,
    signalled: &AtomicBool,
    latest_log: &dyn Fn() -> Option<String>,
) -> io::Result<Exit>
where
    B::Error: Into<io::Error>,
{
    let started = Instant::now();
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    loop {
        for _ in 0..DRAIN_BUDGET {
            match rx.try_recv() {
                Ok(shown) => {
                    app.apply(shown);
                    dirty = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if !app.over {
                        app.end();
                        dirty = true;
                    }
                    break;
                }
            }
        }
        if signalled.swap(false, Ordering::SeqCst) {
            if app.over {
                return Ok(Exit::Leave);
            }
            app.interrupted = true;
            interrupt.cancel();
            dirty = true;
        }
        if interrupt.is_cancelled() && !app.interrupted {
            // Cancelled from outside (a signal handled elsewhere wrote on the screen):
            // repaint everything.
            app.interrupted = true;
            terminal.clear().map_err(Into::into)?;
            dirty = true;
        }
        if app.over && (app.interrupted || app.final_answer.is_none()) {
            return Ok(Exit::Leave);
        }
        if !app.over {
            app.elapsed = started.elapsed();
        }
        if let Some(line) = latest_log()
            && app.notice.as_ref().map(|(seen, _)| seen) != Some(&line)
        {
            app.notice = Some((line, app.elapsed));
            dirty = true;
        }
        let since = last_draw.map(|at| at.elapsed());
        let due = match since {
            None => true,
            Some(since) => since >= FRAME && (dirty || (!app.over && since >= TICK)),
        };
        if due {
            terminal
                .draw(|frame| view::draw(frame, app))
                .map_err(Into::into)?;
            last_draw = Some(Instant::now());
            dirty = false;
        }
        let wait = match last_draw {
            Some(at) if dirty => FRAME.saturating_sub(at.elapsed()),
            _ => FRAME,
        };
        match read_keys(app, wait) {
            Ok(None) => {}
            Ok(Some(Action::Interrupt)) => {
                interrupt.cancel();
                dirty = true;
            }
            Ok(Some(Action::Abort)) => return Ok(Exit::Abort),
            Ok(Some(Action::Quit)) => return Ok(Exit::Leave),
            Ok(Some(Action::None)) => dirty = true,
            Err(_) => std::thread::sleep(wait),
        }
    }
}

/// Waits up to `wait` for input, then takes every key already there. Returns the first
/// action that is not [`Action::None`], `Some(Action::None)` when something changed.
fn read_keys(app: &mut App, wait: Duration) -> io::Result<Option<Action>> {
    if !event::poll(wait)? {
        return Ok(None);
    }
    let mut result = None;
    loop {
        match event::read()? {
            Event::Key(key) => match app.key(key) {
                Action::None => {
                    result.get_or_insert(Action::None);
                }
                action => return Ok(Some(action)),
            },
            Event::Resize(..) => {
                result.get_or_insert(Action::None);
            }
            _ => {}
        }
        if !event::poll(Duration::ZERO)? {
            return Ok(result);
        }
    }
}

/// The terminal in the UI's modes; dropping it gives the terminal back.
struct Screen {
    terminal: Terminal<CrosstermBackend<io::Stdout>>,
}

impl Screen {
    fn enter() -> io::Result<Screen> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let entered = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match entered {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(error) => {
                restore();
                Err(error)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// A panic anywhere gives the terminal back before its message is printed (once per
/// process; the previous hook still runs).
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Leaves the UI's terminal modes, once.
fn restore() {
    stderr::restore_now();
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}
