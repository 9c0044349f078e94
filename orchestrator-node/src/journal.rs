//! The session journal: `events.jsonl`, append-only, one JSON object per line.
//!
//! Everything needed to understand (and later resume) a session is here: the start with the
//! resolved config (which holds no secrets: backends name the environment variable of their
//! key, never the key), every turn started or cancelled, every decision received with the
//! revision it was made at, answers accepted or rejected, votes accepted or discarded,
//! restarts, retries, failures, token usage, the winner, the final answer and how the session
//! ended.
//!
//! **Written ahead.** Writing happens on a dedicated thread so the coordinator's executor
//! never blocks on the disk. [`Journal::record`] queues a line; [`Journal::commit`] returns a
//! future that resolves once every line queued before it is written *and* `fsync`ed. The
//! coordinator records what a message decided, awaits the commit, and only then lets anything
//! that depends on it out (the display and so stdout, the server's HTTP view, the next turn's
//! prompt, the final answer). Group commit: the writer takes everything queued at once and
//! covers it with one `fsync`, so several events (and several commits) cost one sync. A line
//! that records a decision is also synced when nobody waits for it. A crash can therefore tear
//! at most the last line; the reader ([`read_events`]) skips a last line that is incomplete or
//! unparsable instead of failing, and reports how many it skipped.
//!
//! Creating a journal `fsync`s its directory (and the parent of every directory it had to
//! create), so the new file's name is as durable as its contents.
//!
//! **A failed write is final.** Once a write or `fsync` fails, the writer stops writing (a
//! retried `fsync` can report success for data the kernel already dropped), every later
//! [`Journal::commit`] fails with the first error, and the session ends with that error
//! (exit code 2) rather than going on with a hole in its record.
//!
//! **One writer.** A session's journal is guarded by an exclusive advisory lock (`flock(2)`
//! through [`File::try_lock`]) on `journal.lock` beside it, held as long as the [`Journal`]
//! (or a [`JournalLock`] taken before reading the journal for a resume) lives. The lock file
//! names its holder (process id, host, start time) so a refusal can say who holds it. The
//! kernel drops the lock when the holder dies, however it dies: a crashed orchestrator never
//! leaves a session locked, which is why this is a lock and not a pid file. The lock file is
//! never deleted (deleting a lock file races with a process that has it open); its holder line
//! is cleared when the lock is released. Advisory locks are only as good as the file system:
//! on NFS they depend on the server's lock support.

use std::fs::{File, OpenOptions, TryLockError};
use std::future::Future;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use conclave_protocol::config::SessionConfig;
use conclave_protocol::{Decision, DecisionHow, TurnEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The journal's file name inside a session directory.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The final answer's file name inside a session directory.
pub const FINAL_FILE: &str = "final.md";
/// The lock file beside the journal (see the module docs).
pub const LOCK_FILE: &str = "journal.lock";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create the session directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open the journal {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("a journal already exists at {0}; choose another session id")]
    Exists(PathBuf),
    #[error(
        "writing the journal {path} failed: {source}; the session was stopped because its decisions could no longer be made durable (free space or fix the disk, then `conclave resume` continues from what was written)"
    )]
    Write { path: PathBuf, source: io::Error },
    #[error("the journal writer thread stopped unexpectedly")]
    WriterGone,
    #[error("cannot read the journal {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the journal {path} is damaged at line {line}: {detail}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("cannot lock the journal {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "the session journal {path} is in use by {holder}; only one process may run a session: wait for that one to end (or stop it), then resume"
    )]
    Locked { path: PathBuf, holder: String },
}

/// One agent as the journal names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The configured id.
    pub id: String,
    /// The anonymous number (`agent{number}` in labels).
    pub number: u32,
    pub provider: String,
    pub model: String,
    pub node: Option<String>,
}

