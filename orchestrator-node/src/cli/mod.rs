//! The `conclave` command line. Parsing is clap's; everything else is a call into the library.
//!
//! Exit codes: 0 done, 1 usage or config error (including a missing API key, reported before
//! any provider call, on this machine or on the agent node an agent is placed on; a cost cap
//! with an unpriced model; a `resume` of a session another process is running, refused with
//! the holder's process id, host and start time — nothing ran, so trying again later is the
//! fix), 2 execution error (every agent failed, the coordinator crashed, the journal could not
//! be written or synced, agent nodes that never joined within `node_join_timeout_seconds`),
//! 3 timeout or budget cap reached, 130 interrupted.
//!
//! One agent (`--model`, or a one-agent config with `ui.use_orchestrator_for_single_agent:
//! false`) answers in one streamed provider call, journaled like any session (start, the
//! turn, usage, the final answer, end; `resume` re-runs a call cut by a crash); `--orchestrate`
//! asks for the full answer / vote / presentation path instead.
//!
//! Cluster flags (`--listen`, `--cookie-file`, `--tls-*`, heartbeat timing) are shared by the
//! main command, `resume` and `server`; see [`crate::cluster`] and [`crate::server`].

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use conclave_protocol::config::{DisplayKind, SessionConfig};
use conclave_protocol::{SessionId, TaskSpec};
use conclave_sim::{SimConfig, SimServer};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, PlaceError};
use crate::config::{self, EnvLookup};
use crate::outcome::SessionOutcome;
use crate::demo;
use crate::display::Display;
use crate::session::{EnvFn, SessionError, SessionPlan, new_session_id, run_session, session_dir};
use crate::tui::state::SessionHeader;

pub const EXIT_OK: u8 = 0;
pub const EXIT_USAGE: u8 = 1;
pub const EXIT_EXECUTION: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "conclave",
    version,
    about = "Several LLM agents work on one task, read each other's answers anonymously, and vote until they agree.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run three simulated agents against a built-in OpenAI-compatible provider on loopback (no API keys needed).
    Demo(DemoArgs),
    /// Make one streaming call to one backend and print what conclave makes of it, one JSON event per line (no session, no retries).
    Probe(ProbeArgs),
    /// Finish a session whose orchestrator died, from its journal: decided turns are never sent again, turns in flight at the crash are re-run.
    Resume(ResumeArgs),
    /// Keep a cluster listener up for agent nodes and run the sessions submitted on stdin, one per line (a question, or JSON {"question", "config", "session_id"}).
    Server(crate::server::ServerArgs),
    /// Run many questions (JSON lines or CSV), each its own session, N at a time; crash-safe: running it again resumes.
    Batch(crate::batch::BatchArgs),
    /// List the conversations under --session-dir: id, date, turns, winner, tokens, cost, first question.
    Sessions(SessionsArgs),
}

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

/// Entry point of the `conclave` binary.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = match error.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    EXIT_OK
                }
                _ => EXIT_USAGE,
            };
            let _ = error.print();
            return std::process::ExitCode::from(code);
        }
    };
    let verbose = match &cli.command {
        Some(Command::Demo(demo)) => demo.common.verbose,
        Some(Command::Probe(probe)) => probe.verbose,
        Some(Command::Resume(resume)) => resume.common.verbose,
        Some(Command::Server(server)) => server.common.verbose,
        Some(Command::Batch(batch)) => batch.verbose,
        Some(Command::Sessions(_)) => 0,
        None => cli.run.common.verbose,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::from(EXIT_EXECUTION);
        }
    };
    // Inside the runtime: the OTLP exporter's gRPC channel lives on it.
    let telemetry = {
        let _runtime = runtime.enter();
        init_tracing(verbose)
    };
    let code = runtime.block_on(async {
        match run(cli).await {
            Ok(code) => code,
            Err(failure) => {
                eprintln!("error: {}", conclave_protocol::error_text(&*failure.error));
                failure.code
            }
        }
    });
    // Export the last spans while the runtime still runs (bounded by SHUTDOWN_TIMEOUT).
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    // Do not wait for stray blocking tasks (a stdin reader) on the way out.
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::ExitCode::from(code)
}

