//! Tests of the Gemini request body, schema rewriting and stream parser.

use conclave_protocol::{StreamChunk, ToolCall, Usage};

use super::*;
use crate::accumulate::TurnOutput;
use crate::llm::ReasoningBlock;
use crate::providers::sse::SseEvent;
use crate::providers::stream::run_parser;
use conclave_protocol::config::WireFormat;

fn message(data: &str) -> SseEvent {
    SseEvent {
        event: "message".into(),
        data: data.into(),
    }
}

/// Feeds events through the parser; returns the folded output, the chunks and the error.
fn run(events: &[SseEvent]) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
    run_parser(GeminiStreamParser::default(), events, true)
}

#[test]
fn thoughts_text_calls_and_signatures() {
    let (turn, chunks, error) = run(&[
        message(
            r#"{"candidates":[{"content":{"parts":[{"text":"hm","thought":true}],"role":"model"}}]}"#,
        ),
        message(
            r#"{"candidates":[{"content":{"parts":[{"text":"Hi","thoughtSignature":"s1"},{"functionCall":{"name":"f","args":{"a":1}},"thoughtSignature":"s2"},{"functionCall":{"id":"g1","name":"g"}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"thoughtsTokenCount":9}}"#,
        ),
    ]);
    assert_eq!(error, None);
    assert_eq!(turn.reasoning.as_deref(), Some("hm"));
    assert_eq!(turn.text, "Hi");
    assert_eq!(turn.reasoning_signatures, vec!["s1", "s2"]);
    assert_eq!(
        turn.reasoning_blocks[0],
        ReasoningBlock {
            text: "hm".into(),
            signature: Some("s1".into())
        }
    );
    assert_eq!(
        turn.tool_calls,
        vec![
            ToolCall {
                id: "call_0".into(),
                name: "f".into(),
                arguments: r#"{"a":1}"#.into(),
                signature: Some("s2".into()),
            },
            ToolCall {
                id: "g1".into(),
                name: "g".into(),
                arguments: "{}".into(),
                signature: None,
            },
        ]
    );
    assert_eq!(turn.finish_reason.as_deref(), Some("STOP"));
    assert_eq!(
        turn.usage,
        Some(Usage {
            input_tokens: 5,
            output_tokens: 2
        })
    );
    // Finish and usage come once, at the end.
    let tail: Vec<_> = chunks.iter().rev().take(2).collect();
    assert!(matches!(tail[0], StreamChunk::Usage(_)));
    assert!(matches!(tail[1], StreamChunk::Finish { .. }));
}

#[test]
fn last_finish_reason_and_usage_win() {
    let (turn, chunks, error) = run(&[
        message(
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":15,"candidatesTokenCount":1}}"#,
        ),
        message(
            r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":13,"candidatesTokenCount":4}}"#,
        ),
    ]);
    assert_eq!(error, None);
    assert_eq!(turn.finish_reason.as_deref(), Some("STOP"));
    assert_eq!(turn.usage.map(|u| u.input_tokens), Some(13));
    let finishes = chunks
        .iter()
        .filter(|c| matches!(c, StreamChunk::Finish { .. }))
        .count();
    assert_eq!(finishes, 1);
}

