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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use conclave_protocol::config::BackendSpec;
use conclave_protocol::{StreamChunk, ToolCall, Usage};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::openai_chat::{Flow, is_reasoning_model, push_in_stream_error};
use super::{Backend, ChunkStream, ProviderError};
use crate::llm::{ChatMessage, ChatRequest};
use crate::sse::{self, SseEvent, SseStream, snippet};

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
            ChatMessage::Tool { call_id, content } => {
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
    backend: &Backend,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let spec = &backend.spec;
    let body = request_body(spec, backend.extra_body.as_ref(), request);
    let body = serde_json::to_vec(&body)
        .map_err(|e| ProviderError::Config(format!("could not encode the request: {e}")))?;
    tracing::debug!(
        provider = %spec.provider,
        model = %spec.model,
        url = %backend.endpoint,
        messages = request.messages.len(),
        tools = request.tools.len(),
        "starting responses stream"
    );
    let response = backend
        .post_json(&backend.endpoint, body)
        .send()
        .await
        .map_err(|e| ProviderError::from_transport(&spec.provider, &backend.endpoint, e))?;
    let events = sse::open(&spec.provider, &backend.endpoint, response).await?;
    Ok(Box::pin(ResponsesStream::new(events)))
}

/// Turns SSE events into chunks; the parsing state lives in [`ResponsesStreamParser`].
pub struct ResponsesStream {
    events: SseStream,
    parser: ResponsesStreamParser,
    pending: Out,
    done: bool,
}

impl ResponsesStream {
    /// Parses `events` (already checked for HTTP success) as a Responses stream.
    pub fn new(events: SseStream) -> Self {
        Self {
            events,
            parser: ResponsesStreamParser::default(),
            pending: VecDeque::new(),
            done: false,
        }
    }
}

