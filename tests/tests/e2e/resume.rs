//! Crash-safe resume: `kill -9` the orchestrator after the first answers are journaled, then
//! `conclave resume` finishes the session, and the provider's request log shows that no turn
//! whose decision was journaled was sent again.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conclave_tests::start_sim;
use conclave_tests::{
    SimAgent, events_of, read_journal, run_with_deadline, sim_config_yaml, workspace_bin,
};
use serde_json::Value;

fn decided_turns(journal: &[Value]) -> Vec<(String, u64)> {
    journal
        .iter()
        .filter(|e| e["type"] == "decision_received" || e["type"] == "presentation_received")
        .map(|e| {
            (
                e["agent"].as_str().unwrap_or_default().to_owned(),
                e["turn"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_first_answers_then_resume_finishes_without_paying_twice() {
    // 20 tokens x 20 ms: every turn streams for ~400 ms, so the kill lands mid-session.
    let sim = start_sim(20, 20).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    let yaml = sim_config_yaml(
        &sim.base_url(),
        &[
            SimAgent {
                id: "alpha",
                model: "sim-a",
            },
            SimAgent {
                id: "beta",
                model: "sim-b",
            },
            SimAgent {
                id: "gamma",
                model: "sim-c",
            },
        ],
        "  restart_policy: finish\n",
        120,
    );
    std::fs::write(dir.path().join("crash.yaml"), yaml).unwrap();
    let bin = workspace_bin("conclave").unwrap();
    let session_dir = dir.path().join("sessions/crash");

    let mut child = Command::new(&bin)
        .args([
            "--config",
            "crash.yaml",
            "--display",
            "quiet",
            "--session-dir",
            "sessions",
            "--session-id",
            "crash",
            "Name a prime.",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(session_dir.join("events.jsonl")).unwrap_or_default();
        if text.contains("\"answer_accepted\"") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the session ended before the crash could be staged"
        );
        assert!(Instant::now() < deadline, "no answer was journaled in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL: no cleanup, no final lines.
    child.wait().unwrap();
    let killed_at = sim.now_ms();

    let before = read_journal(&session_dir).unwrap();
    assert!(
        events_of(&before, "session_ended").is_empty(),
        "the crash came too late"
    );
    let decided_before: HashSet<(String, u64)> = decided_turns(&before).into_iter().collect();
    assert!(!decided_before.is_empty());

    let resume_bin = bin.clone();
    let cwd = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(resume_bin);
        command
            .args([
                "resume",
                "crash",
                "--session-dir",
                "sessions",
                "--display",
                "quiet",
            ])
            .current_dir(cwd);
        run_with_deadline(&mut command, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(!run.stdout.trim().is_empty(), "no final answer printed");

    let after = read_journal(&session_dir).unwrap();
    assert_eq!(events_of(&after, "session_resumed").len(), 1);
    assert_eq!(events_of(&after, "session_ended").len(), 1);
    assert_eq!(events_of(&after, "session_ended")[0]["reason"], "consensus");
    let decided_after = decided_turns(&after);
    let distinct: HashSet<(String, u64)> = decided_after.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        decided_after.len(),
        "a turn was decided twice: {decided_after:?}"
    );
    assert!(decided_before.is_subset(&distinct));

    // What the provider saw. A turn's request is identified by (model, prompt fingerprint).
    let requests = sim.requests();
    let key = |r: &conclave_sim::RequestRecord| (r.model.clone(), r.fingerprint.clone());
    let completed_before: Vec<_> = requests
        .iter()
        .filter(|r| r.started_ms <= killed_at && r.completed)
        .collect();
    let after: Vec<_> = requests
        .iter()
        .filter(|r| r.started_ms > killed_at)
        .collect();
    // After the resume, every completed request became exactly one journaled decision.
    let completed_after = after.iter().filter(|r| r.completed).count();
    assert_eq!(
        completed_after,
        distinct.len() - decided_before.len(),
        "{requests:#?}"
    );
    // A request can complete at the provider just before the kill, with its decision never
    // journaled: running that turn again is by design. Anything re-sent beyond those would
    // be a journaled turn paid for twice.
    let unjournaled = completed_before.len() - decided_before.len();
    let paid_before: HashSet<_> = completed_before.iter().map(|r| key(r)).collect();
    let resent = after
        .iter()
        .filter(|r| paid_before.contains(&key(r)))
        .count();
    assert!(
        resent <= unjournaled,
        "{resent} finished turn(s) sent again, {unjournaled} allowed: {requests:#?}"
    );

    // Resuming a finished session does not run anything again.
    let requests_before = sim.requests().len();
    let cwd = dir.path().to_owned();
    let again = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command
            .args(["resume", "sessions/crash", "--display", "quiet"])
            .current_dir(cwd);
        run_with_deadline(&mut command, Duration::from_secs(30))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again.code, Some(0), "stderr:\n{}", again.stderr);
    assert_eq!(again.stdout.trim(), run.stdout.trim());
    assert_eq!(sim.requests().len(), requests_before);
    sim.shutdown().await;
}
