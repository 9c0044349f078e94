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

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use conclave_protocol::config::BackendSpec;
use conclave_protocol::{StreamChunk, ToolCall, Usage};
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Backend, ChunkStream, ProviderError};
use crate::llm::{ChatMessage, ChatRequest, ReasoningBlock, ToolChoice};
use crate::sse::{self, SseEvent, SseStream, snippet};

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
            ChatMessage::Tool { call_id, content } => {
                let mut block = Map::new();
                block.insert("type".into(), Value::String("tool_result".into()));
                block.insert("tool_use_id".into(), Value::String(call_id.clone()));
                // `content` is optional; an empty text is better left out than sent empty.
                if !content.is_empty() {
                    block.insert("content".into(), Value::String(content.clone()));
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
    backend: &Backend,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let spec = &backend.spec;
    let headers = request_headers(spec)?;
    let body = request_body(spec, backend.extra_body.as_ref(), request);
    let body = serde_json::to_vec(&body)
        .map_err(|e| ProviderError::Config(format!("could not encode the request: {e}")))?;
    tracing::debug!(
        provider = %spec.provider,
        model = %spec.model,
        url = %backend.endpoint,
        messages = request.messages.len(),
        tools = request.tools.len(),
        thinking = spec.options.thinking_budget.is_some(),
        "starting anthropic messages stream"
    );
    let mut builder = backend.post_json(&backend.endpoint, body);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let response = builder
        .send()
        .await
        .map_err(|e| ProviderError::from_transport(&spec.provider, &backend.endpoint, e))?;
    let events = sse::open(&spec.provider, &backend.endpoint, response).await?;
    Ok(Box::pin(AnthropicStream::new(events)))
}

/// Turns SSE events into chunks; the parsing state lives in [`AnthropicStreamParser`].
pub struct AnthropicStream {
    events: SseStream,
    parser: AnthropicStreamParser,
    pending: VecDeque<Result<StreamChunk, ProviderError>>,
    done: bool,
}

impl AnthropicStream {
    /// Parses `events` (already checked for HTTP success) as a Messages stream.
    pub fn new(events: SseStream) -> Self {
        Self {
            events,
            parser: AnthropicStreamParser::default(),
            pending: VecDeque::new(),
            done: false,
        }
    }
}

impl fmt::Debug for AnthropicStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicStream")
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for AnthropicStream {
    type Item = Result<StreamChunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.events.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(event))) => {
                    if this.parser.on_event(&event, &mut this.pending) == Flow::Done {
                        this.done = true;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.pending.push_back(Err(error));
                    this.done = true;
                }
                Poll::Ready(None) => {
                    this.parser.on_end(&mut this.pending);
                    this.done = true;
                }
            }
        }
    }
}

/// Whether the stream goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next event.
    Continue,
    /// The stream is over (`message_stop`, an error, or malformed data); stop reading.
    Done,
}

type Out = VecDeque<Result<StreamChunk, ProviderError>>;

/// The pure state machine behind [`AnthropicStream`]: events in, chunks out. No I/O, so it
/// can be driven directly in tests.
#[derive(Debug, Default)]
pub struct AnthropicStreamParser {
    /// Content blocks started and not yet stopped, by their `index`.
    open: BTreeMap<u32, OpenBlock>,
    /// How many `tool_use` blocks this message has started: the next call's delta index.
    tool_calls_started: u32,
    /// The running usage (`message_start`, updated by `message_delta`).
    usage: Option<Usage>,
    /// The `stop_reason`, once `message_delta` brought it.
    stop_reason: Option<String>,
    /// Whether `message_stop` arrived.
    stopped: bool,
}

/// What the parser remembers about a content block between its start and stop.
#[derive(Debug)]
enum OpenBlock {
    Text,
    /// A client tool call: conclave executes it.
    ToolUse {
        call_index: u32,
        id: String,
        name: String,
        /// The concatenated `partial_json`, exactly as streamed.
        arguments: String,
        /// The `input` of `content_block_start`, used when no `partial_json` follows.
        initial_input: Option<Value>,
    },
    Thinking {
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
    /// A tool Anthropic runs itself (web search, code execution); its input is only logged.
    ServerToolUse {
        name: String,
        input: String,
    },
    /// Tool results and block types this build does not know.
    Other,
}

impl AnthropicStreamParser {
    /// Handles one SSE event.
    pub fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow {
        match event.event.as_str() {
            "ping" => Flow::Continue,
            "error" => {
                self.on_error(&event.data, out);
                Flow::Done
            }
            "message_start"
            | "message_delta"
            | "message_stop"
            | "content_block_start"
            | "content_block_delta"
            | "content_block_stop"
            | "message" => match serde_json::from_str::<WireEvent>(&event.data) {
                Ok(wire) => self.on_wire_event(wire, &event.data, out),
                Err(e) => {
                    out.push_back(Err(ProviderError::Malformed(format!(
                        "anthropic `{}` event is not valid: {e}; data: {}",
                        event.event,
                        snippet(event.data.trim())
                    ))));
                    Flow::Done
                }
            },
            other => {
                tracing::trace!(event = other, "ignoring unknown anthropic event");
                Flow::Continue
            }
        }
    }

