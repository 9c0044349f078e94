//! The journal through the real binary: one writer per session (a second `resume` of a
//! running session is refused, naming the process that runs it), and a journal that cannot
//! be written ends the session with exit code 2, showing nothing the journal does not hold.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use conclave_tests::{
    Running, SimAgent, events_of, read_journal, run_with_deadline, sim_config_yaml, start_sim,
    wait_for_event, workspace_bin,
};
use serde_json::Value;

async fn run(dir: &std::path::Path, args: &[&str]) -> conclave_tests::Finished {
    let bin = workspace_bin("conclave").unwrap();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let cwd = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command.args(&args).current_dir(cwd);
        run_with_deadline(&mut command, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .unwrap()
}

fn three_agents(base_url: &str, model_options: &str) -> String {
    let models: Vec<String> = ["sim-a", "sim-b", "sim-c"]
        .iter()
        .map(|m| format!("{m}{model_options}"))
        .collect();
    sim_config_yaml(
        base_url,
        &[
            SimAgent {
                id: "alpha",
                model: &models[0],
            },
            SimAgent {
                id: "beta",
                model: &models[1],
            },
            SimAgent {
                id: "gamma",
                model: &models[2],
            },
        ],
        "",
        120,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_resume_of_a_running_session_is_refused_naming_the_holder() {
    let sim = start_sim(4, 2).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    // Slow agents: each turn streams for about a second, so the session is running while
    // the second process tries to take it over.
    std::fs::write(
        dir.path().join("slow.yaml"),
        three_agents(&sim.base_url(), ":tokens=25,token_delay_ms=40"),
    )
    .unwrap();
    let bin = workspace_bin("conclave").unwrap();
    let first = Running::start(
        Command::new(&bin)
            .args([
                "--config",
                "slow.yaml",
                "--display",
                "quiet",
                "--session-dir",
                "sessions",
                "--session-id",
                "busy",
                "Name a prime.",
            ])
            .current_dir(dir.path()),
    )
    .unwrap();
    let session_dir = dir.path().join("sessions/busy");
    wait_for_event(
        &session_dir,
        "turn_started",
        Duration::from_secs(30),
        |_| true,
    )
    .expect("the first session starts its turns");

    let refused = run(
        dir.path(),
        &[
            "resume",
            "busy",
            "--session-dir",
            "sessions",
            "--display",
            "quiet",
        ],
    )
    .await;
    assert_eq!(refused.code, Some(1), "stderr:\n{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains(&format!("in use by process {}", first.pid())),
        "the refusal names the holder: {}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);

    // The refused resume changed nothing: the first session ends well, alone.
    let finished = first.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(finished.code, Some(0), "stderr:\n{}", finished.stderr);
    let journal = read_journal(&session_dir).unwrap();
    assert!(events_of(&journal, "session_resumed").is_empty());
    assert_eq!(events_of(&journal, "session_ended").len(), 1);

    // Once it has ended, the lock is free: resume shows the answer it produced.
    let shown = run(dir.path(), &["resume", "busy", "--session-dir", "sessions"]).await;
    assert_eq!(shown.code, Some(0), "stderr:\n{}", shown.stderr);
    assert_eq!(shown.stdout.trim(), finished.stdout.trim());
    assert!(!shown.stdout.trim().is_empty());
    sim.shutdown().await;
}

/// `ulimit -f` for the child: writes past `bytes` fail with EFBIG ("File too large") instead
/// of killing the process (SIGXFSZ is ignored, and stays ignored across exec). A real write
/// failure on the real path, as a full disk or a quota would give.
fn limit_file_size(command: &mut Command, bytes: u64) {
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// A journal line without its timestamps: what the `json` display shows of it.
fn event_only(mut line: Value) -> Value {
    if let Some(object) = line.as_object_mut() {
        object.remove("t_ms");
        object.remove("unix_ms");
    }
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_written_ends_the_session_with_exit_2_showing_only_what_it_holds()
{
    let sim = start_sim(6, 5).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("three.yaml"),
        three_agents(&sim.base_url(), ""),
    )
    .unwrap();
    let args = |id: &str| -> Vec<String> {
        [
            "--config",
            "three.yaml",
            "--display",
            "json",
            "--session-dir",
            "sessions",
            "--session-id",
            id,
            "Name a colour.",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // A full run first, to size the limit: half of its journal, so the disk "fills up" in
    // the middle of the session.
    let full = run(
        dir.path(),
        &args("full").iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(full.code, Some(0), "stderr:\n{}", full.stderr);
    let full_size = std::fs::metadata(dir.path().join("sessions/full/events.jsonl"))
        .unwrap()
        .len();
    let limit = full_size / 2;

    let bin = workspace_bin("conclave").unwrap();
    let cwd = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command.args(args("full-disk")).current_dir(cwd);
        limit_file_size(&mut command, limit);
        run_with_deadline(&mut command, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        out.code,
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("sessions/full-disk/events.jsonl")
            && out.stderr.contains("File too large"),
        "the error names the journal and the OS error: {}",
        out.stderr
    );
    // Everything shown was on disk first: every event on stdout is in the (cut short)
    // journal, and no final answer was shown.
    let text = std::fs::read_to_string(dir.path().join("sessions/full-disk/events.jsonl"))
        .unwrap_or_default();
    let journal: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(event_only)
        .collect();
    assert!(text.len() as u64 <= limit);
    let mut shown = 0;
    for line in out.stdout.lines() {
        let value: Value = serde_json::from_str(line).expect("json display lines");
        let kind = value["type"].as_str().unwrap_or_default();
        assert_ne!(kind, "final", "a final answer was shown: {}", out.stdout);
        if kind != "chunk" {
            shown += 1;
            assert!(
                journal.contains(&value),
                "shown but not in the journal: {line}"
            );
        }
    }
    assert!(
        shown > 0,
        "the session got far enough to show something: {}",
        out.stdout
    );
    sim.shutdown().await;
}

/// The server's resume route (and `--resume-unfinished`) obey the same lock: a session a CLI
/// process is running is refused with 409 naming that process, and not run a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_resume_route_refuses_a_session_another_process_runs() {
    use crate::server::Server;
    let sim = start_sim(4, 2).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slow.yaml");
    std::fs::write(
        &config,
        three_agents(&sim.base_url(), ":tokens=25,token_delay_ms=40"),
    )
    .unwrap();
    let bin = workspace_bin("conclave").unwrap();
    let first = Running::start(
        Command::new(&bin)
            .args([
                "--config",
                "slow.yaml",
                "--display",
                "quiet",
                "--session-dir",
                "sessions",
                "--session-id",
                "busy",
                "Name a prime.",
            ])
            .current_dir(dir.path()),
    )
    .unwrap();
    let session_dir = dir.path().join("sessions/busy");
    wait_for_event(
        &session_dir,
        "turn_started",
        Duration::from_secs(30),
        |_| true,
    )
    .expect("the first session starts its turns");

    let server = Server::start(dir.path(), &config, &[]).await;
    let (code, body) = server.post("/sessions/busy/resume", "{}").await;
    assert_eq!(code, 409, "{body}");
    let message = body.to_string();
    assert!(
        message.contains(&format!("in use by process {}", first.pid())),
        "the refusal names the holder: {message}"
    );

    let finished = first.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(finished.code, Some(0), "stderr:\n{}", finished.stderr);
    let journal = read_journal(&session_dir).unwrap();
    assert!(events_of(&journal, "session_resumed").is_empty());
    assert_eq!(events_of(&journal, "session_ended").len(), 1);
    let (code, _) = server.stop();
    assert_eq!(code, Some(0));
    sim.shutdown().await;
}
