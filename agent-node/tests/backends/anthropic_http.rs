//! The Anthropic backend over real HTTP against hand-written answers: failures the recordings
//! do not cover (in-stream `overloaded_error`, a cut stream, malformed data, HTTP 529) and the
//! shape of multi-turn requests (signed thinking and tool use replayed, strict alternation).

use crate::common;

use std::time::Duration;

use common::{FakeServer, Scripted, anthropic_backend, anthropic_spec, client, run};
use conclave_agent::llm::{ChatMessage, ChatRequest, ReasoningBlock, ToolChoice, ToolSpec};
use conclave_agent::providers::retry::{RetryPolicy, is_retryable};
use conclave_agent::providers::{Backend, ProviderError};
use conclave_protocol::ToolCall;
use serde_json::{Value, json};

/// One SSE frame.
fn frame(event: &str, data: Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn message_start() -> String {
    frame(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "content": [], "model": "claude-sonnet-4-20250514",
            "usage": {"input_tokens": 21, "output_tokens": 1}}}),
    )
}

fn text_block(index: u32, text: &str) -> String {
    frame(
        "content_block_start",
        json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}}),
    ) + &frame(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}}),
    )
}

fn block_stop(index: u32) -> String {
    frame(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    )
}

fn message_end(reason: &str, output_tokens: u64) -> String {
    frame(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
    ) + &frame("message_stop", json!({"type": "message_stop"}))
}

/// A complete short answer.
fn hello_body() -> String {
    message_start() + &text_block(0, "Hello.") + &block_stop(0) + &message_end("end_turn", 3)
}

fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::user("Hi")],
        ..ChatRequest::default()
    }
}

fn backend_for(server: &FakeServer) -> Backend {
    anthropic_backend(&anthropic_spec(&server.base_url))
}

#[tokio::test]
async fn in_stream_overloaded_error_is_reported_and_retryable() {
    let body = message_start()
        + &text_block(0, "Partial")
        + &frame(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        );
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&backend_for(&server), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "Partial");
    assert_eq!(
        output.error,
        Some(("overloaded_error".into(), "Overloaded".into(), None))
    );
    assert_eq!(output.finish_reason, None);
    // The input tokens were billed even though the answer failed.
    assert_eq!(output.usage.map(|u| u.input_tokens), Some(21));
    let error = error.expect("the stream ends with the error");
    assert!(
        matches!(&error, ProviderError::InStream { kind, message, code: None }
            if kind == "overloaded_error" && message == "Overloaded"),
        "{error:?}"
    );
    assert!(is_retryable(&error));
    assert!(error.to_string().contains("Overloaded"));
}

#[tokio::test]
async fn a_cut_stream_is_truncated_and_a_broken_one_is_connect() {
    // No stop_reason, no message_stop, clean end of body.
    let body = message_start() + &text_block(0, "Half an ans");
    let server = FakeServer::start(Scripted::sse(body.clone())).await;
    let (output, error) = run(&backend_for(&server), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "Half an ans");
    assert!(matches!(error, Some(ProviderError::Truncated)), "{error:?}");
    assert!(error.as_ref().is_some_and(is_retryable));

    let mut script = Scripted::sse(body);
    script.break_after_body = true;
    let server = FakeServer::start(script).await;
    let (_, error) = run(&backend_for(&server), &hello())
        .await
        .expect("the stream starts");
    assert!(
        matches!(error, Some(ProviderError::Connect(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn malformed_event_data_ends_the_stream() {
    let body = message_start()
        + "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\n\n"
        + &message_end("end_turn", 2);
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&backend_for(&server), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.finish_reason, None);
    assert!(
        matches!(&error, Some(ProviderError::Malformed(m)) if m.contains("content_block_delta")),
        "{error:?}"
    );
}

#[tokio::test]
async fn http_529_overloaded_is_retryable_with_the_server_delay() {
    let script = Scripted::new(
        529,
        "application/json",
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    )
    .header("retry-after", "2");
    let server = FakeServer::start(script).await;
    let error = run(&backend_for(&server), &hello())
        .await
        .expect_err("529 fails before streaming");
    assert_eq!(error.http_status(), Some(529));
    assert!(is_retryable(&error));
    assert_eq!(
        RetryPolicy { max_retries: 2 }.delay_with_jitter(0, &error, 0.5),
        Some(Duration::from_secs(2))
    );
    let text = error.to_string();
    assert!(
        text.contains("HTTP 529 from anthropic: Overloaded"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_key_fails_before_any_request() {
    let spec = anthropic_spec("http://127.0.0.1:9/v1");
    let error = Backend::new(&spec, client(), &|_| None).expect_err("key required");
    assert!(
        matches!(&error, ProviderError::MissingApiKey { env_var, .. } if env_var == "ANTHROPIC_API_KEY"),
        "{error:?}"
    );
}

fn workflow_tool() -> ToolSpec {
    ToolSpec {
        name: "new_answer".into(),
        description: "Submit a new answer".into(),
        parameters: json!({
            "type": "object",
            "properties": { "content": { "type": "string" } },
            "required": ["content"],
        }),
    }
}

/// A thinking block, then a tool call: what a thinking model sends before using a tool.
fn thinking_tool_use_body() -> String {
    message_start()
        + &frame(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        )
        + &frame("ping", json!({"type": "ping"}))
        + &frame(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "I should search."}}),
        )
        + &frame(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "signature_delta", "signature": "U2lnbmVk"}}),
        )
        + &block_stop(0)
        + &frame(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}}),
        )
        + &frame(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{\"q\": \"ra"}}),
        )
        + &frame(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "in\"}"}}),
        )
        + &block_stop(1)
        + &message_end("tool_use", 40)
}

