//! The consensus state machine itself. See the [module docs](super) for the rules it enforces.

use std::sync::Arc;

use conclave_protocol::config::RestartPolicy;
use conclave_protocol::{AnswerLabel, CastVote, Decision, LabeledAnswer, TurnId, TurnMode};

use super::action::{Action, EndReason, Event, Outcome, TurnPlan};
use super::config::{ConsensusConfig, ConsensusConfigError};
use super::input::{AgentIndex, Input};

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for [`Input::Start`].
    NotStarted,
    /// Agents answer and vote.
    Coordinating,
    /// Consensus was reached; the winner's author streams the final answer.
    Presenting {
        presenter: AgentIndex,
        turn: TurnId,
        winner: AnswerLabel,
    },
    /// [`Action::Finish`] was emitted; every further input is ignored.
    Finished,
}

/// A turn the machine is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    turn: TurnId,
    mode: TurnMode,
    /// The revision whose answers the turn was given, or was last injected with.
    revision: u64,
    /// Injections sent to this turn (restart policy `inject`).
    injections: u32,
}

/// A counted vote. Votes are cleared whenever the revision changes, so a stored vote always
/// belongs to the current revision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VoteRecord {
    label: AnswerLabel,
    reason: String,
}

/// One agent as the machine sees it.
#[derive(Debug, Clone, PartialEq, Default)]
struct AgentState {
    failed: bool,
    /// Every accepted answer of this agent, oldest first; the last one is current.
    answers: Vec<Arc<str>>,
    /// The revision created by accepting this agent's current answer (0: no answer), which
    /// orders current answers by acceptance for the "first answer wins" rule.
    current_accepted_at: u64,
    vote: Option<VoteRecord>,
    /// Abstained at the current revision (cleared with the votes).
    abstained: bool,
    in_flight: Option<InFlight>,
    rejections: u32,
}

impl AgentState {
    /// The answer count as a label number. Answers per agent are capped at `u32::MAX`, so this
    /// never saturates in practice.
    fn answer_count(&self) -> u32 {
        u32::try_from(self.answers.len()).unwrap_or(u32::MAX)
    }
}

/// The pure consensus state machine: [`Input`]s in, [`Action`]s out, no I/O, no clock, no
/// randomness. The same inputs always give the same actions, which is what lets a crashed
/// session be resumed by replaying its journal.
///
/// Every input costs O(1) except those that change many agents at once (an accepted answer
/// restarts everyone, consensus and finishing scan the tally), which cost O(agents).
#[derive(Debug, Clone, PartialEq)]
pub struct Consensus {
    config: ConsensusConfig,
    agents: Vec<AgentState>,
    phase: Phase,
    /// How many answers have been accepted.
    revision: u64,
    /// The last turn id handed out (0: none yet).
    last_turn: u64,
    /// Each agent's current answer in label order; rebuilt only when an answer is accepted.
    answers: Arc<[LabeledAnswer]>,
    /// Counted votes per author (index), all for that author's current answer.
    tally: Vec<u32>,
    /// Agents not failed.
    live: u32,
    /// Live agents with a counted vote; consensus is `live_voted + live_abstained == live`.
    live_voted: u32,
    /// Live agents that abstained at the current revision.
    live_abstained: u32,
    /// All counted votes, failed voters included.
    votes_counted: u32,
    /// Shared empty vote list for coordination turns.
    no_votes: Arc<[CastVote]>,
    outcome: Option<Outcome>,
}

impl Consensus {
    /// A machine for one session, waiting for [`Input::Start`].
    pub fn new(config: ConsensusConfig) -> Result<Self, ConsensusConfigError> {
        config.validate()?;
        let agents = config.agents as usize;
        Ok(Self {
            agents: vec![AgentState::default(); agents],
            tally: vec![0; agents],
            live: config.agents,
            config,
            phase: Phase::NotStarted,
            revision: 0,
            last_turn: 0,
            answers: Arc::from(Vec::new()),
            live_voted: 0,
            live_abstained: 0,
            votes_counted: 0,
            no_votes: Arc::from(Vec::new()),
            outcome: None,
        })
    }

