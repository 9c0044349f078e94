//! OpenAI Responses API streaming (`POST {base_url}/responses`, `stream: true`), the API OpenAI
//! recommends for its reasoning models and the one MassGen's `openai` backend speaks.
//!
//! # Request
//!
//! conclave keeps no server-side state: every request sends the whole conversation with
//! `store: false`. Reasoning models (o1, o3, o4, gpt-5, or any model given reasoning settings)
//! are asked for `include: ["reasoning.encrypted_content"]`; the encrypted reasoning comes back
//! as a [`StreamChunk::ReasoningSignature`], is kept on the assistant message's
//! [`ReasoningBlock`](crate::llm::ReasoningBlock), and is replayed as a `reasoning` input item
//! (without its `rs_…` id, which would make the API look up an item that was never stored)
//! before the turn's text and function calls. That keeps multi-turn tool use valid and lets the
//! model continue its own reasoning, as OpenAI's stateless guidance asks.
//!
//! - Leading system messages become `instructions`; a system message later in the
//!   conversation stays in place as a `system` message.
//! - Tools are flat function tools (`{type, name, description, parameters, strict: false}`);
//!   `options.web_search` / `options.code_execution` add the built-in `web_search` and
//!   `code_interpreter` tools.
//! - Reasoning models reject `temperature` and `top_p`, so those are left out (logged once per
//!   process, not on every call).
//! - `reasoning.summary` defaults to `auto` for reasoning models, so the summaries stream as
//!   reasoning text; `options.reasoning_summary: none` turns them off (organisations that are
//!   not verified by OpenAI are refused summaries).
//! - `extra_body` is merged last and wins; the Chat Completions spellings the config loader
//!   may put there (`reasoning_effort`, `verbosity`, `max_tokens`, `max_completion_tokens`) are
//!   moved to their Responses places (`reasoning.effort`, `text.verbosity`,
//!   `max_output_tokens`), and `reasoning` / `text` objects are merged key by key.
//!
//! # Stream
//!
//! Events are told apart by the `type` field of their data (the `event:` line is only a
//! fallback), so proxies that drop `event:` lines still work; `sequence_number` and
//! `obfuscation` padding are ignored, as is every event conclave does not need.
//!
//! - `response.output_text.delta` → [`StreamChunk::Content`]; `response.refusal.delta` →
//!   [`StreamChunk::Refusal`]; `response.reasoning_summary_text.delta` (and
//!   `response.reasoning_text.delta`, raw reasoning from open-weight servers) →
//!   [`StreamChunk::Reasoning`].
//! - Reasoning summary parts are concatenated with no separator, exactly as the official SDK
//!   reports them, so one definition of "the reasoning" holds for every backend. The boundary
//!   that matters for replay is the reasoning *item*: its `encrypted_content` closes one
//!   reasoning block, whatever number of summary parts it had.
//! - A `function_call` item starts a [`StreamChunk::ToolCallDelta`] (call id and name) when it
//!   is added, its argument deltas follow, and `response.output_item.done` gives the complete
//!   [`StreamChunk::ToolCall`] with `id` = the item's `call_id` (what a
//!   `function_call_output` must name) and the done item's arguments.
//! - A message or reasoning item whose text never came as deltas (some proxies send only the
//!   finished item) is emitted from its `output_item.done`.
//! - `response.completed`, `response.incomplete` and `response.failed` end the stream with
//!   [`StreamChunk::Usage`] and [`StreamChunk::Finish`] carrying the response status
//!   (`completed` / `incomplete` / `failed`). An incomplete response is a normal end (like a
//!   Chat Completions `length`); its reason is logged. A failed response also yields
//!   [`StreamChunk::Error`] and ends with [`ProviderError::InStream`], so the call is retried
//!   like any provider failure. Function calls still unfinished at an incomplete or failed end
//!   are dropped: nothing must execute a call the model did not finish.
//! - An `error` event yields [`StreamChunk::Error`] and ends the stream with
//!   [`ProviderError::InStream`]; data that is not JSON of the expected shape ends it with
//!   [`ProviderError::Malformed`]; a body that ends before a terminal event ends it with
//!   [`ProviderError::Truncated`].

