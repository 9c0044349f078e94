//! Scenario tests: one story per test, asserting the exact actions that matter.

use conclave_protocol::config::RestartPolicy;
use conclave_protocol::{AnswerLabel, Decision, TurnId, TurnMode};

use super::*;

fn machine_with(agents: u32, tweak: impl FnOnce(&mut ConsensusConfig)) -> Consensus {
    let mut config = ConsensusConfig::new(agents);
    // The stories below are told under `cancel`; the inject stories set their policy.
    config.restart_policy = RestartPolicy::Cancel;
    tweak(&mut config);
    Consensus::new(config).expect("valid test config")
}

fn label(agent: u32, answer: u32) -> AnswerLabel {
    AnswerLabel::new(agent, answer)
}

/// The turn started for `agent` in this batch of actions.
fn started(actions: &[Action], agent: AgentIndex) -> TurnPlan {
    actions
        .iter()
        .find_map(|action| match action {
            Action::StartTurn {
                agent: to,
                spec_parts,
            } if *to == agent => Some(spec_parts.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no turn started for agent {agent} in {actions:#?}"))
}

fn cancelled(actions: &[Action]) -> Vec<(AgentIndex, TurnId)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::CancelTurn { agent, turn } => Some((*agent, *turn)),
            _ => None,
        })
        .collect()
}

fn finished(actions: &[Action]) -> Option<&Outcome> {
    actions.iter().find_map(|action| match action {
        Action::Finish(outcome) => Some(outcome),
        _ => None,
    })
}

fn events(actions: &[Action]) -> Vec<&Event> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Record(event) => Some(event),
            _ => None,
        })
        .collect()
}

fn answer(agent: AgentIndex, plan: &TurnPlan, content: &str) -> Input {
    Input::Decided {
        agent,
        turn: plan.turn,
        decision: Decision::NewAnswer {
            content: content.to_owned(),
        },
        seen_revision: plan.revision,
    }
}

fn vote(agent: AgentIndex, plan: &TurnPlan, label: AnswerLabel) -> Input {
    Input::Decided {
        agent,
        turn: plan.turn,
        decision: Decision::Vote {
            label,
            reason: format!("agent {agent} likes {label}"),
        },
        seen_revision: plan.revision,
    }
}

/// Starts a session and has agent 0 answer; returns the machine and everyone's new turn.
fn started_with_one_answer(
    agents: u32,
    tweak: impl FnOnce(&mut ConsensusConfig),
) -> (Consensus, Vec<TurnPlan>) {
    let mut machine = machine_with(agents, tweak);
    let first = machine.handle(Input::Start);
    let first_of_0 = started(&first, 0);
    let actions = machine.handle(answer(0, &first_of_0, "forty-two"));
    let plans = (0..agents).map(|agent| started(&actions, agent)).collect();
    (machine, plans)
}

