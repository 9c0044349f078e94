//! Capturing a workspace: walk `cwd`, list every regular file with its size and SHA-256, and
//! read the bytes, within the agent's `snapshot_max_files` and `snapshot_max_bytes`.
//!
//! The rules (MassGen copies the workspace; these make the copy exact and bounded):
//! - Regular files are captured, at any depth, in path order. Empty directories are not
//!   (a snapshot is a set of files).
//! - Symbolic links are never followed, whether they point inside or outside the workspace:
//!   following one could copy a file the agent may not read, or loop. Each is listed in the
//!   manifest's `skipped` entries ("symbolic link, not followed"), and so in the journal.
//!   Other special files (sockets, FIFOs, devices) are skipped and listed the same way.
//! - A path that is not valid UTF-8 cannot be named on the wire: the capture is refused,
//!   naming it (lossily), rather than leaving the file out.
//! - Over a limit, the capture stops and is refused with an error naming the key, the limit
//!   and what was found: never a partial snapshot.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use conclave_protocol::snapshot::{SkippedEntry, SnapshotFile, SnapshotManifest, hex};
use conclave_protocol::tools::WorkspaceLimits;
use sha2::{Digest, Sha256};

use super::SnapshotError;

/// A captured workspace: its manifest and the files' bytes, concatenated in manifest order.
#[derive(Debug, Clone)]
pub struct Captured {
    pub manifest: SnapshotManifest,
    pub data: Vec<u8>,
}

/// Captures `cwd` (created if missing: an agent that wrote nothing has an empty snapshot).
pub fn capture(cwd: &Path, limits: &WorkspaceLimits) -> Result<Captured, SnapshotError> {
    fs::create_dir_all(cwd).map_err(|e| SnapshotError::io("create the workspace", cwd, e))?;
    let mut found = Found::default();
    walk(cwd, cwd, limits, &mut found)?;
    found.files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut files = Vec::with_capacity(found.files.len());
    let mut data = Vec::with_capacity(usize::try_from(found.bytes).unwrap_or(0));
    for (relative, path) in found.files {
        let start = data.len();
        let file = fs::File::open(&path).map_err(|e| SnapshotError::io("read", &path, e))?;
        // Read at most one byte past the budget: a file that grew since the walk is caught.
        let budget = limits.snapshot_max_bytes - start as u64;
        file.take(budget + 1)
            .read_to_end(&mut data)
            .map_err(|e| SnapshotError::io("read", &path, e))?;
        if data.len() as u64 > limits.snapshot_max_bytes {
            return Err(SnapshotError::TooLarge {
                limit: limits.snapshot_max_bytes,
                at_least: data.len() as u64,
            });
        }
        let bytes = &data[start..];
        files.push(SnapshotFile {
            path: relative,
            size: bytes.len() as u64,
            sha256: hex(&Sha256::digest(bytes)),
        });
    }
    Ok(Captured {
        manifest: SnapshotManifest::new(files, found.skipped),
        data,
    })
}

/// What the walk has found so far.
#[derive(Default)]
struct Found {
    files: Vec<(String, PathBuf)>,
    skipped: Vec<SkippedEntry>,
    /// The listed files' sizes at walk time.
    bytes: u64,
}

fn walk(
    root: &Path,
    dir: &Path,
    limits: &WorkspaceLimits,
    found: &mut Found,
) -> Result<(), SnapshotError> {
    let entries = fs::read_dir(dir).map_err(|e| SnapshotError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SnapshotError::io("list", dir, e))?;
        let path = entry.path();
        let relative = relative_name(root, &path)?;
        // `file_type` does not follow symbolic links.
        let kind = entry
            .file_type()
            .map_err(|e| SnapshotError::io("inspect", &path, e))?;
        if kind.is_symlink() {
            found.skipped.push(SkippedEntry {
                path: relative,
                reason: "symbolic link, not followed".into(),
            });
        } else if kind.is_dir() {
            walk(root, &path, limits, found)?;
        } else if kind.is_file() {
            if found.files.len() as u64 >= u64::from(limits.snapshot_max_files) {
                return Err(SnapshotError::TooManyFiles {
                    limit: limits.snapshot_max_files,
                });
            }
            let size = entry
                .metadata()
                .map_err(|e| SnapshotError::io("inspect", &path, e))?
                .len();
            found.bytes = found.bytes.saturating_add(size);
            if found.bytes > limits.snapshot_max_bytes {
                return Err(SnapshotError::TooLarge {
                    limit: limits.snapshot_max_bytes,
                    at_least: found.bytes,
                });
            }
            found.files.push((relative, path));
        } else {
            found.skipped.push(SkippedEntry {
                path: relative,
                reason: "special file (socket, FIFO or device), not copied".into(),
            });
        }
    }
    Ok(())
}

/// `path` relative to `root`, `/`-separated; refused when not UTF-8.
fn relative_name(root: &Path, path: &Path) -> Result<String, SnapshotError> {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let mut parts = Vec::new();
    for part in relative.components() {
        match part.as_os_str().to_str() {
            Some(text) => parts.push(text.to_owned()),
            None => {
                return Err(SnapshotError::NotUtf8 {
                    path: relative.to_string_lossy().into_owned(),
                });
            }
        }
    }
    Ok(parts.join("/"))
}
