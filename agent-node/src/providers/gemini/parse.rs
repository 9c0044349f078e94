//! The Gemini stream parser: a pure state machine, SSE events in, chunks out (see the parent
//! module's docs for the rules).

use conclave_protocol::{StreamChunk, ToolCall, Usage};

use super::wire::{WireChunk, WirePart};
use crate::providers::error::{ProviderError, snippet};
use crate::providers::sse::SseEvent;
use crate::providers::stream::{
    EventParser, Flow, Out, error_fields, error_object_fields, push_in_stream_error,
};

/// The pure state machine behind [`super::GeminiStream`]: events in, chunks out. No I/O, so it can
/// be driven directly in tests.
#[derive(Debug, Default)]
pub struct GeminiStreamParser {
    /// Function calls seen so far: the next call's index and generated id.
    calls: u32,
    /// The last `finishReason`.
    finish_reason: Option<String>,
    /// The last `usageMetadata` (it is cumulative).
    usage: Option<Usage>,
}

impl EventParser for GeminiStreamParser {
    /// Handles one SSE event.
    fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow {
        if event.event == "error" {
            self.flush_usage(out);
            push_error(error_fields(&event.data, "status"), out);
            return Flow::Done;
        }
        if event.event != "message" {
            tracing::trace!(event = %event.event, "ignoring SSE event");
            return Flow::Continue;
        }
        let data = event.data.trim();
        if data.is_empty() {
            return Flow::Continue;
        }
        let chunk: WireChunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                self.flush_usage(out);
                out.push_back(Err(ProviderError::Malformed(format!(
                    "Gemini stream chunk is not valid: {e}; data: {}",
                    snippet(data)
                ))));
                return Flow::Done;
            }
        };
        if let Some(usage) = &chunk.usage_metadata {
            self.usage = Some(Usage {
                input_tokens: usage.prompt_token_count.unwrap_or(0),
                output_tokens: usage.candidates_token_count.unwrap_or(0),
            });
        }
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            self.flush_usage(out);
            push_error(error_object_fields(&error, "status"), out);
            return Flow::Done;
        }
        let candidates = chunk.candidates.unwrap_or_default();
        if candidates.is_empty()
            && let Some(reason) = chunk
                .prompt_feedback
                .and_then(|feedback| feedback.block_reason)
                .filter(|r| !r.is_empty())
        {
            self.flush_usage(out);
            push_error(
                (
                    "prompt_blocked".to_owned(),
                    format!(
                        "Gemini blocked the prompt ({reason}); rephrase the task or check the safety settings"
                    ),
                    Some(reason),
                ),
                out,
            );
            return Flow::Done;
        }
        // conclave asks for one candidate; any other is ignored.
        if let Some(candidate) = candidates.into_iter().find(|c| c.index.unwrap_or(0) == 0) {
            let parts = candidate
                .content
                .and_then(|content| content.parts)
                .unwrap_or_default();
            for part in parts {
                self.on_part(part, out);
            }
            if let Some(reason) = candidate.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        Flow::Continue
    }

    /// Handles the end of the body: the finish reason and usage, or truncation.
    fn on_end(&mut self, out: &mut Out) {
        match self.finish_reason.take() {
            Some(reason) => {
                out.push_back(Ok(StreamChunk::Finish { reason }));
                self.flush_usage(out);
            }
            None => {
                tracing::debug!(
                    calls = self.calls,
                    "Gemini stream ended without a finishReason"
                );
                self.flush_usage(out);
                out.push_back(Err(ProviderError::Truncated));
            }
        }
    }
}

impl GeminiStreamParser {
    fn flush_usage(&mut self, out: &mut Out) {
        if let Some(usage) = self.usage.take() {
            out.push_back(Ok(StreamChunk::Usage(usage)));
        }
    }

    fn on_part(&mut self, part: WirePart, out: &mut Out) {
        if let Some(text) = part.text.filter(|t| !t.is_empty()) {
            if part.thought == Some(true) {
                out.push_back(Ok(StreamChunk::Reasoning { text }));
            } else {
                out.push_back(Ok(StreamChunk::Content { text }));
            }
        }
        let signature = part.thought_signature.filter(|s| !s.is_empty());
        if let Some(signature) = &signature {
            out.push_back(Ok(StreamChunk::ReasoningSignature {
                signature: signature.clone(),
            }));
        }
        if let Some(call) = part.function_call {
            let index = self.calls;
            self.calls = self.calls.saturating_add(1);
            let id = call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("call_{index}"));
            let name = call.name.unwrap_or_default();
            let arguments = match call.args {
                Some(args) if !args.is_null() => args.to_string(),
                _ => "{}".to_owned(),
            };
            out.push_back(Ok(StreamChunk::ToolCallDelta {
                index,
                id: Some(id.clone()),
                name: Some(name.clone()),
                arguments: arguments.clone(),
            }));
            out.push_back(Ok(StreamChunk::ToolCall(ToolCall {
                id,
                name,
                arguments,
                signature,
            })));
        }
        if part.executable_code.is_some() || part.code_execution_result.is_some() {
            tracing::trace!("ignoring a code execution part (the model reports results in text)");
        }
    }
}

/// Emits Google's error (status, message, code), then ends the stream with it.
fn push_error((kind, message, code): (String, String, Option<String>), out: &mut Out) {
    push_in_stream_error(kind, message, code, out);
}
