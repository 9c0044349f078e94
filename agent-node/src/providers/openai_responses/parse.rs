//! The Responses stream parser: a pure state machine, SSE events in, chunks out (see the
//! parent module's docs for the rules).

use std::collections::HashMap;

use conclave_protocol::{StreamChunk, ToolCall, Usage};
use serde_json::Value;

use super::wire::{TypeOnly, WireEvent, WireItem, WireResponse};
use crate::providers::error::{ProviderError, snippet};
use crate::providers::sse::SseEvent;
use crate::providers::stream::{EventParser, Flow, Out, error_fields, push_in_stream_error};

/// The pure state machine behind [`super::ResponsesStream`]: events in, chunks out. No I/O, so it can
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

impl EventParser for ResponsesStreamParser {
    /// Handles one SSE event.
    fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow {
        let data = event.data.trim();
        if event.event == "error" {
            push_error(data, out);
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
                    push_error(data, out);
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
                push_error(data, out);
                return Flow::Done;
            }
            other => tracing::trace!(event = other, "ignoring responses event"),
        }
        Flow::Continue
    }

    /// Handles the end of the body.
    fn on_end(&mut self, out: &mut Out) {
        if !self.finished {
            tracing::debug!(
                items = self.items.len(),
                "responses stream ended without response.completed"
            );
            out.push_back(Err(ProviderError::Truncated));
        }
    }
}

impl ResponsesStreamParser {
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

/// Emits the error of an `error` event or a failed response, then ends the stream with it.
fn push_error(data: &str, out: &mut Out) {
    let (kind, message, code) = error_fields(data, "type");
    push_in_stream_error(kind, message, code, out);
}
