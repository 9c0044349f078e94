//! Replays every recorded OpenAI Chat Completions stream in
//! `shared/fixtures/sse/openai_chat/` through the real HTTP path (a local server answers with
//! the recorded status, content type and bytes) and checks that folding the chunks with
//! `TurnOutput` gives what the official SDK got from the same bytes.

use crate::common;

use common::{Case, compare_call, fixture_cases};

use std::path::Path;

use common::{FakeServer, Scripted, client, hello, keyless_backend, run, spec};
use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use conclave_agent::providers::{Backend, ProviderError};
use conclave_protocol::ToolCall;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/sse/openai_chat"
);

fn cases() -> Vec<Case> {
    fixture_cases(FIXTURES)
}

fn optional_str(value: &Value) -> Option<&str> {
    value.as_str()
}

/// Everything that differs between the replay and the SDK's result, as readable lines.
async fn replay(case: &Case, piece_size: Option<usize>) -> Vec<String> {
    let status = case.meta["http_status"].as_u64().unwrap_or(0) as u16;
    let content_type = case.meta["content_type"]
        .as_str()
        .unwrap_or("text/event-stream");
    let mut script = Scripted::new(status, content_type, case.body.clone());
    script.piece_size = piece_size;
    let server = FakeServer::start(script).await;
    let backend = keyless_backend(&server.base_url);
    let expected = &case.meta["expected"];
    let mut problems = Vec::new();

    let (output, error) = match run(&backend, &hello()).await {
        Ok(result) => result,
        Err(e) => return vec![format!("the call failed before streaming: {e}")],
    };

    if output.text != expected["text"].as_str().unwrap_or_default() {
        problems.push(format!(
            "text: got {:?}, want {}",
            output.text, expected["text"]
        ));
    }
    for (field, got) in [
        ("reasoning", output.reasoning.as_deref()),
        ("refusal", output.refusal.as_deref()),
        ("finish_reason", output.finish_reason.as_deref()),
    ] {
        if got != optional_str(&expected[field]) {
            problems.push(format!("{field}: got {got:?}, want {}", expected[field]));
        }
    }

    let want_calls = expected["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if output.tool_calls.len() != want_calls.len() {
        problems.push(format!(
            "tool_calls: got {:?}, want {}",
            output.tool_calls, expected["tool_calls"]
        ));
    }
    for (got, want) in output.tool_calls.iter().zip(&want_calls) {
        problems.extend(compare_call(got, want));
    }

    let want_usage = &expected["usage"];
    let got_usage = output
        .usage
        .map(|u| json!({ "input_tokens": u.input_tokens, "output_tokens": u.output_tokens }))
        .unwrap_or(Value::Null);
    if &got_usage != want_usage {
        problems.push(format!("usage: got {got_usage}, want {want_usage}"));
    }

    let want_error = &expected["error"];
    let got_error = output
        .error
        .as_ref()
        .map(|(kind, message, code)| json!({ "type": kind, "message": message, "code": code }))
        .unwrap_or(Value::Null);
    if &got_error != want_error {
        problems.push(format!("error: got {got_error}, want {want_error}"));
    }
    match (&error, want_error.is_null()) {
        (None, true) => {}
        (
            Some(ProviderError::InStream {
                kind,
                message,
                code,
            }),
            false,
        ) => {
            if Some(kind.as_str()) != want_error["type"].as_str()
                || Some(message.as_str()) != want_error["message"].as_str()
                || code.as_deref() != want_error["code"].as_str()
            {
                problems.push(format!("stream error {error:?} differs from {want_error}"));
            }
        }
        (got, _) => problems.push(format!(
            "stream ended with {got:?}, want error {want_error}"
        )),
    }

    let received = server.received();
    if received.len() != 1 || received[0].path != "/v1/chat/completions" {
        problems.push(format!(
            "server saw {:?}",
            received.iter().map(|r| &r.path).collect::<Vec<_>>()
        ));
    }
    problems
}

#[tokio::test]
async fn every_recorded_stream_folds_like_the_sdk() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        // Whole body at once, then in 7-byte pieces (events and UTF-8 split across reads).
        for piece_size in [None, Some(7)] {
            for problem in replay(case, piece_size).await {
                failures.push(format!("{} (pieces {piece_size:?}): {problem}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "GetWeatherArgs".into(),
        description: "Current weather for a city".into(),
        parameters: json!({
            "type": "object",
            "properties": { "city": { "type": "string" } },
            "required": ["city"],
        }),
    }
}

fn text_basic_body() -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join("text_basic.sse")).expect("text_basic.sse")
}

#[tokio::test]
async fn the_request_body_is_what_openai_expects() {
    let server = FakeServer::start(Scripted::sse(text_basic_body())).await;
    let backend = keyless_backend(&server.base_url);
    let request = ChatRequest {
        messages: vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Weather?"),
            ChatMessage::Assistant {
                content: None,
                reasoning: Vec::new(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "GetWeatherArgs".into(),
                    arguments: r#"{"city":"Edinburgh"}"#.into(),
                    signature: None,
                }],
            },
            ChatMessage::tool("call_1", "12 C, rain"),
        ],
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::Required,
    };
    let (output, error) = run(&backend, &request).await.expect("call");
    assert!(error.is_none(), "{error:?}");
    assert!(output.text.starts_with("I'm unable"));

    let received = server.received();
    assert_eq!(received.len(), 1);
    let sent = &received[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert!(
        sent.headers.get("authorization").is_none(),
        "no key configured, so no Authorization header"
    );
    assert_eq!(
        sent.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body = sent.json();
    assert_eq!(
        body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "user", "content": "Weather?" },
                {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "id": "call_1",
                        "type": "function",
                        "function": { "name": "GetWeatherArgs", "arguments": "{\"city\":\"Edinburgh\"}" }
                    }]
                },
                { "role": "tool", "tool_call_id": "call_1", "content": "12 C, rain" }
            ],
            "tools": [{
                "type": "function",
                "function": {
                    "name": "GetWeatherArgs",
                    "description": "Current weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": { "city": { "type": "string" } },
                        "required": ["city"]
                    }
                }
            }],
            "tool_choice": "required",
            "stream": true,
            "stream_options": { "include_usage": true }
        })
    );
}

#[tokio::test]
async fn no_tools_means_no_tools_field_and_settings_are_sent() {
    let server = FakeServer::start(Scripted::sse(text_basic_body())).await;
    let mut spec = spec(&server.base_url, "openai", Some("OPENAI_API_KEY"));
    spec.temperature = Some(0.5);
    spec.max_tokens = Some(64);
    spec.extra_body = Some(r#"{"seed": 42, "temperature": 0.25}"#.into());
    let backend = Backend::new(&spec, client(), &|name| {
        (name == "OPENAI_API_KEY").then(|| "sk-test-key".to_owned())
    })
    .expect("backend");
    let (_, error) = run(&backend, &hello()).await.expect("call");
    assert!(error.is_none(), "{error:?}");

    let received = server.received();
    let sent = &received[0];
    assert_eq!(
        sent.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer sk-test-key")
    );
    let body = sent.json();
    assert!(body.get("tools").is_none(), "{body}");
    assert!(body.get("tool_choice").is_none(), "{body}");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["seed"], 42);
    // extra_body wins over the spec's own settings.
    assert_eq!(body["temperature"], 0.25);
    assert!(!format!("{backend:?}").contains("sk-test-key"));
}