#[test]
fn three_agents_reach_consensus_and_the_winner_presents() {
    let mut machine = machine_with(3, |_| {});
    let actions = machine.handle(Input::Start);
    for agent in 0..3 {
        let plan = started(&actions, agent);
        assert_eq!(plan.mode, TurnMode::Coordinate);
        assert_eq!(plan.revision, 0);
        assert!(plan.answers.is_empty());
        assert!(plan.may_answer);
    }

    let first = started(&actions, 0);
    let actions = machine.handle(answer(0, &first, "forty-two"));
    assert!(matches!(
        events(&actions)[0],
        Event::AnswerAccepted { agent: 0, label, revision: 1, stale: false, .. } if *label == label_11()
    ));
    // Agents 1 and 2 were thinking about revision 0: cancelled and restarted (default policy).
    assert_eq!(cancelled(&actions).len(), 2);
    let plans: Vec<TurnPlan> = (0..3).map(|agent| started(&actions, agent)).collect();
    assert!(
        plans
            .iter()
            .all(|plan| plan.revision == 1 && plan.answers.len() == 1)
    );

    assert!(finished(&machine.handle(vote(1, &plans[1], label_11()))).is_none());
    assert!(finished(&machine.handle(vote(2, &plans[2], label_11()))).is_none());
    let actions = machine.handle(vote(0, &plans[0], label_11()));
    assert!(events(&actions).contains(&&Event::ConsensusReached {
        winner: 0,
        label: label_11(),
        votes: 3
    }));
    let present = started(&actions, 0);
    assert_eq!(present.mode, TurnMode::Present);
    assert!(!present.may_answer);
    assert_eq!(present.votes.len(), 3);
    assert!(finished(&actions).is_none());

    let actions = machine.handle(Input::Presented {
        agent: 0,
        turn: present.turn,
        content: "The answer is 42.".into(),
    });
    let outcome = finished(&actions).expect("finished");
    assert_eq!(outcome.reason, EndReason::Consensus);
    assert_eq!(outcome.winner, Some((0, label_11())));
    assert_eq!(outcome.final_answer.as_deref(), Some("The answer is 42."));
    assert_eq!(outcome.presented_by, Some(0));
    assert_eq!(outcome.votes.len(), 3);
    assert!(machine.is_finished());
    assert!(machine.handle(Input::Timeout).is_empty());
}

fn label_11() -> AnswerLabel {
    label(1, 1)
}

#[test]
fn a_late_answer_clears_two_votes_and_everyone_votes_again() {
    let (mut machine, plans) = started_with_one_answer(3, |_| {});
    machine.handle(vote(0, &plans[0], label_11()));
    machine.handle(vote(1, &plans[1], label_11()));
    assert_eq!(machine.current_votes().len(), 2);

    let actions = machine.handle(answer(2, &plans[2], "forty-three"));
    assert!(machine.current_votes().is_empty());
    assert_eq!(machine.revision(), 2);
    // The two voters had no turn: restarted without a cancel; the author restarted too.
    assert!(cancelled(&actions).is_empty());
    let restarted: Vec<_> = events(&actions)
        .into_iter()
        .filter_map(|event| match event {
            Event::TurnRestarted {
                agent, old_turn, ..
            } => Some((*agent, *old_turn)),
            _ => None,
        })
        .collect();
    assert_eq!(
        restarted,
        vec![(0, None), (1, None), (2, Some(plans[2].turn))]
    );

    let plans: Vec<TurnPlan> = (0..3).map(|agent| started(&actions, agent)).collect();
    let labels: Vec<_> = plans[0].answers.iter().map(|a| a.label).collect();
    assert_eq!(labels, vec![label(1, 1), label(3, 1)]);
    machine.handle(vote(0, &plans[0], label(3, 1)));
    machine.handle(vote(1, &plans[1], label(3, 1)));
    let actions = machine.handle(vote(2, &plans[2], label(1, 1)));
    assert!(events(&actions).contains(&&Event::ConsensusReached {
        winner: 2,
        label: label(3, 1),
        votes: 2
    }));
}

#[test]
fn a_tie_goes_to_the_earliest_agent_in_config_order() {
    let mut machine = machine_with(4, |config| config.skip_final_presentation = true);
    let actions = machine.handle(Input::Start);
    // Agent 3 answers first, agent 1 second: acceptance order must not break the tie.
    let actions = machine.handle(answer(3, &started(&actions, 3), "from four"));
    let actions = machine.handle(answer(1, &started(&actions, 1), "from two"));
    let plans: Vec<TurnPlan> = (0..4).map(|agent| started(&actions, agent)).collect();
    machine.handle(vote(0, &plans[0], label(4, 1)));
    machine.handle(vote(1, &plans[1], label(2, 1)));
    machine.handle(vote(2, &plans[2], label(4, 1)));
    let actions = machine.handle(vote(3, &plans[3], label(2, 1)));
    let outcome = finished(&actions).expect("presentation skipped: finished at once");
    assert_eq!(outcome.winner, Some((1, label(2, 1))));
    assert_eq!(outcome.final_answer.as_deref(), Some("from two"));
    assert_eq!(outcome.presented_by, None);
}