/// Everything the journal records. Serialised with a `type` tag in snake case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JournalEvent {
    SessionStarted {
        session: String,
        question: String,
        history: Vec<(String, String)>,
        conclave_version: String,
        agents: Vec<AgentInfo>,
        config: SessionConfig,
    },
    /// One MCP server of an agent started (or, `optional`, was left out with `error`) when
    /// the agent started, on the orchestrator (`node: None`) or on the agent's node.
    ToolServerStarted {
        agent: String,
        #[serde(default)]
        node: Option<String>,
        server: String,
        /// `stdio` or `streamable-http`.
        transport: String,
        duration_ms: u64,
        /// Tools offered after `allowed_tools` / `exclude_tools`.
        tools: u32,
        optional: bool,
        #[serde(default)]
        error: Option<String>,
    },
    /// The session continues from its journal after the orchestrator died.
    SessionResumed {
        replayed_inputs: usize,
        resent_turns: Vec<u64>,
        torn_lines_skipped: usize,
    },
    TurnStarted {
        agent: String,
        turn: u64,
        mode: String,
        revision: u64,
        may_answer: bool,
        answers: Vec<String>,
    },
    TurnCancelled {
        agent: String,
        turn: u64,
    },
    /// Restart policy `inject`: newer answers were sent to a turn in flight, for its next tool
    /// boundary. Whether they arrived is the agent's `TurnProgress` (`AnswersInjected`).
    InjectionSent {
        agent: String,
        turn: u64,
        revision: u64,
        answers: Vec<String>,
    },
    /// The agent declined an injection (no tool call in flight); `fallback` is what its turn
    /// got (`cancel`: cancelled and restarted, `finish`: left to finish).
    InjectionDeclined {
        agent: String,
        turn: u64,
        fallback: String,
    },
    /// The machine took an injection the agent reported: the turn now decides on `revision`.
    AnswersInjected {
        agent: String,
        turn: u64,
        from_revision: u64,
        revision: u64,
    },
    DecisionReceived {
        agent: String,
        turn: u64,
        seen_revision: u64,
        decision: Decision,
        /// How the decision was obtained: `tool` (a workflow call), `text` (a marked line of
        /// the text protocol) or `implicit` (no decision: the turn's text kept as an answer, or
        /// an abstention). Journals written before this field read as `tool`.
        #[serde(default)]
        how: DecisionHow,
        /// True for an answer kept from a turn that made no decision.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        implicit: bool,
        /// The workspace snapshot that came with a `new_answer` (agents with a workspace): every
        /// file with its size and SHA-256, and what was left out (symbolic links). Its files
        /// are on disk before this line is (see `crate::snapshots`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<conclave_protocol::snapshot::SnapshotManifest>,
    },
    PresentationReceived {
        agent: String,
        turn: u64,
        content: String,
    },
    AnswerAccepted {
        agent: String,
        label: String,
        revision: u64,
        seen_revision: u64,
        stale: bool,
        content: String,
        /// Where the answer's workspace snapshot is stored (its manifest is in the answer's
        /// `decision_received` line).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot_dir: Option<String>,
    },
    /// A workspace snapshot was thrown away without becoming an answer's: its agent's node was
    /// lost while it was on its way, or its answer was not accepted.
    SnapshotDropped {
        agent: String,
        reason: String,
    },
    AnswerRejected {
        agent: String,
        reason: String,
    },
    VoteAccepted {
        agent: String,
        label: String,
        revision: u64,
        reason: String,
    },
    VoteDiscarded {
        agent: String,
        label: String,
        seen_revision: u64,
        revision: u64,
        why: String,
    },
    /// The agent made no decision and sits out this revision.
    Abstained {
        agent: String,
        turn: u64,
        revision: u64,
        reason: String,
    },
    TurnRestarted {
        agent: String,
        old_turn: Option<u64>,
        reason: String,
    },
    TurnProgress {
        agent: String,
        turn: u64,
        event: TurnEvent,
    },
    TurnFailed {
        agent: String,
        turn: u64,
        kind: String,
        message: String,
    },
    AgentLost {
        agent: String,
        reason: String,
    },
    AgentFailed {
        agent: String,
        reason: String,
    },
    AgentRejoined {
        agent: String,
    },
    VoteRejected {
        agent: String,
        label: String,
        seen_revision: u64,
        revision: u64,
        why: String,
    },
    PresentationFailed {
        agent: String,
        reason: String,
    },
    InputIgnored {
        agent: Option<String>,
        turn: Option<u64>,
        why: String,
    },
    AllAgentsFailed,
    Usage {
        agent: String,
        turn: u64,
        input_tokens: u64,
        output_tokens: u64,
        /// The cost of this usage, when the model's price is known.
        #[serde(default)]
        cost_usd: Option<f64>,
    },
    ConsensusReached {
        winner: String,
        label: String,
        votes: u32,
    },
    TimedOut {
        after_ms: u64,
    },
    Interrupted,
    /// The session stopped at the operator's request (a batch's first Ctrl-C or SIGTERM)
    /// once the provider calls in flight had finished and been journaled. It did not end:
    /// no `session_ended` follows, and a resume sends the turns these agents were about to
    /// start (they were journaled as started but never sent).
    SessionPaused {
        /// Agents whose next turn was held back.
        agents_waiting: Vec<String>,
    },
    FinalAnswer {
        winner: Option<String>,
        label: Option<String>,
        presented_by: Option<String>,
        content: String,
    },
    SessionEnded {
        reason: String,
        exit_code: i32,
        wall_ms: u64,
        input_tokens: u64,
        output_tokens: u64,
        answers: u32,
        turns: u64,
        /// The priced part of the session's usage; `None` when no agent's model has a price.
        #[serde(default)]
        cost_usd: Option<f64>,
        #[serde(default)]
        usage_by_agent: Vec<AgentUsage>,
    },
    /// A budget cap ended the session: which cap, what had been spent when it was reached and
    /// by how much that overshot the cap (a provider reports usage after the tokens are spent,
    /// so the last report usually goes past the cap). Turns in flight are cancelled right
    /// after; tokens they consumed but never reported are not in these figures.
    BudgetExhausted {
        reason: String,
        /// Tokens used by the whole session (input + output) when the cap was reached.
        #[serde(default)]
        tokens_used: Option<u64>,
        #[serde(default)]
        max_total_tokens: Option<u64>,
        /// `tokens_used - max_total_tokens`, when the token cap is the one reached.
        #[serde(default)]
        tokens_over: Option<u64>,
        /// The priced spending when the cap was reached.
        #[serde(default)]
        cost_usd: Option<f64>,
        #[serde(default)]
        max_cost_usd: Option<f64>,
        /// `cost_usd - max_cost_usd`, when the cost cap is the one reached.
        #[serde(default)]
        cost_over_usd: Option<f64>,
    },
}

