//! Supervision of turn workers by the [`AgentActor`], driven directly (no coordinator) against
//! the simulated provider over real HTTP: a stalled worker is restarted with backoff and
//! reported as `WorkerRestart`; past the intensity limit the turn fails as `Stalled`; crashes
//! further apart than the restart window are forgiven; the configured restart limit decides
//! whether the same two crashes fail the turn; a turn past its deadline fails as
//! `Timeout`; `Cancel` and `Stop` kill the worker and the provider sees its stream dropped;
//! duplicate commands are ignored.
//!
//! Reports are captured from the agent's [`Outbox`] the way the session wires it (a
//! [`ReportSink`]). Durations are small (stall watchdog 150-200 ms) and every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_agent::agent::{AgentActor, AgentArgs, AgentMsg, restart_backoff};
use conclave_agent::cluster::settings_from_limits;
use conclave_agent::outbox::{Outbox, ReportSink};
use conclave_agent::providers::Backend;
use conclave_agent::turn::{AgentContext, TurnSettings};
use conclave_protocol::cluster::TurnLimits;
use conclave_protocol::config::{BackendSpec, WireFormat};
use conclave_protocol::{
    AgentReport, CoordinatorCommand, Decision, Envelope, SessionId, TaskSpec, TraceContext,
    TurnError, TurnErrorKind, TurnEvent, TurnId, TurnMode, TurnSpec,
};
use conclave_sim::{Fault, RequestRecord, SimConfig, SimServer};
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::JoinHandle;

/// The longest any single expected report may take to arrive.
const REPORT_WAIT: Duration = Duration::from_secs(10);

async fn start_sim() -> SimServer {
    SimServer::start(
        SimConfig {
            tokens: 4,
            token_delay: Duration::from_millis(5),
            first_byte_delay: Duration::ZERO,
        },
        "127.0.0.1:0".parse().expect("loopback"),
    )
    .await
    .expect("the simulator starts")
}

fn settings(stall_ms: u64, turn_ms: u64, max_restarts: u32, window_ms: u64) -> TurnSettings {
    TurnSettings {
        max_workflow_retries: 1,
        turn_timeout: Duration::from_millis(turn_ms),
        stall_timeout: Duration::from_millis(stall_ms),
        max_restarts,
        restart_window: Duration::from_millis(window_ms),
    }
}

/// One agent actor under test, with the reports it sends.
struct Agent {
    actor: ActorRef<AgentMsg>,
    handle: JoinHandle<()>,
    reports: UnboundedReceiver<AgentReport>,
    session: SessionId,
}

impl Agent {
    async fn spawn(sim: &SimServer, model: &str, settings: TurnSettings) -> Agent {
        let spec = BackendSpec {
            wire: WireFormat::OpenAiChat,
            provider: "sim".into(),
            model: model.into(),
            base_url: sim.base_url(),
            api_key_env: None,
            temperature: None,
            top_p: None,
            max_tokens: None,
            extra_body: None,
            // Provider retries are not under test here: a stall is a crash, not a retry.
            max_retries: 0,
            options: Default::default(),
        };
        let backend = Backend::new(&spec, reqwest::Client::new(), &|_| None).expect("backend");
        let session = SessionId::parse("supervision").expect("session id");
        let (tx, reports) = unbounded_channel();
        let sink: ReportSink =
            Arc::new(move |envelope: Envelope<AgentReport>| tx.send(envelope.body).is_ok());
        let context = Arc::new(AgentContext {
            agent_id: "agent-a".into(),
            backend: Arc::new(backend),
            outbox: Arc::new(Outbox::new(session.clone(), "agent-a".into(), sink)),
            system_message: None,
            settings,
            workflow: Default::default(),
            tools: Arc::new(conclave_agent::tools::ToolBox::empty()),
            snapshots: None,
        });
        let (actor, handle) = Actor::spawn(None, AgentActor, AgentArgs { context })
            .await
            .expect("agent spawns");
        Agent {
            actor,
            handle,
            reports,
            session,
        }
    }

    fn command(&self, seq: u64, body: CoordinatorCommand) {
        self.actor
            .send_message(AgentMsg::Command(Envelope {
                session: self.session.clone(),
                sender: "coordinator".into(),
                seq,
                trace: TraceContext::default(),
                body,
            }))
            .expect("agent alive");
    }

    fn start_turn(&self, seq: u64, turn: u64) {
        self.command(seq, CoordinatorCommand::StartTurn(turn_spec(turn)));
    }

    /// The next report that is not a stream chunk.
    async fn next(&mut self) -> AgentReport {
        loop {
            let report = tokio::time::timeout(REPORT_WAIT, self.reports.recv())
                .await
                .expect("a report arrives in time")
                .expect("the outbox is open");
            if !matches!(report, AgentReport::Chunk { .. }) {
                return report;
            }
        }
    }

