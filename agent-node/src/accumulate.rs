//! Folds a stream of [`StreamChunk`]s into the result of one provider call.
//!
//! There is one accumulator for every backend: each wire-format module is responsible for
//! normalising its stream so that folding it here gives what the provider's official SDK would
//! report for the call. That keeps the turn worker free of provider knowledge, and lets the
//! recorded fixtures check every backend against one definition.
//!
//! Rules:
//! - text, reasoning and refusal fragments are concatenated in stream order with no separator;
//!   `reasoning` and `refusal` stay `None` until a fragment arrives;
//! - [`StreamChunk::ToolCallDelta`] is ignored: it exists for live display, and every backend
//!   emits one complete [`StreamChunk::ToolCall`] per call once the call is complete;
//! - a [`StreamChunk::ToolResult`] in a provider's stream means the provider ran that call
//!   itself (the Claude Code CLI's Read, Bash, ...): the call moves from `tool_calls` to
//!   `provider_tool_calls`, so conclave's tool loop never executes it and the workflow never
//!   reads it as a decision;
//! - the last [`StreamChunk::Usage`] wins (backends emit usage that is already cumulative);
//! - the last finish reason and the last in-stream error win;
//! - reasoning is also kept as blocks: [`StreamChunk::ReasoningSignature`] closes the current
//!   block with its signature, so the blocks can be sent back verbatim on the next request
//!   (Anthropic rejects a tool-use continuation whose thinking lost its signature).

use conclave_protocol::{StreamChunk, ToolCall, Usage};

use crate::llm::ReasoningBlock;

/// The accumulated result of one provider call (one streamed response).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnOutput {
    /// Assistant-visible text; empty when the model only called tools.
    pub text: String,
    pub reasoning: Option<String>,
    pub refusal: Option<String>,
    /// Complete tool calls for conclave (workflow and agent tools) in the order the model made
    /// them.
    pub tool_calls: Vec<ToolCall>,
    /// Calls the provider ran itself and reported with their results (shown, not executed).
    pub provider_tool_calls: Vec<ToolCall>,
    /// The provider's raw finish reason; `None` when the stream ended without one (error).
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// An error reported inside the stream: (type, message, code).
    pub error: Option<(String, String, Option<String>)>,
    /// Every reasoning signature in stream order.
    pub reasoning_signatures: Vec<String>,
    /// Reasoning split into blocks; the last one may still be open (no signature yet).
    pub reasoning_blocks: Vec<ReasoningBlock>,
}

