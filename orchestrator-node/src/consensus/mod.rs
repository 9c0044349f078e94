//! The pure consensus state machine: how several agents converge on one answer.
//!
//! The coordinator actor feeds [`Input`]s (agent decisions, failures, timeouts) into a
//! [`Consensus`] and carries out the [`Action`]s it returns (start or cancel turns, journal
//! [`Event`]s, finish with an [`Outcome`]). The machine does no I/O, reads no clock, draws no
//! random numbers and never iterates a hash map, so replaying a session's journaled inputs into
//! a fresh machine reproduces the same state and the same actions: that is how a crashed session
//! is resumed.
//!
//! # Rules, and the interpretations chosen where the design is silent
//!
//! **Answers and labels.** Agent `k`'s (`k` = index + 1) `m`-th *accepted* answer is labelled
//! `agent{k}.{m}`. The *current answers* are each agent's latest accepted answer, in label
//! (config) order. `revision` counts accepted answers, starting at 0.
//!
//! **Turns.** Turn ids are allocated here, strictly increasing over the whole session (the
//! presentation turn included). After every input, each live agent, while coordinating, has
//! either a counted vote or exactly one in-flight turn, never both. A report (`Decided`,
//! `Presented`, `TurnFailed`) for a turn that is not the agent's in-flight turn (a cancelled
//! turn, a duplicate, an unknown agent, a failed agent) is ignored: it changes no state and only
//! records [`Event::InputIgnored`].
//!
//! **Start.** Every live agent gets a `Coordinate` turn at revision 0 with no answers. Agents
//! lost before `Start` get none; if none are left the session ends at once (`AllAgentsFailed`).
//!
//! **New answer.** Refused ([`Event::AnswerRejected`]) when the agent already has
//! `max_new_answers_per_agent` accepted answers (with no limit: `u32::MAX`, so labels cannot
//! overflow) or the session has accepted `max_total_answers`. Otherwise accepted, even when
//! decided on an older revision (`stale: true`, possible under [`RestartPolicy::Finish`]): it is
//! new work. Accepting bumps `revision`, clears every vote, and every live agent must decide
//! again with the new answers: the author and every agent without an in-flight turn get a new
//! turn ([`Event::TurnRestarted`]); an in-flight turn (necessarily older now) is cancelled and
//! restarted under `Cancel`, or left to finish under `Finish`.
//!
//! **Vote.** The machine knows which revision each turn was given, and that, not the agent's
//! word, decides staleness. A vote whose turn was given an older revision is discarded
//! ([`Event::VoteDiscarded`], not the agent's fault) and the agent restarted. A vote for a label
//! that is not a current answer is rejected ([`Event::VoteRejected`]). Deviation from the plain
//! "`seen_revision > revision` is invalid" rule: any `seen_revision` that differs from the
//! revision the turn was given is treated as invalid (rejected), for votes and answers alike,
//! since a well-behaved agent only echoes what it was sent.
//!
//! **Abstention.** An agent whose turn ended without a decision (a model that neither called
//! the workflow tools nor wrote a decision line, and had no answer to keep; see the agent
//! node's turn worker) reports [`Decision::Abstain`](conclave_protocol::Decision). A current
//! abstention ([`Event::Abstained`]) counts like a vote for ending the round but for no
//! answer; a stale one (turn given an older revision) restarts the agent like a stale vote. A
//! new answer clears abstentions with the votes. When every live agent has voted or abstained
//! and nobody voted, the earliest current answer wins with 0 votes, the same "no votes" rule as
//! at a timeout: a session in which any agent wrote an answer never ends without one.
//!
//! **Rejections.** Each rejected decision counts toward the agent's rejections; an agent whose
//! rejections exceed `max_rejected_decisions` is failed, otherwise it is restarted (with
//! `may_answer: false` when it is at a cap). `may_answer` in every coordination turn says whether
//! a new answer would be accepted if it were decided now.
//!
//! **Failure.** `TurnFailed` (for the in-flight turn) and `AgentLost` fail the agent. Its
//! in-flight turn is dropped (`AgentLost` also emits [`Action::CancelTurn`] for it, in case the
//! agent is still running); its answers stay current and votable, and a vote it cast before
//! failing keeps counting, both for consensus and at the end: it was a valid judgement of the
//! current answers, and dropping it would let a crash change the result. Failed agents never
//! block consensus; after every failure consensus is checked again.
//!
//! **Rejoin.** A failed agent that rejoins is live again with its rejection count reset. While
//! coordinating it starts fresh: its old vote is removed and it gets a turn with the current
//! answers. While presenting it only becomes live (its vote stands, no turn). Before `Start`
//! it simply takes part from the start. Rejoining a live agent is ignored.
//!
//! **Consensus.** Reached when every live agent has a counted vote (there is then at least one
//! answer). The winner is the current answer with the most counted votes; a tie goes to the
//! answer whose author is earliest in config order. If presentation is not skipped and the
//! winner's author is live, it gets a `Present` turn (current answers, the counted votes,
//! `may_answer: false`) and its `Presented` content is the final answer; if that turn fails or
//! the agent is lost, the session ends with the winning answer as it stands (reason still
//! `Consensus`, `presented_by: None`). If the author is failed or presentation is skipped, the
//! session ends at once with the winning answer.
//!
//! **Ending early.** `Timeout` and `Interrupted` end the session at once, without a
//! presentation, cancelling every in-flight turn. The answer is the best available: while
//! presenting, the consensus winner; otherwise the plurality of counted votes (same tie-break);
//! with no votes, the current answer accepted earliest ("the first answer wins"); with no
//! answers, no winner. When every agent has failed the session ends the same way with reason
//! `AllAgentsFailed`.
//!
//! **After the end.** [`Action::Finish`] is emitted exactly once, as the last action of its
//! batch; every later input returns no actions.
//!
//! # Cost
//!
//! Most inputs cost O(1). An accepted answer costs O(agents) (it restarts everyone and rebuilds
//! the shared `Arc<[LabeledAnswer]>` once); consensus and finishing scan the tally once. With a
//! thousand agents nothing is quadratic per input.
//!
//! [`RestartPolicy::Finish`]: conclave_protocol::config::RestartPolicy::Finish

mod action;
mod config;
mod input;
mod machine;

#[cfg(test)]
mod tests;

pub use action::{Action, EndReason, Event, Outcome, TurnPlan};
pub use config::{ConsensusConfig, ConsensusConfigError, DEFAULT_MAX_REJECTED_DECISIONS};
pub use input::{AgentIndex, Input};
pub use machine::{Consensus, Phase};
