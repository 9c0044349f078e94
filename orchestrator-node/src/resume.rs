//! Resuming a session whose orchestrator died (`conclave resume <session>`).
//!
//! The journal is the session's memory. The coordinator journals every machine input before it
//! applies it (decisions, presentations, failed turns, lost agents; a timeout or interrupt is
//! journaled as the event it produces), and the consensus machine is deterministic, so feeding
//! the same inputs into a fresh machine rebuilds exactly the state the dead orchestrator had,
//! turn ids included.
//!
//! After the replay, the turns the machine still waits for were in flight at the crash: their
//! decisions never reached the journal, so they are sent again. A turn whose decision was
//! journaled is never sent to a provider again; that is the guarantee that makes resuming
//! cheap. Choices where the design is silent:
//! * the orchestrator timeout starts afresh when the session resumes (the time the process was
//!   dead does not count against it);
//! * a torn last line (the crash hit mid-write) is skipped and cut off before appending;
//! * a session that had already ended is not run again: its outcome is read back and shown;
//! * answers' workspace snapshots: the manifest of each accepted answer's snapshot is read
//!   from its `decision_received` line ([`ResumePlan::snapshots`]); the session checks the
//!   current answers' files on disk before it continues and refuses, naming the answer and the
//!   file, when one is missing or altered (see `crate::snapshots`);
//! * one process at a time: [`claim`] takes the journal's lock (see [`crate::journal`])
//!   *before* reading it, so a session that is running elsewhere is refused, naming the
//!   process that runs it, rather than read half-written and run twice. [`load`] reads without
//!   the lock, for status views that do not run anything.

use std::path::{Path, PathBuf};

use conclave_protocol::config::SessionConfig;
use conclave_protocol::snapshot::SnapshotManifest;
use conclave_protocol::{AnswerLabel, SessionId, TaskSpec, TurnEvent, TurnId, Usage};

use crate::consensus::{
    Action, AgentIndex, Consensus, ConsensusConfig, ConsensusConfigError, Event, Input, TurnPlan,
};
use crate::journal::{EVENTS_FILE, JournalError, JournalEvent, JournalLock, read_events};

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("no session journal at {0}; give a session directory or an id under --session-dir")]
    NotFound(PathBuf),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the journal {0} does not start with a session_started line; it cannot be resumed")]
    NoStart(PathBuf),
    #[error("the journal {path} names agent `{agent}`, which its own config does not have")]
    UnknownAgent { path: PathBuf, agent: String },
    #[error(transparent)]
    Consensus(#[from] ConsensusConfigError),
}

/// How a session that already ended came out, read back from its journal.
#[derive(Debug, Clone)]
pub struct EndedSession {
    pub reason: String,
    pub exit_code: i32,
    pub final_answer: Option<String>,
    pub winner: Option<String>,
    pub label: Option<String>,
}

/// Everything needed to continue a session.
pub struct ResumePlan {
    pub session: SessionId,
    pub dir: PathBuf,
    pub config: SessionConfig,
    pub task: TaskSpec,
    /// The machine with every journaled input replayed.
    pub machine: Consensus,
    /// Turns that were in flight at the crash, to run again.
    pub resend: Vec<(AgentIndex, TurnPlan)>,
    pub usage: Vec<Usage>,
    pub answers: u32,
    pub turns: u64,
    /// Inputs replayed from the journal.
    pub replayed_inputs: usize,
    /// Lines of the journal that a crash tore and that are skipped.
    pub torn_lines: usize,
    /// Where appending resumes (the torn tail, if any, is cut off there).
    pub valid_len: u64,
    /// Set when the session had already ended.
    pub ended: Option<EndedSession>,
    /// The journal's lock, when the plan was made by [`claim`]: the resumed session keeps it.
    pub lock: Option<JournalLock>,
    /// Every accepted answer's workspace snapshot: label, author, turn and manifest.
    pub snapshots: Vec<AcceptedSnapshot>,
}

/// An accepted answer's snapshot as the journal records it: (label, author, turn, manifest).
pub type AcceptedSnapshot = (AnswerLabel, AgentIndex, TurnId, SnapshotManifest);