impl fmt::Debug for ResponsesStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponsesStream")
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for ResponsesStream {
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

type Out = VecDeque<Result<StreamChunk, ProviderError>>;

/// The pure state machine behind [`ResponsesStream`]: events in, chunks out. No I/O, so it can
/// be driven directly in tests.
#[derive(Debug, Default)]
pub struct ResponsesStreamParser {
    /// Output items seen so far, in the order they were added.
    items: Vec<OutputItem>,
    /// The last item with each `output_index`, and with each item id (all items, and those
    /// without an `output_index`): events find their item in O(1) rather than by a scan,
    /// which a hostile stream of many items could make quadratic.
    by_output_index: HashMap<u64, usize>,
    by_id: HashMap<String, usize>,
    by_id_unindexed: HashMap<String, usize>,
    /// The `ToolCallDelta` index the next function call gets.
    next_call_index: u32,
    /// Whether a terminal event (`response.completed` / `incomplete` / `failed`) arrived.
    finished: bool,
}

/// One item of the response's `output`, as far as the stream has told it.
#[derive(Debug)]
struct OutputItem {
    id: Option<String>,
    kind: ItemKind,
    /// Whether text or reasoning deltas arrived for it, so the finished item's copy of that
    /// text is not emitted a second time.
    streamed: bool,
    /// Whether its `output_item.done` was handled.
    done: bool,
}

#[derive(Debug)]
enum ItemKind {
    FunctionCall {
        index: u32,
        call_id: String,
        name: String,
        arguments: String,
    },
    Message,
    Reasoning,
    /// Built-in tool calls (`web_search_call`, `code_interpreter_call`) and anything newer.
    Other,
}

/// The event types the parser acts on; a payload of another type that does not fit the
/// expected shape is skipped instead of failing the stream.
const HANDLED_EVENTS: &[&str] = &[
    "response.output_item.added",
    "response.output_item.done",
    "response.output_text.delta",
    "response.refusal.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
];

impl ResponsesStreamParser {
    /// Handles one SSE event.
    pub fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow {
        let data = event.data.trim();
        if event.event == "error" {
            push_in_stream_error(data, out);
            return Flow::Done;
        }
        // The Responses API sends no `[DONE]`; a proxy that adds one changes nothing, since
        // only a terminal event completes the response.
        if data.is_empty() || data == "[DONE]" {
            return Flow::Continue;
        }
        let wire: WireEvent = match serde_json::from_str(data) {
            Ok(wire) => wire,
            Err(e) => {
                let kind = serde_json::from_str::<TypeOnly>(data)
                    .ok()
                    .and_then(|t| t.kind)
                    .unwrap_or_else(|| event.event.clone());
                if kind == "error" {
                    push_in_stream_error(data, out);
                } else if HANDLED_EVENTS.contains(&kind.as_str()) || kind == "message" {
                    out.push_back(Err(ProviderError::Malformed(format!(
                        "responses event is not valid: {e}; data: {}",
                        snippet(data)
                    ))));
                } else {
                    tracing::trace!(event = %kind, error = %e, "skipping an unexpected event");
                    return Flow::Continue;
                }
                return Flow::Done;
            }
        };
        let kind = wire
            .kind
            .as_deref()
            .filter(|k| !k.is_empty())
            .unwrap_or(event.event.as_str())
            .to_owned();
        match kind.as_str() {
            "response.output_item.added" => {
                if let Some(item) = wire.item {
                    self.on_item_added(wire.output_index, item, out);
                }
            }
            "response.output_item.done" => {
                if let Some(item) = wire.item {
                    self.on_item_done(wire.output_index, item, out);
                }
            }
            "response.output_text.delta" => {
                if let Some(text) = self.streamed_delta(&wire, ItemKind::Message) {
                    out.push_back(Ok(StreamChunk::Content { text }));
                }
            }
            "response.refusal.delta" => {
                if let Some(text) = self.streamed_delta(&wire, ItemKind::Message) {
                    out.push_back(Ok(StreamChunk::Refusal { text }));
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(text) = self.streamed_delta(&wire, ItemKind::Reasoning) {
                    out.push_back(Ok(StreamChunk::Reasoning { text }));
                }
            }
            "response.function_call_arguments.delta" => self.on_arguments_delta(wire, out),
            "response.function_call_arguments.done" => {
                // The finished arguments; `output_item.done` repeats them, but a proxy that
                // skips that event still gets the call right.
                if let Some(arguments) = wire.arguments {
                    let position = self.call_position(wire.output_index, wire.item_id.as_deref());
                    if let ItemKind::FunctionCall { arguments: a, .. } =
                        &mut self.items[position].kind
                    {
                        *a = arguments;
                    }
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.on_terminal(&kind, wire.response.unwrap_or_default(), out);
                return Flow::Done;
            }
            "error" => {
                push_in_stream_error(data, out);
                return Flow::Done;
            }
            other => tracing::trace!(event = other, "ignoring responses event"),
        }
        Flow::Continue
    }

    /// Handles the end of the body.
    pub fn on_end(&mut self, out: &mut Out) {
        if !self.finished {
            tracing::debug!(
                items = self.items.len(),
                "responses stream ended without response.completed"
            );
            out.push_back(Err(ProviderError::Truncated));
        }
    }

    /// The item an event refers to: by `output_index` when both sides have one, else by item
    /// id; an event that names neither belongs to the last item.
    fn position(&self, output_index: Option<u64>, item_id: Option<&str>) -> Option<usize> {
        if output_index.is_none() && item_id.is_none() {
            return self.items.len().checked_sub(1);
        }
        // The last item that matches: by output index where both sides have one, else by id.
        let by_index = output_index.and_then(|wanted| self.by_output_index.get(&wanted));
        let by_id = item_id.and_then(|id| match output_index {
            None => self.by_id.get(id),
            Some(_) => self.by_id_unindexed.get(id),
        });
        by_index.max(by_id).copied()
    }

    /// Records an item announced by `output_item.added` (or implied by a delta that came
    /// without one) and returns its position.
    fn push_item(
        &mut self,
        output_index: Option<u64>,
        id: Option<String>,
        kind: ItemKind,
    ) -> usize {
        let position = self.items.len();
        if let Some(output_index) = output_index {
            self.by_output_index.insert(output_index, position);
        }
        if let Some(id) = &id {
            self.by_id.insert(id.clone(), position);
            if output_index.is_none() {
                self.by_id_unindexed.insert(id.clone(), position);
            }
        }
        self.items.push(OutputItem {
            id,
            kind,
            streamed: false,
            done: false,
        });
        position
    }

    fn new_call(&mut self, call_id: String, name: String, arguments: String) -> ItemKind {
        let index = self.next_call_index;
        self.next_call_index = self.next_call_index.saturating_add(1);
        ItemKind::FunctionCall {
            index,
            call_id,
            name,
            arguments,
        }
    }

    fn on_item_added(&mut self, output_index: Option<u64>, item: WireItem, out: &mut Out) {
        let kind = match item.kind.as_deref() {
            Some("function_call") => {
                let call_id = item.call_id.unwrap_or_default();
                let name = item.name.unwrap_or_default();
                let arguments = item.arguments.unwrap_or_default();
                let kind = self.new_call(call_id.clone(), name.clone(), arguments.clone());
                if let ItemKind::FunctionCall { index, .. } = kind {
                    out.push_back(Ok(StreamChunk::ToolCallDelta {
                        index,
                        id: Some(call_id).filter(|id| !id.is_empty()),
                        name: Some(name).filter(|name| !name.is_empty()),
                        arguments,
                    }));
                }
                kind
            }
            Some("message") => ItemKind::Message,
            Some("reasoning") => ItemKind::Reasoning,
            other => {
                tracing::trace!(item = other, "output item conclave does not act on");
                ItemKind::Other
            }
        };
        self.push_item(output_index, item.id, kind);
    }

    /// The text of a delta event, after marking its item as streamed. An empty delta gives
    /// nothing.
    fn streamed_delta(&mut self, wire: &WireEvent, implied: ItemKind) -> Option<String> {
        let text = wire.delta.clone().filter(|t| !t.is_empty())?;
        let position = match self.position(wire.output_index, wire.item_id.as_deref()) {
            Some(position) => position,
            None => self.push_item(wire.output_index, wire.item_id.clone(), implied),
        };
        self.items[position].streamed = true;
        Some(text)
    }

    /// The position of the function call an event names, creating it when the stream never
    /// announced it.
    fn call_position(&mut self, output_index: Option<u64>, item_id: Option<&str>) -> usize {
        match self.position(output_index, item_id) {
            Some(position)
                if matches!(self.items[position].kind, ItemKind::FunctionCall { .. }) =>
            {
                position
            }
            _ => {
                let kind = self.new_call(String::new(), String::new(), String::new());
                self.push_item(output_index, item_id.map(str::to_owned), kind)
            }
        }
    }

    fn on_arguments_delta(&mut self, wire: WireEvent, out: &mut Out) {
        let Some(delta) = wire.delta.filter(|d| !d.is_empty()) else {
            return;
        };
        let position = self.call_position(wire.output_index, wire.item_id.as_deref());
        if let ItemKind::FunctionCall {
            index, arguments, ..
        } = &mut self.items[position].kind
        {
            arguments.push_str(&delta);
            out.push_back(Ok(StreamChunk::ToolCallDelta {
                index: *index,
                id: None,
                name: None,
                arguments: delta,
            }));
        }
    }

    fn on_item_done(&mut self, output_index: Option<u64>, item: WireItem, out: &mut Out) {
        let kind = item.kind.as_deref().unwrap_or_default();
        let position = match self.position(output_index, item.id.as_deref()) {
            Some(position) => position,
            None => {
                let implied = match kind {
                    "function_call" => self.new_call(String::new(), String::new(), String::new()),
                    "message" => ItemKind::Message,
                    "reasoning" => ItemKind::Reasoning,
                    _ => ItemKind::Other,
                };
                self.push_item(output_index, item.id.clone(), implied)
            }
        };
        if self.items[position].done {
            return;
        }
        self.items[position].done = true;
        let streamed = self.items[position].streamed;
        match kind {
            "function_call" => {
                if !matches!(self.items[position].kind, ItemKind::FunctionCall { .. }) {
                    self.items[position].kind =
                        self.new_call(String::new(), String::new(), String::new());
                }
                if let ItemKind::FunctionCall {
                    index,
                    call_id,
                    name,
                    arguments,
                } = &self.items[position].kind
                {
                    let call = finished_call(*index, call_id, name, arguments, &item);
                    out.push_back(Ok(StreamChunk::ToolCall(call)));
                }
            }
            "reasoning" => {
                if !streamed {
                    let text = reasoning_text(&item);
                    if !text.is_empty() {
                        out.push_back(Ok(StreamChunk::Reasoning { text }));
                    }
                }
                if let Some(signature) = item.encrypted_content.filter(|s| !s.is_empty()) {
                    out.push_back(Ok(StreamChunk::ReasoningSignature { signature }));
                }
            }
            "message" if !streamed => {
                for part in item.content.unwrap_or_default() {
                    match part.kind.as_deref() {
                        Some("refusal") => {
                            if let Some(text) = part.refusal.filter(|t| !t.is_empty()) {
                                out.push_back(Ok(StreamChunk::Refusal { text }));
                            }
                        }
                        Some("output_text") | None => {
                            if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                                out.push_back(Ok(StreamChunk::Content { text }));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn on_terminal(&mut self, event: &str, response: WireResponse, out: &mut Out) {
        self.finished = true;
        let status = response
            .status
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| event.trim_start_matches("response.").to_owned());
        if status == "completed" {
            self.finish_calls(response.output.unwrap_or_default(), out);
        } else {
            let unfinished = self
                .items
                .iter()
                .filter(|i| !i.done && matches!(i.kind, ItemKind::FunctionCall { .. }))
                .count();
            if unfinished > 0 {
                tracing::debug!(
                    unfinished,
                    %status,
                    "dropping function calls the model did not finish"
                );
            }
        }
        if let Some(usage) = response.usage {
            out.push_back(Ok(StreamChunk::Usage(Usage {
                input_tokens: usage.input_tokens.unwrap_or(0),
                output_tokens: usage.output_tokens.unwrap_or(0),
            })));
        }
        if status == "incomplete" {
            let reason = response
                .incomplete_details
                .and_then(|d| d.reason)
                .unwrap_or_else(|| "unknown".to_owned());
            tracing::warn!(%reason, "the response is incomplete");
        }
        out.push_back(Ok(StreamChunk::Finish {
            reason: status.clone(),
        }));
        if status == "failed" {
            let error = response.error.unwrap_or_default();
            let message = error
                .message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "the response failed without an error message".to_owned());
            let code = match error.code {
                Some(Value::String(code)) => Some(code),
                Some(Value::Number(code)) => Some(code.to_string()),
                _ => None,
            };
            let kind = "response.failed".to_owned();
            tracing::warn!(%message, code = code.as_deref(), "the provider failed the response");
            out.push_back(Ok(StreamChunk::Error {
                kind: kind.clone(),
                message: message.clone(),
                code: code.clone(),
            }));
            out.push_back(Err(ProviderError::InStream {
                kind,
                message,
                code,
            }));
        }
    }

    /// At a completed response, emits the function calls whose `output_item.done` never came:
    /// from the response's own `output` when it lists them, else from the streamed deltas.
    fn finish_calls(&mut self, output: Vec<WireItem>, out: &mut Out) {
        // The first known item with each call id and each item id, looked up per listed call
        // (a scan per call would be quadratic in a long output list).
        let mut first_by_call_id: HashMap<String, usize> = HashMap::new();
        let mut first_by_id: HashMap<String, usize> = HashMap::new();
        for (position, known) in self.items.iter().enumerate() {
            if let ItemKind::FunctionCall { call_id, .. } = &known.kind
                && !call_id.is_empty()
            {
                first_by_call_id.entry(call_id.clone()).or_insert(position);
            }
            if let Some(id) = &known.id {
                first_by_id.entry(id.clone()).or_insert(position);
            }
        }
        for item in output {
            if item.kind.as_deref() != Some("function_call") {
                continue;
            }
            let call_id = item.call_id.as_deref().unwrap_or_default();
            let by_call_id = (!call_id.is_empty())
                .then(|| first_by_call_id.get(call_id))
                .flatten();
            let by_id = item.id.as_ref().and_then(|id| first_by_id.get(id));
            let position = match (by_call_id, by_id) {
                (Some(a), Some(b)) => Some(*a.min(b)),
                (a, b) => a.or(b).copied(),
            };
            let position = match position {
                Some(position) if self.items[position].done => continue,
                Some(position) => position,
                None => {
                    let kind = self.new_call(String::new(), String::new(), String::new());
                    let position = self.push_item(None, item.id.clone(), kind);
                    if let Some(id) = &item.id {
                        first_by_id.entry(id.clone()).or_insert(position);
                    }
                    position
                }
            };
            self.items[position].done = true;
            if let ItemKind::FunctionCall {
                index,
                call_id,
                name,
                arguments,
            } = &self.items[position].kind
            {
                let call = finished_call(*index, call_id, name, arguments, &item);
                out.push_back(Ok(StreamChunk::ToolCall(call)));
            }
        }
        for item in self.items.iter_mut().filter(|i| !i.done) {
            if let ItemKind::FunctionCall {
                index,
                call_id,
                name,
                arguments,
            } = &item.kind
            {
                item.done = true;
                let call = finished_call(*index, call_id, name, arguments, &WireItem::default());
                out.push_back(Ok(StreamChunk::ToolCall(call)));
            }
        }
    }
}

/// A complete call: the finished item's fields win over what the deltas built up; a call that
/// never got a `call_id` is named `call_{index}` so its result can refer to it.
fn finished_call(
    index: u32,
    streamed_id: &str,
    streamed_name: &str,
    streamed_arguments: &str,
    item: &WireItem,
) -> ToolCall {
    let id = item
        .call_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .unwrap_or(streamed_id);
    let id = if id.is_empty() {
        tracing::debug!(index, "function call without call_id; naming it");
        format!("call_{index}")
    } else {
        id.to_owned()
    };
    let name = item
        .name
        .as_deref()
        .filter(|name| !name.is_empty())
        .unwrap_or(streamed_name);
    let arguments = item.arguments.as_deref().unwrap_or(streamed_arguments);
    ToolCall {
        id,
        name: name.to_owned(),
        arguments: arguments.to_owned(),
        signature: None,
    }
}

/// The summary text of a finished reasoning item (or, from servers that expose it, its raw
/// reasoning text), concatenated as the SDK does.
fn reasoning_text(item: &WireItem) -> String {
    let summary: String = item
        .summary
        .iter()
        .flatten()
        .filter_map(|part| part.text.as_deref())
        .collect();
    if !summary.is_empty() {
        return summary;
    }
    item.content
        .iter()
        .flatten()
        .filter(|part| part.kind.as_deref() == Some("reasoning_text"))
        .filter_map(|part| part.text.as_deref())
        .collect()
}

// The wire shapes, as little as conclave reads. Unknown fields (`sequence_number`,
// `obfuscation`, `annotations`, the echoed request settings, ...) are skipped without
// allocating.

/// Every event in one flat shape: each type fills the fields it has.
#[derive(Deserialize)]
struct WireEvent {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    item: Option<WireItem>,
    #[serde(default)]
    response: Option<WireResponse>,
}

/// For a payload that does not fit [`WireEvent`]: only its type, to decide whether that
/// matters.
#[derive(Deserialize)]
struct TypeOnly {
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireItem {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    encrypted_content: Option<String>,
    #[serde(default)]
    summary: Option<Vec<WirePart>>,
    #[serde(default)]
    content: Option<Vec<WirePart>>,
}

/// A content part (`output_text`, `refusal`) or a reasoning summary / text part.
#[derive(Deserialize)]
struct WirePart {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireResponse {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    incomplete_details: Option<WireIncomplete>,
    #[serde(default)]
    output: Option<Vec<WireItem>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct WireError {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct WireIncomplete {
    #[serde(default)]
    reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accumulate::TurnOutput;
    use crate::llm::{ReasoningBlock, ToolChoice, ToolSpec};
    use conclave_protocol::config::WireFormat;

    fn event(kind: &str, data: Value) -> SseEvent {
        SseEvent {
            event: kind.into(),
            data: data.to_string(),
        }
    }

    /// Feeds events through the parser; returns the folded output, the chunks and the final
    /// error.
    fn run(events: &[SseEvent]) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
        let mut parser = ResponsesStreamParser::default();
        let mut out = VecDeque::new();
        let mut done = false;
        for event in events {
            if parser.on_event(event, &mut out) == Flow::Done {
                done = true;
                break;
            }
        }
        if !done {
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

    fn completed(usage: Value) -> SseEvent {
        event(
            "response.completed",
            json!({"type": "response.completed", "response": {"status": "completed", "usage": usage}}),
        )
    }

    #[test]
    fn text_reasoning_and_signature() {
        let (turn, _, error) = run(&[
            event(
                "response.output_item.added",
                json!({"type":"response.output_item.added","output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[]}}),
            ),
            event(
                "response.reasoning_summary_text.delta",
                json!({"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"delta":"A.","obfuscation":"xx"}),
            ),
            event(
                "response.reasoning_summary_text.delta",
                json!({"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"summary_index":1,"delta":"B."}),
            ),
            event(
                "response.output_item.done",
                json!({"type":"response.output_item.done","output_index":0,"item":{"type":"reasoning","id":"rs_1","encrypted_content":"enc1","summary":[{"type":"summary_text","text":"A."},{"type":"summary_text","text":"B."}]}}),
            ),
            event(
                "response.output_text.delta",
                json!({"type":"response.output_text.delta","item_id":"msg_1","output_index":1,"delta":"Hi"}),
            ),
            completed(json!({"input_tokens": 3, "output_tokens": 5})),
        ]);
        assert_eq!(error, None);
        assert_eq!(turn.text, "Hi");
        assert_eq!(turn.reasoning.as_deref(), Some("A.B."));
        assert_eq!(
            turn.reasoning_blocks,
            vec![ReasoningBlock {
                text: "A.B.".into(),
                signature: Some("enc1".into())
            }]
        );
        assert_eq!(turn.finish_reason.as_deref(), Some("completed"));
        assert_eq!(
            turn.usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 5
            })
        );
    }

    #[test]
    fn finished_items_without_deltas_are_emitted_once() {
        let (turn, _, error) = run(&[
            event(
                "message",
                json!({"type":"response.output_item.done","output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"why"}]}}),
            ),
            event(
                "message",
                json!({"type":"response.output_item.done","output_index":1,"item":{"type":"message","id":"m","content":[{"type":"output_text","text":"Hello"},{"type":"refusal","refusal":"no"}]}}),
            ),
            event(
                "message",
                json!({"type":"response.output_item.done","output_index":1,"item":{"type":"message","id":"m","content":[{"type":"output_text","text":"Hello"}]}}),
            ),
            event(
                "message",
                json!({"type":"response.output_item.done","output_index":2,"item":{"type":"function_call","id":"fc","call_id":"call_9","name":"f","arguments":"{}"}}),
            ),
            completed(Value::Null),
        ]);
        assert_eq!(error, None);
        assert_eq!(turn.reasoning.as_deref(), Some("why"));
        assert_eq!(turn.text, "Hello");
        assert_eq!(turn.refusal.as_deref(), Some("no"));
        assert_eq!(turn.tool_calls, vec![ToolCall::new("call_9", "f", "{}")]);
        assert_eq!(turn.usage, None);
    }

    #[test]
    fn calls_stream_by_item_and_completed_output_fills_gaps() {
        let (turn, chunks, error) = run(&[
            event(
                "message",
                json!({"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc_a","call_id":"call_a","name":"f","arguments":""}}),
            ),
            event(
                "message",
                json!({"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","id":"fc_b","call_id":"call_b","name":"g","arguments":""}}),
            ),
            event(
                "message",
                json!({"type":"response.function_call_arguments.delta","item_id":"fc_a","output_index":0,"delta":"{\"x\":"}),
            ),
            event(
                "message",
                json!({"type":"response.function_call_arguments.delta","item_id":"fc_b","output_index":1,"delta":"{}"}),
            ),
            event(
                "message",
                json!({"type":"response.function_call_arguments.delta","item_id":"fc_a","output_index":0,"delta":"1}"}),
            ),
            event(
                "message",
                json!({"type":"response.output_item.done","output_index":1,"item":{"type":"function_call","id":"fc_b","call_id":"call_b","name":"g","arguments":"{}"}}),
            ),
            // fc_a never gets its output_item.done; the completed response lists it.
            event(
                "message",
                json!({"type":"response.completed","response":{"status":"completed","output":[
                    {"type":"function_call","id":"fc_a","call_id":"call_a","name":"f","arguments":"{\"x\":1}"},
                    {"type":"function_call","id":"fc_b","call_id":"call_b","name":"g","arguments":"{}"}
                ]}}),
            ),
        ]);
        assert_eq!(error, None);
        assert_eq!(
            turn.tool_calls,
            vec![
                ToolCall::new("call_b", "g", "{}"),
                ToolCall::new("call_a", "f", "{\"x\":1}"),
            ]
        );
        let deltas: Vec<_> = chunks
            .iter()
            .filter_map(|c| match c {
                StreamChunk::ToolCallDelta {
                    index, arguments, ..
                } => Some((*index, arguments.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            deltas,
            vec![(0, ""), (1, ""), (0, "{\"x\":"), (1, "{}"), (0, "1}")]
        );
    }

    #[test]
    fn incomplete_is_a_normal_end_and_drops_unfinished_calls() {
        let (turn, _, error) = run(&[
            event(
                "message",
                json!({"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","call_id":"c","name":"f"}}),
            ),
            event(
                "message",
                json!({"type":"response.function_call_arguments.delta","output_index":0,"delta":"{\"x\""}),
            ),
            event(
                "message",
                json!({"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":1,"output_tokens":2}}}),
            ),
        ]);
        assert_eq!(error, None);
        assert!(turn.tool_calls.is_empty());
        assert_eq!(turn.finish_reason.as_deref(), Some("incomplete"));
        assert_eq!(turn.usage.map(|u| u.output_tokens), Some(2));
    }

    #[test]
    fn failed_and_error_events_end_with_in_stream_errors() {
        let (turn, _, error) = run(&[event(
            "response.failed",
            json!({"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"boom"}}}),
        )]);
        assert_eq!(turn.finish_reason.as_deref(), Some("failed"));
        assert_eq!(
            turn.error,
            Some((
                "response.failed".into(),
                "boom".into(),
                Some("server_error".into())
            ))
        );
        assert!(error.is_some_and(|e| e.starts_with("InStream")));

        let (turn, _, error) = run(&[event(
            "error",
            json!({"type":"error","code":"ERR_X","message":"bad","param":null}),
        )]);
        assert_eq!(
            turn.error,
            Some(("error".into(), "bad".into(), Some("ERR_X".into())))
        );
        assert!(error.is_some_and(|e| e.starts_with("InStream")));

        // Without an `event:` line, the data's type still says it is an error.
        let (turn, _, _) = run(&[event(
            "message",
            json!({"type":"error","error":{"type":"server_error","message":"down"}}),
        )]);
        assert_eq!(
            turn.error,
            Some(("server_error".into(), "down".into(), None))
        );
    }

    #[test]
    fn truncation_malformed_and_unknown_events() {
        let (_, _, error) = run(&[event(
            "message",
            json!({"type":"response.output_text.delta","delta":"x"}),
        )]);
        assert_eq!(error.as_deref(), Some("Truncated"));

        let (_, _, error) = run(&[SseEvent {
            event: "response.output_text.delta".into(),
            data: "{not json".into(),
        }]);
        assert!(error.is_some_and(|e| e.starts_with("Malformed")));

        let (_, _, error) = run(&[event(
            "message",
            json!({"type":"response.output_text.delta","delta":7}),
        )]);
        assert!(error.is_some_and(|e| e.starts_with("Malformed")));

        // An unknown event with an unexpected shape is skipped; [DONE] changes nothing.
        let (turn, _, error) = run(&[
            event(
                "message",
                json!({"type":"response.future_thing","delta":{"x":1}}),
            ),
            SseEvent {
                event: "message".into(),
                data: "[DONE]".into(),
            },
            event(
                "message",
                json!({"type":"response.output_text.delta","delta":"ok"}),
            ),
            completed(Value::Null),
        ]);
        assert_eq!(error, None);
        assert_eq!(turn.text, "ok");
    }

    fn spec(model: &str) -> BackendSpec {
        BackendSpec {
            wire: WireFormat::OpenAiResponses,
            provider: "openai".into(),
            model: model.into(),
            base_url: "https://api.openai.com/v1/".into(),
            api_key_env: None,
            temperature: Some(0.2),
            top_p: Some(0.9),
            max_tokens: Some(100),
            extra_body: None,
            max_retries: 2,
            options: Default::default(),
        }
    }

    #[test]
    fn request_body_shapes() {
        let request = ChatRequest {
            messages: vec![
                ChatMessage::system("s1"),
                ChatMessage::system("s2"),
                ChatMessage::user("u"),
                ChatMessage::Assistant {
                    content: Some("thinking aloud".into()),
                    reasoning: vec![
                        ReasoningBlock {
                            text: "r".into(),
                            signature: Some("enc".into()),
                        },
                        ReasoningBlock {
                            text: "unsigned".into(),
                            signature: None,
                        },
                    ],
                    tool_calls: vec![ToolCall::new("c1", "f", "")],
                },
                ChatMessage::tool("c1", "result"),
                // Nothing to replay: skipped, reasoning included.
                ChatMessage::Assistant {
                    content: None,
                    reasoning: vec![ReasoningBlock {
                        text: String::new(),
                        signature: Some("dangling".into()),
                    }],
                    tool_calls: Vec::new(),
                },
                ChatMessage::system("late"),
            ],
            tools: vec![ToolSpec {
                name: "f".into(),
                description: "does f".into(),
                parameters: json!({"type": "object"}),
            }],
            tool_choice: ToolChoice::Required,
        };
        let body = request_body(&spec("gpt-4o-mini"), None, &request);
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "instructions": "s1\n\ns2",
                "input": [
                    {"role": "user", "content": "u"},
                    {"type": "reasoning", "encrypted_content": "enc", "summary": []},
                    {"role": "assistant", "content": "thinking aloud"},
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "result"},
                    {"role": "system", "content": "late"},
                ],
                "tools": [{"type": "function", "name": "f", "description": "does f",
                           "parameters": {"type": "object"}, "strict": false}],
                "tool_choice": "required",
                "stream": true,
                "store": false,
                "temperature": 0.2,
                "top_p": 0.9,
                "max_output_tokens": 100,
            })
        );
    }

    #[test]
    fn reasoning_models_options_and_extra_body() {
        let mut reasoning = spec("openai/o3-mini");
        reasoning.options.reasoning_effort = Some("high".into());
        reasoning.options.verbosity = Some("low".into());
        reasoning.options.web_search = true;
        reasoning.options.code_execution = true;
        let body = request_body(&reasoning, None, &ChatRequest::default());
        assert!(body.get("temperature").is_none() && body.get("top_p").is_none());
        assert_eq!(
            body["reasoning"],
            json!({"effort": "high", "summary": "auto"})
        );
        assert_eq!(body["include"], json!([ENCRYPTED_REASONING]));
        assert_eq!(body["text"], json!({"verbosity": "low"}));
        assert_eq!(
            body["tools"],
            json!([{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}])
        );
        assert!(body.get("tool_choice").is_none());

        reasoning.options.reasoning_summary = Some("none".into());
        let body = request_body(&reasoning, None, &ChatRequest::default());
        assert_eq!(body["reasoning"], json!({"effort": "high"}));

        // Chat-style keys from the config loader move to their Responses places.
        let mut extra = Map::new();
        extra.insert("reasoning_effort".into(), json!("minimal"));
        extra.insert("verbosity".into(), json!("high"));
        extra.insert("max_completion_tokens".into(), json!(7));
        extra.insert("reasoning".into(), json!({"summary": "detailed"}));
        extra.insert("include".into(), json!(["web_search_call.action.sources"]));
        extra.insert("seed".into(), json!(1));
        let body = request_body(&spec("gpt-4o"), Some(&extra), &ChatRequest::default());
        assert_eq!(
            body["reasoning"],
            json!({"effort": "minimal", "summary": "detailed"})
        );
        assert_eq!(body["text"], json!({"verbosity": "high"}));
        assert_eq!(body["max_output_tokens"], 7);
        assert_eq!(body["seed"], 1);
        assert!(body.get("reasoning_effort").is_none() && body.get("verbosity").is_none());
        assert_eq!(
            body["include"],
            json!(["web_search_call.action.sources", ENCRYPTED_REASONING])
        );

        // A plain model with no reasoning settings asks for no encrypted reasoning.
        let body = request_body(&spec("gpt-4o"), None, &ChatRequest::default());
        assert!(body.get("reasoning").is_none() && body.get("include").is_none());
    }
}
