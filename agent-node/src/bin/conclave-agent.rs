//! `conclave-agent`: an agent node. It joins an orchestrator's cluster and runs the agents the
//! orchestrator places on it (`node: NAME` in a session config), calling providers with the
//! API keys of its own environment.
//!
//! ```text
//! conclave-agent --join orch.example:7420 --name gpu-1 --cookie-file cookie
//! CONCLAVE_COOKIE=... conclave-agent --join 127.0.0.1:7420 --name gpu-1
//! ```
//!
//! The agent specs come from the orchestrator, but the calls go out with this node's keys, so
//! the node's operator decides which providers they may reach: the hosted presets' default
//! URLs with their own keys, plus every `--allow-base-url PREFIX` and `--allow-key-env VAR`
//! (see `conclave_protocol::trust`). Anything else is refused before a provider is called.
//!
//! It keeps reconnecting (bounded exponential backoff) while it runs, and exits cleanly on
//! SIGTERM or Ctrl-C. Exit codes: 0 stopped by a signal, 1 usage or configuration error (bad
//! flags, no cookie, unreadable TLS files), 2 runtime failure (cannot listen, the node
//! stopped on its own).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use conclave_agent::cluster::NodeEnv;
use conclave_agent::cluster::host::{AgentHost, HostMsg, HostOptions};
use conclave_cluster::heartbeat::{Backoff, HeartbeatConfig};
use conclave_cluster::node::{NodeOptions, new_instance, unique_node_name};
use conclave_cluster::security::{COOKIE_ENV, Cookie, Tls, TlsFiles, server_name};
use conclave_protocol::trust::ProviderAllowList;
use conclave_telemetry as telemetry;

#[derive(Parser, Debug)]
#[command(
    name = "conclave-agent",
    version,
    about = "A conclave agent node: joins an orchestrator and runs the agents placed on it with this machine's API keys."
)]
struct Args {
    /// The orchestrator's cluster address, HOST:PORT (its `--listen`).
    #[arg(long, value_name = "HOST:PORT")]
    join: String,
    /// This node's name, as session configs place agents on it (`node: NAME`).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Where this node's own cluster listener binds (it dials out, so nothing needs to reach it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A file holding the cluster cookie (the shared secret). Without it, CONCLAVE_COOKIE is read.
    #[arg(long, value_name = "FILE")]
    cookie_file: Option<PathBuf>,
    /// This node's TLS certificate chain (PEM); with --tls-key and --tls-ca, turns on mutual TLS.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// This node's TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) every node's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name the orchestrator's certificate must carry (default: the host of --join).
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Milliseconds between heartbeats to the orchestrator.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    heartbeat_interval_ms: u64,
    /// The orchestrator is lost after this many milliseconds without a heartbeat.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(20..=600_000))]
    heartbeat_deadline_ms: u64,
    /// The longest wait between two reconnection attempts, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    reconnect_max_ms: u64,
    /// Let agents placed here call base URLs under this prefix (repeatable; e.g. a local vLLM
    /// at http://127.0.0.1:8000/v1). Without it, only the hosted presets' default URLs.
    #[arg(long, value_name = "PREFIX")]
    allow_base_url: Vec<String>,
    /// Let agents placed here read this key variable (repeatable); the presets' key variables
    /// are always allowed.
    #[arg(long, value_name = "VAR")]
    allow_key_env: Vec<String>,
    /// More logging on stderr (-v debug). RUST_LOG overrides.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn options(args: &Args) -> anyhow::Result<HostOptions> {
    anyhow::ensure!(
        valid_name(&args.name),
        "--name {:?}: use 1 to 64 letters, digits, '.', '_' or '-'",
        args.name
    );
    let (host, _port) = args
        .join
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .with_context(|| format!("--join {:?} is not HOST:PORT", args.join))?;
    let cookie = Cookie::load(args.cookie_file.as_deref(), std::env::var(COOKIE_ENV).ok())?;
    let files = TlsFiles::from_flags(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.tls_ca.clone(),
    )?;
    let tls = files.as_ref().map(Tls::load).transpose()?;
    let tls_server_name = match &tls {
        Some(_) => Some(server_name(
            args.tls_server_name.as_deref().unwrap_or(host),
        )?),
        None => None,
    };
    let heartbeat = HeartbeatConfig::new(
        Duration::from_millis(args.heartbeat_interval_ms),
        Duration::from_millis(args.heartbeat_deadline_ms),
    )
    .map_err(anyhow::Error::msg)?;
    let mut allow = ProviderAllowList::presets();
    for prefix in &args.allow_base_url {
        anyhow::ensure!(
            !prefix.trim().is_empty(),
            "--allow-base-url needs a URL prefix (e.g. http://127.0.0.1:8000/v1)"
        );
        allow.allow_base_url(prefix.clone());
    }
    for var in &args.allow_key_env {
        anyhow::ensure!(
            !var.is_empty() && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "--allow-key-env {var:?}: a variable name uses letters, digits and '_'"
        );
        allow.allow_key_env(var.clone());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let instance = new_instance();
    Ok(HostOptions {
        name: args.name.clone(),
        instance,
        join: args.join.clone(),
        node: NodeOptions {
            node_name: unique_node_name(&args.name, instance),
            listen: args.listen,
            cookie,
            tls,
        },
        tls_server_name,
        heartbeat,
        backoff: Backoff {
            max: Duration::from_millis(args.reconnect_max_ms),
            ..Backoff::default()
        },
        join_timeout: Duration::from_secs(10),
        env: Arc::new(NodeEnv::from_process_and_dotenv(&cwd)),
        allow,
        work_dir: cwd,
    })
}

async fn run(options: HostOptions) -> anyhow::Result<ExitCode> {
    let (host, handle) = ractor::Actor::spawn(None, AgentHost, options)
        .await
        .map_err(|e| anyhow::anyhow!("the agent node did not start: {e}"))?;
    let mut handle = handle;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = &mut handle => {
            eprintln!("error: the agent node stopped on its own (see the log above)");
            return Ok(ExitCode::from(2));
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    let _ = host.send_message(HostMsg::Shutdown);
    if tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .is_err()
    {
        tracing::warn!("the agent node did not stop within 5 s; exiting anyway");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let code = match error.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 1,
            };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    let default = match args.verbose {
        0 => "warn,conclave_agent=info,ractor_cluster=error",
        _ => "debug,hyper=info,reqwest=info,h2=info,ractor=info,ractor_cluster=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    // The stderr log, plus OTLP trace export when OTEL_EXPORTER_OTLP_ENDPOINT is set, under
    // the service name `conclave-agent-<name>` (unless OTEL_SERVICE_NAME says otherwise).
    // Inside the runtime: the exporter's gRPC channel lives on it.
    let telemetry = {
        let _runtime = runtime.enter();
        telemetry::init(
            &format!("conclave-agent-{}", args.name),
            filter,
            telemetry::LogStyle {
                target: true,
                ansi: Some(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            },
        )
    };
    let options = match options(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {}", conclave_protocol::error_text(&*error));
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        match run(options).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {}", conclave_protocol::error_text(&*error));
                ExitCode::from(2)
            }
        }
    });
    // Export the last spans while the runtime still runs (bounded by SHUTDOWN_TIMEOUT).
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}