/// The stderr log (`-v`, `RUST_LOG`), plus OTLP trace export when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set (see [`crate::telemetry`]). Keep the returned guard until exit: it flushes the spans.
fn init_tracing(verbose: u8) -> Option<crate::telemetry::TelemetryGuard> {
    use tracing_subscriber::EnvFilter;
    // ractor_cluster logs every closed connection at `warn`; conclave's cluster layer logs
    // what matters (refusals, losses, joins) itself.
    let default = match verbose {
        0 => "warn,ractor_cluster=error",
        1 => "info,conclave=info,ractor_cluster=warn",
        _ => "debug,hyper=info,reqwest=info,h2=info,tonic=info,tower=info,ractor=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    crate::telemetry::init(filter)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let cwd = std::env::current_dir()
        .context("cannot read the current directory")
        .map_err(usage)?;
    let env = EnvLookup::from_process_and_dotenv(&cwd).map_err(|e| usage(e.into()))?;
    let env: EnvFn = {
        let env = Arc::new(env);
        Arc::new(move |key: &str| env.get(key))
    };
    match cli.command {
        Some(Command::Demo(args)) => run_demo(args, env).await,
        Some(Command::Probe(args)) => Ok(crate::probe::main(&args, &|key| env(key)).await),
        Some(Command::Resume(args)) => run_resume(args, env).await,
        Some(Command::Server(args)) => crate::server::run(args, env).await,
        Some(Command::Batch(args)) => crate::batch::run(args, env).await,
        Some(Command::Sessions(args)) => list_conversations(&args),
        None => run_configured(cli.run, env).await,
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
            eprintln!("warning: {warning}");
        }
        // Later entries win ties, so the file overrides the config's own `pricing:`.
        config.orchestrator.pricing.extend(prices);
    }
    crate::pricing::check_budget(config).map_err(|e| usage(e.into()))?;
    Ok(())
}

