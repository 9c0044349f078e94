//! Property tests for the consensus state machine.
//!
//! A simulated environment ([`Sim`]) plays the agents: it keeps the turns the machine started
//! and has not cancelled, and at each step proptest picks what happens next (an in-flight turn
//! decides well or badly, a turn fails, an agent is lost or rejoins, a late report arrives from a
//! cancelled or finished turn, the presentation completes or fails, a timeout). The environment
//! keeps its own model of answers, votes and failed agents, built from what it sent and what the
//! machine recorded, and checks the machine against it after every input.

use std::collections::{BTreeMap, BTreeSet};

use conclave::consensus::{
    Action, AgentIndex, Consensus, ConsensusConfig, EndReason, Event, Input, Outcome, Phase,
    TurnPlan,
};
use conclave_protocol::config::RestartPolicy;
use conclave_protocol::{AnswerLabel, Decision, TurnId, TurnMode};
use proptest::prelude::*;

/// What happens next, with selectors that the simulation reduces modulo what is possible.
#[derive(Debug, Clone)]
enum Step {
    /// An in-flight turn reports (`kind` picks a good or bad decision).
    Decide {
        pick: usize,
        kind: u8,
        label_pick: usize,
    },
    /// An in-flight turn gives up.
    FailTurn {
        pick: usize,
    },
    /// An agent (possibly out of range, possibly already failed) is lost.
    Lose {
        agent: AgentIndex,
    },
    /// An agent (possibly live) rejoins.
    Rejoin {
        agent: AgentIndex,
    },
    /// A cancelled or finished turn reports late.
    Late {
        pick: usize,
        kind: u8,
    },
    Timeout,
    Interrupt,
    /// A budget cap is reached.
    Budget,
    /// An in-flight turn that was sent newer answers (policy `inject`) takes them at a tool
    /// boundary; `bogus` reports a revision it was never sent instead.
    TakeInjection {
        pick: usize,
        bogus: bool,
    },
    /// An in-flight turn declines newer answers (no tool call in flight).
    Decline {
        pick: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        150 => (any::<usize>(), 0u8..11, any::<usize>())
            .prop_map(|(pick, kind, label_pick)| Step::Decide { pick, kind, label_pick }),
        6 => any::<usize>().prop_map(|pick| Step::FailTurn { pick }),
        6 => (0u32..6).prop_map(|agent| Step::Lose { agent }),
        8 => (0u32..6).prop_map(|agent| Step::Rejoin { agent }),
        20 => (any::<usize>(), 0u8..4).prop_map(|(pick, kind)| Step::Late { pick, kind }),
        30 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, bogus)| Step::TakeInjection { pick, bogus }),
        10 => any::<usize>().prop_map(|pick| Step::Decline { pick }),
        1 => Just(Step::Timeout),
        1 => Just(Step::Interrupt),
        1 => Just(Step::Budget),
    ]
}

fn config() -> impl Strategy<Value = ConsensusConfig> {
    (
        1u32..=5,
        proptest::option::of(1u32..=3),
        proptest::option::of(1u32..=6),
        prop_oneof![
            Just(RestartPolicy::Cancel),
            Just(RestartPolicy::Finish),
            Just(RestartPolicy::Inject)
        ],
        0u32..=3,
        any::<bool>(),
        (0u32..=3, any::<bool>()),
    )
        .prop_map(
            |(
                agents,
                per_agent,
                total,
                restart_policy,
                max_rejected,
                skip,
                (injections, cancel),
            )| {
                ConsensusConfig {
                    inject_fallback: if cancel {
                        RestartPolicy::Cancel
                    } else {
                        RestartPolicy::Finish
                    },
                    agents,
                    max_new_answers_per_agent: per_agent,
                    max_total_answers: total,
                    restart_policy,
                    max_injections: injections,
                    max_rejected_decisions: max_rejected,
                    skip_final_presentation: skip,
                    single_call: false,
                }
            },
        )
}

