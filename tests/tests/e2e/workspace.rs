//! End-to-end: agents with workspaces (`backend.cwd`) through the real `conclave` binary, the
//! simulated models calling the file tools (`policy=tools,tool=write_file,tool_args=...`).
//! Agents write files in their own `cwd`; the winner's presentation writes there too and
//! `final.md` names the directory; an agent's attempt to write outside its workspace is
//! refused, journaled as an error result, and leaves no file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conclave_sim::{SimConfig, SimServer};
use conclave_tests::{Finished, run_with_deadline, workspace_bin};

const DEADLINE: Duration = Duration::from_secs(90);

async fn conclave(args: Vec<String>, cwd: PathBuf) -> Finished {
    let bin = workspace_bin("conclave").expect("conclave binary");
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command.args(&args).current_dir(&cwd).env_remove("RUST_LOG");
        run_with_deadline(&mut command, DEADLINE)
    })
    .await
    .expect("runner thread")
    .expect("conclave finishes in time")
}

fn only_session(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("sessions"))
        .expect("sessions dir")
        .flatten()
        .next()
        .expect("one session")
        .path()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_write_in_their_cwd_the_winner_leaves_its_files_and_escapes_are_refused() {
    let sim = SimServer::start(
        SimConfig {
            tokens: 4,
            token_delay: Duration::from_millis(1),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
    std::fs::create_dir_all(root.join("conf")).expect("conf dir");
    let base_url = sim.base_url();
    // Relative `cwd`s: relative to the config file's directory (`conf/`). Beta starts 400 ms
    // late, so alpha answers first and wins the vote.
    // Gamma searches its peers directory (where answers' snapshots appear, read-only) for
    // alpha's file; it starts 400 ms late, so its turn restarts on alpha's answer first.
    let peers = root.join("sessions/ws1/peers/gamma");
    let peers = peers.display();
    let yaml = format!(
        "agents:\n  - id: alpha\n    backend:\n      type: sim\n      model: \"sim-a:policy=tools,tool=write_file,tool_args=path~report.md|content~alpha wrote this\"\n      base_url: \"{base_url}\"\n      cwd: work/alpha\n  - id: beta\n    backend:\n      type: sim\n      model: \"sim-b:policy=tools,first_byte_ms=400,tool=write_file,tool_args=path~../../escaped.txt|content~should not exist\"\n      base_url: \"{base_url}\"\n      cwd: work/beta\n  - id: gamma\n    backend:\n      type: sim\n      model: \"sim-c:policy=tools,first_byte_ms=400,tool=search_files,tool_args=path~{peers}|pattern~report.md|content~alpha wrote\"\n      base_url: \"{base_url}\"\n      cwd: work/gamma\norchestrator:\n  restart_policy: cancel\n  max_new_answers_per_agent: 1\ntimeout_settings:\n  orchestrator_timeout_seconds: 60\n"
    );
    let config = root.join("conf/workspace.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let args: Vec<String> = [
        "--config",
        config.to_str().unwrap_or_default(),
        "--display",
        "plain",
        "--session-dir",
        "sessions",
        "--session-id",
        "ws1",
        "Write the report.",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let run = conclave(args, root.clone()).await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );

    let alpha = root.join("conf/work/alpha");
    let beta = root.join("conf/work/beta");
    assert_eq!(
        std::fs::read_to_string(alpha.join("report.md")).expect("alpha's file in its cwd"),
        "alpha wrote this"
    );
    assert!(beta.is_dir(), "beta's cwd is created");
    assert!(
        !root.join("escaped.txt").exists() && !root.join("conf/escaped.txt").exists(),
        "the escape left a file"
    );

    let session = only_session(&root);
    let journal = conclave_tests::read_journal(&session).expect("journal");
    // (agent, turn, report) of every tool call.
    let calls: Vec<(String, u64, serde_json::Value)> =
        conclave_tests::events_of(&journal, "turn_progress")
            .into_iter()
            .filter(|e| e["event"]["ToolCalled"].is_object())
            .map(|e| {
                (
                    e["agent"].as_str().unwrap_or_default().to_owned(),
                    e["turn"].as_u64().unwrap_or_default(),
                    e["event"]["ToolCalled"]["report"].clone(),
                )
            })
            .collect();
    let of = |agent: &str| -> Vec<&(String, u64, serde_json::Value)> {
        calls.iter().filter(|(a, _, _)| a == agent).collect()
    };
    let alpha_calls = of("alpha");
    assert!(!alpha_calls.is_empty(), "{calls:#?}");
    for (_, _, report) in &alpha_calls {
        assert_eq!(report["tool"], "mcp__filesystem__write_file", "{report}");
        assert!(report["error"].is_null(), "alpha's write failed: {report}");
    }
    let beta_calls = of("beta");
    assert!(!beta_calls.is_empty(), "{calls:#?}");
    for (_, _, report) in &beta_calls {
        let error = report["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("`..` escapes are refused"),
            "beta's escape was not refused as such: {report}"
        );
    }

    // Gamma found alpha's file in its peers directory, under an anonymous label, and read it.
    let gamma_calls = of("gamma");
    let (_, _, last) = gamma_calls.last().expect("gamma called its tool");
    assert_eq!(last["tool"], "mcp__filesystem__search_files", "{last}");
    assert!(last["error"].is_null(), "gamma's search failed: {last}");
    let found: Vec<String> = conclave_tests::events_of(&journal, "turn_progress")
        .into_iter()
        .filter(|e| e["agent"] == "gamma")
        .filter_map(|e| {
            e["event"]["ToolCalled"]["result"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let hit = found
        .iter()
        .find(|text| text.contains("alpha wrote this"))
        .unwrap_or_else(|| panic!("gamma never saw alpha's file: {found:#?}"));
    assert!(
        hit.contains("/agent") && hit.contains("/report.md") && !hit.contains("alpha/"),
        "the snapshot is not under an anonymous label: {hit}"
    );
    let snapshot_file = std::fs::read_dir(root.join("sessions/ws1/peers/gamma"))
        .expect("gamma's peers dir")
        .flatten()
        .map(|entry| entry.path().join("report.md"))
        .find(|path| path.exists())
        .expect("alpha's snapshot in gamma's peers dir");
    let mode = std::fs::metadata(&snapshot_file)
        .expect("metadata")
        .permissions();
    assert!(mode.readonly(), "a peer's snapshot is writable");

    // The winner is alpha (every agent votes for the first answer); its presentation wrote in its
    // real cwd, and final.md names that directory.
    let finals = conclave_tests::events_of(&journal, "final_answer");
    assert_eq!(finals.len(), 1, "{finals:#?}");
    assert_eq!(finals[0]["winner"], "alpha", "{}", finals[0]);
    let present_turns: Vec<u64> = conclave_tests::events_of(&journal, "turn_started")
        .into_iter()
        .filter(|t| t["agent"] == "alpha" && t["mode"] == "present")
        .filter_map(|t| t["turn"].as_u64())
        .collect();
    assert_eq!(present_turns.len(), 1, "one presentation turn");
    assert!(
        alpha_calls
            .iter()
            .any(|(_, turn, report)| *turn == present_turns[0] && report["error"].is_null()),
        "the presentation used the file tools: {calls:#?}"
    );
    let final_md = std::fs::read_to_string(session.join("final.md")).expect("final.md");
    assert!(
        final_md.contains(&format!("The final files are in `{}`", alpha.display())),
        "{final_md}"
    );
}
