//! The command tool (`mcp__command_line__execute_command`) through the toolbox, with real
//! processes: local mode here; docker mode (against this machine's engine) in
//! `command_docker`.

use std::path::Path;
use std::time::Duration;

use conclave_agent::tools::ToolBox;
use conclave_protocol::tools::{
    AgentTools, CommandLineSpec, CommandMode, DEFAULT_COMMAND_MAX_OUTPUT_BYTES, WorkspaceLimits,
    WorkspaceSpec,
};
use conclave_tests::poll_until;
use serde_json::Value as Json;

use super::{WAIT, run};

pub(crate) const TOOL: &str = "mcp__command_line__execute_command";

pub(crate) fn command_tools(
    workspace: &Path,
    mode: CommandMode,
    spec: CommandLineSpec,
) -> AgentTools {
    AgentTools {
        workspace: Some(WorkspaceSpec {
            cwd: workspace.display().to_string(),
            configured: false,
            peers_dir: workspace.with_extension("peers").display().to_string(),
            context_paths: Vec::new(),
            limits: WorkspaceLimits::default(),
            allowed_tools: None,
            exclude_tools: Vec::new(),
        }),
        command_line: Some(CommandLineSpec { mode, ..spec }),
        ..AgentTools::default()
    }
}

pub(crate) fn spec() -> CommandLineSpec {
    CommandLineSpec {
        mode: CommandMode::Local,
        allowed_commands: Vec::new(),
        blocked_commands: Vec::new(),
        timeout_seconds: 20,
        max_output_bytes: DEFAULT_COMMAND_MAX_OUTPUT_BYTES,
    }
}

pub(crate) async fn start_tools(session: &str, tools: &AgentTools) -> ToolBox {
    let env = |_: &str| None;
    tokio::time::timeout(WAIT * 4, ToolBox::start(session, "agent-a", tools, &env))
        .await
        .expect("the toolbox starts within the deadline")
        .unwrap_or_else(|error| panic!("the command tool starts: {error}"))
}

/// Runs `command` (with extra arguments merged in) and returns the record and the parsed
/// result object (Null when the result is not JSON, e.g. a refusal).
pub(crate) async fn exec(
    toolbox: &ToolBox,
    arguments: serde_json::Value,
) -> (conclave_agent::tools::ToolCallRecord, Json) {
    let record = run(toolbox, TOOL, &arguments.to_string()).await;
    let parsed = serde_json::from_str(&record.content).unwrap_or(Json::Null);
    (record, parsed)
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A zombie is dead for our purpose (its parent has not reaped it yet).
    !stat.is_empty()
        && !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

#[tokio::test]
async fn a_command_runs_in_the_workspace_and_reports_its_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let toolbox = start_tools(
        "s-local",
        &command_tools(&workspace, CommandMode::Local, spec()),
    )
    .await;
    assert!(toolbox.has(TOOL), "{:?}", toolbox.specs());
    assert_eq!(toolbox.starts()[0].transport, "local");
    let (record, result) = exec(
        &toolbox,
        serde_json::json!({"command": "pwd; echo made > made.txt; echo to-err >&2; exit 3"}),
    )
    .await;
    assert!(
        record.error.is_none(),
        "a failing command is a normal result: {}",
        record.content
    );
    let canonical = workspace.canonicalize().expect("workspace created");
    assert_eq!(result["exit_code"], 3, "{result}");
    assert_eq!(result["success"], false);
    assert_eq!(
        result["stdout"].as_str().unwrap().trim(),
        canonical.display().to_string()
    );
    assert_eq!(result["stderr"].as_str().unwrap().trim(), "to-err");
    assert_eq!(
        std::fs::read_to_string(workspace.join("made.txt")).unwrap(),
        "made\n"
    );

    // work_dir: inside the workspace works, outside is refused.
    std::fs::create_dir(workspace.join("sub")).unwrap();
    let (_, inside) = exec(
        &toolbox,
        serde_json::json!({"command": "pwd", "work_dir": "sub"}),
    )
    .await;
    assert!(
        inside["stdout"].as_str().unwrap().trim().ends_with("/sub"),
        "{inside}"
    );
    for escape in ["..", "/", "sub/../.."] {
        let (record, _) = exec(
            &toolbox,
            serde_json::json!({"command": "pwd", "work_dir": escape}),
        )
        .await;
        assert!(
            record.content.contains("outside the workspace"),
            "{escape}: {}",
            record.content
        );
        assert!(record.error.is_some());
    }
    toolbox.shutdown().await;
}

#[tokio::test]
async fn the_environment_holds_none_of_the_nodes_variables() {
    // SAFETY: no other test of this binary reads or writes this variable.
    unsafe { std::env::set_var("CONCLAVE_TEST_SECRET_API_KEY", "sk-must-not-leak") };
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let toolbox = start_tools(
        "s-env",
        &command_tools(&workspace, CommandMode::Local, spec()),
    )
    .await;
    let (_, result) = exec(&toolbox, serde_json::json!({"command": "env"})).await;
    let env = result["stdout"].as_str().expect("env output");
    assert!(!env.contains("sk-must-not-leak"), "{env}");
    assert!(!env.contains("CONCLAVE_TEST_SECRET_API_KEY"), "{env}");
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for name in &names {
        assert!(
            ["PATH", "HOME", "LANG", "PWD", "SHLVL", "_", "OLDPWD"].contains(name),
            "unexpected variable {name} in {env}"
        );
    }
    let home = format!("HOME={}", workspace.canonicalize().unwrap().display());
    assert!(env.lines().any(|l| l == home), "{env}");
    toolbox.shutdown().await;
}

