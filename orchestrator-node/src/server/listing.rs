//! `GET /sessions`: the sessions this server runs or ran, and those found on disk in its
//! session directory (an earlier server's, the CLI's, ones this server forgot), newest first,
//! one page at a time.
//!
//! * **Bounded.** `?limit=N` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) and
//!   `?offset=M`; the reply holds `total` and `next_offset` (`null` on the last page). The scan
//!   of the directory reads names and metadata only, of at most [`MAX_SCANNED`] entries; only
//!   the sessions on the page are opened, and of each journal only its first line (the
//!   question, the start) and its last [`TAIL_BYTES`] (how it ended).
//! * **Inside the session directory only.** An entry is a session when its name is a valid
//!   session id, it is a directory and not a symlink, and its journal is a regular file (not a
//!   symlink, opened with `O_NOFOLLOW`) whose first line is a `session_started` event. Anything
//!   else (a foreign folder, a file, a symlink, a journal that does not start like one, an
//!   unreadable one) is skipped, never an error: `total` counts what looked like a session
//!   before it was opened, so a page may hold fewer rows than `limit`.
//! * **Order.** By start, newest first: this server's sessions by when they were submitted,
//!   the others by their journal's creation time (its modification time on a file system that
//!   keeps none). Ties by id.
//! * **State.** A session on disk is `done` (its journal has an end: reason, exit code, winner)
//!   or `unfinished` (its orchestrator stopped first; `POST /sessions/{id}/resume` continues
//!   it, unless another process is still running it). Each row says `"source": "disk"`.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use conclave_protocol::SessionId;
use serde_json::{Value, json};

use super::SessionEntry;
use crate::journal::EVENTS_FILE;

/// Rows per page when the request does not say.
pub const DEFAULT_LIMIT: usize = 50;
/// The most rows one page may ask for.
pub const MAX_LIMIT: usize = 500;
/// Directory entries looked at, at most: a directory larger than this lists its first ones.
pub const MAX_SCANNED: usize = 100_000;
/// The longest first journal line read (it holds the session's config).
const MAX_FIRST_LINE: u64 = 4 << 20;
/// How much of a journal's end is read to find how the session ended.
pub const TAIL_BYTES: u64 = 64 << 10;

/// The journal of session `id` under `root`, when `id` is a valid session id, its directory is
/// a real directory (not a symlink) and its journal a regular file (not a symlink).
pub fn own_journal(root: &Path, id: &str) -> Option<PathBuf> {
    let session = SessionId::parse(id).ok()?;
    let dir = root.join(session.as_str());
    let is_dir = std::fs::symlink_metadata(&dir).ok()?.is_dir();
    let journal = dir.join(EVENTS_FILE);
    let is_file = std::fs::symlink_metadata(&journal).ok()?.is_file();
    (is_dir && is_file).then_some(journal)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The sessions under `root` (see the module docs): id and start time (unix ms).
fn scan(root: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.take(MAX_SCANNED).flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // `DirEntry::file_type` does not follow a symlink.
        if SessionId::parse(&name).is_err() || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(entry.path().join(EVENTS_FILE)) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let started = meta.created().or_else(|_| meta.modified()).map(unix_ms);
        found.push((name, started.unwrap_or(0)));
    }
    found
}

/// A session on disk as a list row, from its journal's first line and end; `None` when it
/// does not look like a journal.
fn summary(root: &Path, id: &str) -> Option<Value> {
    let path = own_journal(root, id)?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    let len = file.metadata().ok()?.len();
    let mut first = Vec::new();
    BufReader::new((&file).take(MAX_FIRST_LINE))
        .read_until(b'\n', &mut first)
        .ok()?;
    let started: Value = serde_json::from_slice(first.trim_ascii_end()).ok()?;
    if started["type"] != "session_started" {
        return None;
    }
    let mut row = json!({
        "session": id,
        "source": "disk",
        "question": started["question"].as_str()?,
        "started_at_ms": started["unix_ms"],
        "history": started["history"].as_array().map_or(0, Vec::len),
        "state": "unfinished",
    });
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut tail).ok()?;
    let mut result = json!({"session": id});
    let mut ended = false;
    for line in tail.split(|b| *b == b'\n') {
        let Ok(event) = serde_json::from_slice::<Value>(line) else {
            continue; // the first piece may start mid-line; a torn last line
        };
        match event["type"].as_str() {
            Some("final_answer") => {
                result["winner"] = event["winner"].clone();
                result["label"] = event["label"].clone();
            }
            Some("session_ended") => {
                ended = true;
                for key in ["reason", "exit_code", "cost_usd"] {
                    result[key] = event[key].clone();
                }
                result["usage"] = json!({
                    "input_tokens": event["input_tokens"],
                    "output_tokens": event["output_tokens"],
                });
            }
            _ => {}
        }
    }
    if ended {
        row["state"] = json!("done");
        row["result"] = result;
    }
    Some(row)
}

