//! The tool layer (`conclave_agent::tools`) against real MCP servers: conclave's demo server
//! (`conclave-mcp-demo`, over stdio as a child process and over Streamable HTTP in-process)
//! and a server written with the official MCP Python SDK.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`). The Python test reads the
//! interpreter from `CONCLAVE_TEST_PYTHON` (a venv with `mcp` installed; `.ci/run` makes one);
//! without it the test says it did not run, except under `CI=true`, where that is a failure.

mod command;
mod command_docker;

use std::time::Duration;

use conclave_agent::tools::{ToolBox, ToolCallRecord, ToolStartError};
use conclave_protocol::ToolCall;
use conclave_protocol::tools::{AgentTools, McpServerSpec, McpTransport, ToolLimits};
use conclave_tests::{poll_until, workspace_bin};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn demo_stdio(name: &str, extra_args: &[&str]) -> McpServerSpec {
    let bin = workspace_bin("conclave-mcp-demo").expect("demo server built");
    McpServerSpec {
        name: name.to_owned(),
        transport: McpTransport::Stdio {
            command: bin.display().to_string(),
            args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![("DEMO_SETTING".into(), "${DEMO_SETTING:-unset}".into())],
            cwd: None,
        },
        allowed_tools: None,
        exclude_tools: Vec::new(),
        optional: false,
    }
}

fn tools(servers: Vec<McpServerSpec>, limits: ToolLimits) -> AgentTools {
    AgentTools {
        mcp_servers: servers,
        limits,
        ..AgentTools::default()
    }
}

async fn start(servers: Vec<McpServerSpec>, limits: ToolLimits) -> Result<ToolBox, ToolStartError> {
    let env = |_: &str| None;
    tokio::time::timeout(
        WAIT,
        ToolBox::start("test-session", "agent-a", &tools(servers, limits), &env),
    )
    .await
    .expect("the toolbox starts within the deadline")
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall::new(id, name, arguments)
}

async fn run(toolbox: &ToolBox, name: &str, arguments: &str) -> ToolCallRecord {
    tokio::time::timeout(
        WAIT,
        toolbox.call(
            &call("c1", name, arguments),
            conclave_protocol::TurnMode::Coordinate,
        ),
    )
    .await
    .expect("the call ends within the deadline")
}

/// Whether a process is gone (no /proc entry, or a zombie waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[tokio::test]
async fn stdio_server_tools_are_offered_under_massgen_names_and_answer() {
    let toolbox = start(vec![demo_stdio("demo", &[])], ToolLimits::default())
        .await
        .expect("demo starts");
    let names: Vec<String> = toolbox.specs().into_iter().map(|s| s.name).collect();
    for tool in ["lookup", "add", "slow", "fail", "big", "pid", "crash"] {
        assert!(names.contains(&format!("mcp__demo__{tool}")), "{names:?}");
    }
    let lookup = toolbox
        .specs()
        .into_iter()
        .find(|s| s.name == "mcp__demo__lookup")
        .expect("lookup offered");
    assert_eq!(lookup.parameters["type"], "object");
    assert!(lookup.parameters["required"].to_string().contains("key"));

    let record = run(
        &toolbox,
        "mcp__demo__lookup",
        r#"{"key": "capital of France"}"#,
    )
    .await;
    assert_eq!(record.error, None);
    assert_eq!(record.content, "The capital of France is Paris.");
    assert_eq!(record.call_id, "c1");
    assert_eq!(record.result_bytes, record.content.len() as u64);
    let record = run(&toolbox, "mcp__demo__add", r#"{"a": 2, "b": 40.5}"#).await;
    assert_eq!(record.content, "42.5");
    let starts = toolbox.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].server, "demo");
    assert_eq!(starts[0].transport, "stdio");
    assert_eq!(starts[0].tools, 7);
    toolbox.shutdown().await;
}

