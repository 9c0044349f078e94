//! `conclave batch`: many questions, each its own session, a bounded number at a time, with a
//! journal of its own so a crash or Ctrl-C loses nothing.
//!
//! ```text
//! conclave batch tasks.jsonl --config team.yaml --concurrency 16 --out results.jsonl
//! ```
//!
//! * **Tasks** ([`tasks`]): JSON lines `{"id", "question", "config"?, "history"?}` or CSV with
//!   `id,question`. A task's `config` is a file relative to the tasks file; it is the operator's
//!   own, so it loads like `--config` (`${VAR}` expanded).
//! * **Where things go**: the batch directory (`--batch-dir`, default `RESULTS.batch` beside
//!   the results file) holds the batch journal `batch.jsonl`, its lock, `failed.jsonl` and
//!   `sessions/ID/`, one session directory (with its own journal) per task attempt.
//! * **Crash-safe** ([`journal`]): `started` is durable before a session begins, `done` (with
//!   the result line) before the result is appended to the results file. Running the same
//!   command again skips done tasks, resumes a started session from its own journal (a
//!   decided turn is never paid for twice; a session that had ended is not run at all) and
//!   retries failed tasks in a new session. A task is always either in the results file or
//!   listed as failed with its error (`failed.jsonl`, the summary). Two runs of the same batch
//!   cannot collide: the batch directory is locked ([`JournalLock`]) while one runs, and the
//!   second is refused naming the holder.
//! * **Ctrl-C or SIGTERM** pauses the batch: no task and no turn starts any more, the
//!   provider calls in flight finish and are journaled (they are paid for; cutting them would
//!   make the next run pay for them again), then each running session stops with its journal
//!   left open (`session_paused`) and the run exits 130. The next run resumes those sessions
//!   and sends exactly the turns that were held back. A second Ctrl-C or SIGTERM stops at once,
//!   cutting the calls in flight (their sessions are resumed all the same, as after a crash).
//!   The wait is bounded by each turn's own deadline (`timeouts.turn_timeout_seconds`).
//!   Ending the sessions instead would journal an interrupted answer as the task's result.
//! * **Budget**: `--max-cost` / `--max-tokens` cap the whole batch. Each session starts with the
//!   remainder as its own cap, so running sessions cannot overshoot much; once the batch's
//!   usage reaches a cap no further task starts, and the run exits 3 listing how many did not
//!   run (a later run with a higher cap continues them).
//! * A failed task (its session could not run, or it ended without an answer) never stops
//!   the batch. Exit codes: 0 every task done, 2 some failed, 3 a budget cap stopped the
//!   batch, 1 usage error, 130 interrupted.
//! * **Progress**: an `indicatif` bar on a terminal (done/failed/running, rate, ETA, tokens,
//!   cost), plain lines otherwise (about every 5 % of the tasks), a summary at the end.
//! * **Cluster**: agents with `node:` run on agent nodes (`--listen`), as in a single session;
//!   a node lost mid-batch fails only its agents' turns.

pub mod journal;
pub mod tasks;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use conclave_protocol::config::SessionConfig;
use conclave_protocol::{SessionId, TaskSpec, Usage};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cli::args::{
    ClusterArgs, EXIT_INTERRUPTED, EXIT_OK, Failure, check_placement, execution, usage,
};
use crate::cluster::Cluster;
use crate::config;
use crate::console;
use crate::display::Display;
use crate::journal::{JournalError, JournalLock};
use crate::outcome::SessionOutcome;
use crate::session::{
    Controls, EnvFn, SessionError, SessionPlan, resume_session_with, run_session_with,
};

use journal::{BATCH_FILE, BatchEvent, SyncedLines, TaskState};
use tasks::Task;