    /// Handles the end of the body. After a `stop_reason` (or `message_stop`) the answer is
    /// complete; otherwise the stream was cut.
    pub fn on_end(&mut self, out: &mut Out) {
        if self.stop_reason.is_some() || self.stopped {
            self.finish(out);
        } else {
            tracing::debug!(
                open_blocks = self.open.len(),
                "anthropic stream ended without stop_reason or message_stop"
            );
            self.push_usage(out);
            out.push_back(Err(ProviderError::Truncated));
        }
    }

    fn on_wire_event(&mut self, wire: WireEvent, data: &str, out: &mut Out) -> Flow {
        match wire {
            WireEvent::MessageStart { message } => {
                let usage = message.usage.unwrap_or_default();
                self.usage = Some(Usage {
                    input_tokens: usage.input_tokens.unwrap_or(0),
                    output_tokens: usage.output_tokens.unwrap_or(0),
                });
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => self.on_block_start(index, content_block, out),
            WireEvent::ContentBlockDelta { index, delta } => self.on_delta(index, delta, out),
            WireEvent::ContentBlockStop { index } => self.on_block_stop(index, out),
            WireEvent::MessageDelta { delta, usage } => {
                if let Some(update) = usage {
                    let usage = self.usage.get_or_insert_default();
                    if let Some(input) = update.input_tokens {
                        usage.input_tokens = input;
                    }
                    if let Some(output) = update.output_tokens {
                        usage.output_tokens = output;
                    }
                }
                if let Some(reason) = delta.and_then(|d| d.stop_reason).filter(|r| !r.is_empty()) {
                    self.flush_open_calls(out);
                    out.push_back(Ok(StreamChunk::Finish {
                        reason: reason.clone(),
                    }));
                    self.stop_reason = Some(reason);
                }
            }
            WireEvent::MessageStop => {
                self.stopped = true;
                self.finish(out);
                return Flow::Done;
            }
            WireEvent::Ping => {}
            WireEvent::Error => {
                self.on_error(data, out);
                return Flow::Done;
            }
            WireEvent::Unknown => {
                tracing::trace!(
                    data = snippet(data),
                    "ignoring unknown anthropic event type"
                );
            }
        }
        Flow::Continue
    }

    fn on_block_start(&mut self, index: u32, block: WireBlock, out: &mut Out) {
        let open = match block {
            WireBlock::Text { text } => {
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    out.push_back(Ok(StreamChunk::Content { text }));
                }
                OpenBlock::Text
            }
            WireBlock::ToolUse { id, name, input } => {
                let call_index = self.tool_calls_started;
                self.tool_calls_started = self.tool_calls_started.saturating_add(1);
                out.push_back(Ok(StreamChunk::ToolCallDelta {
                    index: call_index,
                    id: Some(id.clone()),
                    name: Some(name.clone()),
                    arguments: String::new(),
                }));
                OpenBlock::ToolUse {
                    call_index,
                    id,
                    name,
                    arguments: String::new(),
                    initial_input: input,
                }
            }
            WireBlock::Thinking {
                thinking,
                signature,
            } => {
                if let Some(text) = thinking.filter(|t| !t.is_empty()) {
                    out.push_back(Ok(StreamChunk::Reasoning { text }));
                }
                OpenBlock::Thinking {
                    signature: signature.unwrap_or_default(),
                }
            }
            WireBlock::RedactedThinking { data } => OpenBlock::RedactedThinking {
                data: data.unwrap_or_default(),
            },
            WireBlock::ServerToolUse { name } => {
                tracing::debug!(tool = %name, "anthropic runs a server tool");
                OpenBlock::ServerToolUse {
                    name,
                    input: String::new(),
                }
            }
            WireBlock::Other => OpenBlock::Other,
        };
        if self.open.insert(index, open).is_some() {
            tracing::debug!(index, "content block restarted before its stop");
        }
    }