#[test]
fn cancel_policy_cancels_stale_turns_and_ignores_their_late_reports() {
    let mut machine = machine_with(2, |config| config.restart_policy = RestartPolicy::Cancel);
    let start = machine.handle(Input::Start);
    let old_of_1 = started(&start, 1);
    let actions = machine.handle(answer(0, &started(&start, 0), "a"));
    assert_eq!(cancelled(&actions), vec![(1, old_of_1.turn)]);

    let before = machine.clone();
    let actions = machine.handle(answer(1, &old_of_1, "too late"));
    assert!(matches!(events(&actions)[..], [Event::InputIgnored { .. }]));
    assert_eq!(machine, before, "a late report changes nothing");
}

#[test]
fn finish_policy_discards_stale_votes_and_accepts_stale_answers() {
    let mut machine = machine_with(3, |config| config.restart_policy = RestartPolicy::Finish);
    let start = machine.handle(Input::Start);
    let actions = machine.handle(answer(0, &started(&start, 0), "a"));
    assert!(cancelled(&actions).is_empty());
    assert_eq!(machine.in_flight_turn(1), Some(started(&start, 1).turn));
    let new_of_0 = started(&actions, 0);

    // Agent 1's turn at revision 0 votes (for a label it could not have seen): discarded.
    let actions = machine.handle(vote(1, &started(&start, 1), label_11()));
    assert!(matches!(
        events(&actions)[0],
        Event::VoteDiscarded {
            agent: 1,
            seen_revision: 0,
            revision: 1,
            ..
        }
    ));
    assert_eq!(
        machine.rejections(1),
        0,
        "staleness is not the agent's fault"
    );
    assert_eq!(started(&actions, 1).revision, 1);

    // Agent 2's turn at revision 0 answers: accepted as stale new work.
    let actions = machine.handle(answer(2, &started(&start, 2), "c"));
    assert!(matches!(
        events(&actions)[0],
        Event::AnswerAccepted {
            agent: 2,
            stale: true,
            revision: 2,
            ..
        }
    ));
    // Agent 0's and agent 1's revision-1 turns keep running under `Finish`.
    assert!(cancelled(&actions).is_empty());
    assert_eq!(machine.in_flight_turn(0), Some(new_of_0.turn));
}

#[test]
fn timeout_with_votes_takes_the_plurality() {
    let (mut machine, plans) = started_with_one_answer(3, |_| {});
    let actions = machine.handle(answer(1, &plans[1], "b"));
    let plans: Vec<TurnPlan> = (0..3).map(|agent| started(&actions, agent)).collect();
    machine.handle(vote(0, &plans[0], label(2, 1)));

    let actions = machine.handle(Input::Timeout);
    let outcome = finished(&actions).expect("timeout finishes at once");
    assert_eq!(outcome.reason, EndReason::Timeout);
    assert_eq!(outcome.winner, Some((1, label(2, 1))));
    assert_eq!(outcome.final_answer.as_deref(), Some("b"));
    assert_eq!(outcome.presented_by, None);
    assert_eq!(
        cancelled(&actions),
        vec![(1, plans[1].turn), (2, plans[2].turn)]
    );
}

#[test]
fn timeout_without_votes_takes_the_first_answer() {
    let (mut machine, plans) = started_with_one_answer(3, |_| {});
    machine.handle(answer(2, &plans[2], "c"));
    let outcome = finished(&machine.handle(Input::Interrupted))
        .cloned()
        .expect("interrupt finishes at once");
    assert_eq!(outcome.reason, EndReason::Interrupted);
    assert_eq!(outcome.winner, Some((0, label_11())));
    assert_eq!(outcome.final_answer.as_deref(), Some("forty-two"));
}