/// The environment and its independent model of the session.
#[derive(Clone)]
struct Sim {
    config: ConsensusConfig,
    machine: Consensus,
    inputs: Vec<Input>,
    outputs: Vec<Vec<Action>>,
    /// Turns started and neither cancelled nor reported, by id.
    in_flight: BTreeMap<TurnId, (AgentIndex, TurnPlan)>,
    /// Turns that were cancelled or have reported: anything they send now is late.
    retired: Vec<(AgentIndex, TurnPlan)>,
    /// The revision each turn was started at, or took by injection.
    turn_revision: BTreeMap<TurnId, u64>,
    /// Newer answers sent to in-flight turns and not taken yet (policy `inject`), by turn.
    offered: BTreeMap<TurnId, TurnPlan>,
    /// Injections sent per turn.
    injections_sent: BTreeMap<TurnId, u32>,
    last_turn: Option<TurnId>,
    failed: BTreeSet<AgentIndex>,
    /// Accepted answers per agent, and the session total.
    accepted: Vec<u32>,
    total_accepted: u32,
    /// The revision at which each agent's current answer was accepted.
    current_accepted_at: Vec<Option<u64>>,
    /// What each accepted answer says, as the environment sent it.
    contents: BTreeMap<AnswerLabel, String>,
    /// Counted votes as the machine recorded them: voter → (label, turn it came from).
    votes: BTreeMap<AgentIndex, (AnswerLabel, TurnId)>,
    /// Agents that abstained at the current revision.
    abstained: BTreeSet<AgentIndex>,
    /// The content of the answer being sent by the current input.
    sending: Option<(TurnId, String)>,
    /// Rejected decisions per agent since it started or last rejoined.
    rejections: Vec<u32>,
    consensus_winner: Option<(AgentIndex, AnswerLabel)>,
    outcome: Option<Outcome>,
}

impl Sim {
    fn new(config: ConsensusConfig) -> Self {
        let agents = config.agents as usize;
        Self {
            machine: Consensus::new(config.clone()).expect("generated configs are valid"),
            config,
            inputs: Vec::new(),
            outputs: Vec::new(),
            in_flight: BTreeMap::new(),
            retired: Vec::new(),
            turn_revision: BTreeMap::new(),
            offered: BTreeMap::new(),
            injections_sent: BTreeMap::new(),
            last_turn: None,
            failed: BTreeSet::new(),
            accepted: vec![0; agents],
            total_accepted: 0,
            current_accepted_at: vec![None; agents],
            contents: BTreeMap::new(),
            votes: BTreeMap::new(),
            abstained: BTreeSet::new(),
            sending: None,
            rejections: vec![0; agents],
            consensus_winner: None,
            outcome: None,
        }
    }

    fn finished(&self) -> bool {
        self.outcome.is_some()
    }

    fn may_answer(&self, agent: AgentIndex) -> bool {
        let per_agent = self.config.max_new_answers_per_agent.unwrap_or(u32::MAX);
        let total = self.config.max_total_answers.unwrap_or(u32::MAX);
        self.accepted[agent as usize] < per_agent && self.total_accepted < total
    }

    /// The best available answer by the rules, computed from the model.
    fn expected_best(&self) -> Option<(AgentIndex, AnswerLabel)> {
        let mut tally = vec![0u32; self.config.agents as usize];
        for (label, _) in self.votes.values() {
            tally[(label.agent - 1) as usize] += 1;
        }
        let most = tally.iter().copied().max().unwrap_or(0);
        let author = if most > 0 {
            tally.iter().position(|&votes| votes == most)
        } else {
            (0..self.current_accepted_at.len())
                .filter(|&agent| self.current_accepted_at[agent].is_some())
                .min_by_key(|&agent| self.current_accepted_at[agent])
        }?;
        let author = author as AgentIndex;
        Some((
            author,
            AnswerLabel::new(author + 1, self.accepted[author as usize]),
        ))
    }

