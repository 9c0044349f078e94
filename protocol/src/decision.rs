//! What a coordinating agent decides at the end of a turn.

use serde::{Deserialize, Serialize};

use crate::ids::AnswerLabel;

/// The outcome of a coordination turn: exactly one workflow tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// `new_answer(content)`: the agent offers a new or improved answer.
    NewAnswer { content: String },
    /// `vote(agent_id, reason)`: the agent endorses an existing answer.
    Vote { label: AnswerLabel, reason: String },
}

impl Decision {
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::NewAnswer { .. } => "new_answer",
            Decision::Vote { .. } => "vote",
        }
    }
}