#[test]
fn timeout_without_answers_has_no_winner() {
    let mut machine = machine_with(2, |_| {});
    machine.handle(Input::Start);
    let actions = machine.handle(Input::Timeout);
    let outcome = finished(&actions).expect("finished");
    assert_eq!(outcome.winner, None);
    assert_eq!(outcome.final_answer, None);
    assert_eq!(cancelled(&actions).len(), 2);
}

#[test]
fn a_failed_presentation_falls_back_to_the_winning_answer() {
    let (mut machine, plans) = started_with_one_answer(2, |_| {});
    machine.handle(vote(1, &plans[1], label_11()));
    let actions = machine.handle(vote(0, &plans[0], label_11()));
    let present = started(&actions, 0);
    let actions = machine.handle(Input::TurnFailed {
        agent: 0,
        turn: present.turn,
        reason: "provider down".into(),
    });
    let outcome = finished(&actions).expect("finished");
    assert_eq!(outcome.reason, EndReason::Consensus);
    assert_eq!(outcome.winner, Some((0, label_11())));
    assert_eq!(outcome.final_answer.as_deref(), Some("forty-two"));
    assert_eq!(outcome.presented_by, None);
}

#[test]
fn losing_the_presenter_falls_back_to_the_winning_answer() {
    let (mut machine, plans) = started_with_one_answer(2, |_| {});
    machine.handle(vote(1, &plans[1], label_11()));
    let actions = machine.handle(vote(0, &plans[0], label_11()));
    let present = started(&actions, 0);
    let actions = machine.handle(Input::AgentLost {
        agent: 0,
        reason: "node gone".into(),
    });
    assert_eq!(cancelled(&actions), vec![(0, present.turn)]);
    let outcome = finished(&actions).expect("finished");
    assert_eq!(outcome.final_answer.as_deref(), Some("forty-two"));
}

#[test]
fn a_failed_winner_does_not_present() {
    let (mut machine, plans) = started_with_one_answer(3, |_| {});
    machine.handle(vote(1, &plans[1], label_11()));
    machine.handle(vote(2, &plans[2], label_11()));
    let actions = machine.handle(Input::TurnFailed {
        agent: 0,
        turn: plans[0].turn,
        reason: "gave up".into(),
    });
    // Agent 0 failed without voting; the other two voted: consensus, author failed.
    let outcome = finished(&actions).expect("finished");
    assert_eq!(outcome.winner, Some((0, label_11())));
    assert_eq!(outcome.presented_by, None);
    assert_eq!(outcome.final_answer.as_deref(), Some("forty-two"));
}

#[test]
fn votes_of_agents_that_failed_after_voting_still_count() {
    let (mut machine, plans) = started_with_one_answer(4, |config| {
        config.skip_final_presentation = true;
    });
    let actions = machine.handle(answer(1, &plans[1], "b"));
    let plans: Vec<TurnPlan> = (0..4).map(|agent| started(&actions, agent)).collect();
    machine.handle(vote(2, &plans[2], label(2, 1)));
    machine.handle(vote(3, &plans[3], label(2, 1)));
    machine.handle(Input::AgentLost {
        agent: 2,
        reason: "oom".into(),
    });
    machine.handle(Input::AgentLost {
        agent: 3,
        reason: "oom".into(),
    });
    assert_eq!(
        machine.current_votes(),
        vec![(2, label(2, 1)), (3, label(2, 1))]
    );
    machine.handle(vote(0, &plans[0], label(1, 1)));
    let actions = machine.handle(vote(1, &plans[1], label(1, 1)));
    let outcome = finished(&actions).expect("every live agent voted");
    // Failed voters count, so it is 2 to 2: the tie goes to the earliest author, agent 0.
    assert_eq!(outcome.winner, Some((0, label(1, 1))));
    assert_eq!(outcome.votes.len(), 4);
}

