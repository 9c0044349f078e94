//! End-to-end: `restart_policy: inject` through the real binary, with agents that use a real
//! MCP server (`conclave-mcp-demo`) on the simulated provider's `tools` policy.
//!
//! One fast agent answers while two slower ones are still in their tool loops. Under `inject`
//! their turns are not cancelled: the new answer reaches each of them at its next tool
//! boundary (journaled as sent, as taken by the agent, and as accepted by the machine), and
//! their votes, made on the new revision, count. A session cut right after an injection and
//! resumed re-sends the injected turn with the injected revision.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use conclave_tests::{Finished, events_of, read_journal, run_with_deadline, workspace_bin};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

/// Three agents with one demo MCP server each: `alpha` calls its tool once with quick replies,
/// `beta` and `gamma` four times with slow ones.
fn config(dir: &Path, base_url: &str) -> std::path::PathBuf {
    let demo = workspace_bin("conclave-mcp-demo").expect("demo MCP server built");
    let mut yaml = String::from("agents:\n");
    for (id, model) in [
        (
            "alpha",
            "sim-a:policy=tools,tool_calls=1,tokens=4,token_delay_ms=1",
        ),
        (
            "beta",
            "sim-b:policy=tools,tool_calls=4,tokens=8,token_delay_ms=15",
        ),
        (
            "gamma",
            "sim-c:policy=tools,tool_calls=4,tokens=8,token_delay_ms=20",
        ),
    ] {
        yaml.push_str(&format!(
            "  - id: {id}\n    backend:\n      type: sim\n      model: \"{model}\"\n      base_url: \"{base_url}\"\n      mcp_servers:\n        - name: demo\n          type: stdio\n          command: \"{}\"\n",
            demo.display()
        ));
    }
    yaml.push_str(
        "orchestrator:\n  restart_policy: inject\n  max_midstream_injections_per_round: 2\ntimeout_settings:\n  orchestrator_timeout_seconds: 60\n",
    );
    let path = dir.join("inject.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

fn conclave(args: &[&str], cwd: &Path) -> Finished {
    let bin = workspace_bin("conclave").expect("conclave binary");
    let mut command = Command::new(bin);
    command.args(args).current_dir(cwd).env_remove("RUST_LOG");
    run_with_deadline(&mut command, DEADLINE).expect("conclave finishes in time")
}

fn injected_by_agents(journal: &[Value]) -> Vec<(String, u64)> {
    events_of(journal, "turn_progress")
        .into_iter()
        .filter_map(|e| {
            let revision = e["event"]["AnswersInjected"]["revision"].as_u64()?;
            Some((e["agent"].as_str()?.to_owned(), revision))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_answer_reaches_running_tool_loops_and_their_votes_count() {
    let sim = conclave_tests::start_sim(4, 1).await.expect("sim starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &sim.base_url());
    let question = "capital of france";
    let run = tokio::task::spawn_blocking({
        let cwd = dir.path().to_owned();
        let config = config.display().to_string();
        move || {
            conclave(
                &[
                    "--config",
                    &config,
                    "--display",
                    "plain",
                    "--session-dir",
                    "sessions",
                    "--session-id",
                    "inject",
                    question,
                ],
                &cwd,
            )
        }
    })
    .await
    .expect("runner");
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let journal = read_journal(&dir.path().join("sessions/inject")).expect("journal");

    // Nothing was cancelled: the slow agents kept their tool work.
    assert!(
        events_of(&journal, "turn_cancelled").is_empty(),
        "{:#?}",
        events_of(&journal, "turn_cancelled")
    );
    // alpha's answer was sent to beta and gamma, who took it at a tool boundary...
    let sent: Vec<&str> = events_of(&journal, "injection_sent")
        .iter()
        .filter_map(|e| e["agent"].as_str())
        .collect();
    assert!(
        sent.contains(&"beta") && sent.contains(&"gamma"),
        "{sent:?}"
    );
    let taken = injected_by_agents(&journal);
    assert!(
        taken.contains(&("beta".into(), 1)) && taken.contains(&("gamma".into(), 1)),
        "{taken:?}"
    );
    assert_eq!(events_of(&journal, "answers_injected").len(), taken.len());
    // ...and voted on revision 1: their votes count, none was discarded as stale.
    assert!(events_of(&journal, "vote_discarded").is_empty());
    let voters: Vec<(&str, u64)> = events_of(&journal, "vote_accepted")
        .iter()
        .filter_map(|e| Some((e["agent"].as_str()?, e["revision"].as_u64()?)))
        .collect();
    for agent in ["beta", "gamma"] {
        assert!(
            voters.contains(&(agent, 1)),
            "{agent} did not vote on revision 1: {voters:?}"
        );
    }
    // The injection reached the model inside a tool result: the tools policy quotes its tool
    // results in its vote's reason.
    let reasons: Vec<&str> = events_of(&journal, "vote_accepted")
        .iter()
        .filter(|e| e["agent"] == "beta")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("<UPDATE>") && r.contains("agent1.1")),
        "beta's model never read the injected answers: {reasons:?}\n{}",
        journal
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(events_of(&journal, "consensus_reached").len(), 1);

    // Cut the journal right after beta took the injection (a crash), then resume: beta's turn
    // is re-sent with the injected revision, and the session finishes.
    let path = dir.path().join("sessions/inject/events.jsonl");
    let text = std::fs::read_to_string(&path).expect("journal text");
    let cut = text
        .lines()
        .position(|line| line.contains("AnswersInjected") && line.contains("\"beta\""))
        .expect("beta's injection is journaled");
    let kept: String = text
        .lines()
        .take(cut + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, kept).expect("cut journal");
    let _ = std::fs::remove_file(dir.path().join("sessions/inject/final.md"));
    // The journal keeps the config (and the sim's address): the same provider serves the rest.
    let resumed = tokio::task::spawn_blocking({
        let cwd = dir.path().to_owned();
        move || conclave(&["resume", "sessions/inject", "--display", "plain"], &cwd)
    })
    .await
    .expect("runner");
    assert_eq!(
        resumed.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        resumed.stdout,
        resumed.stderr
    );
    let journal = read_journal(&dir.path().join("sessions/inject")).expect("journal");
    let resumed_at = journal
        .iter()
        .position(|e| e["type"] == "session_resumed")
        .expect("resume journaled");
    let beta_restart = journal[resumed_at..]
        .iter()
        .find(|e| e["type"] == "turn_started" && e["agent"] == "beta")
        .expect("beta's turn re-sent");
    assert_eq!(beta_restart["revision"], 1, "{beta_restart}");
    assert_eq!(events_of(&journal[resumed_at..], "vote_discarded").len(), 0);
    sim.shutdown().await;
}
