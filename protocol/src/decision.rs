//! What a coordinating agent decides at the end of a turn.

use serde::{Deserialize, Serialize};

use crate::ids::AnswerLabel;

/// The outcome of a coordination turn: one workflow call (or its text-protocol line), or, for
/// a model that gave neither, an abstention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// `new_answer(content)`: the agent offers a new or improved answer.
    NewAnswer { content: String },
    /// `vote(agent_id, reason)`: the agent endorses an existing answer.
    Vote { label: AnswerLabel, reason: String },
    /// The agent made no valid decision after its corrective retries and had no answer to
    /// keep: it sits this revision out. Consensus is then reached among the agents that
    /// decide; a new answer gives it a new turn.
    Abstain { reason: String },
}

impl Decision {
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::NewAnswer { .. } => "new_answer",
            Decision::Vote { .. } => "vote",
            Decision::Abstain { .. } => "abstain",
        }
    }
}

/// How a decision was obtained from the model's turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionHow {
    /// A workflow tool call (`new_answer` / `vote`).
    #[default]
    Tool,
    /// A marked line of the text protocol (`VOTE: agent2.1 — ...`, `NEW ANSWER: ...`).
    Text,
    /// No decision was made: the turn's text was kept as an answer, or the agent abstained.
    Implicit,
}

impl DecisionHow {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionHow::Tool => "tool",
            DecisionHow::Text => "text",
            DecisionHow::Implicit => "implicit",
        }
    }
}
