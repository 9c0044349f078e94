//! End-to-end fault matrix: the real `conclave` binary runs a three-agent session against the
//! simulated provider, with ONE agent (`beta`) whose model string carries an injected fault.
//! Every fault kind is tried transient (`fault_times=1`: the agent must recover and vote) and,
//! where it makes sense, persistent (the agent must fail and the session finish with the other
//! two). Outcomes are read from the session journal and the provider's request log, and every
//! session must end well within its timeouts.
//!
//! The cases run concurrently (each with its own simulator and session directory), a few at a
//! time. Run with `--nocapture` to see the measured table:
//!
//! ```text
//! cargo build -p conclave --bin conclave
//! cargo test -p conclave-tests --test e2e faults:: -- --nocapture
//! ```
//!
//! Sessions use `restart_policy: finish`, so beta's faulty first turn is not cancelled by the
//! others' answers: its recovery (retry or worker restart) happens inside that one turn.
//! Timeouts: the stall watchdog at 1 s (the smallest the config takes), turns at 10 s (longer
//! than a persistent stall takes to exhaust the restart limit), the session at 30 s.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use conclave_sim::{Fault, RequestRecord};
use conclave_tests::start_sim;
use conclave_tests::{
    Finished, SimAgent, SimTimeouts, events_of, read_journal, run_with_deadline,
    sim_config_yaml_with, workspace_bin,
};
use serde_json::Value;
use tokio::sync::Semaphore;

const TIMEOUTS: SimTimeouts = SimTimeouts {
    orchestrator: 30,
    turn: 10,
    stall: 1,
};
/// The process is killed past this (a hang is a failure, not a stuck test run).
const DEADLINE: Duration = Duration::from_secs(45);
/// Sessions run at once: enough to keep the whole matrix short, few enough that the timings
/// still say something on a small machine.
const CONCURRENCY: usize = 8;
/// The backends' default retry budget (`max_retries: 2`): a persistent provider fault is seen
/// by the simulator three times.
const MAX_RETRIES: usize = 2;
/// `TurnSettings::default().max_restarts`: a persistent stall crashes the worker four times.
const MAX_RESTARTS: usize = 3;