//!
//! Files: `mod.rs` builds the request and starts the stream, `parse.rs` is the parser state
//! machine ([`ResponsesStreamParser`]), `wire.rs` the shapes read from the stream.

mod parse;
#[cfg(test)]
mod tests;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};

use conclave_protocol::config::BackendSpec;
use serde_json::{Map, Value, json};

pub use parse::ResponsesStreamParser;

use super::client::Target;
use super::error::ProviderError;
use super::openai::is_reasoning_model;
use super::stream::{self as chunk_stream, ChunkStream, ParsedStream};
use crate::llm::{ChatMessage, ChatRequest};

/// A Responses stream: SSE events parsed by [`ResponsesStreamParser`].
pub type ResponsesStream = ParsedStream<ResponsesStreamParser>;

/// What `include` asks for so that reasoning can be replayed without server-side state.
const ENCRYPTED_REASONING: &str = "reasoning.encrypted_content";

/// `{base_url}/responses`, whatever trailing slashes the user wrote.
pub(crate) fn endpoint(spec: &BackendSpec) -> Result<String, ProviderError> {
    Ok(format!("{}/responses", spec.base_url.trim_end_matches('/')))
}

/// Set once the "temperature/top_p dropped" notice has been logged, so a session of many
/// agents and turns says it once.
static SAMPLING_DROP_LOGGED: AtomicBool = AtomicBool::new(false);

/// The JSON request body (see the module docs). Public so tests and tools can show exactly
/// what is sent.
pub fn request_body(
    spec: &BackendSpec,
    extra_body: Option<&Map<String, Value>>,
    request: &ChatRequest,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(spec.model.clone()));
    let (instructions, input) = input_items(&request.messages);
    if let Some(instructions) = instructions {
        body.insert("instructions".into(), Value::String(instructions));
    }
    body.insert("input".into(), Value::Array(input));

    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "strict": false,
            })
        })
        .collect();
    if spec.options.web_search {
        tools.push(json!({ "type": "web_search" }));
    }
    if spec.options.code_execution {
        tools.push(json!({ "type": "code_interpreter", "container": { "type": "auto" } }));
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if !request.tools.is_empty() {
        body.insert(
            "tool_choice".into(),
            Value::String(request.tool_choice.as_str().into()),
        );
    }
    body.insert("stream".into(), Value::Bool(true));
    body.insert("store".into(), Value::Bool(false));

    let reasoning_model = is_reasoning_model(&spec.model);
    if reasoning_model {
        if (spec.temperature.is_some() || spec.top_p.is_some())
            && !SAMPLING_DROP_LOGGED.swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                model = %spec.model,
                "not sending temperature/top_p to a reasoning model: it rejects them"
            );
        }
    } else {
        if let Some(temperature) = spec.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        if let Some(top_p) = spec.top_p {
            body.insert("top_p".into(), json!(top_p));
        }
    }
    if let Some(max_tokens) = spec.max_tokens {
        body.insert("max_output_tokens".into(), json!(max_tokens));
    }

    let mut reasoning = Map::new();
    if let Some(effort) = &spec.options.reasoning_effort {
        reasoning.insert("effort".into(), Value::String(effort.clone()));
    }
    match spec.options.reasoning_summary.as_deref().map(str::trim) {
        Some(off) if off.is_empty() || off.eq_ignore_ascii_case("none") => {}
        Some(summary) => {
            reasoning.insert("summary".into(), Value::String(summary.to_owned()));
        }
        None if reasoning_model => {
            reasoning.insert("summary".into(), Value::String("auto".into()));
        }
        None => {}
    }
    if reasoning_model || !reasoning.is_empty() {
        body.insert("reasoning".into(), Value::Object(reasoning));
    }
    if let Some(verbosity) = &spec.options.verbosity {
        body.insert("text".into(), json!({ "verbosity": verbosity }));
    }

    if let Some(extra) = extra_body {
        merge_extra(&mut body, extra);
    }
    // Whoever turned reasoning on (the model name, the options or extra_body), its encrypted
    // content is what keeps a stateless multi-turn conversation valid.
    if body.contains_key("reasoning") {
        request_encrypted_reasoning(&mut body);
    }
    Value::Object(body)
}