    /// Whether any report other than a chunk arrives within `wait`.
    async fn quiet_for(&mut self, wait: Duration) -> Option<AgentReport> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Err(_) | Ok(None) => return None,
                Ok(Some(AgentReport::Chunk { .. })) => continue,
                Ok(Some(report)) => return Some(report),
            }
        }
    }

    async fn stop(self) {
        self.actor.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.handle).await;
    }
}

fn turn_spec(turn: u64) -> TurnSpec {
    TurnSpec {
        turn: TurnId(turn),
        mode: TurnMode::Coordinate,
        task: Arc::new(TaskSpec {
            question: "What is 2+2?".into(),
            history: Vec::new(),
        }),
        answers: Arc::from(Vec::new()),
        revision: 0,
        may_answer: true,
        votes: Arc::from(Vec::new()),
        self_number: 1,
        snapshots: Vec::new().into(),
    }
}

fn worker_restart(report: &AgentReport) -> Option<(u64, u32, &str)> {
    match report {
        AgentReport::TurnEvent {
            turn,
            event: TurnEvent::WorkerRestart { attempt, reason },
        } => Some((turn.0, *attempt, reason.as_str())),
        _ => None,
    }
}

fn turn_failed(report: &AgentReport) -> Option<(u64, &TurnError)> {
    match report {
        AgentReport::TurnFailed { turn, error } => Some((turn.0, error)),
        _ => None,
    }
}

fn decided(report: &AgentReport) -> Option<u64> {
    match report {
        AgentReport::Decided {
            turn,
            decision: Decision::NewAnswer { .. },
            ..
        } => Some(turn.0),
        _ => None,
    }
}

/// Time between the starts of two requests, from the simulator's log.
fn gap(earlier: &RequestRecord, later: &RequestRecord) -> Duration {
    Duration::from_secs_f64((later.started_ms - earlier.started_ms).max(0.0) / 1000.0)
}

