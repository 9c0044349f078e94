//! The Claude Code backend against a stand-in for the `claude` CLI: a small shell script that
//! records how it was run (arguments, stdin, the key in its environment, its pid) and then
//! replays stream-json lines written here, modelled on what Claude Code prints with
//! `-p --output-format stream-json --verbose --include-partial-messages`.
//!
//! The script is written once per test process and its behaviour comes from data files in
//! its working directory (the backend's `cwd` option), one directory per test: writing a
//! fresh executable per test could make a concurrent spawn fail with "text file busy".
//! Unix only: the stand-in is a shell script and the kill check reads `/proc`.

#![cfg(unix)]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{client, run};
use conclave_agent::accumulate::TurnOutput;
use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice};
use conclave_agent::providers::{Backend, ProviderError};
use conclave_agent::workflow::{coordination_messages, parse_decision, workflow_tools};
use conclave_protocol::config::{BackendSpec, WireFormat};
use conclave_protocol::{
    AnswerLabel, Decision, LabeledAnswer, StreamChunk, TaskSpec, TurnId, TurnMode, TurnSpec, Usage,
};
use futures::StreamExt;
use serde_json::{Value, json};

const TEST_KEY: &str = "sk-ant-claude-code-test";

const FAKE_CLI: &str = r#"#!/bin/sh
# Stand-in for the `claude` CLI (conclave tests). Records how it was run, then plays the
# scenario in its working directory.
printf '%s\n' "$@" > argv.txt
cat > stdin.txt
printf '%s' "${ANTHROPIC_API_KEY-<unset>}" > api_key.txt
echo $$ > pid.txt
if [ -f stderr.txt ]; then cat stderr.txt >&2; fi
if [ -f stdout.jsonl ]; then cat stdout.jsonl; fi
if [ -f hang ]; then exec sleep 600; fi
if [ -f exit_code ]; then exit "$(cat exit_code)"; fi
exit 0
"#;

/// The stand-in CLI, written once (then renamed into place, so no process ever executes a
/// file that is open for writing).
fn fake_cli() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).expect("target tmp dir");
        let staging = dir.join(format!("fake-claude.{}.tmp", std::process::id()));
        std::fs::write(&staging, FAKE_CLI).expect("write the fake CLI");
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))
            .expect("make the fake CLI executable");
        let path = dir.join("fake-claude");
        std::fs::rename(&staging, &path).expect("move the fake CLI into place");
        path
    })
}

/// One test's scenario directory; removed when the test ends.
struct Scenario {
    dir: PathBuf,
}

impl Scenario {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("claude-scenarios")
            .join(format!("{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scenario dir");
        Self { dir }
    }

    fn stdout(self, lines: &[Value]) -> Self {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        self.file("stdout.jsonl", &text)
    }

