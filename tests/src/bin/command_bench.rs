//! `conclave-command-bench`: the overhead of one command tool call
//! (`mcp__command_line__execute_command` through `ToolBox::call`: argument check, filters,
//! spawn, capture, result JSON) in local mode (`/bin/sh -c true` as a child process) and in
//! docker mode (`docker exec` into the agent's long-lived container of
//! `conclave-runner:minimal`, built by `deploy/runner-image/build.sh` when missing). Prints
//! p50 / p99 / max per mode over `--calls` calls of `true`, after a warm-up, and the time to
//! start the docker-mode tool (container start included).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use conclave_agent::tools::ToolBox;
use conclave_protocol::ToolCall;
use conclave_protocol::tools::{
    AgentTools, CommandLineSpec, CommandMode, DEFAULT_COMMAND_MAX_OUTPUT_BYTES, WorkspaceLimits,
    WorkspaceSpec,
};

#[derive(Debug, Parser)]
#[command(
    name = "conclave-command-bench",
    about = "Command tool overhead, local and docker"
)]
struct Args {
    /// Measured calls per mode.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Local mode only (no Docker engine needed).
    #[arg(long)]
    local_only: bool,
}

fn tools(workspace: &std::path::Path, mode: CommandMode) -> AgentTools {
    AgentTools {
        workspace: Some(WorkspaceSpec {
            cwd: workspace.display().to_string(),
            configured: false,
            peers_dir: workspace.with_extension("peers").display().to_string(),
            context_paths: Vec::new(),
            limits: WorkspaceLimits::default(),
            allowed_tools: None,
            exclude_tools: Vec::new(),
        }),
        command_line: Some(CommandLineSpec {
            mode,
            allowed_commands: Vec::new(),
            blocked_commands: Vec::new(),
            timeout_seconds: 30,
            max_output_bytes: DEFAULT_COMMAND_MAX_OUTPUT_BYTES,
        }),
        ..AgentTools::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn measure(label: &str, toolbox: &ToolBox, calls: usize) -> anyhow::Result<()> {
    let call = ToolCall::new(
        "c",
        "mcp__command_line__execute_command",
        r#"{"command": "true"}"#,
    );
    for _ in 0..calls.div_ceil(10).max(3) {
        toolbox
            .call(&call, conclave_protocol::TurnMode::Coordinate)
            .await;
    }
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let record = toolbox
            .call(&call, conclave_protocol::TurnMode::Coordinate)
            .await;
        times.push(started.elapsed());
        if let Some(error) = record.error {
            bail!("{label}: a call failed: {error}");
        }
    }
    times.sort();
    println!(
        "{label:<7} calls {calls:>5}  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir().context("temporary workspace")?;
    let env = |_: &str| None;
    let local = ToolBox::start(
        "bench",
        "local",
        &tools(&dir.path().join("local"), CommandMode::Local),
        &env,
    )
    .await
    .context("local command tool")?;
    measure("local", &local, args.calls).await?;
    local.shutdown().await;
    if args.local_only {
        return Ok(());
    }
    if !conclave_tests::docker_ready() {
        bail!("no Docker engine; run with --local-only");
    }
    let mode = CommandMode::Docker {
        image: conclave_tests::RUNNER_IMAGE.to_owned(),
        network_mode: "none".to_owned(),
        memory_limit: None,
        cpu_limit: None,
    };
    let started = Instant::now();
    let docker = ToolBox::start(
        "bench",
        "docker",
        &tools(&dir.path().join("docker"), mode),
        &env,
    )
    .await
    .context("docker command tool")?;
    println!(
        "docker  tool start (container run) {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let outcome = measure("docker", &docker, args.calls).await;
    docker.shutdown().await;
    outcome
}
