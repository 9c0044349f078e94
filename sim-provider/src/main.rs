//! `conclave-sim`: the simulated provider as a standalone process, for agents on other
//! machines or in containers, and for poking at with curl. It serves every wire format
//! (Chat Completions, Responses, Anthropic Messages, Gemini) under the one base URL it
//! prints; faults are chosen per request in the model string (`model:fault=429,...`).
//!
//! Prints exactly one line on stdout once the socket is bound, `listening on
//! http://ADDR/v1` (scripts and tests wait for it, and it doubles as the base URL); logs go
//! to stderr (`RUST_LOG` filters, default `info`). Ctrl-C or SIGTERM shuts down gracefully.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use conclave_sim::{MAX_DELAY_MS, MAX_TOKENS, SimConfig, SimServer};
use tracing_subscriber::EnvFilter;

/// A simulated streaming LLM provider (OpenAI Chat/Responses, Anthropic, Gemini) with a
/// deterministic policy and fault injection.
#[derive(Debug, Parser)]
#[command(name = "conclave-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7399")]
    listen: SocketAddr,
    /// Pieces per reply, unless the model string says `tokens=N`.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_TOKENS)))]
    tokens: u32,
    /// Milliseconds between pieces, unless the model string says `token_delay_ms=N`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    token_delay_ms: u64,
    /// Milliseconds before the first piece, unless the model string says `first_byte_ms=N`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    first_byte_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    // Handlers first: a supervisor may send SIGTERM as soon as it reads the listening line.
    let shutdown = ShutdownSignal::install()?;
    let config = SimConfig {
        tokens: args.tokens,
        token_delay: Duration::from_millis(args.token_delay_ms),
        first_byte_delay: Duration::from_millis(args.first_byte_ms),
    };
    let server = SimServer::start(config, args.listen)
        .await
        .with_context(|| format!("starting the simulated provider on {}", args.listen))?;
    // The one stdout line: the contract with whoever started us.
    println!("listening on {}", server.base_url());

    shutdown.recv().await;
    tracing::info!("shutdown requested");
    server.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM (what `docker stop`, systemd and `kill` send). Installed before the
/// server announces itself, so a signal sent right after the announcement is never missed
/// (the default action would kill the process without a graceful shutdown).
#[cfg(unix)]
struct ShutdownSignal {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl ShutdownSignal {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignal {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Ctrl-C (and Ctrl-Break) on Windows.
#[cfg(windows)]
struct ShutdownSignal(tokio::signal::windows::CtrlC);

#[cfg(windows)]
impl ShutdownSignal {
    fn install() -> anyhow::Result<Self> {
        Ok(ShutdownSignal(
            tokio::signal::windows::ctrl_c().context("installing the Ctrl-C handler")?,
        ))
    }

    async fn recv(mut self) {
        self.0.recv().await;
    }
}