#[test]
fn all_agents_failing_ends_the_session_with_the_best_answer() {
    let (mut machine, plans) = started_with_one_answer(2, |_| {});
    machine.handle(Input::TurnFailed {
        agent: 1,
        turn: plans[1].turn,
        reason: "auth".into(),
    });
    let actions = machine.handle(Input::AgentLost {
        agent: 0,
        reason: "gone".into(),
    });
    let outcome = finished(&actions).expect("finished");
    assert_eq!(outcome.reason, EndReason::AllAgentsFailed);
    assert_eq!(outcome.winner, Some((0, label_11())));
}

#[test]
fn all_agents_lost_before_start_end_without_a_winner() {
    let mut machine = machine_with(1, |_| {});
    machine.handle(Input::AgentLost {
        agent: 0,
        reason: "never connected".into(),
    });
    let actions = machine.handle(Input::Start);
    let outcome = finished(&actions).expect("finished");
    assert_eq!(outcome.reason, EndReason::AllAgentsFailed);
    assert_eq!(outcome.winner, None);
}

#[test]
fn the_answer_cap_turns_an_agent_into_a_voter() {
    let (mut machine, plans) =
        started_with_one_answer(2, |config| config.max_new_answers_per_agent = Some(1));
    assert!(!plans[0].may_answer, "agent 0 is at its limit");
    assert!(plans[1].may_answer);
    let actions = machine.handle(answer(0, &plans[0], "again"));
    assert!(matches!(
        events(&actions)[0],
        Event::AnswerRejected { agent: 0, rejections: 1, reason, .. }
            if reason == "agent at max_new_answers_per_agent (1)"
    ));
    assert!(!started(&actions, 0).may_answer);
    assert_eq!(machine.revision(), 1);
}

#[test]
fn the_total_cap_stops_every_agent_from_answering() {
    let (mut machine, plans) =
        started_with_one_answer(3, |config| config.max_total_answers = Some(1));
    assert!(plans.iter().all(|plan| !plan.may_answer));
    let actions = machine.handle(answer(2, &plans[2], "more"));
    assert!(matches!(
        events(&actions)[0],
        Event::AnswerRejected { reason, .. } if reason == "session at max_total_answers (1)"
    ));
    assert_eq!(machine.answers_of(2).len(), 0);
}

#[test]
fn too_many_rejected_decisions_fail_the_agent() {
    let (mut machine, plans) =
        started_with_one_answer(2, |config| config.max_rejected_decisions = 1);
    let actions = machine.handle(vote(1, &plans[1], label(7, 1)));
    assert!(matches!(
        events(&actions)[0],
        Event::VoteRejected { rejections: 1, .. }
    ));
    let retry = started(&actions, 1);
    let bogus_revision = Input::Decided {
        agent: 1,
        turn: retry.turn,
        decision: Decision::Vote {
            label: label_11(),
            reason: String::new(),
        },
        seen_revision: retry.revision + 5,
    };
    let actions = machine.handle(bogus_revision);
    assert!(matches!(
        events(&actions)[..],
        [
            Event::VoteRejected { rejections: 2, .. },
            Event::AgentFailed { agent: 1, .. }
        ]
    ));
    assert!(!machine.is_live(1));
    assert_eq!(machine.in_flight_turn(1), None);
}

#[test]
fn a_rejoining_agent_starts_fresh_with_the_current_answers() {
    let (mut machine, plans) = started_with_one_answer(3, |_| {});
    machine.handle(vote(1, &plans[1], label_11()));
    machine.handle(Input::AgentLost {
        agent: 1,
        reason: "net".into(),
    });
    assert_eq!(machine.current_votes(), vec![(1, label_11())]);
    let actions = machine.handle(Input::AgentRejoined { agent: 1 });
    let plan = started(&actions, 1);
    assert_eq!(plan.revision, 1);
    assert_eq!(plan.answers.len(), 1);
    assert!(machine.current_votes().is_empty(), "its old vote is gone");
    assert!(machine.is_live(1));

    // Rejoining a live agent is ignored.
    let before = machine.clone();
    machine.handle(Input::AgentRejoined { agent: 1 });
    assert_eq!(machine, before);
}

