//! Answer snapshots on the orchestrator: receiving them with their answers, storing them under
//! the answer's label, naming them in every turn, serving them to agent nodes, and rebuilding
//! them on resume. The agent's half (capture, peers directory, node cache) is
//! `conclave_agent::snapshot`.
//!
//! Where they live: `<session dir>/snapshots/<label>/...`, or
//! `<orchestrator.snapshot_storage>/<session id>/<label>/...` when that key is set (a relative
//! path is taken against the orchestrator's working directory). A snapshot being received is
//! unpacked into `.incoming/<agent>-<turn>/` beside them and checked file by file as its chunks
//! arrive (size and SHA-256 against the manifest); it is renamed to its label once the answer
//! is accepted. The orchestrator keeps superseded answers' snapshots, like the journal keeps
//! their text: only *current* answers' snapshots are shown to agents.
//!
//! The rules, and why:
//! - **An answer and its snapshot are one.** The manifest is journaled in the answer's
//!   `decision_received` line (the line the resume replays), after the files are on disk and
//!   synced: a journaled answer always has its files. A snapshot that is incomplete, over the
//!   agent's `snapshot_max_files` / `snapshot_max_bytes`, or whose bytes do not match its
//!   manifest fails the answer's turn (`turn_failed` naming the problem) instead of being
//!   accepted half-copied.
//! - **A lost node's snapshot in flight is lost with its answer.** An answer is only applied
//!   when its `Decided` report arrives, after all its bytes; if the node is lost before that,
//!   the answer never arrives, the partial snapshot is deleted, and the journal says so
//!   (`snapshot_dropped`, next to `agent_lost`). Answers accepted before the loss stay current
//!   (consensus keeps them), and so do their snapshots, which are already here.
//! - **Nodes fetch, the orchestrator serves.** A turn names its snapshots by label and digest
//!   (`TurnSpec::snapshots`); an agent node that lacks one sends `FetchSnapshot` and the
//!   gateway streams the stored files back in chunks ([`serve`]), off the gateway's thread.
//!   Only labels of the node's own session are served.
//! - **Resume checks everything it shows.** [`SnapshotIntake::restore`] finds each current
//!   answer's snapshot (finishing a rename a crash interrupted) and checks every file's size
//!   and hash; a missing or altered file refuses the resume, naming the label and the file.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use conclave_agent::snapshot::SnapshotError;
use conclave_agent::snapshot::unpack::{Unpacker, read_chunks, remove_tree, sync_dir, verify_dir};
use conclave_protocol::config::SessionConfig;
use conclave_protocol::snapshot::{PeerSnapshot, SnapshotManifest};
use conclave_protocol::tools::WorkspaceLimits;
use conclave_protocol::{AnswerLabel, LabeledAnswer, SessionId, TurnId};
use tracing::warn;

use crate::consensus::AgentIndex;

/// The snapshots folder inside a session directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Where snapshots being received are unpacked, inside the snapshot root.
const INCOMING_DIR: &str = ".incoming";

/// Where a session's snapshots are stored (see the module docs).
pub fn snapshot_root(config: &SessionConfig, session: &SessionId, session_dir: &Path) -> PathBuf {
    match &config.orchestrator.snapshot_storage {
        Some(storage) => Path::new(storage).join(session.as_str()),
        None => session_dir.join(SNAPSHOTS_DIR),
    }
}

/// A resume that cannot show a current answer's snapshot.
#[derive(Debug, thiserror::Error)]
#[error(
    "the snapshot of answer {label} cannot be restored from {dir}: {problem}; put the files back, or start a new session"
)]
pub struct RestoreError {
    pub label: String,
    pub dir: PathBuf,
    pub problem: SnapshotError,
}

/// The stored snapshots of a session, shared by its coordinator (which adds them) and the
/// cluster gateway (which serves them to agent nodes).
#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
    stored: Mutex<HashMap<AnswerLabel, Arc<SnapshotManifest>>>,
}

