//! `conclave-restart-bench`: what each restart policy (`cancel`, `finish`, `inject`) costs and
//! gives, on sessions where agents of different speeds use a real MCP server.
//!
//! Each run is one session of the real `conclave` binary: three agents on the simulated
//! provider's `tools` policy, each with the demo MCP server over stdio, calling its tool
//! `--tool-calls` times per turn before deciding. Their reply speeds differ and are jittered per
//! run (a deterministic pseudo-random sequence, the same for every policy), so the fastest
//! agent answers while the others are still working: exactly when the policies differ.
//!
//! Per policy it prints, over `--runs` sessions:
//! - **answers**: the answers accepted (the ones that reach the vote), mean per session;
//! - **tokens**: every provider token billed (input + output, from the journal's usage events
//!   plus the requests cut off mid-stream, read from the simulator's log);
//! - **thrown away**: tokens of turns whose work was discarded: cancelled turns, turns whose
//!   decision was discarded as stale, and requests cut off mid-stream;
//! - **wall**: the session's wall time (median and max), and the provider requests.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use conclave_sim::{SimConfig, SimServer};
use conclave_tests::{events_of, read_journal, run_with_deadline, workspace_bin};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "conclave-restart-bench",
    about = "Restart policies compared: answers, thrown-away tokens, wall time"
)]
struct Args {
    /// Sessions per policy.
    #[arg(long, default_value_t = 8)]
    runs: u32,
    /// Tool calls per turn of every agent.
    #[arg(long, default_value_t = 3)]
    tool_calls: u32,
    /// Pieces per reply.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// The policies to compare.
    #[arg(long, value_delimiter = ',', default_value = "cancel,finish,inject")]
    policies: Vec<String>,
}

/// One session's figures.
#[derive(Debug, Default, Clone)]
struct Figures {
    wall: Duration,
    answers: u64,
    requests: u64,
    tokens: u64,
    wasted: u64,
}

/// Reply delays (ms per piece) of the three agents in run `run`: a fast, a middle and a slow
/// agent, each jittered by up to ±40 % with a fixed-seed generator.
fn delays(run: u32) -> [u64; 3] {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(run).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let base = [2u64, 6, 10];
    let mut out = [0; 3];
    for (slot, base) in out.iter_mut().zip(base) {
        let jitter = (next() % 81) as i64 - 40; // -40..=40 %
        *slot = ((base as i64 * (100 + jitter)) / 100).max(1) as u64;
    }
    // Rotate which agent is the fast one, so config order does not decide the race.
    out.rotate_left((run % 3) as usize);
    out
}

fn config(dir: &Path, base_url: &str, policy: &str, run: u32, args: &Args) -> anyhow::Result<()> {
    let demo = workspace_bin("conclave-mcp-demo")?;
    let mut yaml = String::from("agents:\n");
    for (i, delay) in delays(run).iter().enumerate() {
        let id = ["alpha", "beta", "gamma"][i];
        yaml.push_str(&format!(
            "  - id: {id}\n    backend:\n      type: sim\n      model: \"sim-{id}:policy=tools,tool_calls={},tokens={},token_delay_ms={delay}\"\n      base_url: \"{base_url}\"\n      mcp_servers:\n        - name: demo\n          type: stdio\n          command: \"{}\"\n",
            args.tool_calls,
            args.tokens,
            demo.display()
        ));
    }
    yaml.push_str(&format!(
        "orchestrator:\n  restart_policy: {policy}\n  max_new_answers_per_agent: 2\ntimeout_settings:\n  orchestrator_timeout_seconds: 120\n"
    ));
    std::fs::write(dir.join("team.yaml"), yaml).context("write the config")
}

fn tokens_of(event: &Value) -> u64 {
    event["input_tokens"].as_u64().unwrap_or(0) + event["output_tokens"].as_u64().unwrap_or(0)
}

