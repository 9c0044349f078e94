//! End-to-end: interactive mode. With no question and a terminal on stdin, `conclave` asks
//! for questions one after another; each is a session of its own that carries the earlier
//! questions and final answers as history, and an empty line ends it. The terminal is a real
//! pseudo-terminal (openpty), so the binary's `is_terminal` check sees what a user's shell
//! would give it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use conclave_tests::start_sim;
use conclave_tests::{SimAgent, events_of, read_journal, sim_config_yaml, workspace_bin};

const DEADLINE: Duration = Duration::from_secs(40);

/// A pseudo-terminal: (master, slave).
fn pty() -> (File, OwnedFd) {
    let mut master = -1;
    let mut slave = -1;
    // SAFETY: openpty writes two new descriptors into the out-pointers; the name, termios and
    // winsize arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_questions_are_sessions_that_carry_the_conversation() {
    let sim = start_sim(8, 5).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    let agents = [
        SimAgent {
            id: "alpha",
            model: "sim-a",
        },
        SimAgent {
            id: "beta",
            model: "sim-b",
        },
    ];
    std::fs::write(&config, sim_config_yaml(&sim.base_url(), &agents, "", 60)).unwrap();

    let (mut master, slave) = pty();
    let child = Command::new(workspace_bin("conclave").unwrap())
        .arg("--config")
        .arg(&config)
        .args(["--display", "quiet", "--session-dir", "sessions"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The terminal buffers the lines; each is read when the previous session has ended.
    master.write_all(b"What is 2+2?\nAnd times 3?\n\n").unwrap();
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || {
            let output = child.wait_with_output();
            drop(master);
            output
        }),
    )
    .await
    .expect("the conversation ends at the empty line")
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Ask a question"), "{stderr}");

    let mut sessions: Vec<_> = std::fs::read_dir(dir.path().join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sessions.sort();
    assert_eq!(sessions.len(), 2, "one session per question: {sessions:?}");
    let started = |journal: &[serde_json::Value]| events_of(journal, "session_started")[0].clone();
    let (first, second) = (
        read_journal(&sessions[0]).unwrap(),
        read_journal(&sessions[1]).unwrap(),
    );
    let (first_start, second_start) = (started(&first), started(&second));
    let (first_start, second_start) = if first_start["question"] == "What is 2+2?" {
        (first_start, second_start)
    } else {
        (second_start, first_start)
    };
    assert_eq!(first_start["question"], "What is 2+2?");
    assert_eq!(first_start["history"], serde_json::json!([]));
    assert_eq!(second_start["question"], "And times 3?");
    let first_dir = sessions
        .iter()
        .find(|d| d.ends_with(first_start["session"].as_str().unwrap()))
        .unwrap();
    let first_answer = std::fs::read_to_string(first_dir.join("final.md")).unwrap();
    let history = &second_start["history"];
    assert_eq!(history[0][0], "What is 2+2?", "{history}");
    assert_eq!(
        history[0][1].as_str().unwrap().trim(),
        first_answer.trim(),
        "the second session was given the first answer"
    );
    // Both final answers were printed, in order.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(first_answer.trim()), "{stdout}");
}
