//! Failure paths and a multi-turn round trip of the Gemini backend over real HTTP: truncated,
//! malformed and broken streams, an in-stream error, a readable 404, and a tool call whose
//! `thoughtSignature` must come back on the next request next to the function's result.

use crate::common;

use std::path::Path;

use common::{FakeServer, GEMINI_TEST_KEY, Scripted, gemini_backend, gemini_spec, hello, run};
use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use conclave_agent::providers::ProviderError;
use conclave_agent::providers::retry::RetryPolicy;
use serde_json::json;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/sse/gemini"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One `data:` record, framed with CRLF as Gemini frames them.
fn record(json: &str) -> String {
    format!("data: {json}\r\n\r\n")
}

const TEXT_CHUNK: &str = r#"{"candidates": [{"content": {"parts": [{"text": "The capital"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 13,"candidatesTokenCount": 2,"totalTokenCount": 15}}"#;

async fn call(
    body: impl Into<Vec<u8>>,
) -> (
    conclave_agent::accumulate::TurnOutput,
    Option<ProviderError>,
) {
    let server = FakeServer::start(Scripted::sse(body)).await;
    let backend = gemini_backend(&gemini_spec(&server.base_url, "gemini-2.0-flash"));
    run(&backend, &hello()).await.expect("the call starts")
}

#[tokio::test]
async fn a_body_without_finish_reason_is_truncated_and_keeps_its_usage() {
    let (output, error) = call(record(TEXT_CHUNK)).await;
    assert!(matches!(error, Some(ProviderError::Truncated)), "{error:?}");
    assert_eq!(output.text, "The capital");
    assert_eq!(output.finish_reason, None);
    // The tokens were billed, so they are reported before the error.
    assert_eq!(output.usage.map(|u| u.input_tokens), Some(13));
    assert!(
        RetryPolicy::default()
            .delay_for(0, &ProviderError::Truncated)
            .is_some()
    );
}

#[tokio::test]
async fn malformed_data_ends_the_stream() {
    let body = format!("{}data: {{\"candidates\": [\r\n\r\n", record(TEXT_CHUNK));
    let (output, error) = call(body).await;
    assert!(
        matches!(&error, Some(ProviderError::Malformed(m)) if m.contains("Gemini")),
        "{error:?}"
    );
    assert_eq!(output.text, "The capital");
}

#[tokio::test]
async fn an_in_stream_error_is_recorded_and_ends_the_stream() {
    let body = format!(
        "{}{}",
        record(TEXT_CHUNK),
        record(
            r#"{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}"#
        )
    );
    let (output, error) = call(body).await;
    assert_eq!(
        output.error,
        Some((
            "UNAVAILABLE".into(),
            "The model is overloaded. Please try again later.".into(),
            Some("503".into())
        ))
    );
    let Some(error) = error else {
        panic!("the stream must end with the error");
    };
    assert!(
        matches!(&error, ProviderError::InStream { kind, code, .. } if kind == "UNAVAILABLE" && code.as_deref() == Some("503")),
        "{error:?}"
    );
    assert!(RetryPolicy::default().delay_for(0, &error).is_some());
}

#[tokio::test]
async fn a_connection_broken_mid_body_is_a_connect_error() {
    let mut script = Scripted::sse(record(TEXT_CHUNK));
    script.break_after_body = true;
    let server = FakeServer::start(script).await;
    let backend = gemini_backend(&gemini_spec(&server.base_url, "gemini-2.0-flash"));
    let (output, error) = run(&backend, &hello()).await.expect("the call starts");
    assert_eq!(output.text, "The capital");
    assert!(
        matches!(error, Some(ProviderError::Connect(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn not_found_is_a_readable_http_error_that_is_not_retried() {
    let server = FakeServer::start(Scripted::new(
        404,
        "text/event-stream",
        fixture("http_error_not_found.sse"),
    ))
    .await;
    let backend = gemini_backend(&gemini_spec(
        &server.base_url,
        "gemini-nonexistent-rig-test",
    ));
    let error = run(&backend, &hello())
        .await
        .expect_err("a 404 fails the call");
    let message = error.to_string();
    assert!(
        message
            .starts_with("HTTP 404 from gemini: models/gemini-nonexistent-rig-test is not found"),
        "{message}"
    );
    assert!(
        message.ends_with("check the model name and base_url"),
        "{message}"
    );
    assert!(!message.contains(GEMINI_TEST_KEY));
    assert!(!format!("{backend:?}").contains(GEMINI_TEST_KEY));
    assert_eq!(RetryPolicy::default().delay_for(0, &error), None);
}

#[tokio::test]
async fn a_signed_function_call_round_trips_with_its_result() {
    // Turn 1: Gemini 3 calls a function and signs the call.
    let first = FakeServer::start(Scripted::sse(fixture(
        "function_call_thought_signature.sse",
    )))
    .await;
    let spec = gemini_spec(&first.base_url, "gemini-3-pro-preview");
    let backend = gemini_backend(&spec);
    let tool = ToolSpec {
        name: "get_country".into(),
        description: "The user's country".into(),
        parameters: json!({ "type": "object", "properties": {}, "additionalProperties": false }),
    };
    let mut request = ChatRequest {
        messages: vec![ChatMessage::user("What is the capital of my country?")],
        tools: vec![tool],
        tool_choice: ToolChoice::Auto,
    };
    let (output, error) = run(&backend, &request).await.expect("first call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.tool_calls.len(), 1);
    let call = output.tool_calls[0].clone();
    assert_eq!(call.name, "get_country");
    assert_eq!(call.id, "call_0", "Gemini sent no id, so one is made up");
    let signature = call
        .signature
        .clone()
        .expect("the call keeps its thoughtSignature");
    assert_eq!(output.reasoning_signatures, vec![signature.clone()]);
    // A function without arguments is declared without `parameters` (Gemini rejects an
    // OBJECT schema with no properties).
    assert_eq!(
        first.received()[0].json()["tools"],
        json!([{ "functionDeclarations": [{ "name": "get_country", "description": "The user's country" }] }])
    );

    // Turn 2: the call and its result go back, the way a turn worker builds the history.
    request.messages.push(ChatMessage::Assistant {
        content: (!output.text.is_empty()).then(|| output.text.clone()),
        tool_calls: output.tool_calls.clone(),
        reasoning: output.reasoning_blocks.clone(),
    });
    request
        .messages
        .push(ChatMessage::tool(call.id.clone(), "France"));
    let second = FakeServer::start(Scripted::sse(fixture("text_basic.sse"))).await;
    let backend = gemini_backend(&gemini_spec(&second.base_url, "gemini-3-pro-preview"));
    let (output, error) = run(&backend, &request).await.expect("second call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.text, "The capital of France is Paris.\n");

    let body = second.received()[0].json();
    assert_eq!(
        body["contents"],
        json!([
            { "role": "user", "parts": [{ "text": "What is the capital of my country?" }] },
            { "role": "model", "parts": [{
                "functionCall": { "name": "get_country", "args": {} },
                "thoughtSignature": signature,
            }] },
            { "role": "user", "parts": [{
                "functionResponse": { "name": "get_country", "response": { "content": "France" } }
            }] }
        ])
    );
    // The made-up id is not sent to Gemini, which never saw it.
    assert!(!body.to_string().contains("call_0"), "{body}");
    assert_eq!(
        body["toolConfig"],
        json!({ "functionCallingConfig": { "mode": "AUTO" } })
    );
    assert_eq!(
        body["generationConfig"],
        json!({ "thinkingConfig": { "includeThoughts": true } }),
        "Gemini 3 thinks by default and is asked for its thoughts"
    );
}