#[test]
fn nonsense_from_the_network_is_ignored() {
    let mut machine = machine_with(2, |_| {});
    machine.handle(Input::Start);
    let before = machine.clone();
    for input in [
        Input::Decided {
            agent: 99,
            turn: TurnId(1),
            decision: Decision::NewAnswer {
                content: "x".into(),
            },
            seen_revision: 0,
        },
        Input::Decided {
            agent: 0,
            turn: TurnId(999),
            decision: Decision::NewAnswer {
                content: "x".into(),
            },
            seen_revision: 0,
        },
        Input::Presented {
            agent: 0,
            turn: TurnId(1),
            content: "x".into(),
        },
        Input::TurnFailed {
            agent: 1,
            turn: TurnId(1),
            reason: "not yours".into(),
        },
        Input::AgentLost {
            agent: u32::MAX,
            reason: "?".into(),
        },
        Input::AgentRejoined { agent: u32::MAX },
        Input::Start,
    ] {
        let actions = machine.handle(input);
        assert!(
            matches!(events(&actions)[..], [Event::InputIgnored { .. }]),
            "{actions:?}"
        );
        assert_eq!(machine, before);
    }
}

#[test]
fn configs_that_cannot_produce_an_answer_are_refused() {
    assert_eq!(
        Consensus::new(ConsensusConfig::new(0)).err(),
        Some(ConsensusConfigError::NoAgents)
    );
    let mut config = ConsensusConfig::new(2);
    config.max_total_answers = Some(0);
    assert!(matches!(
        Consensus::new(config).err(),
        Some(ConsensusConfigError::ZeroCap {
            setting: "max_total_answers"
        })
    ));
}

#[test]
fn actions_survive_the_journal() {
    let (mut machine, plans) = started_with_one_answer(2, |_| {});
    let actions = machine.handle(vote(1, &plans[1], label_11()));
    let text = serde_json::to_string(&actions).expect("serialize");
    let back: Vec<Action> = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(back, actions);
}

fn abstain(agent: AgentIndex, plan: &TurnPlan) -> Input {
    Input::Decided {
        agent,
        turn: plan.turn,
        decision: Decision::Abstain {
            reason: "no valid decision".into(),
        },
        seen_revision: plan.revision,
    }
}

/// Two agents answer; the third abstains instead of voting: consensus among the voters.
#[test]
fn an_abstaining_agent_does_not_block_consensus_among_the_others() {
    let mut m = machine_with(3, |c| c.skip_final_presentation = true);
    let start = m.handle(Input::Start);
    let a0 = started(&start, 0);
    let after = m.handle(answer(0, &a0, "first"));
    let (p0, p1, p2) = (started(&after, 0), started(&after, 1), started(&after, 2));
    assert!(finished(&m.handle(vote(0, &p0, label(1, 1)))).is_none());
    let abstained = m.handle(abstain(2, &p2));
    assert!(matches!(
        events(&abstained)[0],
        Event::Abstained {
            agent: 2,
            revision: 1,
            ..
        }
    ));
    assert!(
        finished(&abstained).is_none(),
        "agent 1 has not decided yet"
    );
    let end = m.handle(vote(1, &p1, label(1, 1)));
    let outcome = finished(&end).expect("every live agent voted or abstained");
    assert_eq!(outcome.reason, EndReason::Consensus);
    assert_eq!(outcome.winner, Some((0, label(1, 1))));
    assert_eq!(outcome.votes.len(), 2);
}

/// Nobody votes: the earliest answer wins (the "no votes" rule), at once, with 0 votes.
#[test]
fn when_everyone_abstains_the_earliest_answer_wins() {
    let mut m = machine_with(2, |c| c.skip_final_presentation = true);
    let start = m.handle(Input::Start);
    let first = m.handle(answer(1, &started(&start, 1), "from agent 2"));
    let (p0, p1) = (started(&first, 0), started(&first, 1));
    assert!(finished(&m.handle(abstain(0, &p0))).is_none());
    let end = m.handle(abstain(1, &p1));
    assert!(end.iter().any(|a| matches!(
        a,
        Action::Record(Event::ConsensusReached {
            winner: 1,
            votes: 0,
            ..
        })
    )));
    let outcome = finished(&end).expect("the session ends");
    assert_eq!(outcome.winner, Some((1, label(2, 1))));
    assert_eq!(outcome.final_answer.as_deref(), Some("from agent 2"));
}

