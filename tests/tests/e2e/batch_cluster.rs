//! End-to-end: `conclave batch` spread over a cluster, and an agent node killed with SIGKILL
//! mid-batch. Real processes on loopback: the batch (`--listen`), two `conclave-agent` nodes
//! and the simulated provider.
//!
//! What must hold (issue 15: "a node lost mid-batch fails only its agents' turns, as in a
//! single session"):
//! * the batch ends by itself, within a bounded deadline, and exits 0;
//! * every task is in the results file exactly once (none is lost, none is run twice);
//! * the sessions running when the node died lose only its agent (`agent_lost` naming the
//!   node) and end with the surviving agents' consensus;
//! * the sessions started after the loss do not wait for the lost node nor fail: they start
//!   with its agent down and finish on the surviving agents.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use conclave_tests::{
    NodeAgent, Running, events_of, poll_until, read_journal, sim_cluster_yaml, workspace_bin,
};
use serde_json::Value;

use crate::cluster::{DEADLINE, Setup, explain, stop_node, wait};

const TASKS: usize = 12;

fn results(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn agents_of(events: &[&Value]) -> HashSet<String> {
    events
        .iter()
        .filter_map(|e| e["agent"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_agent_node_mid_batch_fails_only_its_agents_and_the_batch_finishes() {
    let setup = Setup::new().await;
    let base = setup.sim.base_url();
    // beta's turns take ~1 s, so the kill lands inside some of them; alpha and gamma are fast.
    // A node that never joins would be waited for 20 s: a session that waits for the lost
    // node instead of starting without it shows up as a batch far slower than the deadline
    // allows, and as failed tasks.
    let config = setup.write_config(&sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: Some("node-a"),
            },
            NodeAgent {
                id: "beta",
                model: "sim-b:tokens=20,token_delay_ms=50",
                node: Some("node-b"),
            },
            NodeAgent {
                id: "gamma",
                model: "sim-c",
                node: Some("node-a"),
            },
        ],
        "  restart_policy: cancel\n",
        60,
        20,
    ));
    let tasks: String = (1..=TASKS)
        .map(|i| format!("{{\"id\": \"t{i}\", \"question\": \"What is {i} plus {i}?\"}}\n"))
        .collect();
    std::fs::write(setup.dir.path().join("tasks.jsonl"), tasks).unwrap();
    let out = setup.dir.path().join("results.jsonl");

    let mut command = Command::new(workspace_bin("conclave").expect("conclave binary"));
    command
        .args(["batch", "tasks.jsonl", "--out", "results.jsonl", "--config"])
        .arg(&config)
        .args([
            "--concurrency",
            "3",
            "--listen",
            &setup.join(),
            "--cookie-file",
        ])
        .arg(&setup.cookie)
        .current_dir(setup.dir.path())
        .env_remove("RUST_LOG")
        .env_remove("CONCLAVE_COOKIE")
        .env_remove("CONCLAVE_SIM_API_KEY");
    let run = Running::start(&mut command).expect("batch starts");
    let node_a = setup.node("node-a", &[]);
    let node_b = setup.node("node-b", &[]);

    // Kill node-b once some tasks are done and others run (beta mid-turn in at least one).
    let sessions = setup.dir.path().join("results.batch/sessions");
    let some_done = {
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            poll_until(Duration::from_secs(60), || {
                (results(&out).len() >= 2).then_some(())
            })
        })
        .await
        .unwrap()
    };
    assert!(some_done.is_some(), "two tasks finished within 60 s");
    let done_before_kill: HashSet<String> = results(&out)
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        done_before_kill.len() < TASKS,
        "the whole batch finished before the kill"
    );
    node_b.signal(libc::SIGKILL).unwrap();
    let killed = wait(node_b, DEADLINE).await;
    assert_eq!(killed.code, None, "node-b was killed by a signal");

    let batch = wait(run, DEADLINE).await;
    stop_node(node_a).await;
    assert_eq!(batch.code, Some(0), "{}", explain(&batch));

    // Every task is in the results file exactly once, with a final answer.
    let lines = results(&out);
    let mut by_id: HashMap<String, &Value> = HashMap::new();
    for line in &lines {
        let id = line["id"].as_str().expect("a result has its task id");
        assert!(by_id.insert(id.to_owned(), line).is_none(), "{id} twice");
        assert!(
            line["final_answer"].as_str().is_some_and(|a| !a.is_empty()),
            "{line}"
        );
    }
    assert_eq!(by_id.len(), TASKS, "every task has a result: {lines:?}");
    let failed = setup.dir.path().join("results.batch/failed.jsonl");
    let failed = std::fs::read_to_string(&failed).unwrap_or_default();
    assert!(failed.trim().is_empty(), "no task failed: {failed}");

    // Only beta was lost; the tasks after the kill ran on alpha and gamma.
    let mut lost_mid_turn = 0;
    let mut started_without_beta = 0;
    let mut unaffected = 0;
    for id in by_id.keys() {
        let journal = read_journal(&sessions.join(id)).expect("a task's journal");
        assert_eq!(
            events_of(&journal, "session_ended")[0]["reason"],
            "consensus",
            "{id}"
        );
        let lost = events_of(&journal, "agent_lost");
        if lost.is_empty() {
            // Ended before the loss was noticed: the tasks done before the kill, and at most
            // one slot's worth more that ended while it landed.
            assert!(
                !events_of(&journal, "answer_accepted").is_empty(),
                "{id}: {journal:?}"
            );
            unaffected += 1;
            continue;
        }
        assert_eq!(
            agents_of(&lost),
            HashSet::from(["beta".to_owned()]),
            "{id}: only node-b's agent is lost"
        );
        assert!(
            lost[0]["reason"].as_str().unwrap_or("").contains("node-b"),
            "{id}: {lost:?}"
        );
        // A session that started after the loss says so: it never waited for node-b.
        let reason = lost[0]["reason"].as_str().unwrap_or("");
        if reason.contains("before this session") {
            started_without_beta += 1;
        } else {
            lost_mid_turn += 1;
        }
        let beta_decided = journal.iter().any(|e| {
            e["agent"] == "beta" && (e["type"] == "vote_accepted" || e["type"] == "answer_accepted")
        });
        assert!(
            !(reason.contains("before this session") && beta_decided),
            "{id}: beta decided in a session it never ran in"
        );
        let voters = agents_of(&events_of(&journal, "vote_accepted"));
        assert!(
            voters.contains("alpha") && voters.contains("gamma"),
            "{id}: the surviving agents decided: {voters:?}"
        );
        assert_ne!(
            events_of(&journal, "final_answer")[0]["winner"],
            "beta",
            "{id}: the lost agent cannot present"
        );
    }
    assert!(
        unaffected <= done_before_kill.len() + 3,
        "{unaffected} tasks never noticed the loss; {} were done before it",
        done_before_kill.len()
    );
    assert!(
        started_without_beta >= 1,
        "some task started after the kill and ran without the lost node (lost mid-turn: {lost_mid_turn})"
    );
}