    /// Applies one input and returns what the coordinator must do, in order.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            _ if self.phase == Phase::Finished => {}
            Input::Start => self.on_start(&mut out),
            Input::Decided {
                agent,
                turn,
                decision,
                seen_revision,
            } => self.on_decided(agent, turn, decision, seen_revision, &mut out),
            Input::Presented {
                agent,
                turn,
                content,
            } => self.on_presented(agent, turn, content, &mut out),
            Input::TurnFailed {
                agent,
                turn,
                reason,
            } => self.on_turn_failed(agent, turn, reason, &mut out),
            Input::Injected {
                agent,
                turn,
                revision,
            } => self.on_injected(agent, turn, revision, &mut out),
            Input::InjectionDeclined { agent, turn } => self.on_declined(agent, turn, &mut out),
            Input::AgentLost { agent, reason } => self.on_agent_lost(agent, reason, &mut out),
            Input::AgentRejoined { agent } => self.on_agent_rejoined(agent, &mut out),
            Input::Timeout => {
                out.push(Action::Record(Event::TimedOut));
                self.finish_with_best(EndReason::Timeout, &mut out);
            }
            Input::Interrupted => {
                out.push(Action::Record(Event::Interrupted));
                self.finish_with_best(EndReason::Interrupted, &mut out);
            }
            Input::BudgetExhausted { reason } => {
                out.push(Action::Record(Event::BudgetExhausted { reason }));
                self.finish_with_best(EndReason::BudgetExhausted, &mut out);
            }
        }
        out
    }

    // ----- queries -------------------------------------------------------------------------

    /// True once [`Action::Finish`] has been emitted; the coordinator can then stop the agents.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// How the session ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Where the session stands, e.g. for a status display or the HTTP API.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The rules this machine was built with (journaled with the session start).
    pub fn config(&self) -> &ConsensusConfig {
        &self.config
    }

    /// The number of accepted answers; the revision agents echo as `seen_revision`.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Each agent's latest accepted answer, in label order.
    pub fn current_answers(&self) -> Arc<[LabeledAnswer]> {
        Arc::clone(&self.answers)
    }

    /// Every counted vote as (voter, label), in voter order. Votes of agents that failed after
    /// voting are included: they still count.
    pub fn current_votes(&self) -> Vec<(AgentIndex, AnswerLabel)> {
        self.counted_votes()
            .map(|(agent, vote)| (agent, vote.label))
            .collect()
    }

    /// Every counted vote with its reason, as the presenter and the final report see them.
    pub fn cast_votes(&self) -> Vec<CastVote> {
        self.counted_votes()
            .map(|(agent, vote)| CastVote {
                voter: agent.saturating_add(1),
                label: vote.label,
                reason: vote.reason.clone(),
            })
            .collect()
    }

    /// The counted votes per current answer, in label order (answers without votes included).
    pub fn vote_tally(&self) -> Vec<(AnswerLabel, u32)> {
        self.answers
            .iter()
            .map(|answer| {
                let votes = self
                    .current_author(answer.label)
                    .map_or(0, |author| self.tally[author as usize]);
                (answer.label, votes)
            })
            .collect()
    }

    /// Who wrote `label`, if it names any accepted answer (current or superseded).
    pub fn answer_author(&self, label: AnswerLabel) -> Option<AgentIndex> {
        let agent = label.agent.checked_sub(1)?;
        let state = self.agents.get(agent as usize)?;
        (label.answer >= 1 && label.answer <= state.answer_count()).then_some(agent)
    }

    /// The content of any accepted answer (current or superseded).
    pub fn answer_content(&self, label: AnswerLabel) -> Option<Arc<str>> {
        let agent = self.answer_author(label)?;
        let index = (label.answer - 1) as usize;
        self.agents[agent as usize].answers.get(index).cloned()
    }

    /// Every accepted answer of `agent`, oldest first (`agent{agent+1}.1` is the first).
    pub fn answers_of(&self, agent: AgentIndex) -> &[Arc<str>] {
        self.agents
            .get(agent as usize)
            .map_or(&[], |state| state.answers.as_slice())
    }

    /// False for failed agents and for indices out of range.
    pub fn is_live(&self, agent: AgentIndex) -> bool {
        self.agents
            .get(agent as usize)
            .is_some_and(|state| !state.failed)
    }

    /// How many agents are not failed.
    pub fn live_agents(&self) -> u32 {
        self.live
    }

    /// The turn the machine is waiting for from `agent`.
    pub fn in_flight_turn(&self, agent: AgentIndex) -> Option<TurnId> {
        self.agents
            .get(agent as usize)?
            .in_flight
            .map(|in_flight| in_flight.turn)
    }

    /// The agent's rejected decisions since it started (or last rejoined).
    pub fn rejections(&self, agent: AgentIndex) -> u32 {
        self.agents
            .get(agent as usize)
            .map_or(0, |state| state.rejections)
    }

    // ----- inputs --------------------------------------------------------------------------

    fn on_start(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::NotStarted {
            ignore(out, None, None, "the session has already started");
            return;
        }
        if self.config.single_call && self.config.agents == 1 && !self.agents[0].failed {
            // One call: the agent's answer is presented at once (see ConsensusConfig).
            let turn = self.allocate_turn();
            self.agents[0].in_flight = Some(InFlight {
                turn,
                mode: TurnMode::Present,
                revision: self.revision,
                injections: 0,
            });
            self.phase = Phase::Presenting {
                presenter: 0,
                turn,
                winner: AnswerLabel::new(1, 1),
            };
            out.push(Action::StartTurn {
                agent: 0,
                spec_parts: TurnPlan {
                    turn,
                    mode: TurnMode::Present,
                    answers: self.current_answers(),
                    revision: self.revision,
                    may_answer: false,
                    votes: Arc::from(self.cast_votes()),
                },
            });
            return;
        }
        self.phase = Phase::Coordinating;
        for agent in 0..self.config.agents {
            if !self.agents[agent as usize].failed {
                self.start_coordination(agent, out);
            }
        }
        self.settle(out);
    }

    fn on_decided(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
        decision: Decision,
        seen_revision: u64,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Coordinating {
            ignore(out, Some(agent), Some(turn), "no coordination is under way");
            return;
        }
        let Some(in_flight) = self.take_in_flight(agent, turn, TurnMode::Coordinate, out) else {
            return;
        };
        match decision {
            Decision::NewAnswer { content } => {
                self.on_new_answer(agent, in_flight, content, seen_revision, out);
            }
            Decision::Vote { label, reason } => {
                self.on_vote(agent, in_flight, label, reason, seen_revision, out);
            }
            Decision::Abstain { reason } => {
                self.on_abstain(agent, in_flight, reason, seen_revision, out);
            }
        }
        self.settle(out);
    }

    /// An abstention counts like a vote for ending the round, but for no answer. One made on
    /// an older revision is stale (the agent had not seen the latest answers): it re-decides.
    fn on_abstain(
        &mut self,
        agent: AgentIndex,
        in_flight: InFlight,
        reason: String,
        seen_revision: u64,
        out: &mut Vec<Action>,
    ) {
        let turn = in_flight.turn;
        if seen_revision != in_flight.revision || in_flight.revision < self.revision {
            self.restart(
                agent,
                Some(turn),
                &format!(
                    "abstention on revision {seen_revision} discarded: the current revision is {}",
                    self.revision
                ),
                out,
            );
            return;
        }
        self.uncount_vote(agent);
        let state = &mut self.agents[agent as usize];
        if !state.abstained {
            state.abstained = true;
            self.live_abstained += 1;
        }
        out.push(Action::Record(Event::Abstained {
            agent,
            turn,
            revision: self.revision,
            reason,
        }));
    }

    fn on_new_answer(
        &mut self,
        agent: AgentIndex,
        in_flight: InFlight,
        content: String,
        seen_revision: u64,
        out: &mut Vec<Action>,
    ) {
        let refusal = if seen_revision != in_flight.revision {
            Some(format!(
                "seen_revision {seen_revision} is not the revision {} the turn was given",
                in_flight.revision
            ))
        } else {
            self.answer_refusal(agent)
        };
        if let Some(reason) = refusal {
            let rejections = self.count_rejection(agent);
            out.push(Action::Record(Event::AnswerRejected {
                agent,
                turn: in_flight.turn,
                reason: reason.clone(),
                rejections,
            }));
            self.after_rejection(
                agent,
                in_flight.turn,
                &format!("answer rejected: {reason}"),
                out,
            );
            return;
        }

        let stale = in_flight.revision < self.revision;
        self.revision += 1;
        let state = &mut self.agents[agent as usize];
        state.answers.push(Arc::from(content));
        state.current_accepted_at = self.revision;
        let label = AnswerLabel::new(agent + 1, state.answer_count());
        self.rebuild_answers();
        self.clear_votes();
        out.push(Action::Record(Event::AnswerAccepted {
            agent,
            turn: in_flight.turn,
            label,
            revision: self.revision,
            seen_revision,
            stale,
        }));

        // Everyone re-decides with the new answers. The author's own turn has just ended.
        let reason = format!("new answer {label} (revision {})", self.revision);
        for other in 0..self.config.agents {
            let state = &self.agents[other as usize];
            if state.failed {
                continue;
            }
            if other == agent {
                self.restart(other, Some(in_flight.turn), &reason, out);
                continue;
            }
            match (state.in_flight, self.config.restart_policy) {
                (None, _) => self.restart(other, None, &reason, out),
                (Some(stale_turn), RestartPolicy::Cancel) => {
                    out.push(Action::CancelTurn {
                        agent: other,
                        turn: stale_turn.turn,
                    });
                    self.restart(other, Some(stale_turn.turn), &reason, out);
                }
                // Left to finish: its vote will be discarded, its answer accepted.
                (Some(_), RestartPolicy::Finish) => {}
                // Left to run, and handed the new answers for its next tool boundary.
                (Some(running), RestartPolicy::Inject) => {
                    if running.injections < self.config.max_injections {
                        let may_answer = self.answer_refusal(other).is_none();
                        if let Some(in_flight) = self.agents[other as usize].in_flight.as_mut() {
                            in_flight.injections += 1;
                        }
                        out.push(Action::InjectAnswers {
                            agent: other,
                            spec_parts: TurnPlan {
                                turn: running.turn,
                                mode: TurnMode::Coordinate,
                                answers: self.current_answers(),
                                revision: self.revision,
                                may_answer,
                                votes: Arc::clone(&self.no_votes),
                            },
                        });
                    }
                }
            }
        }
    }

    /// The agent declined an injection (its turn had no tool call in flight). A turn that is
    /// still behind the current revision gets the fallback: under `Cancel` it is cancelled and
    /// restarted with the current answers; under `Finish` it is left to finish.
    fn on_declined(&mut self, agent: AgentIndex, turn: TurnId, out: &mut Vec<Action>) {
        if self.phase != Phase::Coordinating {
            ignore(out, Some(agent), Some(turn), "no coordination is under way");
            return;
        }
        let Some(in_flight) = self
            .in_flight_of(agent, turn)
            .filter(|in_flight| in_flight.mode == TurnMode::Coordinate)
        else {
            ignore(out, Some(agent), Some(turn), "not the agent's current turn");
            return;
        };
        if in_flight.revision >= self.revision {
            ignore(out, Some(agent), Some(turn), "the turn is already current");
            return;
        }
        out.push(Action::Record(Event::InjectionDeclined {
            agent,
            turn,
            fallback: self.config.inject_fallback,
        }));
        if self.config.inject_fallback == RestartPolicy::Cancel {
            out.push(Action::CancelTurn { agent, turn });
            let reason = format!(
                "revision {} declined mid-turn (no tool call in flight)",
                self.revision
            );
            self.restart(agent, Some(turn), &reason, out);
        }
    }

    /// The agent handed the answers of `revision` to its model mid-turn: the turn now decides
    /// on that revision. Only a newer revision that exists is taken; anything else (a turn no
    /// longer in flight, a revision from the future or the past) is ignored.
    fn on_injected(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
        revision: u64,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Coordinating {
            ignore(out, Some(agent), Some(turn), "no coordination is under way");
            return;
        }
        let current = self.revision;
        let Some(in_flight) = self
            .agents
            .get_mut(agent as usize)
            .filter(|state| !state.failed)
            .and_then(|state| state.in_flight.as_mut())
            .filter(|in_flight| in_flight.turn == turn && in_flight.mode == TurnMode::Coordinate)
        else {
            ignore(out, Some(agent), Some(turn), "not the agent's current turn");
            return;
        };
        if revision <= in_flight.revision || revision > current {
            let why = format!(
                "injected revision {revision} is not newer than {} or not yet accepted (current {current})",
                in_flight.revision
            );
            ignore(out, Some(agent), Some(turn), &why);
            return;
        }
        let from = in_flight.revision;
        in_flight.revision = revision;
        out.push(Action::Record(Event::AnswersInjected {
            agent,
            turn,
            from_revision: from,
            revision,
        }));
    }

    fn on_vote(
        &mut self,
        agent: AgentIndex,
        in_flight: InFlight,
        label: AnswerLabel,
        reason: String,
        seen_revision: u64,
        out: &mut Vec<Action>,
    ) {
        let turn = in_flight.turn;
        let invalid = if seen_revision != in_flight.revision {
            Some(format!(
                "seen_revision {seen_revision} is not the revision {} the turn was given",
                in_flight.revision
            ))
        } else if in_flight.revision < self.revision {
            out.push(Action::Record(Event::VoteDiscarded {
                agent,
                turn,
                label,
                seen_revision,
                revision: self.revision,
                why: format!(
                    "stale: decided on revision {seen_revision}, current revision is {}",
                    self.revision
                ),
            }));
            self.restart(agent, Some(turn), "stale vote discarded", out);
            return;
        } else if self.current_author(label).is_none() {
            Some(format!("{label} is not a current answer"))
        } else {
            None
        };

        if let Some(why) = invalid {
            let rejections = self.count_rejection(agent);
            out.push(Action::Record(Event::VoteRejected {
                agent,
                turn,
                label,
                seen_revision,
                revision: self.revision,
                why: why.clone(),
                rejections,
            }));
            self.after_rejection(agent, turn, &format!("vote rejected: {why}"), out);
            return;
        }

        self.count_vote(agent, label, reason.clone());
        out.push(Action::Record(Event::VoteAccepted {
            agent,
            turn,
            label,
            revision: self.revision,
            reason,
        }));
    }

    fn on_presented(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
        content: String,
        out: &mut Vec<Action>,
    ) {
        let Phase::Presenting {
            presenter, winner, ..
        } = self.phase
        else {
            ignore(out, Some(agent), Some(turn), "no presentation is under way");
            return;
        };
        if self
            .take_in_flight(agent, turn, TurnMode::Present, out)
            .is_none()
        {
            return;
        }
        self.finish(
            EndReason::Consensus,
            Some((presenter, winner)),
            Some(Arc::from(content)),
            Some(presenter),
            out,
        );
    }

    fn on_turn_failed(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        let Some(in_flight) = self.in_flight_of(agent, turn) else {
            ignore(out, Some(agent), Some(turn), "not the agent's current turn");
            return;
        };
        self.agents[agent as usize].in_flight = None;
        self.fail_agent(agent, format!("{turn} failed: {reason}"), out);
        if in_flight.mode == TurnMode::Present {
            self.presentation_failed(agent, turn, reason, out);
        } else {
            self.settle(out);
        }
    }

    fn on_agent_lost(&mut self, agent: AgentIndex, reason: String, out: &mut Vec<Action>) {
        if !self.is_live(agent) {
            ignore(out, Some(agent), None, "agent unknown or already failed");
            return;
        }
        let presenting = self.agents[agent as usize]
            .in_flight
            .filter(|in_flight| in_flight.mode == TurnMode::Present);
        self.cancel_in_flight(agent, out);
        self.fail_agent(agent, format!("lost: {reason}"), out);
        match presenting {
            Some(in_flight) => self.presentation_failed(agent, in_flight.turn, reason, out),
            None => self.settle(out),
        }
    }

    fn on_agent_rejoined(&mut self, agent: AgentIndex, out: &mut Vec<Action>) {
        let Some(state) = self.agents.get(agent as usize) else {
            ignore(out, Some(agent), None, "unknown agent");
            return;
        };
        if !state.failed {
            ignore(out, Some(agent), None, "agent is not failed");
            return;
        }
        if self.phase == Phase::Coordinating {
            // It starts fresh: its old vote goes (uncounted while it is still marked failed).
            self.uncount_vote(agent);
        }
        let state = &mut self.agents[agent as usize];
        state.failed = false;
        state.rejections = 0;
        let kept_vote = state.vote.is_some();
        self.live += 1;
        if kept_vote {
            self.live_voted += 1;
        }
        out.push(Action::Record(Event::AgentRejoined { agent }));
        match self.phase {
            Phase::Coordinating => {
                self.start_coordination(agent, out);
            }
            // Presenting: the decision is made; its vote stands and it gets no turn.
            // Not started: `Start` will give it its first turn.
            Phase::Presenting { .. } | Phase::NotStarted | Phase::Finished => {}
        }
    }

    // ----- transitions ---------------------------------------------------------------------

    /// Ends coordination when it is over: nobody left, or every live agent has voted.
    fn settle(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::Coordinating {
            return;
        }
        if self.live == 0 {
            out.push(Action::Record(Event::AllAgentsFailed));
            self.finish_with_best(EndReason::AllAgentsFailed, out);
            return;
        }
        if self.live_voted + self.live_abstained < self.live {
            return;
        }
        // Everyone decided. Without a single vote (all abstained) the earliest current answer
        // wins, as it would at a timeout.
        let Some((winner, votes)) = self
            .plurality()
            .or_else(|| self.earliest_current_answer().map(|agent| (agent, 0)))
        else {
            // Unreachable: an abstention needs answers to exist.
            out.push(Action::Record(Event::AllAgentsFailed));
            self.finish_with_best(EndReason::AllAgentsFailed, out);
            return;
        };
        let label = self.current_label(winner);
        out.push(Action::Record(Event::ConsensusReached {
            winner,
            label,
            votes,
        }));
        if self.config.skip_final_presentation || self.agents[winner as usize].failed {
            let content = self.agents[winner as usize].answers.last().cloned();
            self.finish(
                EndReason::Consensus,
                Some((winner, label)),
                content,
                None,
                out,
            );
            return;
        }
        let turn = self.allocate_turn();
        self.agents[winner as usize].in_flight = Some(InFlight {
            turn,
            mode: TurnMode::Present,
            revision: self.revision,
            injections: 0,
        });
        self.phase = Phase::Presenting {
            presenter: winner,
            turn,
            winner: label,
        };
        out.push(Action::StartTurn {
            agent: winner,
            spec_parts: TurnPlan {
                turn,
                mode: TurnMode::Present,
                answers: self.current_answers(),
                revision: self.revision,
                may_answer: false,
                votes: Arc::from(self.cast_votes()),
            },
        });
    }

    /// The presenter could not present: the winning answer is the final answer.
    fn presentation_failed(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        let Phase::Presenting {
            presenter, winner, ..
        } = self.phase
        else {
            return;
        };
        out.push(Action::Record(Event::PresentationFailed {
            agent,
            turn,
            reason,
        }));
        if self.config.single_call {
            // The one call was the only answer there could be.
            out.push(Action::Record(Event::AllAgentsFailed));
            self.finish(EndReason::AllAgentsFailed, None, None, None, out);
            return;
        }
        let content = self.agents[presenter as usize].answers.last().cloned();
        self.finish(
            EndReason::Consensus,
            Some((presenter, winner)),
            content,
            None,
            out,
        );
    }

    /// Ends now with the best available answer: the consensus winner while presenting, else the
    /// plurality of counted votes, else the earliest accepted current answer.
    fn finish_with_best(&mut self, reason: EndReason, out: &mut Vec<Action>) {
        let winner = match self.phase {
            // A one-call session has no answer before its call returns.
            Phase::Presenting { .. } if self.config.single_call => None,
            Phase::Presenting {
                presenter, winner, ..
            } => Some((presenter, winner)),
            _ => self
                .plurality()
                .map(|(agent, _)| agent)
                .or_else(|| self.earliest_current_answer())
                .map(|agent| (agent, self.current_label(agent))),
        };
        let content =
            winner.and_then(|(agent, _)| self.agents[agent as usize].answers.last().cloned());
        self.finish(reason, winner, content, None, out);
    }

    fn finish(
        &mut self,
        reason: EndReason,
        winner: Option<(AgentIndex, AnswerLabel)>,
        final_answer: Option<Arc<str>>,
        presented_by: Option<AgentIndex>,
        out: &mut Vec<Action>,
    ) {
        for agent in 0..self.config.agents {
            self.cancel_in_flight(agent, out);
        }
        let outcome = Outcome {
            reason,
            winner,
            final_answer,
            presented_by,
            votes: self.cast_votes(),
        };
        self.phase = Phase::Finished;
        self.outcome = Some(outcome.clone());
        out.push(Action::Finish(outcome));
    }

    /// Counts a rejected decision and either fails the agent (over the limit) or restarts it.
    fn after_rejection(
        &mut self,
        agent: AgentIndex,
        old_turn: TurnId,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        let rejections = self.agents[agent as usize].rejections;
        if rejections > self.config.max_rejected_decisions {
            self.fail_agent(
                agent,
                format!(
                    "{rejections} rejected decisions (limit {})",
                    self.config.max_rejected_decisions
                ),
                out,
            );
        } else {
            self.restart(agent, Some(old_turn), reason, out);
        }
    }

    fn restart(
        &mut self,
        agent: AgentIndex,
        old_turn: Option<TurnId>,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        let new_turn = self.start_coordination(agent, out);
        out.push(Action::Record(Event::TurnRestarted {
            agent,
            old_turn,
            new_turn,
            reason: reason.to_owned(),
        }));
    }

    fn start_coordination(&mut self, agent: AgentIndex, out: &mut Vec<Action>) -> TurnId {
        let turn = self.allocate_turn();
        let may_answer = self.answer_refusal(agent).is_none();
        self.agents[agent as usize].in_flight = Some(InFlight {
            turn,
            mode: TurnMode::Coordinate,
            revision: self.revision,
            injections: 0,
        });
        out.push(Action::StartTurn {
            agent,
            spec_parts: TurnPlan {
                turn,
                mode: TurnMode::Coordinate,
                answers: self.current_answers(),
                revision: self.revision,
                may_answer,
                votes: Arc::clone(&self.no_votes),
            },
        });
        turn
    }

    /// Marks a live agent failed. Its in-flight turn must already be cancelled or over; its
    /// answers stay, and its vote keeps counting.
    fn fail_agent(&mut self, agent: AgentIndex, reason: String, out: &mut Vec<Action>) {
        let state = &mut self.agents[agent as usize];
        state.failed = true;
        state.in_flight = None;
        self.live -= 1;
        if state.vote.is_some() {
            self.live_voted -= 1;
        }
        if std::mem::take(&mut state.abstained) {
            self.live_abstained -= 1;
        }
        out.push(Action::Record(Event::AgentFailed { agent, reason }));
    }

    fn cancel_in_flight(&mut self, agent: AgentIndex, out: &mut Vec<Action>) {
        if let Some(in_flight) = self.agents[agent as usize].in_flight.take() {
            out.push(Action::CancelTurn {
                agent,
                turn: in_flight.turn,
            });
        }
    }

    // ----- bookkeeping ---------------------------------------------------------------------

    fn allocate_turn(&mut self) -> TurnId {
        self.last_turn += 1;
        TurnId(self.last_turn)
    }

    /// The agent's in-flight turn if `turn` is it, without taking it.
    fn in_flight_of(&self, agent: AgentIndex, turn: TurnId) -> Option<InFlight> {
        let state = self.agents.get(agent as usize)?;
        if state.failed {
            return None;
        }
        state.in_flight.filter(|in_flight| in_flight.turn == turn)
    }

    /// Takes the agent's in-flight turn if `turn` is it and has `mode`; otherwise records why
    /// the report is ignored.
    fn take_in_flight(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
        mode: TurnMode,
        out: &mut Vec<Action>,
    ) -> Option<InFlight> {
        match self.in_flight_of(agent, turn) {
            Some(in_flight) if in_flight.mode == mode => {
                self.agents[agent as usize].in_flight = None;
                Some(in_flight)
            }
            Some(_) => {
                ignore(
                    out,
                    Some(agent),
                    Some(turn),
                    "wrong kind of report for this turn",
                );
                None
            }
            None => {
                ignore(
                    out,
                    Some(agent),
                    Some(turn),
                    "not the agent's current turn (late, cancelled, or agent failed)",
                );
                None
            }
        }
    }

    /// Why the agent may not add an answer now, if it may not.
    fn answer_refusal(&self, agent: AgentIndex) -> Option<String> {
        let count = self.agents[agent as usize].answer_count();
        match self.config.max_new_answers_per_agent {
            Some(limit) if count >= limit => {
                return Some(format!("agent at max_new_answers_per_agent ({limit})"));
            }
            None if count == u32::MAX => {
                return Some(format!("agent at the label limit ({})", u32::MAX));
            }
            _ => {}
        }
        match self.config.max_total_answers {
            Some(limit) if self.revision >= u64::from(limit) => {
                Some(format!("session at max_total_answers ({limit})"))
            }
            _ => None,
        }
    }

    /// Returns the agent's rejected decisions after counting one more.
    fn count_rejection(&mut self, agent: AgentIndex) -> u32 {
        let state = &mut self.agents[agent as usize];
        state.rejections = state.rejections.saturating_add(1);
        state.rejections
    }

    /// The author of `label` if it is a current answer.
    fn current_author(&self, label: AnswerLabel) -> Option<AgentIndex> {
        let agent = label.agent.checked_sub(1)?;
        let state = self.agents.get(agent as usize)?;
        (label.answer >= 1 && label.answer == state.answer_count()).then_some(agent)
    }

    /// The label of `agent`'s current answer (only meaningful when it has one).
    fn current_label(&self, agent: AgentIndex) -> AnswerLabel {
        AnswerLabel::new(agent + 1, self.agents[agent as usize].answer_count())
    }

    fn count_vote(&mut self, agent: AgentIndex, label: AnswerLabel, reason: String) {
        let Some(author) = self.current_author(label) else {
            return;
        };
        self.uncount_vote(agent);
        if std::mem::take(&mut self.agents[agent as usize].abstained) {
            self.live_abstained -= 1;
        }
        self.agents[agent as usize].vote = Some(VoteRecord { label, reason });
        self.tally[author as usize] += 1;
        self.votes_counted += 1;
        if !self.agents[agent as usize].failed {
            self.live_voted += 1;
        }
    }

    fn uncount_vote(&mut self, agent: AgentIndex) {
        let Some(vote) = self.agents[agent as usize].vote.take() else {
            return;
        };
        if let Some(author) = self.current_author(vote.label) {
            self.tally[author as usize] -= 1;
        }
        self.votes_counted -= 1;
        if !self.agents[agent as usize].failed {
            self.live_voted -= 1;
        }
    }

    fn clear_votes(&mut self) {
        for state in &mut self.agents {
            state.vote = None;
            state.abstained = false;
        }
        self.tally.fill(0);
        self.live_voted = 0;
        self.live_abstained = 0;
        self.votes_counted = 0;
    }

    fn rebuild_answers(&mut self) {
        self.answers = self
            .agents
            .iter()
            .enumerate()
            .filter_map(|(index, state)| {
                let content = state.answers.last()?;
                Some(LabeledAnswer {
                    label: AnswerLabel::new(index as u32 + 1, state.answer_count()),
                    content: Arc::clone(content),
                })
            })
            .collect();
    }

    fn counted_votes(&self) -> impl Iterator<Item = (AgentIndex, &VoteRecord)> {
        self.agents
            .iter()
            .enumerate()
            .filter_map(|(index, state)| Some((index as AgentIndex, state.vote.as_ref()?)))
    }

    /// The author with the most counted votes, ties to the earliest in config order.
    fn plurality(&self) -> Option<(AgentIndex, u32)> {
        if self.votes_counted == 0 {
            return None;
        }
        let mut best: Option<(AgentIndex, u32)> = None;
        for (index, &votes) in self.tally.iter().enumerate() {
            if votes > best.map_or(0, |(_, most)| most) {
                best = Some((index as AgentIndex, votes));
            }
        }
        best
    }

    /// The author whose current answer was accepted first.
    fn earliest_current_answer(&self) -> Option<AgentIndex> {
        self.agents
            .iter()
            .enumerate()
            .filter(|(_, state)| !state.answers.is_empty())
            .min_by_key(|(_, state)| state.current_accepted_at)
            .map(|(index, _)| index as AgentIndex)
    }
}

fn ignore(out: &mut Vec<Action>, agent: Option<AgentIndex>, turn: Option<TurnId>, why: &str) {
    out.push(Action::Record(Event::InputIgnored {
        agent,
        turn,
        why: why.to_owned(),
    }));
}
