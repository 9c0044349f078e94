//! The shared retry loop ([`call_with_retries`]) against real HTTP faults from the simulated
//! provider: a table of faults that are retried until the call recovers, then the faults that
//! end the call, counting the attempts in the simulator's request log and checking that every
//! wait honoured the server's hint or the backoff.
//!
//! The tests run on tokio's paused clock, so a 1 s `retry-after` or a 2 s backoff costs
//! nothing. Paused time and real sockets mix safely only when no unrelated timer can fire
//! while the runtime waits for the socket (the clock jumps to the next timer whenever the
//! runtime is idle): the client here has no connect timeout and no pool-idle timer, so the
//! only timers are the simulator's pacing and the retry sleeps themselves.

use std::time::Duration;

use conclave_agent::llm::{ChatMessage, ChatRequest};
use conclave_agent::providers::retry::{INITIAL_DELAY, MAX_JITTER, RetryPolicy, call_with_retries};
use conclave_agent::providers::{Backend, ProviderError};
use conclave_protocol::config::{BackendSpec, WireFormat};
use conclave_sim::{Fault, RequestRecord, SimConfig, SimServer};
use futures::StreamExt;
use tokio::time::Instant;

/// Short, fast replies: the waits under test dominate every timing.
fn sim_config() -> SimConfig {
    SimConfig {
        tokens: 4,
        token_delay: Duration::from_millis(1),
        first_byte_delay: Duration::ZERO,
    }
}

async fn start_sim() -> SimServer {
    SimServer::start(sim_config(), "127.0.0.1:0".parse().expect("loopback"))
        .await
        .expect("the simulator starts")
}

/// What one retried call did.
struct Outcome {
    /// The model string called, naming the case in failure messages.
    case: String,
    /// Chunks of the successful attempt, or the final error.
    result: Result<usize, ProviderError>,
    /// `(retry number, wait)` for every retry, as reported to `on_retry`.
    waits: Vec<(u32, Duration)>,
    /// Time from the first attempt to the end, on tokio's (paused) clock.
    elapsed: Duration,
    /// The simulator's records: one per attempt that reached it.
    records: Vec<RequestRecord>,
}

impl Outcome {
    fn total_wait(&self) -> Duration {
        self.waits.iter().map(|(_, wait)| *wait).sum()
    }

    /// The waits were slept, and nothing much else was: the elapsed time is the waits plus
    /// the simulator's few milliseconds of pacing per attempt.
    fn assert_slept_the_waits(&self) {
        let total = self.total_wait();
        assert!(
            self.elapsed >= total && self.elapsed <= total + Duration::from_millis(250),
            "{}: elapsed {:?} for waits {:?}",
            self.case,
            self.elapsed,
            self.waits
        );
    }

    /// The call succeeded on the last of `attempts` attempts, after `attempts - 1` faults.
    fn assert_recovered_after(&self, attempts: usize, fault: Fault) {
        if let Err(error) = &self.result {
            panic!("{}: the call should have succeeded: {error}", self.case);
        }
        assert_eq!(self.records.len(), attempts, "{}: attempts made", self.case);
        assert_eq!(
            self.waits.len(),
            attempts - 1,
            "{}: retries made",
            self.case
        );
        let (last, faulted) = self.records.split_last().expect("at least one attempt");
        assert!(
            faulted.iter().all(|record| record.fault == Some(fault)),
            "{}: the faulted attempts",
            self.case
        );
        assert!(
            last.completed && last.fault.is_none(),
            "{}: the last attempt",
            self.case
        );
    }

    /// Each wait is the backoff for its retry: 0.5 s × 2^(n-1), less at most 25 % jitter.
    fn assert_backoff(&self) {
        for (retry, wait) in &self.waits {
            let full = INITIAL_DELAY * 2u32.pow(retry - 1);
            assert!(
                *wait <= full && *wait >= full.mul_f64(1.0 - MAX_JITTER),
                "{}: retry {retry} waited {wait:?}, backoff is {full:?}",
                self.case
            );
        }
    }
}

