//! Google Gemini streaming (`POST {base_url}/models/{model}:streamGenerateContent?alt=sse`,
//! key in `x-goog-api-key`).
//!
//! Request, and why it looks the way it does:
//!
//! - system messages become one `systemInstruction`; the rest become `contents` with roles
//!   `user` and `model`. Adjacent turns of the same role are merged, so tool results and a
//!   following corrective user message travel as one `user` turn, which Gemini requires
//!   (function responses must directly follow the turn that called the functions).
//! - an assistant tool call becomes a `functionCall {name, args}` part carrying the call's
//!   [`ToolCall::signature`] as `thoughtSignature`: Gemini 3 rejects a replayed function
//!   call whose signature was lost. A reasoning signature that belongs to no tool call rides
//!   on the assistant's text part, as Gemini returned it. Thought text is not sent back.
//! - a tool result becomes a `functionResponse {name, response: {content}}` part. Gemini
//!   pairs responses with calls by name, so the name is found from the preceding assistant
//!   call with the same id. Ids that conclave generated (`call_{n}`, for calls Gemini sent
//!   without one) are not sent back; ids Gemini chose are.
//! - tool parameter schemas are rewritten into the OpenAPI subset Gemini accepts (see
//!   [`gemini_schema`]): unsupported keywords such as `additionalProperties` are dropped,
//!   local `$ref`s are inlined, `["string","null"]` becomes `nullable`.
//! - Gemini refuses a request that mixes built-in tools (`google_search`, `code_execution`)
//!   with function declarations. Coordination turns need the workflow functions, so when
//!   both are configured the built-ins are dropped and a warning is logged once per backend.
//! - `generationConfig` carries temperature, topP, maxOutputTokens and a `thinkingConfig`:
//!   an explicit thinking budget wins; a reasoning effort becomes `thinkingLevel` on Gemini 3
//!   and a budget on older models; models that think by default are asked to include their
//!   thoughts, so the display can show them.
//! - `extra_body` is merged into the body recursively (objects key by key), so
//!   `{"generationConfig": {"seed": 1}}` adds a seed without dropping the temperature.
//!
//! Stream: each SSE `data:` record is a complete `GenerateContentResponse`. Parts of the first
//! candidate become chunks as they arrive: `text` is [`StreamChunk::Content`] (or
//! [`StreamChunk::Reasoning`] with `thought: true`); a `functionCall` is complete on arrival
//! and becomes a [`StreamChunk::ToolCallDelta`] (for display) and a [`StreamChunk::ToolCall`]
//! with id `functionCall.id` or a generated `call_{n}`. Every `thoughtSignature` (on a text
//! part or a function call part) becomes a [`StreamChunk::ReasoningSignature`] in stream
//! order; one on a function call part is also kept as that call's signature, so it survives
//! even if the caller replays only the tool calls. `finishReason` may appear more than once
//! (the last wins) and `usageMetadata` is cumulative on every chunk (the last wins), so both
//! are emitted once, when the body ends: [`StreamChunk::Finish`], then
//! [`StreamChunk::Usage`] (output tokens exclude thought tokens, as the SDK reports).
//!
//! Failures: the status is checked before anything is parsed (a 404 arrives with an SSE
//! content type and a bare JSON body). An `error` object in the stream becomes
//! [`StreamChunk::Error`] and ends the stream with [`ProviderError::InStream`]; a prompt
//! blocked by safety filters (`promptFeedback.blockReason`) is reported the same way. A body
//! that ends without any `finishReason` ends with [`ProviderError::Truncated`]. Usage seen so
//! far is emitted before either error, because those tokens were billed.
//!
//! Files: `mod.rs` builds the request and starts the stream, `schema.rs` rewrites tool
//! schemas into Gemini's subset, `parse.rs` is the parser state machine
//! ([`GeminiStreamParser`]), `wire.rs` the shapes read from the stream.

mod parse;
mod schema;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use conclave_protocol::ToolCall;
use conclave_protocol::config::BackendSpec;
use serde_json::{Map, Value, json};

pub use parse::GeminiStreamParser;
pub use schema::gemini_schema;

use super::client::Target;
use super::error::ProviderError;
use super::stream::{self as chunk_stream, ChunkStream, ParsedStream};
use crate::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};

/// A Gemini stream: SSE events parsed by [`GeminiStreamParser`].
pub type GeminiStream = ParsedStream<GeminiStreamParser>;

/// `{base_url}/models/{model}:streamGenerateContent?alt=sse`. A model written the way the
/// API names it (`models/gemini-2.5-pro`) is accepted too. A model name that would change
/// the URL's meaning (a `/`, `?`, `#` or whitespace) is refused here, before any call.
pub(crate) fn endpoint(spec: &BackendSpec) -> Result<String, ProviderError> {
    let model = spec.model.trim();
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() {
        return Err(ProviderError::Config(format!(
            "provider `{}` has no model; set `model:` (e.g. gemini-2.5-flash)",
            spec.provider
        )));
    }
    if model
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace())
    {
        return Err(ProviderError::Config(format!(
            "Gemini model name `{model}` contains characters that cannot appear in the \
             request URL; use the plain model id (e.g. gemini-2.5-flash)"
        )));
    }
    Ok(format!(
        "{}/models/{model}:streamGenerateContent?alt=sse",
        spec.base_url.trim_end_matches('/'),
    ))
}

