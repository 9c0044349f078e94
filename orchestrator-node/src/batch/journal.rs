//! The batch journal `batch.jsonl` and the results file: both append-only JSON lines, each
//! line written and `fsync`ed before anything that depends on it happens (a task's session
//! starts only after its `started` line is durable; a result goes to the results file only
//! after its `done` line is durable). A crash can tear only the last line of either file; the
//! reader drops a torn last line (and the writer cuts it off before appending), as the session
//! journal does ([`crate::journal`]).
//!
//! Why the result is in the journal too: the journal is the batch's record and the results
//! file a view of it. A crash between the two writes leaves a `done` line whose result is not
//! in the results file yet; the next run appends it (see [`reconcile_results`]), so nothing
//! is lost and nothing is written twice.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The batch journal's file name inside the batch directory.
pub const BATCH_FILE: &str = "batch.jsonl";

/// One line of the batch journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BatchEvent {
    /// A run of the batch began (one per invocation).
    RunStarted {
        unix_ms: u64,
        tasks_file: String,
        tasks: usize,
        concurrency: u32,
    },
    /// The tasks this run will work on (those not done yet).
    Queued { ids: Vec<String> },
    /// A task's session begins (`attempt` counts from 1 over all runs).
    Started {
        id: String,
        session: String,
        attempt: u32,
    },
    /// A task finished; `result` is its line of the results file.
    Done { id: String, result: Value },
    /// A task failed; a later run tries it again.
    Failed {
        id: String,
        session: String,
        error: String,
    },
}

/// Where a task stands according to the journal.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    /// Its session started and never finished: resume it.
    Started {
        session: String,
        attempt: u32,
    },
    Done {
        result: Value,
    },
    Failed {
        session: String,
        attempt: u32,
        error: String,
    },
}

/// An append-only JSON-lines file whose every append is synced before it returns.
#[derive(Debug)]
pub struct SyncedLines {
    path: PathBuf,
    file: Mutex<File>,
}

impl SyncedLines {
    /// Opens (creating) `path` for appending, cutting a torn last line off first.
    pub fn open(path: &Path) -> io::Result<Self> {
        let valid = match std::fs::read(path) {
            Ok(bytes) => bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        file.set_len(valid as u64)?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and syncs it. Blocking: call from a blocking context.
    pub fn append(&self, value: &impl Serialize) -> io::Result<()> {
        let mut text = serde_json::to_string(value)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(text.as_bytes())?;
        file.sync_data()
    }
}

/// Reads JSON lines, skipping a torn (unterminated or unparsable) last line. A damaged line
/// elsewhere is an error naming it.
pub fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&text[..complete]);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(value) => out.push(value),
            Err(_) if index + 1 == lines.len() => break,
            Err(e) => {
                return Err(format!(
                    "{} is damaged at line {}: {e}; it was not written by conclave batch, or the disk lost data",
                    path.display(),
                    index + 1
                ));
            }
        }
    }
    Ok(out)
}

/// Replays the journal into each task's state.
pub fn replay(events: &[BatchEvent]) -> HashMap<String, TaskState> {
    let mut states = HashMap::new();
    for event in events {
        match event {
            BatchEvent::Started {
                id,
                session,
                attempt,
            } => {
                states.insert(
                    id.clone(),
                    TaskState::Started {
                        session: session.clone(),
                        attempt: *attempt,
                    },
                );
            }
            BatchEvent::Done { id, result } => {
                states.insert(
                    id.clone(),
                    TaskState::Done {
                        result: result.clone(),
                    },
                );
            }
            BatchEvent::Failed { id, session, error } => {
                let attempt = match states.get(id) {
                    Some(TaskState::Started { attempt, .. }) => *attempt,
                    _ => 1,
                };
                states.insert(
                    id.clone(),
                    TaskState::Failed {
                        session: session.clone(),
                        attempt,
                        error: error.clone(),
                    },
                );
            }
            BatchEvent::RunStarted { .. } | BatchEvent::Queued { .. } => {}
        }
    }
    states
}

/// Appends to the results file every done task whose result line is not there yet (a crash
/// came between the journal's `done` and the results file). Returns how many were added.
pub fn reconcile_results(
    results: &SyncedLines,
    states: &HashMap<String, TaskState>,
    order: &[String],
) -> Result<usize, String> {
    let present: HashSet<String> = read_lines::<Value>(results.path())?
        .into_iter()
        .filter_map(|line| line.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let mut added = 0;
    for id in order {
        if let Some(TaskState::Done { result }) = states.get(id)
            && !present.contains(id)
        {
            results
                .append(result)
                .map_err(|e| format!("cannot write {}: {e}", results.path().display()))?;
            added += 1;
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_before_appending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(BATCH_FILE);
        std::fs::write(
            &path,
            "{\"event\":\"queued\",\"ids\":[\"a\"]}\n{\"event\":\"started\",\"id\":\"a\",\"sess",
        )
        .expect("write");
        let events: Vec<BatchEvent> = read_lines(&path).expect("reads");
        assert_eq!(events.len(), 1);
        let lines = SyncedLines::open(&path).expect("opens");
        lines
            .append(&BatchEvent::Failed {
                id: "a".into(),
                session: "s".into(),
                error: "e".into(),
            })
            .expect("appends");
        let events: Vec<BatchEvent> = read_lines(&path).expect("reads");
        assert_eq!(
            events.len(),
            2,
            "the torn line was cut, the new one is whole"
        );
    }

    #[test]
    fn a_damaged_middle_line_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(BATCH_FILE);
        std::fs::write(&path, "garbage\n{\"event\":\"queued\",\"ids\":[]}\n").expect("write");
        let error = read_lines::<BatchEvent>(&path).expect_err("damaged");
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn done_results_missing_from_the_results_file_are_appended_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let results = SyncedLines::open(&dir.path().join("r.jsonl")).expect("opens");
        results.append(&json!({"id": "a"})).expect("appends");
        let events = vec![
            BatchEvent::Done {
                id: "a".into(),
                result: json!({"id": "a"}),
            },
            BatchEvent::Started {
                id: "b".into(),
                session: "b".into(),
                attempt: 1,
            },
            BatchEvent::Done {
                id: "b".into(),
                result: json!({"id": "b"}),
            },
        ];
        let states = replay(&events);
        let order = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(reconcile_results(&results, &states, &order), Ok(1));
        assert_eq!(reconcile_results(&results, &states, &order), Ok(0));
        let lines: Vec<Value> = read_lines(results.path()).expect("reads");
        assert_eq!(lines.len(), 2);
    }
}
