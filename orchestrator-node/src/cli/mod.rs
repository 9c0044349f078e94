//! The `conclave` command line. Parsing is clap's; everything else is a call into the library.
//!
//! Exit codes: see [`args`], which also holds the argument groups, exit codes and failures
//! that the subcommands in their own modules (server, batch, probe) share.
//!
//! One agent (`--model`, or a one-agent config with `ui.use_orchestrator_for_single_agent:
//! false`) answers in one streamed provider call, journaled like any session (start, the
//! turn, usage, the final answer, end; `resume` re-runs a call cut by a crash); `--orchestrate`
//! asks for the full answer / vote / presentation path instead.
//!
//! Cluster flags (`--listen`, `--cookie-file`, `--tls-*`, heartbeat timing) are shared by the
//! main command, `resume` and `server`; see [`crate::cluster`] and [`crate::server`].

use std::io::{BufRead, IsTerminal, Read};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use conclave_protocol::config::{DisplayKind, SessionConfig};
use conclave_protocol::{SessionId, TaskSpec};
use conclave_sim::{SimConfig, SimServer};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::{self, EnvLookup};
use crate::console;
use crate::demo;
use crate::display::Display;
use crate::outcome::SessionOutcome;
use crate::session::{EnvFn, SessionPlan, new_session_id, run_session, session_dir};
use crate::tui::state::SessionHeader;

pub mod args;

use args::{
    CommonArgs, DemoArgs, EXIT_EXECUTION, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Failure,
    ProbeArgs, ResumeArgs, RunArgs, SessionsArgs, apply_common, check_placement, execution,
    session_failure, usage,
};

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
            console::error!("cannot start the async runtime: {error}");
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
                console::error!("{}", conclave_protocol::error_text(&*failure.error));
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
            console::warning!("{warning}");
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
            console::warning!(
                "conversation {}: a torn last line (a crash while writing) was skipped",
                loaded.id
            );
        }
        console::note!(
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
        console::note!(
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

/// First Ctrl-C: end the session gracefully. Second: leave at once.
pub(crate) async fn watch_ctrl_c(interrupt: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    console::note!(
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
    console::note!(
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
    console::note!(
        "conclave: {} agent(s). Ask a question; an empty line or Ctrl-D quits.",
        config.agents.len()
    );
    let mut last = EXIT_OK;
    loop {
        console::prompt("\n> ");
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
        console::note!(
            "demo: {} simulated agents against {} (real HTTP + SSE on loopback)",
            args.agents,
            sim.base_url()
        );
        if let Some(server) = &mcp_server {
            console::note!(
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
        console::note!(
            "session {} already ended ({}); nothing was run again",
            plan.session,
            ended.reason
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
        console::note!(
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
