//! The Chat Completions stream parser: a pure state machine, SSE events in, chunks out (see
//! the parent module's docs for the rules).

use std::collections::BTreeMap;

use conclave_protocol::{StreamChunk, ToolCall, Usage};

use super::wire::{WireChunk, WireDelta, WireToolCall};
use crate::providers::error::{ProviderError, snippet};
use crate::providers::sse::SseEvent;
use crate::providers::stream::{EventParser, Flow, Out, error_fields, push_in_stream_error};

/// The pure state machine behind [`super::ChatStream`]: events in, chunks out. No I/O, so it can be
/// driven directly in tests.
#[derive(Debug, Default)]
pub struct ChatStreamParser {
    /// Tool calls being streamed, by index (a map: hosts may send indices in any order, and
    /// a sorted vector would make a long descending run quadratic).
    calls: BTreeMap<u32, PendingCall>,
    /// Whether a finish reason arrived.
    finished: bool,
}

#[derive(Debug, Default)]
struct PendingCall {
    id: String,
    name: String,
    arguments: String,
}

impl EventParser for ChatStreamParser {
    /// Handles one SSE event.
    fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow {
        if event.event == "error" {
            push_error(&event.data, out);
            return Flow::Done;
        }
        if event.event != "message" {
            tracing::trace!(event = %event.event, "ignoring SSE event");
            return Flow::Continue;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.flush_calls(out);
            return Flow::Done;
        }
        let chunk: WireChunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                out.push_back(Err(ProviderError::Malformed(format!(
                    "chat completion chunk is not valid: {e}; data: {}",
                    snippet(data)
                ))));
                return Flow::Done;
            }
        };
        if chunk.error.as_ref().is_some_and(|e| !e.is_null()) {
            push_error(data, out);
            return Flow::Done;
        }
        for choice in chunk.choices.unwrap_or_default() {
            // conclave asks for one choice; anything else is ignored.
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                self.on_delta(delta, out);
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.flush_calls(out);
                self.finished = true;
                out.push_back(Ok(StreamChunk::Finish { reason }));
            }
        }
        let usage = chunk
            .usage
            .or_else(|| chunk.x_groq.and_then(|extension| extension.usage));
        if let Some(usage) = usage {
            out.push_back(Ok(StreamChunk::Usage(Usage {
                input_tokens: usage.prompt_tokens.unwrap_or(0),
                output_tokens: usage.completion_tokens.unwrap_or(0),
            })));
        }
        Flow::Continue
    }

    /// Handles the end of the body without `[DONE]`.
    fn on_end(&mut self, out: &mut Out) {
        if self.finished {
            self.flush_calls(out);
        } else {
            tracing::debug!(
                pending_tool_calls = self.calls.len(),
                "chat stream ended without finish reason or [DONE]"
            );
            out.push_back(Err(ProviderError::Truncated));
        }
    }
}

impl ChatStreamParser {
    fn on_delta(&mut self, delta: WireDelta, out: &mut Out) {
        let reasoning = delta
            .reasoning_content
            .filter(|r| !r.is_empty())
            .or(delta.reasoning);
        if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
            out.push_back(Ok(StreamChunk::Reasoning { text }));
        }
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            out.push_back(Ok(StreamChunk::Content { text }));
        }
        if let Some(text) = delta.refusal.filter(|t| !t.is_empty()) {
            out.push_back(Ok(StreamChunk::Refusal { text }));
        }
        for fragment in delta.tool_calls.unwrap_or_default() {
            self.on_tool_fragment(fragment, out);
        }
    }

    fn on_tool_fragment(&mut self, fragment: WireToolCall, out: &mut Out) {
        let id = fragment.id.filter(|id| !id.is_empty());
        let (name, arguments) = match fragment.function {
            Some(function) => (
                function.name.filter(|n| !n.is_empty()),
                function.arguments.unwrap_or_default(),
            ),
            None => (None, String::new()),
        };
        let index = match fragment.index {
            Some(index) => index,
            // No index: continue the last call unless this fragment starts a new one.
            None => match self.calls.last_key_value() {
                Some((&last, call)) if id.as_ref().is_none_or(|id| *id == call.id) => last,
                Some((&last, _)) => last.saturating_add(1),
                None => 0,
            },
        };
        let call = self.calls.entry(index).or_default();
        if let Some(id) = &id
            && call.id.is_empty()
        {
            call.id.clone_from(id);
        }
        if let Some(name) = &name {
            // OpenAI sends the name once; some hosts repeat it on every fragment.
            if call.name.is_empty() {
                call.name.clone_from(name);
            } else if *name != call.name {
                call.name.push_str(name);
            }
        }
        call.arguments.push_str(&arguments);
        out.push_back(Ok(StreamChunk::ToolCallDelta {
            index,
            id,
            name,
            arguments,
        }));
    }

    fn flush_calls(&mut self, out: &mut Out) {
        for (index, call) in std::mem::take(&mut self.calls) {
            let id = if call.id.is_empty() {
                tracing::debug!(index, "tool call without id; naming it");
                format!("call_{index}")
            } else {
                call.id
            };
            out.push_back(Ok(StreamChunk::ToolCall(ToolCall {
                id,
                name: call.name,
                arguments: call.arguments,
                signature: None,
            })));
        }
    }
}

/// Emits the error of an `error` event or an error object, then ends the stream with it.
fn push_error(data: &str, out: &mut Out) {
    let (kind, message, code) = error_fields(data, "type");
    push_in_stream_error(kind, message, code, out);
}
