//! The `conclave` command line's argument groups, exit codes and failures: what the main
//! command and the subcommands that live in their own modules ([`crate::server`],
//! [`crate::batch`], [`crate::probe`]) share.
//!
//! This module names no subcommand module, so those modules depend on it without a loop back
//! through [`crate::cli`], which dispatches to them. The top-level parser ([`crate::cli::Cli`])
//! stays with the dispatch: it names every subcommand's arguments.
//!
//! Exit codes: 0 done, 1 usage or config error (including a missing API key, reported before
//! any provider call, on this machine or on the agent node an agent is placed on; a cost cap
//! with an unpriced model; a `resume` of a session another process is running, refused with
//! the holder's process id, host and start time — nothing ran, so trying again later is the
//! fix), 2 execution error (every agent failed, the coordinator crashed, the journal could not
//! be written or synced, agent nodes that never joined within `node_join_timeout_seconds`),
//! 3 timeout or budget cap reached, 130 interrupted.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use conclave_protocol::config::{DisplayKind, SessionConfig};

use crate::cluster::{Cluster, PlaceError};
use crate::config;
use crate::console;
use crate::session::{EnvFn, SessionError};

pub const EXIT_OK: u8 = 0;
pub const EXIT_USAGE: u8 = 1;
pub const EXIT_EXECUTION: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Args, Debug)]
pub struct SessionsArgs {
    /// Where session directories are.
    #[arg(long, value_name = "DIR", default_value = ".conclave/sessions")]
    pub session_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The session: its directory, or its id under --session-dir.
    pub session: String,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// How the orchestrator accepts agent nodes (`conclave-agent`).
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Accept agent nodes on this address (IP:PORT, e.g. 0.0.0.0:7420); needed by agents placed with `node:`.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// A file holding the cluster cookie (the shared secret). Without it, CONCLAVE_COOKIE is read.
    #[arg(long, value_name = "FILE")]
    pub cookie_file: Option<PathBuf>,
    /// This node's TLS certificate chain (PEM); with --tls-key and --tls-ca, turns on mutual TLS between nodes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This node's TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) every node's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Milliseconds between heartbeats to each agent node.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,
    /// An agent node is lost after this many milliseconds without a heartbeat.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(20..=600_000))]
    pub heartbeat_deadline_ms: u64,
}

impl ClusterArgs {
    /// The cluster options, or `None` without `--listen`. Reads the cookie and TLS files.
    pub fn options(&self, env: &EnvFn) -> anyhow::Result<Option<crate::cluster::ClusterOptions>> {
        use conclave_cluster::heartbeat::HeartbeatConfig;
        use conclave_cluster::security::{COOKIE_ENV, Cookie, Tls, TlsFiles};
        let Some(listen) = self.listen else {
            anyhow::ensure!(
                self.tls_cert.is_none() && self.tls_key.is_none() && self.tls_ca.is_none(),
                "--tls-cert/--tls-key/--tls-ca only make sense with --listen"
            );
            return Ok(None);
        };
        let cookie = Cookie::load(self.cookie_file.as_deref(), env(COOKIE_ENV))?;
        let files = TlsFiles::from_flags(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_ca.clone(),
        )?;
        let tls = files.as_ref().map(Tls::load).transpose()?;
        let heartbeat = HeartbeatConfig::new(
            Duration::from_millis(self.heartbeat_interval_ms),
            Duration::from_millis(self.heartbeat_deadline_ms),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Some(crate::cluster::ClusterOptions {
            listen,
            cookie,
            tls,
            heartbeat,
        }))
    }

