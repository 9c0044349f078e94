//! End-to-end: the terminal UI in a real pseudo-terminal (openpty), its screen read through
//! a terminal emulator (vt100) as a person would see it. `conclave demo` runs with no
//! `--display`: on a terminal the UI is the default. The tests type keys (`?`, Tab, Enter,
//! Esc, `q`, Ctrl-C), check the panes, the help, the full-screen pane and the final answer
//! view, and that the terminal is given back (alternate screen left, cursor shown). The first
//! also paints the screen into `target/tui-screenshot.png` (the README's picture).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use conclave_tests::pty::{PtySession, screenshot_png};
use conclave_tests::{events_of, read_journal, workspace_bin};

const WAIT: Duration = Duration::from_secs(60);

fn demo(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut command = Command::new(workspace_bin("conclave").expect("conclave is built"));
    command
        .arg("demo")
        .args(["--session-dir", "sessions", "--session-id", "tui"])
        .args(extra)
        .current_dir(dir)
        .env_remove("RUST_LOG");
    command
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

#[test]
fn the_terminal_ui_shows_agents_answers_and_the_final_answer_and_gives_the_terminal_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = demo(
        dir.path(),
        &["--agents", "3", "--tokens", "60", "--token-delay-ms", "25"],
    );
    let mut tui = PtySession::spawn(&mut command, 24, 80).expect("conclave starts on a pty");

    // One pane per agent, the header with the question, the answers strip.
    tui.wait_for(WAIT, "the three agents' panes", |screen| {
        let text = screen.contents();
        screen.alternate_screen()
            && ["alpha", "beta", "gamma", "conclave", "answers ("]
                .iter()
                .all(|word| text.contains(word))
    })
    .unwrap();

    // `?` opens the help over the panes; any key closes it.
    tui.send(b"?").unwrap();
    tui.wait_for(WAIT, "the help", |s| s.contents().contains("this help"))
        .unwrap();
    tui.send(b"x").unwrap();
    tui.wait_for(WAIT, "the help to close", |s| {
        !s.contents().contains("this help")
    })
    .unwrap();

    // Tab focuses beta; Enter shows it alone; Esc goes back to all panes.
    tui.send(b"\t").unwrap();
    tui.send(b"\r").unwrap();
    tui.wait_for(WAIT, "beta full-screen", |s| {
        let text = s.contents();
        // Pane titles: the focused one thick (┏), the others rounded (╭).
        text.contains("┏ beta") && !text.contains("╭ alpha") && !text.contains("╭ gamma")
    })
    .unwrap();
    tui.send(b"\x1b").unwrap();

    // A picture of the agents at work, once answers are in.
    tui.wait_for(WAIT, "an answer in the list", |s| {
        let text = s.contents();
        !text.contains("answers (0)") && !text.contains("final answer (")
    })
    .unwrap();
    if let Some(screen) = tui.screen() {
        screenshot_png(&screen, &target_dir().join("tui-screenshot.png")).unwrap();
    }

    // The session ends by itself: the final answer in its own view, until `q`.
    tui.wait_for(WAIT, "the final answer view", |s| {
        s.contents().contains("final answer (consensus")
    })
    .unwrap();
    if let Some(screen) = tui.screen() {
        screenshot_png(&screen, &target_dir().join("tui-final-screenshot.png")).unwrap();
    }
    tui.send(b"q").unwrap();
    let (code, screen) = tui.wait(WAIT).unwrap();
    assert_eq!(code, Some(0), "{}", screen.contents());
    assert!(!screen.alternate_screen(), "the alternate screen is left");
    assert!(!screen.hide_cursor(), "the cursor is shown again");
    let text = screen.contents();
    assert!(text.contains("===== final answer (consensus"), "{text}");
    let final_md = std::fs::read_to_string(dir.path().join("sessions/tui/final.md")).unwrap();
    let first_line = final_md.lines().next().unwrap_or_default();
    assert!(text.contains(first_line.trim()), "{text}\n---\n{final_md}");
}