/// Finds a session directory: a path to it, or an id under `root`.
pub fn locate(target: &str, root: &Path) -> Result<PathBuf, ResumeError> {
    let direct = PathBuf::from(target);
    for candidate in [direct.clone(), root.join(target)] {
        if candidate.join(EVENTS_FILE).is_file() {
            return Ok(candidate);
        }
    }
    Err(ResumeError::NotFound(direct))
}

/// Takes the lock of a session's journal, then reads and replays it (see the module docs).
/// Fails with [`JournalError::Locked`], naming the holder, while another process runs it.
pub fn claim(dir: &Path) -> Result<ResumePlan, ResumeError> {
    let lock = JournalLock::acquire(dir)?;
    let mut plan = load(dir)?;
    plan.lock = Some(lock);
    Ok(plan)
}

/// Reads a session's journal and replays it, without taking its lock.
pub fn load(dir: &Path) -> Result<ResumePlan, ResumeError> {
    let path = dir.join(EVENTS_FILE);
    let journal = read_events(&path)?;
    let mut lines = journal.lines.into_iter().map(|l| l.event);
    let Some(JournalEvent::SessionStarted {
        session,
        question,
        history,
        config,
        ..
    }) = lines.next()
    else {
        return Err(ResumeError::NoStart(path));
    };
    let index_of = |agent: &str| -> Result<AgentIndex, ResumeError> {
        config
            .agents
            .iter()
            .position(|a| a.id == agent)
            .map(|i| i as AgentIndex)
            .ok_or_else(|| ResumeError::UnknownAgent {
                path: path.clone(),
                agent: agent.to_owned(),
            })
    };
    let agents = config.agents.len();
    let mut machine = Consensus::new(ConsensusConfig::from_settings(
        agents as u32,
        &config.orchestrator,
    ))?;
    let mut last_start: Vec<Option<TurnPlan>> = vec![None; agents];
    let mut usage = vec![Usage::default(); agents];
    let mut answers = 0;
    let mut turns = 0;
    let mut replayed = 0;
    let mut ended = None;
    let mut final_answer: Option<(Option<String>, Option<String>, String)> = None;

    // Newer answers sent to a turn in flight (restart policy `inject`), per agent: once the
    // agent took them, a re-sent turn must carry them (the machine expects that revision).
    let mut offered: Vec<Option<TurnPlan>> = vec![None; agents];
    let mut snapshots: Vec<AcceptedSnapshot> = Vec::new();
    // The snapshot of the decision being replayed, for the answer it may become.
    let mut replayed_snapshot: Option<SnapshotManifest> = None;
    let mut feed = |machine: &mut Consensus,
                    input: Input,
                    last_start: &mut Vec<Option<TurnPlan>>,
                    snapshot: &mut Option<SnapshotManifest>| {
        replayed += 1;
        for action in machine.handle(input) {
            match action {
                Action::StartTurn { agent, spec_parts } => {
                    turns += 1;
                    if let Some(slot) = last_start.get_mut(agent as usize) {
                        *slot = Some(spec_parts);
                    }
                }
                Action::InjectAnswers { agent, spec_parts } => {
                    if let Some(slot) = offered.get_mut(agent as usize) {
                        *slot = Some(spec_parts);
                    }
                }
                Action::Record(Event::AnswersInjected {
                    agent,
                    turn,
                    revision,
                    ..
                }) => {
                    let taken = offered
                        .get(agent as usize)
                        .cloned()
                        .flatten()
                        .filter(|plan| plan.turn == turn && plan.revision == revision);
                    if let (Some(plan), Some(slot)) = (taken, last_start.get_mut(agent as usize)) {
                        *slot = Some(plan);
                    }
                }
                Action::Record(Event::AnswerAccepted {
                    agent, turn, label, ..
                }) => {
                    answers += 1;
                    if let Some(manifest) = snapshot.take() {
                        snapshots.push((label, agent, turn, manifest));
                    }
                }
                _ => {}
            }
        }
    };
    feed(
        &mut machine,
        Input::Start,
        &mut last_start,
        &mut replayed_snapshot,
    );
    for event in lines {
        let input = match event {
            JournalEvent::DecisionReceived {
                agent,
                turn,
                seen_revision,
                decision,
                snapshot,
                ..
            } => {
                replayed_snapshot = snapshot;
                Some(Input::Decided {
                    agent: index_of(&agent)?,
                    turn: conclave_protocol::TurnId(turn),
                    decision,
                    seen_revision,
                })
            }
            JournalEvent::PresentationReceived {
                agent,
                turn,
                content,
            } => {
                let agent = index_of(&agent)?;
                let turn = conclave_protocol::TurnId(turn);
                // The coordinator treats an empty presentation as a failed one; so does the replay.
                Some(if content.trim().is_empty() {
                    Input::TurnFailed {
                        agent,
                        turn,
                        reason: "the presentation was empty".into(),
                    }
                } else {
                    Input::Presented {
                        agent,
                        turn,
                        content,
                    }
                })
            }
            JournalEvent::TurnFailed {
                agent,
                turn,
                kind,
                message,
            } => Some(Input::TurnFailed {
                agent: index_of(&agent)?,
                turn: conclave_protocol::TurnId(turn),
                reason: format!("{kind}: {message}"),
            }),
            JournalEvent::AgentLost { agent, reason } => Some(Input::AgentLost {
                agent: index_of(&agent)?,
                reason,
            }),
            // Only `Input::AgentRejoined` produces this event, so it stands for that input.
            JournalEvent::AgentRejoined { agent } => Some(Input::AgentRejoined {
                agent: index_of(&agent)?,
            }),
            // The agent's report that it took injected answers is the `Injected` input.
            JournalEvent::TurnProgress {
                agent,
                turn,
                event: TurnEvent::AnswersInjected { revision, .. },
            } => Some(Input::Injected {
                agent: index_of(&agent)?,
                turn: conclave_protocol::TurnId(turn),
                revision,
            }),
            JournalEvent::TurnProgress {
                agent,
                turn,
                event: TurnEvent::InjectionDeclined { .. },
            } => Some(Input::InjectionDeclined {
                agent: index_of(&agent)?,
                turn: conclave_protocol::TurnId(turn),
            }),
            JournalEvent::TimedOut { .. } => Some(Input::Timeout),
            JournalEvent::Interrupted => Some(Input::Interrupted),
            JournalEvent::BudgetExhausted { reason, .. } => Some(Input::BudgetExhausted { reason }),
            JournalEvent::Usage {
                agent,
                input_tokens,
                output_tokens,
                ..
            } => {
                let index = index_of(&agent)? as usize;
                usage[index].add(Usage {
                    input_tokens,
                    output_tokens,
                });
                None
            }
            JournalEvent::FinalAnswer {
                winner,
                label,
                content,
                ..
            } => {
                final_answer = Some((winner, label, content));
                None
            }
            JournalEvent::SessionEnded {
                reason, exit_code, ..
            } => {
                let (winner, label, answer) = match final_answer.clone() {
                    Some((winner, label, content)) => (winner, label, Some(content)),
                    None => (None, None, None),
                };
                ended = Some(EndedSession {
                    reason,
                    exit_code,
                    final_answer: answer,
                    winner,
                    label,
                });
                None
            }
            _ => None,
        };
        if let Some(input) = input {
            feed(&mut machine, input, &mut last_start, &mut replayed_snapshot);
        }
        replayed_snapshot = None;
    }
    let resend = last_start
        .into_iter()
        .enumerate()
        .filter_map(|(agent, plan)| {
            let plan = plan?;
            (machine.in_flight_turn(agent as AgentIndex) == Some(plan.turn))
                .then_some((agent as AgentIndex, plan))
        })
        .collect();
    Ok(ResumePlan {
        session: SessionId(session),
        dir: dir.to_owned(),
        config,
        task: TaskSpec { question, history },
        machine,
        resend,
        usage,
        answers,
        turns,
        replayed_inputs: replayed,
        torn_lines: journal.torn_lines_skipped,
        valid_len: journal.valid_len,
        ended,
        lock: None,
        snapshots,
    })
}
