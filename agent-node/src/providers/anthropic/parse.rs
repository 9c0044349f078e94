//! The Messages stream parser: a pure state machine, SSE events in, chunks out (see the
//! parent module's docs for the rules).

use std::collections::BTreeMap;

use conclave_protocol::{StreamChunk, ToolCall, Usage};
use serde_json::Value;

use super::REDACTED_THINKING_PREFIX;
use super::wire::{WireBlock, WireDelta, WireEvent};
use crate::providers::error::{ProviderError, snippet};
use crate::providers::sse::SseEvent;
use crate::providers::stream::{EventParser, Flow, Out, error_fields, push_in_stream_error};

/// The pure state machine behind [`super::AnthropicStream`]: events in, chunks out. No I/O, so it
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

impl EventParser for AnthropicStreamParser {
    /// Handles one SSE event.
    fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow {
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
    fn on_end(&mut self, out: &mut Out) {
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
}

impl AnthropicStreamParser {
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
    /// Anthropic's errors carry no code.
    fn on_error(&mut self, data: &str, out: &mut Out) {
        let (kind, message, _) = error_fields(data, "type");
        if !self.open.is_empty() {
            tracing::debug!(
                open_blocks = self.open.len(),
                "dropping unfinished content blocks"
            );
            self.open.clear();
        }
        self.push_usage(out);
        push_in_stream_error(kind, message, None, out);
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