async fn run_configured(args: RunArgs, env: EnvFn) -> Result<u8, Failure> {
    if args.web {
        return crate::server::run_web(
            args.config,
            args.question,
            args.web_port,
            args.common,
            args.cluster,
            env,
        )
        .await;
    }
    let mut config = if let Some(path) = &args.config {
        let loaded = config::load_file(path, &|key| env(key)).map_err(|e| usage(e.into()))?;
        for warning in &loaded.warnings {
            eprintln!("warning: {warning}");
        }
        loaded.config
    } else if let Some(model) = &args.model {
        config::single_agent(
            model,
            args.backend.as_deref(),
            args.base_url.as_deref(),
            &|key| env(key),
        )
        .map_err(|e| usage(e.into()))?
    } else {
        return Err(usage(anyhow::anyhow!(
            "nothing to run: give --config FILE (several agents) or --model MODEL (one agent); try `conclave demo` to see it work without API keys"
        )));
    };
    if args.model.is_some() {
        // The quick check: one streamed call unless asked for the whole consensus path.
        config.orchestrator.single_call = !args.orchestrate;
    } else if args.orchestrate {
        config.orchestrator.single_call = false;
    }
    apply_common(&mut config, &args.common, &env)?;
    check_placement(&config, &args.cluster)?;
    let missing = config::missing_api_keys(&config, &|key| env(key));
    if let Some((agent, var)) = missing.first() {
        let others = if missing.len() > 1 {
            format!(" (and {} more agents)", missing.len() - 1)
        } else {
            String::new()
        };
        return Err(usage(anyhow::anyhow!(
            "agent `{agent}` needs an API key: set the environment variable {var} (in the shell or in a .env file){others}"
        )));
    }
    let mut thread = if args.continue_conversation {
        let root = &args.common.session_dir;
        let loaded = match &args.common.session_id {
            Some(id) => crate::conversation::load(root, id),
            None => crate::conversation::latest(root),
        }
        .map_err(|e| usage(e.into()))?;
        if loaded.torn_lines_skipped > 0 {
            eprintln!(
                "warning: conversation {}: a torn last line (a crash while writing) was skipped",
                loaded.id
            );
        }
        eprintln!(
            "continuing conversation {} ({} earlier turn(s))",
            loaded.id,
            loaded.turns.len()
        );
        Thread::from(loaded)
    } else {
        Thread::default()
    };
    let cluster = args.cluster.start(&env).await?;
    let result = run_questions(
        &config,
        &args.common,
        args.question,
        &mut thread,
        env,
        cluster.as_ref(),
    )
    .await;
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    result
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

/// The conversation a run adds its turns to (see [`crate::conversation`]).
#[derive(Default)]
pub(crate) struct Thread {
    /// The conversation's id: its first session's; `None` before the first turn.
    id: Option<String>,
    history: Vec<(String, String)>,
    turns: usize,
}

impl From<crate::conversation::Conversation> for Thread {
    fn from(conversation: crate::conversation::Conversation) -> Self {
        Thread {
            history: conversation.history(),
            turns: conversation.turns.len(),
            id: Some(conversation.id),
        }
    }
}

impl Thread {
    /// The session id of the next turn: `--session-id` (or a new id) for the first, then
    /// `<conversation>-N` for turn N.
    fn next_session(&self, common: &CommonArgs) -> Result<SessionId, Failure> {
        let id = match (&self.id, &common.session_id) {
            (Some(id), _) => format!("{id}-{}", self.turns + 1),
            (None, Some(id)) => id.clone(),
            (None, None) => return Ok(new_session_id()),
        };
        SessionId::parse(&id).map_err(|e| usage(anyhow::anyhow!("--session-id: {e}")))
    }

    /// Records a finished turn: on disk (appended, synced), then in memory.
    fn record(
        &mut self,
        root: &std::path::Path,
        question: String,
        outcome: &SessionOutcome,
    ) -> Result<(), Failure> {
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| outcome.session.to_string());
        let turn = crate::conversation::Turn {
            question: question.clone(),
            session: outcome.session.to_string(),
            final_answer: outcome.final_answer.clone(),
            winner: outcome.winner.clone(),
            label: outcome.label.clone(),
            reason: outcome.reason.as_str().to_owned(),
            input_tokens: outcome.usage.input_tokens,
            output_tokens: outcome.usage.output_tokens,
            cost_usd: outcome.cost_usd,
            unix_ms: crate::conversation::now_ms(),
        };
        crate::conversation::append(root, &id, &turn).map_err(|e| execution(e.into()))?;
        if let Some(answer) = &outcome.final_answer {
            self.history.push((question, answer.clone()));
        }
        self.turns += 1;
        self.id = Some(id);
        Ok(())
    }
}

/// `conclave sessions`.
fn list_conversations(args: &SessionsArgs) -> Result<u8, Failure> {
    let conversations =
        crate::conversation::list(&args.session_dir).map_err(|e| usage(e.into()))?;
    if conversations.is_empty() {
        eprintln!(
            "no conversations in {} yet (ask a question first)",
            args.session_dir.display()
        );
        return Ok(EXIT_OK);
    }
    print!("{}", crate::conversation::table(&conversations));
    Ok(EXIT_OK)
}

async fn run_questions(
    config: &SessionConfig,
    common: &CommonArgs,
    question: Option<String>,
    thread: &mut Thread,
    env: EnvFn,
    cluster: Option<&Cluster>,
) -> Result<u8, Failure> {
    match question {
        Some(question) => run_one(config, common, question, thread, env, cluster)
            .await
            .map(|(code, _)| code),
        None if std::io::stdin().is_terminal() => {
            interactive(config, common, thread, env, cluster).await
        }
        None => {
            let mut question = String::new();
            std::io::stdin()
                .read_to_string(&mut question)
                .context("cannot read the question from stdin")
                .map_err(usage)?;
            if question.trim().is_empty() {
                return Err(usage(anyhow::anyhow!(
                    "no question: pass it as an argument or on stdin"
                )));
            }
            run_one(
                config,
                common,
                question.trim().to_owned(),
                thread,
                env,
                cluster,
            )
            .await
            .map(|(code, _)| code)
        }
    }
}