#[test]
fn errors_truncation_blocking_and_malformed() {
    let (turn, _, error) = run(&[
        message(
            r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1}}"#,
        ),
        message(r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#),
    ]);
    assert_eq!(
        turn.error,
        Some((
            "UNAVAILABLE".into(),
            "overloaded".into(),
            Some("503".into())
        ))
    );
    assert_eq!(turn.usage.map(|u| u.input_tokens), Some(3));
    assert!(error.is_some_and(|e| e.starts_with("InStream")));

    let (turn, _, error) = run(&[message(
        r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#,
    )]);
    assert_eq!(turn.text, "x");
    assert_eq!(error.as_deref(), Some("Truncated"));

    let (turn, _, error) = run(&[message(r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#)]);
    assert_eq!(turn.error.map(|e| e.0), Some("prompt_blocked".into()));
    assert!(error.is_some_and(|e| e.starts_with("InStream")));

    let (_, _, error) = run(&[message("{not json")]);
    assert!(error.is_some_and(|e| e.starts_with("Malformed")));
    let (_, _, error) = run(&[message(
        r#"{"candidates":[{"content":{"parts":[{"text":7}]}}]}"#,
    )]);
    assert!(error.is_some_and(|e| e.starts_with("Malformed")));
}

#[test]
fn other_candidates_are_ignored() {
    let (turn, _, error) = run(&[message(
        r#"{"candidates":[{"index":1,"content":{"parts":[{"text":"no"}]}},{"index":0,"content":{"parts":[{"text":"yes"}]},"finishReason":"STOP"}]}"#,
    )]);
    assert_eq!(error, None);
    assert_eq!(turn.text, "yes");
}

#[test]
fn schemas_are_rewritten_for_gemini() {
    let schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "additionalProperties": { "type": "string", "format": "uri" },
            "when": { "type": ["string", "null"], "format": "date-time" },
            "kind": { "const": "x" },
            "item": { "$ref": "#/$defs/Item", "description": "the item" },
            "either": { "oneOf": [{ "type": "integer" }, { "type": "null" }] },
            "list": { "type": "array", "items": { "type": "object", "additionalProperties": { "type": "string" }, "properties": { "a": { "type": "number", "exclusiveMinimum": 0 } } } }
        },
        "required": ["when", "missing"],
        "$defs": { "Item": { "type": "object", "properties": { "n": { "type": "integer" } }, "additionalProperties": false } }
    });
    assert_eq!(
        gemini_schema(&schema),
        json!({
            "type": "object",
            "properties": {
                "additionalProperties": { "type": "string" },
                "when": { "type": "string", "nullable": true, "format": "date-time" },
                "kind": { "type": "string", "enum": ["x"] },
                "item": { "type": "object", "properties": { "n": { "type": "integer" } }, "description": "the item" },
                "either": { "type": "integer", "nullable": true },
                "list": { "type": "array", "items": { "type": "object", "properties": { "a": { "type": "number" } } } }
            },
            "required": ["when"]
        })
    );
    // A recursive schema is cut off instead of looping.
    let recursive = json!({
        "type": "object",
        "properties": { "next": { "$ref": "#/$defs/Node" } },
        "$defs": { "Node": { "type": "object", "properties": { "next": { "$ref": "#/$defs/Node" } } } }
    });
    assert!(gemini_schema(&recursive).to_string().len() < 4096);
}

fn spec(model: &str) -> BackendSpec {
    BackendSpec {
        wire: WireFormat::Gemini,
        provider: "gemini".into(),
        model: model.into(),
        base_url: "https://generativelanguage.googleapis.com/v1beta/".into(),
        api_key_env: None,
        temperature: Some(0.2),
        top_p: None,
        max_tokens: Some(100),
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    }
}

#[test]
fn endpoint_shapes_and_refusals() {
    assert_eq!(
        endpoint(&spec("models/gemini-2.5-flash")).ok().as_deref(),
        Some(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        )
    );
    assert!(matches!(endpoint(&spec("")), Err(ProviderError::Config(_))));
    assert!(matches!(
        endpoint(&spec("a/b")),
        Err(ProviderError::Config(_))
    ));
}

#[test]
fn thinking_config_by_model_and_options() {
    let body = request_body(&spec("gemini-2.0-flash"), None, &ChatRequest::default());
    assert_eq!(
        body["generationConfig"],
        json!({ "temperature": 0.2, "maxOutputTokens": 100 })
    );
    let body = request_body(&spec("gemini-2.5-pro"), None, &ChatRequest::default());
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({ "includeThoughts": true })
    );
    let mut effort = spec("gemini-3-pro-preview");
    effort.options.reasoning_effort = Some("High".into());
    let body = request_body(&effort, None, &ChatRequest::default());
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({ "thinkingLevel": "high", "includeThoughts": true })
    );
    effort.model = "gemini-2.5-flash".into();
    let body = request_body(&effort, None, &ChatRequest::default());
    assert_eq!(
        body["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        24576
    );
    effort.options.thinking_budget = Some(64);
    let body = request_body(&effort, None, &ChatRequest::default());
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({ "thinkingBudget": 64, "includeThoughts": true })
    );
}

