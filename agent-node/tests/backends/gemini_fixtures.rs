//! Replays every recorded Gemini stream in `shared/fixtures/sse/gemini/` through the real
//! HTTP path (a local server answers with the recorded status, content type and bytes) and
//! checks that folding the chunks with `TurnOutput` gives what the google-genai SDK got from
//! the same bytes. Then checks what the backend sends: URL, key header and request body.
//!
//! What is compared, and why:
//! - text, reasoning, every `thoughtSignature` in stream order, finish reason, usage and the
//!   in-stream error, exactly;
//! - tool calls by name and parsed arguments. Gemini sends arguments as an object
//!   (`arguments_raw` is null), so only the parsed form is meaningful. Recorded calls have no
//!   `id` (null); the backend then names them `call_{n}`, and the id is compared only when
//!   the recording has one. A call's signature must be one of the recorded signatures;
//!   the call that carried one on the wire must keep it;
//! - for `http_error_*`, the call fails before streaming with `ProviderError::Http`, and the
//!   body's envelope (`error.status`, `error.message`, numeric `error.code`) must be the
//!   recorded one.

use crate::common;

use common::{Case, fixture_cases};

use std::path::Path;

use common::{FakeServer, GEMINI_TEST_KEY, Scripted, gemini_backend, gemini_spec, hello, run};
use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use conclave_agent::providers::ProviderError;
use conclave_protocol::ToolCall;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/sse/gemini"
);

fn cases() -> Vec<Case> {
    fixture_cases(FIXTURES)
}

/// Everything that differs between the replay and the SDK's result, as readable lines.
async fn replay(case: &Case, piece_size: Option<usize>) -> Vec<String> {
    let status = case.meta["http_status"].as_u64().unwrap_or(0) as u16;
    let content_type = case.meta["content_type"]
        .as_str()
        .unwrap_or("text/event-stream");
    let model = case.meta["recorded_request_model"]
        .as_str()
        .unwrap_or("gemini-2.0-flash");
    let mut script = Scripted::new(status, content_type, case.body.clone());
    script.piece_size = piece_size;
    let (server, uris) = FakeServer::start_keeping_uris(script).await;
    let backend = gemini_backend(&gemini_spec(&server.base_url, model));
    let expected = &case.meta["expected"];
    let mut problems = Vec::new();

    // What the server saw: one POST to the model's streaming URL, with the key header.
    let check_request = |problems: &mut Vec<String>| {
        let want_uri = format!("/v1/models/{model}:streamGenerateContent?alt=sse");
        let seen = uris.lock().map(|u| u.clone()).unwrap_or_default();
        if seen != [want_uri.clone()] {
            problems.push(format!("server saw {seen:?}, want [{want_uri:?}]"));
        }
        let received = server.received();
        let key = received
            .first()
            .and_then(|r| r.headers.get("x-goog-api-key"))
            .and_then(|v| v.to_str().ok());
        if key != Some(GEMINI_TEST_KEY) {
            problems.push(format!("x-goog-api-key header: got {key:?}"));
        }
    };

    let (output, error) = match run(&backend, &hello()).await {
        Ok(result) => result,
        Err(error) => {
            check_request(&mut problems);
            problems.extend(compare_http_error(&error, status, &expected["error"]));
            return problems;
        }
    };
    check_request(&mut problems);
    if status != 200 {
        problems.push(format!("HTTP {status} did not fail the call"));
    }

    if output.text != expected["text"].as_str().unwrap_or_default() {
        problems.push(format!(
            "text: got {:?}, want {}",
            output.text, expected["text"]
        ));
    }
    for (field, got) in [
        ("reasoning", output.reasoning.as_deref()),
        ("finish_reason", output.finish_reason.as_deref()),
    ] {
        if got != expected[field].as_str() {
            problems.push(format!("{field}: got {got:?}, want {}", expected[field]));
        }
    }

    let want_signatures: Vec<&str> = expected["reasoning_signatures"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if output.reasoning_signatures != want_signatures {
        problems.push(format!(
            "reasoning_signatures: got {} signatures, want {}",
            output.reasoning_signatures.len(),
            want_signatures.len()
        ));
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
    for (index, (got, want)) in output.tool_calls.iter().zip(&want_calls).enumerate() {
        problems.extend(compare_call(index, got, want, &want_signatures, &case.body));
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
    if error.is_some() == want_error.is_null() {
        problems.push(format!(
            "stream ended with {error:?}, want error {want_error}"
        ));
    }
    problems
}

/// A recorded non-2xx answer: the call fails before streaming, with the recorded envelope.
fn compare_http_error(error: &ProviderError, status: u16, want: &Value) -> Vec<String> {
    let ProviderError::Http {
        status: got_status,
        body,
        ..
    } = error
    else {
        return vec![format!(
            "the call failed with {error:?}, want HTTP {status}"
        )];
    };
    let mut problems = Vec::new();
    if *got_status != status {
        problems.push(format!("HTTP status: got {got_status}, want {status}"));
    }
    let envelope: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let got = json!({
        "type": envelope["error"]["status"],
        "message": envelope["error"]["message"],
        "code": envelope["error"]["code"],
    });
    if &got != want {
        problems.push(format!("error envelope: got {got}, want {want}"));
    }
    // The message the user sees is the envelope's, with a hint.
    if let Some(message) = want["message"].as_str()
        && !error.to_string().contains(message)
    {
        problems.push(format!(
            "error message does not quote the provider: {error}"
        ));
    }
    problems
}

fn compare_call(
    index: usize,
    got: &ToolCall,
    want: &Value,
    signatures: &[&str],
    body: &[u8],
) -> Vec<String> {
    let mut problems = Vec::new();
    match want["id"].as_str() {
        Some(id) if got.id != id => {
            problems.push(format!("tool call id: got {:?}, want {id:?}", got.id));
        }
        Some(_) => {}
        None if got.id != format!("call_{index}") => {
            problems.push(format!(
                "tool call without a recorded id: got id {:?}, want call_{index}",
                got.id
            ));
        }
        None => {}
    }
    if Some(got.name.as_str()) != want["name"].as_str() {
        problems.push(format!(
            "tool call name: got {:?}, want {}",
            got.name, want["name"]
        ));
    }
    match serde_json::from_str::<Value>(&got.arguments) {
        Ok(parsed) if parsed == want["arguments"] => {}
        Ok(parsed) => problems.push(format!(
            "tool call arguments: got {parsed}, want {}",
            want["arguments"]
        )),
        Err(e) => problems.push(format!("tool call arguments are not JSON: {e}")),
    }
    match &got.signature {
        Some(signature) if !signatures.contains(&signature.as_str()) => {
            problems.push("tool call signature is not a recorded thoughtSignature".into());
        }
        Some(_) => {}
        // In these recordings a function call part carries a signature exactly when the
        // body has one next to a functionCall.
        None if String::from_utf8_lossy(body).contains("}},\"thoughtSignature\"") => {
            problems.push("the call's thoughtSignature was lost".into());
        }
        None => {}
    }
    problems
}

#[tokio::test]
async fn every_recorded_stream_folds_like_the_sdk() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        // Whole body at once, then in 7-byte pieces (CRLF frames and UTF-8 split across reads).
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

fn text_basic_body() -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join("text_basic.sse")).expect("text_basic.sse")
}

/// A tool schema the way MCP servers and the workflow tools write it: JSON-schema keywords
/// Gemini rejects (`additionalProperties`, `$schema`, `format: uri`, nullable type lists).
fn lookup_tool() -> ToolSpec {
    ToolSpec {
        name: "lookup".into(),
        description: "Look a page up".into(),
        parameters: json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "url": { "type": "string", "format": "uri" },
                "depth": { "type": ["integer", "null"], "minimum": 0, "exclusiveMaximum": 5 },
                "labels": { "type": "array", "items": { "type": "string", "enum": ["a", "b"] }, "uniqueItems": true }
            },
            "required": ["url"],
            "additionalProperties": false
        }),
    }
}