/// Exit code when a budget cap stopped the batch.
pub const EXIT_BUDGET: u8 = 3;
/// Exit code when some tasks failed.
pub const EXIT_SOME_FAILED: u8 = 2;

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// The tasks: JSON lines {"id", "question", "config"?, "history"?}, or CSV with id,question.
    pub tasks: PathBuf,
    /// The config of tasks that do not name one.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How many sessions run at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// The results file: one JSON line per finished task (appended; a re-run adds the rest).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The batch journal and the tasks' sessions. Default: the results file's name with `.batch`.
    #[arg(long, value_name = "DIR")]
    pub batch_dir: Option<PathBuf>,
    /// Stop starting tasks once the whole batch's priced usage reaches this many US dollars.
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// Stop starting tasks once the whole batch has used this many tokens.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens: Option<u64>,
    /// Override each session's orchestrator timeout, in seconds.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Prices that add to or override the built-in table (see `conclave --help`).
    #[arg(long, value_name = "FILE")]
    pub pricing: Option<PathBuf>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub no_progress_bar: bool,
    /// More logging on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The batch directory for a results file when `--batch-dir` is not given.
pub fn default_batch_dir(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "results".to_owned());
    out.with_file_name(format!("{stem}.batch"))
}

/// The session id of a task's attempt: the task id when it is a valid session id, else
/// `task-N` (its position); later attempts get `.2`, `.3`, ...
fn session_id(task: &Task, position: usize, attempt: u32) -> SessionId {
    let base = match SessionId::parse(&task.id) {
        Ok(id) if task.id.len() <= 100 => id.to_string(),
        _ => format!("task-{}", position + 1),
    };
    let id = if attempt <= 1 {
        base
    } else {
        format!("{base}.{attempt}")
    };
    SessionId::parse(&id).unwrap_or_else(|_| SessionId(format!("task-{}-{attempt}", position + 1)))
}

/// What the runs share.
struct Shared {
    env: EnvFn,
    cluster: Option<Cluster>,
    http: reqwest::Client,
    journal: Arc<SyncedLines>,
    results: Arc<SyncedLines>,
    sessions: PathBuf,
    max_cost: Option<f64>,
    max_tokens: Option<u64>,
    progress: Progress,
    /// Cancelled by the first Ctrl-C or SIGTERM (see the module docs).
    pause: CancellationToken,
}

/// Counters for the progress display and the budget.
#[derive(Default)]
struct Counters {
    done: AtomicUsize,
    failed: AtomicUsize,
    running: AtomicUsize,
    tokens: AtomicU64,
    /// Micro-dollars, so the sum is an atomic integer.
    cost_micro_usd: AtomicU64,
}

struct Progress {
    counters: Counters,
    total: usize,
    /// Tasks done before this run (not counted in the rate).
    already: usize,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    plain_every: usize,
}

impl Progress {
    fn new(total: usize, already: usize, bar: bool) -> Progress {
        let bar = bar.then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} {msg} · {per_sec} · ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_position(already as u64);
            bar
        });
        Progress {
            counters: Counters::default(),
            total,
            already,
            started: Instant::now(),
            bar,
            plain_every: (total / 20).max(1),
        }
    }

    fn cost(&self) -> f64 {
        self.counters.cost_micro_usd.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn summary_line(&self) -> String {
        let c = &self.counters;
        format!(
            "{} done, {} failed, {} running · {} tokens · ${:.4}",
            c.done.load(Ordering::Relaxed) + self.already,
            c.failed.load(Ordering::Relaxed),
            c.running.load(Ordering::Relaxed),
            c.tokens.load(Ordering::Relaxed),
            self.cost()
        )
    }

    fn update(&self, finished_now: bool) {
        let c = &self.counters;
        let finished = c.done.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
        match &self.bar {
            Some(bar) => {
                bar.set_position((self.already + finished) as u64);
                bar.set_message(self.summary_line());
            }
            None if finished_now
                && (finished.is_multiple_of(self.plain_every)
                    || self.already + finished == self.total) =>
            {
                let elapsed = self.started.elapsed().as_secs_f64();
                let rate = finished as f64 / elapsed.max(1e-3);
                let left = self.total.saturating_sub(self.already + finished);
                let eta = if rate > 0.0 { left as f64 / rate } else { 0.0 };
                console::note!(
                    "batch: {}/{} · {} · {rate:.1} tasks/s · ETA {eta:.0} s",
                    self.already + finished,
                    self.total,
                    self.summary_line()
                );
            }
            None => {}
        }
    }

    fn budget_left(&self, max_cost: Option<f64>, max_tokens: Option<u64>) -> Option<String> {
        if let Some(cap) = max_tokens
            && self.counters.tokens.load(Ordering::Relaxed) >= cap
        {
            return Some(format!("--max-tokens {cap} reached"));
        }
        if let Some(cap) = max_cost
            && self.cost() >= cap
        {
            return Some(format!("--max-cost {cap} reached"));
        }
        None
    }
}

