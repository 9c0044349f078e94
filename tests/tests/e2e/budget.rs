//! Budget caps end a session gracefully: the best available answer, exit code 3, and a
//! journal that says which cap was hit. Costs come from the pricing table (here the user's own
//! prices, inline in the config or from a `--pricing` file).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conclave_tests::start_sim;
use conclave_tests::{
    SimAgent, events_of, read_journal, run_with_deadline, sim_config_yaml, workspace_bin,
};

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
    // The line says what was spent and by how much the cap was overshot.
    let spent = exhausted[0]["cost_usd"].as_f64().unwrap();
    assert_eq!(exhausted[0]["max_cost_usd"].as_f64(), Some(0.01));
    let over = exhausted[0]["cost_over_usd"].as_f64().unwrap();
    assert!(
        spent >= 0.01 && (spent - 0.01 - over).abs() < 1e-12,
        "{exhausted:?}"
    );
    assert!(exhausted[0]["tokens_used"].as_u64().unwrap() > 0);
    // Once the cap is reached, no turn starts; the one in flight is cancelled.
    let at = journal
        .iter()
        .position(|e| e["type"] == "budget_exhausted")
        .unwrap();
    assert!(
        journal[at..].iter().all(|e| e["type"] != "turn_started"),
        "a turn started after the cap: {journal:#?}"
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
    let tokens_used = exhausted[0]["tokens_used"].as_u64().unwrap();
    assert_eq!(exhausted[0]["max_total_tokens"].as_u64(), Some(1));
    assert_eq!(exhausted[0]["tokens_over"].as_u64(), Some(tokens_used - 1));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_cap_with_an_unpriced_model_is_refused_before_anything_runs() {
    let sim = start_sim(4, 2).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"agents:
  - id: priced
    backend: {{ type: sim, model: "sim-priced", base_url: "{url}" }}
  - id: local
    backend: {{ type: sim, model: "sim-homegrown", base_url: "{url}" }}
orchestrator:
  max_cost_usd: 1
  pricing:
    sim-priced: {{ input_per_million: 1, output_per_million: 1 }}
"#,
        url = sim.base_url()
    );
    std::fs::write(dir.path().join("unpriced.yaml"), yaml).unwrap();
    let out = run(
        dir.path(),
        &[
            "--config",
            "unpriced.yaml",
            "--session-dir",
            "sessions",
            "--session-id",
            "u",
            "Hello?",
        ],
    )
    .await;
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    for needle in [
        "`local`",
        "`sim-homegrown`",
        "no known price",
        "orchestrator.pricing",
        "--pricing",
        "--max-tokens",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    assert!(
        !dir.path().join("sessions/u").exists(),
        "nothing was started"
    );
    assert!(sim.requests().is_empty(), "no provider was called");

    // The same cap from the command line is refused the same way.
    std::fs::write(
        dir.path().join("plain.yaml"),
        sim_config_yaml(
            &sim.base_url(),
            &[SimAgent {
                id: "local",
                model: "sim-homegrown",
            }],
            "",
            60,
        ),
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["--config", "plain.yaml", "--max-cost", "0.5", "Hello?"],
    )
    .await;
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("`sim-homegrown`"), "{}", out.stderr);

    // With a token cap as well, every agent's spending is bounded: the session runs.
    let out = run(
        dir.path(),
        &[
            "--config",
            "unpriced.yaml",
            "--max-tokens",
            "1000000",
            "--display",
            "quiet",
            "--session-dir",
            "sessions",
            "--session-id",
            "capped",
            "Hello?",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_over_its_budget_sends_no_turn_again() {
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
        ],
        "  restart_policy: finish\n",
        120,
    );
    std::fs::write(dir.path().join("spent.yaml"), yaml).unwrap();
    let bin = workspace_bin("conclave").unwrap();
    let session_dir = dir.path().join("sessions/spent");
    let mut child = Command::new(&bin)
        .args([
            "--config",
            "spent.yaml",
            "--display",
            "quiet",
            "--session-dir",
            "sessions",
            "--session-id",
            "spent",
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
    child.kill().unwrap(); // SIGKILL: the other turn is in flight, unfinished.
    child.wait().unwrap();
    let before = read_journal(&session_dir).unwrap();
    assert!(
        events_of(&before, "session_ended").is_empty(),
        "the crash came too late"
    );
    let used: u64 = events_of(&before, "usage")
        .iter()
        .map(|u| u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap())
        .sum();
    assert!(used > 1);

    // Resumed with a token cap the journal has already spent: it ends at once, with the
    // answer it has, and no turn goes to the provider again.
    let resumed_at = sim.now_ms();
    let out = run(
        dir.path(),
        &[
            "resume",
            "spent",
            "--session-dir",
            "sessions",
            "--display",
            "quiet",
            "--max-tokens",
            "1",
        ],
    )
    .await;
    assert_eq!(out.code, Some(3), "stderr:\n{}", out.stderr);
    assert!(!out.stdout.trim().is_empty(), "the best answer is printed");
    let started_after: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.started_ms > resumed_at)
        .collect();
    assert!(
        started_after.is_empty(),
        "a provider call started after the cap: {started_after:#?}"
    );
    let after = read_journal(&session_dir).unwrap();
    let exhausted = events_of(&after, "budget_exhausted");
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0]["tokens_used"].as_u64(), Some(used));
    assert_eq!(exhausted[0]["tokens_over"].as_u64(), Some(used - 1));
    let resumed = after
        .iter()
        .position(|e| e["type"] == "session_resumed")
        .unwrap();
    assert!(after[resumed..].iter().all(|e| e["type"] != "turn_started"));
    sim.shutdown().await;
}
