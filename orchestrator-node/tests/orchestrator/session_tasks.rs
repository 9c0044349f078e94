//! A session run inside a long-lived process (`conclave server`) leaves nothing running once
//! it has ended: no actor, and no timer. The orchestrator timeout (here an hour away) is a
//! pending task holding the coordinator; left running, it would keep every finished session's
//! actors and mailboxes alive until it fired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave::display::Display;
use conclave::session::{EnvFn, SessionPlan, run_session};
use conclave_protocol::{SessionId, TaskSpec};
use conclave_sim::{SimConfig, SimServer};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_leaves_no_task_behind() {
    let sim = SimServer::start(
        SimConfig {
            tokens: 4,
            token_delay: Duration::from_millis(2),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("loopback"),
    )
    .await
    .expect("sim provider starts");
    let base = sim.base_url();
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
    let http = conclave_agent::providers::http_client(Duration::from_secs(5)).unwrap();
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
    // The shared client keeps its pooled connections (and their tasks); only the session's
    // own tasks must be gone.
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
    sim.shutdown().await;
}