    fn file(self, name: &str, content: &str) -> Self {
        std::fs::write(self.dir.join(name), content).expect("scenario file");
        self
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn spec(&self, program: &Path) -> BackendSpec {
        BackendSpec {
            wire: WireFormat::ClaudeCode,
            provider: "claude_code".into(),
            model: "claude-sonnet-4-5".into(),
            base_url: program.display().to_string(),
            api_key_env: Some("ANTHROPIC_API_KEY".into()),
            temperature: None,
            top_p: None,
            max_tokens: None,
            extra_body: Some(json!({ "cwd": self.dir }).to_string()),
            max_retries: 2,
            options: Default::default(),
        }
    }

    fn backend(&self) -> Backend {
        backend(&self.spec(fake_cli()))
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn backend(spec: &BackendSpec) -> Backend {
    Backend::new(spec, client(), &|name| {
        (name == "ANTHROPIC_API_KEY").then(|| TEST_KEY.to_owned())
    })
    .expect("Claude Code backend")
}

/// A coordination turn with one answer on the table: `vote` and `new_answer` are offered.
fn turn_spec() -> TurnSpec {
    TurnSpec {
        turn: TurnId(1),
        mode: TurnMode::Coordinate,
        task: Arc::new(TaskSpec {
            question: "What is the capital of France?".into(),
            history: Vec::new(),
        }),
        answers: vec![LabeledAnswer {
            label: AnswerLabel::new(1, 1),
            content: "Paris.".into(),
        }]
        .into(),
        revision: 1,
        may_answer: true,
        votes: Vec::new().into(),
        self_number: 2,
        snapshots: Vec::new().into(),
    }
}

fn coordination_request(spec: &TurnSpec) -> ChatRequest {
    ChatRequest {
        messages: coordination_messages(spec, Some("You are careful.")),
        tools: workflow_tools(spec),
        tool_choice: ToolChoice::Required,
    }
}

fn init_line() -> Value {
    json!({
        "type": "system", "subtype": "init", "cwd": "/work", "session_id": "5f1c2a9e-0000-4000-8000-000000000001",
        "tools": ["Task", "Bash", "Glob", "Grep", "Read", "Edit", "Write", "WebFetch", "WebSearch"],
        "mcp_servers": [], "model": "claude-sonnet-4-5-20250929", "permissionMode": "default",
        "apiKeySource": "ANTHROPIC_API_KEY", "claude_code_version": "2.0.14", "output_style": "default",
        "uuid": "0b7c6f8e-0000-4000-8000-000000000002"
    })
}

fn stream_event(event: Value) -> Value {
    json!({
        "type": "stream_event", "event": event, "session_id": "5f1c2a9e-0000-4000-8000-000000000001",
        "parent_tool_use_id": null, "uuid": "0b7c6f8e-0000-4000-8000-000000000003"
    })
}

fn assistant(id: &str, content: Value, stop_reason: Value) -> Value {
    json!({
        "type": "assistant",
        "message": {
            "id": id, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": { "input_tokens": 4, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 0, "output_tokens": 30 }
        },
        "parent_tool_use_id": null, "session_id": "5f1c2a9e-0000-4000-8000-000000000001",
        "uuid": "0b7c6f8e-0000-4000-8000-000000000004"
    })
}

const VOTE_BLOCK: &str = "```json\n{\"tool\": \"vote\", \"arguments\": {\"agent_id\": \"agent1.1\", \"reason\": \"It is correct and complete.\"}}\n```";

/// A run as Claude Code prints it: the first message streamed (thinking, text, a Read tool
/// use the CLI runs itself), its tool result, then a second message (not streamed, as an
/// older CLI would print it) ending in the workflow call, and the result.
fn happy_lines() -> Vec<Value> {
    vec![
        init_line(),
        stream_event(json!({ "type": "message_start", "message": {
            "id": "msg_01A", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [], "stop_reason": null, "usage": { "input_tokens": 4, "output_tokens": 1 } } })),
        stream_event(
            json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "thinking", "thinking": "", "signature": "" } }),
        ),
        stream_event(
            json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "thinking_delta", "thinking": "The answer says Paris." } }),
        ),
        stream_event(
            json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "signature_delta", "signature": "EqQBCkYIBxgC" } }),
        ),
        stream_event(json!({ "type": "content_block_stop", "index": 0 })),
        assistant(
            "msg_01A",
            json!([{ "type": "thinking", "thinking": "The answer says Paris.", "signature": "EqQBCkYIBxgC" }]),
            Value::Null,
        ),
        stream_event(
            json!({ "type": "content_block_start", "index": 1, "content_block": { "type": "text", "text": "" } }),
        ),
        stream_event(
            json!({ "type": "content_block_delta", "index": 1, "delta": { "type": "text_delta", "text": "Let me check " } }),
        ),
        stream_event(
            json!({ "type": "content_block_delta", "index": 1, "delta": { "type": "text_delta", "text": "my notes. " } }),
        ),
        stream_event(json!({ "type": "content_block_stop", "index": 1 })),
        assistant(
            "msg_01A",
            json!([{ "type": "text", "text": "Let me check my notes. " }]),
            Value::Null,
        ),
        stream_event(
            json!({ "type": "content_block_start", "index": 2, "content_block": { "type": "tool_use", "id": "toolu_01R", "name": "Read", "input": {} } }),
        ),
        stream_event(
            json!({ "type": "content_block_delta", "index": 2, "delta": { "type": "input_json_delta", "partial_json": "{\"file_path\": \"/work/notes.md\"}" } }),
        ),
        stream_event(json!({ "type": "content_block_stop", "index": 2 })),
        assistant(
            "msg_01A",
            json!([{ "type": "tool_use", "id": "toolu_01R", "name": "Read", "input": { "file_path": "/work/notes.md" } }]),
            Value::Null,
        ),
        stream_event(
            json!({ "type": "message_delta", "delta": { "stop_reason": "tool_use", "stop_sequence": null }, "usage": { "output_tokens": 61 } }),
        ),
        stream_event(json!({ "type": "message_stop" })),
        json!({ "type": "user", "message": { "role": "user", "content": [
            { "tool_use_id": "toolu_01R", "type": "tool_result", "content": "     1\tParis is the capital of France.\n" } ] },
            "parent_tool_use_id": null, "session_id": "5f1c2a9e-0000-4000-8000-000000000001", "uuid": "0b7c6f8e-0000-4000-8000-000000000005" }),
        assistant(
            "msg_01B",
            json!([{ "type": "text", "text": format!("The existing answer is right.\n\n{VOTE_BLOCK}") }]),
            json!("end_turn"),
        ),
        json!({ "type": "rate_limit_event", "rate_limit_info": { "status": "allowed" }, "session_id": "5f1c2a9e-0000-4000-8000-000000000001", "uuid": "0b7c6f8e-0000-4000-8000-000000000006" }),
        json!({
            "type": "result", "subtype": "success", "is_error": false, "duration_ms": 5234, "duration_api_ms": 4890,
            "num_turns": 2, "result": format!("The existing answer is right.\n\n{VOTE_BLOCK}"),
            "session_id": "5f1c2a9e-0000-4000-8000-000000000001", "total_cost_usd": 0.0123,
            "usage": { "input_tokens": 12, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 3400, "output_tokens": 95,
                       "server_tool_use": { "web_search_requests": 0 }, "service_tier": "standard" },
            "modelUsage": {}, "permission_denials": [], "uuid": "0b7c6f8e-0000-4000-8000-000000000007"
        }),
    ]
}