/// One agent's token usage (and cost, when priced) over a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentUsage {
    pub agent: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
}

impl JournalEvent {
    /// Whether this event must be on disk before anything that follows from it is visible:
    /// everything that changes the session's state or its record. Usage reports, progress
    /// notes and ignored inputs are bookkeeping; the next synced line covers them.
    /// `tool_server_started` for one of `agent`'s MCP servers, as its toolbox reported it.
    pub fn tool_server_started(
        agent: &str,
        node: Option<String>,
        report: conclave_protocol::tools::ServerStartReport,
    ) -> JournalEvent {
        JournalEvent::ToolServerStarted {
            agent: agent.to_owned(),
            node,
            server: report.server,
            transport: report.transport,
            duration_ms: report.duration_ms,
            tools: report.tools,
            optional: report.optional,
            error: report.error,
        }
    }

    pub fn needs_sync(&self) -> bool {
        !matches!(
            self,
            JournalEvent::Usage { .. }
                | JournalEvent::TurnProgress { .. }
                | JournalEvent::InputIgnored { .. }
        )
    }
}

/// One journal line: when (ms since the session started, and wall-clock unix ms) and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalLine {
    pub t_ms: u64,
    pub unix_ms: u64,
    #[serde(flatten)]
    pub event: JournalEvent,
}

