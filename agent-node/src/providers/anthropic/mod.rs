//! Anthropic Messages streaming (`POST {base_url}/messages`, `stream: true`), the wire format
//! of `type: claude` backends.
//!
//! # Request
//!
//! - Headers: `x-api-key` (set by [`Backend`]'s auth), `anthropic-version` (default
//!   [`DEFAULT_API_VERSION`], overridden by `options.api_version`), and
//!   `anthropic-beta: code-execution-2025-05-22` when built-in code execution is on.
//! - `max_tokens` is required by Anthropic, so [`DEFAULT_MAX_TOKENS`] is sent when the spec
//!   sets none. With extended thinking (`options.thinking_budget`) the budget is raised to
//!   Anthropic's minimum ([`MIN_THINKING_BUDGET`]) and `max_tokens` must exceed it: when it does
//!   not, the configured value is added on top of the budget (it then bounds the visible answer,
//!   which is what a user who set both most likely meant).
//! - Anthropic rejects `temperature`/`top_p` changes and forced tool use while thinking: with
//!   thinking, `temperature` and `top_p` are left out and `tool_choice: any` becomes `auto`
//!   (a coordination turn that then calls no workflow tool is retried by the workflow layer).
//! - System messages become the top-level `system` string (joined with a blank line).
//! - Messages must alternate user/assistant, so consecutive messages of one role are merged.
//!   Tool results are `tool_result` blocks of a user message and are moved before any text of
//!   that message (Anthropic requires them first). Assistant tool calls become `tool_use`
//!   blocks whose `input` is the parsed arguments object (`{}` when the stored arguments are
//!   not a JSON object: the API rejects anything else, and the call already failed validation).
//! - Signed reasoning blocks are replayed first in the assistant content as `thinking` blocks
//!   (Anthropic rejects a tool-use continuation whose thinking was dropped or altered);
//!   unsigned blocks cannot be verified by the API and are dropped. A `redacted_thinking`
//!   block travels through the neutral types as a signature prefixed with
//!   [`REDACTED_THINKING_PREFIX`] (its opaque `data`), and is replayed as `redacted_thinking`.
//! - Built-in tools: `web_search_20250305` and `code_execution_20250522` when enabled.
//! - `extra_body` is merged last, so it wins over everything above.
//!
//! # Stream
//!
//! Events are dispatched on the SSE event name as the official SDK does (`ping` and unknown
//! names are ignored); an event without a name (some proxies) is dispatched on its JSON
//! `type`. Output order: text, reasoning and [`StreamChunk::ToolCallDelta`] as they arrive;
//! one [`StreamChunk::ToolCall`] at each `tool_use` block's `content_block_stop`; one
//! [`StreamChunk::ReasoningSignature`] at each thinking block's stop; [`StreamChunk::Finish`]
//! with the raw `stop_reason` at `message_delta`; and one [`StreamChunk::Usage`] at the end,
//! with the SDK's final values (input tokens from `message_start`, or from `message_delta` when
//! it carries them; output tokens from the last `message_delta`; cache counters ignored).
//!
//! The end of the body after a `stop_reason` is a complete answer even without
//! `message_stop`: recorded streams end with an unterminated `message_stop` event, which no
//! conformant SSE parser dispatches. A body that ends with neither is [`ProviderError::Truncated`].
//!
//! Server-side tools (`server_tool_use`, `web_search_tool_result`, ...) run at Anthropic; they
//! are not calls for conclave to execute, so they produce no tool-call chunks (only trace logs).
//!
//! # Truncated tool input
//!
//! When `max_tokens` cuts a `tool_use` block short, Anthropic sends no `content_block_stop`
//! for it. At the `stop_reason` every block still open is emitted as a [`ToolCall`] whose
//! `arguments` is the raw, truncated JSON text. The official SDK instead parses such a buffer
//! leniently and returns a partial object; conclave deliberately does not: a partial object
//! would look like a valid but different call (a `new_answer` with half its content). The raw
//! text fails JSON validation in the workflow layer, whose corrective retry asks the model
//! again.
//!
//! # Errors
//!
//! An `error` event (`overloaded_error`, `api_error`, ...) yields [`StreamChunk::Usage`] when
//! usage is known (input tokens were billed), then [`StreamChunk::Error`], and ends the stream
//! with [`ProviderError::InStream`]; tool calls still open are dropped, since nothing must
//! execute a call the model did not finish. A truncated body also reports the known usage
//! before [`ProviderError::Truncated`]. HTTP errors (a 404 envelope, 529 overloaded) are
//! classified by [`ProviderError::from_response`] before anything is parsed.
//!
//! # Files
//!
//! `mod.rs` builds the request and starts the stream, `parse.rs` is the parser state machine
//! ([`AnthropicStreamParser`]), `wire.rs` the shapes read from the stream.

