//! Workspace snapshots through the real binaries, on the simulated provider.
//!
//! * Two agents on two agent nodes (restart policy `finish`, so both first turns, which see
//!   no answer yet, end in an answer) (`conclave-agent` processes, each in its own work
//!   directory), each with a workspace (`backend.cwd`, relative: taken against its node's work
//!   directory). Each workspace holds a file before the session (the simulated models call no
//!   file tools; the file tools' own tests write files through the model). Every answer
//!   carries its workspace's snapshot: the journal lists its files with sizes and SHA-256, the
//!   orchestrator stores it under the answer's label, and each agent's peers directory, on its
//!   own node, shows the other's current snapshot as `agent1.N/<file>`, read-only, with the
//!   same bytes: the snapshot crossed the cluster twice (node → orchestrator → other node).
//! * Resume refuses a session whose current answer's snapshot file was altered on disk,
//!   naming the answer and the file, and resumes it once the file is put back.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conclave_tests::{
    SimAgent, events_of, read_journal, run_with_deadline, start_agent_node_in, start_sim,
    workspace_bin,
};
use serde_json::Value;

use crate::cluster::{DEADLINE, FAST_RECONNECT, SECRET, Setup, explain, stop_node, wait};

const ALPHA_FILE: &str = "hello.txt";
const ALPHA_TEXT: &[u8] = b"alpha was here\n";
const BETA_FILE: &str = "notes/plan.md";
const BETA_TEXT: &[u8] = b"# beta's plan\n";

/// The one directory in `peers` named `agent{number}.N`.
fn peer_dir(peers: &Path, number: u32) -> PathBuf {
    let prefix = format!("agent{number}.");
    let found: Vec<PathBuf> = std::fs::read_dir(peers)
        .unwrap_or_else(|e| panic!("no peers directory {}: {e}", peers.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert_eq!(found.len(), 1, "peers of {}: {found:?}", peers.display());
    found[0].clone()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The snapshot manifests journaled with `agent`'s answers.
fn manifests<'a>(journal: &'a [Value], agent: &str) -> Vec<&'a Value> {
    events_of(journal, "decision_received")
        .into_iter()
        .filter(|e| e["agent"] == agent && e["decision"]["NewAnswer"].is_object())
        .map(|e| &e["snapshot"])
        .collect()
}

/// Two agents, alpha on node-a and beta on node-b, each working in `work/` under its node's
/// home, which holds the one file given: the config and the two homes.
pub(crate) fn two_workspace_nodes(
    setup: &Setup,
    files: [(&str, &[u8]); 2],
) -> (PathBuf, PathBuf, PathBuf) {
    let base = setup.sim.base_url();
    let yaml = format!(
        "agents:\n\
         \x20 - id: alpha\n    node: node-a\n    backend: {{type: sim, model: sim-a, base_url: \"{base}\", cwd: work}}\n\
         \x20 - id: beta\n    node: node-b\n    backend: {{type: sim, model: sim-b, base_url: \"{base}\", cwd: work}}\n\
         orchestrator:\n  restart_policy: finish\n\
         timeout_settings:\n  orchestrator_timeout_seconds: 60\n  node_join_timeout_seconds: 30\n"
    );
    let config = setup.write_config(&yaml);
    let root = setup.dir.path();
    let (home_a, home_b) = (root.join("node-a"), root.join("node-b"));
    for (home, (file, bytes)) in [&home_a, &home_b].into_iter().zip(files) {
        let path = home.join("work").join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    (config, home_a, home_b)
}

/// An agent node with its home at `home`, joining at `join`, allowed the simulator.
pub(crate) fn node_in(
    setup: &Setup,
    name: &str,
    home: &Path,
    join: &str,
    extra: &[&str],
) -> conclave_tests::Running {
    let base = setup.sim.base_url();
    let mut flags = FAST_RECONNECT.to_vec();
    flags.extend_from_slice(&["--allow-base-url", &base]);
    flags.extend_from_slice(extra);
    start_agent_node_in(
        Some(home),
        join,
        name,
        &setup.cookie,
        &flags,
        &[("CONCLAVE_SIM_API_KEY", SECRET)],
    )
    .expect("agent node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_two_nodes_read_each_others_snapshots() {
    let setup = Setup::new().await;
    let (config, home_a, home_b) =
        two_workspace_nodes(&setup, [(ALPHA_FILE, ALPHA_TEXT), (BETA_FILE, BETA_TEXT)]);
    let root = setup.dir.path();
    let orchestrator = setup.orchestrator(&config, "snaps", &[]);
    let nodes: Vec<_> = [("node-a", &home_a), ("node-b", &home_b)]
        .into_iter()
        .map(|(name, home)| node_in(&setup, name, home, &setup.join(), &[]))
        .collect();
    let run = wait(orchestrator, DEADLINE).await;
    let mut node_runs = Vec::new();
    for node in nodes {
        node_runs.push(stop_node(node).await);
    }
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    for node in &node_runs {
        assert_eq!(node.code, Some(0), "{}", explain(node));
    }

    // The journal lists each answer's files with sizes and hashes.
    let session_dir = setup.session_dir("snaps");
    let journal = read_journal(&session_dir).unwrap();
    for (agent, file, text) in [
        ("alpha", ALPHA_FILE, ALPHA_TEXT),
        ("beta", BETA_FILE, BETA_TEXT),
    ] {
        let snapshots = manifests(&journal, agent);
        assert!(!snapshots.is_empty(), "{agent} never answered");
        for snapshot in snapshots {
            let files = snapshot["files"].as_array().expect("a snapshot with files");
            assert_eq!(files.len(), 1, "{snapshot}");
            assert_eq!(files[0]["path"], file);
            assert_eq!(files[0]["size"], text.len());
            assert_eq!(
                files[0]["sha256"],
                conclave_protocol::snapshot::sha256_hex(text)
            );
        }
    }
    // The orchestrator stored them under their labels.
    let accepted = events_of(&journal, "answer_accepted");
    assert!(!accepted.is_empty());
    for answer in &accepted {
        // As the orchestrator names it: relative to its working directory, here the test's.
        let dir = root.join(answer["snapshot_dir"].as_str().expect("a stored snapshot"));
        assert_eq!(
            dir,
            session_dir
                .join("snapshots")
                .join(answer["label"].as_str().unwrap())
        );
        let (file, text) = if answer["agent"] == "alpha" {
            (ALPHA_FILE, ALPHA_TEXT)
        } else {
            (BETA_FILE, BETA_TEXT)
        };
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), text);
    }

    // Each node shows the other agent's current snapshot, read-only and anonymous.
    let peers_b = home_b.join("peers/snaps/beta");
    let alpha_seen = peer_dir(&peers_b, 1);
    assert_eq!(
        std::fs::read(alpha_seen.join(ALPHA_FILE)).unwrap(),
        ALPHA_TEXT
    );
    assert_eq!(mode(&alpha_seen.join(ALPHA_FILE)), 0o444);
    assert_eq!(mode(&alpha_seen), 0o555);
    let peers_a = home_a.join("peers/snaps/alpha");
    let beta_seen = peer_dir(&peers_a, 2);
    assert_eq!(std::fs::read(beta_seen.join(BETA_FILE)).unwrap(), BETA_TEXT);
    // Anonymous: no real id or path in what the peers see.
    for dir in [&alpha_seen, &beta_seen] {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains("alpha") && !name.contains("beta"), "{name}");
    }
    // The nodes' caches went with the session.
    for node in &node_runs {
        assert!(
            !node.stderr.contains("snapshot refused"),
            "{}",
            explain(node)
        );
    }
    setup.sim.shutdown().await;
}