#[tokio::test]
async fn the_workflow_call_is_parsed_from_the_cli_reply() {
    let scenario = Scenario::new("happy").stdout(&happy_lines());
    let backend = scenario.backend();
    let spec = turn_spec();
    let request = coordination_request(&spec);
    let (output, error) = run(&backend, &request).await.expect("the CLI starts");
    assert!(error.is_none(), "{error:?}");

    assert_eq!(output.reasoning.as_deref(), Some("The answer says Paris."));
    assert_eq!(
        output.text,
        format!("Let me check my notes. The existing answer is right.\n\n{VOTE_BLOCK}"),
        "streamed text once, the unstreamed message from its full copy"
    );
    assert_eq!(output.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        output.usage,
        Some(Usage {
            input_tokens: 12 + 1200 + 3400,
            output_tokens: 95
        })
    );
    assert_eq!(output.tool_calls.len(), 1, "{:?}", output.tool_calls);
    assert_eq!(output.tool_calls[0].id, "call_0");
    assert_eq!(
        parse_decision(&spec, &output.tool_calls),
        Ok(Decision::Vote {
            label: AnswerLabel::new(1, 1),
            reason: "It is correct and complete.".into()
        })
    );

    // How the CLI was run: stream-json flags, model and system prompt as arguments, the
    // conversation and the tool protocol on stdin, the key only in the environment.
    let argv: Vec<String> = scenario
        .read("argv.txt")
        .lines()
        .map(str::to_owned)
        .collect();
    for flag in [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--model",
        "claude-sonnet-4-5",
        "--system-prompt",
        "You are careful.",
    ] {
        assert!(
            argv.iter().any(|a| a == flag),
            "{flag} missing from {argv:?}"
        );
    }
    assert!(
        !argv.iter().any(|a| a.contains(TEST_KEY)),
        "the key is never an argument"
    );
    assert_eq!(scenario.read("api_key.txt"), TEST_KEY);
    let stdin = scenario.read("stdin.txt");
    assert!(stdin.contains("What is the capital of France?"), "{stdin}");
    assert!(stdin.contains("<agent1.1>\nParis.\n</agent1.1>"), "{stdin}");
    assert!(
        stdin.contains("## vote\n") && stdin.contains("## new_answer\n"),
        "{stdin}"
    );
    assert!(stdin.contains("exactly one such tool call"), "{stdin}");
}

