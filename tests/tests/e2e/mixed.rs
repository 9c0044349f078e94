//! A mixed team: four agents, each speaking a different wire format (Anthropic Messages,
//! Gemini, OpenAI Responses, OpenAI Chat Completions via the Grok preset), reach consensus.
//! Every agent talks real HTTP + SSE to the simulated provider, which answers each format in
//! that format's own streaming shape.

use std::collections::{BTreeSet, HashSet};
use std::process::Command;
use std::time::Duration;

use conclave_sim::Wire;
use conclave_tests::start_sim;
use conclave_tests::{events_of, read_journal, run_with_deadline, workspace_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_gemini_gpt_and_grok_reach_consensus() {
    let sim = start_sim(6, 3).await.expect("sim provider starts");
    let root = sim.base_url().trim_end_matches("/v1").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"agents:
  - id: claude
    backend: {{ type: claude, model: "sim-claude", base_url: "{root}/v1" }}
  - id: gemini
    backend: {{ type: gemini, model: "sim-gemini", base_url: "{root}/v1beta" }}
  - id: gpt
    backend: {{ type: openai, model: "sim-gpt", base_url: "{root}/v1" }}
  - id: grok
    backend: {{ type: grok, model: "sim-grok", base_url: "{root}/v1" }}
orchestrator:
  restart_policy: finish
timeout_settings:
  orchestrator_timeout_seconds: 60
"#
    );
    std::fs::write(dir.path().join("mixed.yaml"), yaml).unwrap();
    let bin = workspace_bin("conclave").unwrap();
    let cwd = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command
            .args([
                "--config",
                "mixed.yaml",
                "--display",
                "json",
                "--session-dir",
                "sessions",
                "--session-id",
                "mixed",
                "Is 97 prime?",
            ])
            .current_dir(cwd)
            // Hosted presets need a key before any call; the simulator ignores it.
            .env("ANTHROPIC_API_KEY", "test-anthropic")
            .env("GEMINI_API_KEY", "test-gemini")
            .env("OPENAI_API_KEY", "test-openai")
            .env("XAI_API_KEY", "test-xai");
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

    let journal = read_journal(&dir.path().join("sessions/mixed")).unwrap();
    let answers = events_of(&journal, "answer_accepted");
    let authors: BTreeSet<&str> = answers
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(
        authors,
        BTreeSet::from(["claude", "gemini", "gpt", "grok"]),
        "every format produced an answer"
    );
    let consensus = events_of(&journal, "consensus_reached");
    assert_eq!(consensus.len(), 1);
    assert_eq!(consensus[0]["votes"], 4);
    assert_eq!(events_of(&journal, "final_answer").len(), 1);
    assert!(
        events_of(&journal, "session_ended")[0]["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Each agent spoke its own wire format, and every request streamed to completion.
    let requests = sim.requests();
    let wire_of = |prefix: &str| -> HashSet<Wire> {
        requests
            .iter()
            .filter(|r| r.model.starts_with(prefix))
            .map(|r| r.wire)
            .collect()
    };
    assert_eq!(wire_of("sim-claude"), HashSet::from([Wire::Anthropic]));
    assert_eq!(wire_of("sim-gemini"), HashSet::from([Wire::Gemini]));
    assert_eq!(wire_of("sim-gpt"), HashSet::from([Wire::OpenAiResponses]));
    assert_eq!(wire_of("sim-grok"), HashSet::from([Wire::OpenAiChat]));
    assert!(
        requests.iter().all(|r| r.completed && r.stream),
        "{requests:#?}"
    );
    sim.shutdown().await;
}
