//! End-to-end: the command tool (`enable_mcp_command_line`, `command_line_execution_mode:
//! local`) of an agent placed on an agent node, through the real binaries: a `conclave`
//! orchestrator (`--listen` on loopback) and a `conclave-agent` process, against the simulated
//! provider, whose `tools` policy calls `mcp__command_line__execute_command` once and quotes
//! the result in its answer, its vote and its final presentation.
//!
//! * The command runs on the node: its shell is a child of the node process (`$PPID`), in the
//!   agent's workspace under the node's `--work-dir` (`workspaces/<session>/<agent>`), not in
//!   the orchestrator's session directory nor in the node's current directory.
//! * Its environment holds none of the node's variables: the node's `OPENAI_API_KEY`, its
//!   provider key and a marker variable are all absent.
//! * The orchestrator journals the call and its result (`turn_progress` / `ToolCalled`), and
//!   the session ends (exit 0) with a final answer quoting what the command printed.
//!
//! Build first: `cargo build --workspace --bins && cargo test -p conclave-tests --test e2e
//! node_commands::`

use std::path::Path;

use conclave_tests::{events_of, read_journal, start_agent_node_in};
use serde_json::Value;

use crate::cluster::{DEADLINE, FAST_RECONNECT, SECRET, Setup, explain, stop_node, wait};
use crate::commands::percent_encode;

const NODE_KEY: &str = "sk-node-secret-4242";
const NODE_MARKER: &str = "conclave-node-marker-9191";
const SESSION: &str = "node-cmd";
const TOOL: &str = "mcp__command_line__execute_command";

/// One agent, `alpha`, on node `node-a`, that runs `command` with the command tool.
fn config(base: &str, command: &str) -> String {
    let args = percent_encode(&serde_json::json!({ "command": command }).to_string());
    format!(
        "agents:\n\
         \x20 - id: alpha\n\
         \x20   node: node-a\n\
         \x20   backend:\n\
         \x20     type: sim\n\
         \x20     model: \"sim-a:policy=tools,tool=execute_command,tool_args={args}\"\n\
         \x20     base_url: \"{base}\"\n\
         \x20     enable_mcp_command_line: true\n\
         \x20     command_line_execution_mode: local\n\
         orchestrator:\n  restart_policy: cancel\n\
         timeout_settings:\n  orchestrator_timeout_seconds: 60\n  node_join_timeout_seconds: 30\n"
    )
}

/// The `stdout` of a command tool result (MassGen's JSON object), or the whole text when it
/// is not one.
fn stdout_of(result: &str) -> String {
    serde_json::from_str::<Value>(result)
        .ok()
        .and_then(|v| v["stdout"].as_str().map(str::to_owned))
        .unwrap_or_else(|| result.to_owned())
}

