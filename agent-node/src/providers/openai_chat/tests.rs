//! Tests of the Chat Completions request body and stream parser.

use conclave_protocol::{StreamChunk, ToolCall, Usage};

use super::*;
use crate::accumulate::TurnOutput;
use crate::llm::{ToolChoice, ToolSpec};
use crate::providers::sse::SseEvent;
use crate::providers::stream::run_parser;
use conclave_protocol::config::WireFormat;

fn message(data: &str) -> SseEvent {
    SseEvent {
        event: "message".into(),
        data: data.into(),
    }
}

/// Feeds data lines through the parser; returns the folded output and the final error.
fn run(events: &[SseEvent], end: bool) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
    run_parser(ChatStreamParser::default(), events, end)
}

#[test]
fn tool_fragments_without_index_and_repeated_names() {
    let (turn, _, error) = run(
        &[
            message(
                r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{\"x\""}}]}}]}"#,
            ),
            message(
                r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":":1}"}}]}}]}"#,
            ),
            message(
                r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
            ),
            message(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
            message("[DONE]"),
        ],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(
        turn.tool_calls,
        vec![
            ToolCall {
                id: "a".into(),
                name: "f".into(),
                arguments: "{\"x\":1}".into(),
                signature: None,
            },
            ToolCall {
                id: "b".into(),
                name: "g".into(),
                arguments: "{}".into(),
                signature: None,
            },
        ]
    );
}

