//! The server's sessions: state, result, and the live event feed HTTP clients watch.
//!
//! Each session's display is the `json` display (the same objects `--display json` prints)
//! written into a [`HubWriter`], which splits it into lines and publishes each one. Journal
//! events (answers, votes, restarts, the end) are also kept, so a client that connects late
//! first gets everything that happened and then the live feed; stream chunks are only sent
//! live (they are many, and the journal is the record). The snapshot and the subscription are
//! taken under one lock, so a watcher sees every kept event exactly once.
//!
//! Once a session has ended, its kept events are dropped from memory (a long-lived server runs
//! long batches): a watcher then gets them from the journal on disk, which holds the same
//! events and more (the session's start with its config, usage, the end), followed by the
//! `final` object, the one line kept.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Finished sessions remembered in memory; older ones are forgotten (their journals remain).
pub const MAX_FINISHED_KEPT: usize = 1000;
/// Live items buffered per session (shared by its watchers) before a slow watcher is told it
/// lagged. Allocated up front, so only sessions someone watches get one.
const LIVE_BUFFER: usize = 1024;
/// A display line longer than this is cut off rather than buffered without bound.
const MAX_LINE_BYTES: usize = 32 << 20;

/// One session the server runs or ran.
pub struct SessionEntry {
    pub id: String,
    /// The session's directory (its journal).
    pub dir: PathBuf,
    pub question: String,
    /// The earlier (question, final answer) turns its agents were given.
    pub history: Vec<(String, String)>,
    /// The conversation this session is a turn of: its own id for a first turn, the first
    /// session's for a continued one (see [`super::conversations`]).
    pub conversation: String,
    pub started: SystemTime,
    /// Cancelling it interrupts the session: it ends with its best answer so far.
    pub cancel: CancellationToken,
    /// Cancelled once the session has ended and its result is set.
    pub done: CancellationToken,
    /// Set when the session got a slot and began (it waits in a queue before that when the
    /// server already runs `--max-sessions` of them).
    pub begun: std::sync::atomic::AtomicBool,
    /// The session's own orchestrator timeout (bounds `?wait=true`).
    pub timeout: Duration,
    state: Mutex<EntryState>,
}

struct EntryState {
    /// The journal events and the final answer, for watchers that connect later; emptied
    /// when the session ends (the journal has them).
    kept: Vec<Arc<str>>,
    /// How many events were kept before they were dropped.
    kept_count: usize,
    /// The `final` object, kept after the session has ended.
    final_line: Option<Arc<str>>,
    /// The live feed, made when the first watcher comes; `None` again once the session has
    /// ended (watchers then see the end).
    live: Option<broadcast::Sender<Arc<str>>>,
    result: Option<Value>,
}

/// What a watcher gets: everything kept so far, then the live feed (if still running); for
/// a session that has ended, its journal to read and the final object.
pub struct Watch {
    pub kept: Vec<Arc<str>>,
    pub live: Option<broadcast::Receiver<Arc<str>>>,
    pub ended: Option<(PathBuf, Option<Arc<str>>)>,
}

