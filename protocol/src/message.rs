//! Coordinator ⇄ agent messages and the envelope every one of them travels in.
//!
//! Every message carries the session id, the sender's name, a per-sender sequence number and a
//! W3C trace-context map. The sequence number makes delivery idempotent: a receiver keeps a
//! [`SequenceTracker`] and drops anything it has already seen from that sender, so a message
//! re-sent after a reconnect is never applied twice.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunk::StreamChunk;
use crate::config::WorkflowMode;
use crate::decision::{Decision, DecisionHow};
use crate::ids::{AnswerLabel, SessionId, TurnId};
use crate::trace::TraceContext;

/// The wrapper around every cross-actor message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub session: SessionId,
    /// The sending actor: `coordinator`, or the agent's configured id.
    pub sender: String,
    /// Per-sender sequence number, starting at 1 and growing by one per message.
    pub seq: u64,
    pub trace: TraceContext,
    pub body: T,
}

/// Whether a turn coordinates (must end in `new_answer` or `vote`) or presents the final
/// answer (plain streamed text, no workflow tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TurnMode {
    Coordinate,
    Present,
}

/// The user's task, as every agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The question of this session.
    pub question: String,
    /// Earlier exchanges of a multi-turn conversation, oldest first: (user, final answer).
    pub history: Vec<(String, String)>,
}

/// An answer as agents see it: anonymous label and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabeledAnswer {
    pub label: AnswerLabel,
    pub content: Arc<str>,
}

/// A vote as the presenter sees it: `voter` is the anonymous agent number (`agent{voter}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CastVote {
    pub voter: u32,
    pub label: AnswerLabel,
    pub reason: String,
}

/// Everything an agent needs to run one turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnSpec {
    pub turn: TurnId,
    pub mode: TurnMode,
    pub task: Arc<TaskSpec>,
    /// The current answers (each agent's latest), in label order.
    pub answers: Arc<[LabeledAnswer]>,
    /// The revision these answers belong to; echoed back as `seen_revision`.
    pub revision: u64,
    /// False when the agent has reached its answer limit (or the session its cap): only
    /// `vote` is offered.
    pub may_answer: bool,
    /// For `Present` turns: the votes that made this agent's answer win.
    pub votes: Arc<[CastVote]>,
    /// The anonymous number of the receiving agent (`agent{self_number}`), so it can recognise
    /// its own answers among the labels.
    pub self_number: u32,
    /// The workspace snapshots of the current answers that have one, in label order: an agent
    /// with a workspace shows them in its peers directory (`<peers_dir>/agent1.1/...`).
    pub snapshots: Arc<[crate::snapshot::PeerSnapshot]>,
}

/// Coordinator → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorCommand {
    StartTurn(TurnSpec),
    /// Abandon this turn now; drop its provider stream.
    Cancel {
        turn: TurnId,
    },
    /// The session is over; stop all work and exit.
    Stop,
    /// Newer answers for a turn in flight (restart policy `inject`): the same turn id with the
    /// current answers, revision and `may_answer`. The agent hands them to the model at its
    /// next tool boundary and reports [`TurnEvent::AnswersInjected`]; from then on the turn
    /// decides on the new revision. A turn that reaches no tool boundary ignores it.
    Inject(TurnSpec),
}

/// What went wrong with a turn, coarse enough to keep telemetry cardinality bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TurnErrorKind {
    /// The provider kept failing after all retries (HTTP status, in-stream error, bad stream).
    Provider,
    /// Missing or rejected credentials; retrying will not help.
    Auth,
    /// The backend configuration cannot work (unsupported type, bad URL, ...).
    Config,
    /// The turn exceeded its time limit.
    Timeout,
    /// The provider went silent past the stall timeout.
    Stalled,
    /// The model never produced a valid workflow call within the corrective retries.
    InvalidDecision,
    /// The turn worker crashed (panicked) more often than the restart limit allows.
    Crashed,
}

impl TurnErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnErrorKind::Provider => "provider",
            TurnErrorKind::Auth => "auth",
            TurnErrorKind::Config => "config",
            TurnErrorKind::Timeout => "timeout",
            TurnErrorKind::Stalled => "stalled",
            TurnErrorKind::InvalidDecision => "invalid_decision",
            TurnErrorKind::Crashed => "crashed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnError {
    pub kind: TurnErrorKind,
    pub message: String,
}

