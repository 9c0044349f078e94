//! Any model can take part: sessions of models that do not call tools, or call them badly,
//! through the real binary and the simulated provider's policies for such models.
//!
//! Each policy reaches a final answer, and the journal says how each decision was obtained
//! (`decision_received.how`: `tool`, `text` or `implicit`):
//! * `default`  calls the workflow tools (the baseline);
//! * `marked`   never calls a tool and ends its text with `VOTE: ...` / `NEW ANSWER:` — the
//!   `auto` workflow switches it to the text protocol after its first turn (journaled);
//! * `text`     writes plain text only: its first turn's text is kept as an implicit answer,
//!   later turns abstain, and the session still ends with an answer;
//! * `wrong_label` votes for a label that does not exist until the corrective message lists
//!   the valid ones; `broken_json` sends broken tool-call JSON until told.
//!
//! Each test prints the provider calls and the wall time of its session (the figures of the
//! fallback's cost; never asserted on time).

use std::process::Command;
use std::time::{Duration, Instant};

use conclave_tests::{
    SimAgent, events_of, read_journal, run_with_deadline, sim_config_yaml, start_sim, workspace_bin,
};
use serde_json::Value;

struct Ran {
    journal: Vec<Value>,
    stdout: String,
    requests: usize,
}

/// Runs three agents with `options` appended to each sim model, in workflow mode `workflow`
/// (`None`: the default, auto).
async fn run_policy(name: &str, options: &str, workflow: Option<&str>) -> Ran {
    let sim = start_sim(6, 1).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    let models: Vec<String> = ["sim-a", "sim-b", "sim-c"]
        .iter()
        .map(|m| format!("{m}{options}"))
        .collect();
    let mut yaml = sim_config_yaml(
        &sim.base_url(),
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
        60,
    );
    if let Some(mode) = workflow {
        yaml = yaml.replace(
            "    backend:\n",
            &format!("    workflow: {mode}\n    backend:\n"),
        );
    }
    std::fs::write(dir.path().join("team.yaml"), yaml).unwrap();
    let bin = workspace_bin("conclave").unwrap();
    let cwd = dir.path().to_owned();
    let started = Instant::now();
    let finished = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command
            .args([
                "--config",
                "team.yaml",
                "--display",
                "plain",
                "--session-dir",
                "sessions",
                "--session-id",
                "s",
                "What is the boiling point of water at sea level?",
            ])
            .current_dir(cwd);
        run_with_deadline(&mut command, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .unwrap();
    let wall = started.elapsed();
    assert_eq!(
        finished.code,
        Some(0),
        "policy {name}: stdout:\n{}\nstderr:\n{}",
        finished.stdout,
        finished.stderr
    );
    let journal = read_journal(&dir.path().join("sessions/s")).unwrap();
    let requests = sim.requests().len();
    eprintln!("any_model: policy {name}: {requests} provider calls, wall {wall:.2?}");
    sim.shutdown().await;
    Ran {
        journal,
        stdout: finished.stdout,
        requests,
    }
}

fn hows(journal: &[Value]) -> Vec<&str> {
    events_of(journal, "decision_received")
        .iter()
        .map(|e| e["how"].as_str().unwrap_or("(missing)"))
        .collect()
}

fn final_answer(journal: &[Value]) -> String {
    let finals = events_of(journal, "final_answer");
    assert_eq!(finals.len(), 1, "one final answer");
    finals[0]["content"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calling_models_decide_by_tool() {
    let ran = run_policy("default", "", None).await;
    assert!(hows(&ran.journal).iter().all(|how| *how == "tool"));
    assert!(!final_answer(&ran.journal).trim().is_empty());
    assert!(events_of(&ran.journal, "turn_progress").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_that_write_a_decision_line_switch_to_text_and_reach_consensus() {
    let ran = run_policy("marked", ":policy=marked", None).await;
    let hows = hows(&ran.journal);
    assert!(!hows.is_empty());
    assert!(hows.iter().all(|how| *how == "text"), "{hows:?}");
    // Each agent switched once, journaled as turn progress.
    let switches: Vec<&Value> = events_of(&ran.journal, "turn_progress")
        .into_iter()
        .filter(|e| e["event"]["WorkflowSwitched"].is_object())
        .collect();
    assert_eq!(switches.len(), 3, "{switches:?}");
    assert_eq!(events_of(&ran.journal, "consensus_reached").len(), 1);
    assert!(
        !events_of(&ran.journal, "vote_accepted").is_empty(),
        "votes came from text lines"
    );
    assert!(!final_answer(&ran.journal).trim().is_empty());
    // The plain display speaks in sentences, not debug text.
    assert!(
        ran.stdout.contains("switches to the text protocol"),
        "{}",
        ran.stdout
    );
    assert!(!ran.stdout.contains("WorkflowSwitched {"), "{}", ran.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_that_only_write_text_keep_their_work_and_end_with_an_answer() {
    let ran = run_policy("text", ":policy=text", None).await;
    let implicit: Vec<&Value> = events_of(&ran.journal, "decision_received")
        .into_iter()
        .filter(|e| e["implicit"] == true)
        .collect();
    assert!(!implicit.is_empty(), "the text was kept as an answer");
    assert!(implicit.iter().all(|e| e["how"] == "implicit"));
    assert!(
        !events_of(&ran.journal, "abstained").is_empty(),
        "agents with their answer in abstain"
    );
    assert!(events_of(&ran.journal, "agent_failed").is_empty());
    let answer = final_answer(&ran.journal);
    assert!(answer.contains("answers:"), "a model's own text: {answer}");
    assert!(!ran.stdout.contains("(no answer was produced)"));
    assert!(
        ran.stdout
            .contains("no valid decision, asking again (retry 1)"),
        "{}",
        ran.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_workflow_agent_is_never_offered_tools() {
    let ran = run_policy("marked+workflow:text", ":policy=marked", Some("text")).await;
    assert!(hows(&ran.journal).iter().all(|how| *how == "text"));
    // Configured text from the start: nothing to switch.
    assert!(
        events_of(&ran.journal, "turn_progress")
            .iter()
            .all(|e| !e["event"]["WorkflowSwitched"].is_object())
    );
    assert!(!final_answer(&ran.journal).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_labels_and_broken_json_are_corrected_with_the_valid_calls() {
    for (name, options, problem) in [
        (
            "wrong_label",
            ":policy=wrong_label",
            "is not one of the current answers",
        ),
        ("broken_json", ":policy=broken_json", "are not valid JSON"),
    ] {
        let ran = run_policy(name, options, Some("tools")).await;
        let retries: Vec<&Value> = events_of(&ran.journal, "turn_progress")
            .into_iter()
            .filter(|e| e["event"]["CorrectiveRetry"].is_object())
            .collect();
        assert!(!retries.is_empty(), "{name}: corrected");
        assert!(
            retries
                .iter()
                .all(|e| e["event"]["CorrectiveRetry"]["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains(problem))),
            "{name}: {retries:?}"
        );
        assert!(hows(&ran.journal).iter().all(|how| *how == "tool"));
        assert_eq!(events_of(&ran.journal, "consensus_reached").len(), 1);
        assert!(ran.requests > 0);
    }
}