/// What one task came to.
enum Finished {
    Done(Value),
    Failed {
        session: String,
        error: String,
    },
    /// The batch paused: the session stopped with its journal open, or never started.
    Paused,
}

/// Runs a batch (see the module docs).
pub async fn run(args: BatchArgs, env: EnvFn) -> Result<u8, Failure> {
    if let Some(usd) = args.max_cost
        && !(usd > 0.0 && usd.is_finite())
    {
        return Err(usage(anyhow::anyhow!(
            "--max-cost must be a positive number of US dollars, got {usd}"
        )));
    }
    let tasks = tasks::read_tasks(&args.tasks).map_err(|e| usage(e.into()))?;
    let batch_dir = args
        .batch_dir
        .clone()
        .unwrap_or_else(|| default_batch_dir(&args.out));
    std::fs::create_dir_all(&batch_dir)
        .with_context(|| format!("cannot create the batch directory {}", batch_dir.display()))
        .map_err(usage)?;
    // One run per batch at a time: the second is refused, naming the first.
    let _lock = JournalLock::acquire(&batch_dir).map_err(|e| match e {
        JournalError::Locked { holder, .. } => usage(anyhow::anyhow!(
            "the batch in {} is being run by {holder}; wait for it to end (or stop it) and run this command again",
            batch_dir.display()
        )),
        e => usage(e.into()),
    })?;
    let journal_path = batch_dir.join(BATCH_FILE);
    let events: Vec<BatchEvent> =
        journal::read_lines(&journal_path).map_err(|e| usage(anyhow::anyhow!(e)))?;
    let states = journal::replay(&events);
    let open = |path: &Path| {
        SyncedLines::open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))
            .map_err(execution)
    };
    let journal = Arc::new(open(&journal_path)?);
    let results = Arc::new(open(&args.out)?);
    let order: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let added = journal::reconcile_results(&results, &states, &order)
        .map_err(|e| execution(anyhow::anyhow!(e)))?;
    if added > 0 {
        console::note!(
            "batch: {added} result(s) journaled before a crash were added to the results file"
        );
    }

    // Every config the tasks use, loaded and checked before anything runs.
    let configs = load_configs(&args, &tasks, &env)?;

    let todo: Vec<(usize, &Task)> = tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(states.get(&t.id), Some(TaskState::Done { .. })))
        .collect();
    let already = tasks.len() - todo.len();
    let bar = std::io::stderr().is_terminal() && !args.no_progress_bar;
    let progress = Progress::new(tasks.len(), already, bar);
    if todo.is_empty() {
        console::note!(
            "batch: all {} task(s) are done already; results in {}",
            tasks.len(),
            args.out.display()
        );
        write_failed(&batch_dir, &[]).map_err(execution)?;
        return Ok(EXIT_OK);
    }
    console::note!(
        "batch: {} task(s), {} done already, {} to run, {} at a time · journal {}",
        tasks.len(),
        already,
        todo.len(),
        args.concurrency,
        journal_path.display()
    );
    let append = |event: BatchEvent| {
        let journal = journal.clone();
        async move {
            tokio::task::spawn_blocking(move || journal.append(&event))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
        }
    };
    let journal_failed = |e: std::io::Error| {
        execution(anyhow::anyhow!(
            "cannot write the batch journal {}: {e}",
            journal_path.display()
        ))
    };
    append(BatchEvent::RunStarted {
        unix_ms: unix_ms(),
        tasks_file: args.tasks.display().to_string(),
        tasks: tasks.len(),
        concurrency: args.concurrency,
    })
    .await
    .map_err(journal_failed)?;
    append(BatchEvent::Queued {
        ids: todo.iter().map(|(_, t)| t.id.clone()).collect(),
    })
    .await
    .map_err(journal_failed)?;

    for config in configs.values() {
        check_placement(config, &args.cluster)?;
    }
    let cluster = args.cluster.start(&env).await?;
    let connect = configs
        .values()
        .map(|c| c.timeouts.connect_timeout_seconds)
        .max()
        .unwrap_or(10);
    let http = conclave_agent::providers::http_client(Duration::from_secs(connect.max(1)))
        .context("cannot build the HTTP client")
        .map_err(execution)?;
    let shared = Arc::new(Shared {
        env,
        cluster: cluster.clone(),
        http,
        journal: journal.clone(),
        results,
        sessions: batch_dir.join("sessions"),
        max_cost: args.max_cost,
        max_tokens: args.max_tokens,
        progress,
        pause: CancellationToken::new(),
    });

    let interrupt = CancellationToken::new();
    let watcher = tokio::spawn(watch_signals(shared.clone(), interrupt.clone()));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency as usize));
    let mut running = tokio::task::JoinSet::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut not_run = 0usize;
    let mut stopped_by: Option<String> = None;
    let mut interrupted = false;
    let mut paused = false;
    let mut journal_error: Option<String> = None;
    let mut queue = todo.into_iter();
    let tick = if shared.progress.bar.is_some() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(3600)
    };
    let mut ticker = tokio::time::interval(tick);
    loop {
        let next = if stopped_by.is_none() && journal_error.is_none() && !paused {
            queue.next()
        } else {
            None
        };
        if let Some((position, task)) = next {
            // Wait for a slot, reaping finished tasks meanwhile.
            let permit = loop {
                tokio::select! {
                    permit = slots.clone().acquire_owned() => break permit.ok(),
                    Some(joined) = running.join_next(), if !running.is_empty() => {
                        record(joined, &mut failures, &mut journal_error);
                    }
                    _ = interrupt.cancelled() => { interrupted = true; break None; }
                    _ = shared.pause.cancelled(), if !paused => { paused = true; break None; }
                    _ = ticker.tick() => shared.progress.update(false),
                }
            };
            let Some(permit) = permit else {
                if paused {
                    // This task was taken from the queue but never started.
                    not_run += 1;
                    continue;
                }
                break;
            };
            // Checked once the slot is ours: the sessions that held it have counted by now.
            if let Some(reason) = shared
                .progress
                .budget_left(shared.max_cost, shared.max_tokens)
            {
                stopped_by = Some(reason);
                not_run += 1;
                continue;
            }
            let Some(config) = configs.get(&config_key(&args, task)).cloned() else {
                // load_configs loaded one for every task.
                failures.push((task.id.clone(), "its config was not loaded".to_owned()));
                continue;
            };
            let prior = states.get(&task.id).cloned();
            let task = task.clone();
            let shared = shared.clone();
            running.spawn(async move {
                let id = task.id.clone();
                let finished = run_task(&shared, task, position, prior, config).await;
                drop(permit);
                (id, finished)
            });
            continue;
        }
        // Nothing more to start: wait for the running ones.
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next() => record(joined, &mut failures, &mut journal_error),
            _ = interrupt.cancelled() => { interrupted = true; break; }
            _ = shared.pause.cancelled(), if !paused => paused = true,
            _ = ticker.tick() => shared.progress.update(false),
        }
    }
    watcher.abort();
    not_run += queue.count();
    if let Some(bar) = &shared.progress.bar {
        bar.finish_and_clear();
    }
    if interrupted {
        console::note!(
            "\nbatch interrupted: {}; run the same command again to resume (running sessions continue from their journals)",
            shared.progress.summary_line()
        );
        // The running sessions are left unfinished on purpose (see the module docs).
        return Ok(EXIT_INTERRUPTED);
    }
    if paused {
        if let Some(cluster) = cluster {
            cluster.shutdown().await;
        }
        write_failed(&batch_dir, &failures).map_err(execution)?;
        console::note!(
            "\nbatch paused: {}; every provider call in flight finished and was journaled; run the same command again to continue",
            shared.progress.summary_line()
        );
        return Ok(EXIT_INTERRUPTED);
    }
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    write_failed(&batch_dir, &failures).map_err(execution)?;
    let elapsed = shared.progress.started.elapsed().as_secs_f64();
    console::note!(
        "batch: {} of {} task(s) done, {} failed{} · {} tokens · ${:.4} · {elapsed:.1} s · results in {}",
        shared.progress.counters.done.load(Ordering::Relaxed) + already,
        tasks.len(),
        failures.len(),
        if not_run > 0 {
            format!(", {not_run} not run")
        } else {
            String::new()
        },
        shared.progress.counters.tokens.load(Ordering::Relaxed),
        shared.progress.cost(),
        args.out.display()
    );
    for (id, error) in failures.iter().take(10) {
        console::note!("  failed: {id}: {error}");
    }
    if failures.len() > 10 {
        console::note!(
            "  ... and {} more in {}",
            failures.len() - 10,
            batch_dir.join("failed.jsonl").display()
        );
    }
    if let Some(error) = journal_error {
        return Err(execution(anyhow::anyhow!(
            "the batch stopped: {error}; fix the disk and run the same command again"
        )));
    }
    if let Some(reason) = stopped_by {
        console::note!(
            "batch stopped: {reason}; {not_run} task(s) did not run (run again with a higher cap to continue)"
        );
        return Ok(EXIT_BUDGET);
    }
    Ok(if failures.is_empty() {
        EXIT_OK
    } else {
        EXIT_SOME_FAILED
    })
}