/// Where a journal's bytes go: a file, or (in tests) a writer that fails or blocks on cue.
pub trait JournalFile: Write + Send + 'static {
    /// Makes everything written so far durable (`fsync`).
    fn sync(&mut self) -> io::Result<()>;
}

impl JournalFile for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Called on the writer thread once a commit's lines are durable, or with the write error.
pub type CommitCallback = Box<dyn FnOnce(Result<(), JournalError>) + Send>;

enum WriterCmd {
    Line {
        text: String,
        sync: bool,
    },
    /// Answered once every line queued before it is written and synced.
    Commit(CommitCallback),
    Close,
}

/// The exclusive lock on a session's journal (see the module docs). Dropping it releases
/// the lock.
#[derive(Debug)]
pub struct JournalLock {
    file: File,
}

/// Who holds a journal lock, as written into the lock file.
#[derive(Debug, Serialize, Deserialize)]
struct LockHolder {
    pid: u32,
    host: String,
    since_unix_ms: u64,
}

impl JournalLock {
    /// Takes the lock of the session journal in `dir` without waiting: fails with
    /// [`JournalError::Locked`], naming the holder, when another process (or another session
    /// in this process) holds it.
    pub fn acquire(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join(LOCK_FILE);
        let lock_error = |source| JournalError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(JournalError::Locked {
                    path: dir.join(EVENTS_FILE),
                    holder: describe_holder(&file),
                });
            }
            Err(TryLockError::Error(source)) => return Err(lock_error(source)),
        }
        let holder = LockHolder {
            pid: std::process::id(),
            host: host_name(),
            since_unix_ms: unix_ms(),
        };
        let line = serde_json::to_string(&holder).unwrap_or_default();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(format!("{line}\n").as_bytes()))
            .map_err(lock_error)?;
        Ok(Self { file })
    }
}

impl Drop for JournalLock {
    fn drop(&mut self) {
        // Still locked here: clear the holder line, then closing the file releases the lock.
        let _ = self.file.set_len(0);
    }
}

/// The holder of a lock as people read it. The lock file is read back, so every part is
/// checked before it is shown: a number, a plain host name, a time.
fn describe_holder(file: &File) -> String {
    let mut text = String::new();
    let read = Read::take(file, 4096)
        .read_to_string(&mut text)
        .ok()
        .and_then(|_| serde_json::from_str::<LockHolder>(text.trim()).ok());
    let Some(holder) = read else {
        return "another process (it has not written its name yet)".to_owned();
    };
    let plain = !holder.host.is_empty()
        && holder.host.len() <= 253
        && holder
            .host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let host = if plain {
        format!("host {}", holder.host)
    } else {
        "an unnamed host".to_owned()
    };
    format!(
        "process {} on {host} (since {})",
        holder.pid,
        utc_time(holder.since_unix_ms)
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a unix time in milliseconds.
fn utc_time(unix_ms: u64) -> String {
    let time = i64::try_from(unix_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    time.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(unix)]
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(not(unix))]
fn host_name() -> String {
    String::new()
}

/// `fsync`s a directory so the names created in it are durable. Directories cannot be opened
/// as files on every platform; where they cannot, the file system orders this itself.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Creates `dir` and its missing parents, syncing the parent of each one created.
fn create_dirs(dir: &Path) -> Result<(), JournalError> {
    let create_error = |source| JournalError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(path) = cursor {
        if path.as_os_str().is_empty() || path.exists() {
            break;
        }
        missing.push(path.to_owned());
        cursor = path.parent();
    }
    std::fs::create_dir_all(dir).map_err(create_error)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent).map_err(create_error)?;
    }
    Ok(())
}