    /// Feeds one input and checks every action and the state after it.
    fn feed(&mut self, input: Input) -> Vec<Action> {
        let phase_before = self.machine.phase().clone();
        let actions = self.machine.handle(input.clone());
        self.inputs.push(input.clone());
        self.outputs.push(actions.clone());
        if self.finished() {
            assert!(
                actions.is_empty(),
                "input after Finish produced {actions:?}"
            );
            return actions;
        }

        let mut accepted_an_answer = false;
        for (position, action) in actions.iter().enumerate() {
            match action {
                Action::StartTurn { agent, spec_parts } => {
                    self.on_start_turn(*agent, spec_parts);
                }
                Action::CancelTurn { agent, turn } => {
                    let (owner, plan) = self
                        .in_flight
                        .remove(turn)
                        .unwrap_or_else(|| panic!("cancelled {turn}, which is not in flight"));
                    assert_eq!(owner, *agent, "cancel sent to the wrong agent");
                    self.retired.push((owner, plan));
                }
                Action::InjectAnswers { agent, spec_parts } => {
                    assert_eq!(
                        self.config.restart_policy,
                        RestartPolicy::Inject,
                        "an injection under another policy"
                    );
                    let (owner, running) =
                        self.in_flight.get(&spec_parts.turn).unwrap_or_else(|| {
                            panic!("injection into {}, not in flight", spec_parts.turn)
                        });
                    assert_eq!(owner, agent, "injection sent to the wrong agent");
                    assert_eq!(running.mode, TurnMode::Coordinate);
                    assert_eq!(spec_parts.revision, self.machine.revision());
                    assert_eq!(spec_parts.answers, self.machine.current_answers());
                    assert_eq!(spec_parts.may_answer, self.may_answer(*agent));
                    let sent = self.injections_sent.entry(spec_parts.turn).or_default();
                    *sent += 1;
                    assert!(
                        *sent <= self.config.max_injections,
                        "more injections than max_injections into {}",
                        spec_parts.turn
                    );
                    self.offered.insert(spec_parts.turn, spec_parts.clone());
                }
                Action::Record(event) => {
                    if matches!(event, Event::AnswerAccepted { .. }) {
                        accepted_an_answer = true;
                    }
                    self.on_event(event, &phase_before);
                }
                Action::Finish(outcome) => {
                    assert_eq!(position, actions.len() - 1, "Finish is the last action");
                    self.on_finish(outcome, &input);
                }
            }
        }
        self.sending = None;

        if accepted_an_answer {
            assert!(
                self.machine.current_votes().is_empty(),
                "an accepted answer clears every vote"
            );
            match self.config.restart_policy {
                RestartPolicy::Cancel => assert!(
                    self.in_flight
                        .values()
                        .all(|(_, plan)| plan.revision == self.machine.revision()),
                    "policy Cancel left a stale turn running"
                ),
                RestartPolicy::Finish | RestartPolicy::Inject => assert!(
                    !actions
                        .iter()
                        .any(|action| matches!(action, Action::CancelTurn { .. })),
                    "policy {:?} cancelled a turn",
                    self.config.restart_policy
                ),
            }
        }
        self.check_state();
        actions
    }

    fn on_start_turn(&mut self, agent: AgentIndex, plan: &TurnPlan) {
        assert!(
            self.last_turn.is_none_or(|last| plan.turn > last),
            "turn ids must strictly increase: {:?} then {}",
            self.last_turn,
            plan.turn
        );
        self.last_turn = Some(plan.turn);
        assert!(agent < self.config.agents, "turn for unknown agent {agent}");
        assert!(
            !self.failed.contains(&agent),
            "turn started for failed agent {agent}"
        );
        assert!(
            self.in_flight.values().all(|(owner, _)| *owner != agent),
            "agent {agent} got a second in-flight turn"
        );
        assert_eq!(plan.revision, self.machine.revision());
        assert_eq!(plan.answers, self.machine.current_answers());
        match plan.mode {
            TurnMode::Coordinate => {
                assert_eq!(
                    plan.may_answer,
                    self.may_answer(agent),
                    "may_answer of {agent}"
                );
                assert!(plan.votes.is_empty());
            }
            TurnMode::Present => {
                assert!(!plan.may_answer);
                assert_eq!(Some(agent), self.consensus_winner.map(|(winner, _)| winner));
            }
        }
        self.turn_revision.insert(plan.turn, plan.revision);
        self.in_flight.insert(plan.turn, (agent, plan.clone()));
    }

