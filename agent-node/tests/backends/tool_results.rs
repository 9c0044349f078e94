//! Tool results of arbitrary tools, parallel calls included, rendered in each provider's own
//! request shape: Chat `tool` messages, Responses `function_call_output` items, Anthropic
//! `tool_result` blocks (all results of one assistant turn in ONE user message), Gemini
//! `functionResponse` parts (named by the call's function name, all in one user turn).
//!
//! The calls are the ones the providers really sent in the recorded fixtures
//! (`shared/fixtures/sse/<api>/`), plus an MCP tool call (`mcp__demo__lookup`) made in the
//! same reply: what the tool loop feeds back after running a batch.

use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use conclave_agent::providers::{anthropic, gemini, openai_chat, openai_responses};
use conclave_protocol::ToolCall;
use conclave_protocol::config::WireFormat;
use serde_json::{Value, json};

use crate::common::{anthropic_spec, gemini_spec, spec};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/sse");

/// The tool calls a fixture's provider sent (ids as sent; a Gemini call without an id gets
/// the id conclave generates, `call_{index}`).
fn fixture_calls(case: &str) -> Vec<ToolCall> {
    let path = format!("{FIXTURES}/{case}.json");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    meta["expected"]["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no expected tool calls"))
        .iter()
        .enumerate()
        .map(|(index, call)| {
            ToolCall::new(
                call["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{index}"), str::to_owned),
                call["name"].as_str().unwrap_or_default(),
                call["arguments"].to_string(),
            )
        })
        .collect()
}

/// A conversation whose assistant turn made `calls` plus one MCP call, followed by one
/// result per call, in call order.
fn conversation(mut calls: Vec<ToolCall>, extra_id: &str) -> (Vec<ToolCall>, ChatRequest) {
    calls.push(ToolCall::new(
        extra_id,
        "mcp__demo__lookup",
        r#"{"key":"answer"}"#,
    ));
    let mut messages = vec![
        ChatMessage::system("be brief"),
        ChatMessage::user("question"),
        ChatMessage::Assistant {
            content: Some("Let me check.".into()),
            tool_calls: calls.clone(),
            reasoning: Vec::new(),
        },
    ];
    for call in &calls {
        messages.push(ChatMessage::tool(
            call.id.clone(),
            format!("result of {}", call.name),
        ));
    }
    let request = ChatRequest {
        messages,
        tools: vec![ToolSpec {
            name: "mcp__demo__lookup".into(),
            description: "Look up a fact.".into(),
            parameters: json!({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}),
        }],
        tool_choice: ToolChoice::Auto,
    };
    (calls, request)
}

#[test]
fn chat_completions_results_are_tool_messages_in_call_order() {
    let (calls, request) = conversation(
        fixture_calls("openai_chat/tool_calls_parallel"),
        "call_mcp1",
    );
    assert!(calls.len() >= 3, "the fixture has parallel calls");
    let body = openai_chat::request_body(
        &spec("http://127.0.0.1:1/v1", "openai", None),
        None,
        &request,
    );
    let messages = body["messages"].as_array().expect("messages");
    let assistant = &messages[2];
    assert_eq!(assistant["role"], "assistant");
    let sent: Vec<&str> = assistant["tool_calls"]
        .as_array()
        .expect("tool_calls")
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        sent,
        calls.iter().map(|c| c.id.as_str()).collect::<Vec<_>>()
    );
    for (index, call) in calls.iter().enumerate() {
        let message = &messages[3 + index];
        assert_eq!(
            *message,
            json!({"role": "tool", "tool_call_id": call.id, "content": format!("result of {}", call.name)})
        );
    }
    assert_eq!(messages.len(), 3 + calls.len());
}

#[test]
fn responses_results_are_function_call_outputs_by_call_id() {
    let (calls, request) = conversation(
        fixture_calls("openai_responses/function_call_single"),
        "call_mcp1",
    );
    let mut spec = spec("http://127.0.0.1:1/v1", "openai", None);
    spec.wire = WireFormat::OpenAiResponses;
    let body = openai_responses::request_body(&spec, None, &request);
    let input = body["input"].as_array().expect("input");
    let function_calls: Vec<&Value> = input
        .iter()
        .filter(|i| i["type"] == "function_call")
        .collect();
    let outputs: Vec<&Value> = input
        .iter()
        .filter(|i| i["type"] == "function_call_output")
        .collect();
    assert_eq!(function_calls.len(), calls.len());
    assert_eq!(outputs.len(), calls.len());
    for (index, call) in calls.iter().enumerate() {
        assert_eq!(function_calls[index]["call_id"], call.id);
        assert_eq!(function_calls[index]["name"], call.name);
        assert_eq!(outputs[index]["call_id"], call.id);
        assert_eq!(outputs[index]["output"], format!("result of {}", call.name));
    }
    // Every output follows its call.
    let last_call = input.iter().rposition(|i| i["type"] == "function_call");
    let first_output = input
        .iter()
        .position(|i| i["type"] == "function_call_output");
    assert!(last_call < first_output);
}

#[test]
fn anthropic_results_of_one_turn_share_one_user_message() {
    let (calls, request) = conversation(fixture_calls("anthropic/tool_use"), "toolu_mcp1");
    let body = anthropic::request_body(&anthropic_spec("http://127.0.0.1:1/v1"), None, &request);
    let messages = body["messages"].as_array().expect("messages");
    // user question, assistant (text + tool_use blocks), ONE user message with the results.
    assert_eq!(messages.len(), 3, "{body:#}");
    let uses: Vec<&Value> = messages[1]["content"]
        .as_array()
        .expect("blocks")
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .collect();
    assert_eq!(uses.len(), calls.len());
    let results = messages[2]["content"].as_array().expect("blocks");
    assert_eq!(messages[2]["role"], "user");
    assert_eq!(results.len(), calls.len());
    for (index, call) in calls.iter().enumerate() {
        assert_eq!(uses[index]["id"], call.id);
        assert_eq!(uses[index]["name"], call.name);
        assert_eq!(
            results[index],
            json!({"type": "tool_result", "tool_use_id": call.id, "content": format!("result of {}", call.name)})
        );
    }
}

