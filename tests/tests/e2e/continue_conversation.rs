//! End-to-end: conversations that continue across processes. Each `conclave` run records its
//! turn in `<session-dir>/<conversation>/conversation.jsonl`; a later process with
//! `--continue` (the last conversation) or `--continue --session-id ID` (a named one) gives
//! its agents the earlier questions and final answers, and `conclave sessions` lists the
//! conversations for people.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use conclave_tests::{
    Finished, SimAgent, events_of, read_journal, run_with_deadline, sim_config_yaml, start_sim,
    workspace_bin,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(40);

fn conclave(dir: &Path, args: &[&str]) -> Finished {
    let mut command = Command::new(workspace_bin("conclave").unwrap());
    command
        .args(args)
        .args(["--session-dir", "sessions"])
        .current_dir(dir)
        .env_remove("RUST_LOG");
    run_with_deadline(&mut command, DEADLINE).expect("conclave ends in time")
}

fn history_of(dir: &Path, session: &str) -> serde_json::Value {
    let journal = read_journal(&dir.join("sessions").join(session)).unwrap();
    events_of(&journal, "session_started")[0]["history"].clone()
}

fn final_answer(dir: &Path, session: &str) -> String {
    std::fs::read_to_string(dir.join("sessions").join(session).join("final.md"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_continues_in_a_later_process_and_is_listed() {
    let sim = start_sim(8, 5).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
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
    std::fs::write(
        dir.path().join("team.yaml"),
        sim_config_yaml(&sim.base_url(), &agents, "", 60),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--config", "team.yaml", "--display", "quiet"];
        all.extend_from_slice(args);
        conclave(dir.path(), &all)
    };

    // Nothing to continue yet: a clear refusal, nothing run.
    let refused = run(&["--continue", "Anything?"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("no conversation to continue"),
        "{}",
        refused.stderr
    );

    let first = run(&["--session-id", "math", "What is 2+2?"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(
        dir.path()
            .join("sessions/math/conversation.jsonl")
            .is_file()
    );
    // Another conversation, older in the listing but not the last one to end.
    let other = run(&["--session-id", "colors", "Name a color."]);
    assert_eq!(other.code, Some(0), "{}", other.stderr);

    // A new process continues the named one: turn 2 is session math-2 and carries turn 1.
    let second = run(&["--continue", "--session-id", "math", "And times 3?"]);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert_eq!(
        history_of(dir.path(), "math-2"),
        json!([["What is 2+2?", final_answer(dir.path(), "math")]]),
        "the second turn's agents got the first question and its final answer"
    );

    // `--continue` alone picks the conversation that ended last (math, just now).
    let third = run(&["--continue", "Minus 1?"]);
    assert_eq!(third.code, Some(0), "{}", third.stderr);
    assert_eq!(
        history_of(dir.path(), "math-3"),
        json!([
            ["What is 2+2?", final_answer(dir.path(), "math")],
            ["And times 3?", final_answer(dir.path(), "math-2")]
        ])
    );
    assert_eq!(history_of(dir.path(), "colors"), json!([]));

    // A conversation that does not exist: a refusal naming it.
    let missing = run(&["--continue", "--session-id", "nope", "Hello?"]);
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no conversation `nope`"),
        "{}",
        missing.stderr
    );

    // The listing: one row per conversation, oldest first, with turns and the first question.
    let listed = conclave(dir.path(), &["sessions"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let rows: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(
        rows.len(),
        3,
        "a header and two conversations: {}",
        listed.stdout
    );
    assert!(
        rows[0].starts_with("ID") && rows[0].contains("TOKENS"),
        "{}",
        rows[0]
    );
    assert!(rows[1].starts_with("math "), "{}", listed.stdout);
    assert!(rows[1].contains("What is 2+2?"), "{}", rows[1]);
    let turns: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(turns[3], "3", "three turns: {}", rows[1]);
    assert!(rows[2].starts_with("colors ") && rows[2].contains("Name a color."));
}