#[test]
fn ctrl_c_in_the_terminal_ui_ends_the_session_gracefully_and_restores_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // Slow enough that the session is still running when the key arrives.
    let mut command = demo(
        dir.path(),
        &["--agents", "2", "--tokens", "400", "--token-delay-ms", "25"],
    );
    let mut tui = PtySession::spawn(&mut command, 24, 80).expect("conclave starts on a pty");
    tui.wait_for(WAIT, "streaming panes", |screen| {
        let text = screen.contents();
        screen.alternate_screen()
            && ["thinking", "answering", "voting"]
                .iter()
                .any(|state| text.contains(state))
    })
    .unwrap();
    // Raw mode: Ctrl-C is a key, not a signal; it must end the session as Ctrl-C does.
    tui.send(b"\x03").unwrap();
    let (code, screen) = tui.wait(WAIT).unwrap();
    assert_eq!(code, Some(130), "{}", screen.contents());
    assert!(!screen.alternate_screen(), "the alternate screen is left");
    assert!(!screen.hide_cursor(), "the cursor is shown again");
    let journal = read_journal(&dir.path().join("sessions/tui")).unwrap();
    assert_eq!(events_of(&journal, "interrupted").len(), 1, "{journal:?}");
    assert_eq!(events_of(&journal, "session_ended").len(), 1);
}

#[test]
fn sigterm_ends_the_terminal_ui_session_gracefully_and_restores_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = demo(
        dir.path(),
        &["--agents", "2", "--tokens", "400", "--token-delay-ms", "25"],
    );
    let tui = PtySession::spawn(&mut command, 24, 80).expect("conclave starts on a pty");
    tui.wait_for(WAIT, "streaming panes", |screen| {
        let text = screen.contents();
        screen.alternate_screen()
            && ["thinking", "answering", "voting"]
                .iter()
                .any(|state| text.contains(state))
    })
    .unwrap();
    let pid = libc::pid_t::try_from(tui.child.id()).unwrap();
    // SAFETY: kill with a pid of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (code, screen) = tui.wait(WAIT).unwrap();
    assert_eq!(code, Some(130), "{}", screen.contents());
    assert!(!screen.alternate_screen(), "the alternate screen is left");
    assert!(!screen.hide_cursor(), "the cursor is shown again");
    let journal = read_journal(&dir.path().join("sessions/tui")).unwrap();
    assert_eq!(events_of(&journal, "session_ended").len(), 1);
}

#[test]
fn log_lines_do_not_scribble_on_the_terminal_ui_and_are_written_after_it() {
    let dir = tempfile::tempdir().unwrap();
    // -v logs INFO lines to stderr all through the session.
    let mut command = demo(
        dir.path(),
        &[
            "-v",
            "--agents",
            "2",
            "--tokens",
            "40",
            "--token-delay-ms",
            "20",
        ],
    );
    let mut tui = PtySession::spawn(&mut command, 24, 80).expect("conclave starts on a pty");
    // Every picture until the final answer: the key line (the last row) may show the latest
    // log line, no other row may.
    let scribbled = std::cell::RefCell::new(None);
    tui.wait_for(WAIT, "the final answer view", |screen| {
        let (rows, cols) = screen.size();
        if screen.alternate_screen() {
            let picture: Vec<String> = screen.rows(0, cols.get()).collect();
            if picture
                .iter()
                .take(usize::from(rows.get()) - 1)
                .any(|row| row.contains("INFO"))
            {
                scribbled.borrow_mut().get_or_insert(screen.contents());
            }
        }
        screen.contents().contains("final answer (consensus")
    })
    .unwrap();
    if let Some(picture) = scribbled.into_inner() {
        panic!("a log line on the UI:\n{picture}");
    }
    tui.send(b"q").unwrap();
    let (code, screen) = tui.wait(WAIT).unwrap();
    assert_eq!(code, Some(0));
    assert!(!screen.alternate_screen());
    // Written out once the terminal is back.
    assert!(screen.contents().contains("INFO"), "{}", screen.contents());
}

#[test]
fn display_plain_on_a_terminal_keeps_the_line_display() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = demo(
        dir.path(),
        &[
            "--display",
            "plain",
            "--agents",
            "2",
            "--tokens",
            "5",
            "--token-delay-ms",
            "1",
        ],
    );
    let tui = PtySession::spawn(&mut command, 24, 80).expect("conclave starts on a pty");
    let (code, screen) = tui.wait(WAIT).unwrap();
    assert_eq!(code, Some(0), "{}", screen.contents());
    let text = screen.contents();
    assert!(text.contains("===== final answer"), "{text}");
    assert!(!text.contains("Tab/"), "no UI key line: {text}");
}