    fn on_event(&mut self, event: &Event, phase_before: &Phase) {
        match event {
            Event::AnswerAccepted {
                agent,
                turn,
                label,
                revision,
                ..
            } => {
                let agent_index = *agent as usize;
                self.accepted[agent_index] += 1;
                self.total_accepted += 1;
                assert_eq!(
                    *label,
                    AnswerLabel::new(agent + 1, self.accepted[agent_index])
                );
                assert_eq!(*revision, u64::from(self.total_accepted));
                if let Some(limit) = self.config.max_new_answers_per_agent {
                    assert!(
                        self.accepted[agent_index] <= limit,
                        "per-agent cap exceeded"
                    );
                }
                if let Some(limit) = self.config.max_total_answers {
                    assert!(self.total_accepted <= limit, "total cap exceeded");
                }
                let (sent_turn, content) = self.sending.clone().expect("an answer was sent");
                assert_eq!(sent_turn, *turn);
                self.contents.insert(*label, content);
                self.current_accepted_at[agent_index] = Some(*revision);
                self.votes.clear();
                self.abstained.clear();
            }
            Event::Abstained { agent, .. } => {
                assert!(
                    !self.votes.contains_key(agent),
                    "agent {agent} voted and abstained"
                );
                self.abstained.insert(*agent);
            }
            Event::VoteAccepted {
                agent, turn, label, ..
            } => {
                self.votes.insert(*agent, (*label, *turn));
            }
            Event::AgentFailed { agent, .. } => {
                assert!(self.failed.insert(*agent), "agent {agent} failed twice");
                self.abstained.remove(agent);
                let dropped: Vec<TurnId> = self
                    .in_flight
                    .iter()
                    .filter(|(_, (owner, _))| owner == agent)
                    .map(|(turn, _)| *turn)
                    .collect();
                for turn in dropped {
                    if let Some(entry) = self.in_flight.remove(&turn) {
                        self.retired.push(entry);
                    }
                }
            }
            Event::AnswerRejected {
                agent, rejections, ..
            }
            | Event::VoteRejected {
                agent, rejections, ..
            } => {
                self.rejections[*agent as usize] += 1;
                assert_eq!(*rejections, self.rejections[*agent as usize]);
            }
            Event::AgentRejoined { agent } => {
                assert!(
                    self.failed.remove(agent),
                    "agent {agent} rejoined while live"
                );
                self.rejections[*agent as usize] = 0;
                if *phase_before == Phase::Coordinating {
                    self.votes.remove(agent);
                }
            }
            Event::ConsensusReached { winner, label, .. } => {
                for agent in 0..self.config.agents {
                    assert!(
                        self.failed.contains(&agent)
                            || self.votes.contains_key(&agent)
                            || self.abstained.contains(&agent),
                        "consensus while live agent {agent} has neither voted nor abstained"
                    );
                }
                assert_eq!(Some((*winner, *label)), self.expected_best());
                self.consensus_winner = Some((*winner, *label));
            }
            _ => {}
        }
    }

    fn on_finish(&mut self, outcome: &Outcome, input: &Input) {
        match outcome.reason {
            EndReason::Consensus => {
                assert_eq!(outcome.winner, self.consensus_winner);
            }
            EndReason::Timeout | EndReason::Interrupted | EndReason::BudgetExhausted => {
                let expected = self.consensus_winner.or_else(|| self.expected_best());
                assert_eq!(outcome.winner, expected);
            }
            EndReason::AllAgentsFailed => {
                assert_eq!(self.failed.len(), self.config.agents as usize);
                assert_eq!(outcome.winner, self.expected_best());
            }
        }
        match (&outcome.presented_by, input) {
            (Some(presenter), Input::Presented { agent, content, .. }) => {
                assert_eq!(presenter, agent);
                assert_eq!(outcome.final_answer.as_deref(), Some(content.as_str()));
            }
            (Some(_), other) => panic!("presented_by set on {other:?}"),
            (None, _) => {
                let expected = outcome
                    .winner
                    .and_then(|(_, label)| self.contents.get(&label))
                    .map(String::as_str);
                assert_eq!(outcome.final_answer.as_deref(), expected);
            }
        }
        let counted: Vec<(AgentIndex, AnswerLabel)> = outcome
            .votes
            .iter()
            .map(|vote| (vote.voter - 1, vote.label))
            .collect();
        let modelled: Vec<(AgentIndex, AnswerLabel)> = self
            .votes
            .iter()
            .map(|(agent, (label, _))| (*agent, *label))
            .collect();
        assert_eq!(counted, modelled);
        assert!(
            self.in_flight.is_empty(),
            "turns left running after Finish: {:?}",
            self.in_flight.keys().collect::<Vec<_>>()
        );
        self.outcome = Some(outcome.clone());
    }

    /// The invariants that hold between inputs.
    fn check_state(&self) {
        assert_eq!(self.machine.is_finished(), self.finished());
        for agent in 0..self.config.agents {
            assert_eq!(
                self.machine.is_live(agent),
                !self.failed.contains(&agent),
                "liveness of agent {agent}"
            );
        }
        let modelled: Vec<(AgentIndex, AnswerLabel)> = self
            .votes
            .iter()
            .map(|(agent, (label, _))| (*agent, *label))
            .collect();
        assert_eq!(self.machine.current_votes(), modelled);
        let current = self.machine.current_answers();
        for (agent, (label, turn)) in &self.votes {
            assert_eq!(
                self.turn_revision.get(turn).copied(),
                Some(self.machine.revision()),
                "vote of agent {agent} from {turn} was cast at another revision"
            );
            assert!(
                current.iter().any(|answer| answer.label == *label),
                "counted vote for {label}, which is not a current answer"
            );
        }
        for (agent, _) in self.in_flight.values() {
            assert!(
                !self.failed.contains(agent),
                "failed agent {agent} has a turn"
            );
        }
        let mut turns_of = vec![0usize; self.config.agents as usize];
        for (owner, _) in self.in_flight.values() {
            turns_of[*owner as usize] += 1;
        }
        match self.machine.phase() {
            Phase::Coordinating => {
                assert!(
                    self.failed.len() < self.config.agents as usize,
                    "all agents failed but the session goes on"
                );
                for agent in 0..self.config.agents {
                    if self.failed.contains(&agent) {
                        continue;
                    }
                    let turns = turns_of[agent as usize];
                    let voted = self.votes.contains_key(&agent) || self.abstained.contains(&agent);
                    assert!(
                        voted != (turns == 1) && turns <= 1,
                        "agent {agent}: voted {voted}, {turns} turns in flight"
                    );
                }
            }
            Phase::Presenting {
                presenter, turn, ..
            } => {
                let running: Vec<_> = self
                    .in_flight
                    .iter()
                    .map(|(id, (owner, plan))| (*id, *owner, plan.mode))
                    .collect();
                assert_eq!(running, vec![(*turn, *presenter, TurnMode::Present)]);
            }
            Phase::NotStarted | Phase::Finished => {}
        }
    }