/// The writer side of a session journal.
pub struct Journal {
    path: PathBuf,
    started: Instant,
    tx: mpsc::Sender<WriterCmd>,
    writer: Option<JoinHandle<Result<(), io::Error>>>,
    _lock: Option<JournalLock>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Reopens an existing journal for appending after cutting it to `valid_len` bytes (the
    /// intact prefix [`read_events`] reported), so a torn last line is dropped rather than
    /// left in the middle of the file. `lock` is the lock taken before the journal was read
    /// (see [`crate::resume::claim`]); without one it is taken here.
    pub fn reopen(
        dir: &Path,
        valid_len: u64,
        lock: Option<JournalLock>,
    ) -> Result<Self, JournalError> {
        let lock = match lock {
            Some(lock) => lock,
            None => JournalLock::acquire(dir)?,
        };
        let path = dir.join(EVENTS_FILE);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| JournalError::Open {
                path: path.clone(),
                source,
            })?;
        file.set_len(valid_len)
            .and_then(|()| file.sync_data())
            .map_err(|source| JournalError::Write {
                path: path.clone(),
                source,
            })?;
        Self::with_file(path, Box::new(file), Some(lock))
    }

    /// Creates `dir` (and parents) and a new `dir/events.jsonl`, locked for this process.
    /// Fails if a journal is already there.
    pub fn create(dir: &Path) -> Result<Self, JournalError> {
        create_dirs(dir)?;
        let lock = JournalLock::acquire(dir)?;
        let path = dir.join(EVENTS_FILE);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => JournalError::Exists(path.clone()),
                _ => JournalError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        sync_dir(dir).map_err(|source| JournalError::Write {
            path: path.clone(),
            source,
        })?;
        Self::with_file(path, Box::new(file), Some(lock))
    }

    /// A journal writing to any [`JournalFile`]; `path` names it in errors. For tests (a file
    /// that fails or waits on cue) and for callers that open the file themselves.
    pub fn with_file(
        path: PathBuf,
        file: Box<dyn JournalFile>,
        lock: Option<JournalLock>,
    ) -> Result<Self, JournalError> {
        let (tx, rx) = mpsc::channel();
        let writer_path = path.clone();
        let writer = std::thread::Builder::new()
            .name("conclave-journal".into())
            .spawn(move || write_loop(writer_path, file, rx))
            .map_err(|source| JournalError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            started: Instant::now(),
            tx,
            writer: Some(writer),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one event. Never blocks on the disk; [`Journal::commit`] waits for it.
    pub fn record(&self, event: JournalEvent) -> Result<(), JournalError> {
        let sync = event.needs_sync();
        let line = JournalLine {
            t_ms: self.started.elapsed().as_millis() as u64,
            unix_ms: unix_ms(),
            event,
        };
        let mut text = serde_json::to_string(&line).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        text.push('\n');
        self.tx
            .send(WriterCmd::Line { text, sync })
            .map_err(|_| JournalError::WriterGone)
    }

    /// Resolves once every event recorded before this call is written and synced; fails with
    /// the writer's first error if a write or sync failed (then or earlier). Queued at once:
    /// events recorded after the call are not waited for.
    pub fn commit(&self) -> impl Future<Output = Result<(), JournalError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        self.commit_then(Box::new(move |result| {
            let _ = ack.send(result);
        }));
        async move { done.await.unwrap_or(Err(JournalError::WriterGone)) }
    }

    /// Like [`Journal::commit`], without waiting: `then` runs on the writer thread once the
    /// lines are durable (or with the error). Commits complete in the order they were made.
    /// If the writer is gone, `then` runs at once with [`JournalError::WriterGone`].
    pub fn commit_then(&self, then: CommitCallback) {
        if let Err(mpsc::SendError(WriterCmd::Commit(then))) = self.tx.send(WriterCmd::Commit(then))
        {
            then(Err(JournalError::WriterGone));
        }
    }

    /// Writes everything queued, syncs, and stops the writer.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), JournalError> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let _ = self.tx.send(WriterCmd::Close);
        match writer.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(JournalError::Write {
                path: self.path.clone(),
                source,
            }),
            Err(_) => Err(JournalError::WriterGone),
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(error) = self.finish() {
            tracing::error!(error = %conclave_protocol::error_text(&error), "journal could not be closed cleanly");
        }
    }
}

/// A copy of an I/O error (they are not `Clone`): the first failure is reported to every
/// later commit.
fn copy_error(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}

