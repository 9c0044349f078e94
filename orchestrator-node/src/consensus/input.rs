//! Everything that can happen to a session, as the coordinator reports it to the machine.

use conclave_protocol::{Decision, TurnId};
use serde::{Deserialize, Serialize};

/// An agent's 0-based position in config order. Agents see only the anonymous number
/// `index + 1` (as in the label `agent{index+1}.{m}`).
pub type AgentIndex = u32;

/// One thing that happened. The coordinator journals every input before handing it to
/// [`Consensus::handle`](super::Consensus::handle); replaying the journaled inputs into a fresh
/// machine rebuilds the same state and the same actions.
///
/// Inputs carry network-originated data: an agent index out of range, a turn that is not the
/// agent's current one or a label that names no answer is recorded as ignored or rejected,
/// never a panic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Begin the session: every live agent gets its first coordination turn.
    Start,
    /// A coordination turn ended with exactly one workflow call.
    Decided {
        agent: AgentIndex,
        turn: TurnId,
        decision: Decision,
        /// The revision the agent says its turn was given (echoed from the turn spec).
        seen_revision: u64,
    },
    /// The presentation turn finished streaming the final answer.
    Presented {
        agent: AgentIndex,
        turn: TurnId,
        content: String,
    },
    /// The agent gave up on this turn after its own retries; the agent is failed.
    TurnFailed {
        agent: AgentIndex,
        turn: TurnId,
        reason: String,
    },
    /// Under the `inject` restart policy, the agent handed the answers of `revision` to its
    /// model at a tool boundary: its turn now decides on that revision.
    Injected {
        agent: AgentIndex,
        turn: TurnId,
        revision: u64,
    },
    /// Under the `inject` restart policy, the agent declined newer answers (no tool call in
    /// flight): its turn gets the configured fallback.
    InjectionDeclined { agent: AgentIndex, turn: TurnId },
    /// The agent is gone (node lost, heartbeats missed, actor dead); it is failed.
    AgentLost { agent: AgentIndex, reason: String },
    /// A failed agent is reachable again; it is live and starts fresh with the current answers.
    AgentRejoined { agent: AgentIndex },
    /// The orchestrator timeout expired: end now with the best available answer.
    Timeout,
    /// The user interrupted (Ctrl-C): end now with the best available answer.
    Interrupted,
    /// A budget cap (cost or tokens) was reached: end now with the best available answer.
    BudgetExhausted { reason: String },
}