#[test]
fn extra_body_merges_recursively() {
    let mut extra = Map::new();
    extra.insert(
        "generationConfig".into(),
        json!({ "seed": 7, "temperature": 1.0 }),
    );
    extra.insert("safetySettings".into(), json!([]));
    let body = request_body(
        &spec("gemini-2.0-flash"),
        Some(&extra),
        &ChatRequest::default(),
    );
    assert_eq!(
        body["generationConfig"],
        json!({ "temperature": 1.0, "maxOutputTokens": 100, "seed": 7 })
    );
    assert_eq!(body["safetySettings"], json!([]));
}

#[test]
fn builtins_only_without_function_tools() {
    let mut with_builtins = spec("gemini-2.5-flash");
    with_builtins.options.web_search = true;
    with_builtins.options.code_execution = true;
    let body = request_body(&with_builtins, None, &ChatRequest::default());
    assert_eq!(
        body["tools"],
        json!([{ "google_search": {} }, { "code_execution": {} }])
    );
    assert!(body.get("toolConfig").is_none());
    let request = ChatRequest {
        tools: vec![ToolSpec {
            name: "f".into(),
            description: "d".into(),
            parameters: json!({ "type": "object", "properties": {} }),
        }],
        tool_choice: ToolChoice::None,
        ..ChatRequest::default()
    };
    let body = request_body(&with_builtins, None, &request);
    assert_eq!(
        body["tools"],
        json!([{ "functionDeclarations": [{ "name": "f", "description": "d" }] }])
    );
    assert_eq!(body["toolConfig"]["functionCallingConfig"]["mode"], "NONE");
}

#[test]
fn contents_merge_roles_and_name_tool_results() {
    let messages = vec![
        ChatMessage::system("a"),
        ChatMessage::system("b"),
        ChatMessage::user("q"),
        ChatMessage::Assistant {
            content: Some("let me".into()),
            tool_calls: vec![
                ToolCall {
                    id: "call_0".into(),
                    name: "f".into(),
                    arguments: r#"{"x":1}"#.into(),
                    signature: Some("sig-call".into()),
                },
                ToolCall::new("fc-7", "g", "not json"),
            ],
            reasoning: vec![
                ReasoningBlock {
                    text: "t".into(),
                    signature: Some("sig-text".into()),
                },
                ReasoningBlock {
                    text: String::new(),
                    signature: Some("sig-call".into()),
                },
            ],
        },
        ChatMessage::tool("call_0", "one"),
        ChatMessage::tool("fc-7", "two"),
        ChatMessage::user("now vote"),
        ChatMessage::Assistant {
            content: None,
            tool_calls: Vec::new(),
            reasoning: Vec::new(),
        },
    ];
    let (system, contents) = contents(&messages);
    assert_eq!(system.as_deref(), Some("a\n\nb"));
    assert_eq!(
        Value::Array(contents),
        json!([
            { "role": "user", "parts": [{ "text": "q" }] },
            { "role": "model", "parts": [
                { "text": "let me", "thoughtSignature": "sig-text" },
                { "functionCall": { "name": "f", "args": { "x": 1 } }, "thoughtSignature": "sig-call" },
                { "functionCall": { "id": "fc-7", "name": "g", "args": {} } }
            ] },
            { "role": "user", "parts": [
                { "functionResponse": { "name": "f", "response": { "content": "one" } } },
                { "functionResponse": { "id": "fc-7", "name": "g", "response": { "content": "two" } } },
                { "text": "now vote" }
            ] }
        ])
    );
}