    /// Starts the cluster when `--listen` is given.
    pub async fn start(&self, env: &EnvFn) -> Result<Option<Cluster>, Failure> {
        let Some(options) = self.options(env).map_err(usage)? else {
            return Ok(None);
        };
        let listen = options.listen;
        let cluster = Cluster::start(options)
            .await
            .with_context(|| format!("cannot listen for agent nodes on {listen}"))
            .map_err(execution)?;
        Ok(Some(cluster))
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The question. Without it, conclave reads it from stdin, or starts an interactive conversation on a terminal.
    pub question: Option<String>,
    /// A YAML config (MassGen format accepted).
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// Run a single agent with this model (e.g. gpt-4o-mini, claude-sonnet-4-5, grok-4).
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: Option<String>,
    /// The backend type or provider preset for --model (openai, groq, vllm, ollama, ...); implied by well-known model names.
    #[arg(long, value_name = "TYPE", requires = "model")]
    pub backend: Option<String>,
    /// Override the provider's base URL for --model (e.g. http://localhost:8000/v1).
    #[arg(long, value_name = "URL", requires = "model")]
    pub base_url: Option<String>,
    /// Run the full answer / vote / presentation path even with one agent (by default
    /// --model, and a one-agent config with `ui.use_orchestrator_for_single_agent: false`,
    /// answer in one streamed call).
    #[arg(long)]
    pub orchestrate: bool,
    /// Continue the last conversation under --session-dir (or the one --session-id names): the agents get its earlier questions and final answers.
    #[arg(long = "continue")]
    pub continue_conversation: bool,
    /// Watch the session on a web page: serves it on 127.0.0.1 (the address is printed) while the session runs; needs --config and the question.
    #[arg(long, conflicts_with = "continue_conversation")]
    pub web: bool,
    /// The port of --web's page (default: any free port).
    #[arg(long, value_name = "PORT", requires = "web", default_value_t = 0)]
    pub web_port: u16,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The question for the simulated agents.
    pub question: Option<String>,
    /// How many simulated agents.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub agents: u32,
    /// Tokens per simulated reply.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub tokens: u32,
    /// Milliseconds between simulated tokens.
    #[arg(long, default_value_t = 10)]
    pub token_delay_ms: u64,
    /// Give every agent the demo MCP server (conclave-mcp-demo, installed beside conclave): each turn calls its lookup tool, then answers with what it returned.
    #[arg(long)]
    pub tools: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `conclave probe`: see [`crate::probe`] for the output and exit codes.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The prompt, sent as one user message.
    pub prompt: String,
    /// The backend type or provider preset (openai, claude, gemini, vllm, sim, ...); implied by well-known model names.
    #[arg(long, value_name = "TYPE")]
    pub backend: Option<String>,
    /// The model to call.
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: String,
    /// Override the provider's base URL (e.g. http://localhost:8000/v1).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// A JSON file with the tools to offer: an array of {"name", "description", "parameters"}.
    #[arg(long, value_name = "FILE")]
    pub tools: Option<PathBuf>,
    /// Read the API key from this environment variable instead of the provider's default (the key is then required).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// More logging on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// How to show progress: a full-screen terminal UI (tui, the default when stdout is a terminal), each agent's stream as lines (plain), JSON lines (json), or only the final answer (quiet).
    #[arg(long, value_enum)]
    pub display: Option<DisplayArg>,
    /// Where session directories (journal, final answer) are written.
    #[arg(long, value_name = "DIR", default_value = ".conclave/sessions")]
    pub session_dir: PathBuf,
    /// Name the session instead of generating an id (letters, digits, '.', '_', '-').
    #[arg(long, value_name = "ID")]
    pub session_id: Option<String>,
    /// Override the orchestrator timeout, in seconds.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// End the session (best answer so far, exit 3) once its priced usage reaches this many US dollars.
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// End the session (best answer so far, exit 3) once its agents have used this many tokens.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens: Option<u64>,
    /// Prices that add to or override the built-in table: YAML/JSON mapping of model prefix to {input_per_million, output_per_million} (USD).
    #[arg(long, value_name = "FILE")]
    pub pricing: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DisplayArg {
    Tui,
    Plain,
    Json,
    Quiet,
}

impl From<DisplayArg> for DisplayKind {
    fn from(arg: DisplayArg) -> Self {
        match arg {
            DisplayArg::Tui => DisplayKind::Tui,
            DisplayArg::Plain => DisplayKind::Plain,
            DisplayArg::Json => DisplayKind::Json,
            DisplayArg::Quiet => DisplayKind::Quiet,
        }
    }
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

pub(crate) fn usage(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error,
    }
}

pub(crate) fn execution(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_EXECUTION,
        error,
    }
}

pub(crate) fn apply_common(
    config: &mut SessionConfig,
    common: &CommonArgs,
    env: &EnvFn,
) -> Result<(), Failure> {
    if let Some(display) = common.display {
        config.display = display.into();
    } else if config.display == DisplayKind::Plain && std::io::stdout().is_terminal() {
        // The line display is what a config gets by default; a person at a terminal gets
        // the full-screen UI (`--display plain` keeps the lines).
        config.display = DisplayKind::Tui;
    }
    if let Some(timeout) = common.timeout {
        config.timeouts.orchestrator_timeout_seconds = timeout;
    }
    if let Some(usd) = common.max_cost {
        if !(usd > 0.0 && usd.is_finite()) {
            return Err(usage(anyhow::anyhow!(
                "--max-cost must be a positive number of US dollars, got {usd}"
            )));
        }
        config.orchestrator.max_cost_usd = Some(usd);
    }
    if let Some(tokens) = common.max_tokens {
        config.orchestrator.max_total_tokens = Some(tokens);
    }
    if let Some(path) = &common.pricing {
        let (prices, warnings) =
            config::load_pricing_file(path, &|key| env(key)).map_err(|e| usage(e.into()))?;
        for warning in &warnings {
            console::warning!("{warning}");
        }
        // Later entries win ties, so the file overrides the config's own `pricing:`.
        config.orchestrator.pricing.extend(prices);
    }
    crate::pricing::check_budget(config).map_err(|e| usage(e.into()))?;
    Ok(())
}

/// Agents placed on nodes need `--listen`: said before anything starts.
pub(crate) fn check_placement(
    config: &SessionConfig,
    cluster: &ClusterArgs,
) -> Result<(), Failure> {
    if cluster.listen.is_none()
        && let Some(agent) = config.agents.iter().find(|a| a.node.is_some())
    {
        return Err(usage(
            SessionError::NoCluster {
                agent: agent.id.clone(),
                node: agent.node.clone().unwrap_or_default(),
            }
            .into(),
        ));
    }
    Ok(())
}

/// The exit code of a session that could not run (see the module docs).
pub(crate) fn session_failure(error: SessionError) -> Failure {
    match error {
        error @ (SessionError::Backend { .. }
        | SessionError::NoCluster { .. }
        | SessionError::Placement(PlaceError::Agent { .. })
        | SessionError::Consensus(_)
        | SessionError::Budget(_)
        | SessionError::JournalMoved(_)
        | SessionError::Journal(
            crate::journal::JournalError::Locked { .. } | crate::journal::JournalError::Exists(_),
        )) => usage(error.into()),
        error => execution(error.into()),
    }
}
