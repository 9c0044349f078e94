//! An agent node's cache of peer snapshots, filled from the orchestrator over the cluster.
//!
//! Keyed by (session, content digest): a snapshot crosses the link once per node and session,
//! however many of the node's agents show it and however many turns it stays current. It lives
//! under the system's temporary directory (`conclave-agent-<instance>/<session>/<digest>/`),
//! not in the node's work directory, and a session's part is removed when the session ends
//! (and the whole cache when the host stops).
//!
//! A turn that needs a snapshot the node lacks asks once (`FetchSnapshot` through the host);
//! other turns needing the same one wait for that answer. The bytes are unpacked as they come
//! ([`super::unpack::Unpacker`]) and checked file by file; a snapshot whose bytes do not match
//! its manifest is thrown away and the waiting turns are told why. A wait is bounded by
//! [`FETCH_TIMEOUT`]; a lost link fails every wait at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_protocol::SessionId;
use conclave_protocol::snapshot::PeerSnapshot;
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::SnapshotError;
use super::peers::SnapshotSource;
use super::unpack::{Unpacker, remove_tree};

/// The longest a turn waits for a peer snapshot to arrive.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// One fetch request, for the host to send (`ToOrchestrator::FetchSnapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub session: SessionId,
    pub agent: u32,
    pub incarnation: u64,
    pub label: String,
    pub digest: String,
}

/// Hands a fetch request to the host; false when it cannot be sent.
pub type FetchSender = Arc<dyn Fn(FetchRequest) -> bool + Send + Sync>;

type Waiter = oneshot::Sender<Result<PathBuf, String>>;

enum Entry {
    Ready(PathBuf),
    Fetching {
        unpacker: Unpacker,
        waiters: Vec<Waiter>,
    },
}

/// The node's snapshot cache (see the module docs).
pub struct NodeSnapshotCache {
    root: PathBuf,
    entries: Mutex<HashMap<(SessionId, String), Entry>>,
}

impl std::fmt::Debug for NodeSnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSnapshotCache")
            .field("root", &self.root)
            .finish()
    }
}