/// Calls `model` on `sim` over `wire` with up to `max_retries` retries.
async fn call(sim: &SimServer, wire: WireFormat, model: &str, max_retries: u32) -> Outcome {
    let spec = BackendSpec {
        wire,
        provider: "sim".into(),
        model: model.into(),
        base_url: sim.base_url(),
        api_key_env: None,
        temperature: None,
        top_p: None,
        max_tokens: None,
        extra_body: None,
        max_retries,
        options: Default::default(),
    };
    // No connect timeout and no pool-idle timer: see the module docs.
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_idle_timeout(None)
        .build()
        .expect("HTTP client");
    let backend = Backend::new(&spec, http, &|_| None).expect("backend");
    let request = ChatRequest {
        messages: vec![ChatMessage::user("What is 2+2?")],
        ..ChatRequest::default()
    };
    let policy = RetryPolicy {
        max_retries: spec.max_retries,
    };
    let started = Instant::now();
    let mut waits = Vec::new();
    let result = call_with_retries(
        &policy,
        || drain(&backend, &request),
        |retry, wait, _error| waits.push((retry, wait)),
    )
    .await;
    Outcome {
        case: model.to_owned(),
        result,
        waits,
        elapsed: started.elapsed(),
        records: sim.requests(),
    }
}

/// One attempt: the whole stream, failing on its first error.
async fn drain(backend: &Backend, request: &ChatRequest) -> Result<usize, ProviderError> {
    let mut stream = backend.stream(request).await?;
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        chunk?;
        chunks += 1;
    }
    Ok(chunks)
}