mod parse;
#[cfg(test)]
mod tests;
mod wire;

use conclave_protocol::config::BackendSpec;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

pub use parse::AnthropicStreamParser;

use super::client::Target;
use super::error::{ProviderError, snippet};
use super::stream::{self as chunk_stream, ChunkStream, ParsedStream};
use crate::llm::{ChatMessage, ChatRequest, ReasoningBlock, ToolChoice};

/// A Messages stream: SSE events parsed by [`AnthropicStreamParser`].
pub type AnthropicStream = ParsedStream<AnthropicStreamParser>;

/// The `anthropic-version` sent when `options.api_version` is not set: the version every
/// current Messages feature is documented against.
pub const DEFAULT_API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the spec sets none. Anthropic requires the field; 8192 fits every
/// current model's output limit and leaves room for a long answer.
pub const DEFAULT_MAX_TOKENS: u32 = 8192;

/// The smallest `thinking.budget_tokens` Anthropic accepts.
pub const MIN_THINKING_BUDGET: u32 = 1024;

/// The beta that enables the built-in code execution tool.
pub const CODE_EXECUTION_BETA: &str = "code-execution-2025-05-22";

/// Marks a reasoning signature that is really the opaque `data` of a `redacted_thinking`
/// block. `:` never occurs in a (base64) thinking signature, so the two cannot be confused.
pub const REDACTED_THINKING_PREFIX: &str = "redacted_thinking:";

/// `{base_url}/messages`, whatever trailing slashes the user wrote.
pub(crate) fn endpoint(spec: &BackendSpec) -> Result<String, ProviderError> {
    Ok(format!("{}/messages", spec.base_url.trim_end_matches('/')))
}

/// The headers Anthropic needs besides the key: `anthropic-version`, and `anthropic-beta` for
/// code execution. A version that cannot be a header value is a configuration error.
pub fn request_headers(
    spec: &BackendSpec,
) -> Result<Vec<(HeaderName, HeaderValue)>, ProviderError> {
    let version = spec
        .options
        .api_version
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_API_VERSION);
    let version = HeaderValue::from_str(version).map_err(|_| {
        ProviderError::Config(format!(
            "api_version `{version}` of provider `{}` cannot be sent as the anthropic-version \
             header; use a date such as {DEFAULT_API_VERSION}",
            spec.provider
        ))
    })?;
    let mut headers = vec![(HeaderName::from_static("anthropic-version"), version)];
    if spec.options.code_execution {
        headers.push((
            HeaderName::from_static("anthropic-beta"),
            HeaderValue::from_static(CODE_EXECUTION_BETA),
        ));
    }
    Ok(headers)
}