    fn pick_in_flight(&self, pick: usize) -> Option<(TurnId, AgentIndex, TurnPlan)> {
        let count = self.in_flight.len();
        let (turn, (agent, plan)) = self.in_flight.iter().nth(pick.checked_rem(count)?)?;
        Some((*turn, *agent, plan.clone()))
    }

    fn send_answer(&mut self, agent: AgentIndex, plan: &TurnPlan, seen_revision: u64) -> Input {
        let content = format!("answer of agent {agent} in {}", plan.turn);
        self.sending = Some((plan.turn, content.clone()));
        Input::Decided {
            agent,
            turn: plan.turn,
            decision: Decision::NewAnswer { content },
            seen_revision,
        }
    }

    /// Applies one random step with its own expectations.
    fn step(&mut self, step: &Step) {
        if self.finished() {
            return;
        }
        match *step {
            Step::Decide {
                pick,
                kind,
                label_pick,
            } => self.decide(pick, kind, label_pick),
            Step::FailTurn { pick } => {
                let Some((turn, agent, _)) = self.pick_in_flight(pick) else {
                    return;
                };
                let entry = self.in_flight.remove(&turn).expect("picked from in_flight");
                self.retired.push(entry);
                let actions = self.feed(Input::TurnFailed {
                    agent,
                    turn,
                    reason: "provider kept failing".into(),
                });
                assert!(has_event(&actions, |event| matches!(
                    event, Event::AgentFailed { agent: failed, .. } if *failed == agent
                )));
            }
            Step::Lose { agent } => {
                let was_live = agent < self.config.agents && !self.failed.contains(&agent);
                let actions = self.feed(Input::AgentLost {
                    agent,
                    reason: "node lost".into(),
                });
                if was_live {
                    assert!(
                        self.failed.contains(&agent),
                        "lost agent {agent} still live"
                    );
                } else {
                    assert!(only_ignored(&actions), "{actions:?}");
                }
            }
            Step::Rejoin { agent } => {
                let was_failed = self.failed.contains(&agent);
                let actions = self.feed(Input::AgentRejoined { agent });
                assert_eq!(
                    was_failed,
                    has_event(&actions, |event| matches!(
                        event,
                        Event::AgentRejoined { .. }
                    ))
                );
            }
            Step::Late { pick, kind } => {
                let Some(index) = pick.checked_rem(self.retired.len()) else {
                    return;
                };
                let (agent, plan) = self.retired[index].clone();
                let input = match kind {
                    0 => Input::Decided {
                        agent,
                        turn: plan.turn,
                        decision: Decision::NewAnswer {
                            content: "late".into(),
                        },
                        seen_revision: plan.revision,
                    },
                    1 => Input::Decided {
                        agent,
                        turn: plan.turn,
                        decision: Decision::Vote {
                            label: plan
                                .answers
                                .first()
                                .map_or(AnswerLabel::new(1, 1), |answer| answer.label),
                            reason: "late".into(),
                        },
                        seen_revision: plan.revision,
                    },
                    2 => Input::TurnFailed {
                        agent,
                        turn: plan.turn,
                        reason: "cancelled".into(),
                    },
                    _ => Input::Presented {
                        agent,
                        turn: plan.turn,
                        content: "late".into(),
                    },
                };
                let before = self.machine.clone();
                let actions = self.feed(input);
                assert!(only_ignored(&actions), "late report acted on: {actions:?}");
                assert!(self.machine == before, "a late report changed the state");
            }
            Step::Timeout => {
                let actions = self.feed(Input::Timeout);
                assert!(finish_of(&actions).is_some_and(|o| o.reason == EndReason::Timeout));
            }
            Step::Interrupt => {
                let actions = self.feed(Input::Interrupted);
                assert!(finish_of(&actions).is_some_and(|o| o.reason == EndReason::Interrupted));
            }
            Step::TakeInjection { pick, bogus } => self.take_injection(pick, bogus),
            Step::Decline { pick } => self.decline(pick),
            Step::Budget => {
                let actions = self.feed(Input::BudgetExhausted {
                    reason: "max_total_tokens".into(),
                });
                assert!(
                    finish_of(&actions).is_some_and(|o| o.reason == EndReason::BudgetExhausted)
                );
            }
        }
    }