/// How a recovering case's waits are checked.
enum Waits {
    /// Exactly these `(retry number, milliseconds)`: the server's hint.
    Exactly(&'static [(u32, u64)]),
    /// One retry, waiting between these milliseconds (an HTTP date: at least two seconds
    /// ahead, rounded up to a whole second, and read against the wall clock a moment later).
    OnceBetween(u64, u64),
    /// The backoff of each retry (see [`Outcome::assert_backoff`]).
    Backoff,
}

/// A fault that is retried until the call succeeds.
struct Recovers {
    /// The simulator's model string, which sets the fault.
    model: &'static str,
    max_retries: u32,
    /// Attempts made, the last one successful.
    attempts: usize,
    fault: Fault,
    waits: Waits,
    /// Tokens the first attempt streamed before its fault, where that is the point.
    first_attempt_tokens: Option<u64>,
}

const RECOVERING: [Recovers; 10] = [
    // 429 with a hint: `retry-after-ms`, `retry-after` in seconds, `retry-after` as a date.
    Recovers {
        model: "m:fault=429,fault_times=2,retry_after_ms=50",
        max_retries: 3,
        attempts: 3,
        fault: Fault::RateLimited,
        waits: Waits::Exactly(&[(1, 50), (2, 50)]),
        first_attempt_tokens: None,
    },
    Recovers {
        model: "m:fault=429,fault_times=1,retry_after=1",
        max_retries: 2,
        attempts: 2,
        fault: Fault::RateLimited,
        waits: Waits::Exactly(&[(1, 1000)]),
        first_attempt_tokens: None,
    },
    Recovers {
        model: "m:fault=429,fault_times=1,retry_after_date=2",
        max_retries: 2,
        attempts: 2,
        fault: Fault::RateLimited,
        waits: Waits::OnceBetween(1500, 3000),
        first_attempt_tokens: None,
    },
    // Server errors back off.
    Recovers {
        model: "m:fault=500,fault_times=2",
        max_retries: 2,
        attempts: 3,
        fault: Fault::ServerError,
        waits: Waits::Backoff,
        first_attempt_tokens: None,
    },
    Recovers {
        model: "m:fault=503,fault_times=1",
        max_retries: 2,
        attempts: 2,
        fault: Fault::Unavailable,
        waits: Waits::Backoff,
        first_attempt_tokens: None,
    },
    Recovers {
        model: "m:fault=529,fault_times=2",
        max_retries: 3,
        attempts: 3,
        fault: Fault::Overloaded,
        waits: Waits::Backoff,
        first_attempt_tokens: None,
    },
    // Broken streams repeat the whole call.
    Recovers {
        model: "m:fault=stream_error,fault_times=1,stall_after=2",
        max_retries: 2,
        attempts: 2,
        fault: Fault::StreamError,
        waits: Waits::Backoff,
        first_attempt_tokens: Some(2),
    },
    Recovers {
        model: "m:fault=truncate,fault_times=1,stall_after=4",
        max_retries: 2,
        attempts: 2,
        fault: Fault::Truncate,
        waits: Waits::Backoff,
        first_attempt_tokens: None,
    },
    Recovers {
        model: "m:fault=malformed,fault_times=1,stall_after=1",
        max_retries: 2,
        attempts: 2,
        fault: Fault::Malformed,
        waits: Waits::Backoff,
        first_attempt_tokens: None,
    },
    Recovers {
        model: "m:fault=reset,fault_times=2,stall_after=2",
        max_retries: 2,
        attempts: 3,
        fault: Fault::Reset,
        waits: Waits::Backoff,
        first_attempt_tokens: None,
    },
];

#[tokio::test(start_paused = true)]
async fn each_retried_fault_recovers_after_the_right_waits() {
    for case in &RECOVERING {
        let sim = start_sim().await;
        let outcome = call(&sim, WireFormat::OpenAiChat, case.model, case.max_retries).await;
        outcome.assert_recovered_after(case.attempts, case.fault);
        match case.waits {
            Waits::Exactly(waits) => {
                let expected: Vec<(u32, Duration)> = waits
                    .iter()
                    .map(|(retry, ms)| (*retry, Duration::from_millis(*ms)))
                    .collect();
                assert_eq!(outcome.waits, expected, "{}", case.model);
            }
            Waits::OnceBetween(low, high) => {
                let (_, wait) = outcome.waits[0];
                assert!(
                    wait >= Duration::from_millis(low) && wait <= Duration::from_millis(high),
                    "{}: {wait:?}",
                    case.model
                );
            }
            Waits::Backoff => outcome.assert_backoff(),
        }
        if let Some(tokens) = case.first_attempt_tokens {
            assert_eq!(
                outcome.records[0].output_tokens, tokens,
                "{}: it failed mid-stream",
                case.model
            );
        }
        outcome.assert_slept_the_waits();
        sim.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn exhausted_quota_is_not_retried() {
    let sim = start_sim().await;
    let outcome = call(&sim, WireFormat::OpenAiChat, "m:fault=quota", 5).await;
    let error = outcome.result.as_ref().expect_err("the call fails");
    assert_eq!(error.http_status(), Some(429));
    assert!(error.to_string().contains("quota"), "{error}");
    assert_eq!(outcome.records.len(), 1, "one attempt only");
    assert!(outcome.waits.is_empty());
    assert_eq!(outcome.elapsed, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn gives_up_when_max_retries_is_spent() {
    let sim = start_sim().await;
    let outcome = call(&sim, WireFormat::OpenAiChat, "m:fault=500", 2).await;
    let error = outcome.result.as_ref().expect_err("the call fails");
    assert_eq!(error.http_status(), Some(500));
    assert_eq!(outcome.records.len(), 3, "the first try and two retries");
    assert!(
        outcome
            .records
            .iter()
            .all(|record| record.fault == Some(Fault::ServerError))
    );
    assert_eq!(
        outcome.waits.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2]
    );
    outcome.assert_backoff();
    outcome.assert_slept_the_waits();
}

/// The turn worker retries through the same loop and journals one `ProviderRetry` per retry,
/// numbered from 1, with the wait the server asked for; then it decides normally.
#[tokio::test]
async fn turn_worker_reports_each_retry_then_decides() {
    use std::sync::{Arc, Mutex};

    use conclave_agent::outbox::Outbox;
    use conclave_agent::turn::{AgentContext, TurnSettings, TurnWorker, WorkerArgs};
    use conclave_protocol::{
        AgentReport, Decision, SessionId, TaskSpec, TurnEvent, TurnId, TurnMode, TurnSpec,
    };
    use ractor::Actor;

    let sim = start_sim().await;
    let spec = BackendSpec {
        wire: WireFormat::OpenAiChat,
        provider: "sim".into(),
        model: "w:fault=429,fault_times=2,retry_after_ms=30".into(),
        base_url: sim.base_url(),
        api_key_env: None,
        temperature: None,
        top_p: None,
        max_tokens: None,
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    };
    let backend = Backend::new(&spec, reqwest::Client::new(), &|_| None).expect("backend");
    let reports: Arc<Mutex<Vec<AgentReport>>> = Arc::default();
    let sink_reports = Arc::clone(&reports);
    let outbox = Outbox::new(
        SessionId::parse("retry-test").expect("session id"),
        "agent-a".into(),
        Arc::new(move |envelope| {
            sink_reports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(envelope.body);
            true
        }),
    );
    let context = Arc::new(AgentContext {
        agent_id: "agent-a".into(),
        backend: Arc::new(backend),
        outbox: Arc::new(outbox),
        system_message: None,
        settings: TurnSettings {
            turn_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(10),
            ..TurnSettings::default()
        },
        workflow: Default::default(),
        tools: Arc::new(conclave_agent::tools::ToolBox::empty()),
        snapshots: None,
    });
    let turn = TurnSpec {
        turn: TurnId(1),
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
    };
    let (_worker, handle) = Actor::spawn(
        None,
        TurnWorker,
        WorkerArgs {
            injections: Default::default(),
            spec: turn,
            context,
            session: SessionId::parse("retry-test").expect("session id"),
            trace: Default::default(),
            end: Default::default(),
        },
    )
    .await
    .expect("worker spawns");
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the worker stops in time")
        .expect("the worker ends normally");

    let reports = reports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let retries: Vec<(u32, u64)> = reports
        .iter()
        .filter_map(|report| match report {
            AgentReport::TurnEvent {
                event:
                    TurnEvent::ProviderRetry {
                        attempt, wait_ms, ..
                    },
                ..
            } => Some((*attempt, *wait_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [(1, 30), (2, 30)]);
    assert!(
        matches!(
            reports.last(),
            Some(AgentReport::Decided {
                decision: Decision::NewAnswer { .. },
                ..
            })
        ),
        "{reports:?}"
    );
    assert_eq!(sim.requests().len(), 3);
    sim.shutdown().await;
}

/// Every wire format's backend meets its format's in-stream error and 529 from the
/// simulator, retries, and recovers.
#[tokio::test(start_paused = true)]
async fn every_wire_recovers_from_an_in_stream_error_and_a_529() {
    for wire in [
        WireFormat::OpenAiChat,
        WireFormat::OpenAiResponses,
        WireFormat::Anthropic,
        WireFormat::Gemini,
    ] {
        for (model, fault) in [
            (
                "w:fault=stream_error,fault_times=1,stall_after=2",
                Fault::StreamError,
            ),
            ("w:fault=529,fault_times=1", Fault::Overloaded),
        ] {
            let sim = start_sim().await;
            let outcome = call(&sim, wire, model, 2).await;
            if let Err(error) = &outcome.result {
                panic!("{} with {model}: {error}", wire.as_str());
            }
            outcome.assert_recovered_after(2, fault);
            assert!(
                outcome
                    .records
                    .iter()
                    .all(|r| r.wire.as_str() == wire.as_str()),
                "{} served as {:?}",
                wire.as_str(),
                outcome.records
            );
            sim.shutdown().await;
        }
    }
}
