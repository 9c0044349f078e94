//! Replays every recorded OpenAI Responses API stream in `shared/fixtures/sse/openai_responses/`
//! through the real HTTP path (a local server answers with the recorded status, content type
//! and bytes) and checks that folding the chunks with `TurnOutput` gives what the official SDK
//! got from the same bytes; then checks the request body the backend sends.

use crate::common;

use common::{Case, compare_call, fixture_cases};

use std::path::Path;

use common::{FakeServer, Scripted, client, hello, run};
use conclave_agent::accumulate::TurnOutput;
use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use conclave_agent::providers::{Backend, ProviderError};
use conclave_protocol::ToolCall;
use conclave_protocol::config::{BackendSpec, WireFormat};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/sse/openai_responses"
);

fn cases() -> Vec<Case> {
    fixture_cases(FIXTURES)
}

/// A Responses spec for a local server that needs no key.
fn responses_spec(base_url: &str, model: &str) -> BackendSpec {
    BackendSpec {
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
    }
}

fn responses_backend(base_url: &str) -> Backend {
    Backend::new(&responses_spec(base_url, "gpt-4o"), client(), &|_| None)
        .expect("responses backend")
}

/// The `encrypted_content` of every finished reasoning item in a recorded body, in order:
/// each one must close one reasoning block.
fn encrypted_reasoning(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|event| event["type"] == "response.output_item.done")
        .filter(|event| event["item"]["type"] == "reasoning")
        .filter_map(|event| {
            event["item"]["encrypted_content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
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
    let backend = responses_backend(&server.base_url);
    let expected = &case.meta["expected"];
    let mut problems = Vec::new();

    let (output, error) = match run(&backend, &hello()).await {
        Ok(result) => result,
        // Rejected before streaming: the envelope the SDK parsed is in the HTTP error.
        Err(error) => (TurnOutput::default(), Some(error)),
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
        if got != expected[field].as_str() {
            problems.push(format!("{field}: got {got:?}, want {}", expected[field]));
        }
    }
    if let Some(parts) = expected["reasoning_parts"].as_array() {
        // Parts are concatenated as the SDK does; check that the parts do make up the whole.
        let joined: String = parts.iter().filter_map(Value::as_str).collect();
        if output.reasoning.as_deref() != Some(joined.as_str()) {
            problems.push("reasoning is not the concatenation of reasoning_parts".into());
        }
    }

    // One reasoning block per reasoning item, closed by its encrypted content.
    let want_signatures = encrypted_reasoning(&case.body);
    if output.reasoning_signatures != want_signatures {
        problems.push(format!(
            "reasoning signatures: got {}, want {}",
            output.reasoning_signatures.len(),
            want_signatures.len()
        ));
    }
    let signed_blocks: Vec<&str> = output
        .reasoning_blocks
        .iter()
        .filter_map(|b| b.signature.as_deref())
        .collect();
    if signed_blocks != want_signatures {
        problems.push("reasoning blocks do not carry the encrypted reasoning".into());
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

    problems.extend(compare_error(&output, error.as_ref(), &expected["error"]));

    let received = server.received();
    if received.len() != 1 || received[0].path != "/v1/responses" {
        problems.push(format!(
            "server saw {:?}",
            received.iter().map(|r| &r.path).collect::<Vec<_>>()
        ));
    }
    problems
}

/// The error, whether it came inside the stream or as the HTTP status before it.
fn compare_error(output: &TurnOutput, error: Option<&ProviderError>, want: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let as_json = |kind: &str, message: &str, code: Option<&str>| json!({ "type": kind, "message": message, "code": code });
    match error {
        None if want.is_null() => {}
        Some(ProviderError::InStream {
            kind,
            message,
            code,
        }) if !want.is_null() => {
            let got = as_json(kind, message, code.as_deref());
            if &got != want {
                problems.push(format!("stream error: got {got}, want {want}"));
            }
            let folded = output
                .error
                .as_ref()
                .map(|(kind, message, code)| as_json(kind, message, code.as_deref()))
                .unwrap_or(Value::Null);
            if &folded != want {
                problems.push(format!("folded error: got {folded}, want {want}"));
            }
        }
        Some(ProviderError::Http { status, body, .. }) if !want.is_null() => {
            let envelope: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let inner = &envelope["error"];
            let got = json!({
                "type": inner["type"],
                "message": inner["message"],
                "code": inner["code"],
            });
            if &got != want {
                problems.push(format!("HTTP {status} envelope: got {got}, want {want}"));
            }
        }
        got => problems.push(format!("stream ended with {got:?}, want error {want}")),
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

#[tokio::test]
async fn the_model_not_found_error_is_a_readable_http_error() {
    let body = std::fs::read(Path::new(FIXTURES).join("http_error_model_not_found.sse"))
        .expect("http_error_model_not_found.sse");
    let server = FakeServer::start(Scripted::new(400, "application/json", body)).await;
    let error = responses_backend(&server.base_url)
        .stream(&hello())
        .await
        .err()
        .expect("a 400 fails the call");
    assert_eq!(error.http_status(), Some(400));
    assert_eq!(
        error.to_string(),
        "HTTP 400 from openai: The requested model 'gpt-4o-mini-nonexistent-rig-test' does not exist."
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

fn fixture_body(case: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(format!("{case}.sse"))).expect("fixture body")
}

#[tokio::test]
async fn the_request_body_is_what_the_responses_api_expects() {
    let server = FakeServer::start(Scripted::sse(fixture_body("text_basic"))).await;
    let mut spec = responses_spec(&server.base_url, "gpt-4o");
    spec.api_key_env = Some("OPENAI_API_KEY".into());
    spec.temperature = Some(0.5);
    spec.max_tokens = Some(64);
    let backend = Backend::new(&spec, client(), &|name| {
        (name == "OPENAI_API_KEY").then(|| "sk-test-key".to_owned())
    })
    .expect("backend");
    let request = ChatRequest {
        messages: vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Weather?"),
            ChatMessage::Assistant {
                content: None,
                reasoning: Vec::new(),
                tool_calls: vec![ToolCall::new(
                    "call_1",
                    "GetWeatherArgs",
                    r#"{"city":"Edinburgh"}"#,
                )],
            },
            ChatMessage::tool("call_1", "12 C, rain"),
        ],
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::Required,
    };
    let (output, error) = run(&backend, &request).await.expect("call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.text, "The capital of France is Paris.");

    let received = server.received();
    assert_eq!(received.len(), 1);
    let sent = &received[0];
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(
        sent.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer sk-test-key")
    );
    assert_eq!(
        sent.headers.get("accept").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert_eq!(
        sent.json(),
        json!({
            "model": "gpt-4o",
            "instructions": "Be brief.",
            "input": [
                { "role": "user", "content": "Weather?" },
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "GetWeatherArgs",
                    "arguments": "{\"city\":\"Edinburgh\"}"
                },
                { "type": "function_call_output", "call_id": "call_1", "output": "12 C, rain" }
            ],
            "tools": [{
                "type": "function",
                "name": "GetWeatherArgs",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": { "city": { "type": "string" } },
                    "required": ["city"]
                },
                "strict": false
            }],
            "tool_choice": "required",
            "stream": true,
            "store": false,
            "temperature": 0.5,
            "max_output_tokens": 64
        })
    );
    assert!(!format!("{backend:?}").contains("sk-test-key"));
}

#[tokio::test]
async fn a_reasoning_model_gets_reasoning_settings_and_no_sampling() {
    let server = FakeServer::start(Scripted::sse(fixture_body(
        "encrypted_reasoning_function_call",
    )))
    .await;
    let mut spec = responses_spec(&server.base_url, "gpt-5");
    spec.temperature = Some(0.7);
    spec.top_p = Some(0.9);
    spec.options.reasoning_effort = Some("low".into());
    spec.options.verbosity = Some("low".into());
    spec.options.web_search = true;
    spec.extra_body = Some(r#"{"parallel_tool_calls": false}"#.into());
    let backend = Backend::new(&spec, client(), &|_| None).expect("backend");
    let (output, error) = run(&backend, &hello()).await.expect("call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.tool_calls.len(), 1);
    // The encrypted reasoning closed a block with no summary text.
    assert_eq!(output.reasoning, None);
    assert_eq!(output.reasoning_blocks.len(), 1);
    assert_eq!(output.reasoning_blocks[0].text, "");

    let body = server.received()[0].json();
    assert!(body.get("temperature").is_none(), "{body}");
    assert!(body.get("top_p").is_none(), "{body}");
    assert_eq!(
        body["reasoning"],
        json!({ "effort": "low", "summary": "auto" })
    );
    assert_eq!(body["include"], json!(["reasoning.encrypted_content"]));
    assert_eq!(body["text"], json!({ "verbosity": "low" }));
    assert_eq!(body["tools"], json!([{ "type": "web_search" }]));
    assert_eq!(body["parallel_tool_calls"], false);
    assert_eq!(body["store"], false);
}

#[tokio::test]
async fn the_encrypted_reasoning_of_a_turn_is_replayed_on_the_next() {
    // Turn 1: gpt-5 reasons (encrypted) and calls final_result.
    let server = FakeServer::start(Scripted::sse(fixture_body(
        "encrypted_reasoning_function_call",
    )))
    .await;
    let backend = Backend::new(
        &responses_spec(&server.base_url, "gpt-5"),
        client(),
        &|_| None,
    )
    .expect("backend");
    let (first, error) = run(&backend, &hello()).await.expect("turn 1");
    assert!(error.is_none(), "{error:?}");
    let signature = first.reasoning_blocks[0]
        .signature
        .clone()
        .expect("encrypted reasoning");
    let call = first.tool_calls[0].clone();

    // Turn 2 sends turn 1 back: reasoning, then the call, then its result.
    let request = ChatRequest {
        messages: vec![
            ChatMessage::user("What is 1234 * 5.4?"),
            ChatMessage::Assistant {
                content: None,
                tool_calls: first.tool_calls.clone(),
                reasoning: first.reasoning_blocks.clone(),
            },
            ChatMessage::tool(call.id.clone(), "ok"),
        ],
        ..ChatRequest::default()
    };
    let (_, error) = run(&backend, &request).await.expect("turn 2");
    assert!(error.is_none(), "{error:?}");
    let body = server.received()[1].json();
    assert_eq!(
        body["input"],
        json!([
            { "role": "user", "content": "What is 1234 * 5.4?" },
            { "type": "reasoning", "encrypted_content": signature, "summary": [] },
            {
                "type": "function_call",
                "call_id": "call_CWXgs68YprAjp6t0371hiPOI",
                "name": "final_result",
                "arguments": "{\"result\":6666}"
            },
            { "type": "function_call_output", "call_id": "call_CWXgs68YprAjp6t0371hiPOI", "output": "ok" }
        ])
    );
}
