//! The one-call quick mode, through the real binary against the simulated provider:
//! `conclave --model M "q"` makes exactly one provider request (no self-vote, no separate
//! presentation) and journals the session (start, the turn, usage, the final answer, end);
//! `--orchestrate` makes it the full three-call path; a one-agent config follows
//! `ui.use_orchestrator_for_single_agent` (default true: three calls; false: one); a one-call
//! session killed mid-call is finished by `conclave resume` with one more request.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use conclave_tests::{
    Running, SimAgent, events_of, poll_until, read_journal, run_with_deadline, sim_config_yaml,
    start_sim, workspace_bin,
};

const DEADLINE: Duration = Duration::from_secs(60);

fn quick(dir: &Path, base_url: &str, model: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(workspace_bin("conclave").expect("conclave is built"));
    command
        .args(["--model", model, "--backend", "sim", "--base-url", base_url])
        .args(["--display", "quiet", "--session-dir", "sessions"])
        .args(extra)
        .current_dir(dir);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_flag_makes_one_streamed_call_and_journals_the_session() {
    let sim = start_sim(5, 2).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_with_deadline(
        &mut quick(
            dir.path(),
            &sim.base_url(),
            "sim-a",
            &["--session-id", "one", "Name a prime."],
        ),
        DEADLINE,
    )
    .expect("conclave runs");
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(!run.stdout.trim().is_empty(), "the answer is printed");
    let requests = sim.requests();
    assert_eq!(requests.len(), 1, "one provider call: {requests:#?}");
    assert!(requests[0].stream, "the call is streamed");

    let journal = read_journal(&dir.path().join("sessions/one")).expect("journal");
    let kinds: Vec<&str> = journal.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in [
        "session_started",
        "turn_started",
        "usage",
        "presentation_received",
        "final_answer",
        "session_ended",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let ended = events_of(&journal, "session_ended");
    assert_eq!(ended[0]["reason"], "consensus");
    assert_eq!(
        events_of(&journal, "final_answer")[0]["content"].as_str(),
        Some(run.stdout.trim())
    );

    // --orchestrate: answer, self-vote, presentation.
    let before = sim.requests().len();
    let full = run_with_deadline(
        &mut quick(
            dir.path(),
            &sim.base_url(),
            "sim-a",
            &["--orchestrate", "Name a prime."],
        ),
        DEADLINE,
    )
    .expect("conclave runs");
    assert_eq!(full.code, Some(0), "stderr:\n{}", full.stderr);
    assert_eq!(sim.requests().len() - before, 3);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_agent_config_follows_use_orchestrator_for_single_agent() {
    let sim = start_sim(5, 2).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = [SimAgent {
        id: "solo",
        model: "sim-a",
    }];
    let yaml = sim_config_yaml(&sim.base_url(), &agent, "", 60);
    std::fs::write(dir.path().join("default.yaml"), &yaml).expect("config");
    std::fs::write(
        dir.path().join("direct.yaml"),
        format!("{yaml}ui:\n  use_orchestrator_for_single_agent: false\n"),
    )
    .expect("config");
    let bin = workspace_bin("conclave").expect("conclave is built");
    let mut counts = Vec::new();
    for (file, extra) in [
        ("default.yaml", None),
        ("direct.yaml", None),
        ("direct.yaml", Some("--orchestrate")),
    ] {
        let before = sim.requests().len();
        let mut command = Command::new(&bin);
        command
            .args(["--config", file, "--display", "quiet", "--session-dir", "s"])
            .args(extra)
            .arg("Name a prime.")
            .current_dir(dir.path());
        let run = run_with_deadline(&mut command, DEADLINE).expect("conclave runs");
        assert_eq!(run.code, Some(0), "{file}: {}", run.stderr);
        assert!(
            !run.stderr.contains("not supported yet"),
            "the key is read, not warned about: {}",
            run.stderr
        );
        counts.push(sim.requests().len() - before);
    }
    assert_eq!(counts, [3, 1, 3]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_call_session_killed_mid_call_is_finished_by_resume() {
    // 100 pieces x 20 ms: the call streams for ~2 s, so the kill lands inside it.
    let sim = start_sim(100, 20).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Running::start(&mut quick(
        dir.path(),
        &sim.base_url(),
        "sim-a",
        &["--session-id", "cut", "Name a prime."],
    ))
    .expect("conclave starts");
    let session = dir.path().join("sessions/cut");
    let started = poll_until(Duration::from_secs(30), || {
        (!sim.requests().is_empty()
            && conclave_tests::journal_lines(&session)
                .iter()
                .any(|l| l.contains("\"turn_started\"")))
        .then_some(())
    });
    assert!(started.is_some(), "the call did not start in time");
    running.signal(libc::SIGKILL).expect("kill -9");
    let killed = running.wait(DEADLINE).expect("reaped");
    assert_eq!(killed.code, None);
    let journal = read_journal(&session).expect("journal");
    assert!(
        events_of(&journal, "session_ended").is_empty(),
        "ended before the kill"
    );

    let before = sim.requests().len();
    let resume = run_with_deadline(
        Command::new(workspace_bin("conclave").expect("conclave is built"))
            .args([
                "resume",
                "cut",
                "--session-dir",
                "sessions",
                "--display",
                "quiet",
            ])
            .current_dir(dir.path()),
        DEADLINE,
    )
    .expect("resume runs");
    assert_eq!(resume.code, Some(0), "stderr:\n{}", resume.stderr);
    assert!(!resume.stdout.trim().is_empty());
    assert_eq!(
        sim.requests().len() - before,
        1,
        "the cut call is made once more"
    );
    let journal = read_journal(&session).expect("journal");
    assert_eq!(events_of(&journal, "session_resumed").len(), 1);
    assert_eq!(
        events_of(&journal, "session_ended")[0]["reason"],
        "consensus"
    );
    sim.shutdown().await;
}
