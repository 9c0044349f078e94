//! The Coordinator actor: the sole writer of a session. It owns the consensus state machine
//! and the journal, turns agent reports into machine inputs, and carries out the machine's
//! actions (start or cancel turns, record events, finish).
//!
//! Every input is journaled before it is applied, in the order it is applied, so the journal
//! alone rebuilds the session. Reports are deduplicated by (sender, sequence number) and
//! checked against the session id; a report from an unknown sender is logged and dropped.
//! The orchestrator timeout is a message the coordinator sends itself when it begins.
//!
//! **Write-ahead.** Handling a message never lets anything out directly: journal lines are
//! recorded, and what would be visible outside (display lines, and through them stdout and the
//! server's HTTP view; commands to agents, among them the next turn's prompt; the final answer
//! file; the outcome) is queued as an effect. At the end of the message, if anything
//! recorded must be durable ([`JournalEvent::needs_sync`]), the coordinator asks the journal
//! for a commit and parks the message's effects behind it; the journal's writer thread answers
//! with `CoordinatorMsg::Committed` once the lines are synced, and only then are the effects
//! released, in order. The coordinator does not wait in between: it goes on with the next
//! messages (their effects queue behind the earlier ones), and the writer covers everything
//! queued meanwhile with one `fsync` (group commit), so a thousand agents deciding at once
//! cost a few syncs, not a thousand in a row. Effects that need no sync of their own (a
//! stream chunk) are released at once unless earlier effects are still waiting. If the
//! journal cannot be written, the waiting effects are dropped, nothing more is sent, and the
//! session ends with the journal's error (exit code 2).
//!
//! **Budgets.** Usage is counted as agents report it. Once `max_total_tokens` or
//! `max_cost_usd` is reached, the machine ends the session with the best answer so far: turns
//! in flight are cancelled, no turn starts, and no final presentation is asked for (that would
//! be another provider call): the best answer's own text is the final answer. The
//! `budget_exhausted` journal line says what was spent and by how much the cap was overshot.
//! A resumed session whose journal already spent its budget (a lower cap given to `resume`,
//! or a crash between the usage line and the end) ends the same way before any turn is
//! re-sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_protocol::{
    AgentReport, CoordinatorCommand, Decision, DecisionHow, Envelope, SequenceTracker, SessionId,
    StreamChunk, TaskSpec, TurnEvent, Usage,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::consensus::{Action, AgentIndex, Consensus, Event, Input, Outcome, TurnPlan};
use crate::display::{Display, Shown};
use crate::journal::{AgentUsage, FINAL_FILE, Journal, JournalError, JournalEvent};
/// What the coordinator hands over when the session ends (see [`crate::outcome`]).
pub use crate::outcome::SessionOutcome;
use crate::pricing::Price;
use crate::snapshots::SnapshotIntake;

/// Delivers a command to one agent. Returns false if the agent is unreachable.
pub type CommandSink = Arc<dyn Fn(Envelope<CoordinatorCommand>) -> bool + Send + Sync>;

/// How the coordinator reaches one agent.
#[derive(Clone)]
pub struct AgentLink {
    pub id: Arc<str>,
    pub commands: CommandSink,
}

/// Messages of the coordinator.
pub enum CoordinatorMsg {
    /// The agents are up: begin the session.
    Begin { agents: Vec<AgentLink> },
    /// A report from an agent.
    Report(Envelope<AgentReport>),
    /// The supervisor saw an agent actor die, or a node was lost.
    AgentDown { agent: AgentIndex, reason: String },
    /// A lost agent is running again (its node came back and a new incarnation of it was
    /// started): it rejoins with the current answers. The new incarnation numbers its reports
    /// from 1, so the agent's sequence numbers are forgotten here, on purpose; reports of the
    /// old incarnation never get this far (the cluster gateway drops them).
    AgentBack {
        agent: AgentIndex,
        /// The node it is back on.
        node: String,
        /// How its MCP servers started on the node this time (journaled like the first start).
        tools: Vec<conclave_protocol::tools::ServerStartReport>,
    },
    /// The orchestrator timeout expired.
    Timeout,
    /// The user pressed Ctrl-C.
    Interrupt,
    /// Stop without ending the session: send no new turn, let the turns in flight finish (their
    /// provider calls are paid for) and journal them, then stop with the journal left open
    /// for a resume. A batch's first Ctrl-C or SIGTERM (see [`crate::batch`]).
    Pause,
    /// The journal's writer synced everything up to commit number `upto` (or failed).
    Committed {
        upto: u64,
        result: Result<(), JournalError>,
    },
}

impl ractor::Message for CoordinatorMsg {}

