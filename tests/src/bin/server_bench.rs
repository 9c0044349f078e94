//! `conclave-server-bench`: what a long-lived `conclave server` costs over a batch. It starts
//! the real binary with `--http` against the simulated provider (inside this process), submits
//! N sessions over HTTP at once (each `POST /sessions?wait=true`), and prints: start-up to a
//! healthy API, the batch's wall time and sessions per second, the median and worst time a
//! session took end to end (queueing included), the server's RSS idle, at its peak, and idle
//! again 1 s after the batch (what finished sessions leave behind), and its CPU time.
//!
//! `cargo build --release --workspace --bins && target/release/conclave-server-bench --sessions 200`

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use conclave_sim::{SimConfig, SimServer};
use conclave_tests::{SimAgent, free_port, sim_config_yaml, workspace_bin};

#[derive(Parser, Debug)]
#[command(
    name = "conclave-server-bench",
    about = "Measure a conclave server over a batch of sessions"
)]
struct Args {
    /// Sessions in the batch.
    #[arg(long, default_value_t = 200)]
    sessions: u32,
    /// Requests in flight at once (default: every session at once, so the server queues).
    #[arg(long)]
    clients: Option<u32>,
    /// The server's --max-sessions.
    #[arg(long, default_value_t = 8)]
    max_sessions: u32,
    /// Agents per session.
    #[arg(long, default_value_t = 3)]
    agents: u32,
    /// Tokens per simulated reply.
    #[arg(long, default_value_t = 40)]
    tokens: u32,
    /// Milliseconds between simulated tokens.
    #[arg(long, default_value_t = 10)]
    token_delay_ms: u64,
    /// The conclave binary (default: next to this one).
    #[arg(long)]
    conclave: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    deadline_seconds: u64,
}

/// (VmRSS, VmHWM) of a process in KiB, from /proc.
fn rss_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// User + system CPU of a process in ms, from /proc (clock ticks of 10 ms on Linux).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) * 1000.0 / hz
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sim = SimServer::start(
        SimConfig {
            tokens: args.tokens,
            token_delay: Duration::from_millis(args.token_delay_ms),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("loopback"),
    )
    .await
    .context("cannot start the simulated provider")?;
    let dir = tempfile::tempdir().context("no temporary directory")?;
    let ids: Vec<String> = (1..=args.agents).map(|i| format!("agent{i}")).collect();
    let models: Vec<String> = (1..=args.agents).map(|i| format!("sim-{i}")).collect();
    let agents: Vec<SimAgent<'_>> = ids
        .iter()
        .zip(&models)
        .map(|(id, model)| SimAgent { id, model })
        .collect();
    let config = dir.path().join("team.yaml");
    std::fs::write(&config, sim_config_yaml(&sim.base_url(), &agents, "", 600))?;
    let conclave = match args.conclave {
        Some(path) => path,
        None => workspace_bin("conclave")?,
    };
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut server = Command::new(&conclave)
        .args(["server", "--http", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(&config)
        .args(["--session-dir", "sessions"])
        .args(["--max-sessions", &args.max_sessions.to_string()])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", conclave.display()))?;
    let pid = server.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.deadline_seconds))
        .pool_max_idle_per_host(0)
        .build()?;
    let result = async {
        let healthy = loop {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await
                && r.status().is_success()
            {
                break started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the server's API did not come up within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let (idle_rss, _) = rss_kb(pid)?;
        let batch = Instant::now();
        let mut requests = tokio::task::JoinSet::new();
        let clients = std::sync::Arc::new(tokio::sync::Semaphore::new(
            args.clients.unwrap_or(args.sessions).max(1) as usize,
        ));
        for n in 0..args.sessions {
            let http = http.clone();
            let clients = clients.clone();
            let url = format!("{base}/sessions?wait=true");
            let body = serde_json::json!({"question": format!("question {n}"), "session_id": format!("s{n}")});
            requests.spawn(async move {
                let _client = clients.acquire_owned().await?;
                let began = Instant::now();
                let response = http.post(url).json(&body).send().await?;
                let status = response.status();
                let reply: serde_json::Value = response.json().await?;
                anyhow::ensure!(status.is_success(), "session {n}: {status} {reply}");
                anyhow::ensure!(
                    reply["result"]["exit_code"] == 0,
                    "session {n} did not reach consensus: {reply}"
                );
                Ok::<_, anyhow::Error>(began.elapsed())
            });
        }
        let mut took = Vec::new();
        while let Some(joined) = requests.join_next().await {
            took.push(joined.context("a request task failed")??);
        }
        let wall = batch.elapsed();
        // What the server keeps once idle: give the last session a moment to wind down.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (after_rss, peak_rss) = rss_kb(pid)?;
        took.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "server: {} sessions x {} agents, {} clients, --max-sessions {}, {} tokens x {} ms",
            args.sessions,
            args.agents,
            args.clients.unwrap_or(args.sessions),
            args.max_sessions,
            args.tokens,
            args.token_delay_ms
        );
        println!("  start-up to a healthy API   {:>9.1} ms", ms(healthy));
        println!("  batch wall time             {:>9.1} ms", ms(wall));
        println!(
            "  sessions per second         {:>9.2}",
            f64::from(args.sessions) / wall.as_secs_f64()
        );
        println!(
            "  per session p50 / max       {:>9.1} / {:.1} ms (queueing included)",
            ms(took[took.len() / 2]),
            ms(*took.last().expect("at least one session"))
        );
        println!(
            "  server RSS idle / peak / idle after {:.1} / {:.1} / {:.1} MB",
            idle_rss as f64 / 1024.0,
            peak_rss as f64 / 1024.0,
            after_rss as f64 / 1024.0
        );
        println!("  server CPU                  {:>9.1} ms", cpu_ms(pid));
        Ok(())
    }
    .await;
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = server.wait();
    result
}
