//! `conclave-mcp-bench`: the overhead of one MCP tool call through conclave's tool layer
//! (`ToolBox::call`: argument check, rmcp client, transport, demo server, result handling),
//! over stdio (the demo server as a child process) and Streamable HTTP (the demo server
//! in-process on loopback). Prints p50 / p99 / max per transport over `--calls` calls of the
//! demo's `add` tool, after a warm-up.
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
    };
    let env = |_: &str| None;
    Ok(ToolBox::start("bench", &tools, &env).await?)
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
        let record = toolbox.call(&call(i)).await;
        if let Some(error) = record.error {
            bail!("{label}: warm-up call failed: {error}");
        }
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let started = Instant::now();
        let record = toolbox.call(&call(i)).await;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let demo = workspace_bin("conclave-mcp-demo")?;
    let stdio = McpTransport::Stdio {
        command: demo.display().to_string(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: None,
    };
    if args.hold {
        let toolbox = toolbox(spec("demo", stdio)).await?;
        let record = toolbox
            .call(&ToolCall::new("p", "mcp__demo__pid", "{}"))
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