#[tokio::test]
async fn a_command_past_its_deadline_is_killed_with_its_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let toolbox = start_tools(
        "s-timeout",
        &command_tools(&workspace, CommandMode::Local, spec()),
    )
    .await;
    let started = std::time::Instant::now();
    let (record, result) = exec(
        &toolbox,
        serde_json::json!({"command": "sleep 60 & echo $! > bg.pid; echo started; sleep 60", "timeout": 1}),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "killed at the deadline"
    );
    assert_eq!(record.error_type, Some("tool_error"), "{}", record.content);
    assert!(
        record.content.contains("timed out after 1 seconds"),
        "{}",
        record.content
    );
    assert!(
        record.content.contains("started"),
        "output so far is kept: {}",
        record.content
    );
    assert!(
        result.is_null(),
        "an error result is prefixed: {}",
        record.content
    );
    let pid: i32 = std::fs::read_to_string(workspace.join("bg.pid"))
        .expect("bg.pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        poll_until(WAIT, || (!alive(pid)).then_some(())).is_some(),
        "the background sleep {pid} survived the timeout"
    );

    // A command that ends normally takes what it left in the background with it.
    let (_, result) = exec(
        &toolbox,
        serde_json::json!({"command": "sleep 60 & echo $!"}),
    )
    .await;
    let pid: i32 = result["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .expect("a pid");
    assert_eq!(result["exit_code"], 0);
    assert!(
        poll_until(WAIT, || (!alive(pid)).then_some(())).is_some(),
        "the background sleep {pid} outlived its command"
    );
    toolbox.shutdown().await;
}

#[tokio::test]
async fn output_beyond_the_cap_is_cut_with_a_note() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let capped = CommandLineSpec {
        max_output_bytes: 1000,
        ..spec()
    };
    let toolbox = start_tools(
        "s-cap",
        &command_tools(&workspace, CommandMode::Local, capped),
    )
    .await;
    let (record, result) = exec(
        &toolbox,
        serde_json::json!({"command": "head -c 200000 /dev/zero | tr '\\0' x; head -c 5000 /dev/zero | tr '\\0' y >&2"}),
    )
    .await;
    assert!(record.error.is_none(), "{}", record.content);
    let stdout = result["stdout"].as_str().unwrap();
    let stderr = result["stderr"].as_str().unwrap();
    assert_eq!(
        stdout.chars().take_while(|c| *c == 'x').count(),
        1000,
        "the budget is kept"
    );
    assert!(stdout.contains("wrote 200000 bytes"), "{stdout}");
    assert!(stdout.contains("command_line_max_output_bytes"), "{stdout}");
    assert!(
        stderr.starts_with("\n[conclave: output truncated"),
        "stderr shares the spent budget: {stderr}"
    );
    assert!(stderr.contains("wrote 5000 bytes"), "{stderr}");
    toolbox.shutdown().await;
}

#[tokio::test]
async fn allowed_and_blocked_lists_refuse_with_an_error_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let filtered = CommandLineSpec {
        allowed_commands: vec![r"echo\b.*".into(), "ls".into()],
        blocked_commands: vec!["echo secret".into()],
        ..spec()
    };
    let toolbox = start_tools(
        "s-filter",
        &command_tools(&workspace, CommandMode::Local, filtered),
    )
    .await;
    let (record, result) = exec(&toolbox, serde_json::json!({"command": "echo fine"})).await;
    assert!(record.error.is_none(), "{}", record.content);
    assert_eq!(result["stdout"], "fine\n");

    let (record, _) = exec(
        &toolbox,
        serde_json::json!({"command": "cat /etc/hostname"}),
    )
    .await;
    assert_eq!(record.error_type, Some("tool_error"));
    assert!(
        record.content.contains("command_line_allowed_commands"),
        "{}",
        record.content
    );

    let (record, _) = exec(
        &toolbox,
        serde_json::json!({"command": "echo secret > leak.txt"}),
    )
    .await;
    assert!(
        record.content.contains("blocked pattern `echo secret`"),
        "{}",
        record.content
    );
    assert!(
        !workspace.join("leak.txt").exists(),
        "a refused command never runs"
    );

    let (record, _) = exec(&toolbox, serde_json::json!({"command": "echo x; sudo ls"})).await;
    assert!(
        record.content.contains("sudo"),
        "MassGen's built-in refusals: {}",
        record.content
    );
    toolbox.shutdown().await;
}

#[tokio::test]
async fn an_agent_without_a_workspace_cannot_start_the_command_tool() {
    let tools = AgentTools {
        command_line: Some(spec()),
        ..AgentTools::default()
    };
    let env = |_: &str| None;
    let error = ToolBox::start("s", "agent-a", &tools, &env)
        .await
        .expect_err("no workspace");
    assert!(error.to_string().contains("workspace"), "{error}");
}
