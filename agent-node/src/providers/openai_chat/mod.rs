//! OpenAI Chat Completions streaming (`POST {base_url}/chat/completions`, `stream: true`), the
//! wire format of OpenAI and of nearly every OpenAI-compatible host (Groq, Together, vLLM,
//! Ollama, ...). Hosts differ in small ways, so parsing is lenient where that costs nothing:
//!
//! - reasoning arrives as `delta.reasoning_content` (DeepSeek, vLLM) or `delta.reasoning`
//!   (Groq, OpenRouter); either becomes [`StreamChunk::Reasoning`];
//! - a text field that is not a string (`content` as an array of parts) is reduced to its text;
//! - a tool-call fragment without `index` continues the previous call unless it brings a new id;
//!   a call that never got an id is given `call_{index}` so its result can refer to it;
//! - usage is read from the `choices: []` chunk (`stream_options.include_usage`), from any
//!   chunk that carries `usage`, or from Groq's `x_groq.usage`;
//! - an in-stream error is an `event: error` frame or a data object with a top-level `error`.
//!
//! Output order: text, reasoning, refusal and [`StreamChunk::ToolCallDelta`] as they arrive;
//! at the finish reason (or, without one, at `[DONE]`) one [`StreamChunk::ToolCall`] per call
//! in index order, then [`StreamChunk::Finish`]; usage whenever the server sends it. An
//! in-stream error yields [`StreamChunk::Error`] (so the accumulator records it) and then ends
//! the stream with [`ProviderError::InStream`]; tool calls still incomplete at that point are
//! dropped, since nothing must execute a call the model did not finish. A stream that ends
//! with no `[DONE]`, no finish reason and no error ends with [`ProviderError::Truncated`].//!
//! Files: `mod.rs` builds the request and starts the stream, `parse.rs` is the parser state
//! machine ([`ChatStreamParser`]), `wire.rs` the shapes read from the stream, `azure.rs` the
//! URLs of Azure OpenAI deployments, which speak this format unchanged.

pub mod azure;
mod parse;
#[cfg(test)]
mod tests;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};

use conclave_protocol::config::BackendSpec;
use serde_json::{Map, Value, json};

pub use parse::ChatStreamParser;

use super::client::Target;
use super::error::ProviderError;
use super::openai::is_reasoning_model;
use super::stream::{self as chunk_stream, ChunkStream, ParsedStream};
use crate::llm::{ChatMessage, ChatRequest};

/// A Chat Completions stream: SSE events parsed by [`ChatStreamParser`].
pub type ChatStream = ParsedStream<ChatStreamParser>;

/// `{base_url}/chat/completions`, whatever trailing slashes the user wrote.
pub fn endpoint(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// Set once the "options Chat Completions cannot express" notice has been logged, so a
/// session of many agents and turns says it once.
static IGNORED_OPTIONS_LOGGED: AtomicBool = AtomicBool::new(false);

/// The JSON request body. Public so tests and tools can show exactly what is sent.
///
/// The shared options Chat Completions can express become its parameters:
/// `options.reasoning_effort` → `reasoning_effort`, `options.verbosity` → `verbosity`.
/// `extra_body` is merged last, so a value there wins over both. Reasoning summaries and the
/// built-in web search and code execution tools need the Responses API; they are ignored,
/// with a log line once per process. Azure OpenAI deployments use this body unchanged.
pub fn request_body(
    spec: &BackendSpec,
    extra_body: Option<&Map<String, Value>>,
    request: &ChatRequest,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(spec.model.clone()));
    body.insert(
        "messages".into(),
        Value::Array(request.messages.iter().map(message_json).collect()),
    );
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    }
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        body.insert(
            "tool_choice".into(),
            Value::String(request.tool_choice.as_str().into()),
        );
    }
    body.insert("stream".into(), Value::Bool(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));

    let reasoning_model = is_reasoning_model(&spec.model);
    if reasoning_model {
        if spec.temperature.is_some() || spec.top_p.is_some() {
            tracing::debug!(
                model = %spec.model,
                "not sending temperature/top_p: reasoning models reject them"
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
        let key = if reasoning_model {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(key.into(), json!(max_tokens));
    }
    let options = &spec.options;
    for (key, value) in [
        ("reasoning_effort", &options.reasoning_effort),
        ("verbosity", &options.verbosity),
    ] {
        if let Some(value) = value {
            body.insert(key.into(), Value::String(value.clone()));
        }
    }
    if (options.reasoning_summary.is_some() || options.web_search || options.code_execution)
        && !IGNORED_OPTIONS_LOGGED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            provider = %spec.provider,
            "this backend speaks Chat Completions: reasoning_summary, web_search and \
             code_execution are ignored (they need the Responses API)"
        );
    }
    if let Some(extra) = extra_body {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    Value::Object(body)
}

fn message_json(message: &ChatMessage) -> Value {
    match message {
        ChatMessage::System { content } => json!({ "role": "system", "content": content }),
        ChatMessage::User { content } => json!({ "role": "user", "content": content }),
        // Chat Completions has no way to send reasoning back; hosts re-derive it.
        ChatMessage::Assistant {
            content,
            tool_calls,
            reasoning: _,
        } => {
            let mut object = Map::new();
            object.insert("role".into(), Value::String("assistant".into()));
            // Strict servers reject a null content without tool calls.
            let content = match content {
                Some(text) => Value::String(text.clone()),
                None if tool_calls.is_empty() => Value::String(String::new()),
                None => Value::Null,
            };
            object.insert("content".into(), content);
            if !tool_calls.is_empty() {
                let calls = tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": { "name": call.name, "arguments": call.arguments },
                        })
                    })
                    .collect();
                object.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(object)
        }
        ChatMessage::Tool {
            call_id, content, ..
        } => {
            json!({ "role": "tool", "tool_call_id": call_id, "content": content })
        }
    }
}

/// Sends the request and returns the parsed stream (see the module docs). Azure OpenAI
/// deployments come here too: only their URL and key header differ.
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
        "chat completions",
        ChatStreamParser::default(),
    )
    .await
}
