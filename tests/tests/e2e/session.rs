//! End-to-end: the real `conclave` binary, three agents, the simulated provider over loopback
//! HTTP. Assertions come from the process's exit code and output, the session journal, and
//! the provider's own request log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conclave_sim::{DecisionKind, SimConfig, SimServer};
use conclave_tests::{
    Finished, SimAgent, events_of, read_journal, run_with_deadline, sim_config_yaml, workspace_bin,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "sk-conclave-test-secret-4242";

async fn sim(tokens: u32, delay_ms: u64) -> SimServer {
    let config = SimConfig {
        tokens,
        token_delay: Duration::from_millis(delay_ms),
        ..SimConfig::default()
    };
    SimServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("sim provider starts")
}

async fn conclave(args: Vec<String>, cwd: PathBuf, env: Vec<(&'static str, String)>) -> Finished {
    let bin = workspace_bin("conclave").expect("conclave binary");
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command.args(&args).current_dir(&cwd).env_remove("RUST_LOG");
        for (key, value) in env {
            command.env(key, value);
        }
        run_with_deadline(&mut command, DEADLINE)
    })
    .await
    .expect("runner thread")
    .expect("conclave finishes in time")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn labels(events: &[&Value], field: &str) -> Vec<String> {
    events
        .iter()
        .map(|e| e[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_reach_consensus_and_journal_it() {
    let sim = sim(8, 5).await;
    let dir = tempfile::tempdir().unwrap();
    // `finish` lets every first turn complete, so each agent's opening answer is accepted.
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
        60,
    );
    let config = write(dir.path(), "three.yaml", &yaml);
    let run = conclave(
        args(&[
            "--config",
            config.to_str().unwrap(),
            "--display",
            "plain",
            "--session-dir",
            "sessions",
            "--session-id",
            "s1",
            "Why is the sky blue?",
        ]),
        dir.path().to_owned(),
        // The sim preset sends this key when it is set; it must never be written anywhere.
        vec![("CONCLAVE_SIM_API_KEY", SECRET.to_owned())],
    )
    .await;
    assert!(
        !run.stdout.contains(SECRET) && !run.stderr.contains(SECRET),
        "the API key leaked to the output"
    );
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.contains("===== final answer (consensus"),
        "stdout:\n{}",
        run.stdout
    );
    for agent in ["[alpha]", "[beta]", "[gamma]"] {
        assert!(
            run.stdout.contains(agent),
            "{agent} never shown:\n{}",
            run.stdout
        );
    }

    let session = dir.path().join("sessions/s1");
    let journal_text = std::fs::read_to_string(session.join("events.jsonl")).unwrap();
    assert!(
        !journal_text.contains(SECRET),
        "the API key leaked into the journal"
    );
    assert!(
        journal_text.contains("CONCLAVE_SIM_API_KEY"),
        "the journal should name the key's variable"
    );
    let journal = read_journal(&session).unwrap();
    let answers = events_of(&journal, "answer_accepted");
    // The three opening answers arrive concurrently, in any order.
    let mut answer_labels = labels(&answers, "label");
    answer_labels.sort();
    assert_eq!(
        answer_labels,
        vec!["agent1.1", "agent2.1", "agent3.1"],
        "{answers:#?}"
    );
    let final_revision = answers.last().unwrap()["revision"].as_u64().unwrap();
    assert_eq!(final_revision, 3);
    // The votes that decided the session were all cast at the final revision, one per agent.
    let votes: Vec<&Value> = events_of(&journal, "vote_accepted")
        .into_iter()
        .filter(|v| v["revision"] == final_revision)
        .collect();
    let mut voters = labels(&votes, "agent");
    voters.sort();
    assert_eq!(voters, vec!["alpha", "beta", "gamma"]);
    // The simulated policy votes for the first label offered.
    assert!(votes.iter().all(|v| v["label"] == "agent1.1"), "{votes:#?}");
    let consensus = events_of(&journal, "consensus_reached");
    assert_eq!(consensus.len(), 1);
    assert_eq!(consensus[0]["winner"], "alpha");
    assert_eq!(consensus[0]["votes"], 3);
    let final_answer = events_of(&journal, "final_answer");
    assert_eq!(final_answer.len(), 1);
    assert_eq!(final_answer[0]["presented_by"], "alpha");
    let content = final_answer[0]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    assert!(run.stdout.contains(content.lines().next().unwrap()));
    assert_eq!(
        std::fs::read_to_string(session.join("final.md"))
            .unwrap()
            .trim_end(),
        content.trim_end()
    );
    let ended = events_of(&journal, "session_ended");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["reason"], "consensus");
    assert_eq!(ended[0]["exit_code"], 0);
    assert!(
        ended[0]["output_tokens"].as_u64().unwrap() > 0,
        "usage was not accounted"
    );

    // The provider saw exactly the work the journal describes: 3 answers, 3 deciding votes
    // (plus any discarded stale ones), one presentation.
    let requests = sim.requests();
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.decision == DecisionKind::NewAnswer)
            .count(),
        3
    );
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.decision == DecisionKind::Text)
            .count(),
        1
    );
    assert!(requests.iter().all(|r| r.stream));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_invalidates_votes_and_everyone_votes_again() {
    let sim = sim(6, 5).await;
    let dir = tempfile::tempdir().unwrap();
    // gamma always answers when allowed and starts slowly, so its answer lands after alpha
    // and beta have voted. Its limit of one answer makes it vote afterwards.
    let yaml = sim_config_yaml(
        &sim.base_url(),
        &[
            SimAgent {
                id: "alpha",
                model: "sim-a",
            },
            SimAgent {
                id: "beta",
                model: "sim-b:first_byte_ms=150",
            },
            SimAgent {
                id: "gamma",
                model: "sim-c:first_byte_ms=900,policy=answer",
            },
        ],
        "  restart_policy: cancel\n  max_new_answers_per_agent: 1\n",
        60,
    );
    let config = write(dir.path(), "late.yaml", &yaml);
    let run = conclave(
        args(&[
            "--config",
            config.to_str().unwrap(),
            "--display",
            "json",
            "--session-dir",
            "sessions",
            "--session-id",
            "late",
            "Pick a prime number.",
        ]),
        dir.path().to_owned(),
        vec![],
    )
    .await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );

    let journal = read_journal(&dir.path().join("sessions/late")).unwrap();
    let kinds: Vec<&str> = journal
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let gamma_answer = journal
        .iter()
        .position(|e| e["type"] == "answer_accepted" && e["agent"] == "gamma")
        .unwrap_or_else(|| panic!("gamma never answered: {kinds:?}"));
    let late_revision = journal[gamma_answer]["revision"].as_u64().unwrap();
    // Votes were cast (at the previous revision) before gamma's answer arrived...
    let early_votes: Vec<&Value> = journal[..gamma_answer]
        .iter()
        .filter(|e| e["type"] == "vote_accepted")
        .collect();
    assert!(
        !early_votes.is_empty(),
        "nobody voted before the late answer: {kinds:?}"
    );
    assert!(
        early_votes
            .iter()
            .all(|v| v["revision"].as_u64().unwrap() < late_revision)
    );
    // ...the late answer cleared them, and every agent decided again at the new revision.
    let after: Vec<&Value> = journal[gamma_answer..]
        .iter()
        .filter(|e| e["type"] == "vote_accepted")
        .collect();
    let mut voters = labels(&after, "agent");
    voters.sort();
    assert_eq!(voters, vec!["alpha", "beta", "gamma"], "{after:#?}");
    assert!(
        after
            .iter()
            .all(|v| v["revision"].as_u64().unwrap() == late_revision)
    );
    let consensus = events_of(&journal, "consensus_reached");
    assert_eq!(consensus.len(), 1);
    assert_eq!(consensus[0]["votes"], 3);
    // gamma hit its answer limit: its later turns offered only `vote`.
    let gamma_turns: Vec<&Value> = events_of(&journal, "turn_started")
        .into_iter()
        .filter(|t| t["agent"] == "gamma" && t["revision"].as_u64().unwrap() >= late_revision)
        .collect();
    assert!(!gamma_turns.is_empty());
    assert!(
        gamma_turns
            .iter()
            .all(|t| t["may_answer"] == false || t["mode"] == "present")
    );

    // --display json: every stdout line is a JSON object, the last one the final answer.
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(lines.iter().any(|l| l["type"] == "chunk"));
    assert_eq!(lines.last().unwrap()["type"], "final");
    assert_eq!(lines.last().unwrap()["reason"], "consensus");

    // Under `cancel`, gamma's first turn (still waiting for its first byte when alpha's
    // answer arrived) was cancelled: the provider saw the client drop the stream early.
    let gamma_requests: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.model.starts_with("sim-c"))
        .collect();
    let dropped = gamma_requests
        .iter()
        .find(|r| !r.completed)
        .unwrap_or_else(|| panic!("no gamma request was cancelled: {gamma_requests:#?}"));
    assert_eq!(dropped.output_tokens, 0, "{dropped:#?}");
    assert!(
        dropped.duration_ms().unwrap() < 900.0,
        "the cancelled stream was not dropped early: {dropped:#?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_without_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = conclave(
        args(&[
            "demo",
            "--tokens",
            "5",
            "--token-delay-ms",
            "2",
            "--display",
            "quiet",
            "--session-dir",
            "sessions",
            "What is 2+2?",
        ]),
        dir.path().to_owned(),
        vec![],
    )
    .await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        !run.stdout.trim().is_empty(),
        "the final answer was not printed"
    );
    let sessions: Vec<_> = std::fs::read_dir(dir.path().join("sessions"))
        .unwrap()
        .collect();
    assert_eq!(sessions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_api_key_is_reported_before_any_call() {
    let sim = sim(4, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "agents:\n  - id: hosted\n    backend:\n      type: groq\n      model: llama-3.3-70b-versatile\n      base_url: \"{}\"\n",
        sim.base_url()
    );
    let config = write(dir.path(), "groq.yaml", &yaml);
    let bin = workspace_bin("conclave").unwrap();
    let cwd = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command
            .args(["--config", config.to_str().unwrap(), "question"])
            .current_dir(cwd)
            .env_remove("GROQ_API_KEY");
        run_with_deadline(&mut command, DEADLINE)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("GROQ_API_KEY"),
        "stderr does not name the variable:\n{}",
        run.stderr
    );
    assert!(
        sim.requests().is_empty(),
        "a request was sent without a key"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_with_code_1_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.yaml",
        "agents:\n  - id: a\n    backend:\n      type: openai\n      model: gpt-4o-mini\n      temperature: hot\n",
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (args(&["question"]), "--config"),
        (args(&["--no-such-flag"]), "--no-such-flag"),
        (args(&["--config", "missing.yaml", "q"]), "missing.yaml"),
        (args(&["--config", "bad.yaml", "q"]), "temperature"),
        (args(&["--model", "mystery-model-7b", "q"]), "--backend"),
        (
            args(&["--display", "fancy", "--model", "gpt-4o", "q"]),
            "fancy",
        ),
        (
            args(&["--model", "gpt-4o", "--session-id", "../escape", "q"]),
            "session id",
        ),
    ];
    for (argv, hint) in cases {
        let run = conclave(
            argv.clone(),
            dir.path().to_owned(),
            vec![("OPENAI_API_KEY", "sk-test-not-used".into())],
        )
        .await;
        assert_eq!(run.code, Some(1), "{argv:?}: stderr:\n{}", run.stderr);
        assert!(
            run.stderr.contains(hint),
            "{argv:?}: stderr should mention {hint}:\n{}",
            run.stderr
        );
    }
}
