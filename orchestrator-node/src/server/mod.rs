//! `conclave server`: a long-lived orchestrator. It keeps the cluster listener up, so agent
//! nodes stay joined between sessions, and runs the sessions submitted on stdin or over HTTP.
//!
//! ```text
//! conclave server --listen 0.0.0.0:7420 --cookie-file cookie --config team.yaml \
//!                 --http 127.0.0.1:7421
//! ```
//!
//! * **stdin**: each line is one session: a plain question (run with `--config`), or a JSON
//!   object `{"question": "...", "config": "other.yaml", "session_id": "name"}` (`config` and
//!   `session_id` optional; `config_yaml` gives the YAML inline instead of a path;
//!   `"conversation": ID` continues a conversation, see [`conversations`]).
//! * **HTTP** (`--http IP:PORT`): the API of [`http`]: submit, list, inspect, watch live (SSE)
//!   and cancel sessions, list the joined agent nodes; and an OpenAI-compatible
//!   `POST /v1/chat/completions` / `GET /v1/models` ([`openai`]), whose `model` names a config
//!   (`conclave`, or `conclave/NAME` for `NAME.yaml` in the config directory, untrusted).
//!
//! **Trust.** stdin is the operator's own channel: its configs are trusted like `conclave
//! run`'s (`${VAR}` expanded, `config` any path). An HTTP client is someone else, and the
//! server holds API keys, so everything a client's config can touch is the operator's to
//! allow:
//! * a config it sends (`config_yaml`) or names (`config`) loads with `${VAR}` expansion off
//!   (a reference is a 400 saying so) and nothing read from the server's environment, so no
//!   variable can reach a prompt, the journal, the event feed or an error. Files in the config
//!   directory are the operator's, but the client chose which one, so they load the same way;
//!   only the server's own `--config` (used when a request names none) is trusted;
//! * every backend, of agents run here and of agents placed on agent nodes, must pass the
//!   [`ProviderAllowList`] built at start: the presets' key variables and hosted URLs, every
//!   backend of `--config`, `--allow-key-env VAR` and `--allow-base-url PREFIX`. A refusal is a
//!   400 naming the agent and the rule, never a value from the environment;
//! * `"config": NAME` resolves only inside `--config-dir` (default: the directory of
//!   `--config`; without either, names are refused); a name that is absolute, contains `..`,
//!   leads out through a symlink or does not exist gets the same 404, so the disk cannot be
//!   probed. An error in such a file (or in `--config`) names the key; its values go only to
//!   the server's log;
//! * a resumed session runs the config its journal holds, which passed these checks when it
//!   was submitted.
//!
//! Sessions run concurrently, at most `--max-sessions` (default 4) at once; the others wait in
//! submission order (state `queued`), so a long batch piped into stdin does not hit every
//! provider with every question at once. At most `--max-queued` (default 256) HTTP sessions
//! wait; more are refused with 429 (stdin batches are the operator's and always wait). Each prints one JSON line on stdout when it ends, wherever it
//! came from: `{"session", "exit_code", "reason", "winner", "final_answer", ...}`, or
//! `{"session", "exit_code", "error"}` when it could not run. Journals go under
//! `--session-dir` as usual. `--listen` (agent nodes) and `--http` are each optional, but a
//! server needs at least one of them; agents without `node:` run inside the server.
//!
//! When stdin closes the server keeps serving (a daemon's stdin is usually closed) until
//! SIGTERM or Ctrl-C, which interrupts running sessions (each ends with its best answer so
//! far), waits up to 30 s for them, and exits 0.
//!
//! **After a crash.** A session whose server died under it keeps its journal. A new server
//! reports it as `unfinished` (`GET /sessions/{id}`), continues it on `POST
//! /sessions/{id}/resume`, or, started with `--resume-unfinished`, continues every such
//! session under `--session-dir` at once. Decisions already journaled are never asked for
//! again (see [`crate::resume`]).
//!
//! The server remembers the sessions it ran (state, result, the journal events for replay) for
//! its lifetime, up to [`MAX_FINISHED_KEPT`] finished ones; older ones, and those of earlier
//! server runs, are read from disk: `GET /sessions` lists them too ([`listing`]).
//!
//! **Conversations.** Every session is a turn of a conversation, recorded in the session
//! directory as the CLI records them; a follow-up continues it with the earlier questions and
//! final answers as history, across server restarts ([`conversations`]).

pub mod conversations;
pub mod http;
pub mod listing;
pub mod openai;
mod registry;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use conclave_protocol::config::{DisplayKind, SessionConfig};
use conclave_protocol::trust::{ProviderAllowList, TrustError};
use conclave_protocol::{SessionId, TaskSpec};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::args::{
    ClusterArgs, CommonArgs, EXIT_OK, Failure, apply_common, check_placement, execution,
    session_failure, usage,
};
use crate::cluster::Cluster;
use crate::config;
use crate::console;
use crate::display::Display;
use crate::outcome::SessionOutcome;
use crate::resume::ResumePlan;
use crate::session::{
    EnvFn, SessionPlan, new_session_id, resume_session, run_session, session_dir,
};

use registry::{HubWriter, Registry};
pub use registry::{MAX_FINISHED_KEPT, SessionEntry};

