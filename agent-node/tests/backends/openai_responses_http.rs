//! The OpenAI Responses backend over real HTTP, on the paths no recording covers: a failed or
//! incomplete response, an in-stream `error` event, a body cut before the terminal event, a
//! broken connection, malformed data, and the input items of a multi-turn conversation.

use crate::common;

use common::{FakeServer, Scripted, client, hello, run};
use conclave_agent::llm::{ChatMessage, ChatRequest, ReasoningBlock};
use conclave_agent::providers::retry::is_retryable;
use conclave_agent::providers::{Backend, ProviderError};
use conclave_protocol::config::{BackendSpec, WireFormat};
use conclave_protocol::{ToolCall, Usage};
use serde_json::{Value, json};

fn responses_backend(base_url: &str, model: &str) -> Backend {
    let spec = BackendSpec {
        wire: WireFormat::OpenAiResponses,
        provider: "openai".into(),
        model: model.into(),
        base_url: base_url.into(),
        api_key_env: None,
        temperature: None,
        top_p: None,
        max_tokens: None,
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    };
    Backend::new(&spec, client(), &|_| None).expect("responses backend")
}

/// An SSE body from (event name, data) pairs, framed as OpenAI frames it.
fn sse(events: &[(&str, Value)]) -> Vec<u8> {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect::<String>()
        .into_bytes()
}

fn text_delta(text: &str) -> (&'static str, Value) {
    (
        "response.output_text.delta",
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
               "content_index": 0, "delta": text, "sequence_number": 3}),
    )
}

fn message_added() -> (&'static str, Value) {
    (
        "response.output_item.added",
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []}}),
    )
}

#[tokio::test]
async fn a_failed_response_is_an_in_stream_error_worth_retrying() {
    let body = sse(&[
        message_added(),
        text_delta("Partial"),
        (
            "response.failed",
            json!({"type": "response.failed", "response": {
                "status": "failed",
                "error": {"code": "server_error", "message": "The model failed to generate a response."},
                "usage": {"input_tokens": 10, "output_tokens": 1}
            }}),
        ),
    ]);
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&responses_backend(&server.base_url, "gpt-4o"), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "Partial");
    assert_eq!(output.finish_reason.as_deref(), Some("failed"));
    assert_eq!(
        output.usage,
        Some(Usage {
            input_tokens: 10,
            output_tokens: 1
        })
    );
    assert_eq!(
        output.error,
        Some((
            "response.failed".into(),
            "The model failed to generate a response.".into(),
            Some("server_error".into())
        ))
    );
    let error = error.expect("the stream ends with the failure");
    assert!(
        matches!(&error, ProviderError::InStream { code: Some(code), .. } if code == "server_error"),
        "{error:?}"
    );
    assert!(is_retryable(&error));
    assert!(error.to_string().contains("failed to generate"), "{error}");
}

#[tokio::test]
async fn an_incomplete_response_ends_normally_with_its_status() {
    let body = sse(&[
        message_added(),
        text_delta("Cut sh"),
        (
            "response.incomplete",
            json!({"type": "response.incomplete", "response": {
                "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "usage": {"input_tokens": 5, "output_tokens": 2}
            }}),
        ),
    ]);
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&responses_backend(&server.base_url, "gpt-4o"), &hello())
        .await
        .expect("the stream starts");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.text, "Cut sh");
    assert_eq!(output.finish_reason.as_deref(), Some("incomplete"));
    assert_eq!(output.usage.map(|u| u.output_tokens), Some(2));
    assert_eq!(output.error, None);
}