impl NodeSnapshotCache {
    /// A cache under `root` (created on first use).
    pub fn new(root: PathBuf) -> Self {
        NodeSnapshotCache {
            root,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cache of agent-node process `instance`, under the system's temporary directory.
    pub fn for_instance(instance: u64) -> Self {
        Self::new(std::env::temp_dir().join(format!("conclave-agent-{instance:016x}")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SessionId, String), Entry>> {
        // Every update is a single insert or remove: a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, session: &SessionId, digest: &str) -> PathBuf {
        self.root.join(session.as_str()).join(digest)
    }

    /// The directory of `snapshot`, fetched through `send` if the node lacks it.
    pub async fn get(
        &self,
        request: FetchRequest,
        snapshot: &PeerSnapshot,
        send: &FetchSender,
    ) -> Result<PathBuf, SnapshotError> {
        let key = (request.session.clone(), snapshot.manifest.digest.clone());
        let (tx, rx) = oneshot::channel();
        let ask = {
            let mut entries = self.lock();
            match entries.get_mut(&key) {
                Some(Entry::Ready(dir)) => return Ok(dir.clone()),
                Some(Entry::Fetching { waiters, .. }) => {
                    waiters.push(tx);
                    false
                }
                None => {
                    let dir = self.dir(&key.0, &key.1);
                    let unpacker = Unpacker::start(dir, snapshot.manifest.clone())?;
                    if unpacker.is_complete() {
                        let dir = unpacker.finish()?;
                        entries.insert(key, Entry::Ready(dir.clone()));
                        return Ok(dir);
                    }
                    entries.insert(
                        key.clone(),
                        Entry::Fetching {
                            unpacker,
                            waiters: vec![tx],
                        },
                    );
                    true
                }
            }
        };
        if ask && !send(request) {
            self.fail(&key.0, &key.1, "the link to the orchestrator is down");
        }
        match tokio::time::timeout(FETCH_TIMEOUT, rx).await {
            Ok(Ok(Ok(dir))) => Ok(dir),
            Ok(Ok(Err(reason))) => Err(SnapshotError::Unavailable(reason)),
            Ok(Err(_)) => Err(SnapshotError::Unavailable(
                "the snapshot fetch was abandoned".into(),
            )),
            Err(_) => {
                self.fail(
                    &key.0,
                    &key.1,
                    &format!("no snapshot data within {} s", FETCH_TIMEOUT.as_secs()),
                );
                Err(SnapshotError::Unavailable(format!(
                    "the snapshot of {} did not arrive within {} s",
                    snapshot.label,
                    FETCH_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Bytes from the orchestrator (`ToHost::PeerSnapshotChunk`).
    pub fn on_chunk(&self, session: &SessionId, digest: &str, offset: u64, data: &[u8]) {
        let key = (session.clone(), digest.to_owned());
        let mut entries = self.lock();
        let Some(Entry::Fetching { unpacker, .. }) = entries.get_mut(&key) else {
            debug!(%session, digest, "snapshot bytes nobody waits for dropped");
            return;
        };
        if let Err(error) = unpacker.push(offset, data) {
            drop(entries);
            warn!(%session, digest, %error, "peer snapshot refused");
            self.fail(session, digest, &error.to_string());
            return;
        }
        if !unpacker.is_complete() {
            return;
        }
        let Some(Entry::Fetching { unpacker, waiters }) = entries.remove(&key) else {
            return;
        };
        let result = unpacker.finish().map_err(|e| e.to_string());
        if let Ok(dir) = &result {
            entries.insert(key, Entry::Ready(dir.clone()));
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }

    /// The orchestrator cannot send the snapshot, or the wait is over: every waiter is told,
    /// and the partial copy removed.
    pub fn fail(&self, session: &SessionId, digest: &str, reason: &str) {
        let key = (session.clone(), digest.to_owned());
        let entry = self.lock().remove(&key);
        if let Some(Entry::Fetching { unpacker, waiters }) = entry {
            let _ = remove_tree(unpacker.dir());
            for waiter in waiters {
                let _ = waiter.send(Err(reason.to_owned()));
            }
        } else if let Some(ready) = entry {
            // Not fetching: put it back untouched.
            self.lock().insert(key, ready);
        }
    }

    /// The link is lost: every fetch in flight fails (the orchestrator will not finish it).
    pub fn fail_all_fetches(&self, reason: &str) {
        let fetching: Vec<_> = self
            .lock()
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Fetching { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for (session, digest) in fetching {
            self.fail(&session, &digest, reason);
        }
    }

    /// The session ended: its snapshots are removed.
    pub fn end_session(&self, session: &SessionId) {
        self.lock().retain(|(s, _), _| s != session);
        if let Err(error) = remove_tree(&self.root.join(session.as_str())) {
            warn!(%session, %error, "could not remove the session's snapshot cache");
        }
    }

    /// The host stops: the whole cache is removed.
    pub fn clear(&self) {
        self.lock().clear();
        let _ = remove_tree(&self.root);
    }
}

/// A [`SnapshotSource`] for one agent on an agent node.
pub struct NodeSource {
    pub cache: Arc<NodeSnapshotCache>,
    pub send: FetchSender,
    pub session: SessionId,
    pub agent: u32,
    pub incarnation: u64,
}

impl SnapshotSource for NodeSource {
    fn locate<'a>(
        &'a self,
        snapshot: &'a PeerSnapshot,
    ) -> BoxFuture<'a, Result<PathBuf, SnapshotError>> {
        Box::pin(async move {
            let request = FetchRequest {
                session: self.session.clone(),
                agent: self.agent,
                incarnation: self.incarnation,
                label: snapshot.label.to_string(),
                digest: snapshot.manifest.digest.clone(),
            };
            self.cache.get(request, snapshot, &self.send).await
        })
    }
}