#[tokio::test]
async fn the_cli_s_own_tools_are_shown_but_not_returned_as_calls() {
    let scenario = Scenario::new("shown").stdout(&happy_lines());
    let backend = scenario.backend();
    let request = coordination_request(&turn_spec());
    let mut stream = backend.stream(&request).await.expect("the CLI starts");
    let mut chunks = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("no stall")
    {
        chunks.push(item.expect("no error"));
    }
    assert!(chunks.iter().any(|c| matches!(
        c,
        StreamChunk::ToolCallDelta { name: Some(name), arguments, .. }
            if name == "Read" && arguments.contains("notes.md")
    )));
    assert!(chunks.iter().any(|c| matches!(
        c,
        StreamChunk::ToolResult { name, content, .. }
            if name == "Read" && content.contains("Paris is the capital")
    )));
    // The CLI's call is reported with its result, right before it...
    let read_call = chunks
        .iter()
        .position(|c| matches!(c, StreamChunk::ToolCall(call) if call.name == "Read"))
        .expect("the CLI's call is reported");
    assert!(matches!(
        &chunks[read_call + 1],
        StreamChunk::ToolResult { name, .. } if name == "Read"
    ));
    // ... and folding the stream returns only the workflow call, the CLI's apart.
    let mut output = TurnOutput::default();
    for chunk in &chunks {
        output.apply(chunk);
    }
    let names = |calls: &[conclave_protocol::ToolCall]| {
        calls.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&output.tool_calls), ["vote"]);
    assert_eq!(names(&output.provider_tool_calls), ["Read"]);
}

#[tokio::test]
async fn a_missing_cli_is_a_config_error_that_says_how_to_install_it() {
    fake_cli(); // no spawn may run while the stand-in is being written
    let scenario = Scenario::new("missing");
    let spec = scenario.spec(Path::new("/nonexistent/conclave-test/claude"));
    let backend = backend(&spec);
    let error = backend
        .stream(&ChatRequest {
            messages: vec![ChatMessage::user("hi")],
            ..ChatRequest::default()
        })
        .await
        .err()
        .expect("no CLI, no stream");
    assert!(
        matches!(&error, ProviderError::Config(message)
            if message.contains("/nonexistent/conclave-test/claude")
                && message.contains("npm install -g @anthropic-ai/claude-code")),
        "{error}"
    );
    assert_eq!(
        conclave_agent::providers::retry::RetryPolicy::default().delay_for(0, &error),
        None
    );
}

#[tokio::test]
async fn a_non_zero_exit_is_an_error_with_the_cli_s_stderr() {
    let scenario = Scenario::new("exit")
        .stdout(&[init_line()])
        .file("stderr.txt", "Invalid API key · Please run /login\n")
        .file("exit_code", "1");
    let (output, error) = run(&scenario.backend(), &coordination_request(&turn_spec()))
        .await
        .expect("the CLI starts");
    let Some(ProviderError::InStream {
        kind,
        message,
        code,
    }) = error
    else {
        panic!("want an in-stream error, got {error:?}");
    };
    assert_eq!(kind, "cli_exit");
    assert_eq!(code.as_deref(), Some("1"));
    assert!(message.contains("status 1"), "{message}");
    assert!(message.contains("Invalid API key"), "{message}");
    assert!(output.error.is_some());
    assert!(output.tool_calls.is_empty());
}

#[tokio::test]
async fn an_error_result_is_an_in_stream_error() {
    let scenario = Scenario::new("error-result")
        .stdout(&[
            init_line(),
            json!({
                "type": "result", "subtype": "error_max_turns", "is_error": true, "duration_ms": 900,
                "duration_api_ms": 800, "num_turns": 3, "session_id": "5f1c2a9e-0000-4000-8000-000000000001",
                "total_cost_usd": 0.002, "usage": { "input_tokens": 5, "output_tokens": 2 },
                "errors": ["Reached maximum number of turns (3)"]
            }),
        ])
        .file("exit_code", "1");
    let (output, error) = run(&scenario.backend(), &coordination_request(&turn_spec()))
        .await
        .expect("the CLI starts");
    assert!(
        matches!(&error, Some(ProviderError::InStream { kind, message, .. })
            if kind == "error_max_turns" && message.contains("maximum number of turns")),
        "{error:?}"
    );
    assert_eq!(output.usage.map(|u| u.input_tokens), Some(5));
}