/// Runs one session (one turn of `thread`), records the turn and prints its summary on stderr.
async fn run_one(
    config: &SessionConfig,
    common: &CommonArgs,
    question: String,
    thread: &mut Thread,
    env: EnvFn,
    cluster: Option<&Cluster>,
) -> Result<(u8, Option<SessionOutcome>), Failure> {
    let session = thread.next_session(common)?;
    let dir = session_dir(&common.session_dir, &session);
    if dir.join(crate::journal::EVENTS_FILE).exists() {
        return Err(usage(anyhow::anyhow!(
            "session `{session}` already exists in {}; choose another --session-id",
            common.session_dir.display()
        )));
    }
    let plan = SessionPlan {
        session: session.clone(),
        dir: dir.clone(),
        config: config.clone(),
        task: TaskSpec {
            question: question.clone(),
            history: thread.history.clone(),
        },
        env,
        http: None,
        cluster: cluster.cloned(),
    };
    let interrupt = CancellationToken::new();
    let watcher = tokio::spawn(watch_ctrl_c(interrupt.clone()));
    let header = SessionHeader::new(config, &plan.task.question);
    let (display, display_guard) = Display::for_session(config.display, header, interrupt.clone());
    let result = run_session(plan, display, interrupt).await;
    watcher.abort();
    display_guard.finish();
    match result {
        Ok(outcome) => {
            print_summary(&outcome, &dir);
            thread.record(&common.session_dir, question, &outcome)?;
            Ok((outcome.exit_code() as u8, Some(outcome)))
        }
        Err(error) => Err(session_failure(error)),
    }
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

/// First Ctrl-C: end the session gracefully. Second: leave at once.
pub(crate) async fn watch_ctrl_c(interrupt: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!(
        "\ninterrupted: ending the session with the best answer so far (Ctrl-C again to quit at once)"
    );
    interrupt.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(EXIT_INTERRUPTED as i32);
    }
}

pub(crate) fn print_summary(outcome: &SessionOutcome, dir: &std::path::Path) {
    let winner = match (&outcome.label, &outcome.winner) {
        (Some(label), Some(winner)) => format!("{label} by {winner}"),
        _ => "none".to_owned(),
    };
    let cost = match (outcome.cost_usd, outcome.unpriced.is_empty()) {
        (Some(usd), true) => format!(" · ${usd:.4}"),
        (Some(usd), false) => format!(" · ${usd:.4} + unpriced ({})", outcome.unpriced.join(", ")),
        (None, _) => String::new(),
    };
    eprintln!(
        "session {}: {} · winner {} · {} answer(s), {} turn(s) · {} input + {} output tokens{cost} · {:.1} s · {}",
        outcome.session,
        outcome.reason.as_str(),
        winner,
        outcome.answers,
        outcome.turns,
        outcome.usage.input_tokens,
        outcome.usage.output_tokens,
        outcome.wall.as_secs_f64(),
        dir.display()
    );
}

async fn interactive(
    config: &SessionConfig,
    common: &CommonArgs,
    thread: &mut Thread,
    env: EnvFn,
    cluster: Option<&Cluster>,
) -> Result<u8, Failure> {
    eprintln!(
        "conclave: {} agent(s). Ask a question; an empty line or Ctrl-D quits.",
        config.agents.len()
    );
    let mut last = EXIT_OK;
    loop {
        eprint!("\n> ");
        let _ = std::io::stderr().flush();
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map(|n| (n, line))
        })
        .await
        .context("stdin reader failed")
        .map_err(execution)?
        .context("cannot read stdin")
        .map_err(execution)?;
        let (read, line) = line;
        let question = line.trim().to_owned();
        if read == 0 || question.is_empty() || question == "exit" || question == "quit" {
            return Ok(last);
        }
        let (code, _) = run_one(config, common, question, thread, env.clone(), cluster).await?;
        last = code;
        if code == EXIT_INTERRUPTED {
            return Ok(code);
        }
    }
}