fn write_loop(
    path: PathBuf,
    file: Box<dyn JournalFile>,
    rx: mpsc::Receiver<WriterCmd>,
) -> Result<(), io::Error> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut failed: Option<io::Error> = None;
    let mut closing = false;
    while !closing {
        // Block for the first command, then take everything already queued (group commit).
        let Ok(first) = rx.recv() else { break };
        let mut sync = false;
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next {
            match cmd {
                WriterCmd::Line { text, sync: wants } => {
                    if failed.is_none()
                        && let Err(error) = out.write_all(text.as_bytes())
                    {
                        tracing::debug!(%error, "the journal write failed; nothing more is written");
                        failed = Some(error);
                    }
                    sync |= wants;
                }
                WriterCmd::Commit(ack) => {
                    acks.push(ack);
                    sync = true;
                }
                WriterCmd::Close => {
                    closing = true;
                    sync = true;
                }
            }
            next = rx.try_recv().ok();
        }
        if failed.is_none() {
            let result = out
                .flush()
                .and_then(|()| if sync { out.get_mut().sync() } else { Ok(()) });
            if let Err(error) = result {
                tracing::debug!(%error, "the journal sync failed; nothing more is written");
                failed = Some(error);
            }
        }
        for ack in acks {
            ack(match &failed {
                Some(error) => Err(JournalError::Write {
                    path: path.clone(),
                    source: copy_error(error),
                }),
                None => Ok(()),
            });
        }
    }
    match failed {
        Some(error) => {
            // Drop what is buffered unwritten: flushing it later could put lines after a hole.
            let _ = out.into_parts();
            Err(error)
        }
        None => out.flush().and_then(|()| out.get_mut().sync()),
    }
}

/// A journal read back: its events in order, how many torn trailing lines were skipped, and
/// the length of the intact prefix (where appending may resume).
#[derive(Debug)]
pub struct ReadJournal {
    pub lines: Vec<JournalLine>,
    pub torn_lines_skipped: usize,
    /// Bytes of the file that hold complete, valid lines. A writer resuming the journal cuts
    /// the file to this length first, so a torn tail never ends up in the middle.
    pub valid_len: u64,
}