    fn on_delta(&mut self, index: u32, delta: WireDelta, out: &mut Out) {
        match delta {
            WireDelta::TextDelta { text } => {
                if !text.is_empty() {
                    out.push_back(Ok(StreamChunk::Content { text }));
                }
            }
            WireDelta::ThinkingDelta { thinking } => {
                if !thinking.is_empty() {
                    out.push_back(Ok(StreamChunk::Reasoning { text: thinking }));
                }
            }
            WireDelta::SignatureDelta { signature } => match self.open.get_mut(&index) {
                Some(OpenBlock::Thinking { signature: stored }) => stored.push_str(&signature),
                _ => tracing::debug!(index, "signature for a block that is not thinking"),
            },
            WireDelta::InputJsonDelta { partial_json } => match self.open.get_mut(&index) {
                Some(OpenBlock::ToolUse {
                    call_index,
                    arguments,
                    ..
                }) => {
                    if !partial_json.is_empty() {
                        arguments.push_str(&partial_json);
                        out.push_back(Ok(StreamChunk::ToolCallDelta {
                            index: *call_index,
                            id: None,
                            name: None,
                            arguments: partial_json,
                        }));
                    }
                }
                Some(OpenBlock::ServerToolUse { input, .. }) => input.push_str(&partial_json),
                _ => tracing::debug!(index, "tool input for a block that is not a tool call"),
            },
            WireDelta::Other => tracing::trace!(index, "ignoring an unknown delta type"),
        }
    }

    fn on_block_stop(&mut self, index: u32, out: &mut Out) {
        let Some(block) = self.open.remove(&index) else {
            tracing::debug!(index, "stop for a content block that never started");
            return;
        };
        match block {
            OpenBlock::ToolUse { .. } => push_call(block, out),
            OpenBlock::Thinking { signature } => {
                if !signature.is_empty() {
                    out.push_back(Ok(StreamChunk::ReasoningSignature { signature }));
                }
            }
            OpenBlock::RedactedThinking { data } => {
                if !data.is_empty() {
                    out.push_back(Ok(StreamChunk::ReasoningSignature {
                        signature: format!("{REDACTED_THINKING_PREFIX}{data}"),
                    }));
                }
            }
            OpenBlock::ServerToolUse { name, input } => {
                tracing::debug!(tool = %name, input = snippet(&input), "server tool call streamed");
            }
            OpenBlock::Text | OpenBlock::Other => {}
        }
    }

    /// Emits the tool calls still open at the `stop_reason`: with `max_tokens` their input was
    /// cut short and never stopped (see the module docs for why the raw text is kept).
    fn flush_open_calls(&mut self, out: &mut Out) {
        let open = std::mem::take(&mut self.open);
        for (index, block) in open {
            if let OpenBlock::ToolUse { id, name, .. } = &block {
                tracing::warn!(
                    index,
                    id = %id,
                    tool = %name,
                    "tool call input cut off at the stop reason; passing the raw text on"
                );
                push_call(block, out);
            }
        }
    }

    /// The end of a complete message: the final usage.
    fn finish(&mut self, out: &mut Out) {
        self.flush_open_calls(out);
        self.push_usage(out);
    }

    /// Emits the usage once; later calls do nothing.
    fn push_usage(&mut self, out: &mut Out) {
        if let Some(usage) = self.usage.take() {
            out.push_back(Ok(StreamChunk::Usage(usage)));
        }
    }

