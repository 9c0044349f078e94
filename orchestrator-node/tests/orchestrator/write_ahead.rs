//! The coordinator writes its journal ahead: nothing that depends on a decision leaves it
//! (display lines, commands to agents, the outcome) before the journal lines it depends on
//! are synced. The coordinator runs here with a journal on a "slow disk" (every `fsync` takes
//! a while, and only a finished `fsync` makes bytes durable) and with test agents whose
//! command channel checks, at the moment each command is sent, that its journal line is
//! already durable. A coordinator that shows or sends first and syncs later fails these
//! checks on every step; one that writes ahead never does.
//!
//! Also: a journal that cannot be written ends the session with the error and sends nothing
//! more, and a budget cap starts no new turn and records its overshoot.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave::consensus::{Consensus, ConsensusConfig, EndReason};
use conclave::coordinator::{
    AgentLink, Budget, Coordinator, CoordinatorArgs, CoordinatorMsg, SessionOutcome,
};
use conclave::display::Display;
use conclave::journal::{Journal, JournalError, JournalEvent, JournalFile, JournalLine};
use conclave::pricing::Price;
use conclave_protocol::config::DisplayKind;
use conclave_protocol::{
    AgentReport, CoordinatorCommand, Decision, Envelope, SessionId, StreamChunk, TaskSpec,
    TraceContext, TurnMode, Usage,
};
use tokio::sync::{mpsc, oneshot};

/// What reached the disk, and what of it an `fsync` made durable.
#[derive(Clone, Default)]
struct Disk {
    inner: Arc<Mutex<DiskState>>,
}

#[derive(Default)]
struct DiskState {
    written: Vec<u8>,
    durable: usize,
    syncs: usize,
}

impl Disk {
    fn durable_events(&self) -> Vec<JournalEvent> {
        let state = self.inner.lock().unwrap();
        String::from_utf8_lossy(&state.written[..state.durable])
            .lines()
            .map(|line| {
                serde_json::from_str::<JournalLine>(line)
                    .expect("a durable line is a journal line")
                    .event
            })
            .collect()
    }

    fn syncs(&self) -> usize {
        self.inner.lock().unwrap().syncs
    }
}

/// A journal file whose `fsync` takes `sync_delay`, and whose writes fail with ENOSPC once
/// `capacity` bytes are written.
struct SlowFile {
    disk: Disk,
    sync_delay: Duration,
    capacity: usize,
}

impl Write for SlowFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.disk.inner.lock().unwrap();
        let room = self.capacity.saturating_sub(state.written.len());
        if room == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = room.min(buf.len());
        state.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl JournalFile for SlowFile {
    fn sync(&mut self) -> io::Result<()> {
        let target = self.disk.inner.lock().unwrap().written.len();
        std::thread::sleep(self.sync_delay);
        let mut state = self.disk.inner.lock().unwrap();
        state.durable = target;
        state.syncs += 1;
        Ok(())
    }
}

/// A display target that checks every journal event it is given is durable already.
struct CheckingDisplay {
    disk: Disk,
    violations: Arc<Mutex<Vec<String>>>,
    pending: Vec<u8>,
}

