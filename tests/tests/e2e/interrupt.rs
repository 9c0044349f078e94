//! End-to-end: how a session ends when it cannot end by consensus. The real `conclave` binary
//! against the simulated provider:
//!
//! * the orchestrator timeout ends a session whose agents are too slow: exit 3, the best
//!   available answer still printed and journaled;
//! * Ctrl-C (a real SIGINT to the process) ends it gracefully: exit 130, the journal ends with
//!   `interrupted`, the final answer if there was one, and `session_ended`, and nothing it held
//!   before the signal is lost;
//! * a session where every agent fails: exit 2, with a message that says so and why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conclave_sim::{RequestRecord, SimServer};
use conclave_tests::start_sim;
use conclave_tests::{
    Finished, Running, SimAgent, SimTimeouts, events_of, journal_lines, poll_until, read_journal,
    run_with_deadline, sim_config_yaml_with, workspace_bin,
};
use serde_json::Value;

/// Any process still running after this is killed and the test fails.
const DEADLINE: Duration = Duration::from_secs(30);
/// A model that takes far longer than any of these sessions to say its first word.
const SLOW: &str = "first_byte_ms=20000";

async fn sim() -> SimServer {
    start_sim(6, 5).await.expect("sim provider starts")
}

fn write_config(
    dir: &Path,
    sim: &SimServer,
    models: [&str; 3],
    timeouts: SimTimeouts,
    max_retries: Option<u32>,
) -> PathBuf {
    let yaml = sim_config_yaml_with(
        &sim.base_url(),
        &[
            SimAgent {
                id: "alpha",
                model: models[0],
            },
            SimAgent {
                id: "beta",
                model: models[1],
            },
            SimAgent {
                id: "gamma",
                model: models[2],
            },
        ],
        "",
        timeouts,
        max_retries,
    );
    let path = dir.join("session.yaml");
    std::fs::write(&path, yaml).expect("config written");
    path
}

fn conclave_command(dir: &Path, config: &Path, session_id: &str, display: &str) -> Command {
    let bin = workspace_bin("conclave").expect("conclave binary");
    let mut command = Command::new(bin);
    command
        .args([
            "--config",
            config.to_str().expect("utf-8 path"),
            "--display",
            display,
            "--session-dir",
            "sessions",
            "--session-id",
            session_id,
            "Name a colour of the rainbow.",
        ])
        .current_dir(dir)
        .env_remove("RUST_LOG");
    command
}