#[tokio::test]
async fn streamable_http_server_works_and_headers_are_expanded_on_the_node() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let server = tokio::spawn(conclave_mcp_demo::serve_http(listener, stop.clone()));
    let spec = McpServerSpec {
        name: "web".into(),
        transport: McpTransport::StreamableHttp {
            url: format!("http://{addr}/mcp"),
            headers: vec![("X-Demo-Token".into(), "${DEMO_TOKEN}".into())],
        },
        allowed_tools: None,
        exclude_tools: vec!["crash".into()],
        optional: false,
    };
    let env = |name: &str| (name == "DEMO_TOKEN").then(|| "t0ken".to_owned());
    let toolbox = tokio::time::timeout(
        WAIT,
        ToolBox::start(
            "test-session",
            "agent-a",
            &tools(vec![spec.clone()], ToolLimits::default()),
            &env,
        ),
    )
    .await
    .expect("in time")
    .expect("http server connects");
    assert!(toolbox.has("mcp__web__lookup"));
    assert!(!toolbox.has("mcp__web__crash"), "exclude_tools removes it");
    let record = run(&toolbox, "mcp__web__lookup", r#"{"key": "answer"}"#).await;
    assert_eq!(record.content, "The answer is 42.");
    assert_eq!(toolbox.starts()[0].transport, "streamable-http");
    toolbox.shutdown().await;

    // A header whose variable is not set on the node: the start fails naming the variable.
    let none = |_: &str| None;
    let error = ToolBox::start(
        "test-session",
        "agent-a",
        &tools(vec![spec], ToolLimits::default()),
        &none,
    )
    .await
    .expect_err("unset variable");
    let text = error.to_string();
    assert!(
        text.contains("agent `agent-a`") && text.contains("MCP server `web`"),
        "{text}"
    );
    assert!(text.contains("DEMO_TOKEN"), "{text}");
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, server).await;
}