type Joined = Result<(String, Result<Finished, String>), tokio::task::JoinError>;

fn record(
    joined: Joined,
    failures: &mut Vec<(String, String)>,
    journal_error: &mut Option<String>,
) {
    match joined {
        Ok((_, Ok(Finished::Done(_) | Finished::Paused))) => {}
        Ok((id, Ok(Finished::Failed { error, .. }))) => failures.push((id, error)),
        Ok((_, Err(error))) => {
            journal_error.get_or_insert(error);
        }
        Err(error) => {
            journal_error.get_or_insert(format!("a task's runner crashed: {error}"));
        }
    }
}

fn config_key(args: &BatchArgs, task: &Task) -> Option<PathBuf> {
    match &task.config {
        Some(path) if path.is_absolute() => Some(path.clone()),
        Some(path) => Some(
            args.tasks
                .parent()
                .map(|dir| dir.join(path))
                .unwrap_or_else(|| path.clone()),
        ),
        None => args.config.clone(),
    }
}

/// Loads every config the tasks name (and `--config`), applies the batch's overrides and
/// checks the API keys, before any task runs.
fn load_configs(
    args: &BatchArgs,
    tasks: &[Task],
    env: &EnvFn,
) -> Result<HashMap<Option<PathBuf>, SessionConfig>, Failure> {
    let mut configs = HashMap::new();
    for task in tasks {
        let key = config_key(args, task);
        if configs.contains_key(&key) {
            continue;
        }
        let Some(path) = &key else {
            return Err(usage(anyhow::anyhow!(
                "task `{}` names no config and there is no --config: give --config FILE or \"config\" in the task",
                task.id
            )));
        };
        let loaded = config::load_file(path, &|k| env(k)).map_err(|e| usage(e.into()))?;
        for warning in &loaded.warnings {
            console::warning!("{warning}");
        }
        let mut config = loaded.config;
        if let Some(timeout) = args.timeout {
            config.timeouts.orchestrator_timeout_seconds = timeout;
        }
        if let Some(file) = &args.pricing {
            let (prices, warnings) =
                config::load_pricing_file(file, &|k| env(k)).map_err(|e| usage(e.into()))?;
            for warning in &warnings {
                console::warning!("{warning}");
            }
            config.orchestrator.pricing.extend(prices);
        }
        if args.max_cost.is_some() {
            // The batch's cap becomes each session's (the remainder), so it must be priceable.
            config.orchestrator.max_cost_usd = args.max_cost;
        }
        if args.max_tokens.is_some() {
            config.orchestrator.max_total_tokens = args.max_tokens;
        }
        crate::pricing::check_budget(&config).map_err(|e| usage(e.into()))?;
        if let Some((agent, var)) = config::missing_api_keys(&config, &|k| env(k)).first() {
            return Err(usage(anyhow::anyhow!(
                "{}: agent `{agent}` needs an API key: set the environment variable {var} (in the shell or in a .env file)",
                path.display()
            )));
        }
        configs.insert(key, config);
    }
    Ok(configs)
}

