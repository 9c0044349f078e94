//! Conversations that continue: the turns of a multi-turn conversation, kept on disk so a
//! later `conclave --continue` (or `--continue --session-id ID`) picks it up after a restart.
//!
//! **Where.** A conversation is named after the session of its first turn and lives in that
//! session's directory, as `conversation.jsonl`: `<session-dir>/<id>/conversation.jsonl`.
//! Turn N > 1 runs as session `<id>-N`, beside it. Keeping the file inside a session directory
//! (rather than a `conversations/` folder) means no name in `--session-dir` can collide with
//! a session's, and removing a conversation's first session directory removes its history.
//!
//! **What.** One JSON object per line and per turn: the question, the session that answered
//! it, the final answer, the winner and its label, why the session ended, its tokens and cost,
//! and when it ended. The next turn's agents get every earlier (question, final answer) pair as
//! `TaskSpec.history`, as MassGen does; a turn without a final answer is listed but adds
//! nothing to the history.
//!
//! **Durable like the journal.** Append-only; each line is written whole and `fsync`ed before
//! the command returns, and creating the file `fsync`s its directory. A crash can tear only
//! the last line: [`load`] skips a last line that is incomplete or unparsable (and says how
//! many it skipped) instead of failing; a bad line before the last is an error naming the file
//! and line number, never its contents.
//!
//! **Which is "last".** `--continue` without an id picks the conversation whose latest turn
//! ended last (each turn records its end time), so no mutable "last" pointer file can go stale
//! or be torn.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The conversation file's name inside the directory of its first session.
pub const CONVERSATION_FILE: &str = "conversation.jsonl";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub question: String,
    /// The session that answered it.
    pub session: String,
    pub final_answer: Option<String>,
    pub winner: Option<String>,
    pub label: Option<String>,
    /// Why the session ended (`consensus`, `timeout`, ...).
    pub reason: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    /// When the turn ended, unix milliseconds.
    pub unix_ms: u64,
}

/// A conversation read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub turns: Vec<Turn>,
    /// Torn last lines skipped while reading (0 or 1).
    pub torn_lines_skipped: usize,
}

impl Conversation {
    /// The (question, final answer) pairs the next turn's agents get.
    pub fn history(&self) -> Vec<(String, String)> {
        self.turns
            .iter()
            .filter_map(|t| Some((t.question.clone(), t.final_answer.clone()?)))
            .collect()
    }

    /// The session id of the next turn: `<id>-N` for turn N.
    pub fn next_session(&self) -> String {
        format!("{}-{}", self.id, self.turns.len() + 1)
    }

    /// When the latest turn ended (unix ms).
    pub fn last_ms(&self) -> u64 {
        self.turns.iter().map(|t| t.unix_ms).max().unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("cannot read the conversation {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the conversation {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "line {line} of the conversation {path} is not a conversation turn (only a torn last line is skipped); move the file aside to start over"
    )]
    Corrupt { path: PathBuf, line: usize },
    #[error(
        "there is no conversation `{id}` in {root} (a conversation is named after its first session; `conclave sessions` lists them)"
    )]
    NotFound { id: String, root: PathBuf },
    #[error(
        "there is no conversation to continue in {root}; ask a question without --continue first"
    )]
    NoneYet { root: PathBuf },
}

/// The conversation file of conversation `id` under the session root.
pub fn path(root: &Path, id: &str) -> PathBuf {
    root.join(id).join(CONVERSATION_FILE)
}

/// Reads conversation `id`; [`ConversationError::NotFound`] when it has no file.
pub fn load(root: &Path, id: &str) -> Result<Conversation, ConversationError> {
    let path = path(root, id);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ConversationError::NotFound {
                id: id.to_owned(),
                root: root.to_owned(),
            });
        }
        Err(source) => return Err(ConversationError::Read { path, source }),
    };
    let mut lines = Vec::new();
    let mut reader = BufReader::new(file);
    loop {
        let mut line = Vec::new();
        let read =
            reader
                .read_until(b'\n', &mut line)
                .map_err(|source| ConversationError::Read {
                    path: path.clone(),
                    source,
                })?;
        if read == 0 {
            break;
        }
        lines.push(line);
    }
    let mut turns = Vec::new();
    let mut torn = 0;
    let count = lines.len();
    for (index, line) in lines.iter().enumerate() {
        let complete = line.ends_with(b"\n");
        let text = String::from_utf8_lossy(line);
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Turn>(text.trim()) {
            Ok(turn) if complete => turns.push(turn),
            _ if index + 1 == count => torn += 1,
            _ => {
                return Err(ConversationError::Corrupt {
                    path,
                    line: index + 1,
                });
            }
        }
    }
    Ok(Conversation {
        id: id.to_owned(),
        turns,
        torn_lines_skipped: torn,
    })
}

/// Every conversation under the session root, oldest first (by their first turn).
pub fn list(root: &Path) -> Result<Vec<Conversation>, ConversationError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConversationError::Read {
                path: root.to_owned(),
                source,
            });
        }
    };
    let mut conversations = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !entry.path().join(CONVERSATION_FILE).is_file() {
            continue;
        }
        conversations.push(load(root, &name)?);
    }
    conversations.sort_by_key(|c| (c.turns.first().map_or(0, |t| t.unix_ms), c.id.clone()));
    Ok(conversations)
}