/// Everything a coordinator starts with.
pub struct CoordinatorArgs {
    pub session: SessionId,
    pub session_dir: std::path::PathBuf,
    pub task: Arc<TaskSpec>,
    pub machine: Consensus,
    pub journal: Journal,
    pub display: Display,
    pub timeout: Duration,
    /// Receives the outcome (`None` when the session was paused), or the journal error that
    /// ended the session.
    pub done: oneshot::Sender<Result<Option<SessionOutcome>, JournalError>>,
    /// Set when the session continues from its journal after a crash.
    pub resumed: Option<Resumed>,
    pub budget: Budget,
    /// Where each agent with a workspace leaves its files (agent id, the directory as
    /// `final.md` names it): the presenter's (or, without a presentation, the winner's) is
    /// named in `final.md`.
    pub final_files: Vec<(String, String)>,
    /// Answers' workspace snapshots (see [`crate::snapshots`]); `None` when no agent of the
    /// session has a workspace.
    pub snapshots: Option<SnapshotIntake>,
}

/// A session's spending limits and the price of each agent's model (by agent index).
#[derive(Debug, Clone, Default)]
pub struct Budget {
    pub max_cost_usd: Option<f64>,
    pub max_total_tokens: Option<u64>,
    pub prices: Vec<Option<Price>>,
}

/// What a resumed coordinator carries over from the journal (see [`crate::resume`]).
pub struct Resumed {
    /// Turns in flight at the crash, to run again.
    pub resend: Vec<(AgentIndex, TurnPlan)>,
    pub usage: Vec<Usage>,
    pub answers: u32,
    pub turns: u64,
}

/// Something visible outside the coordinator, held back until the journal lines it depends
/// on are durable (see the module docs).
enum Effect {
    /// A journal event for the display and the session's trace.
    Event(JournalEvent),
    Chunk(Shown),
    Command(AgentIndex, Envelope<CoordinatorCommand>),
    /// The final answer's file, then the final display line.
    Final {
        content: Option<String>,
        /// Where the final files are (the presenter's workspace), for `final.md`.
        files: Option<String>,
        shown: Shown,
    },
    /// The session is over: close the journal and hand the outcome over.
    End(SessionOutcome),
    /// The session paused: close the journal as it stands (no end line) and say so.
    Paused,
}

pub struct CoordinatorState {
    session: SessionId,
    session_dir: std::path::PathBuf,
    task: Arc<TaskSpec>,
    machine: Consensus,
    journal: Option<Journal>,
    display: Display,
    timeout: Duration,
    done: Option<oneshot::Sender<Result<Option<SessionOutcome>, JournalError>>>,
    /// Set by [`CoordinatorMsg::Pause`]: turns are journaled as started but not sent.
    pausing: bool,
    /// Set once the pause is decided: only journal commits are handled after it.
    paused: bool,
    /// Per agent, the turn journaled while pausing and never sent (it is still the machine's
    /// turn in flight, so a resume sends it).
    unsent: Vec<Option<conclave_protocol::TurnId>>,
    /// What the current message made visible.
    pending: Vec<Effect>,
    /// Whether something the current message recorded must be synced first.
    must_commit: bool,
    /// Effects parked behind a commit, by commit number, oldest first.
    waiting: std::collections::VecDeque<(u64, Vec<Effect>)>,
    /// Commits asked for so far.
    commits: u64,
    /// The first journal error; it ends the session.
    journal_error: Option<JournalError>,
    /// Set once the session is over (ended or failed): later messages are ignored.
    over: bool,
    agents: Vec<AgentLink>,
    by_name: HashMap<Arc<str>, AgentIndex>,
    seen: SequenceTracker,
    next_seq: u64,
    started: Instant,
    usage: Vec<Usage>,
    answers: u32,
    turns: u64,
    resumed: Option<Resumed>,
    budget: Budget,
    final_files: Vec<(String, String)>,
    snapshots: Option<SnapshotIntake>,
    /// The session's root span `invoke_workflow conclave`, from Begin to finish; every command
    /// carries its trace context.
    span: tracing::Span,
    /// The orchestrator-timeout timer. A pending timer holds a reference to this actor (its
    /// mailbox and queued messages), so it is aborted when the actor stops: in a long-lived
    /// server it would otherwise keep every finished session's actors for the whole timeout.
    timeout_timer: Option<tokio::task::AbortHandle>,
}

impl CoordinatorState {
    fn agent_name(&self, agent: AgentIndex) -> String {
        self.agents
            .get(agent as usize)
            .map(|a| a.id.to_string())
            .unwrap_or_else(|| format!("agent#{agent}"))
    }

    /// Journals an event; its display waits for the commit.
    fn record(&mut self, event: JournalEvent) {
        self.journal_only(&event);
        self.pending.push(Effect::Event(event));
    }

    /// Journals an event that is not displayed.
    fn journal_only(&mut self, event: &JournalEvent) {
        self.must_commit |= event.needs_sync();
        if let Some(journal) = &self.journal
            && let Err(error) = journal.record(event.clone())
            && self.journal_error.is_none()
        {
            self.journal_error = Some(error);
        }
    }