/// Runs (or resumes, or retries) one task and journals how it came out. `Err`: the batch
/// journal or results file could not be written (the batch stops).
async fn run_task(
    shared: &Shared,
    task: Task,
    position: usize,
    prior: Option<TaskState>,
    mut config: SessionConfig,
) -> Result<Finished, String> {
    if shared.pause.is_cancelled() {
        return Ok(Finished::Paused);
    }
    let counters = &shared.progress.counters;
    counters.running.fetch_add(1, Ordering::Relaxed);
    shared.progress.update(false);
    // The batch's remaining budget caps this session.
    if let Some(cap) = shared.max_tokens {
        let left = cap.saturating_sub(counters.tokens.load(Ordering::Relaxed));
        config.orchestrator.max_total_tokens = Some(left.max(1));
    }
    if let Some(cap) = shared.max_cost {
        config.orchestrator.max_cost_usd = Some((cap - shared.progress.cost()).max(1e-9));
    }
    let (resume, attempt) = match &prior {
        Some(TaskState::Started { session, attempt }) => (Some(session.clone()), *attempt),
        Some(TaskState::Failed { attempt, .. }) => (None, attempt + 1),
        _ => (None, 1),
    };
    let outcome = match resume {
        Some(session) => resume_task(shared, &task, &session, config).await,
        None => {
            let session = session_id(&task, position, attempt);
            let started = BatchEvent::Started {
                id: task.id.clone(),
                session: session.to_string(),
                attempt,
            };
            append(shared, started).await?;
            new_task(shared, &task, session, config).await
        }
    };
    counters.running.fetch_sub(1, Ordering::Relaxed);
    // Every session's usage counts against the batch's caps, answered or not.
    if let TaskOutcome::Ended {
        usage, cost_usd, ..
    } = &outcome
    {
        counters.tokens.fetch_add(
            usage.input_tokens.saturating_add(usage.output_tokens),
            Ordering::Relaxed,
        );
        let micro = (cost_usd.unwrap_or(0.0).max(0.0) * 1e6).round() as u64;
        counters.cost_micro_usd.fetch_add(micro, Ordering::Relaxed);
    }
    let finished = match outcome {
        TaskOutcome::Ended {
            session,
            dir,
            reason,
            exit_code,
            final_answer: Some(answer),
            winner,
            usage,
            cost_usd,
        } => {
            let _ = session;
            Finished::Done(json!({
                "id": task.id,
                "question": task.question,
                "final_answer": answer,
                "winner": winner,
                "reason": reason,
                "exit_code": exit_code,
                "tokens": {
                    "input": usage.input_tokens,
                    "output": usage.output_tokens,
                    "total": usage.input_tokens.saturating_add(usage.output_tokens),
                },
                "cost_usd": cost_usd,
                "session": dir.display().to_string(),
            }))
        }
        TaskOutcome::Ended {
            session, reason, ..
        } => Finished::Failed {
            session,
            error: format!("the session ended without an answer ({reason})"),
        },
        TaskOutcome::Error { session, error } => Finished::Failed { session, error },
        TaskOutcome::Paused => Finished::Paused,
    };
    match &finished {
        Finished::Done(result) => {
            append(
                shared,
                BatchEvent::Done {
                    id: task.id.clone(),
                    result: result.clone(),
                },
            )
            .await?;
            let results = shared.results.clone();
            let line = result.clone();
            tokio::task::spawn_blocking(move || results.append(&line))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot write the results file: {e}"))?;
            counters.done.fetch_add(1, Ordering::Relaxed);
        }
        Finished::Paused => {}
        Finished::Failed { session, error } => {
            append(
                shared,
                BatchEvent::Failed {
                    id: task.id.clone(),
                    session: session.clone(),
                    error: error.clone(),
                },
            )
            .await?;
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    shared.progress.update(true);
    Ok(finished)
}

async fn append(shared: &Shared, event: BatchEvent) -> Result<(), String> {
    let journal = shared.journal.clone();
    tokio::task::spawn_blocking(move || journal.append(&event))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "cannot write the batch journal {}: {e}",
                shared.journal.path().display()
            )
        })
}

