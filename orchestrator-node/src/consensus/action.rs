//! What the machine asks the coordinator to do, what it records, and how a session ends.

use std::sync::Arc;

use conclave_protocol::{
    AnswerLabel, CastVote, LabeledAnswer, TaskSpec, TurnId, TurnMode, TurnSpec,
};
use serde::{Deserialize, Serialize};

use super::input::AgentIndex;

/// One instruction for the coordinator, in the order it must be carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Send the agent a new turn. The coordinator adds the task and the agent's anonymous
    /// number ([`TurnPlan::into_spec`]).
    StartTurn {
        agent: AgentIndex,
        spec_parts: TurnPlan,
    },
    /// Abandon this turn: drop its provider stream. Anything it reports later is ignored.
    CancelTurn { agent: AgentIndex, turn: TurnId },
    /// Restart policy `inject`: hand the turn in flight (`spec_parts.turn`) newer answers for
    /// its next tool boundary. The turn keeps running; the agent reports whether they arrived.
    InjectAnswers {
        agent: AgentIndex,
        spec_parts: TurnPlan,
    },
    /// Something worth journaling, logging and showing.
    Record(Event),
    /// The session is over. Emitted exactly once, always as the last action of its batch.
    Finish(Outcome),
}

/// The consensus-owned part of a [`TurnSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnPlan {
    pub turn: TurnId,
    pub mode: TurnMode,
    /// The current answers (each agent's latest), in label order. Shared, not copied: the same
    /// `Arc` goes to every agent of a revision.
    pub answers: Arc<[LabeledAnswer]>,
    /// The revision these answers belong to; the agent echoes it back as `seen_revision`.
    pub revision: u64,
    /// False when the agent is at its answer limit or the session at its cap (always false for
    /// a presentation).
    pub may_answer: bool,
    /// For presentations: the votes that made the answer win. Empty for coordination turns.
    pub votes: Arc<[CastVote]>,
}

impl TurnPlan {
    /// The full turn spec for `agent`, which sees itself as `agent{agent+1}`.
    pub fn into_spec(self, task: Arc<TaskSpec>, agent: AgentIndex) -> TurnSpec {
        TurnSpec {
            turn: self.turn,
            mode: self.mode,
            task,
            answers: self.answers,
            revision: self.revision,
            may_answer: self.may_answer,
            votes: self.votes,
            self_number: agent.saturating_add(1),
            snapshots: Vec::new().into(),
        }
    }
}

/// A fact about the session for the journal, the logs and the displays. Events never drive the
/// machine (only inputs do), so they may be extended freely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A new answer became current; every vote is cleared and everyone re-decides.
    AnswerAccepted {
        agent: AgentIndex,
        turn: TurnId,
        label: AnswerLabel,
        /// The new revision (the number of answers accepted so far).
        revision: u64,
        seen_revision: u64,
        /// Decided on an older revision (possible with the `Finish` restart policy); accepted
        /// anyway because it is new work.
        stale: bool,
    },
    /// A new answer over a cap (or with a bogus `seen_revision`); counts toward
    /// `max_rejected_decisions`.
    AnswerRejected {
        agent: AgentIndex,
        turn: TurnId,
        reason: String,
        /// The agent's rejected decisions so far, this one included.
        rejections: u32,
    },
    /// A valid vote for a current answer, counted at `revision`.
    VoteAccepted {
        agent: AgentIndex,
        turn: TurnId,
        label: AnswerLabel,
        revision: u64,
        reason: String,
    },
    /// The agent made no decision (no valid vote after its corrective retries, and no answer
    /// to keep): it sits out this revision. Consensus is reached among the agents that decide.
    Abstained {
        agent: AgentIndex,
        turn: TurnId,
        revision: u64,
        reason: String,
    },
    /// Restart policy `inject`: the agent's turn in flight took newer answers at a tool
    /// boundary and now decides on `revision` instead of `from_revision`.
    AnswersInjected {
        agent: AgentIndex,
        turn: TurnId,
        from_revision: u64,
        revision: u64,
    },
    /// Restart policy `inject`: the agent's turn had no tool call in flight and declined the
    /// newer answers; `fallback` is what happened to it (`Cancel`: cancelled and restarted).
    InjectionDeclined {
        agent: AgentIndex,
        turn: TurnId,
        fallback: conclave_protocol::config::RestartPolicy,
    },
    /// A vote decided on an older revision; not the agent's fault, it simply re-decides.
    VoteDiscarded {
        agent: AgentIndex,
        turn: TurnId,
        label: AnswerLabel,
        seen_revision: u64,
        revision: u64,
        why: String,
    },
    /// A vote for a label that is not a current answer, or with a `seen_revision` the agent was
    /// never sent; counts toward `max_rejected_decisions`.
    VoteRejected {
        agent: AgentIndex,
        turn: TurnId,
        label: AnswerLabel,
        seen_revision: u64,
        revision: u64,
        why: String,
        rejections: u32,
    },
    /// The agent was given a new coordination turn. `old_turn` is the turn that was cancelled
    /// or that just ended; `None` when the agent had voted and its vote was cleared.
    TurnRestarted {
        agent: AgentIndex,
        old_turn: Option<TurnId>,
        new_turn: TurnId,
        reason: String,
    },
    /// The agent no longer takes part. Its answers stay valid and votable; its vote (if any)
    /// still counts.
    AgentFailed { agent: AgentIndex, reason: String },
    /// A failed agent is back; it starts fresh with the current answers.
    AgentRejoined { agent: AgentIndex },
    /// An input that changed nothing: a late message from a cancelled or finished turn, an
    /// unknown agent, a second `Start`, ...
    InputIgnored {
        agent: Option<AgentIndex>,
        turn: Option<TurnId>,
        why: String,
    },
    /// Every live agent has voted or abstained; `label` (by `winner`) has the most votes. With
    /// no vote at all (everyone abstained), the earliest current answer wins with 0 votes.
    ConsensusReached {
        winner: AgentIndex,
        label: AnswerLabel,
        votes: u32,
    },
    /// The winner could not present; the winning answer is used as it stands.
    PresentationFailed {
        agent: AgentIndex,
        turn: TurnId,
        reason: String,
    },
    /// The orchestrator timeout expired.
    TimedOut,
    /// The user interrupted the session.
    Interrupted,
    /// A budget cap was reached; `reason` says which and by how much.
    BudgetExhausted { reason: String },
    /// No live agent is left.
    AllAgentsFailed,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndReason {
    /// Every live agent voted (the presentation may still have failed: then `presented_by` is
    /// `None` and the winning answer is used as it stands).
    Consensus,
    Timeout,
    AllAgentsFailed,
    Interrupted,
    /// `max_cost_usd` or `max_total_tokens` was reached.
    BudgetExhausted,
}

/// How a session ended, for the final report and the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub reason: EndReason,
    /// The winning answer and its author; `None` when no answer was ever accepted.
    pub winner: Option<(AgentIndex, AnswerLabel)>,
    /// What to show the user: the presentation, or else the winning answer's content.
    pub final_answer: Option<Arc<str>>,
    /// The agent whose presentation turn produced `final_answer`.
    pub presented_by: Option<AgentIndex>,
    /// Every vote counted at the end (voters that failed after voting included), in agent order.
    pub votes: Vec<CastVote>,
}