    /// An in-flight turn with an offer takes it: from then on it decides on the offered
    /// revision (the machine must count its vote). A bogus report changes nothing.
    fn take_injection(&mut self, pick: usize, bogus: bool) {
        let Some((turn, agent, _)) = self.pick_in_flight(pick) else {
            return;
        };
        if bogus {
            let before = self.machine.clone();
            let actions = self.feed(Input::Injected {
                agent,
                turn,
                revision: self.machine.revision() + 1,
            });
            assert!(
                only_ignored(&actions),
                "bogus injection acted on: {actions:?}"
            );
            assert!(
                self.machine == before,
                "a bogus injection changed the state"
            );
            return;
        }
        let Some(offer) = self.offered.remove(&turn) else {
            return;
        };
        let actions = self.feed(Input::Injected {
            agent,
            turn,
            revision: offer.revision,
        });
        let taken = has_event(
            &actions,
            |event| matches!(event, Event::AnswersInjected { turn: t, revision, .. } if *t == turn && *revision == offer.revision),
        );
        assert!(taken, "an offered injection was not taken: {actions:?}");
        self.turn_revision.insert(turn, offer.revision);
        if let Some((_, plan)) = self.in_flight.get_mut(&turn) {
            *plan = offer;
        }
    }

    /// An in-flight turn declines an injection: a stale coordination turn gets the fallback
    /// (cancelled and restarted under `Cancel`); anything else is ignored.
    fn decline(&mut self, pick: usize) {
        let Some((turn, agent, plan)) = self.pick_in_flight(pick) else {
            return;
        };
        let stale = plan.mode == TurnMode::Coordinate && plan.revision < self.machine.revision();
        let before = self.machine.clone();
        let actions = self.feed(Input::InjectionDeclined { agent, turn });
        if !stale {
            assert!(only_ignored(&actions), "{actions:?}");
            assert!(self.machine == before);
            return;
        }
        let cancelled = actions
            .iter()
            .any(|a| matches!(a, Action::CancelTurn { turn: t, .. } if *t == turn));
        assert_eq!(
            cancelled,
            self.config.inject_fallback == RestartPolicy::Cancel,
            "fallback {:?}: {actions:?}",
            self.config.inject_fallback
        );
        if cancelled {
            self.offered.remove(&turn);
        }
    }