/// Folds a thinking + tool-use answer, replays it with the tool's result, and checks the
/// second request: signed thinking first, `tool_use` with a parsed input, the result as a
/// `tool_result` block of the next user message.
#[tokio::test]
async fn multi_turn_tool_use_replays_thinking_and_results() {
    let server = FakeServer::start(Scripted::sse(thinking_tool_use_body())).await;
    let mut spec = anthropic_spec(&server.base_url);
    spec.options.thinking_budget = Some(4096);
    spec.max_tokens = Some(2000);
    spec.options.api_version = Some("2023-06-01-test".into());
    spec.options.code_execution = true;
    let backend = anthropic_backend(&spec);

    let mut request = ChatRequest {
        messages: vec![
            ChatMessage::system("You are careful."),
            ChatMessage::user("Will it rain?"),
        ],
        tools: vec![workflow_tool()],
        tool_choice: ToolChoice::Required,
    };
    let (output, error) = run(&backend, &request).await.expect("first call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        output.tool_calls,
        vec![ToolCall::new("toolu_1", "lookup", r#"{"q": "rain"}"#)]
    );
    assert_eq!(
        output.reasoning_blocks,
        vec![ReasoningBlock {
            text: "I should search.".into(),
            signature: Some("U2lnbmVk".into()),
        }]
    );

    request.messages.push(ChatMessage::Assistant {
        content: (!output.text.is_empty()).then(|| output.text.clone()),
        tool_calls: output.tool_calls.clone(),
        reasoning: output.reasoning_blocks.clone(),
    });
    request
        .messages
        .push(ChatMessage::tool("toolu_1", "Rain after 6 pm."));
    let (_, error) = run(&backend, &request).await.expect("second call");
    assert!(error.is_none(), "{error:?}");

    let received = server.received();
    assert_eq!(received.len(), 2);
    let sent = &received[1];
    let header = |name: &str| sent.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("anthropic-version"), Some("2023-06-01-test"));
    assert_eq!(header("anthropic-beta"), Some("code-execution-2025-05-22"));
    assert_eq!(
        sent.json(),
        json!({
            "model": "claude-sonnet-4-20250514",
            // max_tokens must exceed the budget: the configured 2000 goes on top of it.
            "max_tokens": 6096,
            "system": "You are careful.",
            "messages": [
                { "role": "user", "content": [{ "type": "text", "text": "Will it rain?" }] },
                { "role": "assistant", "content": [
                    { "type": "thinking", "thinking": "I should search.", "signature": "U2lnbmVk" },
                    { "type": "tool_use", "id": "toolu_1", "name": "lookup", "input": { "q": "rain" } }
                ]},
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "toolu_1", "content": "Rain after 6 pm." }
                ]}
            ],
            "tools": [
                {
                    "name": "new_answer",
                    "description": "Submit a new answer",
                    "input_schema": {
                        "type": "object",
                        "properties": { "content": { "type": "string" } },
                        "required": ["content"]
                    }
                },
                { "type": "code_execution_20250522", "name": "code_execution" }
            ],
            // Forced tool use is not allowed with thinking.
            "tool_choice": { "type": "auto" },
            "stream": true,
            "thinking": { "type": "enabled", "budget_tokens": 4096 }
        })
    );
}