/// How long a stopping server waits for its running sessions to present their best answer.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a finished session's display thread may take to flush.
const DISPLAY_FLUSH: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The session config for questions that do not name one.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve the HTTP API on this address (IP:PORT; port 0 picks one, printed on stderr).
    #[arg(long, value_name = "IP:PORT")]
    pub http: Option<std::net::SocketAddr>,
    /// Run at most this many sessions at once; later ones wait in order (state `queued`).
    /// A batch piped into stdin thus never floods the providers.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_sessions: u32,
    /// At start, resume every session under --session-dir that never ended (the server or
    /// its machine died under it); each continues from its journal.
    #[arg(long)]
    pub resume_unfinished: bool,
    /// A file holding the bearer token HTTP clients must send (`Authorization: Bearer TOKEN`).
    /// Without it, CONCLAVE_HTTP_TOKEN is read. Required unless --http is a loopback address.
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
    /// Where `"config": NAME` of an HTTP request is looked up (only there: absolute paths, `..`
    /// and symlinks out of it are refused). Default: the directory of --config.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// A key variable a config submitted over HTTP may name (`api_key_env`), besides those of
    /// the provider presets and of --config. Repeatable.
    #[arg(long = "allow-key-env", value_name = "VAR")]
    pub allow_key_env: Vec<String>,
    /// A base-URL prefix a config submitted over HTTP may use, besides the base URLs of
    /// --config and the hosted providers' own. Repeatable.
    #[arg(long = "allow-base-url", value_name = "PREFIX")]
    pub allow_base_url: Vec<String>,
    /// At most this many HTTP sessions wait for a slot (state `queued`); beyond it POST
    /// /sessions answers 429.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_queued: u32,
    /// At most this many HTTP connections open at once; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
    /// An HTTP client has this long to send a request's headers (and this long between reads
    /// of a body), or its connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_read_timeout: u64,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The environment variable holding the HTTP API's bearer token.
pub const HTTP_TOKEN_ENV: &str = "CONCLAVE_HTTP_TOKEN";

/// One submitted session, from a stdin line or an HTTP request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub question: String,
    /// A config file on the server: over HTTP a name inside `--config-dir`; on stdin (the
    /// operator's own channel) any path, relative to the working directory.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// The config itself, as YAML text.
    #[serde(default)]
    pub config_yaml: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// Continue this conversation (named by any of its sessions): the new session is its next
    /// turn, and its agents get the earlier questions and final answers ([`conversations`]).
    #[serde(default)]
    pub conversation: Option<String>,
    /// Earlier (question, answer) exchanges: set by the OpenAI-compatible endpoint from a
    /// request's messages ([`openai`]); not a field of `POST /sessions` or of a stdin line.
    #[serde(default, skip_deserializing)]
    pub history: Vec<(String, String)>,
}

fn parse_job(line: &str) -> Result<Job, String> {
    if line.starts_with('{') {
        serde_json::from_str(line).map_err(|e| format!("not a session request: {e}"))
    } else {
        Ok(Job {
            question: line.to_owned(),
            config: None,
            config_yaml: None,
            session_id: None,
            conversation: None,
            history: Vec::new(),
        })
    }
}

/// Why a submission (or a resume) was refused.
#[derive(Debug)]
pub enum SubmitError {
    /// The request is wrong (config, question, session id): the error says what to fix.
    Invalid(anyhow::Error),
    /// The session exists already, is running, or has ended (the message says which).
    Conflict(String),
    /// No such session on this server or under its session directory.
    NotFound(String),
    /// The server is stopping.
    Stopping,
    /// Too many sessions wait already (`--max-queued`).
    Busy(String),
    /// Another process runs the session (its journal is locked); the message names it.
    InUse(String),
}

/// Who submitted a session, which decides how far its config is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitter {
    /// A line on the server's stdin: the operator, whose configs are trusted like `conclave
    /// run`'s (`${VAR}` expanded, any file path).
    Operator,
    /// An HTTP client: its configs (inline, or a file it names) are untrusted. See
    /// the module docs, "Trust".
    Client,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Invalid(error) => f.write_str(&conclave_protocol::error_text(&**error)),
            SubmitError::Conflict(message)
            | SubmitError::NotFound(message)
            | SubmitError::Busy(message)
            | SubmitError::InUse(message) => f.write_str(message),
            SubmitError::Stopping => write!(f, "the server is stopping"),
        }
    }
}

fn exists(id: &str) -> SubmitError {
    SubmitError::Conflict(format!(
        "session `{id}` already exists; choose another session_id"
    ))
}

/// What a server session runs: a new session, or one continued from its journal.
enum Start {
    New(Box<SessionPlan>),
    Resume(Box<ResumePlan>),
}

/// The server's shared state: what stdin and HTTP submissions go through.
pub struct Server {
    args: ServerArgs,
    env: EnvFn,
    cluster: Option<Cluster>,
    stop: CancellationToken,
    registry: Registry,
    tasks: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// One permit per session allowed to run at once (`--max-sessions`).
    slots: Arc<tokio::sync::Semaphore>,
    /// HTTP clients shared by the sessions, by connect timeout: one connection pool and one
    /// TLS setup for the server's lifetime rather than one per session (which cost megabytes
    /// per running session and a new TLS handshake per session).
    clients: std::sync::Mutex<std::collections::HashMap<u64, reqwest::Client>>,
    /// The key variables and base URLs a submitted config may use.
    allow: ProviderAllowList,
    /// Where `"config": NAME` of a request is looked up; `None`: nowhere.
    config_dir: Option<PathBuf>,
}

