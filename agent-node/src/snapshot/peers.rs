//! Showing peers' snapshots: the agent's peers directory mirrors the current answers'
//! snapshots, one read-only directory per answer label (`<peers_dir>/agent1.1/...`).
//!
//! Where it runs, and why: on the node that runs the agent, at the start of every turn and at
//! every injection of newer answers, from the snapshot list in the `TurnSpec`. The agent's node
//! is the only one that can write its file system; the orchestrator only names what should be
//! there. The bytes come from a [`SnapshotSource`]: the orchestrator's own store for an agent in
//! the orchestrator process, the node's cache (filled over the cluster) on an agent node.
//!
//! The peers directory belongs to conclave: anything in it that is not a current answer's
//! snapshot is removed (a superseded answer's snapshot, leftovers of an earlier session).
//! Labels never change content within a session, so a label already shown is left alone; the
//! first sync of an agent's life starts from an empty directory. A snapshot is copied into a
//! hidden `.incoming-<label>` directory, made read-only (files 0444, directories 0555), then
//! renamed into place, so a peer's directory is never seen half-copied.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use conclave_protocol::snapshot::{PeerSnapshot, SnapshotManifest};
use futures::future::BoxFuture;

use super::SnapshotError;
use super::unpack::remove_tree;

/// Where an agent's node finds the files of a peer snapshot.
pub trait SnapshotSource: Send + Sync {
    /// A directory holding the snapshot's files, complete and checked against its manifest.
    fn locate<'a>(
        &'a self,
        snapshot: &'a PeerSnapshot,
    ) -> BoxFuture<'a, Result<PathBuf, SnapshotError>>;
}

/// The orchestrator's store of answer snapshots (`<root>/<label>/`), for agents in the
/// orchestrator process: the files are already there, checked when they arrived.
#[derive(Debug, Clone)]
pub struct StoreSource {
    pub root: PathBuf,
}

impl SnapshotSource for StoreSource {
    fn locate<'a>(
        &'a self,
        snapshot: &'a PeerSnapshot,
    ) -> BoxFuture<'a, Result<PathBuf, SnapshotError>> {
        Box::pin(async move {
            let dir = self.root.join(snapshot.label.to_string());
            if dir.is_dir() || snapshot.manifest.files.is_empty() {
                Ok(dir)
            } else {
                Err(SnapshotError::Unavailable(format!(
                    "the snapshot of {} is not in {}",
                    snapshot.label,
                    self.root.display()
                )))
            }
        })
    }
}

/// What one agent's peers directory shows: label → digest. Empty at the start of the agent's
/// life, so its first sync clears the directory.
#[derive(Debug, Default)]
pub struct Shown {
    labels: HashMap<String, String>,
}

/// Brings `peers_dir` to exactly `snapshots` (see the module docs). `located` gives, for each
/// snapshot in order, the directory its files are in.
pub fn sync_peers(
    peers_dir: &Path,
    shown: &mut Shown,
    snapshots: &[(PeerSnapshot, PathBuf)],
) -> Result<(), SnapshotError> {
    fs::create_dir_all(peers_dir).map_err(|e| SnapshotError::io("create", peers_dir, e))?;
    let wanted: HashMap<String, &Arc<SnapshotManifest>> = snapshots
        .iter()
        .map(|(s, _)| (s.label.to_string(), &s.manifest))
        .collect();
    let entries = fs::read_dir(peers_dir).map_err(|e| SnapshotError::io("list", peers_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SnapshotError::io("list", peers_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let current = wanted
            .get(&name)
            .is_some_and(|m| shown.labels.get(&name) == Some(&m.digest));
        if !current {
            remove_tree(&entry.path())?;
            shown.labels.remove(&name);
        }
    }
    shown.labels.retain(|label, _| wanted.contains_key(label));
    for (snapshot, source) in snapshots {
        let label = snapshot.label.to_string();
        if shown.labels.contains_key(&label) {
            continue;
        }
        let incoming = peers_dir.join(format!(".incoming-{label}"));
        remove_tree(&incoming)?;
        copy_read_only(source, &incoming, &snapshot.manifest)?;
        let target = peers_dir.join(&label);
        fs::rename(&incoming, &target).map_err(|e| SnapshotError::io("rename", &incoming, e))?;
        shown.labels.insert(label, snapshot.manifest.digest.clone());
    }
    Ok(())
}

/// Copies the manifest's files from `source` to `target` and makes the copy read-only.
fn copy_read_only(
    source: &Path,
    target: &Path,
    manifest: &SnapshotManifest,
) -> Result<(), SnapshotError> {
    use std::os::unix::fs::PermissionsExt;
    manifest.check()?;
    fs::create_dir_all(target).map_err(|e| SnapshotError::io("create", target, e))?;
    let mut dirs = vec![target.to_path_buf()];
    for file in &manifest.files {
        let from = source.join(&file.path);
        let to = target.join(&file.path);
        if let Some(parent) = to.parent()
            && parent != target
        {
            fs::create_dir_all(parent).map_err(|e| SnapshotError::io("create", parent, e))?;
            dirs.push(parent.to_path_buf());
        }
        let copied = fs::copy(&from, &to).map_err(|e| SnapshotError::io("copy", &from, e))?;
        if copied != file.size {
            return Err(SnapshotError::Altered {
                file: file.path.clone(),
                why: format!("it is {copied} bytes, the manifest says {}", file.size),
            });
        }
        fs::set_permissions(&to, fs::Permissions::from_mode(0o444))
            .map_err(|e| SnapshotError::io("protect", &to, e))?;
    }
    // Deepest first, so a parent is made read-only after its children are in.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        // Intermediate directories created by `create_dir_all` above are covered: each file's
        // parent is listed, and every ancestor up to `target` is some file's parent or the
        // parent of such a directory.
        let mut current = dir.as_path();
        loop {
            fs::set_permissions(current, fs::Permissions::from_mode(0o555))
                .map_err(|e| SnapshotError::io("protect", current, e))?;
            match current.parent() {
                Some(parent) if parent.starts_with(target) && parent != current => {
                    current = parent;
                }
                _ => break,
            }
        }
    }
    Ok(())
}