#[test]
fn calls_without_ids_get_one_and_done_flushes() {
    let (turn, _, error) = run(
        &[
            message(
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{}"}}]}}]}"#,
            ),
            message("[DONE]"),
        ],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(turn.tool_calls.len(), 1);
    assert_eq!(turn.tool_calls[0].id, "call_0");
    assert_eq!(turn.finish_reason, None);
}

#[test]
fn lenient_content_and_reasoning_content() {
    let (turn, _, error) = run(
        &[
            message(r#"{"choices":[{"delta":{"reasoning_content":"hm","content":null}}]}"#),
            message(
                r#"{"choices":[{"delta":{"content":[{"type":"text","text":"a"},{"type":"image_url"},"b"]}}]}"#,
            ),
            message(r#"{"choices":[{"delta":{"content":7}}]}"#),
            message(r#"{"choices":null,"usage":{"prompt_tokens":2,"completion_tokens":null}}"#),
            message(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#),
        ],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(turn.reasoning.as_deref(), Some("hm"));
    assert_eq!(turn.text, "ab");
    assert_eq!(turn.finish_reason.as_deref(), Some("length"));
    assert_eq!(
        turn.usage,
        Some(Usage {
            input_tokens: 2,
            output_tokens: 0
        })
    );
}

#[test]
fn error_object_in_data_and_plain_error_event() {
    let (turn, _, error) = run(
        &[
            message(r#"{"choices":[{"delta":{"content":"x"}}]}"#),
            message(r#"{"error":{"message":"overloaded","type":"server_error","code":503}}"#),
        ],
        true,
    );
    assert_eq!(
        turn.error,
        Some((
            "server_error".into(),
            "overloaded".into(),
            Some("503".into())
        ))
    );
    assert!(error.is_some_and(|e| e.starts_with("InStream")));

    let (turn, _, error) = run(
        &[SseEvent {
            event: "error".into(),
            data: "upstream went away".into(),
        }],
        true,
    );
    assert_eq!(
        turn.error,
        Some(("error".into(), "upstream went away".into(), None))
    );
    assert!(error.is_some());
}

#[test]
fn truncation_and_malformed() {
    let (_, _, error) = run(
        &[message(r#"{"choices":[{"delta":{"content":"x"}}]}"#)],
        true,
    );
    assert_eq!(error.as_deref(), Some("Truncated"));
    let (_, _, error) = run(&[message("{not json")], true);
    assert!(error.is_some_and(|e| e.starts_with("Malformed")));
    let (_, _, error) = run(&[message(r#"{"choices":"nope"}"#)], true);
    assert!(error.is_some_and(|e| e.starts_with("Malformed")));
    // A finish reason without [DONE] is a complete answer.
    let (turn, _, error) = run(
        &[message(
            r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
        )],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(turn.text, "x");
}

#[test]
fn other_choices_and_unknown_events_are_ignored() {
    let (turn, _, error) = run(
        &[
            SseEvent {
                event: "ping".into(),
                data: "{}".into(),
            },
            message(r#"{"choices":[{"index":1,"delta":{"content":"no"}}]}"#),
            message(r#"{"choices":[{"index":0,"delta":{"content":"yes"}}]}"#),
            message("[DONE]"),
        ],
        true,
    );
    assert_eq!(error, None);
    assert_eq!(turn.text, "yes");
}

fn spec(model: &str) -> BackendSpec {
    BackendSpec {
        wire: WireFormat::OpenAiChat,
        provider: "openai".into(),
        model: model.into(),
        base_url: "https://api.openai.com/v1/".into(),
        api_key_env: None,
        temperature: Some(0.2),
        top_p: Some(0.9),
        max_tokens: Some(100),
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    }
}

#[test]
fn request_body_shapes() {
    let request = ChatRequest {
        messages: vec![
            ChatMessage::system("s"),
            ChatMessage::user("u"),
            ChatMessage::Assistant {
                content: None,
                reasoning: Vec::new(),
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                    signature: None,
                }],
            },
            ChatMessage::tool("c1", "result"),
        ],
        tools: vec![ToolSpec {
            name: "f".into(),
            description: "does f".into(),
            parameters: json!({"type": "object"}),
        }],
        tool_choice: ToolChoice::Required,
    };
    let mut extra = Map::new();
    extra.insert("seed".into(), json!(7));
    let body = request_body(&spec("gpt-4o-mini"), Some(&extra), &request);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["tool_choice"], "required");
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "f");
    assert_eq!(body["messages"][2]["content"], Value::Null);
    assert_eq!(body["messages"][2]["tool_calls"][0]["type"], "function");
    assert_eq!(
        body["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
    assert_eq!(body["messages"][3]["tool_call_id"], "c1");

    let reasoning = request_body(&spec("openai/o3-mini"), None, &ChatRequest::default());
    assert_eq!(reasoning["max_completion_tokens"], 100);
    assert!(reasoning.get("max_tokens").is_none());
    assert!(reasoning.get("temperature").is_none());
    assert!(reasoning.get("top_p").is_none());
    assert!(reasoning.get("tools").is_none());
    assert!(reasoning.get("tool_choice").is_none());
    assert!(is_reasoning_model("gpt-5-mini"));
    assert!(!is_reasoning_model("gpt-4o"));
}

#[test]
fn options_become_chat_parameters_unless_extra_body_sets_them() {
    let mut spec = spec("o4-mini");
    spec.options.reasoning_effort = Some("low".into());
    spec.options.verbosity = Some("high".into());
    let body = request_body(&spec, None, &ChatRequest::default());
    assert_eq!(body["reasoning_effort"], "low");
    assert_eq!(body["verbosity"], "high");
    assert_eq!(body["stream"], true);

    let mut extra = Map::new();
    extra.insert("verbosity".into(), Value::String("medium".into()));
    let body = request_body(&spec, Some(&extra), &ChatRequest::default());
    assert_eq!(body["reasoning_effort"], "low");
    assert_eq!(body["verbosity"], "medium", "extra_body wins");

    // Options that Chat Completions cannot express add nothing to the body.
    spec.options = conclave_protocol::config::BackendOptions {
        reasoning_summary: Some("auto".into()),
        web_search: true,
        code_execution: true,
        ..Default::default()
    };
    let body = request_body(&spec, None, &ChatRequest::default());
    for key in [
        "reasoning_effort",
        "verbosity",
        "reasoning",
        "reasoning_summary",
        "tools",
        "web_search_options",
    ] {
        assert!(body.get(key).is_none(), "{key}: {body}");
    }
}

#[test]
fn endpoint_trims_slashes() {
    assert_eq!(endpoint("http://h/v1//"), "http://h/v1/chat/completions");
}
