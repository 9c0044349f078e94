//! The AgentActor: one per agent per session. It owns the agent's provider backend and runs
//! each turn in a [`TurnWorker`] spawned linked to itself.
//!
//! Supervision: a worker that crashes (panics, or fails its handler on a stall) is restarted
//! with exponential backoff, at most `max_restarts` times within `restart_window` (from the
//! session config's `orchestrator.max_turn_restarts` and `restart_window_seconds`, defaults 3
//! and 60 s); past that the agent reports `TurnFailed`, the coordinator marks the agent failed
//! and the session goes on without it. A worker that
//! outlives `turn_timeout` is killed and reported as a timeout. `Cancel` kills the worker at
//! once, which drops its provider stream mid-flight.
//!
//! Reports take one route: the worker sends all of its own (chunks, retries, the final report)
//! straight to the [`Outbox`](crate::outbox::Outbox); the agent sends those it makes itself
//! (restarts, a declined injection, a timeout or a failure past the restart limit). The turn's
//! [`TurnEnd`], shared by the agent and the turn's workers, lets exactly one final report end
//! the turn: the worker's, or the agent's timeout or failure, whichever comes first; a cancel
//! or a new turn closes it, so a report that comes later is dropped.
//!
//! `Inject` (restart policy `inject`) keeps newer answers for the active turn; its worker takes
//! them at its next tool boundary, and a worker restarted after a crash starts from the last
//! answers it took (see [`Injections`]).
//!
//! Commands are deduplicated by their sequence number, so a command re-sent after a reconnect
//! is never applied twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_protocol::{
    AgentReport, CoordinatorCommand, Envelope, SequenceTracker, SessionId, TraceContext, TurnError,
    TurnErrorKind, TurnEvent, TurnId, TurnSpec,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{debug, warn};

use crate::outbox::TurnEnd;
use crate::turn::{AgentContext, Injections, TurnWorker, WorkerArgs};

/// The agent actor.
pub struct AgentActor;

/// Messages of the agent actor.
pub enum AgentMsg {
    /// A command from the coordinator.
    Command(Envelope<CoordinatorCommand>),
    /// The turn's deadline passed.
    TurnDeadline { turn: TurnId },
    /// Backoff after a crash is over: start the turn's worker again.
    RestartWorker { turn: TurnId },
}

impl ractor::Message for AgentMsg {}

/// Everything the agent needs; the backend is built (and its API key checked) by the caller.
pub struct AgentArgs {
    pub context: Arc<AgentContext>,
}

struct ActiveTurn {
    spec: TurnSpec,
    /// The StartTurn envelope's session and trace context: every worker of this turn (restarts
    /// included) hangs its spans under that context.
    session: SessionId,
    trace: TraceContext,
    worker: Option<ActorCell>,
    /// Crash times inside the restart window.
    crashes: Vec<Instant>,
    last_crash: Option<String>,
    /// The turn's end, shared with its workers: the first final report through it ends the
    /// turn (see [`TurnEnd`]).
    end: Arc<TurnEnd>,
    /// Newer answers for this turn (restart policy `inject`), shared with its workers.
    injections: Arc<Injections>,
}

pub struct AgentState {
    context: Arc<AgentContext>,
    commands_seen: SequenceTracker,
    active: Option<ActiveTurn>,
    /// Pending turn-deadline and restart timers. Each holds a reference to this actor until
    /// it fires, so they are aborted when the actor stops (otherwise a long-lived process
    /// keeps every finished agent's mailbox until its turn timeout passes).
    timers: Vec<tokio::task::AbortHandle>,
}

impl AgentState {
    fn keep_timer<T>(&mut self, timer: tokio::task::JoinHandle<T>) {
        self.timers.retain(|t| !t.is_finished());
        self.timers.push(timer.abort_handle());
    }
}

/// Backoff before restarting a crashed worker: 250 ms, 500 ms, 1 s, ... capped at 8 s.
pub fn restart_backoff(crashes: u32) -> Duration {
    let exp = crashes.saturating_sub(1).min(5);
    Duration::from_millis(250u64 << exp).min(Duration::from_secs(8))
}

impl AgentActor {
    async fn start_worker(
        myself: &ActorRef<AgentMsg>,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(active) = state.active.as_mut() else {
            return Ok(());
        };
        let args = WorkerArgs {
            spec: active.injections.starting_spec(&active.spec),
            context: state.context.clone(),
            session: active.session.clone(),
            trace: active.trace.clone(),
            end: active.end.clone(),
            injections: active.injections.clone(),
        };
        let (worker, _) = Actor::spawn_linked(None, TurnWorker, args, myself.get_cell()).await?;
        active.worker = Some(worker.get_cell());
        Ok(())
    }

    /// Ends the active turn without a report (cancelled, replaced, the agent stopping).
    fn kill_worker(state: &mut AgentState) {
        if let Some(active) = state.active.take() {
            active.end.close();
            if let Some(worker) = active.worker {
                worker.kill();
            }
        }
    }