fn kinds(journal: &[Value]) -> Vec<&str> {
    journal.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn show(run: &Finished, journal: &[Value]) -> String {
    format!(
        "exit {:?} after {:.2} s\njournal: {:?}\nstdout:\n{}\nstderr:\n{}",
        run.code,
        run.elapsed.as_secs_f64(),
        kinds(journal),
        run.stdout,
        run.stderr
    )
}

/// The requests of the models containing `name`, once each has ended (the client closed its
/// connections when it exited; the simulator records that a moment later).
async fn ended_requests(sim: &SimServer, name: &str) -> Vec<RequestRecord> {
    for _ in 0..200 {
        let records: Vec<RequestRecord> = sim
            .requests()
            .into_iter()
            .filter(|r| r.model.starts_with(name))
            .collect();
        if records.iter().all(|r| r.ended_ms.is_some()) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("requests of {name} never ended: {:#?}", sim.requests());
}

/// What follows `interrupted` / `timed_out` in a journal: the in-flight turns cancelled, the
/// final answer if any, and the end. Returns the tail's event types.
fn assert_ending(journal: &[Value], marker: &str, reason: &str, exit: i32, with_answer: bool) {
    let at = journal
        .iter()
        .position(|e| e["type"] == marker)
        .unwrap_or_else(|| panic!("no `{marker}` in {:?}", kinds(journal)));
    let tail = kinds(&journal[at + 1..]);
    let (last, middle) = tail.split_last().expect("events after the marker");
    assert_eq!(*last, "session_ended", "{tail:?}");
    let expected_final = usize::from(with_answer);
    assert_eq!(
        middle.iter().filter(|k| **k == "final_answer").count(),
        expected_final,
        "{tail:?}"
    );
    if with_answer {
        assert_eq!(middle.last(), Some(&"final_answer"), "{tail:?}");
    }
    assert!(
        middle
            .iter()
            .all(|k| matches!(*k, "turn_cancelled" | "final_answer")),
        "unexpected events after `{marker}`: {tail:?}"
    );
    let ended = journal.last().expect("journal not empty");
    assert_eq!(ended["reason"], reason);
    assert_eq!(ended["exit_code"], exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_timeout_ends_the_session_with_the_best_answer() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // alpha answers at once; beta and gamma would need 20 s for their first word. The
    // watchdog and turn timeout are far away: only the 2 s orchestrator timeout can end it.
    let timeouts = SimTimeouts {
        orchestrator: 2,
        turn: 60,
        stall: 60,
    };
    let config = write_config(
        dir.path(),
        &sim,
        ["sim-a", &format!("sim-b:{SLOW}"), &format!("sim-c:{SLOW}")],
        timeouts,
        None,
    );
    let mut command = conclave_command(dir.path(), &config, "slow", "quiet");
    let run = tokio::task::spawn_blocking(move || run_with_deadline(&mut command, DEADLINE))
        .await
        .expect("runner thread")
        .expect("conclave finishes in time");
    let journal = read_journal(&dir.path().join("sessions/slow")).expect("journal");
    let context = show(&run, &journal);

    assert_eq!(run.code, Some(3), "{context}");
    // Ended by the timeout, promptly: not by the slow agents' 20 s.
    assert!(
        run.elapsed >= Duration::from_secs(2) && run.elapsed < Duration::from_secs(7),
        "{context}"
    );
    let timed_out = events_of(&journal, "timed_out");
    assert_eq!(timed_out.len(), 1, "{context}");
    let after_ms = timed_out[0]["after_ms"].as_u64().expect("after_ms");
    assert!((2000..4000).contains(&after_ms), "{context}");
    assert_ending(&journal, "timed_out", "timeout", 3, true);

    // The best available answer (alpha's, the only one) is journaled and printed.
    let answers = events_of(&journal, "answer_accepted");
    assert_eq!(answers.len(), 1, "{context}");
    assert_eq!(answers[0]["agent"], "alpha");
    let final_answer = events_of(&journal, "final_answer");
    assert_eq!(final_answer[0]["content"], answers[0]["content"]);
    assert_eq!(final_answer[0]["winner"], "alpha");
    let content = final_answer[0]["content"].as_str().expect("content");
    assert!(
        run.stdout.contains(content.lines().next().expect("a line")),
        "{context}"
    );
    assert!(run.stderr.contains("timeout"), "{context}");

    // The slow agents' streams were abandoned, not waited for.
    for name in ["sim-b", "sim-c"] {
        let records = ended_requests(&sim, name).await;
        assert!(!records.is_empty());
        assert!(records.iter().all(|r| !r.completed), "{records:#?}");
    }
    sim.shutdown().await;
}

/// Runs a session, sends it SIGINT once `ready` holds for its journal lines, and returns the
/// run, the journal lines seen just before the signal, the whole journal after, and the
/// time from the signal to the exit.
async fn interrupt_when(
    dir: &Path,
    config: &Path,
    session_id: &'static str,
    ready: fn(&[String]) -> bool,
) -> (Finished, Vec<String>, Vec<String>, Duration) {
    let command = conclave_command(dir, config, session_id, "plain");
    let session = dir.join("sessions").join(session_id);
    tokio::task::spawn_blocking(move || {
        let mut command = command;
        let running = Running::start(&mut command).expect("conclave starts");
        let before = poll_until(Duration::from_secs(15), || {
            let lines = journal_lines(&session);
            ready(&lines).then_some(lines)
        });
        let Some(before) = before else {
            let run = running.wait(Duration::ZERO);
            panic!("the session never got ready for the interrupt: {run:?}");
        };
        let signalled = running.elapsed();
        running.signal(libc::SIGINT).expect("SIGINT sent");
        let run = running.wait(DEADLINE).expect("conclave exits after SIGINT");
        let after = journal_lines(&session);
        let to_exit = run.elapsed.saturating_sub(signalled);
        (run, before, after, to_exit)
    })
    .await
    .expect("runner thread")
}

fn count(lines: &[String], kind: &str) -> usize {
    let tag = format!("\"type\":\"{kind}\"");
    lines.iter().filter(|l| l.contains(&tag)).count()
}

fn assert_nothing_lost(before: &[String], after: &[String]) {
    assert!(
        after.len() > before.len(),
        "nothing was journaled after the signal"
    );
    for (i, line) in before.iter().enumerate() {
        assert_eq!(
            &after[i],
            line,
            "journal line {} changed after the interrupt",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_the_session_with_the_answer_so_far() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let timeouts = SimTimeouts {
        orchestrator: 60,
        turn: 60,
        stall: 60,
    };
    let config = write_config(
        dir.path(),
        &sim,
        ["sim-a", &format!("sim-b:{SLOW}"), &format!("sim-c:{SLOW}")],
        timeouts,
        None,
    );
    // Interrupt once alpha's answer is in and its vote is cast (beta and gamma still wait).
    let (run, before, after, to_exit) =
        interrupt_when(dir.path(), &config, "ctrl-c", |lines: &[String]| {
            count(lines, "answer_accepted") == 1 && count(lines, "vote_accepted") == 1
        })
        .await;
    let journal: Vec<Value> = after
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let context = show(&run, &journal);

    assert_eq!(run.code, Some(130), "{context}");
    assert!(to_exit < Duration::from_secs(5), "{to_exit:?}\n{context}");
    assert!(run.stderr.contains("interrupted"), "{context}");
    assert_nothing_lost(&before, &after);
    assert_ending(&journal, "interrupted", "interrupted", 130, true);
    // The interrupt came after everything journaled before the signal.
    let interrupted_at = journal
        .iter()
        .position(|e| e["type"] == "interrupted")
        .expect("interrupted");
    assert!(interrupted_at >= before.len(), "{context}");

    let answers = events_of(&journal, "answer_accepted");
    let final_answer = events_of(&journal, "final_answer");
    assert_eq!(final_answer[0]["content"], answers[0]["content"]);
    let content = final_answer[0]["content"].as_str().expect("content");
    assert!(
        run.stdout.contains("final answer (interrupted"),
        "{context}"
    );
    assert!(
        run.stdout.contains(content.lines().next().expect("a line")),
        "{context}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sessions/ctrl-c/final.md"))
            .expect("final.md")
            .trim_end(),
        content.trim_end()
    );
    // The slow agents' in-flight turns were cancelled and their streams dropped.
    assert_eq!(
        events_of(&journal[interrupted_at..], "turn_cancelled").len(),
        2,
        "{context}"
    );
    for name in ["sim-b", "sim-c"] {
        let records = ended_requests(&sim, name).await;
        assert!(records.iter().all(|r| !r.completed), "{records:#?}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_before_any_answer_ends_without_one() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let timeouts = SimTimeouts {
        orchestrator: 60,
        turn: 60,
        stall: 60,
    };
    let slow = [
        format!("sim-a:{SLOW}"),
        format!("sim-b:{SLOW}"),
        format!("sim-c:{SLOW}"),
    ];
    let config = write_config(
        dir.path(),
        &sim,
        [&slow[0], &slow[1], &slow[2]],
        timeouts,
        None,
    );
    let (run, before, after, to_exit) =
        interrupt_when(dir.path(), &config, "early", |lines: &[String]| {
            count(lines, "turn_started") == 3
        })
        .await;
    let journal: Vec<Value> = after
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let context = show(&run, &journal);

    assert_eq!(run.code, Some(130), "{context}");
    assert!(to_exit < Duration::from_secs(5), "{to_exit:?}\n{context}");
    assert_nothing_lost(&before, &after);
    assert_ending(&journal, "interrupted", "interrupted", 130, false);
    assert!(events_of(&journal, "answer_accepted").is_empty());
    assert_eq!(events_of(&journal, "turn_cancelled").len(), 3, "{context}");
    assert_eq!(
        events_of(&journal, "turn_cancelled").len(),
        events_of(&journal[before.len()..], "turn_cancelled").len()
    );
    assert!(run.stdout.contains("(no answer was produced)"), "{context}");
    assert!(!dir.path().join("sessions/early/final.md").exists());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_failing_exits_2_and_says_why() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let timeouts = SimTimeouts {
        orchestrator: 30,
        turn: 10,
        stall: 5,
    };
    // Every request fails with a 500 and no retry is allowed.
    let config = write_config(
        dir.path(),
        &sim,
        ["sim-a:fault=500", "sim-b:fault=500", "sim-c:fault=500"],
        timeouts,
        Some(0),
    );
    let mut command = conclave_command(dir.path(), &config, "doomed", "plain");
    let run = tokio::task::spawn_blocking(move || run_with_deadline(&mut command, DEADLINE))
        .await
        .expect("runner thread")
        .expect("conclave finishes in time");
    let journal = read_journal(&dir.path().join("sessions/doomed")).expect("journal");
    let context = show(&run, &journal);

    assert_eq!(run.code, Some(2), "{context}");
    assert!(run.elapsed < Duration::from_secs(10), "{context}");
    // The user is told that every agent failed, which, and why.
    assert!(run.stdout.contains("(no answer was produced)"), "{context}");
    assert!(
        run.stdout.contains("all_agents_failed") || run.stderr.contains("all_agents_failed"),
        "{context}"
    );
    for agent in ["alpha", "beta", "gamma"] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(&format!("[{agent}]")) && l.contains("agent failed"))
            .unwrap_or_else(|| panic!("no failure shown for {agent}\n{context}"));
        assert!(line.contains("HTTP 500"), "{line}");
    }

    let failed = events_of(&journal, "agent_failed");
    assert_eq!(failed.len(), 3, "{context}");
    assert_eq!(events_of(&journal, "all_agents_failed").len(), 1);
    assert!(events_of(&journal, "final_answer").is_empty());
    assert!(events_of(&journal, "turn_progress").is_empty(), "{context}");
    let ended = events_of(&journal, "session_ended");
    assert_eq!(ended[0]["reason"], "all_agents_failed");
    assert_eq!(ended[0]["exit_code"], 2);
    // max_retries 0: exactly one request per agent.
    let requests = sim.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert!(requests.iter().all(|r| r.fault.is_some() && !r.completed));
    sim.shutdown().await;
}
