//! Replays every recorded Anthropic Messages stream in `shared/fixtures/sse/anthropic/`
//! through the real HTTP path (a local server answers with the recorded status, content type
//! and bytes) and checks that folding the chunks with `TurnOutput` gives what the official
//! SDK got from the same bytes, and that the request the server saw is what Anthropic expects.
//!
//! One deliberate difference from the SDK: a tool call whose input was cut off by
//! `max_tokens` keeps its raw, invalid JSON (the SDK parses it leniently into a partial
//! object). The raw text is compared exactly; the parsed object only when the raw text is
//! valid JSON (see the module docs of `providers::anthropic`).

use crate::common;

use common::{Case, fixture_cases};

use common::{
    ANTHROPIC_TEST_KEY, FakeServer, Received, Scripted, anthropic_backend, anthropic_spec, run,
};
use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use conclave_agent::providers::ProviderError;
use conclave_protocol::ToolCall;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/sse/anthropic"
);

const THINKING_BUDGET: u32 = 2048;

fn cases() -> Vec<Case> {
    fixture_cases(FIXTURES)
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Current weather for a location".into(),
        parameters: json!({
            "type": "object",
            "properties": { "location": { "type": "string" } },
            "required": ["location"],
        }),
    }
}

/// The request every replay sends: a system prompt, a question and one tool.
fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("What's the weather in Paris?"),
        ],
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::Auto,
    }
}

/// What Anthropic must receive for [`request`] with extended thinking on.
fn check_request(received: &[Received]) -> Vec<String> {
    let mut problems = Vec::new();
    let [sent] = received else {
        return vec![format!(
            "server saw {} requests: {:?}",
            received.len(),
            received.iter().map(|r| &r.path).collect::<Vec<_>>()
        )];
    };
    if sent.path != "/v1/messages" {
        problems.push(format!("path: got {}, want /v1/messages", sent.path));
    }
    let header = |name: &str| sent.headers.get(name).and_then(|v| v.to_str().ok());
    for (name, want) in [
        ("x-api-key", ANTHROPIC_TEST_KEY),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
    ] {
        if header(name) != Some(want) {
            problems.push(format!(
                "header {name}: got {:?}, want {want}",
                header(name)
            ));
        }
    }
    if header("authorization").is_some() || header("anthropic-beta").is_some() {
        problems.push("unexpected authorization or anthropic-beta header".into());
    }
    let body = sent.json();
    let want = json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 8192,
        "system": "Be brief.",
        "messages": [
            { "role": "user", "content": [{ "type": "text", "text": "What's the weather in Paris?" }] }
        ],
        "tools": [{
            "name": "get_weather",
            "description": "Current weather for a location",
            "input_schema": {
                "type": "object",
                "properties": { "location": { "type": "string" } },
                "required": ["location"]
            }
        }],
        "tool_choice": { "type": "auto" },
        "stream": true,
        "thinking": { "type": "enabled", "budget_tokens": THINKING_BUDGET }
    });
    if body != want {
        problems.push(format!("request body: got {body}, want {want}"));
    }
    problems
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
    let mut spec = anthropic_spec(&server.base_url);
    spec.options.thinking_budget = Some(THINKING_BUDGET);
    // Ignored with thinking (Anthropic rejects it); check_request verifies it is not sent.
    spec.temperature = Some(0.3);
    let backend = anthropic_backend(&spec);
    let expected = &case.meta["expected"];

    let mut problems = match run(&backend, &request()).await {
        Ok((output, error)) => {
            let mut problems = Vec::new();
            if status != 200 {
                problems.push(format!("HTTP {status} was streamed instead of failing"));
            }
            problems.extend(compare_output(&output, error.as_ref(), expected));
            problems
        }
        Err(error) => compare_http_error(&error, status, expected),
    };
    problems.extend(check_request(&server.received()));
    problems
}