impl Server {
    fn new(args: ServerArgs, env: EnvFn, cluster: Option<Cluster>) -> Arc<Server> {
        let slots = Arc::new(tokio::sync::Semaphore::new(args.max_sessions as usize));
        let allow = allow_list(&args, &env);
        let config_dir = args.config_dir.clone().or_else(|| {
            args.config.as_ref().map(|file| match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            })
        });
        Arc::new(Server {
            allow,
            config_dir,
            slots,
            clients: std::sync::Mutex::new(std::collections::HashMap::new()),
            args,
            env,
            cluster,
            stop: CancellationToken::new(),
            registry: Registry::default(),
            tasks: std::sync::Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Validates a job and starts its session. The returned entry reports its progress.
    pub fn submit(
        self: &Arc<Self>,
        mut job: Job,
        from: Submitter,
    ) -> Result<Arc<SessionEntry>, SubmitError> {
        if self.stop.is_cancelled() {
            return Err(SubmitError::Stopping);
        }
        self.check_queue(from)?;
        let conversation = match job.conversation.take() {
            Some(id) => Some(self.follow_up(&id, &mut job)?),
            None => None,
        };
        let plan = self.plan(job, from)?;
        let conversation = conversation.unwrap_or_else(|| plan.session.to_string());
        self.start(Start::New(Box::new(plan)), &conversation)
    }

    /// Continues a session that did not end (the orchestrator died under it) from its
    /// journal: decisions already journaled are never asked for again.
    pub fn resume(
        self: &Arc<Self>,
        id: &str,
        from: Submitter,
    ) -> Result<Arc<SessionEntry>, SubmitError> {
        if self.stop.is_cancelled() {
            return Err(SubmitError::Stopping);
        }
        self.check_queue(from)?;
        let session = SessionId::parse(id)
            .map_err(|e| SubmitError::Invalid(anyhow::anyhow!("session id: {e}")))?;
        if let Some(entry) = self.registry.get(id)
            && entry.result().is_none()
        {
            return Err(SubmitError::Conflict(format!(
                "session `{id}` is running on this server"
            )));
        }
        let dir = session_dir(&self.args.common.session_dir, &session);
        if !dir.join(crate::journal::EVENTS_FILE).is_file() {
            return Err(SubmitError::NotFound(format!(
                "no session `{id}` under {}",
                self.args.common.session_dir.display()
            )));
        }
        // The journal's lock first: a session another process runs is refused, naming it.
        let mut plan = crate::resume::claim(&dir).map_err(|e| match e {
            crate::resume::ResumeError::Journal(
                locked @ crate::journal::JournalError::Locked { .. },
            ) => SubmitError::InUse(locked.to_string()),
            e => SubmitError::Invalid(e.into()),
        })?;
        if let Some(ended) = &plan.ended {
            return Err(SubmitError::Conflict(format!(
                "session `{id}` already ended ({}); nothing to resume",
                ended.reason
            )));
        }
        self.prepare(&mut plan.config)?;
        // A finished entry of an earlier attempt (one that failed before it could journal
        // its end) gives way to the resumed run.
        self.registry.forget_finished(id);
        let conversation = conversations::of_session(&self.args.common.session_dir, id);
        self.start(Start::Resume(Box::new(plan)), &conversation)
    }

    /// Refuses a client's session when `--max-queued` sessions wait already. Only HTTP
    /// submissions are bounded: a batch piped into stdin (or resumed at start) is the
    /// operator's and waits in full.
    fn check_queue(&self, from: Submitter) -> Result<(), SubmitError> {
        if from == Submitter::Client && self.registry.queued() >= self.args.max_queued as usize {
            return Err(SubmitError::Busy(format!(
                "{} sessions are already waiting for a slot (--max-queued); try again later",
                self.args.max_queued
            )));
        }
        Ok(())
    }

    /// What every session config goes through before it runs, new or resumed: the server's
    /// command-line overrides, a cluster for agents placed on nodes, and the API keys present.
    fn prepare(&self, config: &mut SessionConfig) -> Result<(), SubmitError> {
        let invalid = |f: Failure| SubmitError::Invalid(f.error);
        // The server's own flags: an error there (a bad --pricing file) is the operator's to
        // read in the log, and its values are not a client's to see.
        apply_common(config, &self.args.common, &self.env).map_err(|failure| {
            warn!(
                "the server's settings cannot be applied to a session: {}",
                conclave_protocol::error_text(&*failure.error)
            );
            SubmitError::Invalid(anyhow::anyhow!(
                "the server's own settings (--pricing, --max-cost, ...) cannot be applied; the server's log says why"
            ))
        })?;
        check_placement(config, &self.args.cluster).map_err(invalid)?;
        let env = &self.env;
        if let Some((agent, var)) = config::missing_api_keys(config, &|key| env(key)).first() {
            return Err(SubmitError::Invalid(anyhow::anyhow!(
                "agent `{agent}` needs an API key: set {var} on the orchestrator"
            )));
        }
        Ok(())
    }

    /// Registers and spawns a session.
    fn start(
        self: &Arc<Self>,
        start: Start,
        conversation: &str,
    ) -> Result<Arc<SessionEntry>, SubmitError> {
        let (id, dir, task, timeout) = match &start {
            Start::New(plan) => (
                plan.session.to_string(),
                &plan.dir,
                &plan.task,
                plan.config.timeouts.orchestrator_timeout_seconds,
            ),
            Start::Resume(plan) => (
                plan.session.to_string(),
                &plan.dir,
                &plan.task,
                plan.config.timeouts.orchestrator_timeout_seconds,
            ),
        };
        let timeout = Duration::from_secs(timeout);
        let entry = self
            .registry
            .insert(
                &id,
                conversation,
                dir,
                task,
                timeout,
                self.stop.child_token(),
            )
            .ok_or_else(|| exists(&id))?;
        let task_entry = entry.clone();
        let server = self.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished sessions so the set does not grow with the server's lifetime.
        while tasks.try_join_next().is_some() {}
        let slots = self.slots.clone();
        // A free slot is taken at once, so a session that can run is reported `running`. (The
        // semaphore hands released permits to waiters first: this never jumps the queue.)
        let free = slots.clone().try_acquire_owned().ok();
        if free.is_some() {
            entry
                .begun
                .store(true, std::sync::atomic::Ordering::Release);
        }
        tasks.spawn(async move {
            let cancel = task_entry.cancel.clone();
            // Otherwise wait for one; a session cancelled (or a server stopped) meanwhile never
            // starts.
            let slot = match free {
                Some(slot) => Some(slot),
                None => tokio::select! {
                    slot = slots.acquire_owned() => slot.ok(),
                    _ = cancel.cancelled() => None,
                },
            };
            let Some(_slot) = slot else {
                let line = json!({
                    "session": task_entry.id,
                    "exit_code": crate::cli::args::EXIT_INTERRUPTED,
                    "reason": "cancelled_while_queued",
                    "error": "cancelled before it started (it was waiting for a free slot; see --max-sessions)",
                });
                println!("{line}");
                server.registry.finish(&task_entry, line);
                return;
            };
            task_entry
                .begun
                .store(true, std::sync::atomic::Ordering::Release);
            // The display (a thread) only for sessions that run: queued ones cost no thread.
            let (display, guard) = Display::to_writer(
                DisplayKind::Json,
                Box::new(HubWriter::new(task_entry.clone())),
            );
            let result = match start {
                Start::New(plan) => run_session(*plan, display, cancel).await,
                Start::Resume(plan) => {
                    let (env, cluster) = (server.env.clone(), server.cluster.clone());
                    resume_session(*plan, env, cluster, display, cancel).await
                }
            };
            // The display thread ends once every Display clone is gone; bounded in case one
            // lingers in an actor that has not stopped yet.
            let flush = tokio::task::spawn_blocking(move || guard.finish());
            if tokio::time::timeout(DISPLAY_FLUSH, flush).await.is_err() {
                warn!(session = %task_entry.id, "the display did not flush in time");
            }
            let mut line = match result {
                Ok(outcome) => outcome_json(&outcome),
                Err(error) => {
                    let Failure { code, error } = session_failure(error);
                    json!({"session": task_entry.id, "exit_code": code, "error": conclave_protocol::error_text(&*error)})
                }
            };
            // Recorded before the result is visible: a client that saw it can continue.
            conversations::record(&server, &task_entry, &mut line).await;
            println!("{line}");
            server.registry.finish(&task_entry, line);
            trim_heap_when_idle(&server.registry);
        });
        Ok(entry)
    }

    /// A session this server does not remember, as its journal tells it: ended (with its
    /// result) or unfinished (resumable). `None` when there is no such journal.
    pub fn from_disk(&self, id: &str) -> Option<Value> {
        let dir = self.journal_dir(id)?;
        let status = match crate::resume::load(&dir) {
            Ok(plan) => match plan.ended {
                Some(ended) => json!({
                    "session": id,
                    "state": "done",
                    "question": plan.task.question,
                    "history": plan.task.history,
                    "result": {
                        "session": id,
                        "exit_code": ended.exit_code,
                        "reason": ended.reason,
                        "winner": ended.winner,
                        "final_answer": ended.final_answer,
                    },
                }),
                None => json!({
                    "session": id,
                    "state": "unfinished",
                    "question": plan.task.question,
                    "history": plan.task.history,
                    "hint": format!("the orchestrator stopped before this session ended; POST /sessions/{id}/resume continues it"),
                }),
            },
            Err(error) => json!({
                "session": id,
                "state": "unreadable",
                "error": conclave_protocol::error_text(&error),
            }),
        };
        Some(status)
    }

    /// The directory of session `id` under `--session-dir` when it has a journal (an id that
    /// is not a valid session id, and so could name a path, is never looked up; a symlink
    /// that could lead out of the session directory is not followed).
    pub fn journal_dir(&self, id: &str) -> Option<PathBuf> {
        listing::own_journal(&self.args.common.session_dir, id)
            .and_then(|journal| journal.parent().map(Path::to_path_buf))
    }

    /// One page of `GET /sessions`: this server's sessions and those on disk ([`listing`]).
    pub fn list(&self, offset: usize, limit: usize) -> Value {
        listing::page(
            &self.registry.all(),
            &self.args.common.session_dir,
            offset,
            limit,
        )
    }

    /// Resumes every session under the session directory that has a journal but no end.
    fn resume_unfinished(self: &Arc<Self>) {
        let root = &self.args.common.session_dir;
        let Ok(entries) = std::fs::read_dir(root) else {
            return;
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(crate::journal::EVENTS_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        for id in ids {
            match self.resume(&id, Submitter::Operator) {
                Ok(_) => console::note!("conclave server: resuming unfinished session {id}"),
                // Sessions that ended are what most directories hold: not worth a word.
                Err(SubmitError::Conflict(_)) => {}
                Err(SubmitError::InUse(message)) => {
                    console::note!("conclave server: not resuming {id}: {message}");
                }
                Err(error) => {
                    warn!(session = %id, "cannot resume: {error}");
                    println!(
                        "{}",
                        json!({"session": id, "exit_code": crate::cli::args::EXIT_USAGE, "error": error.to_string()})
                    );
                }
            }
        }
    }

    /// Resolves a job into a session plan, checking everything that can be checked up front.
    ///
    /// A client's config is untrusted (see the module docs, "Trust"): inline YAML and files
    /// it names load with `${VAR}` expansion off, every backend must pass the allow-list, a
    /// named file must lie inside `--config-dir`, and an error about a file on the server
    /// names only the key (the details go to the server's log).
    fn plan(&self, job: Job, from: Submitter) -> Result<SessionPlan, SubmitError> {
        let invalid = |e: anyhow::Error| SubmitError::Invalid(e);
        if job.question.trim().is_empty() {
            return Err(invalid(anyhow::anyhow!("the question is empty")));
        }
        let env = &self.env;
        let client = from == Submitter::Client;
        // (the config, whether the operator wrote it, what to call a file in errors)
        let (loaded, trusted, file) = match (&job.config_yaml, &job.config, &self.args.config) {
            (Some(_), Some(_), _) => {
                return Err(invalid(anyhow::anyhow!(
                    "give either \"config\" (a file on the server) or \"config_yaml\", not both"
                )));
            }
            (Some(yaml), None, _) if client => {
                (config::load_str_untrusted(yaml, "config_yaml"), false, None)
            }
            (Some(yaml), None, _) => (
                config::load_str(yaml, "config_yaml", &|key| env(key)),
                true,
                None,
            ),
            (None, Some(name), _) if client => {
                let path = self.named_config(name)?;
                let shown = name.display().to_string();
                (
                    config::load_file_untrusted(&path, &shown),
                    false,
                    Some(format!("config `{shown}`")),
                )
            }
            (None, Some(path), _) | (None, None, Some(path)) => (
                config::load_file(path, &|key| env(key)),
                true,
                client.then(|| "the server's default config".to_owned()),
            ),
            (None, None, None) => {
                return Err(invalid(anyhow::anyhow!(
                    "no config: start the server with --config FILE or give \"config\" or \"config_yaml\" in the request"
                )));
            }
        };
        let loaded = loaded.map_err(|error| match &file {
            // A file on the server: its values are not the client's to see.
            Some(file) => {
                warn!("{file} of a submitted session: {error}");
                invalid(anyhow::anyhow!(file_error(file, &error)))
            }
            None => invalid(error.into()),
        })?;
        if !trusted {
            self.check_trust(&loaded.config, file.as_deref())?;
        }
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        let mut config = loaded.config;
        self.prepare(&mut config)?;
        let session = match &job.session_id {
            Some(id) => {
                SessionId::parse(id).map_err(|e| invalid(anyhow::anyhow!("session_id: {e}")))?
            }
            None => new_session_id(),
        };
        let dir = session_dir(&self.args.common.session_dir, &session);
        if dir.join(crate::journal::EVENTS_FILE).exists() {
            return Err(exists(session.as_str()));
        }
        let http = self.http_client(config.timeouts.connect_timeout_seconds)?;
        Ok(SessionPlan {
            session,
            dir,
            config,
            task: TaskSpec {
                question: job.question,
                history: job.history,
            },
            env: self.env.clone(),
            http: Some(http),
            cluster: self.cluster.clone(),
        })
    }

    /// The shared HTTP client for a connect timeout.
    fn http_client(&self, connect_timeout_seconds: u64) -> Result<reqwest::Client, SubmitError> {
        let seconds = connect_timeout_seconds.max(1);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&seconds) {
            return Ok(client.clone());
        }
        let client = conclave_agent::providers::http_client(Duration::from_secs(seconds))
            .map_err(|e| SubmitError::Invalid(e.into()))?;
        clients.insert(seconds, client.clone());
        Ok(client)
    }

    /// The file a request's `"config": NAME` names inside the config directory. A name that
    /// is absolute, climbs out with `..`, leads out through a symlink or names no file gets
    /// the same 404, so a client cannot tell what exists outside the directory.
    fn named_config(&self, name: &Path) -> Result<PathBuf, SubmitError> {
        let Some(dir) = &self.config_dir else {
            return Err(SubmitError::Invalid(anyhow::anyhow!(
                "this server takes no \"config\" names (it has neither --config-dir nor --config); send \"config_yaml\""
            )));
        };
        resolve_config_name(dir, name).ok_or_else(|| {
            SubmitError::NotFound(format!(
                "no config `{}` in the server's config directory",
                name.display()
            ))
        })
    }

    /// Checks every backend of an untrusted config (agents run here and on agent nodes) against
    /// the allow-list. `file`: the config is a file on the server, whose values are not shown.
    fn check_trust(&self, config: &SessionConfig, file: Option<&str>) -> Result<(), SubmitError> {
        for agent in &config.agents {
            if let Err(refused) = self.allow.check(&agent.backend) {
                let message = match file {
                    None => format!("agent `{}`: {refused}", agent.id),
                    Some(file) => format!("{file}, agent `{}`: {}", agent.id, trust_rule(&refused)),
                };
                warn!("submitted config refused: agent `{}`: {refused}", agent.id);
                return Err(SubmitError::Invalid(anyhow::anyhow!(message)));
            }
            // MCP servers over HTTP must be under an allowed base URL, like providers (the
            // loader already refuses stdio servers and `${VAR}` in submitted configs).
            for server in &agent.tools.mcp_servers {
                let url = match &server.transport {
                    conclave_protocol::tools::McpTransport::StreamableHttp { url, .. } => url,
                    conclave_protocol::tools::McpTransport::Stdio { .. } => {
                        return Err(SubmitError::Invalid(anyhow::anyhow!(
                            "agent `{}`, MCP server `{}`: a submitted config may not start programs",
                            agent.id,
                            server.name
                        )));
                    }
                };
                let allowed = self
                    .allow
                    .base_url_prefixes()
                    .any(|prefix| conclave_protocol::trust::url_has_prefix(url, prefix));
                if !allowed {
                    warn!(
                        "submitted config refused: agent `{}`: MCP server `{}` URL not allowed",
                        agent.id, server.name
                    );
                    let shown = match file {
                        None => format!(" (`{url}`)"),
                        Some(_) => String::new(),
                    };
                    return Err(SubmitError::Invalid(anyhow::anyhow!(
                        "agent `{}`, MCP server `{}`: its URL{shown} is not allowed: a submitted \
                         config may only use MCP servers under a base URL of the operator's own \
                         config or a prefix given with --allow-base-url",
                        agent.id,
                        server.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Submits a stdin line; a refused one prints its error line at once.
    fn submit_line(self: &Arc<Self>, line: &str) {
        let refused = |session: Option<String>, error: String| {
            println!(
                "{}",
                json!({"session": session, "exit_code": crate::cli::args::EXIT_USAGE, "error": error})
            );
        };
        match parse_job(line) {
            Ok(job) => {
                let id = job.session_id.clone();
                if let Err(error) = self.submit(job, Submitter::Operator) {
                    refused(id, error.to_string());
                }
            }
            Err(error) => refused(None, error),
        }
    }

    /// Interrupts every session and waits up to `grace` for them to end.
    async fn stop_sessions(&self, grace: Duration) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            warn!(
                "{} session(s) did not end within {grace:?}; leaving them",
                tasks.len()
            );
        }
    }
}

/// Once no session runs, hands the heap's free memory back to the system. glibc keeps what a
/// burst of sessions freed (a batch's peak) mapped otherwise, so a server that ran a big batch
/// would stay at that size while idle.
fn trim_heap_when_idle(registry: &Registry) {
    if registry.running() == 0 {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free heap pages; it takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The result line of a finished session (stdout and `GET /sessions/{id}`).
fn outcome_json(outcome: &SessionOutcome) -> Value {
    json!({
        "session": outcome.session.to_string(),
        "exit_code": outcome.exit_code(),
        "reason": outcome.reason.as_str(),
        "winner": outcome.winner,
        "label": outcome.label,
        "final_answer": outcome.final_answer,
        "answers": outcome.answers,
        "turns": outcome.turns,
        "usage": outcome.usage,
        "cost_usd": outcome.cost_usd,
    })
}

/// The allow-list for submitted configs: the presets, the backends of the server's own
/// --config (read once, at start), and the --allow-key-env / --allow-base-url flags.
fn allow_list(args: &ServerArgs, env: &EnvFn) -> ProviderAllowList {
    let mut allow = ProviderAllowList::presets();
    if let Some(path) = &args.config {
        match config::load_file(path, &|key| env(key)) {
            Ok(loaded) => {
                for agent in &loaded.config.agents {
                    allow.allow_backend(&agent.backend);
                }
            }
            // Reported again (to the operator) with the first session that uses it.
            Err(error) => warn!("--config: {error}"),
        }
    }
    for var in &args.allow_key_env {
        allow.allow_key_env(var.trim());
    }
    for prefix in &args.allow_base_url {
        allow.allow_base_url(prefix.as_str());
    }
    allow
}

/// Resolves `name` inside `dir`: a relative path of plain components whose real location (all
/// symlinks followed) is a file inside the real `dir`. `None` for everything else.
pub fn resolve_config_name(dir: &Path, name: &Path) -> Option<PathBuf> {
    use std::path::Component;
    if name.as_os_str().is_empty()
        || !name
            .components()
            .all(|part| matches!(part, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    let root = std::fs::canonicalize(dir).ok()?;
    let path = std::fs::canonicalize(root.join(name)).ok()?;
    (path.starts_with(&root) && path.is_file()).then_some(path)
}

/// A config error of a file on the server, for a client: where, not what (the value is the
/// file's). The full error is in the server's log.
fn file_error(file: &str, error: &config::ConfigError) -> String {
    match error.key_path() {
        Some(path) if !path.is_empty() => format!(
            "{file} on the server is not valid at `{path}`; the server's log says why (the file's values are not shown here)"
        ),
        _ => format!(
            "{file} on the server cannot be loaded; the server's log says why (the file's contents are not shown here)"
        ),
    }
}

/// The rule a backend broke, without the value that broke it.
fn trust_rule(refused: &TrustError) -> &'static str {
    match refused {
        TrustError::KeyEnv { .. } => {
            "its key variable is not allowed: a submitted config may only name the key variables of the provider presets, of the operator's own config, or given with --allow-key-env"
        }
        TrustError::BaseUrl { .. } => {
            "its base URL is not allowed: a submitted config may only use the default URL of a hosted provider preset (with that provider's own key), a base URL of the operator's own config, or a prefix given with --allow-base-url"
        }
        TrustError::Program { .. } => {
            "its claude_code program is not allowed: only `claude` from PATH or a program the operator allowed with --allow-base-url"
        }
    }
}

/// Reads the HTTP bearer token, and refuses to serve a non-loopback address without one.
fn http_token(args: &ServerArgs, env: &EnvFn) -> Result<Option<String>, Failure> {
    let Some(addr) = args.http else {
        return Ok(None);
    };
    let token = match &args.http_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --http-token-file {}", path.display()))
                .map_err(usage)?
                .trim()
                .to_owned(),
        ),
        None => env(HTTP_TOKEN_ENV).map(|t| t.trim().to_owned()),
    };
    if let Some(token) = &token
        && token.len() < 16
    {
        return Err(usage(anyhow::anyhow!(
            "the HTTP token must be at least 16 characters (e.g. `openssl rand -hex 32`)"
        )));
    }
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(usage(anyhow::anyhow!(
            "--http {addr} is not a loopback address: give a bearer token with --http-token-file FILE or {HTTP_TOKEN_ENV}"
        )));
    }
    Ok(token)
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(args: ServerArgs, env: EnvFn) -> Result<u8, Failure> {
    if args.cluster.listen.is_none() && args.http.is_none() {
        return Err(usage(anyhow::anyhow!(
            "conclave server needs --listen IP:PORT (where agent nodes join), --http IP:PORT (the HTTP API), or both"
        )));
    }
    let token = http_token(&args, &env)?;
    let cluster = args.cluster.start(&env).await?;
    let http_addr = args.http;
    let server = Server::new(args, env, cluster);
    let http = match http_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve HTTP on {addr}"))
                .map_err(execution)?;
            let bound = listener
                .local_addr()
                .context("the HTTP listener has no address")
                .map_err(execution)?;
            console::note!("conclave server: HTTP API at http://{bound}");
            let prefixes: Vec<&str> = server.allow.base_url_prefixes().collect();
            console::note!(
                "conclave server: submitted configs may name the key variables {} and use the base URLs under {} (and hosted providers' own); widen with --allow-key-env / --allow-base-url",
                server.allow.key_envs().collect::<Vec<_>>().join(", "),
                if prefixes.is_empty() {
                    "no prefix".to_owned()
                } else {
                    prefixes.join(", ")
                }
            );
            let limits = http::Limits {
                max_connections: server.args.max_connections as usize,
                read_timeout: Duration::from_secs(server.args.http_read_timeout),
            };
            Some(tokio::spawn(http::serve(
                listener,
                server.clone(),
                token,
                server.stop.clone(),
                limits,
            )))
        }
        None => None,
    };
    if let Some(cluster) = &server.cluster {
        console::note!(
            "conclave server: agent nodes join at {}",
            cluster.listen_addr()
        );
    }
    console::note!(
        "conclave server: one session per stdin line (a question, or JSON {{\"question\", \"config\", \"config_yaml\", \"session_id\", \"conversation\"}}); SIGTERM or Ctrl-C stops"
    );
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    if server.args.resume_unfinished {
        server.resume_unfinished();
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")
        .map_err(execution)?;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.recv(), if stdin_open => match line {
                Some(line) => {
                    let line = line.trim();
                    if !line.is_empty() {
                        server.submit_line(line);
                    }
                }
                None => {
                    stdin_open = false;
                    info!("stdin closed; still serving until SIGTERM or Ctrl-C");
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    console::note!(
        "conclave server: stopping ({} session(s) running)",
        server.registry.running()
    );
    server.stop_sessions(STOP_GRACE).await;
    if let Some(http) = http {
        // Live event streams end with their sessions; give the last responses a moment.
        if tokio::time::timeout(Duration::from_secs(5), http)
            .await
            .is_err()
        {
            warn!("the HTTP API did not close in time");
        }
    }
    if let Some(cluster) = &server.cluster {
        cluster.shutdown().await;
    }
    Ok(EXIT_OK)
}

/// `conclave --web [--web-port N] --config FILE "question"`: one session, watched on the web
/// page. A server of one session on a loopback port (`--web-port`, default 0: any free port,
/// printed): the same page, routes and checks as `conclave server --http` (a token from
/// `CONCLAVE_HTTP_TOKEN` is honoured). The session's result line is printed on stdout as the
/// server prints it; the exit code is the session's. When stderr is a terminal, the page stays
/// served after the end until Ctrl-C (a person is reading it); otherwise the command ends with
/// the session, so a script never waits.
pub async fn run_web(
    config: Option<PathBuf>,
    question: Option<String>,
    port: u16,
    common: CommonArgs,
    cluster: ClusterArgs,
    env: EnvFn,
) -> Result<u8, Failure> {
    let Some(config) = config else {
        return Err(usage(anyhow::anyhow!(
            "--web needs --config FILE (the session runs in a one-session server that reads it)"
        )));
    };
    let Some(question) = question.filter(|q| !q.trim().is_empty()) else {
        return Err(usage(anyhow::anyhow!(
            "--web needs the question as an argument"
        )));
    };
    let session_id = common.session_id.clone();
    let args = ServerArgs {
        config: Some(config),
        http: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        max_sessions: 1,
        resume_unfinished: false,
        http_token_file: None,
        config_dir: None,
        allow_key_env: Vec::new(),
        allow_base_url: Vec::new(),
        max_queued: 0,
        max_connections: 64,
        http_read_timeout: 30,
        common,
        cluster,
    };
    let token = http_token(&args, &env)?;
    let cluster = args.cluster.start(&env).await?;
    let addr = args
        .http
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = Server::new(args, env, cluster);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve the web page on {addr}"))
        .map_err(execution)?;
    let bound = listener
        .local_addr()
        .context("the HTTP listener has no address")
        .map_err(execution)?;
    let limits = http::Limits {
        max_connections: server.args.max_connections as usize,
        read_timeout: Duration::from_secs(server.args.http_read_timeout),
    };
    let http = tokio::spawn(http::serve(
        listener,
        server.clone(),
        token,
        server.stop.clone(),
        limits,
    ));
    let job = Job {
        question,
        config: None,
        config_yaml: None,
        session_id,
        conversation: None,
        history: Vec::new(),
    };
    let entry = match server.submit(job, Submitter::Operator) {
        Ok(entry) => entry,
        Err(refused) => {
            server.stop_sessions(STOP_GRACE).await;
            return Err(usage(anyhow::anyhow!("{refused}")));
        }
    };
    console::note!(
        "conclave: watch session {} at http://{bound}/#/s/{}",
        entry.id,
        entry.id
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")
        .map_err(execution)?;
    let stopped = tokio::select! {
        _ = entry.done.cancelled() => false,
        _ = tokio::signal::ctrl_c() => true,
        _ = sigterm.recv() => true,
    };
    if !stopped && std::io::stderr().is_terminal() {
        console::note!(
            "conclave: the session has ended; the page stays at http://{bound}/ until Ctrl-C"
        );
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    }
    server.stop_sessions(STOP_GRACE).await;
    if tokio::time::timeout(Duration::from_secs(5), http)
        .await
        .is_err()
    {
        warn!("the HTTP API did not close in time");
    }
    if let Some(cluster) = &server.cluster {
        cluster.shutdown().await;
    }
    // Like any server session, a `--web` session has recorded its turn: `--continue` picks
    // it up.
    let code = entry
        .result()
        .and_then(|r| r["exit_code"].as_i64())
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(crate::cli::args::EXIT_EXECUTION);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_resolve_only_inside_the_config_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("configs");
        std::fs::create_dir_all(dir.join("teams")).unwrap();
        std::fs::write(dir.join("team.yaml"), "agents: []").unwrap();
        std::fs::write(dir.join("teams/two.yaml"), "agents: []").unwrap();
        std::fs::write(root.path().join("outside.yaml"), "agents: []").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.yaml"), dir.join("link.yaml"))
            .unwrap();
        std::os::unix::fs::symlink(dir.join("team.yaml"), dir.join("inner.yaml")).unwrap();
        let resolve = |name: &str| resolve_config_name(&dir, Path::new(name));

        assert!(resolve("team.yaml").is_some());
        assert!(resolve("./teams/two.yaml").is_some());
        assert!(
            resolve("inner.yaml").is_some(),
            "a symlink that stays inside"
        );
        for refused in [
            "../outside.yaml",
            "teams/../team.yaml",
            "link.yaml",
            "missing.yaml",
            "teams",
            "",
        ] {
            assert_eq!(resolve(refused), None, "{refused}");
        }
        let absolute = dir.join("team.yaml");
        assert_eq!(
            resolve_config_name(&dir, &absolute),
            None,
            "absolute paths are refused even inside the dir"
        );
    }

    #[test]
    fn a_plain_line_is_a_question_and_json_lines_are_requests() {
        let job = parse_job("What is 2+2?").unwrap();
        assert_eq!(job.question, "What is 2+2?");
        assert!(job.config.is_none() && job.session_id.is_none());
        let job = parse_job(r#"{"question": "q", "config_yaml": "agents: []", "session_id": "s"}"#)
            .unwrap();
        assert_eq!(job.config_yaml.as_deref(), Some("agents: []"));
        assert_eq!(job.session_id.as_deref(), Some("s"));
        let error = parse_job(r#"{"question": "q", "confg": "x.yaml"}"#).unwrap_err();
        assert!(error.contains("unknown field `confg`"), "{error}");
        assert!(
            parse_job(r#"{"config": "x.yaml"}"#)
                .unwrap_err()
                .contains("question")
        );
    }
}