    fn decide(&mut self, pick: usize, kind: u8, label_pick: usize) {
        let Some((turn, agent, plan)) = self.pick_in_flight(pick) else {
            return;
        };
        let entry = self.in_flight.remove(&turn).expect("picked from in_flight");
        self.retired.push(entry);

        if plan.mode == TurnMode::Present {
            if kind.is_multiple_of(2) {
                let actions = self.feed(Input::Presented {
                    agent,
                    turn,
                    content: format!("presented by {agent}"),
                });
                let outcome = finish_of(&actions).expect("a presentation finishes the session");
                assert_eq!(outcome.presented_by, Some(agent));
            } else {
                let actions = self.feed(Input::TurnFailed {
                    agent,
                    turn,
                    reason: "presentation failed".into(),
                });
                let outcome = finish_of(&actions).expect("a failed presentation finishes too");
                assert_eq!(outcome.reason, EndReason::Consensus);
                assert_eq!(outcome.presented_by, None);
            }
            return;
        }

        let stale = plan.revision < self.machine.revision();
        let may_answer = self.may_answer(agent);
        let vote_for = |label: AnswerLabel, seen_revision: u64| Input::Decided {
            agent,
            turn,
            decision: Decision::Vote {
                label,
                reason: format!("agent {agent} picked {label}"),
            },
            seen_revision,
        };
        let (input, bogus_revision) = match kind {
            0..=4 if !plan.answers.is_empty() => {
                let label = plan.answers[label_pick % plan.answers.len()].label;
                (vote_for(label, plan.revision), false)
            }
            0..=6 => (self.send_answer(agent, &plan, plan.revision), false),
            7 => {
                let label = AnswerLabel::new(
                    1 + (label_pick % (self.config.agents as usize + 1)) as u32,
                    1 + ((label_pick / 7) % 3) as u32,
                );
                (vote_for(label, plan.revision), false)
            }
            8 => (vote_for(AnswerLabel::new(1, 1), plan.revision + 1), true),
            10 if !plan.answers.is_empty() => {
                let actions = self.feed(Input::Decided {
                    agent,
                    turn,
                    decision: Decision::Abstain {
                        reason: "no decision".into(),
                    },
                    seen_revision: plan.revision,
                });
                let first = actions.iter().find_map(|action| match action {
                    Action::Record(event) => Some(event),
                    _ => None,
                });
                match first {
                    Some(Event::Abstained { .. }) => assert!(!stale),
                    Some(Event::TurnRestarted {
                        agent: restarted, ..
                    }) => {
                        assert!(stale, "a current abstention restarted the agent");
                        assert_eq!(*restarted, agent);
                    }
                    other => panic!("unexpected reaction {other:?} to an abstention: {actions:?}"),
                }
                return;
            }
            _ => {
                let actions = self.feed(Input::TurnFailed {
                    agent,
                    turn,
                    reason: "gave up".into(),
                });
                assert!(self.failed.contains(&agent), "{actions:?}");
                return;
            }
        };
        let votable = match &input {
            Input::Decided {
                decision: Decision::Vote { label, .. },
                ..
            } => Some(
                self.machine
                    .current_answers()
                    .iter()
                    .any(|answer| answer.label == *label),
            ),
            _ => None,
        };
        let actions = self.feed(input);
        let first = actions.iter().find_map(|action| match action {
            Action::Record(event) => Some(event),
            _ => None,
        });
        match (votable, first) {
            (
                None,
                Some(Event::AnswerAccepted {
                    stale: was_stale, ..
                }),
            ) => {
                assert!(may_answer, "answer accepted over a cap");
                assert_eq!(*was_stale, stale);
            }
            (None, Some(Event::AnswerRejected { .. })) => {
                assert!(!may_answer, "answer rejected under the caps");
            }
            (Some(_), Some(Event::VoteRejected { .. })) if bogus_revision => {}
            (Some(_), Some(Event::VoteDiscarded { .. })) => assert!(stale && !bogus_revision),
            (Some(true), Some(Event::VoteAccepted { .. })) => {
                assert!(!stale && !bogus_revision);
            }
            (Some(false), Some(Event::VoteRejected { .. })) => assert!(!stale),
            other => panic!("unexpected reaction {other:?} to a decision: {actions:?}"),
        }
        if let Some(Event::AnswerRejected { .. } | Event::VoteRejected { .. }) = first {
            let over = self.rejections[agent as usize] > self.config.max_rejected_decisions;
            assert_eq!(
                self.failed.contains(&agent),
                over,
                "agent {agent} with {} rejections (limit {})",
                self.rejections[agent as usize],
                self.config.max_rejected_decisions
            );
        }
    }

    /// Lets every agent decide well (vote for the first current answer, answer only when there
    /// is none, present when asked) until the session ends; returns false if it did not.
    fn settle_well(&mut self) -> bool {
        let agents = self.config.agents as usize;
        let bound = 10 * agents * agents + 20;
        for _ in 0..bound {
            if self.finished() {
                return true;
            }
            let Some((turn, agent, plan)) = self.pick_in_flight(0) else {
                panic!("the session is stuck: nothing in flight and not finished");
            };
            let entry = self.in_flight.remove(&turn).expect("picked from in_flight");
            self.retired.push(entry);
            let input = match (plan.mode, plan.answers.first()) {
                (TurnMode::Present, _) => Input::Presented {
                    agent,
                    turn,
                    content: "final".into(),
                },
                (TurnMode::Coordinate, Some(first)) => Input::Decided {
                    agent,
                    turn,
                    decision: Decision::Vote {
                        label: first.label,
                        reason: "good".into(),
                    },
                    seen_revision: plan.revision,
                },
                (TurnMode::Coordinate, None) => self.send_answer(agent, &plan, plan.revision),
            };
            self.feed(input);
        }
        self.finished()
    }

    /// Replays the journaled inputs (through JSON, as the journal stores them) into a fresh
    /// machine and demands the very same actions and final state.
    fn check_replay(&self) {
        let journal = serde_json::to_string(&self.inputs).expect("inputs serialize");
        let inputs: Vec<Input> = serde_json::from_str(&journal).expect("inputs deserialize");
        assert_eq!(inputs, self.inputs);
        let mut replayed = Consensus::new(self.config.clone()).expect("valid config");
        for (input, recorded) in inputs.into_iter().zip(&self.outputs) {
            assert_eq!(&replayed.handle(input), recorded, "replay diverged");
        }
        assert!(replayed == self.machine, "replayed state differs");
        let actions = serde_json::to_string(&self.outputs).expect("actions serialize");
        let actions: Vec<Vec<Action>> = serde_json::from_str(&actions).expect("deserialize");
        assert_eq!(actions, self.outputs);
    }
}