/// Whether the model thinks unless told otherwise (Gemini 2.5 and 3 families), so that
/// asking it to include its thoughts is both valid and useful.
pub fn thinks_by_default(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    name.starts_with("gemini-2.5") || name.starts_with("gemini-3") || name.contains("thinking")
}

/// Gemini 3 takes a `thinkingLevel`; older thinking models only a `thinkingBudget`.
fn takes_thinking_level(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    name.starts_with("gemini-3")
}

/// The budget that stands for a reasoning effort on models without `thinkingLevel`: the
/// values Google's OpenAI-compatible endpoint uses for `reasoning_effort`.
fn budget_for_effort(effort: &str) -> Option<u32> {
    match effort {
        "minimal" => Some(512),
        "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// The built-in tools the spec asks for, by the name Gemini gives them.
pub fn builtin_tools(spec: &BackendSpec) -> Vec<&'static str> {
    let mut tools = Vec::new();
    if spec.options.web_search {
        tools.push("google_search");
    }
    if spec.options.code_execution {
        tools.push("code_execution");
    }
    tools
}

/// The JSON request body. Public so tests and tools can show exactly what is sent.
pub fn request_body(
    spec: &BackendSpec,
    extra_body: Option<&Map<String, Value>>,
    request: &ChatRequest,
) -> Value {
    let mut body = Map::new();
    let (system, contents) = contents(&request.messages);
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = system {
        body.insert(
            "systemInstruction".into(),
            json!({ "parts": [{ "text": system }] }),
        );
    }

    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request.tools.iter().map(function_declaration).collect();
        body.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
        let mode = match request.tool_choice {
            ToolChoice::Auto => "AUTO",
            ToolChoice::Required => "ANY",
            ToolChoice::None => "NONE",
        };
        body.insert(
            "toolConfig".into(),
            json!({ "functionCallingConfig": { "mode": mode } }),
        );
    } else {
        let builtins: Vec<Value> = builtin_tools(spec)
            .into_iter()
            .map(|name| json!({ name: {} }))
            .collect();
        if !builtins.is_empty() {
            body.insert("tools".into(), Value::Array(builtins));
        }
    }

    let generation = generation_config(spec);
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    let mut body = Value::Object(body);
    if let Some(extra) = extra_body {
        merge(&mut body, &Value::Object(extra.clone()));
    }
    body
}

fn generation_config(spec: &BackendSpec) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(temperature) = spec.temperature {
        config.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = spec.top_p {
        config.insert("topP".into(), json!(top_p));
    }
    if let Some(max_tokens) = spec.max_tokens {
        config.insert("maxOutputTokens".into(), json!(max_tokens));
    }
    let effort = spec
        .options
        .reasoning_effort
        .as_deref()
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty());
    let thinking = match (spec.options.thinking_budget, effort) {
        (Some(budget), effort) => {
            if effort.is_some() {
                tracing::debug!(
                    model = %spec.model,
                    "both thinking_budget and reasoning_effort set; Gemini takes one, using the budget"
                );
            }
            Some(json!({ "thinkingBudget": budget, "includeThoughts": true }))
        }
        (None, Some(effort)) if takes_thinking_level(&spec.model) => {
            Some(json!({ "thinkingLevel": effort, "includeThoughts": true }))
        }
        (None, Some(effort)) => match budget_for_effort(&effort) {
            Some(budget) => Some(json!({ "thinkingBudget": budget, "includeThoughts": true })),
            None => {
                tracing::warn!(
                    model = %spec.model,
                    %effort,
                    "unknown reasoning_effort for Gemini (expected minimal, low, medium or high); ignored"
                );
                thinks_by_default(&spec.model).then(|| json!({ "includeThoughts": true }))
            }
        },
        (None, None) => thinks_by_default(&spec.model).then(|| json!({ "includeThoughts": true })),
    };
    if let Some(thinking) = thinking {
        config.insert("thinkingConfig".into(), thinking);
    }
    config
}

/// Merges `extra` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, extra) => *base = extra.clone(),
    }
}

fn function_declaration(tool: &ToolSpec) -> Value {
    let mut declaration = Map::new();
    declaration.insert("name".into(), Value::String(tool.name.clone()));
    declaration.insert(
        "description".into(),
        Value::String(tool.description.clone()),
    );
    let parameters = gemini_schema(&tool.parameters);
    // Gemini rejects an OBJECT schema without properties ("should be non-empty for OBJECT
    // type"); a function without arguments simply has no `parameters`.
    let no_arguments = parameters.get("type").and_then(Value::as_str) == Some("object")
        && parameters
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty);
    if !no_arguments {
        declaration.insert("parameters".into(), parameters);
    }
    Value::Object(declaration)
}