/// Runs `conclave` with `args` in `cwd`, bounded.
async fn conclave(cwd: &Path, args: &[&str]) -> conclave_tests::Finished {
    let bin = workspace_bin("conclave").unwrap();
    let cwd = cwd.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
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
async fn resume_refuses_an_altered_snapshot_and_continues_once_it_is_restored() {
    let sim = start_sim(6, 2).await.expect("sim provider starts");
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = conclave_tests::sim_config_yaml(
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
        "",
        60,
    );
    // Each agent its own workspace, each holding the same file.
    let second = yaml.rfind("      base_url:").expect("two agents");
    yaml.insert_str(second, "      cwd: ws-b\n");
    yaml = yaml.replacen("      base_url:", "      cwd: ws-a\n      base_url:", 1);
    std::fs::write(dir.path().join("local.yaml"), &yaml).unwrap();
    for ws in ["ws-a", "ws-b"] {
        std::fs::create_dir_all(dir.path().join(ws)).unwrap();
        std::fs::write(dir.path().join(ws).join("result.txt"), b"42\n").unwrap();
    }
    let run = conclave(
        dir.path(),
        &[
            "--config",
            "local.yaml",
            "--display",
            "quiet",
            "--session-dir",
            "sessions",
            "--session-id",
            "done",
            "Name a prime.",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);

    // Stage a crash right after the first accepted answer: a copy of the session whose
    // journal ends there.
    let done = dir.path().join("sessions/done");
    let crashed = dir.path().join("sessions/crashed");
    copy_tree(&done, &crashed);
    let text = std::fs::read_to_string(done.join("events.jsonl")).unwrap();
    let mut kept = String::new();
    for line in text.lines() {
        kept.push_str(line);
        kept.push('\n');
        if line.contains("\"answer_accepted\"") {
            break;
        }
    }
    std::fs::write(crashed.join("events.jsonl"), &kept).unwrap();
    let journal = read_journal(&crashed).unwrap();
    let label = events_of(&journal, "answer_accepted")[0]["label"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = crashed.join("snapshots").join(&label).join("result.txt");
    std::fs::write(&stored, b"43\n").unwrap();

    let refused = conclave(
        dir.path(),
        &["resume", "sessions/crashed", "--display", "quiet"],
    )
    .await;
    assert_ne!(refused.code, Some(0), "an altered snapshot was resumed");
    assert!(
        refused.stderr.contains(&label) && refused.stderr.contains("result.txt"),
        "the refusal names neither the answer nor the file:\n{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("altered"), "{}", refused.stderr);

    std::fs::write(&stored, b"42\n").unwrap();
    let resumed = conclave(
        dir.path(),
        &["resume", "sessions/crashed", "--display", "quiet"],
    )
    .await;
    assert_eq!(resumed.code, Some(0), "stderr:\n{}", resumed.stderr);
    let after = read_journal(&crashed).unwrap();
    assert_eq!(events_of(&after, "session_resumed").len(), 1);
    assert_eq!(events_of(&after, "session_ended")[0]["reason"], "consensus");
    sim.shutdown().await;
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