    /// Ends the active turn with `TurnFailed`, unless its worker's final report got there
    /// first.
    fn fail_turn(state: &mut AgentState, kind: TurnErrorKind, message: String) {
        if let Some(active) = state.active.take() {
            if let Some(worker) = active.worker {
                worker.kill();
            }
            active.end.report(
                &state.context.outbox,
                AgentReport::TurnFailed {
                    turn: active.spec.turn,
                    error: TurnError { kind, message },
                },
            );
        }
    }
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentState, ActorProcessingErr> {
        Ok(AgentState {
            context: args.context,
            commands_seen: SequenceTracker::default(),
            active: None,
            timers: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentMsg::Command(envelope) => {
                if !state.commands_seen.accept(&envelope.sender, envelope.seq) {
                    debug!(agent = %state.context.agent_id, seq = envelope.seq, "duplicate command dropped");
                    return Ok(());
                }
                match envelope.body {
                    CoordinatorCommand::StartTurn(spec) => {
                        Self::kill_worker(state);
                        let turn = spec.turn;
                        state.active = Some(ActiveTurn {
                            spec,
                            session: envelope.session,
                            trace: envelope.trace,
                            worker: None,
                            crashes: Vec::new(),
                            last_crash: None,
                            end: Arc::default(),
                            injections: Arc::default(),
                        });
                        Self::start_worker(&myself, state).await?;
                        let timeout = state.context.settings.turn_timeout;
                        let timer =
                            myself.send_after(timeout, move || AgentMsg::TurnDeadline { turn });
                        state.keep_timer(timer);
                    }
                    CoordinatorCommand::Cancel { turn } => {
                        if state.active.as_ref().is_some_and(|a| a.spec.turn == turn) {
                            debug!(agent = %state.context.agent_id, %turn, "turn cancelled");
                            Self::kill_worker(state);
                        }
                    }
                    CoordinatorCommand::Inject(spec) => match state.active.as_ref() {
                        Some(active) if active.spec.turn == spec.turn => {
                            let (turn, revision) = (spec.turn, spec.revision);
                            if active.injections.offer(spec) {
                                debug!(agent = %state.context.agent_id, %turn, revision, "newer answers kept for the next tool boundary");
                            } else {
                                debug!(agent = %state.context.agent_id, %turn, revision, "no tool call in flight: injection declined");
                                state.context.outbox.send(AgentReport::TurnEvent {
                                    turn,
                                    event: TurnEvent::InjectionDeclined { revision },
                                });
                            }
                        }
                        _ => {
                            debug!(agent = %state.context.agent_id, turn = %spec.turn, "injection for a turn no longer active dropped")
                        }
                    },
                    CoordinatorCommand::Stop => {
                        Self::kill_worker(state);
                        myself.stop(Some("session ended".into()));
                    }
                }
            }
            AgentMsg::TurnDeadline { turn } => {
                if state
                    .active
                    .as_ref()
                    .is_some_and(|a| a.spec.turn == turn && !a.end.has_ended())
                {
                    let limit = state.context.settings.turn_timeout;
                    warn!(agent = %state.context.agent_id, %turn, ?limit, "turn timed out");
                    Self::fail_turn(
                        state,
                        TurnErrorKind::Timeout,
                        format!("the turn took longer than {limit:?}"),
                    );
                }
            }
            AgentMsg::RestartWorker { turn } => {
                if state
                    .active
                    .as_ref()
                    .is_some_and(|a| a.spec.turn == turn && a.worker.is_none())
                {
                    Self::start_worker(&myself, state).await?;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AgentMsg>,
        event: SupervisionEvent,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        let is_active = |cell: &ActorCell, state: &AgentState| {
            state
                .active
                .as_ref()
                .and_then(|a| a.worker.as_ref())
                .is_some_and(|w| w.get_id() == cell.get_id())
        };
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) if is_active(&cell, state) => {
                // A worker stops by itself only after its final report went through the
                // turn's end (or lost to the agent's own), so the turn is over.
                if let Some(active) = state.active.as_mut() {
                    active.worker = None;
                    if active.end.has_ended() {
                        state.active = None;
                    } else {
                        Self::fail_turn(
                            state,
                            TurnErrorKind::Crashed,
                            "the turn worker stopped without a report".to_owned(),
                        );
                    }
                }
            }
            SupervisionEvent::ActorFailed(cell, error) if is_active(&cell, state) => {
                let settings = state.context.settings.clone();
                let Some(active) = state.active.as_mut() else {
                    return Ok(());
                };
                active.worker = None;
                let now = Instant::now();
                active
                    .crashes
                    .retain(|t| now.duration_since(*t) <= settings.restart_window);
                active.crashes.push(now);
                let reason = error.to_string();
                active.last_crash = Some(reason.clone());
                let crashes = active.crashes.len() as u32;
                let turn = active.spec.turn;
                if crashes > settings.max_restarts {
                    let kind = if reason.starts_with("stalled") {
                        TurnErrorKind::Stalled
                    } else {
                        TurnErrorKind::Crashed
                    };
                    warn!(agent = %state.context.agent_id, %turn, crashes, %reason, "turn worker crashed too often; giving up");
                    Self::fail_turn(
                        state,
                        kind,
                        format!(
                            "the turn worker failed {crashes} times within {:?}; last: {reason}",
                            settings.restart_window
                        ),
                    );
                } else {
                    let wait = restart_backoff(crashes);
                    warn!(agent = %state.context.agent_id, %turn, crashes, wait_ms = wait.as_millis() as u64, %reason, "turn worker crashed; restarting");
                    state.context.outbox.send(AgentReport::TurnEvent {
                        turn,
                        event: TurnEvent::WorkerRestart {
                            attempt: crashes,
                            reason,
                        },
                    });
                    let timer = myself.send_after(wait, move || AgentMsg::RestartWorker { turn });
                    state.keep_timer(timer);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AgentMsg>,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        Self::kill_worker(state);
        for timer in state.timers.drain(..) {
            timer.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(restart_backoff(1), Duration::from_millis(250));
        assert_eq!(restart_backoff(2), Duration::from_millis(500));
        assert_eq!(restart_backoff(3), Duration::from_secs(1));
        assert_eq!(restart_backoff(50), Duration::from_secs(8));
    }
}
