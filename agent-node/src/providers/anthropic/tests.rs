//! Tests of the Messages request body and stream parser.

use conclave_protocol::{StreamChunk, ToolCall, Usage};

use super::*;
use crate::accumulate::TurnOutput;
use crate::llm::ToolSpec;
use crate::providers::sse::SseEvent;
use crate::providers::stream::run_parser;
use conclave_protocol::config::{BackendOptions, WireFormat};

fn named(event: &str, data: &str) -> SseEvent {
    SseEvent {
        event: event.into(),
        data: data.into(),
    }
}

/// Feeds events through the parser; returns the folded output, the chunks and the final
/// error.
fn run(events: &[SseEvent], end: bool) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
    run_parser(AnthropicStreamParser::default(), events, end)
}

const START: &str =
    r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}"#;

fn start() -> SseEvent {
    named("message_start", START)
}

fn stop_reason(reason: &str, output: u64) -> SseEvent {
    named(
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{reason}"}},"usage":{{"output_tokens":{output}}}}}"#
        ),
    )
}

#[test]
fn thinking_text_tool_use_and_usage() {
    let (turn, chunks, error) = run(
        &[
            start(),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#,
            ),
            named(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"opaque"}}"#,
            ),
            named(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":"Hi"}}"#,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{}}}"#,
            ),
            named(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":2}"#,
            ),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"t1","name":"f","input":{}}}"#,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            ),
            named(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":3}"#,
            ),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":4,"content_block":{"type":"tool_use","id":"t2","name":"g","input":{"k":"v"}}}"#,
            ),
            named(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":4}"#,
            ),
            named(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":12,"output_tokens":30}}"#,
            ),
            named("message_stop", r#"{"type":"message_stop"}"#),
        ],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(turn.text, "Hi");
    assert_eq!(turn.reasoning.as_deref(), Some("hm"));
    assert_eq!(
        turn.reasoning_signatures,
        vec![
            "c2ln".to_owned(),
            format!("{REDACTED_THINKING_PREFIX}opaque")
        ]
    );
    assert_eq!(
        turn.tool_calls,
        vec![
            ToolCall::new("t1", "f", r#"{"a":1}"#),
            ToolCall::new("t2", "g", r#"{"k":"v"}"#),
        ]
    );
    assert_eq!(turn.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        turn.usage,
        Some(Usage {
            input_tokens: 12,
            output_tokens: 30
        })
    );
    // Deltas carry the call ordinal, not the block index; usage comes once, last.
    assert!(chunks.contains(&StreamChunk::ToolCallDelta {
        index: 1,
        id: Some("t2".into()),
        name: Some("g".into()),
        arguments: String::new(),
    }));
    let usages = chunks
        .iter()
        .filter(|c| matches!(c, StreamChunk::Usage(_)))
        .count();
    assert_eq!(usages, 1);
    assert!(matches!(chunks.last(), Some(StreamChunk::Usage(_))));
}

#[test]
fn stop_reason_without_message_stop_is_complete() {
    let (turn, _, error) = run(
        &[
            start(),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
            ),
            stop_reason("end_turn", 5),
        ],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(turn.text, "x");
    assert_eq!(
        turn.usage,
        Some(Usage {
            input_tokens: 10,
            output_tokens: 5
        })
    );
}

#[test]
fn truncation_reports_usage_then_truncated() {
    let (turn, chunks, error) = run(
        &[
            start(),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
            ),
        ],
        true,
    );
    assert_eq!(error.as_deref(), Some("Truncated"));
    assert_eq!(turn.finish_reason, None);
    assert_eq!(turn.usage.map(|u| u.input_tokens), Some(10));
    assert!(!chunks.iter().any(|c| matches!(c, StreamChunk::ToolCall(_))));
}

#[test]
fn cut_tool_input_keeps_the_raw_text() {
    let (turn, _, error) = run(
        &[
            start(),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\": \"b"}}"#,
            ),
            stop_reason("max_tokens", 9),
        ],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(
        turn.tool_calls,
        vec![ToolCall::new("t", "f", r#"{"a": "b"#)]
    );
    assert_eq!(turn.finish_reason.as_deref(), Some("max_tokens"));
}

#[test]
fn error_event_drops_open_calls() {
    let (turn, chunks, error) = run(
        &[
            start(),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            ),
            named(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            stop_reason("end_turn", 1),
        ],
        true,
    );
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.starts_with("InStream") && e.contains("overloaded_error")),
        "{error:?}"
    );
    assert_eq!(
        turn.error,
        Some(("overloaded_error".into(), "Overloaded".into(), None))
    );
    assert!(turn.tool_calls.is_empty());
    assert_eq!(turn.usage.map(|u| u.input_tokens), Some(10));
    assert!(matches!(chunks.last(), Some(StreamChunk::Error { .. })));

    // An error frame without the event name, and one that is not JSON.
    let (turn, _, error) = run(
        &[named(
            "message",
            r#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
        )],
        true,
    );
    assert_eq!(turn.error, Some(("api_error".into(), "boom".into(), None)));
    assert!(error.is_some());
    let (turn, _, _) = run(&[named("error", "upstream went away")], true);
    assert_eq!(
        turn.error,
        Some(("error".into(), "upstream went away".into(), None))
    );
}