/// An abstention decided before the latest answer is stale: the agent re-decides with the new
/// answers; a new answer also clears earlier abstentions.
#[test]
fn a_stale_abstention_restarts_and_a_new_answer_clears_abstentions() {
    let mut m = machine_with(3, |c| c.restart_policy = RestartPolicy::Finish);
    let start = m.handle(Input::Start);
    let (t1, t2) = (started(&start, 1), started(&start, 2));
    m.handle(answer(0, &started(&start, 0), "one"));
    // Finish policy: agent 2's turn at revision 0 ran on; its abstention is stale.
    let stale = m.handle(abstain(2, &t2));
    assert!(matches!(
        events(&stale)[0],
        Event::TurnRestarted { agent: 2, .. }
    ));
    let t2_again = started(&stale, 2);
    assert_eq!(t2_again.revision, 1);
    assert!(matches!(
        events(&m.handle(abstain(2, &t2_again)))[0],
        Event::Abstained {
            agent: 2,
            revision: 1,
            ..
        }
    ));
    // A new answer (revision 2) clears the abstention: agent 2 gets a new turn.
    let r2 = m.handle(answer(1, &t1, "two"));
    assert_eq!(started(&r2, 2).revision, 2);
}

#[test]
fn single_call_presents_at_once_and_ends_with_that_answer() {
    let mut machine = machine_with(1, |c| c.single_call = true);
    let actions = machine.handle(Input::Start);
    let plan = started(&actions, 0);
    assert_eq!(plan.mode, TurnMode::Present);
    assert!(plan.answers.is_empty(), "no coordination came before");
    let actions = machine.handle(Input::Presented {
        agent: 0,
        turn: plan.turn,
        content: "42".into(),
    });
    let outcome = finished(&actions).expect("the one call ends the session");
    assert_eq!(outcome.reason, EndReason::Consensus);
    assert_eq!(outcome.final_answer.as_deref(), Some("42"));
    assert_eq!(outcome.presented_by, Some(0));

    // The call failing leaves no answer at all.
    let mut machine = machine_with(1, |c| c.single_call = true);
    let plan = started(&machine.handle(Input::Start), 0);
    let actions = machine.handle(Input::TurnFailed {
        agent: 0,
        turn: plan.turn,
        reason: "quota".into(),
    });
    let outcome = finished(&actions).expect("ends");
    assert_eq!(outcome.reason, EndReason::AllAgentsFailed);
    assert_eq!(outcome.final_answer, None);

    // With several agents the flag does nothing: everyone coordinates.
    let mut machine = machine_with(2, |c| c.single_call = true);
    let actions = machine.handle(Input::Start);
    assert_eq!(started(&actions, 0).mode, TurnMode::Coordinate);
    assert_eq!(started(&actions, 1).mode, TurnMode::Coordinate);
}

