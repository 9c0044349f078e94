//! Tests of the Responses request body and stream parser.

use conclave_protocol::{StreamChunk, ToolCall, Usage};

use super::*;
use crate::accumulate::TurnOutput;
use crate::llm::{ReasoningBlock, ToolChoice, ToolSpec};
use crate::providers::sse::SseEvent;
use crate::providers::stream::run_parser;
use conclave_protocol::config::WireFormat;

fn event(kind: &str, data: Value) -> SseEvent {
    SseEvent {
        event: kind.into(),
        data: data.to_string(),
    }
}

/// Feeds events through the parser; returns the folded output, the chunks and the final
/// error.
fn run(events: &[SseEvent]) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
    run_parser(ResponsesStreamParser::default(), events, true)
}

fn completed(usage: Value) -> SseEvent {
    event(
        "response.completed",
        json!({"type": "response.completed", "response": {"status": "completed", "usage": usage}}),
    )
}

#[test]
fn text_reasoning_and_signature() {
    let (turn, _, error) = run(&[
        event(
            "response.output_item.added",
            json!({"type":"response.output_item.added","output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[]}}),
        ),
        event(
            "response.reasoning_summary_text.delta",
            json!({"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"delta":"A.","obfuscation":"xx"}),
        ),
        event(
            "response.reasoning_summary_text.delta",
            json!({"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"summary_index":1,"delta":"B."}),
        ),
        event(
            "response.output_item.done",
            json!({"type":"response.output_item.done","output_index":0,"item":{"type":"reasoning","id":"rs_1","encrypted_content":"enc1","summary":[{"type":"summary_text","text":"A."},{"type":"summary_text","text":"B."}]}}),
        ),
        event(
            "response.output_text.delta",
            json!({"type":"response.output_text.delta","item_id":"msg_1","output_index":1,"delta":"Hi"}),
        ),
        completed(json!({"input_tokens": 3, "output_tokens": 5})),
    ]);
    assert_eq!(error, None);
    assert_eq!(turn.text, "Hi");
    assert_eq!(turn.reasoning.as_deref(), Some("A.B."));
    assert_eq!(
        turn.reasoning_blocks,
        vec![ReasoningBlock {
            text: "A.B.".into(),
            signature: Some("enc1".into())
        }]
    );
    assert_eq!(turn.finish_reason.as_deref(), Some("completed"));
    assert_eq!(
        turn.usage,
        Some(Usage {
            input_tokens: 3,
            output_tokens: 5
        })
    );
}

#[test]
fn finished_items_without_deltas_are_emitted_once() {
    let (turn, _, error) = run(&[
        event(
            "message",
            json!({"type":"response.output_item.done","output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"why"}]}}),
        ),
        event(
            "message",
            json!({"type":"response.output_item.done","output_index":1,"item":{"type":"message","id":"m","content":[{"type":"output_text","text":"Hello"},{"type":"refusal","refusal":"no"}]}}),
        ),
        event(
            "message",
            json!({"type":"response.output_item.done","output_index":1,"item":{"type":"message","id":"m","content":[{"type":"output_text","text":"Hello"}]}}),
        ),
        event(
            "message",
            json!({"type":"response.output_item.done","output_index":2,"item":{"type":"function_call","id":"fc","call_id":"call_9","name":"f","arguments":"{}"}}),
        ),
        completed(Value::Null),
    ]);
    assert_eq!(error, None);
    assert_eq!(turn.reasoning.as_deref(), Some("why"));
    assert_eq!(turn.text, "Hello");
    assert_eq!(turn.refusal.as_deref(), Some("no"));
    assert_eq!(turn.tool_calls, vec![ToolCall::new("call_9", "f", "{}")]);
    assert_eq!(turn.usage, None);
}

#[test]
fn calls_stream_by_item_and_completed_output_fills_gaps() {
    let (turn, chunks, error) = run(&[
        event(
            "message",
            json!({"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc_a","call_id":"call_a","name":"f","arguments":""}}),
        ),
        event(
            "message",
            json!({"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","id":"fc_b","call_id":"call_b","name":"g","arguments":""}}),
        ),
        event(
            "message",
            json!({"type":"response.function_call_arguments.delta","item_id":"fc_a","output_index":0,"delta":"{\"x\":"}),
        ),
        event(
            "message",
            json!({"type":"response.function_call_arguments.delta","item_id":"fc_b","output_index":1,"delta":"{}"}),
        ),
        event(
            "message",
            json!({"type":"response.function_call_arguments.delta","item_id":"fc_a","output_index":0,"delta":"1}"}),
        ),
        event(
            "message",
            json!({"type":"response.output_item.done","output_index":1,"item":{"type":"function_call","id":"fc_b","call_id":"call_b","name":"g","arguments":"{}"}}),
        ),
        // fc_a never gets its output_item.done; the completed response lists it.
        event(
            "message",
            json!({"type":"response.completed","response":{"status":"completed","output":[
                {"type":"function_call","id":"fc_a","call_id":"call_a","name":"f","arguments":"{\"x\":1}"},
                {"type":"function_call","id":"fc_b","call_id":"call_b","name":"g","arguments":"{}"}
            ]}}),
        ),
    ]);
    assert_eq!(error, None);
    assert_eq!(
        turn.tool_calls,
        vec![
            ToolCall::new("call_b", "g", "{}"),
            ToolCall::new("call_a", "f", "{\"x\":1}"),
        ]
    );
    let deltas: Vec<_> = chunks
        .iter()
        .filter_map(|c| match c {
            StreamChunk::ToolCallDelta {
                index, arguments, ..
            } => Some((*index, arguments.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        deltas,
        vec![(0, ""), (1, ""), (0, "{\"x\":"), (1, "{}"), (0, "1}")]
    );
}

#[test]
fn incomplete_is_a_normal_end_and_drops_unfinished_calls() {
    let (turn, _, error) = run(&[
        event(
            "message",
            json!({"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","call_id":"c","name":"f"}}),
        ),
        event(
            "message",
            json!({"type":"response.function_call_arguments.delta","output_index":0,"delta":"{\"x\""}),
        ),
        event(
            "message",
            json!({"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":1,"output_tokens":2}}}),
        ),
    ]);
    assert_eq!(error, None);
    assert!(turn.tool_calls.is_empty());
    assert_eq!(turn.finish_reason.as_deref(), Some("incomplete"));
    assert_eq!(turn.usage.map(|u| u.output_tokens), Some(2));
}

#[test]
fn failed_and_error_events_end_with_in_stream_errors() {
    let (turn, _, error) = run(&[event(
        "response.failed",
        json!({"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"boom"}}}),
    )]);
    assert_eq!(turn.finish_reason.as_deref(), Some("failed"));
    assert_eq!(
        turn.error,
        Some((
            "response.failed".into(),
            "boom".into(),
            Some("server_error".into())
        ))
    );
    assert!(error.is_some_and(|e| e.starts_with("InStream")));

    let (turn, _, error) = run(&[event(
        "error",
        json!({"type":"error","code":"ERR_X","message":"bad","param":null}),
    )]);
    assert_eq!(
        turn.error,
        Some(("error".into(), "bad".into(), Some("ERR_X".into())))
    );
    assert!(error.is_some_and(|e| e.starts_with("InStream")));

    // Without an `event:` line, the data's type still says it is an error.
    let (turn, _, _) = run(&[event(
        "message",
        json!({"type":"error","error":{"type":"server_error","message":"down"}}),
    )]);
    assert_eq!(
        turn.error,
        Some(("server_error".into(), "down".into(), None))
    );
}

#[test]
fn truncation_malformed_and_unknown_events() {
    let (_, _, error) = run(&[event(
        "message",
        json!({"type":"response.output_text.delta","delta":"x"}),
    )]);
    assert_eq!(error.as_deref(), Some("Truncated"));

    let (_, _, error) = run(&[SseEvent {
        event: "response.output_text.delta".into(),
        data: "{not json".into(),
    }]);
    assert!(error.is_some_and(|e| e.starts_with("Malformed")));

    let (_, _, error) = run(&[event(
        "message",
        json!({"type":"response.output_text.delta","delta":7}),
    )]);
    assert!(error.is_some_and(|e| e.starts_with("Malformed")));

    // An unknown event with an unexpected shape is skipped; [DONE] changes nothing.
    let (turn, _, error) = run(&[
        event(
            "message",
            json!({"type":"response.future_thing","delta":{"x":1}}),
        ),
        SseEvent {
            event: "message".into(),
            data: "[DONE]".into(),
        },
        event(
            "message",
            json!({"type":"response.output_text.delta","delta":"ok"}),
        ),
        completed(Value::Null),
    ]);
    assert_eq!(error, None);
    assert_eq!(turn.text, "ok");
}

fn spec(model: &str) -> BackendSpec {
    BackendSpec {
        wire: WireFormat::OpenAiResponses,
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
            ChatMessage::system("s1"),
            ChatMessage::system("s2"),
            ChatMessage::user("u"),
            ChatMessage::Assistant {
                content: Some("thinking aloud".into()),
                reasoning: vec![
                    ReasoningBlock {
                        text: "r".into(),
                        signature: Some("enc".into()),
                    },
                    ReasoningBlock {
                        text: "unsigned".into(),
                        signature: None,
                    },
                ],
                tool_calls: vec![ToolCall::new("c1", "f", "")],
            },
            ChatMessage::tool("c1", "result"),
            // Nothing to replay: skipped, reasoning included.
            ChatMessage::Assistant {
                content: None,
                reasoning: vec![ReasoningBlock {
                    text: String::new(),
                    signature: Some("dangling".into()),
                }],
                tool_calls: Vec::new(),
            },
            ChatMessage::system("late"),
        ],
        tools: vec![ToolSpec {
            name: "f".into(),
            description: "does f".into(),
            parameters: json!({"type": "object"}),
        }],
        tool_choice: ToolChoice::Required,
    };
    let body = request_body(&spec("gpt-4o-mini"), None, &request);
    assert_eq!(
        body,
        json!({
            "model": "gpt-4o-mini",
            "instructions": "s1\n\ns2",
            "input": [
                {"role": "user", "content": "u"},
                {"type": "reasoning", "encrypted_content": "enc", "summary": []},
                {"role": "assistant", "content": "thinking aloud"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "result"},
                {"role": "system", "content": "late"},
            ],
            "tools": [{"type": "function", "name": "f", "description": "does f",
                       "parameters": {"type": "object"}, "strict": false}],
            "tool_choice": "required",
            "stream": true,
            "store": false,
            "temperature": 0.2,
            "top_p": 0.9,
            "max_output_tokens": 100,
        })
    );
}

#[test]
fn reasoning_models_options_and_extra_body() {
    let mut reasoning = spec("openai/o3-mini");
    reasoning.options.reasoning_effort = Some("high".into());
    reasoning.options.verbosity = Some("low".into());
    reasoning.options.web_search = true;
    reasoning.options.code_execution = true;
    let body = request_body(&reasoning, None, &ChatRequest::default());
    assert!(body.get("temperature").is_none() && body.get("top_p").is_none());
    assert_eq!(
        body["reasoning"],
        json!({"effort": "high", "summary": "auto"})
    );
    assert_eq!(body["include"], json!([ENCRYPTED_REASONING]));
    assert_eq!(body["text"], json!({"verbosity": "low"}));
    assert_eq!(
        body["tools"],
        json!([{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}])
    );
    assert!(body.get("tool_choice").is_none());

    reasoning.options.reasoning_summary = Some("none".into());
    let body = request_body(&reasoning, None, &ChatRequest::default());
    assert_eq!(body["reasoning"], json!({"effort": "high"}));

    // Chat-style keys from the config loader move to their Responses places.
    let mut extra = Map::new();
    extra.insert("reasoning_effort".into(), json!("minimal"));
    extra.insert("verbosity".into(), json!("high"));
    extra.insert("max_completion_tokens".into(), json!(7));
    extra.insert("reasoning".into(), json!({"summary": "detailed"}));
    extra.insert("include".into(), json!(["web_search_call.action.sources"]));
    extra.insert("seed".into(), json!(1));
    let body = request_body(&spec("gpt-4o"), Some(&extra), &ChatRequest::default());
    assert_eq!(
        body["reasoning"],
        json!({"effort": "minimal", "summary": "detailed"})
    );
    assert_eq!(body["text"], json!({"verbosity": "high"}));
    assert_eq!(body["max_output_tokens"], 7);
    assert_eq!(body["seed"], 1);
    assert!(body.get("reasoning_effort").is_none() && body.get("verbosity").is_none());
    assert_eq!(
        body["include"],
        json!(["web_search_call.action.sources", ENCRYPTED_REASONING])
    );

    // A plain model with no reasoning settings asks for no encrypted reasoning.
    let body = request_body(&spec("gpt-4o"), None, &ChatRequest::default());
    assert!(body.get("reasoning").is_none() && body.get("include").is_none());
}
