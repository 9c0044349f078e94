//! `conclave-mcp-bench`: the overhead of one MCP tool call through conclave's tool layer
//! (`ToolBox::call`: argument check, rmcp client, transport, demo server, result handling),
//! over stdio (the demo server as a child process) and Streamable HTTP (the demo server
//! in-process on loopback). Prints p50 / p99 / max per transport over `--calls` calls of the
//! demo's `add` tool, after a warm-up.
//!
//! `--session` measures a whole session instead: the `conclave` binary (a child process, as a
//! user runs it) with 3 agents on the simulated provider (in this process), each model making
//! `--tool-calls` (10) calls of the demo's `lookup` per turn against its own
//! conclave-mcp-demo over stdio, against the same session without tools. It prints, as the
//! median of `--runs` runs each: wall time, provider requests, the sequential provider requests
//! of the critical path, the tool calls and their p50 / p99 / max duration as journaled (ms
//! resolution: the call's own cost is the µs figure of the default mode), and the session
//! overhead of the tools, in total and per extra provider round trip on the critical path.
//!
//! `--hold` is for the no-orphan test: it starts the demo server over stdio, prints
//! `server pid N` and waits to be killed.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use conclave_agent::tools::ToolBox;
use conclave_protocol::ToolCall;
use conclave_protocol::tools::{AgentTools, McpServerSpec, McpTransport, ToolLimits};
use conclave_tests::workspace_bin;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "conclave-mcp-bench",
    about = "MCP tool-call overhead, stdio and HTTP"
)]
struct Args {
    /// Measured calls per transport.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Start the stdio demo server, print its pid and wait (for the no-orphan test).
    #[arg(long)]
    hold: bool,
    /// Measure a 3-agent session with and without tools instead (see the module docs).
    #[arg(long)]
    session: bool,
    /// Tool calls per turn in `--session`.
    #[arg(long, default_value_t = 10)]
    tool_calls: u32,
    /// Sessions per variant in `--session` (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tokens per simulated reply in `--session`.
    #[arg(long, default_value_t = 20)]
    tokens: u32,
    /// Milliseconds between simulated tokens in `--session`.
    #[arg(long, default_value_t = 2)]
    token_delay_ms: u64,
}

fn spec(name: &str, transport: McpTransport) -> McpServerSpec {
    McpServerSpec {
        name: name.to_owned(),
        transport,
        allowed_tools: None,
        exclude_tools: Vec::new(),
        optional: false,
    }
}

async fn toolbox(server: McpServerSpec) -> anyhow::Result<ToolBox> {
    let tools = AgentTools {
        mcp_servers: vec![server],
        limits: ToolLimits::default(),
        ..AgentTools::default()
    };
    let env = |_: &str| None;
    Ok(ToolBox::start("bench-session", "bench", &tools, &env).await?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn measure(label: &str, toolbox: &ToolBox, tool: &str, calls: usize) -> anyhow::Result<()> {
    let call = |i: usize| ToolCall::new(format!("c{i}"), tool, format!("{{\"a\": {i}, \"b\": 1}}"));
    for i in 0..calls.min(100) {
        let record = toolbox
            .call(&call(i), conclave_protocol::TurnMode::Coordinate)
            .await;
        if let Some(error) = record.error {
            bail!("{label}: warm-up call failed: {error}");
        }
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let started = Instant::now();
        let record = toolbox
            .call(&call(i), conclave_protocol::TurnMode::Coordinate)
            .await;
        times.push(started.elapsed());
        if let Some(error) = record.error {
            bail!("{label}: call {i} failed: {error}");
        }
    }
    times.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{label:<16} calls {calls:>6}  p50 {:>8.0} µs  p99 {:>8.0} µs  max {:>8.0} µs",
        us(percentile(&times, 50.0)),
        us(percentile(&times, 99.0)),
        us(percentile(&times, 100.0)),
    );
    Ok(())
}

/// What one `--session` run measured.
#[derive(Debug, Clone)]
struct SessionFigures {
    wall_ms: f64,
    requests: usize,
    chain: usize,
    turns: usize,
    /// Journaled duration of each tool call.
    calls_ms: Vec<u64>,
}

/// One 3-agent session through the `conclave` binary; with `tools`, every agent has the demo
/// server over stdio and its model calls `lookup` `tool_calls` times per turn.
async fn run_session(
    args: &Args,
    conclave: &std::path::Path,
    demo: &std::path::Path,
    tools: bool,
) -> anyhow::Result<SessionFigures> {
    use conclave_sim::{SimConfig, SimServer};
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
    let mut yaml = String::from("agents:\n");
    for id in ["alpha", "beta", "gamma"] {
        let model = if tools {
            format!(
                "sim-{id}:policy=tools,tool=lookup,tool_calls={}",
                args.tool_calls
            )
        } else {
            format!("sim-{id}")
        };
        yaml.push_str(&format!(
            "  - id: {id}\n    backend:\n      type: sim\n      model: \"{model}\"\n      base_url: \"{}\"\n",
            sim.base_url()
        ));
        if tools {
            yaml.push_str(&format!(
                "      mcp_servers:\n        demo:\n          type: stdio\n          command: \"{}\"\n",
                demo.display()
            ));
        }
    }
    yaml.push_str("orchestrator:\n  restart_policy: finish\ntimeout_settings:\n  orchestrator_timeout_seconds: 300\n");
    let config = dir.path().join("bench.yaml");
    std::fs::write(&config, yaml)?;
    let sessions = dir.path().join("sessions");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(conclave)
        .arg("--config")
        .arg(&config)
        .args([
            "--display",
            "quiet",
            "--session-id",
            "bench",
            "--session-dir",
        ])
        .arg(&sessions)
        .arg("What is the capital of France?")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", conclave.display()))?;
    let status = tokio::time::timeout(Duration::from_secs(600), child.wait())
        .await
        .context("the session did not end within 600 s")??;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("the session failed ({status})");
    }
    let stats = sim.stats();
    let requests = sim.requests().len();
    sim.shutdown().await;
    let journal = conclave_tests::read_journal(&sessions.join("bench"))?;
    let calls_ms = conclave_tests::events_of(&journal, "turn_progress")
        .into_iter()
        .filter_map(|e| e["event"]["ToolCalled"]["report"]["duration_ms"].as_u64())
        .collect();
    Ok(SessionFigures {
        wall_ms,
        requests,
        chain: stats.critical_path_requests,
        turns: conclave_tests::events_of(&journal, "turn_started").len(),
        calls_ms,
    })
}