impl Write for CheckingDisplay {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let value: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
            let durable = self.disk.durable_events();
            let kind = value["type"].as_str().unwrap_or_default().to_owned();
            if kind == "final" {
                if !durable
                    .iter()
                    .any(|e| matches!(e, JournalEvent::FinalAnswer { .. }))
                {
                    self.violations
                        .lock()
                        .unwrap()
                        .push("the final answer was shown before it was durable".into());
                }
            } else if kind != "chunk" {
                let event: JournalEvent = serde_json::from_value(value).expect("a journal event");
                if !durable.contains(&event) {
                    self.violations
                        .lock()
                        .unwrap()
                        .push(format!("shown before durable: {kind}"));
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Harness {
    disk: Disk,
    coordinator: ractor::ActorRef<CoordinatorMsg>,
    commands: mpsc::UnboundedReceiver<(String, Envelope<CoordinatorCommand>)>,
    done: oneshot::Receiver<Result<Option<SessionOutcome>, JournalError>>,
    violations: Arc<Mutex<Vec<String>>>,
    session: SessionId,
    seq: u64,
    display_guard: Option<conclave::display::DisplayGuard>,
    _dir: tempfile::TempDir,
}

const WAIT: Duration = Duration::from_secs(10);

async fn start(agents: &[&str], capacity: usize, budget: Budget) -> Harness {
    let disk = Disk::default();
    let violations = Arc::new(Mutex::new(Vec::new()));
    let journal = Journal::with_file(
        "slow-disk/events.jsonl".into(),
        Box::new(SlowFile {
            disk: disk.clone(),
            sync_delay: Duration::from_millis(30),
            capacity,
        }),
        None,
    )
    .unwrap();
    let (display, display_guard) = Display::to_writer(
        DisplayKind::Json,
        Box::new(CheckingDisplay {
            disk: disk.clone(),
            violations: violations.clone(),
            pending: Vec::new(),
        }),
    );
    let session = SessionId::parse("write-ahead").unwrap();
    let (done_tx, done) = oneshot::channel();
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, _) = ractor::Actor::spawn(
        None,
        Coordinator,
        CoordinatorArgs {
            session: session.clone(),
            session_dir: dir.path().to_owned(),
            task: Arc::new(TaskSpec {
                question: "What is 6 x 7?".into(),
                history: Vec::new(),
            }),
            machine: Consensus::new(ConsensusConfig {
                // These stories are told under `cancel`: a stale turn is cancelled at once.
                restart_policy: conclave_protocol::config::RestartPolicy::Cancel,
                ..ConsensusConfig::new(agents.len() as u32)
            })
            .unwrap(),
            journal,
            display,
            timeout: Duration::from_secs(3600),
            done: done_tx,
            resumed: None,
            budget,
            final_files: Vec::new(),
            snapshots: None,
        },
    )
    .await
    .unwrap();
    let (tx, commands) = mpsc::unbounded_channel();
    let links = agents
        .iter()
        .map(|id| {
            let tx = tx.clone();
            let disk = disk.clone();
            let violations = violations.clone();
            let name = id.to_string();
            AgentLink {
                id: Arc::from(*id),
                commands: Arc::new(move |envelope: Envelope<CoordinatorCommand>| {
                    // The check happens as the command leaves the coordinator.
                    let durable = disk.durable_events();
                    let covered = match &envelope.body {
                        CoordinatorCommand::StartTurn(spec) => durable.iter().any(|e| {
                            matches!(e, JournalEvent::TurnStarted { turn, .. } if *turn == spec.turn.0)
                        }),
                        CoordinatorCommand::Cancel { turn } => durable.iter().any(|e| {
                            matches!(e, JournalEvent::TurnCancelled { turn: t, .. } if *t == turn.0)
                        }),
                        _ => durable.iter().any(|e| {
                            matches!(
                                e,
                                JournalEvent::SessionEnded { .. } | JournalEvent::SessionPaused { .. }
                            )
                        }),
                    };
                    if !covered {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("a command to {name} left before its journal line was durable"));
                    }
                    tx.send((name.clone(), envelope)).is_ok()
                }),
            }
        })
        .collect();
    coordinator
        .send_message(CoordinatorMsg::Begin { agents: links })
        .unwrap();
    Harness {
        disk,
        coordinator,
        commands,
        done,
        violations,
        session,
        seq: 0,
        display_guard: Some(display_guard),
        _dir: dir,
    }
}

impl Harness {
    async fn next_command(&mut self) -> (String, CoordinatorCommand) {
        let (agent, envelope) = tokio::time::timeout(WAIT, self.commands.recv())
            .await
            .expect("a command in time")
            .expect("the coordinator is running");
        (agent, envelope.body)
    }

    async fn next_start(&mut self) -> (String, conclave_protocol::TurnSpec) {
        loop {
            if let (agent, CoordinatorCommand::StartTurn(spec)) = self.next_command().await {
                return (agent, spec);
            }
        }
    }

    fn report(&mut self, agent: &str, body: AgentReport) {
        self.seq += 1;
        self.coordinator
            .send_message(CoordinatorMsg::Report(Envelope {
                session: self.session.clone(),
                sender: agent.to_owned(),
                seq: self.seq,
                trace: TraceContext::default(),
                body,
            }))
            .unwrap();
    }

    async fn outcome(&mut self) -> Result<SessionOutcome, JournalError> {
        self.end()
            .await
            .map(|outcome| outcome.expect("the session ended, it did not pause"))
    }

    /// `agent` decides its turn `spec` (by a tool call).
    fn decide(&mut self, agent: &str, spec: &conclave_protocol::TurnSpec, decision: Decision) {
        self.report(
            agent,
            AgentReport::Decided {
                turn: spec.turn,
                decision,
                seen_revision: spec.revision,
                how: conclave_protocol::DecisionHow::Tool,
            },
        );
    }