    /// Emits the usage so far and the error for the accumulator, then ends the stream with it.
    fn on_error(&mut self, data: &str, out: &mut Out) {
        let (kind, message) = parse_error(data);
        tracing::warn!(%kind, %message, "anthropic reported an error mid-stream");
        if !self.open.is_empty() {
            tracing::debug!(
                open_blocks = self.open.len(),
                "dropping unfinished content blocks"
            );
            self.open.clear();
        }
        self.push_usage(out);
        out.push_back(Ok(StreamChunk::Error {
            kind: kind.clone(),
            message: message.clone(),
            code: None,
        }));
        out.push_back(Err(ProviderError::InStream {
            kind,
            message,
            code: None,
        }));
    }
}

/// Emits a [`StreamChunk::ToolCall`] for a `tool_use` block; other blocks are ignored.
fn push_call(block: OpenBlock, out: &mut Out) {
    let OpenBlock::ToolUse {
        id,
        name,
        arguments,
        initial_input,
        ..
    } = block
    else {
        return;
    };
    let arguments = if arguments.is_empty() {
        // No partial_json: the input given at the start is the whole input.
        match initial_input {
            Some(Value::Object(object)) if !object.is_empty() => Value::Object(object).to_string(),
            _ => "{}".to_owned(),
        }
    } else {
        arguments
    };
    out.push_back(Ok(StreamChunk::ToolCall(ToolCall {
        id,
        name,
        arguments,
        signature: None,
    })));
}

/// (type, message) of an `error` event: `{"type":"error","error":{"type":..,"message":..}}`,
/// a bare error object, or text that is not JSON at all.
fn parse_error(data: &str) -> (String, String) {
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return ("error".into(), data.trim().to_owned());
    };
    let error = value
        .get("error")
        .filter(|e| !e.is_null())
        .unwrap_or(&value);
    if let Some(text) = error.as_str() {
        return ("error".into(), text.to_owned());
    }
    let kind = error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("error")
        .to_owned();
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string());
    (kind, message)
}