/// The run with the median wall time.
fn median_run(mut runs: Vec<SessionFigures>) -> SessionFigures {
    runs.sort_by(|a, b| a.wall_ms.total_cmp(&b.wall_ms));
    runs.swap_remove(runs.len() / 2)
}

async fn session_mode(args: &Args, demo: &std::path::Path) -> anyhow::Result<()> {
    let conclave = workspace_bin("conclave")?;
    println!(
        "conclave-mcp-bench --session: 3 agents, {} tool calls per turn (stdio demo server) \
         vs none; {} tokens x {} ms per reply; median of {} runs; binary {}",
        args.tool_calls,
        args.tokens,
        args.token_delay_ms,
        args.runs,
        conclave.display()
    );
    let mut variants = Vec::new();
    for tools in [false, true] {
        let mut runs = Vec::new();
        for _ in 0..args.runs.max(1) {
            runs.push(run_session(args, &conclave, demo, tools).await?);
        }
        let run = median_run(runs);
        let mut calls = run.calls_ms.clone();
        calls.sort_unstable();
        let ms = |p: f64| {
            let d: Vec<Duration> = calls.iter().map(|&c| Duration::from_millis(c)).collect();
            percentile(&d, p).as_millis()
        };
        println!(
            "{:<11} wall {:>8.0} ms  requests {:>4}  critical path {:>3} requests  turns {:>3}  \
             tool calls {:>4}  call p50 {} ms  p99 {} ms  max {} ms",
            if tools { "with tools" } else { "no tools" },
            run.wall_ms,
            run.requests,
            run.chain,
            run.turns,
            calls.len(),
            ms(50.0),
            ms(99.0),
            ms(100.0),
        );
        variants.push(run);
    }
    let (plain, tooled) = (&variants[0], &variants[1]);
    let overhead = tooled.wall_ms - plain.wall_ms;
    let extra_rounds = tooled.chain.saturating_sub(plain.chain);
    println!(
        "tools add {overhead:.0} ms to the session ({:+.0} %); {extra_rounds} more sequential \
         provider requests on the critical path: {} ms per tool round (model round trip + call)",
        100.0 * overhead / plain.wall_ms.max(1.0),
        if extra_rounds > 0 {
            format!("{:.1}", overhead / extra_rounds as f64)
        } else {
            "n/a".to_owned()
        }
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let demo = workspace_bin("conclave-mcp-demo")?;
    if args.session {
        return session_mode(&args, &demo).await;
    }
    let stdio = McpTransport::Stdio {
        command: demo.display().to_string(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: None,
    };
    if args.hold {
        let toolbox = toolbox(spec("demo", stdio)).await?;
        let record = toolbox
            .call(
                &ToolCall::new("p", "mcp__demo__pid", "{}"),
                conclave_protocol::TurnMode::Coordinate,
            )
            .await;
        if let Some(error) = record.error {
            bail!("pid call failed: {error}");
        }
        println!("server pid {}", record.content);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return Ok(());
    }

    println!(
        "conclave-mcp-bench: {} calls of the demo's `add` per transport",
        args.calls
    );
    let stdio_box = toolbox(spec("demo", stdio))
        .await
        .context("stdio demo server")?;
    measure("stdio", &stdio_box, "mcp__demo__add", args.calls).await?;
    stdio_box.shutdown().await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(conclave_mcp_demo::serve_http(listener, stop.clone()));
    let http_box = toolbox(spec(
        "web",
        McpTransport::StreamableHttp {
            url: format!("http://{addr}/mcp"),
            headers: Vec::new(),
        },
    ))
    .await
    .context("HTTP demo server")?;
    measure("streamable-http", &http_box, "mcp__web__add", args.calls).await?;
    http_box.shutdown().await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    Ok(())
}