/// The conversation as Responses input items, with the leading system messages split off as
/// `instructions`.
fn input_items(messages: &[ChatMessage]) -> (Option<String>, Vec<Value>) {
    let leading_system = messages
        .iter()
        .take_while(|m| matches!(m, ChatMessage::System { .. }))
        .count();
    let instructions: Vec<&str> = messages[..leading_system]
        .iter()
        .filter_map(|m| match m {
            ChatMessage::System { content } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    let instructions = (!instructions.is_empty()).then(|| instructions.join("\n\n"));

    let mut items = Vec::new();
    for message in &messages[leading_system..] {
        match message {
            ChatMessage::System { content } => {
                items.push(json!({ "role": "system", "content": content }));
            }
            ChatMessage::User { content } => {
                items.push(json!({ "role": "user", "content": content }));
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
                reasoning,
            } => {
                let text = content.as_deref().filter(|t| !t.is_empty());
                // A reasoning item must be followed by the output it led to; an assistant turn
                // with neither text nor calls has nothing to replay.
                if text.is_none() && tool_calls.is_empty() {
                    continue;
                }
                for block in reasoning {
                    if let Some(encrypted) = block.signature.as_deref().filter(|s| !s.is_empty()) {
                        items.push(json!({
                            "type": "reasoning",
                            "encrypted_content": encrypted,
                            "summary": [],
                        }));
                    }
                }
                if let Some(text) = text {
                    items.push(json!({ "role": "assistant", "content": text }));
                }
                for call in tool_calls {
                    // The API wants a JSON text; a call the model left empty had no arguments.
                    let arguments = if call.arguments.trim().is_empty() {
                        "{}"
                    } else {
                        call.arguments.as_str()
                    };
                    items.push(json!({
                        "type": "function_call",
                        "call_id": call.id,
                        "name": call.name,
                        "arguments": arguments,
                    }));
                }
            }
            ChatMessage::Tool {
                call_id, content, ..
            } => {
                items.push(json!({
                    "type": "function_call_output",
                    "call_id": call_id,
                    "output": content,
                }));
            }
        }
    }
    (instructions, items)
}

/// Merges `extra_body` into the body: its keys win, Chat Completions spellings move to their
/// Responses places, and `reasoning` / `text` objects are merged key by key so that
/// `{"reasoning": {"summary": "detailed"}}` does not erase the configured effort.
fn merge_extra(body: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (key, value) in extra {
        match key.as_str() {
            "reasoning_effort" => set_nested(body, "reasoning", "effort", value.clone()),
            "verbosity" => set_nested(body, "text", "verbosity", value.clone()),
            "max_tokens" | "max_completion_tokens" => {
                body.insert("max_output_tokens".into(), value.clone());
            }
            "reasoning" | "text" => match (body.get_mut(key), value) {
                (Some(Value::Object(current)), Value::Object(update)) => {
                    for (inner, inner_value) in update {
                        current.insert(inner.clone(), inner_value.clone());
                    }
                }
                _ => {
                    body.insert(key.clone(), value.clone());
                }
            },
            _ => {
                body.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Sets `body[outer][inner]`, creating (or replacing a non-object) `body[outer]`.
fn set_nested(body: &mut Map<String, Value>, outer: &str, inner: &str, value: Value) {
    let slot = body
        .entry(outer.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    if let Value::Object(object) = slot {
        object.insert(inner.to_owned(), value);
    }
}

/// Adds [`ENCRYPTED_REASONING`] to `include`, keeping whatever `extra_body` asked for.
fn request_encrypted_reasoning(body: &mut Map<String, Value>) {
    let include = body
        .entry("include".to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !include.is_array() {
        *include = Value::Array(Vec::new());
    }
    if let Value::Array(list) = include
        && !list.iter().any(|v| v.as_str() == Some(ENCRYPTED_REASONING))
    {
        list.push(Value::String(ENCRYPTED_REASONING.into()));
    }
}

/// Sends the request and returns the parsed stream (see the module docs).
pub(crate) async fn stream(
    target: &Target,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let body = request_body(&target.spec, target.extra_body.as_ref(), request);
    chunk_stream::open(
        target,
        request,
        &body,
        Vec::new(),
        "responses",
        ResponsesStreamParser::default(),
    )
    .await
}