/// The value of the first `key=...` line of `text`.
fn line_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_of_an_agent_on_a_node_runs_there_without_the_nodes_keys() {
    let setup = Setup::new().await;
    let base = setup.sim.base_url();
    let root = setup.dir.path();
    // The node runs from one directory and keeps its agents' workspaces in another.
    let node_cwd = root.join("node-a-cwd");
    let node_home = root.join("node-a-home");
    std::fs::create_dir_all(&node_cwd).unwrap();
    std::fs::create_dir_all(&node_home).unwrap();
    let command = "echo node-ran > proof.txt; cat proof.txt; echo cwd=$(pwd); echo home=$HOME; \
                   echo ppid=$PPID; echo keys=$(env | grep -c API_KEY); echo env-begin; env; \
                   echo env-end";
    let config = setup.write_config(&config(&base, command));
    let orchestrator = setup.orchestrator(&config, SESSION, &[]);
    let mut flags = FAST_RECONNECT.to_vec();
    let home_flag = node_home.display().to_string();
    flags.extend_from_slice(&["--allow-base-url", &base, "--work-dir", &home_flag]);
    let node = start_agent_node_in(
        Some(&node_cwd),
        &setup.join(),
        "node-a",
        &setup.cookie,
        &flags,
        &[
            ("CONCLAVE_SIM_API_KEY", SECRET),
            ("OPENAI_API_KEY", NODE_KEY),
            ("CONCLAVE_NODE_MARKER", NODE_MARKER),
        ],
    )
    .expect("agent node starts");
    let node_pid = node.pid();
    let run = wait(orchestrator, DEADLINE).await;
    let node_run = stop_node(node).await;
    assert_eq!(
        run.code,
        Some(0),
        "{}\nnode:\n{}",
        explain(&run),
        explain(&node_run)
    );
    assert_eq!(node_run.code, Some(0), "{}", explain(&node_run));

    // The workspace is the node's: under its --work-dir, created there by the command.
    let workspace = node_home
        .canonicalize()
        .unwrap()
        .join("workspaces")
        .join(SESSION)
        .join("alpha");
    assert_eq!(
        std::fs::read_to_string(workspace.join("proof.txt")).expect("proof.txt on the node"),
        "node-ran\n"
    );
    let session_dir = setup.session_dir(SESSION);
    assert!(
        !session_dir.join("workspaces/alpha/proof.txt").exists(),
        "the command ran in the orchestrator's session directory"
    );
    assert!(
        !node_cwd.join("workspaces").exists(),
        "the node took the workspace against its current directory, not --work-dir"
    );

    // The orchestrator journaled the call and its result.
    let journal = read_journal(&session_dir).expect("journal");
    let calls: Vec<&Value> = events_of(&journal, "turn_progress")
        .into_iter()
        .filter(|e| e["agent"] == "alpha" && e["event"]["ToolCalled"].is_object())
        .map(|e| &e["event"]["ToolCalled"])
        .collect();
    assert!(!calls.is_empty(), "no tool call journaled");
    for call in &calls {
        assert_eq!(call["report"]["tool"], TOOL, "{call}");
        assert!(
            call["report"]["error"].is_null(),
            "the command failed: {call}"
        );
        assert!(
            !call["report"]["truncated"].as_bool().unwrap_or(true),
            "{call}"
        );
        let result = call["result"].as_str().expect("a journaled result");
        let parsed: Value = serde_json::from_str(result)
            .unwrap_or_else(|e| panic!("the result is not MassGen's JSON object ({e}): {result}"));
        assert_eq!(parsed["exit_code"], 0, "{result}");
        assert_eq!(parsed["command"], command, "{result}");
        assert_eq!(
            parsed["work_dir"].as_str().map(Path::new),
            Some(workspace.as_path()),
            "{result}"
        );
        let stdout = stdout_of(result);

        // It ran on the node: in the node's workspace, as a child of the node process.
        let shown = |key: &str| {
            line_value(&stdout, key)
                .unwrap_or_else(|| panic!("no {key}= in the command's output:\n{stdout}"))
        };
        assert_eq!(Path::new(shown("cwd")), workspace, "{stdout}");
        assert_eq!(Path::new(shown("home")), workspace, "{stdout}");
        assert_eq!(
            shown("ppid"),
            node_pid.to_string(),
            "the shell's parent is not the node process: {stdout}"
        );
        assert!(stdout.starts_with("node-ran\n"), "{stdout}");

        // Its environment holds none of the node's variables.
        assert_eq!(shown("keys"), "0", "{stdout}");
        let env = stdout
            .split_once("env-begin\n")
            .and_then(|(_, rest)| rest.split_once("env-end"))
            .map(|(env, _)| env)
            .unwrap_or_else(|| panic!("no environment listing in:\n{stdout}"));
        assert!(env.contains("PATH="), "the listing is not `env`'s: {env}");
        for leak in [
            "OPENAI_API_KEY",
            NODE_KEY,
            "CONCLAVE_SIM_API_KEY",
            SECRET,
            "CONCLAVE_NODE_MARKER",
            NODE_MARKER,
        ] {
            assert!(
                !env.contains(leak),
                "{leak} reached the command's environment:\n{env}"
            );
        }
    }

    // The result reached the session's final answer; no key reached the journal at all.
    let finals = events_of(&journal, "final_answer");
    assert_eq!(finals.len(), 1, "{finals:?}");
    let answer = finals[0]["content"].as_str().unwrap_or_default();
    for printed in ["node-ran", &format!("ppid={node_pid}"), "keys=0"] {
        assert!(
            answer.contains(printed),
            "{printed:?} is not in the final answer: {answer}"
        );
    }
    let text = journal
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    for secret in [NODE_KEY, SECRET, NODE_MARKER] {
        assert!(!text.contains(secret), "{secret} is in the journal");
    }
}