impl SessionEntry {
    fn state(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes one display line (a JSON object).
    fn publish(&self, line: Arc<str>) {
        let kind = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
        let mut state = self.state();
        match kind.as_deref() {
            Some("chunk") => {}
            Some("final") => {
                state.final_line = Some(line.clone());
                state.kept.push(line.clone());
            }
            _ => state.kept.push(line.clone()),
        }
        if let Some(live) = &state.live {
            // No receiver is not an error: nobody is watching.
            let _ = live.send(line);
        }
    }

    pub fn watch(&self) -> Watch {
        let mut state = self.state();
        // The feed is made for the first watcher: a session nobody watches (a batch) pays
        // for no buffer.
        if state.result.is_none() && state.live.is_none() {
            state.live = Some(broadcast::channel(LIVE_BUFFER).0);
        }
        let ended = state
            .result
            .is_some()
            .then(|| (self.dir.clone(), state.final_line.clone()));
        Watch {
            kept: state.kept.clone(),
            live: state.live.as_ref().map(|s| s.subscribe()),
            ended,
        }
    }

    pub fn result(&self) -> Option<Value> {
        self.state().result.clone()
    }

    /// The session as `GET /sessions/{id}` shows it.
    pub fn status(&self) -> Value {
        let state = self.state();
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut status = json!({
            "session": self.id,
            "conversation": self.conversation,
            "question": self.question,
            "started_at_ms": started,
            "events": state.kept_count.max(state.kept.len()),
        });
        match &state.result {
            Some(result) => {
                status["state"] = json!("done");
                status["result"] = result.clone();
            }
            None if self.cancel.is_cancelled() => status["state"] = json!("cancelling"),
            None if !self.begun.load(std::sync::atomic::Ordering::Acquire) => {
                status["state"] = json!("queued");
            }
            None => status["state"] = json!("running"),
        }
        status
    }
}

/// All sessions of this server, in submission order.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<SessionEntry>>,
    order: VecDeque<String>,
    finished: VecDeque<String>,
}