/// Polls the simulator until request `index` has ended, then returns it.
async fn ended(sim: &SimServer, index: usize) -> RequestRecord {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(record) = sim.requests().get(index)
            && record.ended_ms.is_some()
        {
            return record.clone();
        }
        assert!(
            Instant::now() < deadline,
            "request {index} never ended: {:#?}",
            sim.requests()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_is_restarted_with_backoff() {
    let sim = start_sim().await;
    let stall = Duration::from_millis(200);
    let mut agent = Agent::spawn(
        &sim,
        "s:fault=stall,fault_times=1,stall_after=1",
        settings(200, 10_000, 3, 60_000),
    )
    .await;
    agent.start_turn(1, 1);

    let report = agent.next().await;
    let (turn, attempt, reason) =
        worker_restart(&report).unwrap_or_else(|| panic!("expected a restart: {report:?}"));
    assert_eq!((turn, attempt), (1, 1));
    assert!(reason.starts_with("stalled"), "{reason}");
    let report = agent.next().await;
    assert_eq!(decided(&report), Some(1), "{report:?}");

    let records = sim.requests();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0].fault, Some(Fault::Stall));
    assert!(!records[0].completed, "the stalled stream was not dropped");
    assert!(records[1].completed && records[1].fault.is_none());
    // The restart came after the watchdog and the first backoff, not at once.
    let waited = gap(&records[0], &records[1]);
    let least = stall + restart_backoff(1);
    assert!(
        waited >= least && waited < least + Duration::from_secs(2),
        "restarted after {waited:?}, expected at least {least:?}"
    );
    assert_eq!(agent.quiet_for(Duration::from_millis(200)).await, None);
    agent.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_intensity_limit_the_turn_fails_as_stalled() {
    let sim = start_sim().await;
    let stall = Duration::from_millis(150);
    let started = Instant::now();
    let mut agent = Agent::spawn(
        &sim,
        "s:fault=stall,stall_after=1",
        settings(150, 10_000, 2, 60_000),
    )
    .await;
    agent.start_turn(1, 1);

    for expected in 1..=2 {
        let report = agent.next().await;
        let (turn, attempt, _) =
            worker_restart(&report).unwrap_or_else(|| panic!("expected a restart: {report:?}"));
        assert_eq!((turn, attempt), (1, expected));
    }
    let report = agent.next().await;
    let (turn, error) = turn_failed(&report).unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(turn, 1);
    assert_eq!(error.kind, TurnErrorKind::Stalled, "{error:?}");
    assert!(error.message.contains("3 times"), "{}", error.message);
    // 3 stalls and 2 backoffs (250 + 500 ms), well before the 10 s turn deadline.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= stall * 3 + restart_backoff(1) + restart_backoff(2)
            && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );

    let records = sim.requests();
    assert_eq!(records.len(), 3, "one request per worker: {records:#?}");
    assert!(records.iter().all(|r| r.fault == Some(Fault::Stall)));
    // The backoff doubles between restarts.
    assert!(gap(&records[0], &records[1]) >= stall + restart_backoff(1));
    assert!(gap(&records[1], &records[2]) >= stall + restart_backoff(2));
    // Nothing is retried after giving up, and the last stalled stream is closed.
    assert_eq!(agent.quiet_for(Duration::from_millis(500)).await, None);
    assert_eq!(sim.requests().len(), 3);
    assert!(!ended(&sim, 2).await.completed);
    agent.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_restart_limit_decides_whether_two_crashes_fail_the_agent() {
    // The same fault (the first two requests stall) under two configured limits
    // (`orchestrator.max_turn_restarts`), with the settings built the way an agent node builds
    // them from the spawn frame's `TurnLimits`: with 1 the second crash fails the turn, with 3
    // the agent survives both and decides.
    for (max_restarts, survives) in [(1, false), (3, true)] {
        let sim = start_sim().await;
        let limits = TurnLimits {
            max_workflow_retries: 1,
            turn_timeout_ms: 10_000,
            stall_timeout_ms: 150,
            connect_timeout_ms: 1_000,
            max_restarts,
            restart_window_ms: 60_000,
        };
        let mut agent = Agent::spawn(
            &sim,
            "s:fault=stall,fault_times=2,stall_after=1",
            settings_from_limits(&limits),
        )
        .await;
        agent.start_turn(1, 1);

        let report = agent.next().await;
        let (turn, attempt, _) = worker_restart(&report)
            .unwrap_or_else(|| panic!("limit {max_restarts}: expected a restart: {report:?}"));
        assert_eq!((turn, attempt), (1, 1), "limit {max_restarts}");
        let report = agent.next().await;
        if survives {
            let (turn, attempt, _) = worker_restart(&report)
                .unwrap_or_else(|| panic!("limit {max_restarts}: expected a restart: {report:?}"));
            assert_eq!((turn, attempt), (1, 2), "limit {max_restarts}");
            let report = agent.next().await;
            assert_eq!(
                decided(&report),
                Some(1),
                "limit {max_restarts}: {report:?}"
            );
            assert_eq!(sim.requests().len(), 3, "limit {max_restarts}");
        } else {
            let (turn, error) = turn_failed(&report)
                .unwrap_or_else(|| panic!("limit {max_restarts}: expected a failure: {report:?}"));
            assert_eq!(turn, 1);
            assert_eq!(error.kind, TurnErrorKind::Stalled, "{error:?}");
            assert!(error.message.contains("2 times"), "{}", error.message);
            // Given up: no third worker, no third request.
            assert_eq!(agent.quiet_for(Duration::from_millis(400)).await, None);
            assert_eq!(sim.requests().len(), 2, "limit {max_restarts}");
        }
        agent.stop().await;
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_further_apart_than_the_window_are_forgiven() {
    let sim = start_sim().await;
    // Each crash comes ≥ 150 ms (stall) + 250 ms (backoff) after the previous one, so a 100 ms
    // window never holds two: three stalls in a row with max_restarts 1 still recover.
    let mut agent = Agent::spawn(
        &sim,
        "s:fault=stall,fault_times=3,stall_after=1",
        settings(150, 10_000, 1, 100),
    )
    .await;
    agent.start_turn(1, 1);
    for _ in 0..3 {
        let report = agent.next().await;
        let (_, attempt, _) =
            worker_restart(&report).unwrap_or_else(|| panic!("expected a restart: {report:?}"));
        assert_eq!(attempt, 1, "an old crash was still counted");
    }
    let report = agent.next().await;
    assert_eq!(decided(&report), Some(1), "{report:?}");
    assert_eq!(sim.requests().len(), 4);
    agent.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_over_its_deadline_fails_as_timeout() {
    let sim = start_sim().await;
    // Slow (first token after 5 s) but not stalled (the watchdog is at 10 s).
    let started = Instant::now();
    let mut agent = Agent::spawn(
        &sim,
        "s:first_byte_ms=5000",
        settings(10_000, 300, 3, 60_000),
    )
    .await;
    agent.start_turn(1, 1);
    let report = agent.next().await;
    let elapsed = started.elapsed();
    let (turn, error) = turn_failed(&report).unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(turn, 1);
    assert_eq!(error.kind, TurnErrorKind::Timeout, "{error:?}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    // The worker was killed: the provider saw the request abandoned long before its 5 s.
    let record = ended(&sim, 0).await;
    assert!(!record.completed, "{record:#?}");
    assert!(
        record.duration_ms().unwrap_or(f64::MAX) < 2000.0,
        "{record:#?}"
    );
    assert_eq!(agent.quiet_for(Duration::from_millis(300)).await, None);
    agent.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_worker_and_drops_the_stream() {
    let sim = start_sim().await;
    // 40 pieces 25 ms apart: a 1 s stream.
    let mut agent = Agent::spawn(
        &sim,
        "s:tokens=40,token_delay_ms=25",
        settings(5_000, 10_000, 3, 60_000),
    )
    .await;
    agent.start_turn(1, 1);
    // Wait until the stream is flowing (the first chunk was reported).
    let first_chunk = tokio::time::timeout(REPORT_WAIT, agent.reports.recv())
        .await
        .expect("a chunk in time")
        .expect("outbox open");
    assert!(
        matches!(first_chunk, AgentReport::Chunk { .. }),
        "{first_chunk:?}"
    );
    agent.command(2, CoordinatorCommand::Cancel { turn: TurnId(1) });

    let record = ended(&sim, 0).await;
    assert!(!record.completed, "{record:#?}");
    assert!(record.output_tokens < 40, "{record:#?}");
    assert!(
        record.duration_ms().unwrap_or(f64::MAX) < 900.0,
        "the stream was not dropped early: {record:#?}"
    );
    // A cancelled turn reports nothing more.
    assert_eq!(agent.quiet_for(Duration::from_millis(300)).await, None);

    // The agent is still there and runs the next turn.
    agent.start_turn(3, 2);
    let report = agent.next().await;
    assert_eq!(decided(&report), Some(2), "{report:?}");
    let records = sim.requests();
    assert_eq!(records.len(), 2);
    assert!(records[1].completed);
    agent.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_commands_are_ignored() {
    let sim = start_sim().await;
    let mut agent = Agent::spawn(
        &sim,
        "s:tokens=10,token_delay_ms=20",
        settings(5_000, 10_000, 3, 60_000),
    )
    .await;
    // The same StartTurn delivered twice (a re-send after a reconnect): one turn, one request.
    agent.start_turn(1, 1);
    agent.start_turn(1, 1);
    let report = agent.next().await;
    assert_eq!(decided(&report), Some(1), "{report:?}");
    assert_eq!(agent.quiet_for(Duration::from_millis(300)).await, None);
    let records = sim.requests();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(records[0].completed, "the duplicate restarted the turn");

    // Older commands replayed while a newer turn runs are dropped too: had either been
    // applied, turn 2's worker would have been killed and its request abandoned.
    agent.start_turn(2, 2);
    agent.start_turn(1, 1);
    agent.start_turn(2, 2);
    agent.command(1, CoordinatorCommand::Cancel { turn: TurnId(2) });
    let report = agent.next().await;
    assert_eq!(decided(&report), Some(2), "{report:?}");
    assert_eq!(agent.quiet_for(Duration::from_millis(300)).await, None);
    let records = sim.requests();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert!(records.iter().all(|r| r.completed), "{records:#?}");
    agent.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_agent_and_its_worker() {
    let sim = start_sim().await;
    let mut agent = Agent::spawn(
        &sim,
        "s:first_byte_ms=5000",
        settings(10_000, 10_000, 3, 60_000),
    )
    .await;
    agent.start_turn(1, 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while sim.requests().is_empty() {
        assert!(Instant::now() < deadline, "the turn never reached the sim");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    agent.command(2, CoordinatorCommand::Stop);
    tokio::time::timeout(Duration::from_secs(3), &mut agent.handle)
        .await
        .expect("the agent stops in time")
        .expect("the agent stops cleanly");
    assert!(!ended(&sim, 0).await.completed);
    assert_eq!(agent.quiet_for(Duration::from_millis(100)).await, None);
    sim.shutdown().await;
}

/// A stopped agent leaves no task behind: its turn-deadline timer (here an hour away) holds a
/// reference to the actor, so a timer left running would keep every finished agent's mailbox
/// alive in a long-lived server until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_leaves_no_pending_timer() {
    let sim = start_sim().await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let mut agent = Agent::spawn(
        &sim,
        "s:first_byte_ms=5000",
        settings(3_600_000, 3_600_000, 3, 60_000),
    )
    .await;
    agent.start_turn(1, 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while sim.requests().is_empty() {
        assert!(Instant::now() < deadline, "the turn never reached the sim");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tasks() > before, "the agent, its worker and its timer run");
    agent.command(2, CoordinatorCommand::Stop);
    tokio::time::timeout(Duration::from_secs(3), &mut agent.handle)
        .await
        .expect("the agent stops in time")
        .expect("the agent stops cleanly");
    drop(agent);
    let deadline = Instant::now() + Duration::from_secs(3);
    while tasks() > before {
        assert!(
            Instant::now() < deadline,
            "{} task(s) outlived the stopped agent",
            tasks() - before
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.shutdown().await;
}