enum TaskOutcome {
    Ended {
        session: String,
        dir: PathBuf,
        reason: String,
        exit_code: i32,
        final_answer: Option<String>,
        winner: Option<String>,
        usage: Usage,
        cost_usd: Option<f64>,
    },
    Error {
        session: String,
        error: String,
    },
    /// Paused with its journal open (see the module docs).
    Paused,
}

/// A session's error as a task outcome.
fn task_error(session: &str, error: SessionError) -> TaskOutcome {
    match error {
        SessionError::Paused(_) => TaskOutcome::Paused,
        error => TaskOutcome::Error {
            session: session.to_owned(),
            error: conclave_protocol::error_text(&error),
        },
    }
}

/// The controls of a batch's session: no interrupt (a second Ctrl-C ends the process), the
/// batch's pause.
fn controls(shared: &Shared) -> Controls {
    Controls {
        interrupt: CancellationToken::new(),
        pause: shared.pause.clone(),
    }
}

/// The next Ctrl-C or SIGTERM; `false` when signals cannot be watched.
async fn next_signal(sigterm: &mut Option<tokio::signal::unix::Signal>) -> bool {
    match sigterm {
        Some(term) => tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c.is_ok(),
            got = term.recv() => got.is_some(),
        },
        None => tokio::signal::ctrl_c().await.is_ok(),
    }
}