/// Whether the process is gone: no `/proc` entry, or a zombie waiting to be reaped.
fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[tokio::test]
async fn dropping_the_stream_kills_the_cli() {
    let scenario = Scenario::new("hang")
        .stdout(&[
            init_line(),
            stream_event(json!({ "type": "message_start", "message": { "id": "msg_01H" } })),
            stream_event(json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Thinking it over" } })),
        ])
        .file("hang", "");
    let backend = scenario.backend();
    let mut stream = backend
        .stream(&coordination_request(&turn_spec()))
        .await
        .expect("the CLI starts");
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the first chunk arrives");
    assert!(
        matches!(&first, Some(Ok(StreamChunk::Content { text })) if text == "Thinking it over"),
        "{first:?}"
    );
    let pid: u32 = scenario
        .read("pid.txt")
        .trim()
        .parse()
        .expect("the CLI wrote its pid");
    assert!(
        !process_is_gone(pid),
        "the CLI is still running before the drop"
    );

    drop(stream);
    let mut gone = false;
    for _ in 0..100 {
        if process_is_gone(pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the CLI (pid {pid}) survived the dropped stream");
}

/// A whole coordination turn through the agent actor: the CLI's own tool reaches the live
/// feed as a call and its result, while the decision is the workflow call alone and
/// conclave's tool loop runs nothing.
#[tokio::test]
async fn a_turn_shows_the_cli_s_tools_and_decides_with_the_workflow_call_only() {
    use conclave_agent::agent::{AgentActor, AgentArgs, AgentMsg};
    use conclave_agent::outbox::{Outbox, ReportSink};
    use conclave_agent::turn::{AgentContext, TurnSettings};
    use conclave_protocol::{
        AgentReport, CoordinatorCommand, Envelope, SessionId, TraceContext, TurnEvent,
    };

    let scenario = Scenario::new("turn").stdout(&happy_lines());
    let session = SessionId::parse("claude-code-turn").expect("session id");
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let sink: ReportSink =
        Arc::new(move |envelope: Envelope<AgentReport>| tx.send(envelope.body).is_ok());
    let context = Arc::new(AgentContext {
        agent_id: "agent2".into(),
        backend: Arc::new(scenario.backend()),
        outbox: Arc::new(Outbox::new(session.clone(), "agent2".into(), sink)),
        system_message: None,
        settings: TurnSettings {
            max_workflow_retries: 1,
            turn_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(20),
            max_restarts: 0,
            restart_window: Duration::from_secs(60),
        },
        workflow: Default::default(),
        tools: Arc::new(conclave_agent::tools::ToolBox::empty()),
        snapshots: None,
    });
    let (actor, handle) = ractor::Actor::spawn(None, AgentActor, AgentArgs { context })
        .await
        .expect("agent spawns");
    actor
        .send_message(AgentMsg::Command(Envelope {
            session,
            sender: "coordinator".into(),
            seq: 1,
            trace: TraceContext::default(),
            body: CoordinatorCommand::StartTurn(turn_spec()),
        }))
        .expect("agent alive");

    let mut chunks = Vec::new();
    let decision = loop {
        let report = tokio::time::timeout(Duration::from_secs(20), reports.recv())
            .await
            .expect("a report arrives in time")
            .expect("the outbox is open");
        match report {
            AgentReport::Chunk { chunk, .. } => chunks.push(chunk),
            AgentReport::Decided { decision, .. } => break decision,
            AgentReport::TurnEvent {
                event: TurnEvent::ToolCalled { report, .. },
                ..
            } => panic!("conclave's tool loop ran {}", report.tool),
            AgentReport::TurnFailed { error, .. } => panic!("the turn failed: {error:?}"),
            _ => {}
        }
    };
    actor.stop(None);
    let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;

    assert!(matches!(decision, Decision::Vote { .. }), "{decision:?}");
    let calls: Vec<&str> = chunks
        .iter()
        .filter_map(|c| match c {
            StreamChunk::ToolCall(call) => Some(call.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        calls,
        ["Read"],
        "only the CLI's own call is shown as a call"
    );
    let read = chunks
        .iter()
        .position(|c| matches!(c, StreamChunk::ToolCall(_)))
        .expect("shown");
    assert!(matches!(
        &chunks[read + 1],
        StreamChunk::ToolResult { name, content, .. }
            if name == "Read" && content.contains("Paris is the capital")
    ));
}