impl TurnOutput {
    /// Adds one chunk to the result. Borrowing keeps the caller free to forward the chunk
    /// (for display) without cloning it first.
    pub fn apply(&mut self, chunk: &StreamChunk) {
        match chunk {
            StreamChunk::Content { text } => self.text.push_str(text),
            StreamChunk::Reasoning { text } => {
                self.reasoning.get_or_insert_default().push_str(text);
                match self.reasoning_blocks.last_mut() {
                    Some(open) if open.signature.is_none() => open.text.push_str(text),
                    _ => self.reasoning_blocks.push(ReasoningBlock {
                        text: text.clone(),
                        signature: None,
                    }),
                }
            }
            StreamChunk::ReasoningSignature { signature } => {
                self.reasoning_signatures.push(signature.clone());
                match self.reasoning_blocks.last_mut() {
                    Some(open) if open.signature.is_none() => {
                        open.signature = Some(signature.clone())
                    }
                    _ => self.reasoning_blocks.push(ReasoningBlock {
                        text: String::new(),
                        signature: Some(signature.clone()),
                    }),
                }
            }
            StreamChunk::Refusal { text } => {
                self.refusal.get_or_insert_default().push_str(text);
            }
            StreamChunk::ToolCallDelta { .. } => {}
            StreamChunk::ToolResult { id, .. } => {
                if let Some(at) = self.tool_calls.iter().rposition(|call| call.id == *id) {
                    let call = self.tool_calls.remove(at);
                    self.provider_tool_calls.push(call);
                }
            }
            StreamChunk::ToolCall(call) => self.tool_calls.push(call.clone()),
            StreamChunk::Usage(usage) => self.usage = Some(*usage),
            StreamChunk::Finish { reason } => self.finish_reason = Some(reason.clone()),
            StreamChunk::Error {
                kind,
                message,
                code,
            } => self.error = Some((kind.clone(), message.clone(), code.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_close_reasoning_blocks() {
        let mut out = TurnOutput::default();
        for chunk in [
            StreamChunk::Reasoning { text: "a".into() },
            StreamChunk::Reasoning { text: "b".into() },
            StreamChunk::ReasoningSignature {
                signature: "s1".into(),
            },
            StreamChunk::ReasoningSignature {
                signature: "s2".into(),
            },
            StreamChunk::Reasoning { text: "c".into() },
        ] {
            out.apply(&chunk);
        }
        assert_eq!(out.reasoning.as_deref(), Some("abc"));
        assert_eq!(out.reasoning_signatures, vec!["s1", "s2"]);
        assert_eq!(
            out.reasoning_blocks,
            vec![
                ReasoningBlock {
                    text: "ab".into(),
                    signature: Some("s1".into())
                },
                ReasoningBlock {
                    text: String::new(),
                    signature: Some("s2".into())
                },
                ReasoningBlock {
                    text: "c".into(),
                    signature: None
                },
            ]
        );
    }

    #[test]
    fn folds_text_reasoning_and_tool_calls() {
        let chunks = [
            StreamChunk::Reasoning { text: "th".into() },
            StreamChunk::Reasoning { text: "ink".into() },
            StreamChunk::Content { text: "Hel".into() },
            StreamChunk::Content { text: "lo".into() },
            StreamChunk::ToolCallDelta {
                index: 0,
                id: Some("c1".into()),
                name: Some("f".into()),
                arguments: "{}".into(),
            },
            StreamChunk::ToolCall(ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments: "{}".into(),
                signature: None,
            }),
            StreamChunk::Finish {
                reason: "tool_calls".into(),
            },
            StreamChunk::Usage(Usage {
                input_tokens: 3,
                output_tokens: 4,
            }),
        ];
        let mut out = TurnOutput::default();
        for chunk in &chunks {
            out.apply(chunk);
        }
        assert_eq!(out.text, "Hello");
        assert_eq!(out.reasoning.as_deref(), Some("think"));
        assert_eq!(out.refusal, None);
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(out.usage.map(|u| u.output_tokens), Some(4));
        assert_eq!(out.error, None);
    }

    #[test]
    fn calls_the_provider_ran_are_set_apart_from_calls_to_execute() {
        let mut out = TurnOutput::default();
        for chunk in [
            StreamChunk::ToolCall(ToolCall::new("toolu_1", "Read", r#"{"file_path":"a"}"#)),
            StreamChunk::ToolResult {
                id: "toolu_1".into(),
                name: "Read".into(),
                content: "data".into(),
            },
            StreamChunk::ToolResult {
                id: "unknown".into(),
                name: String::new(),
                content: "orphan".into(),
            },
            StreamChunk::ToolCall(ToolCall::new("call_0", "vote", "{}")),
        ] {
            out.apply(&chunk);
        }
        assert_eq!(out.tool_calls, vec![ToolCall::new("call_0", "vote", "{}")]);
        assert_eq!(
            out.provider_tool_calls,
            vec![ToolCall::new("toolu_1", "Read", r#"{"file_path":"a"}"#)]
        );
    }

    #[test]
    fn keeps_the_last_usage_and_error() {
        let mut out = TurnOutput::default();
        out.apply(&StreamChunk::Usage(Usage {
            input_tokens: 1,
            output_tokens: 1,
        }));
        out.apply(&StreamChunk::Usage(Usage {
            input_tokens: 5,
            output_tokens: 7,
        }));
        out.apply(&StreamChunk::Error {
            kind: "server_error".into(),
            message: "boom".into(),
            code: None,
        });
        assert_eq!(
            out.usage,
            Some(Usage {
                input_tokens: 5,
                output_tokens: 7
            })
        );
        assert_eq!(
            out.error,
            Some(("server_error".into(), "boom".into(), None))
        );
    }
}
