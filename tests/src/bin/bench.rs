//! `conclave-bench`: runs N agents against the simulated provider and prints what a session
//! costs: start-up to the first provider request, session wall time, the critical-path lower
//! bound (the sequential provider turns the session needed, measured at the provider), their
//! ratio, CPU time, peak RSS and the request count.
//!
//! The provider runs inside this process; `conclave` runs as a child process exactly as a user
//! starts it, so start-up, CPU and memory are the real binary's. Build in release first:
//! `cargo build --release --workspace --bins && target/release/conclave-bench --agents 3,60,1000`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use conclave_sim::{SimConfig, SimServer};
use conclave_tests::{SimAgent, sim_config_yaml, workspace_bin};

#[derive(Parser, Debug)]
#[command(
    name = "conclave-bench",
    about = "Measure conclave sessions against the simulated provider"
)]
struct Args {
    /// Agent counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "3,60,1000")]
    agents: Vec<u32>,
    /// Tokens per simulated reply.
    #[arg(long, default_value_t = 40)]
    tokens: u32,
    /// Milliseconds between simulated tokens.
    #[arg(long, default_value_t = 10)]
    token_delay_ms: u64,
    /// Runs per agent count (the median is reported).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// The conclave binary (default: next to this one).
    #[arg(long)]
    conclave: Option<PathBuf>,
    /// Give up on one session after this many seconds.
    #[arg(long, default_value_t = 600)]
    deadline_seconds: u64,
}

#[derive(Debug, Clone)]
struct Figures {
    agents: u32,
    startup_ms: f64,
    wall_ms: f64,
    lower_bound_ms: f64,
    chain: usize,
    cpu_ms: f64,
    peak_rss_kb: i64,
    requests: usize,
    cancelled: usize,
    exit_code: i32,
}

/// Waits for a child and returns (exit code, user+system CPU ms, peak RSS in KiB).
fn wait_with_rusage(
    child: &std::process::Child,
    deadline: Instant,
) -> anyhow::Result<(i32, f64, i64)> {
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; wait4 writes it only when it reaps the child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own child; status and usage point to valid memory.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            let cpu = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
            return Ok((
                code,
                cpu(usage.ru_utime) + cpu(usage.ru_stime),
                usage.ru_maxrss,
            ));
        }
        if reaped < 0 {
            bail!("wait4 failed: {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            // SAFETY: sending SIGKILL to our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("the session did not finish in time; killed it");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

async fn run_once(args: &Args, bin: &PathBuf, agents: u32) -> anyhow::Result<Figures> {
    let sim = SimServer::start(
        SimConfig {
            tokens: args.tokens,
            token_delay: Duration::from_millis(args.token_delay_ms),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let ids: Vec<String> = (1..=agents).map(|i| format!("a{i}")).collect();
    let models: Vec<String> = (1..=agents).map(|i| format!("sim-{i}")).collect();
    let list: Vec<SimAgent<'_>> = ids
        .iter()
        .zip(&models)
        .map(|(id, model)| SimAgent { id, model })
        .collect();
    let yaml = sim_config_yaml(&sim.base_url(), &list, "", args.deadline_seconds);
    let config = dir.path().join("bench.yaml");
    std::fs::write(&config, yaml)?;

    let spawn_at = sim.now_ms();
    let child = Command::new(bin)
        .args([
            "--config",
            config.to_str().context("temp path is not UTF-8")?,
            "--display",
            "quiet",
            "--session-dir",
        ])
        .arg(dir.path().join("sessions"))
        .arg("Name one benefit of code review.")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(args.deadline_seconds);
    let (exit_code, cpu_ms, peak_rss_kb) =
        tokio::task::spawn_blocking(move || wait_with_rusage(&child, deadline)).await??;
    let wall_ms = sim.now_ms() - spawn_at;
    let stats = sim.stats();
    let requests = sim.requests();
    sim.shutdown().await;
    let first = stats
        .first_request_ms
        .context("the session made no provider request")?;
    Ok(Figures {
        agents,
        startup_ms: first - spawn_at,
        wall_ms,
        lower_bound_ms: stats.critical_path_ms,
        chain: stats.critical_path_requests,
        cpu_ms,
        peak_rss_kb,
        requests: requests.len(),
        cancelled: requests.iter().filter(|r| !r.completed).count(),
        exit_code,
    })
}

fn median(mut runs: Vec<Figures>) -> Figures {
    runs.sort_by(|a, b| a.wall_ms.total_cmp(&b.wall_ms));
    runs.swap_remove(runs.len() / 2)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.conclave {
        Some(path) => path.clone(),
        None => workspace_bin("conclave")?,
    };
    println!(
        "conclave bench: {} tokens x {} ms per reply, binary {}",
        args.tokens,
        args.token_delay_ms,
        bin.display()
    );
    println!(
        "{:>6} {:>11} {:>9} {:>14} {:>7} {:>9} {:>10} {:>9} {:>9} {:>5}",
        "agents",
        "startup_ms",
        "wall_ms",
        "lower_bound_ms",
        "ratio",
        "cpu_ms",
        "peak_rss",
        "requests",
        "cancelled",
        "exit"
    );
    for &agents in &args.agents {
        let mut runs = Vec::new();
        for _ in 0..args.runs.max(1) {
            runs.push(run_once(&args, &bin, agents).await?);
        }
        let f = median(runs);
        println!(
            "{:>6} {:>11.1} {:>9.0} {:>10.0} ({:>1}) {:>7.3} {:>9.0} {:>7.1} MB {:>9} {:>9} {:>5}",
            f.agents,
            f.startup_ms,
            f.wall_ms,
            f.lower_bound_ms,
            f.chain,
            f.wall_ms / f.lower_bound_ms.max(1.0),
            f.cpu_ms,
            f.peak_rss_kb as f64 / 1024.0,
            f.requests,
            f.cancelled,
            f.exit_code
        );
    }
    Ok(())
}