impl Registry {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a running session; `None` when the id is taken.
    pub(super) fn insert(
        &self,
        id: &str,
        conversation: &str,
        dir: &Path,
        task: &conclave_protocol::TaskSpec,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Option<Arc<SessionEntry>> {
        let mut inner = self.inner();
        if inner.by_id.contains_key(id) {
            return None;
        }
        let entry = Arc::new(SessionEntry {
            id: id.to_owned(),
            dir: dir.to_owned(),
            question: task.question.clone(),
            history: task.history.clone(),
            conversation: conversation.to_owned(),
            started: SystemTime::now(),
            cancel,
            done: CancellationToken::new(),
            begun: std::sync::atomic::AtomicBool::new(false),
            timeout,
            state: Mutex::new(EntryState {
                kept: Vec::new(),
                kept_count: 0,
                final_line: None,
                live: None,
                result: None,
            }),
        });
        inner.by_id.insert(id.to_owned(), entry.clone());
        inner.order.push_back(id.to_owned());
        Some(entry)
    }

    /// Records a session's result, ends its live feed and forgets the oldest finished
    /// sessions beyond [`MAX_FINISHED_KEPT`].
    pub(super) fn finish(&self, entry: &SessionEntry, result: Value) {
        {
            let mut state = entry.state();
            state.result = Some(result);
            state.live = None;
            state.kept_count = state.kept.len();
            state.kept = Vec::new();
        }
        entry.done.cancel();
        let mut inner = self.inner();
        inner.finished.push_back(entry.id.clone());
        while inner.finished.len() > MAX_FINISHED_KEPT {
            if let Some(old) = inner.finished.pop_front() {
                inner.by_id.remove(&old);
                inner.order.retain(|id| *id != old);
            }
        }
    }

    /// Forgets a finished session (a resumed run takes its place); a running one stays.
    pub(super) fn forget_finished(&self, id: &str) {
        let mut inner = self.inner();
        if inner.finished.iter().any(|f| f == id) {
            inner.finished.retain(|f| f != id);
            inner.by_id.remove(id);
            inner.order.retain(|o| o != id);
        }
    }

    /// A session of `conversation` that has not ended (a turn still running or queued).
    pub fn unfinished_turn(&self, conversation: &str) -> Option<String> {
        let inner = self.inner();
        inner
            .by_id
            .values()
            .find(|entry| entry.conversation == conversation && !entry.done.is_cancelled())
            .map(|entry| entry.id.clone())
    }

    pub fn get(&self, id: &str) -> Option<Arc<SessionEntry>> {
        self.inner().by_id.get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<SessionEntry>> {
        let inner = self.inner();
        inner
            .order
            .iter()
            .filter_map(|id| inner.by_id.get(id).cloned())
            .collect()
    }

    /// Sessions waiting for a slot (not begun, not ended).
    pub fn queued(&self) -> usize {
        self.inner()
            .by_id
            .values()
            .filter(|entry| {
                !entry.begun.load(std::sync::atomic::Ordering::Acquire)
                    && !entry.done.is_cancelled()
            })
            .count()
    }

    pub fn running(&self) -> usize {
        let inner = self.inner();
        inner.by_id.len() - inner.finished.len()
    }
}

/// The writer behind a server session's `json` display: publishes each line.
pub(super) struct HubWriter {
    entry: Arc<SessionEntry>,
    pending: Vec<u8>,
}

impl HubWriter {
    pub(super) fn new(entry: Arc<SessionEntry>) -> HubWriter {
        HubWriter {
            entry,
            pending: Vec::new(),
        }
    }
}

impl Write for HubWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let line = String::from_utf8_lossy(&self.pending);
            if !line.trim().is_empty() {
                self.entry.publish(Arc::from(line.as_ref()));
            }
            self.pending.clear();
        }
        if self.pending.len() + rest.len() <= MAX_LINE_BYTES {
            self.pending.extend_from_slice(rest);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> conclave_protocol::TaskSpec {
        conclave_protocol::TaskSpec {
            question: "q".to_owned(),
            history: Vec::new(),
        }
    }

    fn entry(registry: &Registry, id: &str) -> Arc<SessionEntry> {
        registry
            .insert(
                id,
                id,
                Path::new("/nonexistent"),
                &task(),
                Duration::from_secs(60),
                CancellationToken::new(),
            )
            .unwrap()
    }

    #[test]
    fn a_late_watcher_gets_every_kept_event_once_then_the_live_feed() {
        let registry = Registry::default();
        let session = entry(&registry, "s1");
        let mut writer = HubWriter::new(session.clone());
        // Lines may arrive split across writes.
        writer
            .write_all(b"{\"type\":\"answer_accepted\",\"n\":1}\n{\"type\":\"chu")
            .unwrap();
        writer.write_all(b"nk\",\"text\":\"hi\"}\n").unwrap();
        let mut watch = session.watch();
        assert_eq!(watch.kept.len(), 1, "chunks are live only");
        assert!(watch.kept[0].contains("answer_accepted"));
        writer.write_all(b"{\"type\":\"vote_cast\"}\n").unwrap();
        let live = watch.live.as_mut().unwrap();
        assert!(live.try_recv().unwrap().contains("vote_cast"));
        assert!(live.try_recv().is_err());
        assert_eq!(session.status()["state"], "queued");
        session
            .begun
            .store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(session.status()["state"], "running");
        registry.finish(&session, json!({"exit_code": 0}));
        assert!(session.done.is_cancelled());
        assert!(matches!(
            live.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        let status = session.status();
        assert_eq!(status["state"], "done");
        assert_eq!(status["result"]["exit_code"], 0);
        assert_eq!(status["events"], 2);
        let after = session.watch();
        assert!(after.live.is_none());
        assert!(
            after.kept.is_empty(),
            "an ended session's events are dropped from memory"
        );
        assert_eq!(after.ended.unwrap().0, Path::new("/nonexistent"));
    }

    #[test]
    fn ids_are_unique_and_old_finished_sessions_are_forgotten() {
        let registry = Registry::default();
        let first = entry(&registry, "first");
        assert!(
            registry
                .insert(
                    "first",
                    "first",
                    Path::new("/x"),
                    &task(),
                    Duration::from_secs(60),
                    CancellationToken::new()
                )
                .is_none()
        );
        registry.finish(&first, json!({}));
        for i in 0..MAX_FINISHED_KEPT {
            let e = entry(&registry, &format!("s{i}"));
            registry.finish(&e, json!({}));
        }
        let running = entry(&registry, "running");
        assert!(
            registry.get("first").is_none(),
            "the oldest finished is forgotten"
        );
        assert!(registry.get("s0").is_some());
        assert_eq!(registry.running(), 1);
        assert_eq!(registry.all().len(), MAX_FINISHED_KEPT + 1);
        assert_eq!(registry.all().last().unwrap().id, running.id);
    }
}