/// The first Ctrl-C or SIGTERM pauses the batch, the second stops it at once.
async fn watch_signals(shared: Arc<Shared>, interrupt: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).ok();
    if !next_signal(&mut sigterm).await {
        return;
    }
    shared.pause.cancel();
    let running = shared.progress.counters.running.load(Ordering::Relaxed);
    let line = format!(
        "pausing: no new task or turn starts; waiting for the provider calls in flight of {running} running session(s) to finish (Ctrl-C again to stop at once)"
    );
    match &shared.progress.bar {
        Some(bar) => bar.println(line),
        None => console::note!("{line}"),
    }
    if next_signal(&mut sigterm).await {
        interrupt.cancel();
    }
}

fn ended(outcome: SessionOutcome, dir: PathBuf) -> TaskOutcome {
    TaskOutcome::Ended {
        session: outcome.session.to_string(),
        dir,
        reason: outcome.reason.as_str().to_owned(),
        exit_code: outcome.exit_code(),
        final_answer: outcome.final_answer,
        winner: outcome.winner,
        usage: outcome.usage,
        cost_usd: outcome.cost_usd,
    }
}

async fn new_task(
    shared: &Shared,
    task: &Task,
    session: SessionId,
    config: SessionConfig,
) -> TaskOutcome {
    let dir = shared.sessions.join(session.as_str());
    let plan = SessionPlan {
        session: session.clone(),
        dir: dir.clone(),
        config,
        task: TaskSpec {
            question: task.question.clone(),
            history: task.history.clone(),
        },
        env: shared.env.clone(),
        http: Some(shared.http.clone()),
        cluster: shared.cluster.clone(),
    };
    match run_session_with(plan, Display::none(), controls(shared)).await {
        Ok(outcome) => ended(outcome, dir),
        Err(error) => task_error(session.as_str(), error),
    }
}