/// The injections sent in this batch of actions, as (agent, plan).
fn injected(actions: &[Action]) -> Vec<(AgentIndex, TurnPlan)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::InjectAnswers { agent, spec_parts } => Some((*agent, spec_parts.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn inject_policy_hands_new_answers_to_running_turns_and_counts_their_votes() {
    let mut machine = machine_with(3, |config| config.restart_policy = RestartPolicy::Inject);
    let start = machine.handle(Input::Start);
    let running = started(&start, 1);
    let actions = machine.handle(answer(0, &started(&start, 0), "a"));
    assert!(cancelled(&actions).is_empty(), "nothing is cancelled");
    let sent = injected(&actions);
    assert_eq!(
        sent.iter().map(|(agent, _)| *agent).collect::<Vec<_>>(),
        vec![1, 2],
        "both running turns get the new answer"
    );
    let plan = &sent[0].1;
    assert_eq!(plan.turn, running.turn, "the same turn, not a new one");
    assert_eq!(plan.revision, 1);
    assert_eq!(plan.answers.len(), 1);
    assert_eq!(machine.in_flight_turn(1), Some(running.turn));

    // Agent 1 took them at a tool boundary: its vote on revision 1 counts.
    let actions = machine.handle(Input::Injected {
        agent: 1,
        turn: running.turn,
        revision: 1,
    });
    assert!(matches!(
        events(&actions)[..],
        [Event::AnswersInjected {
            agent: 1,
            from_revision: 0,
            revision: 1,
            ..
        }]
    ));
    let actions = machine.handle(vote(1, plan, label_11()));
    assert!(
        matches!(events(&actions)[0], Event::VoteAccepted { agent: 1, .. }),
        "{actions:#?}"
    );

    // Agent 2 never reached a tool boundary: its vote on revision 0 is stale, as under finish.
    let actions = machine.handle(vote(2, &started(&start, 2), label_11()));
    assert!(matches!(
        events(&actions)[0],
        Event::VoteDiscarded { agent: 2, .. }
    ));
    assert_eq!(machine.rejections(2), 0);
    assert_eq!(started(&actions, 2).revision, 1);
}

#[test]
fn inject_policy_stops_at_the_injection_cap_and_ignores_bogus_reports() {
    let mut machine = machine_with(3, |config| {
        config.restart_policy = RestartPolicy::Inject;
        config.max_injections = 1;
        config.max_new_answers_per_agent = Some(5);
    });
    let start = machine.handle(Input::Start);
    let running = started(&start, 2);
    let actions = machine.handle(answer(0, &started(&start, 0), "a"));
    assert_eq!(injected(&actions).len(), 2);
    let actions = machine.handle(answer(1, &started(&start, 1), "b"));
    let sent = injected(&actions);
    assert!(
        sent.iter().all(|(agent, _)| *agent != 2),
        "agent 2's turn already had its one injection: {sent:#?}"
    );

    // A report of a revision that does not exist yet, of an older one, or of another turn
    // changes nothing.
    for (turn, revision) in [(running.turn, 9), (running.turn, 0), (TurnId(999), 1)] {
        let before = machine.clone();
        let actions = machine.handle(Input::Injected {
            agent: 2,
            turn,
            revision,
        });
        assert!(
            matches!(events(&actions)[..], [Event::InputIgnored { .. }]),
            "{actions:#?}"
        );
        assert_eq!(machine, before);
    }
    // The real one (revision 2 = both answers) is taken.
    let actions = machine.handle(Input::Injected {
        agent: 2,
        turn: running.turn,
        revision: 2,
    });
    assert!(matches!(
        events(&actions)[..],
        [Event::AnswersInjected { revision: 2, .. }]
    ));
}

#[test]
fn inject_policy_counts_votes_after_the_author_voted_first() {
    let mut machine = machine_with(3, |config| config.restart_policy = RestartPolicy::Inject);
    let start = machine.handle(Input::Start);
    let actions = machine.handle(answer(0, &started(&start, 0), "a"));
    let sent = injected(&actions);
    let own = started(&actions, 0);
    machine.handle(vote(0, &own, label_11()));
    for (agent, plan) in &sent {
        let actions = machine.handle(Input::Injected {
            agent: *agent,
            turn: plan.turn,
            revision: plan.revision,
        });
        assert!(
            matches!(events(&actions)[..], [Event::AnswersInjected { .. }]),
            "{actions:#?}"
        );
    }
    for (agent, plan) in &sent {
        let actions = machine.handle(vote(*agent, plan, label_11()));
        assert!(
            matches!(events(&actions)[0], Event::VoteAccepted { .. }),
            "{actions:#?}"
        );
    }
}