/// The conversation whose latest turn ended last.
pub fn latest(root: &Path) -> Result<Conversation, ConversationError> {
    list(root)?
        .into_iter()
        .max_by_key(|c| c.last_ms())
        .ok_or_else(|| ConversationError::NoneYet {
            root: root.to_owned(),
        })
}

/// Appends `turn` to conversation `id` (creating it), written whole and `fsync`ed.
pub fn append(root: &Path, id: &str, turn: &Turn) -> Result<(), ConversationError> {
    let path = path(root, id);
    let write = |source| ConversationError::Write {
        path: path.clone(),
        source,
    };
    let dir = path.parent().unwrap_or(root);
    std::fs::create_dir_all(dir).map_err(write)?;
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(write)?;
    let mut line = serde_json::to_vec(turn).map_err(|e| write(io::Error::other(e)))?;
    line.push(b'\n');
    // One write of the whole line: a crash leaves it whole or torn at the end, never
    // interleaved with another line.
    file.write_all(&line).map_err(write)?;
    file.sync_data().map_err(write)?;
    if created {
        File::open(dir).and_then(|d| d.sync_all()).map_err(write)?;
    }
    Ok(())
}

/// The current time in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `conclave sessions`: a table for people, oldest first.
pub fn table(conversations: &[Conversation]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "DATE (UTC)".to_owned(),
        "TURNS".to_owned(),
        "WINNER".to_owned(),
        "TOKENS".to_owned(),
        "COST".to_owned(),
        "FIRST QUESTION".to_owned(),
    ]];
    for c in conversations {
        let first = c.turns.first();
        let date = first.map_or_else(String::new, |t| utc_minute(t.unix_ms));
        let question = first.map_or_else(String::new, |t| shorten(&t.question, 50));
        let winner = c
            .turns
            .last()
            .map(|t| match (&t.label, &t.winner) {
                (Some(label), Some(winner)) => format!("{winner} ({label})"),
                _ => format!("none ({})", t.reason),
            })
            .unwrap_or_default();
        let tokens: u64 = c
            .turns
            .iter()
            .map(|t| t.input_tokens + t.output_tokens)
            .sum();
        let priced: Vec<f64> = c.turns.iter().filter_map(|t| t.cost_usd).collect();
        let cost = if priced.is_empty() {
            "-".to_owned()
        } else {
            format!("${:.4}", priced.iter().sum::<f64>())
        };
        rows.push([
            c.id.clone(),
            date,
            c.turns.len().to_string(),
            winner,
            tokens.to_string(),
            cost,
            question,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One line of at most `max` characters (newlines become spaces).
fn shorten(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() <= max {
        return flat.to_owned();
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// `YYYY-MM-DD HH:MM` of a unix time in milliseconds (UTC).
fn utc_minute(unix_ms: u64) -> String {
    let time = i64::try_from(unix_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    time.format("%Y-%m-%d %H:%M").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(question: &str, answer: Option<&str>, ms: u64) -> Turn {
        Turn {
            question: question.to_owned(),
            session: "s".to_owned(),
            final_answer: answer.map(str::to_owned),
            winner: answer.map(|_| "alpha".to_owned()),
            label: answer.map(|_| "agent1.1".to_owned()),
            reason: "consensus".to_owned(),
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: Some(0.5),
            unix_ms: ms,
        }
    }

    #[test]
    fn listed_dates_are_utc_minutes() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        // 2000-02-29 23:59:59.999 UTC: a leap day, and the seconds are cut, not rounded.
        assert_eq!(utc_minute(951_868_799_999), "2000-02-29 23:59");
    }

    #[test]
    fn turns_append_and_load_with_their_history() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "c1", &turn("q1", Some("a1"), 1)).unwrap();
        append(dir.path(), "c1", &turn("q2", None, 2)).unwrap();
        append(dir.path(), "c1", &turn("q3", Some("a3"), 3)).unwrap();
        let c = load(dir.path(), "c1").unwrap();
        assert_eq!(c.turns.len(), 3);
        assert_eq!(
            c.history(),
            vec![
                ("q1".to_owned(), "a1".to_owned()),
                ("q3".to_owned(), "a3".to_owned())
            ]
        );
        assert_eq!(c.next_session(), "c1-4");
        let table = table(&[c]);
        assert!(table.contains("c1") && table.contains("45") && table.contains("$1.5000"));
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_an_earlier_bad_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "c", &turn("q1", Some("a1"), 1)).unwrap();
        let file = path(dir.path(), "c");
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"{\"question\": \"q2\", \"sess").unwrap();
        let c = load(dir.path(), "c").unwrap();
        assert_eq!((c.turns.len(), c.torn_lines_skipped), (1, 1));
        f.write_all(b"\n").unwrap();
        append(dir.path(), "c", &turn("q3", Some("a3"), 3)).unwrap();
        let error = load(dir.path(), "c").unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains("sess"), "never echoes the file's contents");
    }

    #[test]
    fn the_latest_conversation_is_the_one_that_ended_last() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            latest(dir.path()),
            Err(ConversationError::NoneYet { .. })
        ));
        append(dir.path(), "old", &turn("q", Some("a"), 1)).unwrap();
        append(dir.path(), "new", &turn("q", Some("a"), 2)).unwrap();
        append(dir.path(), "old", &turn("q", Some("a"), 3)).unwrap();
        assert_eq!(latest(dir.path()).unwrap().id, "old");
        std::fs::create_dir_all(dir.path().join("plain-session")).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 2);
        assert!(matches!(
            load(dir.path(), "nope"),
            Err(ConversationError::NotFound { .. })
        ));
    }
}