fn compare_output(
    output: &conclave_agent::accumulate::TurnOutput,
    error: Option<&ProviderError>,
    expected: &Value,
) -> Vec<String> {
    let mut problems = Vec::new();
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
    if output.refusal.is_some() {
        problems.push(format!("refusal: got {:?}, want none", output.refusal));
    }

    let want_signatures: Vec<&str> = expected["reasoning_signatures"]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if output.reasoning_signatures != want_signatures {
        problems.push(format!(
            "reasoning_signatures: got {:?}, want {}",
            output.reasoning_signatures, expected["reasoning_signatures"]
        ));
    }
    // Every signed block keeps its text, so it can be replayed verbatim.
    let signed_text: String = output
        .reasoning_blocks
        .iter()
        .filter(|block| block.signature.is_some())
        .map(|block| block.text.as_str())
        .collect();
    if !want_signatures.is_empty() && Some(signed_text.as_str()) != expected["reasoning"].as_str() {
        problems.push(format!(
            "reasoning blocks: got {:?}, want the reasoning signed",
            output.reasoning_blocks
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
    for (got, want) in output.tool_calls.iter().zip(&want_calls) {
        problems.extend(compare_call(got, want));
    }

    let got_usage = output
        .usage
        .map(|u| json!({ "input_tokens": u.input_tokens, "output_tokens": u.output_tokens }))
        .unwrap_or(Value::Null);
    if got_usage != expected["usage"] {
        problems.push(format!(
            "usage: got {got_usage}, want {}",
            expected["usage"]
        ));
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
    match (error, want_error.is_null()) {
        (None, true) => {}
        (Some(ProviderError::InStream { kind, message, .. }), false)
            if Some(kind.as_str()) == want_error["type"].as_str()
                && Some(message.as_str()) == want_error["message"].as_str() => {}
        (got, _) => problems.push(format!(
            "stream ended with {got:?}, want error {want_error}"
        )),
    }
    problems
}

/// A non-2xx case: the call fails before streaming, with the status and the envelope.
fn compare_http_error(error: &ProviderError, status: u16, expected: &Value) -> Vec<String> {
    let want = &expected["error"];
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
        problems.push(format!("status: got {got_status}, want {status}"));
    }
    let envelope: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let got = json!({
        "type": envelope["error"]["type"],
        "message": envelope["error"]["message"],
        "code": envelope["error"]["code"],
    });
    if &got != want {
        problems.push(format!("error envelope: got {got}, want {want}"));
    }
    let text = error.to_string();
    if let Some(message) = want["message"].as_str()
        && !text.contains(message)
    {
        problems.push(format!("error message {text:?} does not say {message:?}"));
    }
    problems
}

fn compare_call(got: &ToolCall, want: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if Some(got.id.as_str()) != want["id"].as_str() {
        problems.push(format!(
            "tool call id: got {:?}, want {}",
            got.id, want["id"]
        ));
    }
    if Some(got.name.as_str()) != want["name"].as_str() {
        problems.push(format!(
            "tool call name: got {:?}, want {}",
            got.name, want["name"]
        ));
    }
    if Some(got.arguments.as_str()) != want["arguments_raw"].as_str() {
        problems.push(format!(
            "tool call raw arguments: got {:?}, want {}",
            got.arguments, want["arguments_raw"]
        ));
    }
    let raw_is_json = want["arguments_raw"]
        .as_str()
        .is_some_and(|raw| serde_json::from_str::<Value>(raw).is_ok());
    match serde_json::from_str::<Value>(&got.arguments) {
        Ok(parsed) if raw_is_json && parsed == want["arguments"] => {}
        Ok(parsed) if raw_is_json => problems.push(format!(
            "tool call arguments: got {parsed}, want {}",
            want["arguments"]
        )),
        Ok(parsed) => problems.push(format!(
            "tool call arguments: got {parsed}, want the raw truncated text kept invalid"
        )),
        // Truncated input stays invalid JSON on purpose (see the module docs).
        Err(_) if !raw_is_json => {}
        Err(e) => problems.push(format!("tool call arguments are not JSON: {e}")),
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

/// The recorded thinking block, folded and replayed in the next request, goes back to
/// Anthropic exactly as it came (text and signature), ahead of the assistant's text.
#[tokio::test]
async fn recorded_thinking_is_replayed_with_its_signature() {
    let case = cases()
        .into_iter()
        .find(|case| case.name == "thinking_signature")
        .expect("the thinking_signature case");
    let server = FakeServer::start(Scripted::sse(case.body.clone())).await;
    let mut spec = anthropic_spec(&server.base_url);
    spec.options.thinking_budget = Some(THINKING_BUDGET);
    let backend = anthropic_backend(&spec);
    let (output, error) = run(&backend, &request()).await.expect("first call");
    assert!(error.is_none(), "{error:?}");

    let mut next = request();
    next.messages.push(ChatMessage::Assistant {
        content: Some(output.text.clone()),
        tool_calls: Vec::new(),
        reasoning: output.reasoning_blocks.clone(),
    });
    next.messages.push(ChatMessage::user("And at night?"));
    let (_, error) = run(&backend, &next).await.expect("second call");
    assert!(error.is_none(), "{error:?}");

    let received = server.received();
    assert_eq!(received.len(), 2);
    let body = received[1].json();
    let expected = &case.meta["expected"];
    assert_eq!(
        body["messages"][1],
        json!({
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": expected["reasoning"],
                    "signature": expected["reasoning_signatures"][0],
                },
                { "type": "text", "text": expected["text"] },
            ]
        })
    );
    assert_eq!(body["messages"][2]["role"], "user");
}
