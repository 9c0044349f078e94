//! The session journal: `events.jsonl`, append-only, one JSON object per line.
//!
//! Everything needed to understand (and later resume) a session is here: the start with the
//! resolved config (which holds no secrets: backends name the environment variable of their
//! key, never the key), every turn started or cancelled, every decision received with the
//! revision it was made at, answers accepted or rejected, votes accepted or discarded,
//! restarts, retries, failures, token usage, the winner, the final answer and how the session
//! ended.
//!
//! Writing happens on a dedicated thread so the coordinator never waits on the disk. Lines
//! are written in order; a line that records a decision or the end of the session is followed
//! by an `fsync` before the writer takes the next batch (group commit: everything queued
//! before the sync is covered by it). A crash can therefore tear at most the last line; the
//! reader ([`read_events`]) skips a last line that is incomplete or unparsable instead of
//! failing, and reports how many it skipped.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use conclave_protocol::config::SessionConfig;
use conclave_protocol::{Decision, TurnEvent};
use serde::{Deserialize, Serialize};

/// The journal's file name inside a session directory.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The final answer's file name inside a session directory.
pub const FINAL_FILE: &str = "final.md";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create the session directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open the journal {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("writing the journal {path} failed: {source}")]
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
    DecisionReceived {
        agent: String,
        turn: u64,
        seen_revision: u64,
        decision: Decision,
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
    /// A budget cap ended the session.
    BudgetExhausted {
        reason: String,
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
    /// Decisions and the end of the session must be on disk before the session moves on.
    fn needs_sync(&self) -> bool {
        matches!(
            self,
            JournalEvent::SessionStarted { .. }
                | JournalEvent::SessionResumed { .. }
                | JournalEvent::DecisionReceived { .. }
                | JournalEvent::PresentationReceived { .. }
                | JournalEvent::TurnFailed { .. }
                | JournalEvent::AgentLost { .. }
                | JournalEvent::FinalAnswer { .. }
                | JournalEvent::SessionEnded { .. }
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

enum WriterCmd {
    Line { text: String, sync: bool },
    Close,
}

/// The writer side of a session journal.
pub struct Journal {
    path: PathBuf,
    started: Instant,
    tx: mpsc::Sender<WriterCmd>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Reopens an existing journal for appending after cutting it to `valid_len` bytes (the
    /// intact prefix [`read_events`] reported), so a torn last line is dropped rather than
    /// left in the middle of the file.
    pub fn reopen(dir: &Path, valid_len: u64) -> Result<Self, JournalError> {
        let path = dir.join(EVENTS_FILE);
        let file = OpenOptions::new()
            .write(true)
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
        Self::create(dir)
    }

    /// Creates `dir` (and parents) and opens `dir/events.jsonl` for appending.
    pub fn create(dir: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(EVENTS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| JournalError::Open {
                path: path.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("conclave-journal".into())
            .spawn(move || write_loop(file, rx))
            .map_err(|source| JournalError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            started: Instant::now(),
            tx,
            writer: Some(writer),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one event. Never blocks on the disk.
    pub fn record(&self, event: JournalEvent) -> Result<(), JournalError> {
        let sync = event.needs_sync();
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let line = JournalLine {
            t_ms: self.started.elapsed().as_millis() as u64,
            unix_ms,
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
            tracing::error!(%error, "journal could not be closed cleanly");
        }
    }
}

fn write_loop(file: File, rx: mpsc::Receiver<WriterCmd>) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut closing = false;
    while !closing {
        // Block for the first command, then take everything already queued (group commit).
        let Ok(first) = rx.recv() else { break };
        let mut sync = false;
        let mut next = Some(first);
        while let Some(cmd) = next {
            match cmd {
                WriterCmd::Line { text, sync: wants } => {
                    out.write_all(text.as_bytes())?;
                    sync |= wants;
                }
                WriterCmd::Close => {
                    closing = true;
                    sync = true;
                }
            }
            next = rx.try_recv().ok();
        }
        out.flush()?;
        if sync {
            out.get_ref().sync_data()?;
        }
    }
    out.flush()?;
    out.get_ref().sync_data()
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
                agent: "a".into(),
                turn: 1,
                seen_revision: 0,
                decision: Decision::NewAnswer {
                    content: "x\ny".into(),
                },
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
}