fn has_event(actions: &[Action], wanted: impl Fn(&Event) -> bool) -> bool {
    actions
        .iter()
        .any(|action| matches!(action, Action::Record(event) if wanted(event)))
}

fn only_ignored(actions: &[Action]) -> bool {
    actions
        .iter()
        .all(|action| matches!(action, Action::Record(Event::InputIgnored { .. })))
}

fn finish_of(actions: &[Action]) -> Option<&Outcome> {
    actions.iter().find_map(|action| match action {
        Action::Finish(outcome) => Some(outcome),
        _ => None,
    })
}

/// Runs `Start` and the random steps; after each, a probe copy of the environment times out and
/// must finish at once with the best available answer.
fn run_prefix(config: ConsensusConfig, steps: &[Step]) -> Sim {
    let mut sim = Sim::new(config);
    sim.feed(Input::Start);
    for step in steps {
        sim.step(step);
        if !sim.finished() {
            let mut probe = sim.clone();
            let actions = probe.feed(Input::Timeout);
            assert!(
                finish_of(&actions).is_some_and(|o| o.reason == EndReason::Timeout),
                "Timeout must finish at once: {actions:?}"
            );
        }
    }
    sim
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Properties 1-4, 6-8: random interleavings keep every invariant, a session always ends once
    /// agents behave, and replaying the journal reproduces it.
    #[test]
    fn random_sessions_keep_the_rules_and_end(
        config in config(),
        steps in proptest::collection::vec(step(), 0..80),
    ) {
        let mut sim = run_prefix(config, &steps);
        prop_assert!(sim.settle_well(), "the session did not end in bounded steps");
        if sim.outcome.as_ref().is_some_and(|o| o.reason == EndReason::Consensus) {
            prop_assert!(sim.consensus_winner.is_some());
        }
        sim.check_replay();
    }

    /// Property 5: failed agents never block the end; losing every agent ends the session.
    #[test]
    fn losing_agents_never_blocks_the_end(
        config in config(),
        steps in proptest::collection::vec(step(), 0..40),
        order in any::<u64>(),
    ) {
        let mut sim = run_prefix(config, &steps);
        let agents = sim.config.agents;
        // A fixed pseudo-random permutation per case, so the failure is reproducible.
        let mut victims: Vec<AgentIndex> = (0..agents).collect();
        let mut seed = order;
        for i in (1..victims.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            victims.swap(i, (seed >> 33) as usize % (i + 1));
        }
        for victim in victims {
            if sim.finished() {
                break;
            }
            sim.feed(Input::AgentLost { agent: victim, reason: "chaos".into() });
        }
        prop_assert!(sim.finished(), "all agents lost but the session goes on");
        sim.check_replay();
    }

    /// Property 5, with some agents surviving: the live ones still reach the end.
    #[test]
    fn survivors_finish_after_failures(
        config in config(),
        steps in proptest::collection::vec(step(), 0..40),
        kills in proptest::collection::vec(0u32..5, 0..4),
    ) {
        let mut sim = run_prefix(config, &steps);
        for victim in kills {
            if sim.finished() {
                break;
            }
            sim.feed(Input::AgentLost { agent: victim, reason: "chaos".into() });
            // A failed turn of a survivor, too, when there is one.
            if let Some((turn, agent, _)) = sim.pick_in_flight(victim as usize) {
                let entry = sim.in_flight.remove(&turn).expect("picked from in_flight");
                sim.retired.push(entry);
                sim.feed(Input::TurnFailed { agent, turn, reason: "chaos".into() });
            }
        }
        prop_assert!(sim.settle_well(), "the survivors did not finish");
        sim.check_replay();
    }
}

/// A thousand agents agree without anything quadratic getting in the way.
#[test]
fn a_thousand_agents_reach_consensus() {
    let mut config = ConsensusConfig::new(1000);
    config.skip_final_presentation = true;
    let mut sim = Sim::new(config);
    sim.feed(Input::Start);
    assert!(sim.settle_well());
    let outcome = sim.outcome.clone().expect("finished");
    assert_eq!(outcome.reason, EndReason::Consensus);
    assert_eq!(outcome.votes.len(), 1000);
}