async fn run_demo(args: DemoArgs, env: EnvFn) -> Result<u8, Failure> {
    let mcp_server = if args.tools {
        let found = demo::demo_mcp_server().ok_or_else(|| {
            usage(anyhow::anyhow!(
                "`conclave demo --tools` needs the demo MCP server `{}` in the same directory as \
                 conclave ({}); build it with `cargo build -p conclave-mcp-demo` (same profile) \
                 or install it beside conclave",
                demo::DEMO_MCP_BIN,
                std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(|dir| dir.display().to_string()))
                    .unwrap_or_else(|| "unknown".to_owned())
            ))
        })?;
        Some(found)
    } else {
        None
    };
    let sim = SimServer::start(
        SimConfig {
            tokens: args.tokens,
            token_delay: Duration::from_millis(args.token_delay_ms),
            ..SimConfig::default()
        },
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .context("cannot start the simulated provider on loopback")
    .map_err(execution)?;
    let display = args
        .common
        .display
        .map(DisplayKind::from)
        .unwrap_or_default();
    let mut config = demo::demo_config(&sim.base_url(), args.agents, display);
    if let Some(server) = &mcp_server {
        config = demo::with_demo_tools(config, server);
    }
    apply_common(&mut config, &args.common, &env)?;
    if config.display != DisplayKind::Json {
        eprintln!(
            "demo: {} simulated agents against {} (real HTTP + SSE on loopback)",
            args.agents,
            sim.base_url()
        );
        if let Some(server) = &mcp_server {
            eprintln!(
                "demo: every agent calls the MCP server {} (stdio) before it answers",
                server.display()
            );
        }
    }
    let question = args
        .question
        .unwrap_or_else(|| demo::DEFAULT_QUESTION.to_owned());
    let mut thread = Thread::default();
    let result = run_one(&config, &args.common, question, &mut thread, env, None).await;
    sim.shutdown().await;
    result.map(|(code, _)| code)
}

async fn run_resume(args: ResumeArgs, env: EnvFn) -> Result<u8, Failure> {
    let dir = crate::resume::locate(&args.session, &args.common.session_dir)
        .map_err(|e| usage(e.into()))?;
    // The journal's lock first: a session another process runs is refused, naming it.
    let mut plan = crate::resume::claim(&dir).map_err(|e| usage(e.into()))?;
    apply_common(&mut plan.config, &args.common, &env)?;
    if let Some(ended) = &plan.ended {
        // Nothing to run: show what the session produced.
        eprintln!(
            "session {} already ended ({}); nothing was run again",
            plan.session, ended.reason
        );
        if let Some(answer) = &ended.final_answer {
            println!("{answer}");
        }
        return Ok(u8::try_from(ended.exit_code).unwrap_or(EXIT_EXECUTION));
    }
    let missing = config::missing_api_keys(&plan.config, &|key| env(key));
    if let Some((agent, var)) = missing.first() {
        return Err(usage(anyhow::anyhow!(
            "agent `{agent}` needs an API key: set the environment variable {var} (in the shell or in a .env file)"
        )));
    }
    check_placement(&plan.config, &args.cluster)?;
    let cluster = args.cluster.start(&env).await?;
    if plan.config.display != DisplayKind::Json {
        eprintln!(
            "resuming session {}: {} journaled input(s) replayed, {} turn(s) in flight at the crash will run again",
            plan.session,
            plan.replayed_inputs,
            plan.resend.len()
        );
    }
    let interrupt = CancellationToken::new();
    let watcher = tokio::spawn(watch_ctrl_c(interrupt.clone()));
    let header = SessionHeader::new(&plan.config, &plan.task.question);
    let (display, display_guard) =
        Display::for_session(plan.config.display, header, interrupt.clone());
    let result =
        crate::session::resume_session(plan, env, cluster.clone(), display, interrupt).await;
    watcher.abort();
    display_guard.finish();
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    match result {
        Ok(outcome) => {
            print_summary(&outcome, &dir);
            Ok(outcome.exit_code() as u8)
        }
        Err(error) => Err(session_failure(error)),
    }
}