// The wire shapes, as little as conclave reads. Unknown fields (`id`, `model`, `citations`,
// cache counters, ...) and unknown event, block and delta types are skipped.

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: WireDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        #[serde(default)]
        delta: Option<WireMessageDelta>,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    /// An error frame without the `error` event name (the data is re-parsed).
    Error,
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireMessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        #[serde(default)]
        text: Option<String>,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Option<Value>,
    },
    Thinking {
        #[serde(default)]
        thinking: Option<String>,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        #[serde(default)]
        data: Option<String>,
    },
    ServerToolUse {
        #[serde(default)]
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accumulate::TurnOutput;
    use crate::llm::ToolSpec;
    use conclave_protocol::config::{BackendOptions, WireFormat};

    fn named(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    /// Feeds events through the parser; returns the folded output, the chunks and the final
    /// error.
    fn run(events: &[SseEvent], end: bool) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
        let mut parser = AnthropicStreamParser::default();
        let mut out = VecDeque::new();
        let mut done = false;
        for event in events {
            if parser.on_event(event, &mut out) == Flow::Done {
                done = true;
                break;
            }
        }
        if end && !done {
            parser.on_end(&mut out);
        }
        let mut turn = TurnOutput::default();
        let mut chunks = Vec::new();
        let mut error = None;
        for item in out {
            match item {
                Ok(chunk) => {
                    turn.apply(&chunk);
                    chunks.push(chunk);
                }
                Err(e) => error = Some(format!("{e:?}")),
            }
        }
        (turn, chunks, error)
    }

    const START: &str =
        r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}"#;

    fn start() -> SseEvent {
        named("message_start", START)
    }

    fn stop_reason(reason: &str, output: u64) -> SseEvent {
        named(
            "message_delta",
            &format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"{reason}"}},"usage":{{"output_tokens":{output}}}}}"#
            ),
        )
    }

    #[test]
    fn thinking_text_tool_use_and_usage() {
        let (turn, chunks, error) = run(
            &[
                start(),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
                ),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
                ),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#,
                ),
                named(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"opaque"}}"#,
                ),
                named(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":1}"#,
                ),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":"Hi"}}"#,
                ),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{}}}"#,
                ),
                named(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":2}"#,
                ),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"t1","name":"f","input":{}}}"#,
                ),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
                ),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
                ),
                named(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":3}"#,
                ),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":4,"content_block":{"type":"tool_use","id":"t2","name":"g","input":{"k":"v"}}}"#,
                ),
                named(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":4}"#,
                ),
                named(
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":12,"output_tokens":30}}"#,
                ),
                named("message_stop", r#"{"type":"message_stop"}"#),
            ],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(turn.text, "Hi");
        assert_eq!(turn.reasoning.as_deref(), Some("hm"));
        assert_eq!(
            turn.reasoning_signatures,
            vec![
                "c2ln".to_owned(),
                format!("{REDACTED_THINKING_PREFIX}opaque")
            ]
        );
        assert_eq!(
            turn.tool_calls,
            vec![
                ToolCall::new("t1", "f", r#"{"a":1}"#),
                ToolCall::new("t2", "g", r#"{"k":"v"}"#),
            ]
        );
        assert_eq!(turn.finish_reason.as_deref(), Some("tool_use"));
        assert_eq!(
            turn.usage,
            Some(Usage {
                input_tokens: 12,
                output_tokens: 30
            })
        );
        // Deltas carry the call ordinal, not the block index; usage comes once, last.
        assert!(chunks.contains(&StreamChunk::ToolCallDelta {
            index: 1,
            id: Some("t2".into()),
            name: Some("g".into()),
            arguments: String::new(),
        }));
        let usages = chunks
            .iter()
            .filter(|c| matches!(c, StreamChunk::Usage(_)))
            .count();
        assert_eq!(usages, 1);
        assert!(matches!(chunks.last(), Some(StreamChunk::Usage(_))));
    }

    #[test]
    fn stop_reason_without_message_stop_is_complete() {
        let (turn, _, error) = run(
            &[
                start(),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
                ),
                stop_reason("end_turn", 5),
            ],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(turn.text, "x");
        assert_eq!(
            turn.usage,
            Some(Usage {
                input_tokens: 10,
                output_tokens: 5
            })
        );
    }

    #[test]
    fn truncation_reports_usage_then_truncated() {
        let (turn, chunks, error) = run(
            &[
                start(),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
                ),
            ],
            true,
        );
        assert_eq!(error.as_deref(), Some("Truncated"));
        assert_eq!(turn.finish_reason, None);
        assert_eq!(turn.usage.map(|u| u.input_tokens), Some(10));
        assert!(!chunks.iter().any(|c| matches!(c, StreamChunk::ToolCall(_))));
    }

    #[test]
    fn cut_tool_input_keeps_the_raw_text() {
        let (turn, _, error) = run(
            &[
                start(),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
                ),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\": \"b"}}"#,
                ),
                stop_reason("max_tokens", 9),
            ],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(
            turn.tool_calls,
            vec![ToolCall::new("t", "f", r#"{"a": "b"#)]
        );
        assert_eq!(turn.finish_reason.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn error_event_drops_open_calls() {
        let (turn, chunks, error) = run(
            &[
                start(),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
                ),
                named(
                    "error",
                    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                ),
                stop_reason("end_turn", 1),
            ],
            true,
        );
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.starts_with("InStream") && e.contains("overloaded_error")),
            "{error:?}"
        );
        assert_eq!(
            turn.error,
            Some(("overloaded_error".into(), "Overloaded".into(), None))
        );
        assert!(turn.tool_calls.is_empty());
        assert_eq!(turn.usage.map(|u| u.input_tokens), Some(10));
        assert!(matches!(chunks.last(), Some(StreamChunk::Error { .. })));

        // An error frame without the event name, and one that is not JSON.
        let (turn, _, error) = run(
            &[named(
                "message",
                r#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
            )],
            true,
        );
        assert_eq!(turn.error, Some(("api_error".into(), "boom".into(), None)));
        assert!(error.is_some());
        let (turn, _, _) = run(&[named("error", "upstream went away")], true);
        assert_eq!(
            turn.error,
            Some(("error".into(), "upstream went away".into(), None))
        );
    }

    #[test]
    fn malformed_unknown_and_unnamed_events() {
        let (_, _, error) = run(&[named("message_start", "{not json")], true);
        assert!(error.is_some_and(|e| e.starts_with("Malformed")));
        // A chat-completions body sent to this backend: no `type`.
        let (_, _, error) = run(&[named("message", r#"{"choices":[]}"#)], true);
        assert!(error.is_some_and(|e| e.starts_with("Malformed")));
        let (turn, _, error) = run(
            &[
                named("ping", "{\"type\": \"ping\"}"),
                named("future_event", "{not json"),
                named("message", r#"{"type":"future_type"}"#),
                named(
                    "message",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}"#,
                ),
                named(
                    "message",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
                ),
            ],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(turn.text, "ok");
        assert_eq!(
            turn.usage,
            Some(Usage {
                input_tokens: 0,
                output_tokens: 2
            })
        );
    }

    #[test]
    fn server_tools_are_not_client_calls() {
        let (turn, chunks, error) = run(
            &[
                start(),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srv","name":"web_search","input":{}}}"#,
                ),
                named(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"x\"}"}}"#,
                ),
                named(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                named(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":1,"content_block":{"type":"web_search_tool_result","tool_use_id":"srv","content":[]}}"#,
                ),
                named(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":1}"#,
                ),
                stop_reason("end_turn", 3),
            ],
            true,
        );
        assert_eq!(error, None);
        assert!(turn.tool_calls.is_empty());
        assert!(
            !chunks
                .iter()
                .any(|c| matches!(c, StreamChunk::ToolCallDelta { .. }))
        );
    }

    fn spec() -> BackendSpec {
        BackendSpec {
            wire: WireFormat::Anthropic,
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            base_url: "https://api.anthropic.com/v1/".into(),
            api_key_env: None,
            temperature: Some(0.2),
            top_p: Some(0.9),
            max_tokens: None,
            extra_body: None,
            max_retries: 2,
            options: BackendOptions::default(),
        }
    }

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "f".into(),
            description: "does f".into(),
            parameters: json!({"type": "object"}),
        }
    }

    #[test]
    fn plain_request_body() {
        let request = ChatRequest {
            messages: vec![
                ChatMessage::system("a"),
                ChatMessage::system("b"),
                ChatMessage::user("u"),
            ],
            tools: vec![weather()],
            tool_choice: ToolChoice::Required,
        };
        let mut extra = Map::new();
        extra.insert("top_k".into(), json!(5));
        let body = request_body(&spec(), Some(&extra), &request);
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": DEFAULT_MAX_TOKENS,
                "system": "a\n\nb",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "u"}]}],
                "tools": [{"name": "f", "description": "does f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any"},
                "stream": true,
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 5,
            })
        );
        assert_eq!(
            endpoint(&spec()).ok().as_deref(),
            Some("https://api.anthropic.com/v1/messages")
        );
    }

    #[test]
    fn thinking_request_body() {
        let mut spec = spec();
        spec.options.thinking_budget = Some(500);
        spec.options.web_search = true;
        spec.options.code_execution = true;
        spec.max_tokens = Some(1000);
        let request = ChatRequest {
            messages: vec![ChatMessage::user("u")],
            tools: vec![weather()],
            tool_choice: ToolChoice::Required,
        };
        let body = request_body(&spec, None, &request);
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": MIN_THINKING_BUDGET})
        );
        assert_eq!(body["max_tokens"], MIN_THINKING_BUDGET + 1000);
        assert!(body.get("temperature").is_none());
        assert!(body.get("top_p").is_none());
        assert_eq!(body["tool_choice"], json!({"type": "auto"}));
        assert_eq!(body["tools"][1]["type"], "web_search_20250305");
        assert_eq!(body["tools"][2]["name"], "code_execution");
        let headers = request_headers(&spec).unwrap_or_default();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1].1, CODE_EXECUTION_BETA);

        // Built-in tools only: no tool_choice.
        let body = request_body(&spec, None, &ChatRequest::default());
        assert!(body.get("tool_choice").is_none());
        assert_eq!(body["tools"].as_array().map(Vec::len), Some(2));

        spec.options.api_version = Some("bad\nversion".into());
        assert!(matches!(
            request_headers(&spec),
            Err(ProviderError::Config(_))
        ));
        spec.options.api_version = Some("2099-01-01".into());
        assert_eq!(
            request_headers(&spec).ok().map(|h| h[0].1.clone()),
            Some(HeaderValue::from_static("2099-01-01"))
        );
    }

    #[test]
    fn history_is_merged_and_ordered() {
        let (system, messages) = messages_json(&[
            ChatMessage::user("a"),
            ChatMessage::user("b"),
            ChatMessage::Assistant {
                content: Some("calling".into()),
                tool_calls: vec![
                    ToolCall::new("t1", "f", r#"{"x":1}"#),
                    ToolCall::new("t2", "f", "{broken"),
                ],
                reasoning: vec![
                    ReasoningBlock {
                        text: "unsigned".into(),
                        signature: None,
                    },
                    ReasoningBlock {
                        text: "why".into(),
                        signature: Some("sig".into()),
                    },
                    ReasoningBlock {
                        text: String::new(),
                        signature: Some(format!("{REDACTED_THINKING_PREFIX}blob")),
                    },
                ],
            },
            ChatMessage::user("interjection"),
            ChatMessage::tool("t1", "one"),
            ChatMessage::tool("t2", ""),
            ChatMessage::Assistant {
                content: Some(String::new()),
                tool_calls: Vec::new(),
                reasoning: Vec::new(),
            },
            ChatMessage::user("next"),
        ]);
        assert_eq!(system, None);
        assert_eq!(
            Value::Array(messages),
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "a"},
                    {"type": "text", "text": "b"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "why", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "blob"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
                    {"type": "tool_use", "id": "t2", "name": "f", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                    {"type": "tool_result", "tool_use_id": "t2"},
                    {"type": "text", "text": "interjection"},
                    {"type": "text", "text": "next"},
                ]},
            ])
        );
    }
}
