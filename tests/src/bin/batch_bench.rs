//! `conclave-batch-bench`: what `conclave batch` and the OpenAI-compatible endpoint cost,
//! against the simulated provider (inside this process), through the real binary.
//!
//! 1. **Batch**: N tasks × 3 agents, C at a time. Prints the wall time against the slot lower
//!    bound — C slots each hold one session at a time, so the batch cannot take less than
//!    `max(Σ session wall / C, longest session)`, with each session's wall read from its
//!    journal — and the batch process's peak RSS (VmHWM, polled from /proc).
//! 2. **Stop and resume**: the same batch stopped once half the results are in, then run
//!    again to the end, twice: with SIGTERM (the batch pauses once the provider calls in
//!    flight have finished) and with SIGKILL (a crash: the calls in flight are cut and must be
//!    sent again). Prints the provider requests of both runs against the uninterrupted run's.
//! 3. **Endpoint**: K streamed `/v1/chat/completions` one after the other; for each, the time
//!    from the session's `final` event (its live feed, `GET /sessions/{id}/events`, watched
//!    at the same time) to the completion stream's last byte. Prints p50 and max.
//!
//! `cargo build --release --workspace --bins && target/release/conclave-batch-bench`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use conclave_sim::SimServer;
use conclave_tests::{SimAgent, free_port, sim_config_yaml, start_sim, workspace_bin};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "conclave-batch-bench",
    about = "Measure conclave batch and the OpenAI endpoint"
)]
struct Args {
    /// Tasks in the batch.
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Sessions at once (`--concurrency`).
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Tokens per simulated reply.
    #[arg(long, default_value_t = 20)]
    tokens: u32,
    /// Milliseconds between simulated tokens.
    #[arg(long, default_value_t = 10)]
    token_delay_ms: u64,
    /// Streamed completions for the endpoint figure.
    #[arg(long, default_value_t = 50)]
    completions: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 900)]
    deadline_seconds: u64,
}