/// What beta's fault must lead to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A provider retry (`ProviderRetry` in the journal), then beta decides and votes.
    /// `wait_ms`: the wait the server's retry hint asked for.
    Retried { wait_ms: Option<u64> },
    /// The stall watchdog crashed the worker; the agent restarted it (`WorkerRestart`), then
    /// beta decides and votes.
    Restarted,
    /// Slow but under the stall watchdog: no retry, no restart, beta votes.
    Tolerated,
    /// Beta fails with this journal `kind` after `requests` provider requests, `retries`
    /// provider retries and `restarts` worker restarts; the other two finish the session.
    Failed {
        kind: &'static str,
        requests: usize,
        retries: usize,
        restarts: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Case {
    /// Also the session id.
    name: &'static str,
    /// Beta's model options (after `sim-b:`).
    options: &'static str,
    fault: Fault,
    expect: Expect,
    /// The session must end within this (measured around the process).
    budget: Duration,
}

const fn case(
    name: &'static str,
    options: &'static str,
    fault: Fault,
    expect: Expect,
    budget_s: u64,
) -> Case {
    Case {
        name,
        options,
        fault,
        expect,
        budget: Duration::from_secs(budget_s),
    }
}

const fn failed(kind: &'static str, requests: usize, retries: usize, restarts: usize) -> Expect {
    Expect::Failed {
        kind,
        requests,
        retries,
        restarts,
    }
}

const PROVIDER_FAILURE: Expect = failed("provider", MAX_RETRIES + 1, MAX_RETRIES, 0);
const STALL_FAILURE: Expect = failed("stalled", MAX_RESTARTS + 1, 0, MAX_RESTARTS);
const RETRIED: Expect = Expect::Retried { wait_ms: None };

fn cases() -> Vec<Case> {
    use Fault::*;
    vec![
        // Transient: the first request of beta's model faults, the retry succeeds.
        case(
            "429-retry-after-ms",
            "fault=429,fault_times=1,retry_after_ms=200",
            RateLimited,
            Expect::Retried { wait_ms: Some(200) },
            12,
        ),
        case(
            "429-retry-after-s",
            "fault=429,fault_times=1,retry_after=1",
            RateLimited,
            Expect::Retried {
                wait_ms: Some(1000),
            },
            12,
        ),
        case("500", "fault=500,fault_times=1", ServerError, RETRIED, 12),
        case("503", "fault=503,fault_times=1", Unavailable, RETRIED, 12),
        case("529", "fault=529,fault_times=1", Overloaded, RETRIED, 12),
        case(
            "stream-error",
            "fault=stream_error,fault_times=1,stall_after=2",
            StreamError,
            RETRIED,
            12,
        ),
        case(
            "truncate",
            "fault=truncate,fault_times=1,stall_after=2",
            Truncate,
            RETRIED,
            12,
        ),
        // The stream goes on after the bad line: slow pieces make sure the client has left
        // before the simulator could finish it.
        case(
            "malformed",
            "fault=malformed,fault_times=1,stall_after=1,token_delay_ms=100",
            Malformed,
            RETRIED,
            12,
        ),
        case(
            "reset",
            "fault=reset,fault_times=1,stall_after=2",
            Reset,
            RETRIED,
            12,
        ),
        case(
            "stall",
            "fault=stall,fault_times=1,stall_after=2",
            Stall,
            Expect::Restarted,
            12,
        ),
        // `first_byte_ms` also delays the first piece of the requests that do not fault, so a
        // first byte beyond the watchdog cannot be transient: the tolerated case stays under it.
        case(
            "slow-first-byte-600ms",
            "fault=slow_first_byte,first_byte_ms=600",
            SlowFirstByte,
            Expect::Tolerated,
            12,
        ),
        // Persistent: every request of beta's model faults.
        case(
            "429-persistent",
            "fault=429,retry_after_ms=100",
            RateLimited,
            PROVIDER_FAILURE,
            12,
        ),
        case(
            "500-persistent",
            "fault=500",
            ServerError,
            PROVIDER_FAILURE,
            12,
        ),
        case(
            "503-persistent",
            "fault=503",
            Unavailable,
            PROVIDER_FAILURE,
            12,
        ),
        case(
            "529-persistent",
            "fault=529",
            Overloaded,
            PROVIDER_FAILURE,
            12,
        ),
        case(
            "quota",
            "fault=quota",
            QuotaExhausted,
            failed("provider", 1, 0, 0),
            12,
        ),
        case(
            "stream-error-persistent",
            "fault=stream_error,stall_after=2",
            StreamError,
            PROVIDER_FAILURE,
            12,
        ),
        case(
            "truncate-persistent",
            "fault=truncate,stall_after=2",
            Truncate,
            PROVIDER_FAILURE,
            12,
        ),
        case(
            "malformed-persistent",
            "fault=malformed,stall_after=1,token_delay_ms=100",
            Malformed,
            PROVIDER_FAILURE,
            12,
        ),
        case(
            "reset-persistent",
            "fault=reset,stall_after=2",
            Reset,
            PROVIDER_FAILURE,
            12,
        ),
        case(
            "stall-persistent",
            "fault=stall,stall_after=2",
            Stall,
            STALL_FAILURE,
            20,
        ),
        case(
            "slow-first-byte-3s",
            "fault=slow_first_byte,first_byte_ms=3000",
            SlowFirstByte,
            STALL_FAILURE,
            20,
        ),
    ]
}

/// What one case produced.
struct Ran {
    case: Case,
    model: String,
    run: Finished,
    journal: Vec<Value>,
    records: Vec<RequestRecord>,
}

async fn run_case(case: Case, gate: Arc<Semaphore>) -> Ran {
    let _permit = gate.acquire_owned().await.expect("semaphore open");
    let sim = start_sim(6, 5).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let model = format!("sim-b:{}", case.options);
    let yaml = sim_config_yaml_with(
        &sim.base_url(),
        &[
            SimAgent {
                id: "alpha",
                model: "sim-a",
            },
            SimAgent {
                id: "beta",
                model: &model,
            },
            SimAgent {
                id: "gamma",
                model: "sim-c",
            },
        ],
        "  restart_policy: finish\n",
        TIMEOUTS,
        None,
    );
    let config = dir.path().join("faults.yaml");
    std::fs::write(&config, yaml).expect("config written");
    let bin = workspace_bin("conclave").expect("conclave binary");
    let cwd: PathBuf = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command
            .args([
                "--config",
                config.to_str().expect("utf-8 path"),
                "--display",
                "quiet",
                "--session-dir",
                "sessions",
                "--session-id",
                case.name,
                "What is the boiling point of water at sea level?",
            ])
            .current_dir(&cwd)
            .env_remove("RUST_LOG");
        run_with_deadline(&mut command, DEADLINE)
    })
    .await
    .expect("runner thread")
    .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
    let journal = read_journal(&dir.path().join("sessions").join(case.name))
        .unwrap_or_else(|e| panic!("{}: {e:#}\nstderr:\n{}", case.name, run.stderr));
    // The process has exited, so every connection is closed; give the simulator a moment to
    // record the ends of streams the client dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records = sim.requests();
    sim.shutdown().await;
    Ran {
        case,
        model,
        run,
        journal,
        records,
    }
}