#[tokio::test]
async fn an_error_event_ends_the_stream() {
    let body = sse(&[
        message_added(),
        text_delta("Hel"),
        (
            "error",
            json!({"type": "error", "code": "rate_limit_exceeded",
                   "message": "Rate limit reached for gpt-4o", "param": null, "sequence_number": 4}),
        ),
        // Nothing after the error is read.
        text_delta("lo"),
    ]);
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&responses_backend(&server.base_url, "gpt-4o"), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "Hel");
    assert_eq!(output.finish_reason, None);
    assert_eq!(
        output.error,
        Some((
            "error".into(),
            "Rate limit reached for gpt-4o".into(),
            Some("rate_limit_exceeded".into())
        ))
    );
    let error = error.expect("the stream ends with the error");
    assert!(
        matches!(&error, ProviderError::InStream { message, .. } if message.contains("Rate limit")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_body_without_a_terminal_event_is_truncated() {
    let body = sse(&[
        message_added(),
        text_delta("Half an answ"),
        (
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": 1,
                   "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "vote", "arguments": ""}}),
        ),
    ]);
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&responses_backend(&server.base_url, "gpt-4o"), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "Half an answ");
    assert!(
        output.tool_calls.is_empty(),
        "an unfinished call is dropped"
    );
    assert!(matches!(error, Some(ProviderError::Truncated)), "{error:?}");
}

#[tokio::test]
async fn a_broken_connection_is_a_connect_error() {
    let mut script = Scripted::sse(sse(&[message_added(), text_delta("Hi")]));
    script.break_after_body = true;
    let server = FakeServer::start(script).await;
    let (output, error) = run(&responses_backend(&server.base_url, "gpt-4o"), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "Hi");
    assert!(
        matches!(&error, Some(ProviderError::Connect(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn malformed_data_ends_the_stream() {
    let mut body = sse(&[message_added(), text_delta("ok")]);
    body.extend_from_slice(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\n\n");
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&responses_backend(&server.base_url, "gpt-4o"), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "ok");
    let error = error.expect("malformed data ends the stream");
    assert!(
        matches!(&error, ProviderError::Malformed(m) if m.contains("responses event")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_json_document_instead_of_events_is_reported() {
    // A 200 with a JSON body: the server ignored `stream: true` or answered with an error.
    let server = FakeServer::start(Scripted::new(
        200,
        "application/json",
        r#"{"error":{"message":"streaming is disabled","type":"invalid_request_error","code":null}}"#,
    ))
    .await;
    let error = responses_backend(&server.base_url, "gpt-4o")
        .stream(&hello())
        .await
        .err()
        .expect("the call fails");
    assert!(
        matches!(&error, ProviderError::InStream { message, .. } if message == "streaming is disabled"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_multi_turn_conversation_becomes_input_items() {
    let completed = (
        "response.completed",
        json!({"type": "response.completed", "response": {"status": "completed", "usage": null}}),
    );
    let server = FakeServer::start(Scripted::sse(sse(&[
        message_added(),
        text_delta("Done."),
        completed,
    ])))
    .await;
    let request = ChatRequest {
        messages: vec![
            ChatMessage::system("You are agent 1."),
            ChatMessage::user("Task: add 2 and 2."),
            ChatMessage::Assistant {
                content: Some("Let me answer.".into()),
                reasoning: vec![
                    ReasoningBlock {
                        text: "**Adding**\n\nTwo plus two.".into(),
                        signature: Some("gAAAA-first".into()),
                    },
                    ReasoningBlock {
                        text: String::new(),
                        signature: Some("gAAAA-second".into()),
                    },
                ],
                tool_calls: vec![
                    ToolCall::new("call_a", "new_answer", r#"{"content":"4"}"#),
                    ToolCall::new("call_b", "vote", r#"{"agent_id":"agent1.1","reason":"r"}"#),
                ],
            },
            ChatMessage::tool("call_a", "accepted"),
            ChatMessage::tool("call_b", "error: one workflow call per turn"),
            ChatMessage::user("Your turn was not accepted. Try again."),
        ],
        ..ChatRequest::default()
    };
    let (output, error) = run(&responses_backend(&server.base_url, "o4-mini"), &request)
        .await
        .expect("call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.text, "Done.");
    assert_eq!(output.usage, None);

    let body = server.received()[0].json();
    assert_eq!(body["instructions"], "You are agent 1.");
    assert_eq!(
        body["input"],
        json!([
            { "role": "user", "content": "Task: add 2 and 2." },
            { "type": "reasoning", "encrypted_content": "gAAAA-first", "summary": [] },
            { "type": "reasoning", "encrypted_content": "gAAAA-second", "summary": [] },
            { "role": "assistant", "content": "Let me answer." },
            { "type": "function_call", "call_id": "call_a", "name": "new_answer",
              "arguments": "{\"content\":\"4\"}" },
            { "type": "function_call", "call_id": "call_b", "name": "vote",
              "arguments": "{\"agent_id\":\"agent1.1\",\"reason\":\"r\"}" },
            { "type": "function_call_output", "call_id": "call_a", "output": "accepted" },
            { "type": "function_call_output", "call_id": "call_b",
              "output": "error: one workflow call per turn" },
            { "role": "user", "content": "Your turn was not accepted. Try again." }
        ])
    );
    assert_eq!(body["include"], json!(["reasoning.encrypted_content"]));
    assert_eq!(body["reasoning"], json!({ "summary": "auto" }));
    assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
}
