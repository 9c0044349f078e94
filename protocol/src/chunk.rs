//! The one normalised shape of streamed provider output. Every backend, whatever its wire
//! format, produces these, and agents forward them to the coordinator for display and
//! accounting.

use serde::{Deserialize, Serialize};

/// Token counts reported by a provider for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// Adds `other`, saturating: the counts come from providers and journals, and a bogus
    /// huge count must not panic (debug builds check overflow; found by fuzzing resume).
    pub fn add(&mut self, other: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// A complete tool call. `arguments` is the raw JSON text exactly as the model produced it
/// (it may be invalid JSON; callers decide how to treat that).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
    /// An opaque token the provider attached to the call and wants back when the call is
    /// replayed in a later request (Gemini's `thoughtSignature` on a `functionCall` part).
    pub signature: Option<String>,
}

impl ToolCall {
    /// A call without a provider signature.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
            signature: None,
        }
    }
}

/// One piece of a streamed turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamChunk {
    /// Assistant-visible text.
    Content { text: String },
    /// Reasoning / thinking text, where the provider exposes it.
    Reasoning { text: String },
    /// Closes the current reasoning block with the provider's opaque signature, which must be
    /// sent back with the block for multi-turn tool use to stay valid (Anthropic thinking
    /// `signature`, Gemini `thoughtSignature` on a text part, Responses `encrypted_content`).
    ReasoningSignature { signature: String },
    /// Refusal text (OpenAI `delta.refusal`).
    Refusal { text: String },
    /// A fragment of a tool call being streamed. `index` identifies the call within the turn;
    /// `id` and `name` arrive on the first fragment of a call.
    ToolCallDelta {
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    /// A tool call, complete.
    ToolCall(ToolCall),
    /// The result of executing a tool.
    ToolResult {
        id: String,
        name: String,
        content: String,
    },
    /// Token usage for the call.
    Usage(Usage),
    /// The provider's raw finish reason (`stop`, `tool_calls`, `length`, ...).
    Finish { reason: String },
    /// An error reported inside the stream (after HTTP 200).
    Error {
        kind: String,
        message: String,
        code: Option<String>,
    },
}