fn agents() -> [SimAgent<'static>; 3] {
    [
        SimAgent {
            id: "alpha",
            model: "sim-a",
        },
        SimAgent {
            id: "beta",
            model: "sim-b",
        },
        SimAgent {
            id: "gamma",
            model: "sim-c",
        },
    ]
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn result_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

struct BatchRun {
    wall: Duration,
    peak_rss_kb: u64,
    code: Option<i32>,
}

/// Runs `conclave batch` in `dir`; with `stop_at` (results, signal), sends the signal once
/// that many results are in and waits for the batch to exit.
fn run_batch(
    bin: &Path,
    dir: &Path,
    args: &Args,
    stop_at: Option<(usize, libc::c_int)>,
    deadline: Duration,
) -> anyhow::Result<BatchRun> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([
            "batch",
            "tasks.jsonl",
            "--config",
            "team.yaml",
            "--out",
            "results.jsonl",
        ])
        .args(["--concurrency", &args.concurrency.to_string()])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start conclave batch")?;
    let pid = child.id();
    let mut peak = 0;
    let out = dir.join("results.jsonl");
    let mut signalled = false;
    loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait()? {
            return Ok(BatchRun {
                wall: started.elapsed(),
                peak_rss_kb: peak,
                code: status.code(),
            });
        }
        if let Some((at, signal)) = stop_at
            && !signalled
            && result_lines(&out) >= at
        {
            let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
            // SAFETY: kill(2) on the child this function spawned and has not reaped yet.
            if unsafe { libc::kill(pid, signal) } != 0 {
                bail!("kill: {}", std::io::Error::last_os_error());
            }
            signalled = true;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the batch did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Σ and max of the sessions' wall times, from their journals' `session_ended`.
fn session_walls(sessions: &Path) -> anyhow::Result<(f64, f64, usize)> {
    let (mut sum, mut max, mut count) = (0.0f64, 0.0f64, 0);
    for entry in std::fs::read_dir(sessions)?.flatten() {
        let text = std::fs::read_to_string(entry.path().join("events.jsonl"))?;
        for line in text.lines() {
            let value: Value = serde_json::from_str(line)?;
            if value["type"] == "session_ended" {
                let wall = value["wall_ms"].as_f64().unwrap_or(0.0) / 1000.0;
                sum += wall;
                max = max.max(wall);
                count += 1;
            }
        }
    }
    Ok((sum, max, count))
}

fn prepare(dir: &Path, sim: &SimServer, tasks: usize) -> anyhow::Result<()> {
    let yaml = sim_config_yaml(
        &sim.base_url(),
        &agents(),
        "  restart_policy: finish\n",
        600,
    );
    std::fs::write(dir.join("team.yaml"), yaml)?;
    let text: String = (1..=tasks)
        .map(|i| format!("{{\"id\": \"t{i}\", \"question\": \"Question number {i}: what is {i} squared?\"}}\n"))
        .collect();
    std::fs::write(dir.join("tasks.jsonl"), text)?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = workspace_bin("conclave")?;
    let deadline = Duration::from_secs(args.deadline_seconds);
    let sim = start_sim(args.tokens, args.token_delay_ms).await?;

    // 1. The uninterrupted batch.
    let whole = tempfile::tempdir()?;
    prepare(whole.path(), &sim, args.tasks)?;
    let run = tokio::task::block_in_place(|| run_batch(&bin, whole.path(), &args, None, deadline))?;
    if run.code != Some(0) {
        bail!("the batch exited with {:?}", run.code);
    }
    let uninterrupted_requests = sim.requests().len();
    let uninterrupted_completed = sim.requests().iter().filter(|r| r.completed).count();
    let (sum, longest, sessions) = session_walls(&whole.path().join("results.batch/sessions"))?;
    let bound = (sum / f64::from(args.concurrency)).max(longest);
    let wall = run.wall.as_secs_f64();
    println!(
        "batch: {} tasks x 3 agents, {} at a time: wall {wall:.2} s, slot lower bound {bound:.2} s (sum of {sessions} session walls {sum:.1} s / {}, longest {longest:.2} s): {:.3}x",
        args.tasks,
        args.concurrency,
        args.concurrency,
        wall / bound
    );
    println!(
        "batch: peak RSS {:.1} MB; provider requests {uninterrupted_requests}",
        run.peak_rss_kb as f64 / 1024.0
    );

    // 2. Stopped half way, then resumed: paused (SIGTERM), then crashed (SIGKILL).
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "kill -9")] {
        sim.reset();
        let stopped = tempfile::tempdir()?;
        prepare(stopped.path(), &sim, args.tasks)?;
        let first = tokio::task::block_in_place(|| {
            run_batch(
                &bin,
                stopped.path(),
                &args,
                Some((args.tasks / 2, signal)),
                deadline,
            )
        })?;
        let at_stop = result_lines(&stopped.path().join("results.jsonl"));
        let first_requests = sim.requests().len();
        let cut = sim.requests().iter().filter(|r| !r.completed).count();
        let second =
            tokio::task::block_in_place(|| run_batch(&bin, stopped.path(), &args, None, deadline))?;
        if second.code != Some(0) {
            bail!("the resumed batch exited with {:?}", second.code);
        }
        let resumed_requests = sim.requests().len();
        let resumed_completed = sim.requests().iter().filter(|r| r.completed).count();
        let results = result_lines(&stopped.path().join("results.jsonl"));
        println!(
            "{name} at {at_stop} results (exit {:?} after {:.1} s, {first_requests} requests, {cut} cut), rerun {:.1} s: {results} results; provider requests {resumed_requests} vs {uninterrupted_requests} uninterrupted: {:+.2}%",
            first.code,
            first.wall.as_secs_f64(),
            second.wall.as_secs_f64(),
            (resumed_requests as f64 - uninterrupted_requests as f64) * 100.0
                / uninterrupted_requests as f64
        );
        // Requests cut by a kill never completed (the provider streamed part of a reply);
        // the completed ones are the replies paid for in full.
        println!(
            "{name} and resume: completed provider requests {resumed_completed} vs {uninterrupted_completed} uninterrupted: {:+.2}%",
            (resumed_completed as f64 - uninterrupted_completed as f64) * 100.0
                / uninterrupted_completed as f64
        );
    }

    // 3. The endpoint.
    let latencies = endpoint(&bin, &sim, args.completions).await?;
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let max = sorted.last().copied().unwrap_or(f64::NAN);
    println!(
        "endpoint: final answer -> client's last byte over {} streamed completions: p50 {p50:.2} ms, max {max:.2} ms",
        sorted.len()
    );
    sim.shutdown().await;
    Ok(())
}

/// Streams `count` completions and returns, for each, the milliseconds from the session's
/// `final` event to the completion stream's last byte.
async fn endpoint(bin: &Path, sim: &SimServer, count: usize) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let yaml = sim_config_yaml(&sim.base_url(), &agents(), "", 600);
    std::fs::write(dir.path().join("team.yaml"), yaml)?;
    let port = free_port()?;
    let mut server = Command::new(bin)
        .args(["server", "--http", &format!("127.0.0.1:{port}")])
        .args(["--config", "team.yaml", "--session-dir", "sessions"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("CONCLAVE_HTTP_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let up = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        if up.elapsed() > Duration::from_secs(15) {
            let _ = server.kill();
            bail!("the server did not come up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let body = serde_json::json!({
            "model": "conclave", "stream": true,
            "messages": [{"role": "user", "content": format!("Endpoint question {i}?")}],
        });
        let mut response = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await?;
        // The first chunk names the session; then watch its feed for `final`.
        let first = response.chunk().await?.context("empty stream")?;
        let text = String::from_utf8_lossy(&first);
        let session = text
            .split("chatcmpl-")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("no session id in the first chunk")?
            .to_owned();
        let mut feed = http
            .get(format!("{base}/sessions/{session}/events"))
            .send()
            .await?;
        let final_at = tokio::spawn(async move {
            let mut seen = String::new();
            while let Ok(Some(piece)) = feed.chunk().await {
                seen.push_str(&String::from_utf8_lossy(&piece));
                if seen.contains("\"type\":\"final\"") {
                    return Some(Instant::now());
                }
            }
            None
        });
        let mut last = Instant::now();
        while response.chunk().await?.is_some() {
            last = Instant::now();
        }
        if let Some(final_at) = final_at.await? {
            latencies.push(last.saturating_duration_since(final_at).as_secs_f64() * 1000.0);
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    Ok(latencies)
}