    fn send(&mut self, agent: AgentIndex, body: CoordinatorCommand) {
        if agent as usize >= self.agents.len() {
            return;
        }
        let envelope = Envelope {
            session: self.session.clone(),
            sender: "coordinator".to_owned(),
            seq: self.next_seq,
            trace: conclave_telemetry::inject_span(&self.span),
            body,
        };
        self.next_seq += 1;
        self.pending.push(Effect::Command(agent, envelope));
    }

    /// At the end of a message: parks what it made visible behind a commit of what it
    /// recorded, or behind effects still waiting, or releases it at once when neither is
    /// needed. On a journal failure nothing is released and the session ends with the error.
    async fn flush(&mut self, myself: &ActorRef<CoordinatorMsg>) {
        if let Some(error) = self.journal_error.take() {
            self.fail(myself, error);
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let must_commit = std::mem::take(&mut self.must_commit);
        match &self.journal {
            Some(journal) if must_commit => {
                self.commits += 1;
                let upto = self.commits;
                let me = myself.clone();
                journal.commit_then(Box::new(move |result| {
                    let _ = me.send_message(CoordinatorMsg::Committed { upto, result });
                }));
                self.waiting.push_back((upto, batch));
            }
            _ => match self.waiting.back_mut() {
                Some((_, parked)) => parked.extend(batch),
                None => self.release(myself, batch).await,
            },
        }
    }

    /// The journal synced up to commit `upto`: release what waited for it.
    async fn on_committed(
        &mut self,
        myself: &ActorRef<CoordinatorMsg>,
        upto: u64,
        result: Result<(), JournalError>,
    ) {
        if let Err(error) = result {
            self.fail(myself, error);
            return;
        }
        while self.waiting.front().is_some_and(|(n, _)| *n <= upto) {
            let Some((_, batch)) = self.waiting.pop_front() else {
                break;
            };
            self.release(myself, batch).await;
            if self.over {
                return;
            }
        }
    }

    /// Lets effects out, in order.
    async fn release(&mut self, myself: &ActorRef<CoordinatorMsg>, batch: Vec<Effect>) {
        for effect in batch {
            match effect {
                Effect::Event(event) => {
                    crate::telemetry::session_event(&self.span, &event);
                    self.display.show(Shown::Event(event));
                }
                Effect::Chunk(shown) => self.display.show(shown),
                Effect::Command(agent, envelope) => {
                    if let Some(link) = self.agents.get(agent as usize)
                        && !(link.commands)(envelope)
                    {
                        warn!(agent = %link.id, "agent unreachable; command dropped");
                    }
                }
                Effect::Final {
                    content,
                    files,
                    shown,
                } => {
                    if let Some(content) = content {
                        self.write_final(&content, files.as_deref());
                    }
                    self.display.show(shown);
                }
                Effect::End(outcome) => {
                    self.hand_over(myself, Some(outcome)).await;
                    return;
                }
                Effect::Paused => {
                    self.hand_over(myself, None).await;
                    return;
                }
            }
        }
    }

    /// `final.md`: a copy of the final answer for people (the journal has it too), ending
    /// with where the final files are when the presenter has a workspace.
    fn write_final(&self, content: &str, files: Option<&str>) {
        let path = self.session_dir.join(FINAL_FILE);
        let mut text = content.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if let Some(files) = files {
            text.push_str(&format!("\n---\n\nThe final files are in {files}.\n"));
        }
        if let Err(error) = std::fs::write(&path, text) {
            error!(%error, path = %path.display(), "could not write the final answer file");
        }
    }

    /// The end, after the last release: close the journal and report the outcome (`None`:
    /// paused).
    async fn hand_over(
        &mut self,
        myself: &ActorRef<CoordinatorMsg>,
        outcome: Option<SessionOutcome>,
    ) {
        if let Some(intake) = self.snapshots.as_mut() {
            intake.close();
        }
        if let Some(journal) = self.journal.take() {
            let closed = tokio::task::spawn_blocking(move || journal.close())
                .await
                .unwrap_or(Err(JournalError::WriterGone));
            if let Err(error) = closed {
                self.fail(myself, error);
                return;
            }
        }
        if let Some(outcome) = &outcome {
            crate::telemetry::end_session(&self.span, outcome);
        }
        // Dropping the span ends it.
        self.span = tracing::Span::none();
        if let Some(done) = self.done.take() {
            let _ = done.send(Ok(outcome));
        }
        self.over = true;
        myself.stop(Some("session finished".into()));
    }

    /// While pausing: once no turn that was sent is still running, stop the agents and
    /// close the journal as it stands (after its lines are durable, like an end).
    fn pause_if_drained(&mut self) {
        if !self.pausing || self.paused || self.over || self.machine.is_finished() {
            return;
        }
        let agents = self.agents.len() as AgentIndex;
        let running = (0..agents).any(|agent| {
            let in_flight = self.machine.in_flight_turn(agent);
            in_flight.is_some() && in_flight != self.unsent.get(agent as usize).copied().flatten()
        });
        if running {
            return;
        }
        let agents_waiting = (0..agents)
            .filter(|&agent| self.machine.in_flight_turn(agent).is_some())
            .map(|agent| self.agent_name(agent))
            .collect::<Vec<_>>();
        info!(
            waiting = agents_waiting.len(),
            "no provider call in flight; pausing the session"
        );
        self.record(JournalEvent::SessionPaused { agents_waiting });
        for agent in 0..agents {
            self.send(agent, CoordinatorCommand::Stop);
        }
        self.pending.push(Effect::Paused);
        // Nothing more is taken in: the machine must stay as the journal has it.
        self.paused = true;
    }

    /// The journal cannot be written: nothing more is released or sent, and the session
    /// ends with the error (the supervisor stops the agents).
    fn fail(&mut self, myself: &ActorRef<CoordinatorMsg>, error: JournalError) {
        error!(error = %conclave_protocol::error_text(&error), "the journal failed; ending the session");
        self.pending.clear();
        self.waiting.clear();
        // Its error is the one being reported; closing only stops the writer thread.
        if let Some(journal) = self.journal.take() {
            let _ = journal.close();
        }
        self.over = true;
        self.span = tracing::Span::none();
        if let Some(done) = self.done.take() {
            let _ = done.send(Err(error));
        }
        myself.stop(Some("journal failed".into()));
    }

    /// The priced part of the usage so far; `None` when no agent's model has a price.
    fn cost(&self) -> Option<f64> {
        let priced = self
            .usage
            .iter()
            .zip(&self.budget.prices)
            .filter_map(|(usage, price)| price.map(|p| p.cost(*usage)));
        priced.fold(None, |sum, cost| Some(sum.unwrap_or(0.0) + cost))
    }

    /// Tokens used so far, input and output. Saturating: a provider reporting absurd usage
    /// must not crash the coordinator.
    fn tokens_used(&self) -> u64 {
        self.usage.iter().fold(0u64, |sum, u| {
            sum.saturating_add(u.input_tokens)
                .saturating_add(u.output_tokens)
        })
    }

    /// The journal line of a reached cap: what was spent and by how much it overshot.
    fn budget_line(&self, reason: String) -> JournalEvent {
        let tokens = self.tokens_used();
        let cost = self.cost();
        let max_tokens = self.budget.max_total_tokens;
        let max_cost = self.budget.max_cost_usd;
        JournalEvent::BudgetExhausted {
            reason,
            tokens_used: Some(tokens),
            max_total_tokens: max_tokens,
            tokens_over: max_tokens
                .filter(|limit| tokens >= *limit)
                .map(|limit| tokens - limit),
            cost_usd: cost,
            max_cost_usd: max_cost,
            cost_over_usd: match (cost, max_cost) {
                (Some(cost), Some(limit)) if cost >= limit => Some(cost - limit),
                _ => None,
            },
        }
    }

    /// Why the session must stop for its budget, if it must.
    fn budget_exceeded(&self) -> Option<String> {
        let tokens = self.tokens_used();
        if let Some(limit) = self.budget.max_total_tokens
            && tokens >= limit
        {
            return Some(format!(
                "max_total_tokens reached: {tokens} tokens used, limit {limit}"
            ));
        }
        if let (Some(limit), Some(cost)) = (self.budget.max_cost_usd, self.cost())
            && cost >= limit
        {
            return Some(format!(
                "max_cost_usd reached: ${cost:.4} spent, limit ${limit:.4}"
            ));
        }
        None
    }

    /// Journals a turn and sends it to its agent.
    fn start_turn(&mut self, agent: AgentIndex, plan: TurnPlan) {
        let mut spec = plan.into_spec(self.task.clone(), agent);
        self.name_snapshots(&mut spec);
        self.turns += 1;
        let (agent_index, turn) = (agent as usize, spec.turn);
        self.record(JournalEvent::TurnStarted {
            agent: self.agent_name(agent),
            turn: spec.turn.0,
            mode: match spec.mode {
                conclave_protocol::TurnMode::Coordinate => "coordinate".into(),
                conclave_protocol::TurnMode::Present => "present".into(),
            },
            revision: spec.revision,
            may_answer: spec.may_answer,
            answers: spec.answers.iter().map(|a| a.label.to_string()).collect(),
        });
        if self.pausing {
            // Journaled, so a resume sends it; not sent, so nobody pays for it twice.
            if let Some(slot) = self.unsent.get_mut(agent_index) {
                *slot = Some(turn);
            }
            return;
        }
        self.send(agent, CoordinatorCommand::StartTurn(spec));
    }

    /// Feeds one input to the machine and carries out what it asks.
    fn apply(&mut self, input: Input) {
        let actions = self.machine.handle(input);
        for action in actions {
            match action {
                Action::StartTurn { agent, spec_parts } => self.start_turn(agent, spec_parts),
                Action::CancelTurn { agent, turn } => {
                    self.record(JournalEvent::TurnCancelled {
                        agent: self.agent_name(agent),
                        turn: turn.0,
                    });
                    self.send(agent, CoordinatorCommand::Cancel { turn });
                }
                Action::InjectAnswers { agent, spec_parts } => {
                    let mut spec = spec_parts.into_spec(self.task.clone(), agent);
                    self.name_snapshots(&mut spec);
                    self.record(JournalEvent::InjectionSent {
                        agent: self.agent_name(agent),
                        turn: spec.turn.0,
                        revision: spec.revision,
                        answers: spec.answers.iter().map(|a| a.label.to_string()).collect(),
                    });
                    self.send(agent, CoordinatorCommand::Inject(spec));
                }
                Action::Record(event) => self.record_event(event),
                Action::Finish(outcome) => self.finish(outcome),
            }
        }
    }

    fn record_event(&mut self, event: Event) {
        let journal_event = match event {
            Event::AnswerAccepted {
                agent,
                turn,
                label,
                revision,
                seen_revision,
                stale,
            } => {
                self.answers += 1;
                let snapshot_dir = self.store_snapshot(agent, turn, label);
                let content = self
                    .machine
                    .answer_content(label)
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                info!(agent = %self.agent_name(agent), %label, revision, stale, "answer accepted");
                JournalEvent::AnswerAccepted {
                    agent: self.agent_name(agent),
                    label: label.to_string(),
                    revision,
                    seen_revision,
                    stale,
                    content,
                    snapshot_dir,
                }
            }
            Event::AnswerRejected { agent, reason, .. } => {
                self.drop_snapshot(agent, "its answer was rejected");
                JournalEvent::AnswerRejected {
                    agent: self.agent_name(agent),
                    reason,
                }
            }
            Event::VoteAccepted {
                agent,
                label,
                revision,
                reason,
                ..
            } => {
                info!(agent = %self.agent_name(agent), %label, revision, "vote accepted");
                JournalEvent::VoteAccepted {
                    agent: self.agent_name(agent),
                    label: label.to_string(),
                    revision,
                    reason,
                }
            }
            Event::Abstained {
                agent,
                turn,
                revision,
                reason,
            } => {
                info!(agent = %self.agent_name(agent), %turn, revision, "abstained");
                JournalEvent::Abstained {
                    agent: self.agent_name(agent),
                    turn: turn.0,
                    revision,
                    reason,
                }
            }
            Event::VoteDiscarded {
                agent,
                label,
                seen_revision,
                revision,
                why,
                ..
            } => JournalEvent::VoteDiscarded {
                agent: self.agent_name(agent),
                label: label.to_string(),
                seen_revision,
                revision,
                why,
            },
            Event::VoteRejected {
                agent,
                label,
                seen_revision,
                revision,
                why,
                ..
            } => JournalEvent::VoteRejected {
                agent: self.agent_name(agent),
                label: label.to_string(),
                seen_revision,
                revision,
                why,
            },
            Event::TurnRestarted {
                agent,
                old_turn,
                reason,
                ..
            } => JournalEvent::TurnRestarted {
                agent: self.agent_name(agent),
                old_turn: old_turn.map(|t| t.0),
                reason,
            },
            Event::AgentFailed { agent, reason } => {
                warn!(agent = %self.agent_name(agent), %reason, "agent failed");
                JournalEvent::AgentFailed {
                    agent: self.agent_name(agent),
                    reason,
                }
            }
            Event::AgentRejoined { agent } => JournalEvent::AgentRejoined {
                agent: self.agent_name(agent),
            },
            Event::AnswersInjected {
                agent,
                turn,
                from_revision,
                revision,
            } => {
                info!(agent = %self.agent_name(agent), %turn, from_revision, revision, "answers injected");
                JournalEvent::AnswersInjected {
                    agent: self.agent_name(agent),
                    turn: turn.0,
                    from_revision,
                    revision,
                }
            }
            Event::InjectionDeclined {
                agent,
                turn,
                fallback,
            } => JournalEvent::InjectionDeclined {
                agent: self.agent_name(agent),
                turn: turn.0,
                fallback: fallback.as_str().to_owned(),
            },
            Event::InputIgnored { agent, turn, why } => {
                debug!(?agent, ?turn, %why, "input ignored");
                JournalEvent::InputIgnored {
                    agent: agent.map(|a| self.agent_name(a)),
                    turn: turn.map(|t| t.0),
                    why,
                }
            }
            Event::ConsensusReached {
                winner,
                label,
                votes,
            } => {
                info!(winner = %self.agent_name(winner), %label, votes, "consensus reached");
                JournalEvent::ConsensusReached {
                    winner: self.agent_name(winner),
                    label: label.to_string(),
                    votes,
                }
            }
            Event::PresentationFailed { agent, reason, .. } => JournalEvent::PresentationFailed {
                agent: self.agent_name(agent),
                reason,
            },
            Event::TimedOut => JournalEvent::TimedOut {
                after_ms: self.started.elapsed().as_millis() as u64,
            },
            Event::Interrupted => JournalEvent::Interrupted,
            Event::AllAgentsFailed => JournalEvent::AllAgentsFailed,
            Event::BudgetExhausted { reason } => self.budget_line(reason),
        };
        self.record(journal_event);
    }

    /// Records the end; the final answer is shown, and the outcome handed over, once it is
    /// durable (see [`CoordinatorState::flush`]).
    fn finish(&mut self, outcome: Outcome) {
        let wall = self.started.elapsed();
        let winner = outcome.winner.map(|(agent, _)| self.agent_name(agent));
        let label = outcome.winner.map(|(_, label)| label.to_string());
        let presented_by = outcome.presented_by.map(|a| self.agent_name(a));
        let final_answer = outcome.final_answer.as_ref().map(|c| c.to_string());
        let mut total = Usage::default();
        for usage in &self.usage {
            total.add(*usage);
        }
        let outcome = SessionOutcome {
            session: self.session.clone(),
            reason: outcome.reason,
            final_answer,
            winner,
            label,
            presented_by,
            usage: total,
            usage_by_agent: self
                .agents
                .iter()
                .zip(&self.usage)
                .map(|(a, u)| (a.id.to_string(), *u))
                .collect(),
            cost_usd: self.cost(),
            unpriced: self
                .agents
                .iter()
                .zip(&self.budget.prices)
                .filter(|(_, price)| price.is_none())
                .map(|(a, _)| a.id.to_string())
                .collect(),
            answers: self.answers,
            turns: self.turns,
            wall,
        };
        if let Some(content) = &outcome.final_answer {
            self.record(JournalEvent::FinalAnswer {
                winner: outcome.winner.clone(),
                label: outcome.label.clone(),
                presented_by: outcome.presented_by.clone(),
                content: content.clone(),
            });
        }
        {
            let ended = JournalEvent::SessionEnded {
                reason: outcome.reason.as_str().to_owned(),
                exit_code: outcome.exit_code(),
                wall_ms: wall.as_millis() as u64,
                input_tokens: total.input_tokens,
                output_tokens: total.output_tokens,
                answers: outcome.answers,
                turns: outcome.turns,
                cost_usd: outcome.cost_usd,
                usage_by_agent: self
                    .agents
                    .iter()
                    .zip(&self.usage)
                    .zip(&self.budget.prices)
                    .map(|((a, u), price)| AgentUsage {
                        agent: a.id.to_string(),
                        input_tokens: u.input_tokens,
                        output_tokens: u.output_tokens,
                        cost_usd: price.map(|p| p.cost(*u)),
                    })
                    .collect(),
            };
            self.journal_only(&ended);
        }
        let files = outcome
            .presented_by
            .as_ref()
            .or(outcome.winner.as_ref())
            .and_then(|id| self.final_files.iter().find(|(agent, _)| agent == id))
            .map(|(_, files)| files.clone());
        self.pending.push(Effect::Final {
            content: outcome.final_answer.clone(),
            files,
            shown: Shown::Final {
                content: outcome
                    .final_answer
                    .clone()
                    .unwrap_or_else(|| "(no answer was produced)".to_owned()),
                winner: outcome.winner.clone(),
                label: outcome.label.clone(),
                reason: outcome.reason.as_str().to_owned(),
            },
        });
        for agent in 0..self.agents.len() as AgentIndex {
            self.send(agent, CoordinatorCommand::Stop);
        }
        self.pending.push(Effect::End(outcome));
    }

    /// Names the current answers' snapshots in a turn (`TurnSpec::snapshots`).
    fn name_snapshots(&self, spec: &mut conclave_protocol::TurnSpec) {
        if let Some(intake) = &self.snapshots {
            spec.snapshots = intake.store().peer_snapshots(&spec.answers);
        }
    }

    /// The snapshot that came with `agent`'s `new_answer` of `turn`, complete and checked.
    fn complete_snapshot(
        &mut self,
        agent: AgentIndex,
        turn: conclave_protocol::TurnId,
    ) -> Result<Option<Arc<conclave_protocol::snapshot::SnapshotManifest>>, String> {
        match self.snapshots.as_mut() {
            Some(intake) => intake.complete(agent, turn),
            None => Ok(None),
        }
    }

    /// Stores the snapshot of an accepted answer under its label; returns where.
    fn store_snapshot(
        &mut self,
        agent: AgentIndex,
        turn: conclave_protocol::TurnId,
        label: conclave_protocol::AnswerLabel,
    ) -> Option<String> {
        let intake = self.snapshots.as_mut()?;
        match intake.accept(agent, turn, label) {
            Ok(dir) => dir.map(|d| d.display().to_string()),
            Err(error) => {
                let reason = format!("answer {label}'s snapshot could not be stored: {error}");
                error!(%reason, "snapshot lost");
                self.record(JournalEvent::SnapshotDropped {
                    agent: self.agent_name(agent),
                    reason,
                });
                None
            }
        }
    }

    /// Drops `agent`'s snapshot on its way, journaling what was dropped and why.
    fn drop_snapshot(&mut self, agent: AgentIndex, why: &str) {
        let Some(dropped) = self.snapshots.as_mut().and_then(|i| i.drop_incoming(agent)) else {
            return;
        };
        self.record(JournalEvent::SnapshotDropped {
            agent: self.agent_name(agent),
            reason: format!("{dropped} was dropped: {why}"),
        });
    }

    fn on_report(&mut self, envelope: Envelope<AgentReport>) {
        if envelope.session != self.session {
            warn!(session = %envelope.session, sender = %envelope.sender, "report for another session dropped");
            return;
        }
        let Some(&agent) = self.by_name.get(envelope.sender.as_str()) else {
            warn!(sender = %envelope.sender, "report from an unknown agent dropped");
            return;
        };
        if !self.seen.accept(&envelope.sender, envelope.seq) {
            debug!(sender = %envelope.sender, seq = envelope.seq, "duplicate report dropped");
            return;
        }
        let name = self.agents[agent as usize].id.clone();
        match envelope.body {
            AgentReport::Chunk { turn, chunk } => {
                if let StreamChunk::Usage(usage) = &chunk {
                    if let Some(total) = self.usage.get_mut(agent as usize) {
                        total.add(*usage);
                    }
                    let price = self.budget.prices.get(agent as usize).copied().flatten();
                    self.journal_only(&JournalEvent::Usage {
                        agent: name.to_string(),
                        turn: turn.0,
                        input_tokens: usage.input_tokens,
                        output_tokens: usage.output_tokens,
                        cost_usd: price.map(|p| p.cost(*usage)),
                    });
                    if let Some(reason) = self.budget_exceeded() {
                        warn!(%reason, "budget cap reached; ending the session");
                        self.apply(Input::BudgetExhausted { reason });
                        return;
                    }
                }
                if self.display.wants_chunks() {
                    self.pending.push(Effect::Chunk(Shown::Chunk {
                        agent: name,
                        turn: turn.0,
                        chunk,
                    }));
                }
            }
            AgentReport::Decided {
                turn,
                decision,
                seen_revision,
                how,
            } => {
                let snapshot = match &decision {
                    Decision::NewAnswer { .. } => match self.complete_snapshot(agent, turn) {
                        Ok(snapshot) => snapshot,
                        Err(reason) => {
                            // Never a half-copied snapshot: the answer's turn fails instead.
                            let message =
                                format!("the answer's workspace snapshot was refused: {reason}");
                            warn!(agent = %name, %turn, %message, "answer refused");
                            self.record(JournalEvent::TurnFailed {
                                agent: name.to_string(),
                                turn: turn.0,
                                kind: "snapshot".to_owned(),
                                message: message.clone(),
                            });
                            self.apply(Input::TurnFailed {
                                agent,
                                turn,
                                reason: format!("snapshot: {message}"),
                            });
                            return;
                        }
                    },
                    _ => None,
                };
                self.record(JournalEvent::DecisionReceived {
                    agent: name.to_string(),
                    turn: turn.0,
                    seen_revision,
                    implicit: how == DecisionHow::Implicit
                        && matches!(decision, Decision::NewAnswer { .. }),
                    decision: decision.clone(),
                    how,
                    snapshot: snapshot.map(|m| (*m).clone()),
                });
                self.apply(Input::Decided {
                    agent,
                    turn,
                    decision,
                    seen_revision,
                });
            }
            AgentReport::Presented { turn, content } => {
                self.record(JournalEvent::PresentationReceived {
                    agent: name.to_string(),
                    turn: turn.0,
                    content: content.clone(),
                });
                if content.trim().is_empty() {
                    self.apply(Input::TurnFailed {
                        agent,
                        turn,
                        reason: "the presentation was empty".into(),
                    });
                } else {
                    self.apply(Input::Presented {
                        agent,
                        turn,
                        content,
                    });
                }
            }
            AgentReport::TurnFailed { turn, error } => {
                warn!(agent = %name, %turn, kind = error.kind.as_str(), message = %error.message, "turn failed");
                self.record(JournalEvent::TurnFailed {
                    agent: name.to_string(),
                    turn: turn.0,
                    kind: error.kind.as_str().to_owned(),
                    message: error.message.clone(),
                });
                self.apply(Input::TurnFailed {
                    agent,
                    turn,
                    reason: format!("{}: {}", error.kind.as_str(), error.message),
                });
            }
            AgentReport::SnapshotBegin { turn, manifest } => {
                let refused = self
                    .snapshots
                    .as_mut()
                    .map_or(Err("the session keeps no snapshots".to_owned()), |intake| {
                        intake.begin(agent, turn, manifest)
                    });
                if let Err(reason) = refused {
                    warn!(agent = %name, %turn, %reason, "snapshot refused");
                }
            }
            AgentReport::SnapshotChunk { turn, offset, data } => {
                if let Some(intake) = self.snapshots.as_mut() {
                    intake.chunk(agent, turn, offset, &data);
                }
            }
            AgentReport::TurnEvent { turn, event } => {
                let input = match &event {
                    TurnEvent::AnswersInjected { revision, .. } => Some(Input::Injected {
                        agent,
                        turn,
                        revision: *revision,
                    }),
                    TurnEvent::InjectionDeclined { .. } => {
                        Some(Input::InjectionDeclined { agent, turn })
                    }
                    _ => None,
                };
                self.record(JournalEvent::TurnProgress {
                    agent: name.to_string(),
                    turn: turn.0,
                    event,
                });
                if let Some(input) = input {
                    self.apply(input);
                }
            }
        }
    }
}

/// The coordinator actor.
pub struct Coordinator;

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn post_stop(
        &self,
        _myself: ActorRef<CoordinatorMsg>,
        state: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timeout_timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn pre_start(
        &self,
        _myself: ActorRef<CoordinatorMsg>,
        args: CoordinatorArgs,
    ) -> Result<CoordinatorState, ActorProcessingErr> {
        Ok(CoordinatorState {
            session: args.session,
            session_dir: args.session_dir,
            task: args.task,
            machine: args.machine,
            journal: Some(args.journal),
            display: args.display,
            timeout: args.timeout,
            done: Some(args.done),
            pausing: false,
            paused: false,
            unsent: Vec::new(),
            resumed: args.resumed,
            budget: args.budget,
            final_files: args.final_files,
            snapshots: args.snapshots,
            span: tracing::Span::none(),
            timeout_timer: None,
            agents: Vec::new(),
            by_name: HashMap::new(),
            seen: SequenceTracker::default(),
            next_seq: 1,
            started: Instant::now(),
            usage: Vec::new(),
            answers: 0,
            turns: 0,
            pending: Vec::new(),
            must_commit: false,
            waiting: std::collections::VecDeque::new(),
            commits: 0,
            journal_error: None,
            over: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        message: CoordinatorMsg,
        state: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        if let CoordinatorMsg::Begin { agents } = message {
            state.by_name = agents
                .iter()
                .enumerate()
                .map(|(i, a)| (a.id.clone(), i as AgentIndex))
                .collect();
            state.usage = vec![Usage::default(); agents.len()];
            state.unsent = vec![None; agents.len()];
            state.agents = agents;
            state.started = Instant::now();
            state.span = crate::telemetry::session_span(
                &state.session,
                state.agents.len(),
                state.resumed.is_some(),
            );
            state.timeout_timer = Some(
                myself
                    .send_after(state.timeout, || CoordinatorMsg::Timeout)
                    .abort_handle(),
            );
            match state.resumed.take() {
                None => state.apply(Input::Start),
                Some(resumed) => {
                    state.usage = resumed.usage;
                    state.usage.resize(state.agents.len(), Usage::default());
                    state.answers = resumed.answers;
                    state.turns = resumed.turns;
                    if let Some(outcome) = state.machine.outcome().cloned() {
                        // The crash came after the end was decided but before it was written.
                        state.finish(outcome);
                    } else if let Some(reason) = state.budget_exceeded() {
                        // The journal already spent the budget: no turn is sent again.
                        warn!(%reason, "budget cap already reached; ending the resumed session");
                        state.apply(Input::BudgetExhausted { reason });
                    } else {
                        for (agent, plan) in resumed.resend {
                            state.start_turn(agent, plan);
                        }
                    }
                }
            }
            state.flush(&myself).await;
            return Ok(());
        }
        if state.over {
            return Ok(());
        }
        if let CoordinatorMsg::Committed { upto, result } = message {
            state.on_committed(&myself, upto, result).await;
            return Ok(());
        }
        if state.machine.is_finished() || state.paused {
            return Ok(());
        }
        match message {
            CoordinatorMsg::Begin { .. } | CoordinatorMsg::Committed { .. } => {}
            CoordinatorMsg::Report(envelope) => state.on_report(envelope),
            CoordinatorMsg::AgentDown { agent, reason } => {
                let name = state.agent_name(agent);
                state.record(JournalEvent::AgentLost {
                    agent: name,
                    reason: reason.clone(),
                });
                state.drop_snapshot(agent, &format!("the agent was lost ({reason})"));
                state.apply(Input::AgentLost { agent, reason });
            }
            CoordinatorMsg::AgentBack { agent, node, tools } => {
                let name = state.agent_name(agent);
                state.seen.reset(&name);
                info!(agent = %name, "agent back; it rejoins with the current answers");
                for report in tools {
                    let event =
                        JournalEvent::tool_server_started(&name, Some(node.clone()), report);
                    state.record(event);
                }
                state.apply(Input::AgentRejoined { agent });
            }
            CoordinatorMsg::Timeout => state.apply(Input::Timeout),
            CoordinatorMsg::Interrupt => state.apply(Input::Interrupted),
            CoordinatorMsg::Pause => {
                if !state.pausing {
                    info!("pausing: no new turn is sent; waiting for the turns in flight");
                    state.pausing = true;
                }
            }
        }
        state.pause_if_drained();
        state.flush(&myself).await;
        Ok(())
    }
}
