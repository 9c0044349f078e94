//! Provider-neutral request types for one LLM call.
//!
//! A turn worker builds a [`ChatRequest`] once and hands it to whichever backend the agent was
//! configured with; each module under [`crate::providers`] translates it to its own wire format.
//! Keeping the request neutral means the consensus code, the workflow tools and the tool loop
//! never know which provider they talk to.

use conclave_protocol::ToolCall;

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatMessage {
    /// Instructions that frame the whole conversation.
    System { content: String },
    /// What the user (or the coordinator, speaking for the user) says.
    User { content: String },
    /// An assistant turn; `tool_calls` may be empty. `reasoning` holds the turn's reasoning
    /// blocks with their provider signatures, for backends that need them replayed (Anthropic
    /// thinking, Responses encrypted reasoning); other backends ignore it.
    Assistant {
        content: Option<String>,
        tool_calls: Vec<ToolCall>,
        reasoning: Vec<ReasoningBlock>,
    },
    /// The result for one tool call of the preceding assistant message. `is_error` says the
    /// call failed (unknown tool, bad arguments, the tool's own error, a timeout): Anthropic
    /// sends it as `is_error: true` on the `tool_result` block; the other wire formats have
    /// no such flag, and the text already says what went wrong.
    Tool {
        call_id: String,
        content: String,
        is_error: bool,
    },
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::System {
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::User {
            content: content.into(),
        }
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::Assistant {
            content: Some(content.into()),
            tool_calls: Vec::new(),
            reasoning: Vec::new(),
        }
    }

    /// The successful result of the tool call `call_id`.
    pub fn tool(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self::Tool {
            call_id: call_id.into(),
            content: content.into(),
            is_error: false,
        }
    }

    /// The result of the tool call `call_id` when the call failed; `content` says why.
    pub fn tool_error(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self::Tool {
            call_id: call_id.into(),
            content: content.into(),
            is_error: true,
        }
    }
}

/// One block of a model's reasoning with the opaque signature its provider attached.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasoningBlock {
    pub text: String,
    pub signature: Option<String>,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    /// Shown to the model; this is how it decides when to call the tool.
    pub description: String,
    /// The JSON schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// Whether the model must, may or must not call a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ToolChoice {
    /// The model decides (the provider default).
    #[default]
    Auto,
    /// The model must call at least one tool (coordination turns need a workflow call).
    Required,
    /// Tools are described but may not be called.
    None,
}

impl ToolChoice {
    /// The name every OpenAI-style API uses for this choice.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolChoice::Auto => "auto",
            ToolChoice::Required => "required",
            ToolChoice::None => "none",
        }
    }
}

/// Everything one streaming call needs besides the backend settings (model, sampling, URL),
/// which come from the agent's [`conclave_protocol::config::BackendSpec`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Tools offered to the model; empty means none (the field is then left out of the request).
    pub tools: Vec<ToolSpec>,
    /// Ignored when `tools` is empty.
    pub tool_choice: ToolChoice,
}