#[tokio::test]
async fn allowed_and_excluded_tools_filter_the_offer() {
    let mut spec = demo_stdio("demo", &[]);
    spec.allowed_tools = Some(vec!["lookup".into(), "mcp__demo__add".into(), "big".into()]);
    spec.exclude_tools = vec!["mcp__demo__big".into()];
    let toolbox = start(vec![spec], ToolLimits::default())
        .await
        .expect("starts");
    let names: Vec<String> = toolbox.specs().into_iter().map(|s| s.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(toolbox.has("mcp__demo__lookup") && toolbox.has("mcp__demo__add"));
    // A filtered-out tool is unknown to the model.
    let record = run(&toolbox, "mcp__demo__big", r#"{"bytes": 3}"#).await;
    assert!(
        record
            .content
            .contains("there is no tool named `mcp__demo__big`"),
        "{}",
        record.content
    );
}

#[tokio::test]
async fn bad_tool_use_becomes_error_results_the_model_can_read() {
    let limits = ToolLimits {
        tool_timeout_seconds: 1,
        max_tool_result_bytes: 1024,
        ..ToolLimits::default()
    };
    let toolbox = start(vec![demo_stdio("demo", &[])], limits)
        .await
        .expect("starts");

    let unknown = run(&toolbox, "mcp__demo__nope", "{}").await;
    assert!(
        unknown
            .content
            .starts_with("error: there is no tool named `mcp__demo__nope`"),
        "{}",
        unknown.content
    );
    assert!(
        unknown.content.contains("mcp__demo__lookup"),
        "lists the tools: {}",
        unknown.content
    );
    assert!(unknown.error.is_some());

    let bad_json = run(&toolbox, "mcp__demo__lookup", r#"{"key": "#).await;
    assert!(
        bad_json.content.contains("not valid JSON"),
        "{}",
        bad_json.content
    );

    let missing = run(&toolbox, "mcp__demo__lookup", "{}").await;
    assert!(
        missing.content.contains("missing required property `key`"),
        "{}",
        missing.content
    );

    let mistyped = run(&toolbox, "mcp__demo__add", r#"{"a": "one", "b": 2}"#).await;
    assert!(
        mistyped.content.contains("property `a` must be number"),
        "{}",
        mistyped.content
    );

    let failed = run(
        &toolbox,
        "mcp__demo__fail",
        r#"{"message": "disk on fire"}"#,
    )
    .await;
    assert_eq!(
        failed.content,
        "error: tool `mcp__demo__fail` failed: disk on fire"
    );
    assert_eq!(failed.error.as_deref(), Some(failed.content.as_str()));
    let report = failed.report();
    assert_eq!(report.tool, "mcp__demo__fail");
    assert_eq!(report.error, failed.error);

    let slow = run(&toolbox, "mcp__demo__slow", r#"{"ms": 20000}"#).await;
    assert!(
        slow.content.contains("did not answer within 1 s"),
        "{}",
        slow.content
    );
    assert!(
        slow.content.contains("tool_timeout_seconds"),
        "{}",
        slow.content
    );

    let big = run(&toolbox, "mcp__demo__big", r#"{"bytes": 5000}"#).await;
    assert!(big.truncated);
    assert_eq!(big.result_bytes, 5000);
    assert!(big.content.starts_with(&"x".repeat(1024)));
    assert!(!big.content.starts_with(&"x".repeat(1025)));
    assert!(
        big.content.contains("max_tool_result_bytes"),
        "{}",
        big.content
    );
    assert_eq!(big.error, None);

    // The server is still fine after all that.
    let ok = run(&toolbox, "mcp__demo__add", r#"{"a": 1, "b": 1}"#).await;
    assert_eq!(ok.content, "2");
}

#[tokio::test]
async fn a_batch_runs_concurrently_and_answers_in_call_order() {
    let limits = ToolLimits {
        max_concurrent_tools: 3,
        ..ToolLimits::default()
    };
    let toolbox = start(vec![demo_stdio("demo", &[])], limits)
        .await
        .expect("starts");
    let calls = vec![
        call("a", "mcp__demo__slow", r#"{"ms": 300}"#),
        call("b", "mcp__demo__lookup", r#"{"key": "answer"}"#),
        call("c", "mcp__demo__nope", "{}"),
        call("d", "mcp__demo__add", r#"{"a": 1, "b": 2}"#),
    ];
    let records = tokio::time::timeout(
        WAIT,
        toolbox.call_batch(&calls, conclave_protocol::TurnMode::Coordinate),
    )
    .await
    .expect("in time");
    let ids: Vec<&str> = records.iter().map(|r| r.call_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    assert_eq!(records[0].content, "slept 300 ms");
    assert_eq!(records[1].content, "The answer is 42.");
    assert!(records[2].error.is_some());
    assert_eq!(records[3].content, "3");
    let message = records[1].message();
    assert_eq!(
        message,
        conclave_agent::llm::ChatMessage::tool("b", "The answer is 42.")
    );
}

#[tokio::test]
async fn a_server_that_dies_is_restarted_on_the_next_call() {
    let toolbox = start(vec![demo_stdio("demo", &[])], ToolLimits::default())
        .await
        .expect("starts");
    let first: u32 = run(&toolbox, "mcp__demo__pid", "{}")
        .await
        .content
        .parse()
        .expect("pid");
    let crashed = run(&toolbox, "mcp__demo__crash", "{}").await;
    assert!(crashed.error.is_some(), "{}", crashed.content);
    assert!(
        crashed.content.contains("MCP server `demo`"),
        "{}",
        crashed.content
    );
    let second = run(&toolbox, "mcp__demo__pid", "{}").await;
    assert_eq!(second.error, None, "{}", second.content);
    let second: u32 = second.content.parse().expect("pid");
    assert_ne!(first, second, "a new server process answers");
    // Concurrent calls after a second crash restart the server once, not once per call.
    let _ = run(&toolbox, "mcp__demo__crash", "{}").await;
    let calls: Vec<ToolCall> = (0..3)
        .map(|i| call(&format!("p{i}"), "mcp__demo__pid", "{}"))
        .collect();
    let records = tokio::time::timeout(
        WAIT,
        toolbox.call_batch(&calls, conclave_protocol::TurnMode::Coordinate),
    )
    .await
    .expect("in time");
    let pids: std::collections::HashSet<&str> =
        records.iter().map(|r| r.content.as_str()).collect();
    assert_eq!(pids.len(), 1, "{records:?}");
    assert!(records.iter().all(|r| r.error.is_none()), "{records:?}");
    assert!(
        poll_until(WAIT, || process_gone(first).then_some(())).is_some(),
        "the crashed server is gone"
    );
}

#[tokio::test]
async fn a_required_server_that_cannot_start_names_agent_server_and_stderr() {
    let spec = demo_stdio("broken", &["--fail-start", "demo: DEMO_KEY is missing"]);
    let error = start(vec![spec], ToolLimits::default())
        .await
        .expect_err("must fail");
    assert_eq!(error.agent, "agent-a");
    assert_eq!(error.server, "broken");
    let text = error.to_string();
    assert!(
        text.contains("agent `agent-a`: MCP server `broken` could not start"),
        "{text}"
    );
    assert!(
        text.contains("demo: DEMO_KEY is missing"),
        "stderr tail: {text}"
    );

    let mut missing = demo_stdio("absent", &[]);
    missing.transport = McpTransport::Stdio {
        command: "/nonexistent/conclave-no-such-server".into(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: None,
    };
    let error = start(vec![missing], ToolLimits::default())
        .await
        .expect_err("must fail");
    assert!(
        error
            .to_string()
            .contains("cannot run `/nonexistent/conclave-no-such-server`"),
        "{error}"
    );
}

#[tokio::test]
async fn an_optional_server_that_cannot_start_is_left_out() {
    let mut broken = demo_stdio("extra", &["--fail-start", "no luck"]);
    broken.optional = true;
    let toolbox = start(vec![demo_stdio("demo", &[]), broken], ToolLimits::default())
        .await
        .expect("the session goes on without the optional server");
    assert!(toolbox.has("mcp__demo__lookup"));
    assert!(
        !toolbox
            .specs()
            .iter()
            .any(|s| s.name.starts_with("mcp__extra__"))
    );
    let starts = toolbox.starts();
    assert_eq!(starts.len(), 2);
    assert!(starts[1].error.as_deref().is_some_and(|e| !e.is_empty()));
    assert_eq!(starts[1].tools, 0);
}

#[tokio::test]
async fn dropping_the_toolbox_leaves_no_server_process() {
    let toolbox = start(vec![demo_stdio("demo", &[])], ToolLimits::default())
        .await
        .expect("starts");
    let pid: u32 = run(&toolbox, "mcp__demo__pid", "{}")
        .await
        .content
        .parse()
        .expect("pid");
    assert!(
        !process_gone(pid),
        "the server runs while the toolbox lives"
    );
    drop(toolbox);
    assert!(
        poll_until(WAIT, || process_gone(pid).then_some(())).is_some(),
        "server process {pid} survived the toolbox"
    );
}

/// The agent process is killed (SIGKILL: no destructor runs): its MCP server must die too.
#[test]
fn a_killed_agent_process_leaves_no_server_process() {
    let bench = workspace_bin("conclave-mcp-bench").expect("bench built");
    let mut child = std::process::Command::new(bench)
        .arg("--hold")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("the holder prints the server pid");
    let pid: u32 = line
        .trim()
        .strip_prefix("server pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line: {line}"));
    assert!(!process_gone(pid));
    child.kill().expect("SIGKILL the holder");
    let _ = child.wait();
    assert!(
        poll_until(WAIT, || process_gone(pid).then_some(())).is_some(),
        "server process {pid} outlived the killed agent process"
    );
}

/// A server written with the official MCP Python SDK (2.x, `MCPServer`), over stdio.
#[tokio::test]
async fn a_python_sdk_server_works() {
    let Some(python) = std::env::var_os("CONCLAVE_TEST_PYTHON") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CONCLAVE_TEST_PYTHON is not set under CI=true: .ci/run must install the MCP Python SDK"
        );
        eprintln!(
            "tools: CONCLAVE_TEST_PYTHON not set; the Python SDK test did not run (point it at a python with `mcp` installed)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("server.py");
    std::fs::write(&script, PYTHON_SERVER).expect("write server");
    let spec = McpServerSpec {
        name: "py".into(),
        transport: McpTransport::Stdio {
            command: python.to_string_lossy().into_owned(),
            args: vec![script.display().to_string()],
            env: Vec::new(),
            cwd: None,
        },
        allowed_tools: None,
        exclude_tools: Vec::new(),
        optional: false,
    };
    let toolbox = start(vec![spec], ToolLimits::default())
        .await
        .expect("python server starts");
    assert!(toolbox.has("mcp__py__shout"), "{:?}", toolbox.specs());
    let record = run(&toolbox, "mcp__py__shout", r#"{"text": "hello"}"#).await;
    assert_eq!(record.error, None, "{}", record.content);
    assert_eq!(record.content, "HELLO!");
    let record = run(&toolbox, "mcp__py__shout", r#"{"text": 3}"#).await;
    assert!(record.error.is_some(), "{}", record.content);
    let failing = run(&toolbox, "mcp__py__explode", "{}").await;
    assert!(failing.content.starts_with("error:"), "{}", failing.content);
    assert!(failing.content.contains("kaboom"), "{}", failing.content);
    toolbox.shutdown().await;
}

const PYTHON_SERVER: &str = r#"
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

mcp = MCPServer("py")

@mcp.tool()
def shout(text: str) -> str:
    """Upper-case the text and add an exclamation mark."""
    return text.upper() + "!"

@mcp.tool()
def explode() -> str:
    """Always raises."""
    raise ToolError("kaboom")

if __name__ == "__main__":
    mcp.run()
"#;

#[tokio::test]
async fn an_agent_without_servers_keeps_its_limits() {
    let limits = ToolLimits {
        max_tool_rounds: 3,
        ..ToolLimits::default()
    };
    let toolbox = start(Vec::new(), limits).await.expect("nothing to start");
    assert!(toolbox.is_empty());
    assert_eq!(toolbox.limits().max_tool_rounds, 3);
    let record = run(&toolbox, "mcp__demo__lookup", "{}").await;
    assert!(
        record
            .content
            .contains("no tools besides the workflow ones"),
        "{}",
        record.content
    );
}
