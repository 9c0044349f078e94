//! Budget caps end a session gracefully: the best available answer, exit code 3, and a
//! journal that says which cap was hit. Costs come from the pricing table (here the user's own
//! prices, inline in the config or from a `--pricing` file).

use std::process::Command;
use std::time::Duration;

use conclave_tests::start_sim;
use conclave_tests::{events_of, read_journal, run_with_deadline, workspace_bin};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_ends_the_session_with_the_best_answer_so_far() {
    let sim = start_sim(4, 2).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    // `cheap` is free and fast: its answer is accepted first. `dear` is slow and priced so
    // high that its first usage report crosses the cap before anyone can agree.
    let yaml = format!(
        r#"agents:
  - id: cheap
    backend: {{ type: sim, model: "sim-cheap", base_url: "{url}" }}
  - id: dear
    backend: {{ type: sim, model: "sim-dear:first_byte_ms=400", base_url: "{url}" }}
orchestrator:
  max_cost_usd: 0.01
  pricing:
    sim-cheap: {{ input_per_million: 0, output_per_million: 0 }}
    sim-dear: {{ input_per_million: 10000, output_per_million: 10000 }}
timeout_settings:
  orchestrator_timeout_seconds: 60
"#,
        url = sim.base_url()
    );
    std::fs::write(dir.path().join("budget.yaml"), yaml).unwrap();
    let out = run(
        dir.path(),
        &[
            "--config",
            "budget.yaml",
            "--display",
            "quiet",
            "--session-dir",
            "sessions",
            "--session-id",
            "b",
            "Name a colour.",
        ],
    )
    .await;
    assert_eq!(
        out.code,
        Some(3),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let journal = read_journal(&dir.path().join("sessions/b")).unwrap();
    let exhausted = events_of(&journal, "budget_exhausted");
    assert_eq!(exhausted.len(), 1);
    assert!(
        exhausted[0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_cost_usd"),
        "{exhausted:?}"
    );
    let ended = &events_of(&journal, "session_ended")[0];
    assert_eq!(ended["reason"], "budget_exhausted");
    assert_eq!(ended["exit_code"], 3);
    assert!(ended["cost_usd"].as_f64().unwrap() >= 0.01);
    let by_agent = ended["usage_by_agent"].as_array().unwrap();
    assert_eq!(by_agent.len(), 2);
    assert_eq!(by_agent[0]["cost_usd"].as_f64(), Some(0.0));
    // Every usage line of the priced agent carries its cost.
    let dear_usage: Vec<_> = events_of(&journal, "usage")
        .into_iter()
        .filter(|u| u["agent"] == "dear")
        .collect();
    assert!(
        !dear_usage.is_empty()
            && dear_usage
                .iter()
                .all(|u| u["cost_usd"].as_f64().unwrap() > 0.0)
    );
    // The best available answer was cheap's, and it was printed.
    let answer = &events_of(&journal, "final_answer")[0];
    assert_eq!(answer["winner"], "cheap");
    assert_eq!(
        out.stdout.trim(),
        answer["content"].as_str().unwrap().trim()
    );
    assert!(
        out.stderr.contains('$'),
        "the summary shows the cost: {}",
        out.stderr
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_and_a_pricing_file_from_the_command_line() {
    let sim = start_sim(4, 2).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "agents:\n  - id: solo\n    backend: {{ type: sim, model: \"sim-solo\", base_url: \"{}\" }}\n",
        sim.base_url()
    );
    std::fs::write(dir.path().join("solo.yaml"), yaml).unwrap();
    std::fs::write(
        dir.path().join("prices.yaml"),
        "sim-solo:\n  input_per_million: 2.0\n  output_per_million: 8.0\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &[
            "--config",
            "solo.yaml",
            "--display",
            "quiet",
            "--session-dir",
            "sessions",
            "--session-id",
            "t",
            "--max-tokens",
            "1",
            "--pricing",
            "prices.yaml",
            "Hello?",
        ],
    )
    .await;
    assert_eq!(out.code, Some(3), "stderr:\n{}", out.stderr);
    let journal = read_journal(&dir.path().join("sessions/t")).unwrap();
    let exhausted = events_of(&journal, "budget_exhausted");
    assert!(
        exhausted[0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_total_tokens"),
        "{exhausted:?}"
    );
    let usage = &events_of(&journal, "usage")[0];
    let (input, output) = (
        usage["input_tokens"].as_f64().unwrap(),
        usage["output_tokens"].as_f64().unwrap(),
    );
    let expected = (input * 2.0 + output * 8.0) / 1e6;
    assert!((usage["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12);

    // A bad pricing file is a usage error naming the key.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "sim-solo:\n  input_per_million: lots\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["--config", "solo.yaml", "--pricing", "bad.yaml", "Hello?"],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("sim-solo.input_per_million"),
        "{}",
        out.stderr
    );
    sim.shutdown().await;
}