    /// The coordinator's end: `None` when it paused.
    async fn end(&mut self) -> Result<Option<SessionOutcome>, JournalError> {
        let outcome = tokio::time::timeout(WAIT, &mut self.done)
            .await
            .expect("the session ends in time")
            .expect("the coordinator reports its end");
        if let Some(guard) = self.display_guard.take() {
            // The display thread ends once the coordinator (holding the display) has stopped.
            let _ = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || guard.finish()))
                .await;
        }
        outcome
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_the_coordinator_before_its_journal_lines_are_synced() {
    // Each agent's reports come one per test step, so the senders' sequence numbers are kept
    // per agent by a single counter: fine, they only need to grow.
    let mut h = start(&["solo"], usize::MAX, Budget::default()).await;
    let (_, first) = h.next_start().await;
    assert_eq!(first.mode, TurnMode::Coordinate);
    h.report(
        "solo",
        AgentReport::Decided {
            turn: first.turn,
            decision: Decision::NewAnswer {
                content: "42".into(),
            },
            seen_revision: first.revision,
            how: conclave_protocol::DecisionHow::Tool,
        },
    );
    let (_, second) = h.next_start().await;
    let label = second.answers[0].label;
    h.report(
        "solo",
        AgentReport::Decided {
            turn: second.turn,
            decision: Decision::Vote {
                label,
                reason: "it is right".into(),
            },
            seen_revision: second.revision,
            how: conclave_protocol::DecisionHow::Tool,
        },
    );
    let (_, present) = h.next_start().await;
    assert_eq!(present.mode, TurnMode::Present);
    h.report(
        "solo",
        AgentReport::Presented {
            turn: present.turn,
            content: "The answer is 42.".into(),
        },
    );
    let outcome = h.outcome().await.expect("the session ends well");
    assert_eq!(outcome.reason, EndReason::Consensus);
    assert_eq!(outcome.final_answer.as_deref(), Some("The answer is 42."));
    // The outcome is handed over only once the end is durable.
    let durable = h.disk.durable_events();
    assert!(
        durable
            .iter()
            .any(|e| matches!(e, JournalEvent::FinalAnswer { .. })),
        "{durable:?}"
    );
    assert!(
        durable
            .iter()
            .any(|e| matches!(e, JournalEvent::SessionEnded { .. }))
    );
    assert_eq!(h.violations(), Vec::<String>::new());
    // Group commit: one sync per step, not one per line (5 steps; a few more are allowed for
    // a writer that wakes between lines of one step).
    let lines = durable.len();
    assert!(
        h.disk.syncs() < lines,
        "{} syncs for {lines} lines",
        h.disk.syncs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_written_ends_the_session_and_nothing_more_is_sent() {
    // Room for nothing: the first commit (the first turns) fails.
    let mut h = start(&["a", "b"], 0, Budget::default()).await;
    let outcome = h.outcome().await;
    let Err(error) = outcome else {
        panic!("the session must fail with the journal's error");
    };
    let text = conclave_protocol::error_text(&error);
    assert!(
        text.contains("slow-disk/events.jsonl") && text.contains("No space left on device"),
        "{text}"
    );
    // No turn was sent: its journal line never became durable.
    assert!(
        h.commands.try_recv().is_err(),
        "a command left after the journal failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reached_cap_starts_no_turn_cancels_the_others_and_records_the_overshoot() {
    let budget = Budget {
        max_cost_usd: None,
        max_total_tokens: Some(100),
        prices: vec![
            Some(Price {
                input_per_million: 1.0,
                output_per_million: 1.0,
            }),
            None,
        ],
    };
    let mut h = start(&["a", "b"], usize::MAX, budget).await;
    let mut turns = std::collections::HashMap::new();
    for _ in 0..2 {
        let (agent, spec) = h.next_start().await;
        turns.insert(agent, spec);
    }
    let a = turns["a"].clone();
    // a answers; b's turn is restarted with the new answer.
    h.report(
        "a",
        AgentReport::Decided {
            turn: a.turn,
            decision: Decision::NewAnswer {
                content: "42".into(),
            },
            seen_revision: a.revision,
            how: conclave_protocol::DecisionHow::Tool,
        },
    );
    let mut started_before_cap = 0;
    while started_before_cap < 2 {
        if let (_, CoordinatorCommand::StartTurn(spec)) = h.next_command().await {
            turns.insert(
                if spec.self_number == 1 { "a" } else { "b" }.to_owned(),
                spec,
            );
            started_before_cap += 1;
        }
    }
    // b's usage crosses the cap by 30 tokens.
    let b = turns["b"].clone();
    h.report(
        "b",
        AgentReport::Chunk {
            turn: b.turn,
            chunk: StreamChunk::Usage(Usage {
                input_tokens: 100,
                output_tokens: 30,
            }),
        },
    );
    let outcome = h.outcome().await.expect("a cap ends the session well");
    assert_eq!(outcome.reason, EndReason::BudgetExhausted);
    assert_eq!(outcome.final_answer.as_deref(), Some("42"));
    let mut cancelled = std::collections::HashSet::new();
    while let Ok((_, envelope)) = h.commands.try_recv() {
        match envelope.body {
            CoordinatorCommand::StartTurn(spec) => {
                panic!("a turn started after the cap: {:?}", spec.mode)
            }
            CoordinatorCommand::Cancel { turn } => {
                cancelled.insert(turn);
            }
            _ => {}
        }
    }
    let in_flight: std::collections::HashSet<_> = [turns["a"].turn, turns["b"].turn].into();
    assert!(
        in_flight.is_subset(&cancelled),
        "both turns in flight are cancelled: {cancelled:?}"
    );
    let durable = h.disk.durable_events();
    let line = durable
        .iter()
        .find_map(|e| match e {
            JournalEvent::BudgetExhausted {
                tokens_used,
                max_total_tokens,
                tokens_over,
                ..
            } => Some((*tokens_used, *max_total_tokens, *tokens_over)),
            _ => None,
        })
        .expect("a budget_exhausted line");
    assert_eq!(line, (Some(130), Some(100), Some(30)));
    // No presentation turn: the best answer's text is the final answer.
    assert!(!durable.iter().any(|e| matches!(
        e,
        JournalEvent::TurnStarted { mode, .. } if mode == "present"
    )));
    assert_eq!(h.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_sends_no_turn_waits_for_the_turns_in_flight_and_leaves_the_journal_open() {
    let mut h = start(&["a", "b"], usize::MAX, Budget::default()).await;
    let mut turns = std::collections::HashMap::new();
    for _ in 0..2 {
        let (agent, spec) = h.next_start().await;
        turns.insert(agent, spec);
    }
    // a answers: a goes on to vote and b restarts with the answer (both sent: no pause yet).
    let a = turns["a"].clone();
    h.decide(
        "a",
        &a,
        Decision::NewAnswer {
            content: "42".into(),
        },
    );
    for _ in 0..2 {
        let (agent, spec) = h.next_start().await;
        turns.insert(agent, spec);
    }
    h.coordinator.send_message(CoordinatorMsg::Pause).unwrap();
    let not_yet = tokio::time::timeout(Duration::from_millis(300), &mut h.done).await;
    assert!(not_yet.is_err(), "paused with two turns in flight");

    // b votes: a's turn is still in flight, so the pause still waits.
    let b = turns["b"].clone();
    let label = b.answers[0].label;
    let right = Decision::Vote {
        label,
        reason: "right".into(),
    };
    h.decide("b", &b, right);
    let not_yet = tokio::time::timeout(Duration::from_millis(300), &mut h.done).await;
    assert!(not_yet.is_err(), "paused with a's turn in flight");

    // a votes: consensus. Its presentation turn is journaled but not sent, and the session
    // pauses instead of ending.
    let a = turns["a"].clone();
    let mine = Decision::Vote {
        label,
        reason: "mine".into(),
    };
    h.decide("a", &a, mine);
    let end = h.end().await.expect("the pause is durable");
    assert!(end.is_none(), "the session paused: {end:?}");
    let mut stopped = std::collections::HashSet::new();
    while let Ok((agent, envelope)) = h.commands.try_recv() {
        match envelope.body {
            CoordinatorCommand::StartTurn(spec) => {
                panic!("a turn was sent while pausing: {:?}", spec.mode)
            }
            CoordinatorCommand::Stop => {
                stopped.insert(agent);
            }
            _ => {}
        }
    }
    assert_eq!(stopped.len(), 2, "both agents are stopped");
    let durable = h.disk.durable_events();
    let presentation = durable.iter().any(|e| {
        matches!(e, JournalEvent::TurnStarted { agent, mode, .. } if agent == "a" && mode == "present")
    });
    assert!(presentation, "the held-back turn is journaled: {durable:?}");
    assert!(
        durable.iter().any(|e| matches!(
            e,
            JournalEvent::SessionPaused { agents_waiting } if agents_waiting == &["a".to_owned()]
        )),
        "{durable:?}"
    );
    assert!(
        !durable
            .iter()
            .any(|e| matches!(e, JournalEvent::SessionEnded { .. })),
        "a paused session has no end line"
    );
    assert_eq!(h.violations(), Vec::<String>::new());
}