#[test]
fn gemini_results_are_function_responses_named_after_the_call() {
    let (calls, request) = conversation(
        fixture_calls("gemini/function_call_thought_signature"),
        "call_1",
    );
    let body = gemini::request_body(
        &gemini_spec("http://127.0.0.1:1/v1beta", "gemini-2.5-flash"),
        None,
        &request,
    );
    let contents = body["contents"].as_array().expect("contents");
    assert_eq!(contents.len(), 3, "{body:#}");
    assert_eq!(contents[1]["role"], "model");
    let responses = contents[2]["parts"].as_array().expect("parts");
    assert_eq!(contents[2]["role"], "user");
    assert_eq!(responses.len(), calls.len());
    for (index, call) in calls.iter().enumerate() {
        let response = &responses[index]["functionResponse"];
        assert_eq!(response["name"], call.name, "{body:#}");
        assert_eq!(
            response["response"],
            json!({"content": format!("result of {}", call.name)})
        );
    }
    // The MCP call's result carries its function name, not its id.
    assert_eq!(
        responses[calls.len() - 1]["functionResponse"]["name"],
        "mcp__demo__lookup"
    );
}

/// [`conversation`] whose last call (the MCP one) failed: its result is an error result.
fn conversation_with_a_failed_call(calls: Vec<ToolCall>, extra_id: &str) -> ChatRequest {
    let (_, mut request) = conversation(calls, extra_id);
    let failed = request.messages.pop();
    let Some(ChatMessage::Tool { call_id, .. }) = failed else {
        panic!("the conversation ends with a tool result");
    };
    request.messages.push(ChatMessage::tool_error(
        call_id,
        "error: tool `mcp__demo__lookup` failed: no such key",
    ));
    request
}

#[test]
fn a_failed_call_is_an_anthropic_error_result_and_plain_text_elsewhere() {
    const FAILED: &str = "error: tool `mcp__demo__lookup` failed: no such key";

    // Anthropic: `is_error: true` on the failed result only.
    let request =
        conversation_with_a_failed_call(fixture_calls("anthropic/tool_use"), "toolu_mcp1");
    let body = anthropic::request_body(&anthropic_spec("http://127.0.0.1:1/v1"), None, &request);
    let results = body["messages"][2]["content"].as_array().expect("blocks");
    let (failed, succeeded) = results.split_last().expect("results");
    assert_eq!(
        *failed,
        json!({"type": "tool_result", "tool_use_id": "toolu_mcp1", "content": FAILED, "is_error": true})
    );
    assert!(!succeeded.is_empty());
    assert!(
        succeeded.iter().all(|b| b.get("is_error").is_none()),
        "{body:#}"
    );

    // Chat Completions: a `tool` message with the text; the format has no error flag.
    let request = conversation_with_a_failed_call(
        fixture_calls("openai_chat/tool_calls_parallel"),
        "call_mcp1",
    );
    let body = openai_chat::request_body(
        &spec("http://127.0.0.1:1/v1", "openai", None),
        None,
        &request,
    );
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(
        messages.last(),
        Some(&json!({"role": "tool", "tool_call_id": "call_mcp1", "content": FAILED}))
    );

    // Responses: a `function_call_output` with the text.
    let request = conversation_with_a_failed_call(
        fixture_calls("openai_responses/function_call_single"),
        "call_mcp1",
    );
    let mut responses_spec = spec("http://127.0.0.1:1/v1", "openai", None);
    responses_spec.wire = WireFormat::OpenAiResponses;
    let body = openai_responses::request_body(&responses_spec, None, &request);
    let output = body["input"]
        .as_array()
        .and_then(|input| input.iter().rfind(|i| i["type"] == "function_call_output"))
        .expect("an output");
    assert_eq!(output["call_id"], "call_mcp1");
    assert_eq!(output["output"], FAILED);
    assert!(output.get("is_error").is_none());

    // Gemini: a `functionResponse` with the text.
    let request = conversation_with_a_failed_call(
        fixture_calls("gemini/function_call_thought_signature"),
        "call_1",
    );
    let body = gemini::request_body(
        &gemini_spec("http://127.0.0.1:1/v1beta", "gemini-2.5-flash"),
        None,
        &request,
    );
    let parts = body["contents"][2]["parts"].as_array().expect("parts");
    let response = &parts.last().expect("a part")["functionResponse"];
    assert_eq!(response["name"], "mcp__demo__lookup");
    assert_eq!(response["response"], json!({"content": FAILED}));
}

#[test]
fn a_tool_call_record_marks_its_message_as_an_error_when_the_call_failed() {
    let mut record = conclave_agent::tools::ToolCallRecord {
        call_id: "c1".into(),
        tool: "mcp__demo__lookup".into(),
        arguments: "{}".into(),
        duration: std::time::Duration::ZERO,
        result_bytes: 2,
        truncated: false,
        error: None,
        error_type: None,
        content: "42".into(),
    };
    assert_eq!(record.message(), ChatMessage::tool("c1", "42"));
    record.error = Some("error: tool `mcp__demo__lookup` failed: boom".into());
    record.error_type = Some("tool_error");
    record.content = "error: tool `mcp__demo__lookup` failed: boom".into();
    assert_eq!(
        record.message(),
        ChatMessage::tool_error("c1", "error: tool `mcp__demo__lookup` failed: boom")
    );
}
