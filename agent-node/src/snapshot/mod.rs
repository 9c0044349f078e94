//! Workspace snapshots on the agent's side: capture the workspace with each answer, and show
//! the current answers' snapshots to the agent in its peers directory.
//!
//! The life of a snapshot (the orchestrator's half is `conclave::snapshots`):
//! 1. **Capture** ([`capture`]): when a coordination turn decides `new_answer`, the node that
//!    runs the agent captures its workspace (`cwd`): a manifest (relative path, size, SHA-256
//!    per file) and the bytes, within `snapshot_max_files` / `snapshot_max_bytes`. Over a
//!    limit, the answer is not submitted: the model reads a corrective message naming the key
//!    and may delete files and answer again (or vote). Nothing is sent half-captured.
//! 2. **Transport** ([`AgentSnapshots::send`]): the manifest (`SnapshotBegin`), then the bytes in
//!    chunks of at most 1 MiB (`SnapshotChunk`), then the `Decided` report, all on the agent's
//!    ordered report channel: in-process for a local agent, cluster frames for an agent on an
//!    agent node. The orchestrator checks every file's size and hash and stores the snapshot
//!    under the answer's label.
//! 3. **Peers** ([`peers`]): each turn names the current answers' snapshots; before the model is
//!    called (and again when newer answers are injected) the agent's peers directory is
//!    brought to exactly that set, read-only, one directory per anonymous label. A node fetches
//!    a snapshot it lacks from the orchestrator once and caches it by digest ([`cache`]).
//!
//! Paths: `cwd` and `peers_dir` come resolved for agents in the orchestrator process; on an
//! agent node a relative one is taken against the node's work directory
//! ([`AgentSnapshots::new`]).

pub mod cache;
pub mod capture;
pub mod peers;
pub mod unpack;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use conclave_protocol::snapshot::{ManifestError, PeerSnapshot, SNAPSHOT_CHUNK_BYTES};
use conclave_protocol::tools::{WorkspaceLimits, WorkspaceSpec};
use conclave_protocol::{AgentReport, TurnId};

use crate::outbox::Outbox;
pub use capture::Captured;
pub use peers::SnapshotSource;

/// What can go wrong with a snapshot. The texts say what to do; over-limit errors name the
/// config key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "the workspace holds more than {limit} files (`snapshot_max_files`); delete files you do not need, or raise the limit"
    )]
    TooManyFiles { limit: u32 },
    #[error(
        "the workspace holds at least {at_least} bytes, over the {limit}-byte snapshot limit (`snapshot_max_bytes`); delete large files you do not need, or raise the limit"
    )]
    TooLarge { limit: u64, at_least: u64 },
    #[error("the workspace path {path:?} is not valid UTF-8; rename it")]
    NotUtf8 { path: String },
    #[error("cannot {action} {path}: {message}")]
    Io {
        action: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("snapshot file {file:?} does not match its manifest: {why}")]
    Altered { file: String, why: String },
    #[error("the snapshot data is broken: {0}")]
    Stream(String),
    #[error("{0}")]
    Unavailable(String),
}

impl SnapshotError {
    pub fn io(action: &'static str, path: &Path, error: std::io::Error) -> Self {
        SnapshotError::Io {
            action,
            path: path.to_owned(),
            message: error.to_string(),
        }
    }
}

/// One agent's workspace as snapshots see it: where it works, where it sees its peers, its
/// limits, and where peer snapshots come from.
pub struct AgentSnapshots {
    pub cwd: PathBuf,
    pub peers_dir: PathBuf,
    pub limits: WorkspaceLimits,
    source: Arc<dyn SnapshotSource>,
    shown: Mutex<peers::Shown>,
    /// One sync at a time (a turn and an injection could otherwise race on the directory).
    syncing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AgentSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSnapshots")
            .field("cwd", &self.cwd)
            .field("peers_dir", &self.peers_dir)
            .field("limits", &self.limits)
            .finish()
    }
}

impl AgentSnapshots {
    /// The snapshots of an agent with workspace `spec`; relative paths are taken against
    /// `base` (an agent node's work directory).
    pub fn new(spec: &WorkspaceSpec, base: &Path, source: Arc<dyn SnapshotSource>) -> Self {
        AgentSnapshots {
            cwd: base.join(&spec.cwd),
            peers_dir: base.join(&spec.peers_dir),
            limits: spec.limits,
            source,
            shown: Mutex::new(peers::Shown::default()),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// Captures the workspace (off the async threads).
    pub async fn capture(&self) -> Result<Captured, SnapshotError> {
        let cwd = self.cwd.clone();
        let limits = self.limits;
        tokio::task::spawn_blocking(move || capture::capture(&cwd, &limits))
            .await
            .map_err(|e| SnapshotError::Unavailable(format!("the capture stopped: {e}")))?
    }

    /// Sends a captured snapshot ahead of the turn's decision: the manifest, then the bytes in
    /// chunks. Returns false when the coordinator is gone.
    pub fn send(outbox: &Outbox, turn: TurnId, captured: Captured) -> bool {
        if !outbox.send(AgentReport::SnapshotBegin {
            turn,
            manifest: captured.manifest,
        }) {
            return false;
        }
        let mut offset = 0u64;
        for chunk in captured.data.chunks(SNAPSHOT_CHUNK_BYTES) {
            if !outbox.send(AgentReport::SnapshotChunk {
                turn,
                offset,
                data: chunk.to_vec(),
            }) {
                return false;
            }
            offset += chunk.len() as u64;
        }
        true
    }

    /// Brings the peers directory to exactly `snapshots` (see [`peers`]).
    pub async fn sync_peers(&self, snapshots: &[PeerSnapshot]) -> Result<(), SnapshotError> {
        let _one_at_a_time = self.syncing.lock().await;
        let mut located = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            let dir = self.source.locate(snapshot).await?;
            located.push((snapshot.clone(), dir));
        }
        let peers_dir = self.peers_dir.clone();
        let mut shown = std::mem::take(&mut *self.lock_shown());
        let (result, shown) = tokio::task::spawn_blocking(move || {
            let result = peers::sync_peers(&peers_dir, &mut shown, &located);
            (result, shown)
        })
        .await
        .map_err(|e| SnapshotError::Unavailable(format!("the peers sync stopped: {e}")))?;
        *self.lock_shown() = shown;
        result
    }

    fn lock_shown(&self) -> std::sync::MutexGuard<'_, peers::Shown> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
