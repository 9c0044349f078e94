//! Workspace snapshots: what an answer's files look like on the wire and in the journal.
//!
//! When an agent with a workspace submits `new_answer`, the node that runs it captures the
//! workspace (`cwd`) as a [`SnapshotManifest`] (every regular file with its relative path, size
//! and SHA-256) plus the files' bytes, concatenated in manifest order. The manifest travels
//! first (`AgentReport::SnapshotBegin`), the bytes after it in chunks of at most
//! [`SNAPSHOT_CHUNK_BYTES`] (`AgentReport::SnapshotChunk`), then the decision. Peers get the
//! same bytes back the same way when their node asks for them (`ToHost::PeerSnapshotChunk`).
//! The receiver checks every file's size and hash against the manifest, so a snapshot is
//! either complete and exact or refused: never half-copied.
//!
//! The manifest's [`SnapshotManifest::digest`] (SHA-256 over its file list) names the content:
//! two answers with the same files have the same digest, which is what agent nodes cache by.
//!
//! Paths are relative, `/`-separated, without `.`, `..` or empty components
//! ([`check_relative_path`]): a manifest from another node can never name a file outside the
//! directory it is unpacked into.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::AnswerLabel;

/// The most bytes of snapshot data in one chunk (1 MiB), well under the frame limit.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Relative to the workspace, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// Something in the workspace that is not in the snapshot, and why (symbolic links are not
/// followed, special files are not copied). Listed so nothing is left out silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedEntry {
    pub path: String,
    pub reason: String,
}

/// The file list of one answer's workspace snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// Sorted by path; the bytes travel in this order.
    pub files: Vec<SnapshotFile>,
    pub skipped: Vec<SkippedEntry>,
    /// The sum of the files' sizes.
    pub total_bytes: u64,
    /// Hex SHA-256 over the file list (see [`SnapshotManifest::digest_of`]).
    pub digest: String,
}

/// A current answer's snapshot, as a turn names it to the agent (`TurnSpec::snapshots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSnapshot {
    pub label: AnswerLabel,
    pub manifest: Arc<SnapshotManifest>,
}

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the snapshot names the path {path:?}, which {why}")]
    BadPath { path: String, why: &'static str },
    #[error("the snapshot lists {path:?} twice")]
    Duplicate { path: String },
    #[error("the snapshot's sizes add up to {sum} bytes, not the {total} bytes it states")]
    Total { sum: u64, total: u64 },
    #[error("the snapshot's digest does not match its file list")]
    Digest,
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Checks that `path` is a plain relative path (`a/b.txt`): no leading `/`, no `.`, `..` or
/// empty components, no backslash or NUL, at most 4096 bytes.
pub fn check_relative_path(path: &str) -> Result<(), ManifestError> {
    let bad = |why| {
        Err(ManifestError::BadPath {
            path: path.to_owned(),
            why,
        })
    };
    if path.is_empty() || path.len() > 4096 {
        return bad("is empty or longer than 4096 bytes");
    }
    if path.contains('\\') || path.contains('\0') {
        return bad("contains a backslash or a NUL byte");
    }
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("has an empty, `.` or `..` component");
    }
    Ok(())
}

impl SnapshotManifest {
    /// Builds a manifest from its files (sorted here) and skipped entries.
    pub fn new(mut files: Vec<SnapshotFile>, skipped: Vec<SkippedEntry>) -> Self {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let total_bytes = files.iter().map(|f| f.size).sum();
        let digest = Self::digest_of(&files);
        SnapshotManifest {
            files,
            skipped,
            total_bytes,
            digest,
        }
    }

    /// SHA-256 over `path NUL size NUL sha256 LF` of every file, in order.
    pub fn digest_of(files: &[SnapshotFile]) -> String {
        let mut hasher = Sha256::new();
        for file in files {
            hasher.update(file.path.as_bytes());
            hasher.update([0]);
            hasher.update(file.size.to_string().as_bytes());
            hasher.update([0]);
            hasher.update(file.sha256.as_bytes());
            hasher.update(b"\n");
        }
        hex(&hasher.finalize())
    }

    /// Checks a manifest that came from elsewhere: safe paths, no duplicates, sizes that add
    /// up, and a digest that matches.
    pub fn check(&self) -> Result<(), ManifestError> {
        let mut seen = std::collections::HashSet::new();
        let mut sum = 0u64;
        for file in &self.files {
            check_relative_path(&file.path)?;
            if !seen.insert(file.path.as_str()) {
                return Err(ManifestError::Duplicate {
                    path: file.path.clone(),
                });
            }
            sum = sum.saturating_add(file.size);
        }
        // A file and a directory of the same name cannot both exist.
        for file in &self.files {
            let mut prefix = file.path.as_str();
            while let Some((parent, _)) = prefix.rsplit_once('/') {
                if seen.contains(parent) {
                    return Err(ManifestError::BadPath {
                        path: file.path.clone(),
                        why: "lies under another listed file",
                    });
                }
                prefix = parent;
            }
        }
        if sum != self.total_bytes {
            return Err(ManifestError::Total {
                sum,
                total: self.total_bytes,
            });
        }
        if Self::digest_of(&self.files) != self.digest {
            return Err(ManifestError::Digest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> SnapshotFile {
        SnapshotFile {
            path: path.into(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
        }
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn manifests_are_sorted_and_checked() {
        let manifest = SnapshotManifest::new(vec![file("b/c.txt", b"x"), file("a", b"yy")], vec![]);
        assert_eq!(manifest.files[0].path, "a");
        assert_eq!(manifest.total_bytes, 3);
        manifest.check().unwrap();

        let mut altered = manifest.clone();
        altered.files[0].sha256 = sha256_hex(b"zz");
        assert_eq!(altered.check(), Err(ManifestError::Digest));

        let mut wrong_total = manifest.clone();
        wrong_total.total_bytes = 9;
        assert!(matches!(
            wrong_total.check(),
            Err(ManifestError::Total { .. })
        ));

        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a\\b"] {
            let manifest = SnapshotManifest::new(vec![file(bad, b"x")], vec![]);
            assert!(
                matches!(manifest.check(), Err(ManifestError::BadPath { .. })),
                "{bad:?} accepted"
            );
        }
        let nested = SnapshotManifest::new(vec![file("a", b"x"), file("a/b", b"y")], vec![]);
        assert!(matches!(nested.check(), Err(ManifestError::BadPath { .. })));
        let twice = SnapshotManifest::new(vec![file("a", b"x"), file("a", b"x")], vec![]);
        assert!(matches!(
            twice.check(),
            Err(ManifestError::Duplicate { .. })
        ));
    }
}