/// Continues a task's session from its journal; a session that had ended is not run again.
/// A session whose journal never got written (a crash right after `started`) starts anew.
async fn resume_task(
    shared: &Shared,
    task: &Task,
    session: &str,
    config: SessionConfig,
) -> TaskOutcome {
    let error = |error: String| TaskOutcome::Error {
        session: session.to_owned(),
        error,
    };
    let Ok(id) = SessionId::parse(session) else {
        return error(format!(
            "the batch journal names an invalid session `{session}`"
        ));
    };
    let dir = shared.sessions.join(id.as_str());
    let events = dir.join(crate::journal::EVENTS_FILE);
    if !events.is_file() {
        return new_task(shared, task, id, config).await;
    }
    // A crash between creating the journal and its first line leaves it empty (or torn):
    // nothing was decided, so the session starts afresh under the same id.
    match crate::journal::read_events(&events) {
        Ok(read) if read.lines.is_empty() => {
            let cleared = crate::journal::JournalLock::acquire(&dir)
                .map_err(|e| conclave_protocol::error_text(&e))
                .and_then(|_lock| {
                    std::fs::remove_file(&events).map_err(|e| {
                        format!("cannot remove the empty journal {}: {e}", events.display())
                    })
                });
            return match cleared {
                Ok(()) => new_task(shared, task, id, config).await,
                Err(message) => error(message),
            };
        }
        Ok(_) => {}
        Err(e) => return error(conclave_protocol::error_text(&e)),
    }
    let mut plan = match crate::resume::claim(&dir) {
        Ok(plan) => plan,
        Err(e) => return error(conclave_protocol::error_text(&e)),
    };
    if let Some(done) = plan.ended.take() {
        let mut usage = Usage::default();
        for u in &plan.usage {
            usage.add(*u);
        }
        return TaskOutcome::Ended {
            session: session.to_owned(),
            dir,
            reason: done.reason,
            exit_code: done.exit_code,
            final_answer: done.final_answer,
            winner: done.winner,
            usage,
            cost_usd: None,
        };
    }
    // The journal's config is the session's; only the batch's remaining budget applies.
    plan.config.orchestrator.max_total_tokens = config
        .orchestrator
        .max_total_tokens
        .or(plan.config.orchestrator.max_total_tokens);
    plan.config.orchestrator.max_cost_usd = config
        .orchestrator
        .max_cost_usd
        .or(plan.config.orchestrator.max_cost_usd);
    plan.config.orchestrator.pricing = config.orchestrator.pricing;
    match resume_session_with(
        plan,
        shared.env.clone(),
        shared.cluster.clone(),
        Display::none(),
        controls(shared),
    )
    .await
    {
        Ok(outcome) => ended(outcome, dir),
        Err(e) => task_error(session, e),
    }
}

/// Writes `failed.jsonl` (the tasks that failed in this run) atomically.
fn write_failed(batch_dir: &Path, failures: &[(String, String)]) -> anyhow::Result<()> {
    let path = batch_dir.join("failed.jsonl");
    let tmp = batch_dir.join("failed.jsonl.tmp");
    let mut text = String::new();
    for (id, error) in failures {
        text.push_str(&json!({"id": id, "error": error}).to_string());
        text.push('\n');
    }
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