/// Ids conclave made up for calls Gemini sent without one; see [`GeminiStreamParser`].
fn is_generated_id(id: &str) -> bool {
    id.strip_prefix("call_")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The system instruction (all system messages, in order) and the `contents` turns.
fn contents(messages: &[ChatMessage]) -> (Option<String>, Vec<Value>) {
    let mut system: Vec<&str> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (position, message) in messages.iter().enumerate() {
        match message {
            ChatMessage::System { content } => system.push(content),
            ChatMessage::User { content } => {
                push_parts(&mut turns, "user", vec![json!({ "text": content })]);
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
                reasoning,
            } => {
                let mut parts = Vec::new();
                // The signature Gemini put on a text part: one that belongs to no tool call.
                let call_signatures: HashSet<&str> = tool_calls
                    .iter()
                    .filter_map(|call| call.signature.as_deref())
                    .collect();
                let text_signature = reasoning
                    .iter()
                    .filter_map(|block| block.signature.as_deref())
                    .find(|signature| !call_signatures.contains(signature));
                if let Some(text) = content.as_deref().filter(|t| !t.is_empty()) {
                    let mut part = Map::new();
                    part.insert("text".into(), Value::String(text.to_owned()));
                    if let Some(signature) = text_signature {
                        part.insert("thoughtSignature".into(), Value::String(signature.into()));
                    }
                    parts.push(Value::Object(part));
                }
                for call in tool_calls {
                    parts.push(function_call_part(call));
                }
                if !parts.is_empty() {
                    push_parts(&mut turns, "model", parts);
                }
            }
            ChatMessage::Tool {
                call_id, content, ..
            } => {
                let call = messages[..position]
                    .iter()
                    .rev()
                    .filter_map(|m| match m {
                        ChatMessage::Assistant { tool_calls, .. } => Some(tool_calls),
                        _ => None,
                    })
                    .flatten()
                    .find(|call| call.id == *call_id);
                let name = match call {
                    Some(call) => call.name.clone(),
                    None => {
                        tracing::warn!(
                            call_id,
                            "tool result without a preceding call; naming it by its id"
                        );
                        call_id.clone()
                    }
                };
                let mut response = Map::new();
                if !is_generated_id(call_id) {
                    response.insert("id".into(), Value::String(call_id.clone()));
                }
                response.insert("name".into(), Value::String(name));
                response.insert("response".into(), json!({ "content": content }));
                push_parts(
                    &mut turns,
                    "user",
                    vec![json!({ "functionResponse": response })],
                );
            }
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({ "role": role, "parts": parts }))
        .collect();
    (system, contents)
}

fn function_call_part(call: &ToolCall) -> Value {
    let args = match serde_json::from_str::<Value>(&call.arguments) {
        Ok(Value::Object(args)) => Value::Object(args),
        Ok(Value::Null) | Err(_) if call.arguments.trim().is_empty() => json!({}),
        _ => {
            tracing::warn!(
                tool = %call.name,
                "tool call arguments are not a JSON object; replaying them as {{}}"
            );
            json!({})
        }
    };
    let mut function_call = Map::new();
    if !is_generated_id(&call.id) {
        function_call.insert("id".into(), Value::String(call.id.clone()));
    }
    function_call.insert("name".into(), Value::String(call.name.clone()));
    function_call.insert("args".into(), args);
    let mut part = Map::new();
    part.insert("functionCall".into(), Value::Object(function_call));
    if let Some(signature) = &call.signature {
        part.insert("thoughtSignature".into(), Value::String(signature.clone()));
    }
    Value::Object(part)
}

fn push_parts(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, parts: Vec<Value>) {
    match turns.last_mut() {
        Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
        _ => turns.push((role, parts)),
    }
}

/// Logs the built-ins dropped in favour of function tools, once per backend (endpoint) per
/// process: the situation is a configuration fact, not news on every call.
fn warn_dropped_builtins_once(target: &Target, dropped: &[&str]) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let warned = WARNED.get_or_init(|| Mutex::new(HashSet::new()));
    let first = match warned.lock() {
        Ok(mut set) => set.insert(target.endpoint.clone()),
        Err(poisoned) => poisoned.into_inner().insert(target.endpoint.clone()),
    };
    if first {
        tracing::warn!(
            provider = %target.spec.provider,
            model = %target.spec.model,
            dropped = ?dropped,
            "Gemini cannot combine built-in tools with function tools; the function tools \
             (workflow and agent tools) are kept and these built-ins are not offered"
        );
    }
}

/// Sends the request and returns the parsed stream (see the module docs).
pub(crate) async fn stream(
    target: &Target,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let spec = &target.spec;
    if !request.tools.is_empty() {
        let dropped = builtin_tools(spec);
        if !dropped.is_empty() {
            warn_dropped_builtins_once(target, &dropped);
        }
    }
    let body = request_body(spec, target.extra_body.as_ref(), request);
    chunk_stream::open(
        target,
        request,
        &body,
        Vec::new(),
        "Gemini",
        GeminiStreamParser::default(),
    )
    .await
}
