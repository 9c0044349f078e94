//! `conclave-mcp-demo`: the demo MCP server (see the library docs for its tools).
//!
//! stdio by default; `--http 127.0.0.1:0` serves Streamable HTTP and prints
//! `listening on http://ADDR/mcp` on stdout once bound (tests read the port from it).
//! `--fail-start TEXT` writes TEXT to stderr and exits 2 before speaking MCP: a server that
//! cannot start, for the start-up error tests. `--start-delay-ms N` waits N ms (at most
//! 60 000) before speaking MCP: a slow-starting server, for the start-up time tests.

use anyhow::Context;
use clap::Parser;
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "conclave-mcp-demo", about = "A tiny deterministic MCP server")]
struct Args {
    /// Serve MCP Streamable HTTP on this address (path /mcp) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Fail at start: write this text to stderr and exit with status 2.
    #[arg(long, value_name = "TEXT")]
    fail_start: Option<String>,
    /// Wait this many milliseconds before speaking MCP (a slow start).
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    start_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Logs go to stderr: stdout carries MCP in stdio mode.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Some(text) = args.fail_start {
        eprintln!("{text}");
        std::process::exit(2);
    }
    if args.start_delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(args.start_delay_ms)).await;
    }
    match args.http {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr().context("no local address")?;
            println!("listening on http://{local}/mcp");
            let stop = CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            conclave_mcp_demo::serve_http(listener, stop)
                .await
                .context("HTTP server failed")?;
        }
        None => {
            let service = conclave_mcp_demo::DemoServer::new()
                .serve(rmcp::transport::stdio())
                .await
                .context("MCP start-up over stdio failed")?;
            service.waiting().await.context("MCP service failed")?;
        }
    }
    Ok(())
}