/// Reads a session journal. A last line cut off by a crash (no newline, invalid UTF-8 or not
/// valid JSON) is skipped; a damaged line anywhere else is an error, because the journal was
/// tampered with or the disk lost data and resuming from it would be wrong.
pub fn read_events(path: &Path) -> Result<ReadJournal, JournalError> {
    let read_error = |source| JournalError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut pending_error: Option<(usize, String)> = None;
    let mut torn = 0;
    let mut buf = Vec::new();
    let mut number = 0;
    let mut offset = 0u64;
    let mut valid_len = 0u64;
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(read_error)?;
        if read == 0 {
            break;
        }
        number += 1;
        offset += read as u64;
        if let Some((line, detail)) = pending_error.take() {
            return Err(JournalError::Corrupt {
                path: path.to_owned(),
                line,
                detail,
            });
        }
        let complete = buf.ends_with(b"\n");
        let parsed = std::str::from_utf8(&buf)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                serde_json::from_str::<JournalLine>(text.trim_end()).map_err(|e| e.to_string())
            });
        match (parsed, complete) {
            (Ok(line), true) => {
                lines.push(line);
                valid_len = offset;
            }
            (_, false) => torn += 1,
            (Err(detail), true) => pending_error = Some((number, detail)),
        }
    }
    if pending_error.is_some() {
        // The damaged line was the last one: a torn write that happened to end in a newline.
        torn += 1;
    }
    Ok(ReadJournal {
        lines,
        torn_lines_skipped: torn,
        valid_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> JournalEvent {
        JournalEvent::TurnCancelled {
            agent: format!("a{n}"),
            turn: n,
        }
    }

    #[test]
    fn events_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::create(dir.path()).unwrap();
        for n in 0..100 {
            journal.record(event(n)).unwrap();
        }
        journal
            .record(JournalEvent::DecisionReceived {
                snapshot: None,
                agent: "a".into(),
                turn: 1,
                seen_revision: 0,
                decision: Decision::NewAnswer {
                    content: "x\ny".into(),
                },
                how: DecisionHow::Tool,
                implicit: false,
            })
            .unwrap();
        journal.close().unwrap();
        let read = read_events(&dir.path().join(EVENTS_FILE)).unwrap();
        assert_eq!(read.torn_lines_skipped, 0);
        assert_eq!(read.lines.len(), 101);
        for (n, line) in read.lines.iter().take(100).enumerate() {
            assert_eq!(line.event, event(n as u64));
        }
    }

    #[test]
    fn a_torn_last_line_is_skipped_but_damage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::create(dir.path()).unwrap();
        journal.record(event(1)).unwrap();
        journal.record(event(2)).unwrap();
        journal.close().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let good = std::fs::read_to_string(&path).unwrap();

        std::fs::write(
            &path,
            format!("{good}{{\"t_ms\":3,\"unix_ms\":1,\"type\":\"turn_can"),
        )
        .unwrap();
        let read = read_events(&path).unwrap();
        assert_eq!((read.lines.len(), read.torn_lines_skipped), (2, 1));
        assert_eq!(read.valid_len, good.len() as u64);

        // A crash can split a multi-byte character: still only a torn tail.
        let mut bytes = good.clone().into_bytes();
        bytes.extend_from_slice(&"{\"t_ms\":3,\"agent\":\"é".as_bytes()[..17]);
        std::fs::write(&path, bytes).unwrap();
        let read = read_events(&path).unwrap();
        assert_eq!((read.lines.len(), read.torn_lines_skipped), (2, 1));

        std::fs::write(&path, format!("{good}{{garbage}}\n")).unwrap();
        let read = read_events(&path).unwrap();
        assert_eq!((read.lines.len(), read.torn_lines_skipped), (2, 1));

        let mut lines: Vec<&str> = good.lines().collect();
        lines.insert(1, "{not json");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        assert!(matches!(
            read_events(&path),
            Err(JournalError::Corrupt { line: 2, .. })
        ));
    }

    /// A file whose `sync` waits for the test's permission, and whose writes or syncs fail
    /// on cue.
    struct GatedFile {
        written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        durable: std::sync::Arc<std::sync::Mutex<usize>>,
        entered: mpsc::Sender<()>,
        permits: mpsc::Receiver<()>,
        fail_writes: bool,
        fail_syncs: bool,
    }

    impl Write for GatedFile {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail_writes {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl JournalFile for GatedFile {
        fn sync(&mut self) -> io::Result<()> {
            let _ = self.entered.send(());
            let _ = self
                .permits
                .recv_timeout(std::time::Duration::from_secs(10));
            if self.fail_syncs {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            *self.durable.lock().unwrap() = self.written.lock().unwrap().len();
            Ok(())
        }
    }

    struct Gate {
        durable: std::sync::Arc<std::sync::Mutex<usize>>,
        written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        entered: mpsc::Receiver<()>,
        permits: mpsc::Sender<()>,
    }

    fn gated(fail_writes: bool, fail_syncs: bool) -> (Journal, Gate) {
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let durable = std::sync::Arc::new(std::sync::Mutex::new(0));
        let (entered_tx, entered) = mpsc::channel();
        let (permits, permits_rx) = mpsc::channel();
        let file = GatedFile {
            written: written.clone(),
            durable: durable.clone(),
            entered: entered_tx,
            permits: permits_rx,
            fail_writes,
            fail_syncs,
        };
        let journal = Journal::with_file("disk/events.jsonl".into(), Box::new(file), None).unwrap();
        (
            journal,
            Gate {
                durable,
                written,
                entered,
                permits,
            },
        )
    }

    fn decision() -> JournalEvent {
        JournalEvent::DecisionReceived {
            snapshot: None,
            agent: "a".into(),
            turn: 1,
            seen_revision: 0,
            decision: Decision::NewAnswer {
                content: "42".into(),
            },
            how: DecisionHow::Tool,
            implicit: false,
        }
    }

    #[tokio::test]
    async fn a_commit_resolves_only_after_the_sync_that_covers_its_lines() {
        use futures::FutureExt;
        let (journal, gate) = gated(false, false);
        journal.record(event(1)).unwrap();
        journal.record(decision()).unwrap();
        let mut commit = Box::pin(journal.commit());
        // The writer is inside `sync`, held there by the gate.
        gate.entered
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the writer syncs");
        assert!(
            (&mut commit).now_or_never().is_none(),
            "the commit resolved before the sync returned"
        );
        assert_eq!(*gate.durable.lock().unwrap(), 0);
        // Let this sync and any later ones (the writer may have taken the lines in two
        // batches, and closing syncs once more) through.
        for _ in 0..4 {
            gate.permits.send(()).unwrap();
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), commit)
            .await
            .expect("the commit resolves")
            .expect("the commit succeeds");
        // Both lines (the bookkeeping one too) are covered by the one sync.
        let durable = *gate.durable.lock().unwrap();
        let text = String::from_utf8(gate.written.lock().unwrap()[..durable].to_vec()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        journal.close().unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_fails_this_and_every_later_commit_naming_the_journal() {
        let (journal, gate) = gated(true, false);
        drop(gate.permits);
        journal.record(decision()).unwrap();
        let error = journal.commit().await.expect_err("the write failed");
        let text = conclave_protocol::error_text(&error);
        assert!(
            text.contains("disk/events.jsonl") && text.contains("No space left on device"),
            "{text}"
        );
        // Nothing more is written after the first failure, and every commit says so.
        let _ = journal.record(event(2));
        let again = journal.commit().await.expect_err("still failed");
        assert!(conclave_protocol::error_text(&again).contains("No space left on device"));
        assert!(gate.written.lock().unwrap().is_empty());
        assert!(journal.close().is_err());
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_commit() {
        let (journal, gate) = gated(false, true);
        drop(gate.permits);
        journal.record(decision()).unwrap();
        let error = journal.commit().await.expect_err("the sync failed");
        assert!(
            conclave_protocol::error_text(&error).contains("Input/output error"),
            "{error}"
        );
        // The writer does not retry a failed sync: later commits fail too.
        journal.record(event(2)).unwrap();
        assert!(journal.commit().await.is_err());
    }

    #[test]
    fn one_writer_per_journal_and_the_refusal_names_the_holder() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sessions/s1");
        let journal = Journal::create(&dir).unwrap();
        // A second writer, here or in another process, is refused while the first lives.
        let error = JournalLock::acquire(&dir).expect_err("the journal is locked");
        let text = error.to_string();
        assert!(matches!(error, JournalError::Locked { .. }), "{text}");
        assert!(
            text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("since ") && text.contains(" UTC"), "{text}");
        assert!(text.contains("events.jsonl"), "{text}");
        assert!(matches!(
            Journal::reopen(&dir, 0, None),
            Err(JournalError::Locked { .. })
        ));
        journal.close().unwrap();
        // Released with the journal; the holder line is cleared.
        assert_eq!(std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(), "");
        let lock = JournalLock::acquire(&dir).expect("free again");
        // A new journal is never created over an existing one.
        drop(lock);
        assert!(matches!(
            Journal::create(&dir),
            Err(JournalError::Exists(_))
        ));
        let reopened = Journal::reopen(&dir, 0, None).expect("resumable");
        reopened.close().unwrap();
    }

    #[test]
    fn a_holder_line_that_is_not_ours_is_not_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join(LOCK_FILE))
            .unwrap();
        file.write_all(b"{\"pid\":7,\"host\":\"evil\\u001b[2J\",\"since_unix_ms\":0}\n")
            .unwrap();
        file.rewind().unwrap();
        assert_eq!(
            describe_holder(&file),
            "process 7 on an unnamed host (since 1970-01-01 00:00:00 UTC)"
        );
        file.set_len(0).unwrap();
        file.write_all(b"SECRET=hunter2").unwrap();
        file.rewind().unwrap();
        assert!(!describe_holder(&file).contains("hunter2"));
    }
}
