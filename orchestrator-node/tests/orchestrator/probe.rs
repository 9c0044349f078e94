//! `conclave probe` end to end: the built binary against the simulated provider over
//! loopback HTTP, checking the JSON lines on stdout and the exit codes.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use conclave_sim::{Fault, SimConfig, SimServer};
use serde_json::{Value, json};

/// A run of the binary may not take longer than this (it is a few hundred milliseconds).
const RUN_BOUND: Duration = Duration::from_secs(60);

/// Variables the binary could read a key from; removed so the host's environment cannot
/// change the outcome.
const KEY_VARIABLES: &[&str] = &[
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "CONCLAVE_SIM_API_KEY",
    "CONCLAVE_PROBE_TEST_KEY",
];

async fn start_sim() -> SimServer {
    let config = SimConfig {
        tokens: 5,
        token_delay: Duration::from_millis(1),
        first_byte_delay: Duration::ZERO,
    };
    SimServer::start(config, "127.0.0.1:0".parse().expect("loopback"))
        .await
        .expect("the simulator starts")
}

/// Runs `conclave probe ARGS` in `dir` (so no stray `.env` is read) with `env` added.
async fn probe(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_conclave"));
    command
        .arg("probe")
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true);
    for var in KEY_VARIABLES {
        command.env_remove(var);
    }
    command.env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    tokio::time::timeout(RUN_BOUND, command.output())
        .await
        .expect("probe finishes in time")
        .expect("the binary runs")
}

/// Stdout as one JSON value per line.
fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect()
}

fn of_type<'v>(events: &'v [Value], kind: &str) -> Vec<&'v Value> {
    events
        .iter()
        .filter(|event| event["type"] == kind)
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_text_usage_and_finish() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base_url = sim.base_url();
    let output = probe(
        dir.path(),
        &[
            "--backend",
            "sim",
            "--model",
            "alpha",
            "--base-url",
            &base_url,
            "What is 2+2?",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let events = lines(&output);
    let content = of_type(&events, "content");
    assert_eq!(content.len(), 5, "one line per streamed piece: {events:?}");
    let text: String = content
        .iter()
        .map(|event| event["text"].as_str().unwrap_or_default())
        .collect();
    assert!(text.starts_with("alpha answers:"), "{text}");
    assert_eq!(of_type(&events, "finish")[0]["reason"], "stop");
    let usage = of_type(&events, "usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["output_tokens"], 5);
    assert!(of_type(&events, "error").is_empty());
    assert_eq!(sim.requests().len(), 1, "exactly one call");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_a_whole_tool_call_with_parsed_arguments() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = dir.path().join("tools.json");
    let tools_json = json!([
        {"name": "new_answer", "description": "Submit a new answer.",
         "parameters": {"type": "object", "properties": {"content": {"type": "string"}},
                        "required": ["content"]}},
        {"name": "vote", "description": "Vote for an answer.",
         "parameters": {"type": "object", "properties": {
             "agent_id": {"type": "string", "enum": ["agent2.1", "agent1.1"]},
             "reason": {"type": "string"}}, "required": ["agent_id", "reason"]}}
    ]);
    std::fs::write(&tools, tools_json.to_string()).expect("write tools");
    let base_url = sim.base_url();
    let tools_arg = tools.display().to_string();
    let output = probe(
        dir.path(),
        &[
            "--backend",
            "sim",
            "--model",
            "beta",
            "--base-url",
            &base_url,
            "--tools",
            &tools_arg,
            "Pick the best answer.",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let events = lines(&output);
    let calls = of_type(&events, "tool_call");
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(calls[0]["name"], "vote");
    assert_eq!(calls[0]["arguments"]["agent_id"], "agent2.1");
    assert!(calls[0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(
        events
            .iter()
            .all(|event| event["type"] != "tool_call_delta"),
        "fragments are not printed"
    );
    assert_eq!(of_type(&events, "finish")[0]["reason"], "tool_calls");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_error_is_an_error_line_and_exit_2_without_retries() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base_url = sim.base_url();
    let output = probe(
        dir.path(),
        &[
            "--backend",
            "sim",
            "--model",
            "gamma:fault=429,retry_after_ms=10",
            "--base-url",
            &base_url,
            "hello",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let events = lines(&output);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "error");
    assert_eq!(events[0]["kind"], "http");
    assert_eq!(events[0]["status"], 429);
    assert!(
        events[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("429"))
    );
    let records = sim.requests();
    assert_eq!(records.len(), 1, "probe never retries");
    assert_eq!(records[0].fault, Some(Fault::RateLimited));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_stream_error_is_printed_once() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base_url = sim.base_url();
    let output = probe(
        dir.path(),
        &[
            "--backend",
            "sim",
            "--model",
            "delta:fault=stream_error,stall_after=2",
            "--base-url",
            &base_url,
            "hello",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let events = lines(&output);
    assert_eq!(of_type(&events, "content").len(), 2);
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0]["kind"], "server_error");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_exits_1_naming_the_variable_before_any_call() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base_url = sim.base_url();
    let output = probe(
        dir.path(),
        &[
            "--backend",
            "sim",
            "--model",
            "alpha",
            "--base-url",
            &base_url,
            "--api-key-env",
            "CONCLAVE_PROBE_TEST_KEY",
            "hello",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing on stdout");
    let message = stderr(&output);
    assert!(message.contains("CONCLAVE_PROBE_TEST_KEY"), "{message}");
    assert!(sim.requests().is_empty(), "no call was made");

    // With the variable set, the same command works, and the key is sent.
    let output = probe(
        dir.path(),
        &[
            "--backend",
            "sim",
            "--model",
            "alpha",
            "--base-url",
            &base_url,
            "--api-key-env",
            "CONCLAVE_PROBE_TEST_KEY",
            "hello",
        ],
        &[("CONCLAVE_PROBE_TEST_KEY", "sk-probe-test")],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("sk-probe-test"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_the_anthropic_wire_too() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base_url = sim.base_url();
    let output = probe(
        dir.path(),
        &[
            "--backend",
            "anthropic",
            "--model",
            "claude-sim",
            "--base-url",
            &base_url,
            "hello",
        ],
        &[("ANTHROPIC_API_KEY", "sk-ant-probe")],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let events = lines(&output);
    let text: String = of_type(&events, "content")
        .iter()
        .map(|event| event["text"].as_str().unwrap_or_default())
        .collect();
    assert!(text.starts_with("claude-sim answers:"), "{events:?}");
    assert_eq!(of_type(&events, "finish")[0]["reason"], "end_turn");
    assert_eq!(sim.requests()[0].wire.as_str(), "anthropic");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tools_file_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = dir.path().join("tools.json");
    std::fs::write(&tools, r#"{"name": "vote"}"#).expect("write tools");
    let tools_arg = tools.display().to_string();
    let output = probe(
        dir.path(),
        &[
            "--backend",
            "sim",
            "--model",
            "alpha",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--tools",
            &tools_arg,
            "hello",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--tools"), "{}", stderr(&output));
}