/// Anthropic requires strict user/assistant alternation: consecutive messages of one role are
/// merged, tool results lead their user message, empty messages vanish, and unsigned or
/// invalid pieces are made acceptable.
#[tokio::test]
async fn consecutive_messages_are_merged_for_strict_alternation() {
    let server = FakeServer::start(Scripted::sse(hello_body())).await;
    let mut spec = anthropic_spec(&server.base_url);
    spec.temperature = Some(0.7);
    spec.top_p = Some(0.9);
    spec.max_tokens = Some(512);
    spec.options.web_search = true;
    spec.extra_body = Some(r#"{"top_k": 40, "metadata": {"user_id": "u1"}}"#.into());
    let backend = anthropic_backend(&spec);
    let request = ChatRequest {
        messages: vec![
            ChatMessage::system("Rule one."),
            ChatMessage::user("Task."),
            ChatMessage::system("Rule two."),
            ChatMessage::user("More context."),
            ChatMessage::Assistant {
                content: Some("Thinking aloud.".into()),
                tool_calls: Vec::new(),
                // Unsigned reasoning (from a stream cut short) cannot be replayed.
                reasoning: vec![ReasoningBlock {
                    text: "unsigned".into(),
                    signature: None,
                }],
            },
            ChatMessage::Assistant {
                content: None,
                tool_calls: vec![
                    ToolCall::new("toolu_a", "new_answer", r#"{"content": "42"}"#),
                    ToolCall::new("toolu_b", "new_answer", r#"{"content": "4"#),
                ],
                reasoning: Vec::new(),
            },
            ChatMessage::user("Your call was cut short."),
            ChatMessage::tool("toolu_a", "accepted"),
            ChatMessage::tool("toolu_b", "invalid JSON"),
            ChatMessage::Assistant {
                content: Some(String::new()),
                tool_calls: Vec::new(),
                reasoning: Vec::new(),
            },
            ChatMessage::user("Try again."),
        ],
        tools: vec![workflow_tool()],
        tool_choice: ToolChoice::None,
    };
    let (output, error) = run(&backend, &request).await.expect("call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.text, "Hello.");

    let body = server.received()[0].json();
    assert_eq!(body["system"], "Rule one.\n\nRule two.");
    assert_eq!(
        body["messages"],
        json!([
            { "role": "user", "content": [
                { "type": "text", "text": "Task." },
                { "type": "text", "text": "More context." }
            ]},
            { "role": "assistant", "content": [
                { "type": "text", "text": "Thinking aloud." },
                { "type": "tool_use", "id": "toolu_a", "name": "new_answer", "input": { "content": "42" } },
                { "type": "tool_use", "id": "toolu_b", "name": "new_answer", "input": {} }
            ]},
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "toolu_a", "content": "accepted" },
                { "type": "tool_result", "tool_use_id": "toolu_b", "content": "invalid JSON" },
                { "type": "text", "text": "Your call was cut short." },
                { "type": "text", "text": "Try again." }
            ]}
        ])
    );
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .map(|list| list.iter().filter_map(|m| m["role"].as_str()).collect())
        .unwrap_or_default();
    assert!(roles.windows(2).all(|pair| pair[0] != pair[1]), "{roles:?}");
    assert_eq!(body["tool_choice"], json!({ "type": "none" }));
    assert_eq!(
        body["tools"][1],
        json!({ "type": "web_search_20250305", "name": "web_search" })
    );
    assert_eq!(body["max_tokens"], 512);
    assert_eq!(body["temperature"], 0.7);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["top_k"], 40);
    assert_eq!(body["metadata"]["user_id"], "u1");
    assert!(body.get("thinking").is_none());
}