/// Beta's `turn_progress` events of one kind (`ProviderRetry`, `WorkerRestart`).
fn progress<'a>(journal: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events_of(journal, "turn_progress")
        .into_iter()
        .filter(|e| e["agent"] == "beta")
        .filter_map(|e| e["event"].get(kind))
        .collect()
}

fn by_agent<'a>(journal: &'a [Value], kind: &str, agent: &str) -> Vec<&'a Value> {
    events_of(journal, kind)
        .into_iter()
        .filter(|e| e["agent"] == agent)
        .collect()
}

/// Checks one case; returns the outcome for the table, or what was wrong.
fn check(ran: &Ran) -> Result<String, String> {
    let Ran {
        case,
        model,
        run,
        journal,
        records,
    } = ran;
    let context = || {
        let kinds: Vec<&str> = journal.iter().filter_map(|e| e["type"].as_str()).collect();
        format!(
            "exit {:?}, {:.1} s\njournal: {kinds:?}\nrequests: {records:#?}\nstderr:\n{}",
            run.code,
            run.elapsed.as_secs_f64(),
            run.stderr
        )
    };
    let ensure = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what}\n{}", context()))
        }
    };

    // Every session completes with consensus, within its timeouts, with an answer printed.
    ensure(run.code == Some(0), "the session did not exit 0")?;
    let ended = events_of(journal, "session_ended");
    ensure(
        ended.len() == 1 && ended[0]["reason"] == "consensus" && ended[0]["exit_code"] == 0,
        "the journal does not end in consensus",
    )?;
    let orchestrator_timeout = Duration::from_secs(TIMEOUTS.orchestrator);
    let wall = Duration::from_millis(ended[0]["wall_ms"].as_u64().unwrap_or(u64::MAX));
    ensure(
        wall < orchestrator_timeout && run.elapsed < orchestrator_timeout,
        "the session ran into the orchestrator timeout",
    )?;
    ensure(
        run.elapsed < case.budget,
        &format!("the session took longer than {:?}", case.budget),
    )?;
    ensure(
        events_of(journal, "timed_out").is_empty(),
        "the session timed out",
    )?;
    ensure(
        !run.stdout.trim().is_empty() && events_of(journal, "final_answer").len() == 1,
        "no final answer",
    )?;
    // The healthy agents never noticed anything.
    for agent in ["alpha", "gamma"] {
        ensure(
            by_agent(journal, "agent_failed", agent).is_empty()
                && by_agent(journal, "turn_progress", agent).is_empty(),
            &format!("{agent} was affected by beta's fault"),
        )?;
    }

    let retries = progress(journal, "ProviderRetry");
    let restarts = progress(journal, "WorkerRestart");
    let beta_requests: Vec<&RequestRecord> = records.iter().filter(|r| &r.model == model).collect();
    let votes = events_of(journal, "consensus_reached")
        .first()
        .and_then(|c| c["votes"].as_u64())
        .unwrap_or(0);
    let beta_voted = by_agent(journal, "vote_accepted", "beta").len();
    let first = beta_requests
        .first()
        .ok_or_else(|| format!("beta never reached the provider\n{}", context()))?;
    ensure(
        first.fault == Some(case.fault),
        "beta's first request did not carry the fault",
    )?;

    match case.expect {
        Expect::Retried { wait_ms } => {
            ensure(!retries.is_empty(), "no ProviderRetry journaled for beta")?;
            ensure(restarts.is_empty(), "a worker restart instead of a retry")?;
            if let Some(wait) = wait_ms {
                ensure(
                    retries[0]["wait_ms"] == wait,
                    &format!("the retry did not wait the server's {wait} ms"),
                )?;
            }
            ensure(!first.completed, "the faulted request completed")?;
            ensure(
                beta_requests
                    .iter()
                    .skip(1)
                    .any(|r| r.completed && r.fault.is_none()),
                "no later request of beta succeeded",
            )?;
            ensure(
                by_agent(journal, "agent_failed", "beta").is_empty(),
                "beta failed",
            )?;
            ensure(votes == 3 && beta_voted > 0, "not all three agents voted")?;
            let wait = retries[0]["wait_ms"].as_u64().unwrap_or(0);
            Ok(format!(
                "recovered: {} provider retr{} (first wait {wait} ms); 3 votes",
                retries.len(),
                if retries.len() == 1 { "y" } else { "ies" }
            ))
        }
        Expect::Restarted => {
            ensure(!restarts.is_empty(), "no WorkerRestart journaled for beta")?;
            ensure(
                restarts.iter().all(|r| {
                    r["reason"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("stalled"))
                }),
                "the restart was not for a stall",
            )?;
            ensure(
                !first.completed,
                "the stalled stream was not dropped by the client",
            )?;
            ensure(
                beta_requests.iter().skip(1).any(|r| r.completed),
                "no later request of beta succeeded",
            )?;
            ensure(
                by_agent(journal, "agent_failed", "beta").is_empty(),
                "beta failed",
            )?;
            ensure(votes == 3 && beta_voted > 0, "not all three agents voted")?;
            Ok(format!(
                "recovered: stall watchdog fired, worker restarted {}×; 3 votes",
                restarts.len()
            ))
        }
        Expect::Tolerated => {
            ensure(
                retries.is_empty() && restarts.is_empty(),
                "a slow provider was retried or restarted",
            )?;
            ensure(
                beta_requests.iter().all(|r| r.completed),
                "a slow request was abandoned",
            )?;
            ensure(votes == 3 && beta_voted > 0, "not all three agents voted")?;
            Ok("tolerated: no retry, no restart; 3 votes".to_owned())
        }
        Expect::Failed {
            kind,
            requests,
            retries: want_retries,
            restarts: want_restarts,
        } => {
            let failed = by_agent(journal, "agent_failed", "beta");
            ensure(failed.len() == 1, "beta was not failed exactly once")?;
            let turn_failed = by_agent(journal, "turn_failed", "beta");
            ensure(
                turn_failed.len() == 1 && turn_failed[0]["kind"] == kind,
                &format!("beta's turn did not fail with kind `{kind}`"),
            )?;
            ensure(
                beta_requests.len() == requests,
                &format!("beta made {} requests, not {requests}", beta_requests.len()),
            )?;
            ensure(
                beta_requests
                    .iter()
                    .all(|r| r.fault == Some(case.fault) && !r.completed),
                "a request of beta did not fault",
            )?;
            ensure(
                retries.len() == want_retries && restarts.len() == want_restarts,
                &format!(
                    "{} retries / {} restarts, expected {want_retries} / {want_restarts}",
                    retries.len(),
                    restarts.len()
                ),
            )?;
            ensure(
                votes == 2 && beta_voted == 0,
                "the other two did not finish the session",
            )?;
            Ok(format!(
                "beta failed (`{kind}`) after {requests} request(s), {want_retries} retries, \
                 {want_restarts} restarts; consensus of the other 2"
            ))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    // Fail fast with a clear message if the binary is missing, before starting anything.
    workspace_bin("conclave").expect("conclave binary");
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let started = std::time::Instant::now();
    let handles: Vec<_> = cases()
        .into_iter()
        .map(|case| tokio::spawn(run_case(case, gate.clone())))
        .collect();
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for handle in handles {
        let ran = handle.await.expect("case task");
        let transient = if ran.case.options.contains("fault_times=1") {
            "first request only"
        } else {
            "every request"
        };
        let outcome = match check(&ran) {
            Ok(outcome) => outcome,
            Err(problem) => {
                problems.push(format!("{}: {problem}", ran.case.name));
                "**UNEXPECTED** (see below)".to_owned()
            }
        };
        rows.push(format!(
            "| `{}` ({transient}) | {outcome} | {:.2} s |",
            ran.case.options,
            ran.run.elapsed.as_secs_f64()
        ));
    }
    println!("\n| fault | outcome | time to end |\n|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    println!(
        "\n{} sessions, {CONCURRENCY} at a time, in {:.1} s (stall watchdog {} s, turn timeout {} s, orchestrator timeout {} s)\n",
        rows.len(),
        started.elapsed().as_secs_f64(),
        TIMEOUTS.stall,
        TIMEOUTS.turn,
        TIMEOUTS.orchestrator
    );
    assert!(
        problems.is_empty(),
        "{} case(s) failed:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}