/// The JSON request body. Public so tests and tools can show exactly what is sent.
pub fn request_body(
    spec: &BackendSpec,
    extra_body: Option<&Map<String, Value>>,
    request: &ChatRequest,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(spec.model.clone()));

    let thinking_budget = spec
        .options
        .thinking_budget
        .map(|budget| thinking_budget(&spec.model, budget));
    body.insert(
        "max_tokens".into(),
        json!(max_tokens(spec.max_tokens, thinking_budget)),
    );

    let (system, messages) = messages_json(&request.messages);
    if let Some(system) = system {
        body.insert("system".into(), Value::String(system));
    }
    body.insert("messages".into(), Value::Array(messages));

    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(|tool| {
            json!({
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.parameters,
            })
        })
        .collect();
    if spec.options.web_search {
        tools.push(json!({ "type": "web_search_20250305", "name": "web_search" }));
    }
    if spec.options.code_execution {
        tools.push(json!({ "type": "code_execution_20250522", "name": "code_execution" }));
    }
    if !request.tools.is_empty() {
        let choice = tool_choice(request.tool_choice, thinking_budget.is_some());
        body.insert("tool_choice".into(), json!({ "type": choice }));
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }

    body.insert("stream".into(), Value::Bool(true));

    if let Some(budget) = thinking_budget {
        body.insert(
            "thinking".into(),
            json!({ "type": "enabled", "budget_tokens": budget }),
        );
        if spec.temperature.is_some() || spec.top_p.is_some() {
            tracing::warn!(
                model = %spec.model,
                "not sending temperature/top_p: Anthropic rejects them with extended thinking"
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

    if let Some(extra) = extra_body {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    Value::Object(body)
}

/// The configured budget, raised to Anthropic's minimum (a smaller one is a 400 error).
fn thinking_budget(model: &str, budget: u32) -> u32 {
    if budget < MIN_THINKING_BUDGET {
        tracing::warn!(
            model,
            budget,
            minimum = MIN_THINKING_BUDGET,
            "thinking budget below Anthropic's minimum; using the minimum"
        );
        MIN_THINKING_BUDGET
    } else {
        budget
    }
}

/// `max_tokens` to send: the configured value or [`DEFAULT_MAX_TOKENS`]; with thinking it
/// must exceed the budget, so a value that does not is added on top of the budget.
fn max_tokens(configured: Option<u32>, thinking_budget: Option<u32>) -> u32 {
    let max_tokens = configured.unwrap_or(DEFAULT_MAX_TOKENS);
    match thinking_budget {
        Some(budget) if max_tokens <= budget => {
            let raised = budget.saturating_add(max_tokens);
            tracing::warn!(
                max_tokens,
                budget,
                raised,
                "max_tokens does not exceed the thinking budget; adding the budget to it"
            );
            raised
        }
        _ => max_tokens,
    }
}

/// Anthropic's `tool_choice.type`. Forced tool use (`any`) is rejected with thinking, so it
/// falls back to `auto` there.
fn tool_choice(choice: ToolChoice, thinking: bool) -> &'static str {
    match choice {
        ToolChoice::Auto => "auto",
        ToolChoice::Required if thinking => {
            tracing::debug!("tool_choice any is not allowed with thinking; sending auto");
            "auto"
        }
        ToolChoice::Required => "any",
        ToolChoice::None => "none",
    }
}

/// The conversation in Anthropic's shape: the joined system text (if any), and the
/// user/assistant messages with content blocks, merged so that roles alternate.
pub fn messages_json(messages: &[ChatMessage]) -> (Option<String>, Vec<Value>) {
    let mut system: Vec<&str> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let (role, blocks) = match message {
            ChatMessage::System { content } => {
                if !content.trim().is_empty() {
                    system.push(content);
                }
                continue;
            }
            ChatMessage::User { content } => ("user", text_block(content).into_iter().collect()),
            ChatMessage::Assistant {
                content,
                tool_calls,
                reasoning,
            } => {
                let mut blocks: Vec<Value> = reasoning.iter().filter_map(thinking_block).collect();
                blocks.extend(content.as_deref().and_then(text_block));
                blocks.extend(tool_calls.iter().map(|call| {
                    json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": tool_input(&call.name, &call.arguments),
                    })
                }));
                ("assistant", blocks)
            }
            ChatMessage::Tool {
                call_id,
                content,
                is_error,
            } => {
                let mut block = Map::new();
                block.insert("type".into(), Value::String("tool_result".into()));
                block.insert("tool_use_id".into(), Value::String(call_id.clone()));
                // `content` is optional; an empty text is better left out than sent empty.
                if !content.is_empty() {
                    block.insert("content".into(), Value::String(content.clone()));
                }
                // Sent only when true, as the SDKs do: a failed call the model should see as one.
                if *is_error {
                    block.insert("is_error".into(), Value::Bool(true));
                }
                ("user", vec![Value::Object(block)])
            }
        };
        // Anthropic rejects messages without content; skipping one merges its neighbours.
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            if role == "user" {
                // Tool results must open the user message; the sort is stable.
                blocks.sort_by_key(|block| block["type"] != "tool_result");
            }
            json!({ "role": role, "content": blocks })
        })
        .collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    (system, messages)
}

/// A text block, or nothing for empty text (Anthropic rejects empty text blocks).
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "type": "text", "text": text }))
}

/// A replayable thinking block, or nothing for a block the API could not verify.
fn thinking_block(block: &ReasoningBlock) -> Option<Value> {
    let signature = block.signature.as_deref().filter(|s| !s.is_empty());
    let Some(signature) = signature else {
        tracing::debug!(
            chars = block.text.len(),
            "dropping an unsigned reasoning block from the replayed history"
        );
        return None;
    };
    Some(match signature.strip_prefix(REDACTED_THINKING_PREFIX) {
        Some(data) => json!({ "type": "redacted_thinking", "data": data }),
        None => json!({ "type": "thinking", "thinking": block.text, "signature": signature }),
    })
}

/// The `input` object of a replayed tool call.
fn tool_input(name: &str, arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => {
            tracing::debug!(
                tool = name,
                arguments = snippet(arguments),
                "tool call arguments are not a JSON object; replaying them as {{}}"
            );
            Value::Object(Map::new())
        }
    }
}

/// Sends the request and returns the parsed stream (see the module docs).
pub(crate) async fn stream(
    target: &Target,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let spec = &target.spec;
    let headers = request_headers(spec)?;
    let body = request_body(spec, target.extra_body.as_ref(), request);
    tracing::debug!(
        provider = %spec.provider,
        thinking = spec.options.thinking_budget.is_some(),
        "anthropic request built"
    );
    chunk_stream::open(
        target,
        request,
        &body,
        headers,
        "anthropic messages",
        AnthropicStreamParser::default(),
    )
    .await
}