#[test]
fn malformed_unknown_and_unnamed_events() {
    let (_, _, error) = run(&[named("message_start", "{not json")], true);
    assert!(error.is_some_and(|e| e.starts_with("Malformed")));
    // A chat-completions body sent to this backend: no `type`.
    let (_, _, error) = run(&[named("message", r#"{"choices":[]}"#)], true);
    assert!(error.is_some_and(|e| e.starts_with("Malformed")));
    let (turn, _, error) = run(
        &[
            named("ping", "{\"type\": \"ping\"}"),
            named("future_event", "{not json"),
            named("message", r#"{"type":"future_type"}"#),
            named(
                "message",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}"#,
            ),
            named(
                "message",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
            ),
        ],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(turn.text, "ok");
    assert_eq!(
        turn.usage,
        Some(Usage {
            input_tokens: 0,
            output_tokens: 2
        })
    );
}

#[test]
fn server_tools_are_not_client_calls() {
    let (turn, chunks, error) = run(
        &[
            start(),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srv","name":"web_search","input":{}}}"#,
            ),
            named(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"x\"}"}}"#,
            ),
            named(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            named(
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"web_search_tool_result","tool_use_id":"srv","content":[]}}"#,
            ),
            named(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            stop_reason("end_turn", 3),
        ],
        true,
    );
    assert_eq!(error, None);
    assert!(turn.tool_calls.is_empty());
    assert!(
        !chunks
            .iter()
            .any(|c| matches!(c, StreamChunk::ToolCallDelta { .. }))
    );
}

fn spec() -> BackendSpec {
    BackendSpec {
        wire: WireFormat::Anthropic,
        provider: "anthropic".into(),
        model: "claude-sonnet-4-5".into(),
        base_url: "https://api.anthropic.com/v1/".into(),
        api_key_env: None,
        temperature: Some(0.2),
        top_p: Some(0.9),
        max_tokens: None,
        extra_body: None,
        max_retries: 2,
        options: BackendOptions::default(),
    }
}

fn weather() -> ToolSpec {
    ToolSpec {
        name: "f".into(),
        description: "does f".into(),
        parameters: json!({"type": "object"}),
    }
}

#[test]
fn plain_request_body() {
    let request = ChatRequest {
        messages: vec![
            ChatMessage::system("a"),
            ChatMessage::system("b"),
            ChatMessage::user("u"),
        ],
        tools: vec![weather()],
        tool_choice: ToolChoice::Required,
    };
    let mut extra = Map::new();
    extra.insert("top_k".into(), json!(5));
    let body = request_body(&spec(), Some(&extra), &request);
    assert_eq!(
        body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "system": "a\n\nb",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "u"}]}],
            "tools": [{"name": "f", "description": "does f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "stream": true,
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 5,
        })
    );
    assert_eq!(
        endpoint(&spec()).ok().as_deref(),
        Some("https://api.anthropic.com/v1/messages")
    );
}

#[test]
fn thinking_request_body() {
    let mut spec = spec();
    spec.options.thinking_budget = Some(500);
    spec.options.web_search = true;
    spec.options.code_execution = true;
    spec.max_tokens = Some(1000);
    let request = ChatRequest {
        messages: vec![ChatMessage::user("u")],
        tools: vec![weather()],
        tool_choice: ToolChoice::Required,
    };
    let body = request_body(&spec, None, &request);
    assert_eq!(
        body["thinking"],
        json!({"type": "enabled", "budget_tokens": MIN_THINKING_BUDGET})
    );
    assert_eq!(body["max_tokens"], MIN_THINKING_BUDGET + 1000);
    assert!(body.get("temperature").is_none());
    assert!(body.get("top_p").is_none());
    assert_eq!(body["tool_choice"], json!({"type": "auto"}));
    assert_eq!(body["tools"][1]["type"], "web_search_20250305");
    assert_eq!(body["tools"][2]["name"], "code_execution");
    let headers = request_headers(&spec).unwrap_or_default();
    assert_eq!(headers.len(), 2);
    assert_eq!(headers[1].1, CODE_EXECUTION_BETA);

    // Built-in tools only: no tool_choice.
    let body = request_body(&spec, None, &ChatRequest::default());
    assert!(body.get("tool_choice").is_none());
    assert_eq!(body["tools"].as_array().map(Vec::len), Some(2));

    spec.options.api_version = Some("bad\nversion".into());
    assert!(matches!(
        request_headers(&spec),
        Err(ProviderError::Config(_))
    ));
    spec.options.api_version = Some("2099-01-01".into());
    assert_eq!(
        request_headers(&spec).ok().map(|h| h[0].1.clone()),
        Some(HeaderValue::from_static("2099-01-01"))
    );
}

#[test]
fn history_is_merged_and_ordered() {
    let (system, messages) = messages_json(&[
        ChatMessage::user("a"),
        ChatMessage::user("b"),
        ChatMessage::Assistant {
            content: Some("calling".into()),
            tool_calls: vec![
                ToolCall::new("t1", "f", r#"{"x":1}"#),
                ToolCall::new("t2", "f", "{broken"),
            ],
            reasoning: vec![
                ReasoningBlock {
                    text: "unsigned".into(),
                    signature: None,
                },
                ReasoningBlock {
                    text: "why".into(),
                    signature: Some("sig".into()),
                },
                ReasoningBlock {
                    text: String::new(),
                    signature: Some(format!("{REDACTED_THINKING_PREFIX}blob")),
                },
            ],
        },
        ChatMessage::user("interjection"),
        ChatMessage::tool("t1", "one"),
        ChatMessage::tool("t2", ""),
        ChatMessage::Assistant {
            content: Some(String::new()),
            tool_calls: Vec::new(),
            reasoning: Vec::new(),
        },
        ChatMessage::user("next"),
    ]);
    assert_eq!(system, None);
    assert_eq!(
        Value::Array(messages),
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "why", "signature": "sig"},
                {"type": "redacted_thinking", "data": "blob"},
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
                {"type": "tool_use", "id": "t2", "name": "f", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "t2"},
                {"type": "text", "text": "interjection"},
                {"type": "text", "text": "next"},
            ]},
        ])
    );
}