/// Things that happened inside a turn that the journal should record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TurnEvent {
    /// A provider call failed and will be retried after `wait_ms`.
    ProviderRetry {
        attempt: u32,
        wait_ms: u64,
        reason: String,
    },
    /// The model's turn ended without exactly one valid workflow call; it is asked again.
    CorrectiveRetry { attempt: u32, problem: String },
    /// The turn worker crashed and was restarted.
    WorkerRestart { attempt: u32, reason: String },
    /// The agent (workflow `auto`) ignored the workflow tools; from now on, for the rest of
    /// the session, it decides through the text protocol.
    WorkflowSwitched { to: WorkflowMode, reason: String },
    /// The agent ran one of its tools (an MCP tool) for the model: what was called, how long it
    /// took, how big the result was, the error if any, and the start of the result the model
    /// read (capped at [`TOOL_RESULT_JOURNAL_BYTES`]).
    ToolCalled {
        report: crate::tools::ToolCallReport,
        result: String,
    },
    /// Newer answers (sent with [`CoordinatorCommand::Inject`]) reached the model at a tool
    /// boundary: the turn now decides on `revision`. `injection` counts the turn's injections
    /// (1, 2, ...); `labels` are the answers that were new to the model.
    AnswersInjected {
        revision: u64,
        injection: u32,
        labels: Vec<String>,
    },
    /// Newer answers (revision `revision`) arrived while the turn could reach no tool boundary
    /// (no tools of its own, the text protocol, or deciding already): the coordinator applies the injection fallback.
    InjectionDeclined { revision: u64 },
    /// The peers directory could not be brought up to date with the current answers'
    /// snapshots (a snapshot could not be fetched or unpacked); the turn goes on without them.
    PeerSnapshotsUnavailable { reason: String },
}

/// How much of a tool's result a [`TurnEvent::ToolCalled`] carries (the journal's copy; the
/// model gets up to the agent's `max_tool_result_bytes`).
pub const TOOL_RESULT_JOURNAL_BYTES: usize = 2048;

/// Agent → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentReport {
    Chunk {
        turn: TurnId,
        chunk: StreamChunk,
    },
    /// A coordination turn ended in a decision made while looking at `seen_revision`.
    Decided {
        turn: TurnId,
        decision: Decision,
        seen_revision: u64,
        /// How the decision was read from the model's turn.
        how: DecisionHow,
    },
    /// A presentation turn finished; `content` is the final answer text.
    Presented {
        turn: TurnId,
        content: String,
    },
    /// The turn could not be completed; the agent has given up on it.
    TurnFailed {
        turn: TurnId,
        error: TurnError,
    },
    TurnEvent {
        turn: TurnId,
        event: TurnEvent,
    },
    /// The workspace snapshot of the answer this turn is about to submit: its manifest. The
    /// files' bytes follow as [`AgentReport::SnapshotChunk`]s, then the `Decided` report with
    /// the `new_answer` (see `crate::snapshot`).
    SnapshotBegin {
        turn: TurnId,
        manifest: crate::snapshot::SnapshotManifest,
    },
    /// Bytes of the snapshot begun for `turn`, at `offset` in the concatenation of its files.
    SnapshotChunk {
        turn: TurnId,
        offset: u64,
        data: Vec<u8>,
    },
}

/// Drops duplicate messages: remembers the highest sequence number seen per sender.
///
/// Senders number their messages 1, 2, 3, ... on an ordered channel, so anything at or below
/// the highest number already seen is a duplicate (a re-send after reconnect).
#[derive(Debug, Default, Clone)]
pub struct SequenceTracker {
    highest: HashMap<String, u64>,
}

impl SequenceTracker {
    /// Returns true if the message is new and should be applied.
    pub fn accept(&mut self, sender: &str, seq: u64) -> bool {
        match self.highest.get_mut(sender) {
            Some(high) if seq <= *high => false,
            Some(high) => {
                *high = seq;
                true
            }
            None => {
                self.highest.insert(sender.to_owned(), seq);
                true
            }
        }
    }

    /// Forget a sender (it restarted from scratch and numbers from 1 again).
    pub fn reset(&mut self, sender: &str) {
        self.highest.remove(sender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_per_sender() {
        let mut seen = SequenceTracker::default();
        assert!(seen.accept("a", 1));
        assert!(seen.accept("a", 2));
        assert!(!seen.accept("a", 2));
        assert!(!seen.accept("a", 1));
        assert!(seen.accept("b", 1));
        assert!(seen.accept("a", 5));
        assert!(!seen.accept("a", 4));
        seen.reset("a");
        assert!(seen.accept("a", 1));
    }
}