async fn session(policy: &str, run: u32, args: &Args) -> anyhow::Result<Figures> {
    let sim = SimServer::start(
        SimConfig::default(),
        "127.0.0.1:0".parse().context("loopback")?,
    )
    .await
    .context("start the simulated provider")?;
    let dir = tempfile::tempdir().context("tempdir")?;
    config(dir.path(), &sim.base_url(), policy, run, args)?;
    let bin = workspace_bin("conclave")?;
    let cwd = dir.path().to_owned();
    let finished = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command
            .args([
                "--config",
                "team.yaml",
                "--display",
                "quiet",
                "--session-dir",
                "sessions",
                "--session-id",
                "s",
                "capital of france",
            ])
            .current_dir(cwd)
            .env_remove("RUST_LOG");
        run_with_deadline(&mut command, Duration::from_secs(180))
    })
    .await
    .context("runner thread")??;
    if finished.code != Some(0) {
        bail!(
            "policy {policy}, run {run}: conclave exited with {:?}\n{}",
            finished.code,
            finished.stderr
        );
    }
    let journal = read_journal(&dir.path().join("sessions/s"))?;
    let requests = sim.requests();
    sim.shutdown().await;

    // Turns whose work was thrown away: cancelled, or their decision discarded as stale.
    let mut discarded: BTreeSet<(String, u64)> = events_of(&journal, "turn_cancelled")
        .iter()
        .filter_map(|e| Some((e["agent"].as_str()?.to_owned(), e["turn"].as_u64()?)))
        .collect();
    discarded.extend(
        events_of(&journal, "turn_restarted")
            .iter()
            .filter(|e| {
                let reason = e["reason"].as_str().unwrap_or_default();
                reason.contains("stale") || reason.contains("discarded")
            })
            .filter_map(|e| Some((e["agent"].as_str()?.to_owned(), e["old_turn"].as_u64()?))),
    );
    let usage = events_of(&journal, "usage");
    let journaled: u64 = usage.iter().map(|e| tokens_of(e)).sum();
    let wasted_turns: u64 = usage
        .iter()
        .filter(|e| {
            let key = (
                e["agent"].as_str().unwrap_or_default().to_owned(),
                e["turn"].as_u64().unwrap_or(0),
            );
            discarded.contains(&key)
        })
        .map(|e| tokens_of(e))
        .sum();
    // Requests cut off mid-stream never reported usage; the simulator knows what they cost.
    let cut: u64 = requests
        .iter()
        .filter(|r| !r.completed)
        .map(|r| r.prompt_tokens + r.output_tokens)
        .sum();
    Ok(Figures {
        wall: finished.elapsed,
        answers: events_of(&journal, "answer_accepted").len() as u64,
        requests: requests.len() as u64,
        tokens: journaled + cut,
        wasted: wasted_turns + cut,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for policy in &args.policies {
        if !["cancel", "finish", "inject"].contains(&policy.as_str()) {
            bail!("unknown policy `{policy}`: use cancel, finish or inject");
        }
    }
    println!(
        "restart policies: {} runs each, 3 agents (fast/middle/slow, jittered), {} tool calls per turn over stdio MCP, {} pieces per reply",
        args.runs, args.tool_calls, args.tokens
    );
    println!(
        "{:<8} {:>8} {:>9} {:>10} {:>12} {:>10} {:>10}",
        "policy", "answers", "requests", "tokens", "thrown away", "wall p50", "wall max"
    );
    for policy in &args.policies {
        let mut runs = Vec::new();
        for run in 0..args.runs {
            runs.push(session(policy, run, &args).await?);
        }
        let n = runs.len().max(1) as f64;
        let sum = |f: fn(&Figures) -> u64| runs.iter().map(f).sum::<u64>();
        let mut walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
        walls.sort_unstable();
        let tokens = sum(|r| r.tokens);
        let wasted = sum(|r| r.wasted);
        println!(
            "{:<8} {:>8.2} {:>9.1} {:>10.0} {:>6.0} ({:>3.0}%) {:>8.0}ms {:>8.0}ms",
            policy,
            sum(|r| r.answers) as f64 / n,
            sum(|r| r.requests) as f64 / n,
            tokens as f64 / n,
            wasted as f64 / n,
            100.0 * wasted as f64 / tokens.max(1) as f64,
            walls[walls.len() / 2].as_secs_f64() * 1e3,
            walls.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