#[tokio::test]
async fn the_request_is_what_gemini_expects() {
    let (server, uris) = FakeServer::start_keeping_uris(Scripted::sse(text_basic_body())).await;
    let mut spec = gemini_spec(&server.base_url, "gemini-2.0-flash");
    spec.temperature = Some(0.5);
    spec.top_p = Some(0.9);
    spec.max_tokens = Some(256);
    spec.options.thinking_budget = Some(1024);
    // Configured, but Gemini cannot mix them with function tools: dropped below.
    spec.options.web_search = true;
    spec.options.code_execution = true;
    let backend = gemini_backend(&spec);
    let request = ChatRequest {
        messages: vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("What is the capital of France?"),
        ],
        tools: vec![lookup_tool()],
        tool_choice: ToolChoice::Required,
    };
    let (output, error) = run(&backend, &request).await.expect("call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.text, "The capital of France is Paris.\n");

    assert_eq!(
        uris.lock().expect("lock").as_slice(),
        ["/v1/models/gemini-2.0-flash:streamGenerateContent?alt=sse"]
    );
    let received = server.received();
    assert_eq!(received.len(), 1);
    let sent = &received[0];
    let header = |name: &str| sent.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("x-goog-api-key"), Some(GEMINI_TEST_KEY));
    assert_eq!(
        header("authorization"),
        None,
        "Gemini's key goes in x-goog-api-key only"
    );
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(
        sent.json(),
        json!({
            "systemInstruction": { "parts": [{ "text": "Be brief." }] },
            "contents": [
                { "role": "user", "parts": [{ "text": "What is the capital of France?" }] }
            ],
            "tools": [{
                "functionDeclarations": [{
                    "name": "lookup",
                    "description": "Look a page up",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "url": { "type": "string" },
                            "depth": { "type": "integer", "nullable": true, "minimum": 0 },
                            "labels": { "type": "array", "items": { "type": "string", "enum": ["a", "b"] } }
                        },
                        "required": ["url"]
                    }
                }]
            }],
            "toolConfig": { "functionCallingConfig": { "mode": "ANY" } },
            "generationConfig": {
                "temperature": 0.5,
                "topP": 0.9,
                "maxOutputTokens": 256,
                "thinkingConfig": { "thinkingBudget": 1024, "includeThoughts": true }
            }
        })
    );
}

#[tokio::test]
async fn built_in_tools_are_sent_when_no_function_tools_are() {
    let server = FakeServer::start(Scripted::sse(text_basic_body())).await;
    let mut spec = gemini_spec(&server.base_url, "gemini-2.5-flash");
    spec.options.web_search = true;
    spec.options.code_execution = true;
    spec.extra_body = Some(r#"{"generationConfig": {"seed": 3}}"#.into());
    let backend = gemini_backend(&spec);
    let (_, error) = run(&backend, &hello()).await.expect("call");
    assert!(error.is_none(), "{error:?}");

    let body = server.received()[0].json();
    assert_eq!(
        body["tools"],
        json!([{ "google_search": {} }, { "code_execution": {} }])
    );
    assert!(body.get("toolConfig").is_none(), "{body}");
    // A thinking model is asked for its thoughts; extra_body adds to generationConfig.
    assert_eq!(
        body["generationConfig"],
        json!({ "thinkingConfig": { "includeThoughts": true }, "seed": 3 })
    );
}