impl SnapshotStore {
    pub fn new(root: PathBuf) -> Self {
        SnapshotStore {
            root,
            stored: Mutex::new(HashMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `label`'s snapshot.
    pub fn dir(&self, label: AnswerLabel) -> PathBuf {
        self.root.join(label.to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AnswerLabel, Arc<SnapshotManifest>>> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manifest of `label`'s snapshot, if it has one.
    pub fn get(&self, label: AnswerLabel) -> Option<Arc<SnapshotManifest>> {
        self.lock().get(&label).cloned()
    }

    fn insert(&self, label: AnswerLabel, manifest: Arc<SnapshotManifest>) {
        self.lock().insert(label, manifest);
    }

    /// The snapshots of `answers` that have one, in their order: what a turn names.
    pub fn peer_snapshots(&self, answers: &[LabeledAnswer]) -> Arc<[PeerSnapshot]> {
        let stored = self.lock();
        answers
            .iter()
            .filter_map(|answer| {
                stored.get(&answer.label).map(|manifest| PeerSnapshot {
                    label: answer.label,
                    manifest: manifest.clone(),
                })
            })
            .collect()
    }
}

/// Sends the stored snapshot `label` with content digest `digest` as chunks (`send(offset,
/// bytes)`, false to stop), after checking that it is this session's current content for that
/// label. `Err` is the reason to give the node.
pub fn serve(
    store: &SnapshotStore,
    label: &str,
    digest: &str,
    send: impl FnMut(u64, Vec<u8>) -> bool,
) -> Result<(), String> {
    let parsed: AnswerLabel = label
        .parse()
        .map_err(|_| format!("`{label}` is not an answer label"))?;
    let manifest = store
        .get(parsed)
        .ok_or_else(|| format!("answer {label} has no stored snapshot"))?;
    if manifest.digest != digest {
        return Err(format!(
            "answer {label}'s snapshot has other content than the one asked for"
        ));
    }
    read_chunks(&store.dir(parsed), &manifest, send).map_err(|e| e.to_string())
}

/// A snapshot on its way in.
enum Incoming {
    Receiving {
        turn: TurnId,
        unpacker: Unpacker,
    },
    /// Something was wrong; the answer of `turn` will fail with `reason`.
    Broken {
        turn: TurnId,
        reason: String,
    },
    /// Complete and checked, waiting for its answer to be accepted.
    Ready {
        turn: TurnId,
        dir: PathBuf,
        manifest: Arc<SnapshotManifest>,
    },
}

impl Incoming {
    fn turn(&self) -> TurnId {
        match self {
            Incoming::Receiving { turn, .. }
            | Incoming::Broken { turn, .. }
            | Incoming::Ready { turn, .. } => *turn,
        }
    }
}

/// The coordinator's side: snapshots arriving with answers (see the module docs). At most one
/// snapshot per agent is on its way at a time; a new one replaces an older one.
pub struct SnapshotIntake {
    store: Arc<SnapshotStore>,
    /// Per agent: its workspace limits, `None` for an agent without a workspace.
    limits: Vec<Option<WorkspaceLimits>>,
    incoming: HashMap<AgentIndex, Incoming>,
}

impl SnapshotIntake {
    /// The intake of a session with `config`'s agents, storing under `root`.
    pub fn new(config: &SessionConfig, root: PathBuf) -> Self {
        SnapshotIntake {
            store: Arc::new(SnapshotStore::new(root)),
            limits: config
                .agents
                .iter()
                .map(|a| a.tools.workspace.as_ref().map(|w| w.limits))
                .collect(),
            incoming: HashMap::new(),
        }
    }

    pub fn store(&self) -> &Arc<SnapshotStore> {
        &self.store
    }

    fn staging(&self, agent: AgentIndex, turn: TurnId) -> PathBuf {
        self.store
            .root
            .join(INCOMING_DIR)
            .join(format!("{agent}-{}", turn.0))
    }

    /// A snapshot's manifest arrived (`SnapshotBegin`). `Err` says why it is refused (the
    /// answer that follows will fail).
    pub fn begin(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
        manifest: SnapshotManifest,
    ) -> Result<(), String> {
        self.drop_incoming(agent);
        let checked = self.check_limits(agent, &manifest).and_then(|()| {
            Unpacker::start(self.staging(agent, turn), Arc::new(manifest))
                .map_err(|e| e.to_string())
        });
        let (entry, result) = match checked {
            Ok(unpacker) => (Incoming::Receiving { turn, unpacker }, Ok(())),
            Err(reason) => (
                Incoming::Broken {
                    turn,
                    reason: reason.clone(),
                },
                Err(reason),
            ),
        };
        self.incoming.insert(agent, entry);
        result
    }

    fn check_limits(&self, agent: AgentIndex, manifest: &SnapshotManifest) -> Result<(), String> {
        let Some(limits) = self.limits.get(agent as usize).copied().flatten() else {
            return Err("the agent has no workspace, yet sent a snapshot".into());
        };
        if manifest.files.len() as u64 > u64::from(limits.snapshot_max_files) {
            return Err(format!(
                "the snapshot lists {} files, over `snapshot_max_files` ({})",
                manifest.files.len(),
                limits.snapshot_max_files
            ));
        }
        if manifest.total_bytes > limits.snapshot_max_bytes {
            return Err(format!(
                "the snapshot holds {} bytes, over `snapshot_max_bytes` ({})",
                manifest.total_bytes, limits.snapshot_max_bytes
            ));
        }
        Ok(())
    }

    /// Snapshot bytes arrived (`SnapshotChunk`).
    pub fn chunk(&mut self, agent: AgentIndex, turn: TurnId, offset: u64, data: &[u8]) {
        let Some(entry) = self.incoming.get_mut(&agent) else {
            warn!(agent, %turn, "snapshot bytes without a manifest dropped");
            return;
        };
        if entry.turn() != turn {
            warn!(agent, %turn, "snapshot bytes of another turn dropped");
            return;
        }
        if let Incoming::Receiving { unpacker, .. } = entry
            && let Err(error) = unpacker.push(offset, data)
        {
            let _ = remove_tree(unpacker.dir());
            *entry = Incoming::Broken {
                turn,
                reason: error.to_string(),
            };
        }
    }

    /// The agent's `new_answer` for `turn` arrived: its snapshot, if it sent one, must be
    /// complete and exact. `Ok(None)`: no snapshot came with it.
    pub fn complete(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
    ) -> Result<Option<Arc<SnapshotManifest>>, String> {
        match self.incoming.remove(&agent) {
            None => Ok(None),
            Some(other) if other.turn() != turn => {
                // A snapshot of an abandoned turn: not this answer's.
                self.incoming.insert(agent, other);
                self.drop_incoming(agent);
                Ok(None)
            }
            Some(Incoming::Broken { reason, .. }) => Err(reason),
            Some(Incoming::Ready { .. }) => Err("the snapshot was sent twice".into()),
            Some(Incoming::Receiving { unpacker, .. }) => {
                let manifest = unpacker.manifest().clone();
                match unpacker.finish() {
                    Ok(dir) => {
                        self.incoming.insert(
                            agent,
                            Incoming::Ready {
                                turn,
                                dir,
                                manifest: manifest.clone(),
                            },
                        );
                        Ok(Some(manifest))
                    }
                    Err(error) => {
                        let _ = remove_tree(&self.staging(agent, turn));
                        Err(error.to_string())
                    }
                }
            }
        }
    }

    /// The answer of `agent`'s `turn` was accepted as `label`: its snapshot moves under the
    /// label. `Ok(None)`: that answer had no snapshot.
    pub fn accept(
        &mut self,
        agent: AgentIndex,
        turn: TurnId,
        label: AnswerLabel,
    ) -> Result<Option<PathBuf>, SnapshotError> {
        let Some(Incoming::Ready { turn: t, .. }) = self.incoming.get(&agent) else {
            return Ok(None);
        };
        if *t != turn {
            return Ok(None);
        }
        let Some(Incoming::Ready { dir, manifest, .. }) = self.incoming.remove(&agent) else {
            return Ok(None);
        };
        let target = self.store.dir(label);
        remove_tree(&target)?;
        fs::rename(&dir, &target).map_err(|e| SnapshotError::io("rename", &dir, e))?;
        sync_dir(&self.store.root)?;
        self.store.insert(label, manifest);
        Ok(Some(target))
    }

    /// Drops whatever snapshot of `agent` is on its way (its node was lost, its answer was
    /// refused). Returns a description of what was dropped, for the journal.
    pub fn drop_incoming(&mut self, agent: AgentIndex) -> Option<String> {
        let entry = self.incoming.remove(&agent)?;
        let turn = entry.turn();
        let _ = remove_tree(&self.staging(agent, turn));
        Some(match entry {
            Incoming::Receiving { unpacker, .. } => format!(
                "a snapshot of turn {} with {} of {} bytes received",
                turn.0,
                unpacker.received(),
                unpacker.manifest().total_bytes
            ),
            Incoming::Broken { reason, .. } => {
                format!("a broken snapshot of turn {} ({reason})", turn.0)
            }
            Incoming::Ready { manifest, .. } => format!(
                "a complete snapshot of turn {} ({} files) whose answer was not accepted",
                turn.0,
                manifest.files.len()
            ),
        })
    }

    /// The session is over: snapshots still on their way are deleted.
    pub fn close(&mut self) {
        self.incoming.clear();
        let _ = remove_tree(&self.store.root.join(INCOMING_DIR));
    }

    /// Resume: registers the snapshots of the journal's accepted answers (label, agent, turn,
    /// manifest), finishing a rename from the incoming folder that a crash interrupted, and
    /// checks every file of the *current* answers' snapshots (`current`).
    pub fn restore(
        &mut self,
        accepted: &[(AnswerLabel, AgentIndex, TurnId, SnapshotManifest)],
        current: &[AnswerLabel],
    ) -> Result<(), RestoreError> {
        for (label, agent, turn, manifest) in accepted {
            let dir = self.store.dir(*label);
            let staged = self.staging(*agent, *turn);
            if !dir.exists() && staged.exists() {
                let _ = fs::rename(&staged, &dir);
            }
            if current.contains(label) {
                verify_dir(&dir, manifest).map_err(|problem| RestoreError {
                    label: label.to_string(),
                    dir: dir.clone(),
                    problem,
                })?;
            }
            self.store.insert(*label, Arc::new(manifest.clone()));
        }
        Ok(())
    }
}

/// The snapshot intake of a session whose agents have workspaces (`None` otherwise).
pub fn intake_for(
    config: &SessionConfig,
    session: &SessionId,
    session_dir: &Path,
) -> Option<SnapshotIntake> {
    config
        .agents
        .iter()
        .any(|a| a.tools.workspace.is_some())
        .then(|| SnapshotIntake::new(config, snapshot_root(config, session, session_dir)))
}

/// Streams a stored snapshot to the agent node that asked for it, on a blocking thread (the
/// gateway goes on with heartbeats meanwhile). If it cannot be sent, the node is told why.
pub fn spawn_serve(
    store: Arc<SnapshotStore>,
    host: conclave_cluster::wire::HostInbox,
    session: SessionId,
    label: String,
    digest: String,
) {
    use conclave_cluster::wire::send_to_host;
    use conclave_protocol::cluster::ToHost;
    tokio::task::spawn_blocking(move || {
        let served = serve(&store, &label, &digest, |offset, data| {
            send_to_host(
                &host,
                ToHost::PeerSnapshotChunk {
                    session: session.clone(),
                    digest: digest.clone(),
                    offset,
                    data,
                },
            )
            .is_ok()
        });
        if let Err(reason) = served {
            warn!(%session, %label, %reason, "snapshot not served");
            let _ = send_to_host(
                &host,
                ToHost::PeerSnapshotUnavailable {
                    session,
                    digest,
                    reason,
                },
            );
        }
    });
}

#[cfg(test)]
mod tests;