/// One page of every session, the server's (`known`) and those on disk under `root`.
pub fn page(known: &[Arc<SessionEntry>], root: &Path, offset: usize, limit: usize) -> Value {
    enum Row<'a> {
        Known(&'a SessionEntry),
        Disk(String),
    }
    let ids: HashSet<&str> = known.iter().map(|entry| entry.id.as_str()).collect();
    let mut rows: Vec<(u64, &str, Row<'_>)> = known
        .iter()
        .map(|entry| (unix_ms(entry.started), entry.id.as_str(), Row::Known(entry)))
        .collect();
    let on_disk: Vec<(String, u64)> = scan(root)
        .into_iter()
        .filter(|(id, _)| !ids.contains(id.as_str()))
        .collect();
    rows.extend(
        on_disk
            .iter()
            .map(|(id, started)| (*started, id.as_str(), Row::Disk(id.clone()))),
    );
    rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let total = rows.len();
    let sessions: Vec<Value> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .filter_map(|(_, _, row)| match row {
            Row::Known(entry) => Some(entry.status()),
            Row::Disk(id) => summary(root, &id),
        })
        .collect();
    let next = offset.saturating_add(limit);
    json!({
        "sessions": sessions,
        "total": total,
        "offset": offset,
        "limit": limit,
        "next_offset": (next < total).then_some(next),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(root: &Path, id: &str, lines: &[Value]) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.join(EVENTS_FILE), text).unwrap();
    }

    fn started(question: &str, ms: u64) -> Value {
        json!({"t_ms": 0, "unix_ms": ms, "type": "session_started", "question": question, "history": [["q0", "a0"]]})
    }

    #[test]
    fn sessions_on_disk_are_listed_and_anything_else_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sessions");
        journal(
            &root,
            "ended",
            &[
                started("Why?", 5),
                json!({"type": "final_answer", "winner": "alpha", "label": "agent1.1", "content": "x"}),
                json!({"type": "session_ended", "reason": "consensus", "exit_code": 0, "input_tokens": 3, "output_tokens": 4}),
            ],
        );
        journal(&root, "open", &[started("How?", 6)]);
        // Foreign things: a folder without a journal, a journal that is not one, a file, a
        // symlink to a session outside, a name that is no session id.
        std::fs::create_dir_all(root.join("photos")).unwrap();
        journal(&root, "garbage", &[json!({"type": "vote_accepted"})]);
        std::fs::write(root.join("garbage2.txt"), "x").unwrap();
        std::fs::create_dir_all(root.join("junk")).unwrap();
        std::fs::write(root.join("junk").join(EVENTS_FILE), "not json\n").unwrap();
        journal(dir.path(), "outside", &[started("Secret?", 9)]);
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("linked")).unwrap();
        std::fs::create_dir_all(root.join("linkedfile")).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("outside").join(EVENTS_FILE),
            root.join("linkedfile").join(EVENTS_FILE),
        )
        .unwrap();
        std::fs::create_dir_all(root.join(".hidden")).unwrap();

        let listed = page(&[], &root, 0, 10);
        let rows = listed["sessions"].as_array().unwrap();
        let mut ids: Vec<&str> = rows.iter().filter_map(|r| r["session"].as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["ended", "open"], "{listed}");
        let ended = rows.iter().find(|r| r["session"] == "ended").unwrap();
        assert_eq!(ended["state"], "done");
        assert_eq!(ended["question"], "Why?");
        assert_eq!(ended["history"], 1);
        assert_eq!(ended["result"]["reason"], "consensus");
        assert_eq!(ended["result"]["winner"], "alpha");
        let open = rows.iter().find(|r| r["session"] == "open").unwrap();
        assert_eq!(open["state"], "unfinished");
        assert!(!listed.to_string().contains("Secret?"));
        assert!(own_journal(&root, "linked").is_none());
        assert!(own_journal(&root, "linkedfile").is_none());
        assert!(own_journal(&root, "../outside").is_none());

        // Paging: limit and offset, and where the next page starts.
        let first = page(&[], &root, 0, 1);
        assert_eq!(first["sessions"].as_array().unwrap().len(), 1);
        assert_eq!(first["next_offset"], 1);
        let none = page(&[], &root.join("missing"), 0, 10);
        assert_eq!(none["total"], 0);
        assert_eq!(none["next_offset"], Value::Null);
    }
}
