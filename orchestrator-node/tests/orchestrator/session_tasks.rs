//! A session run inside a long-lived process (`conclave server`) leaves nothing running once
//! it has ended: no actor, and no timer. The orchestrator timeout (here an hour away) is a
//! pending task holding the coordinator; left running, it would keep every finished session's
//! actors and mailboxes alive until it fired.
//!
//! The simulated provider runs on a runtime of its own, so the tasks counted on the session's
//! runtime are the session's (and its HTTP client's) only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave::display::Display;
use conclave::session::{EnvFn, SessionPlan, run_session};
use conclave_protocol::{SessionId, TaskSpec};
use conclave_sim::{SimConfig, SimServer};
use tokio_util::sync::CancellationToken;

#[test]
fn an_ended_session_leaves_no_task_behind() {
    let sim_runtime = tokio::runtime::Runtime::new().expect("a runtime for the sim");
    let sim = sim_runtime
        .block_on(SimServer::start(
            SimConfig {
                tokens: 4,
                token_delay: Duration::from_millis(2),
                ..SimConfig::default()
            },
            "127.0.0.1:0".parse().expect("loopback"),
        ))
        .expect("sim provider starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the session");
    runtime.block_on(session_then_count(&sim.base_url()));
    sim_runtime.block_on(sim.shutdown());
}

async fn session_then_count(base: &str) {
    let yaml = format!(
        "agents:\n  - id: a\n    backend: {{type: sim, model: sim-a, base_url: \"{base}\"}}\n  - id: b\n    backend: {{type: sim, model: sim-b, base_url: \"{base}\"}}\ntimeout_settings:\n  orchestrator_timeout_seconds: 3600\n  turn_timeout_seconds: 3600\n"
    );
    let env: EnvFn = Arc::new(|_| None);
    let config = conclave::config::load_str(&yaml, "test", &|_| None)
        .expect("config loads")
        .config;
    let dir = tempfile::tempdir().unwrap();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    // No idle pool: a pool's idle-connection reaper is a task of the client's that only
    // notices the client is gone at its next tick, and is not the session's to end.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let before = tasks();
    let plan = SessionPlan {
        session: SessionId::parse("tasks").unwrap(),
        dir: dir.path().join("tasks"),
        config,
        task: TaskSpec {
            question: "What is 2+2?".into(),
            history: Vec::new(),
        },
        env,
        http: Some(http.clone()),
        cluster: None,
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        run_session(plan, Display::none(), CancellationToken::new()),
    )
    .await
    .expect("the session ends in time")
    .expect("the session runs");
    assert_eq!(outcome.exit_code(), 0);
    // The HTTP client's connections are tasks too; they end with the client.
    drop(http);
    let deadline = Instant::now() + Duration::from_secs(3);
    while tasks() > before {
        assert!(
            Instant::now() < deadline,
            "{} task(s) outlived the session",
            tasks() - before
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
