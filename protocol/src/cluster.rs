//! What an orchestrator and its agent nodes say to each other over the cluster link.
//!
//! The link is ractor_cluster: each side has one remotable *inbox* actor, found through a pg
//! group in the [`SCOPE`] scope (the orchestrator's in [`ORCHESTRATOR_GROUP`], each agent
//! node's in [`HOST_GROUP`] and in its own [`host_group`]). A message to a remote inbox is a
//! ractor `Cast` whose payload is one frame of this crate's codec ([`crate::encode`]): the
//! frames carry conclave's own bincode encoding, never ractor's or protobuf's.
//!
//! Choices, and why:
//! - An agent node announces itself with [`NodeHello`]: its configured name, a random
//!   `instance` number fresh at every process start (so a restarted node is told apart from
//!   its previous life), the protocol version and the *names* of the provider-key environment
//!   variables it holds. Key values never leave the node.
//! - Every agent placed on a node gets an `incarnation` number from the orchestrator. A
//!   re-spawned agent (after its node came back) gets a new one; reports of an older
//!   incarnation are dropped, so an answer is never applied twice and the coordinator can
//!   forget the old sequence numbers on purpose.
//! - **Who sent it.** ractor_cluster delivers a cast without saying which connection it came
//!   over, so a name inside a frame proves nothing. When the orchestrator admits a node it
//!   issues it a random 64-bit *link key* in [`ToHost::Welcome`], sent only over that node's own
//!   connection (TLS-encrypted when TLS is on). Every later frame of the node carries it, and the
//!   orchestrator takes the sender to be the node it issued that key to: a report, a spawn
//!   answer or an exit is accepted only for an agent placed on that node. A key dies with its
//!   link. Incarnation numbers are random too, so one cannot be guessed from another.
//! - Bench-only messages (`Echo`, `Flood`) exist only with the `bench` feature, which only the
//!   cluster bench turns on; they are the last variants, so the others encode the same either
//!   way, and a production node drops them as undecodable.
//! - Heartbeats go both ways (see `heartbeat` in the agent-node crate): a half-open TCP link is
//!   only found by a message that stops arriving.
//! - Frame size: ractor_cluster wraps our frame in its own protobuf frame, so its inbound limit
//!   is our limit plus a fixed overhead ([`MAX_CLUSTER_FRAME_BYTES`]); every node sets it.

use serde::{Deserialize, Serialize};

use crate::codec::MAX_FRAME_BYTES;
use crate::config::AgentSpec;
use crate::ids::SessionId;
use crate::message::{AgentReport, CoordinatorCommand, Envelope};

/// The pg scope of every conclave group.
pub const SCOPE: &str = "conclave";
/// The group of orchestrator inboxes.
pub const ORCHESTRATOR_GROUP: &str = "orchestrators";
/// The group of every agent node's inbox.
pub const HOST_GROUP: &str = "hosts";

/// The group that holds only the inbox of one agent-node process, so the orchestrator can
/// answer the node that said hello.
pub fn host_group(instance: u64) -> String {
    format!("host.{instance:016x}")
}

/// The version of this cluster protocol; a node with another version is refused.
pub const CLUSTER_PROTOCOL_VERSION: u32 = 4;

/// What ractor_cluster adds around one of our frames (node message, target pid, variant
/// name, length prefix). Generous: the real overhead is a few dozen bytes.
pub const CLUSTER_FRAME_OVERHEAD: usize = 64 * 1024;

/// The inbound frame limit every conclave node gives ractor_cluster: our codec's limit plus
/// the wrapping, so any frame our codec accepts also passes the transport.
pub const MAX_CLUSTER_FRAME_BYTES: u64 = (MAX_FRAME_BYTES + CLUSTER_FRAME_OVERHEAD) as u64;

/// The ractor `variant` name of a conclave frame.
pub const FRAME_VARIANT: &str = "conclave.frame";

/// An agent node introducing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHello {
    /// The node's configured name (`--name`), matched against `node:` in session configs.
    pub name: String,
    /// Random, fresh at every process start.
    pub instance: u64,
    pub protocol: u32,
    /// The conclave version the node runs.
    pub version: String,
    /// Names of the provider-key environment variables set on the node (never the values).
    pub provider_keys: Vec<String>,
}

/// The limits of an agent's turns, as the orchestrator computed them from the session config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnLimits {
    pub max_workflow_retries: u32,
    pub turn_timeout_ms: u64,
    pub stall_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub max_restarts: u32,
    pub restart_window_ms: u64,
}

/// Start one agent of a session on the receiving node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnAgent {
    pub session: SessionId,
    /// The agent's 0-based index in the session config.
    pub agent: u32,
    pub incarnation: u64,
    pub spec: AgentSpec,
    pub limits: TurnLimits,
}

/// Orchestrator → agent node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToHost {
    /// The hello was accepted; heartbeats start.
    Welcome {
        orchestrator: String,
        /// The node's link key: every later frame of the node carries it.
        link: u64,
    },
    /// The hello was refused (protocol mismatch, a live node of that name, a certificate
    /// issued for another name); the node should not retry as it is.
    Refused {
        reason: String,
    },
    Heartbeat,
    Spawn(Box<SpawnAgent>),
    /// A coordinator command for one agent incarnation.
    Command {
        agent: u32,
        incarnation: u64,
        envelope: Envelope<CoordinatorCommand>,
    },
    /// The session is over: stop whatever of it still runs on the node.
    EndSession {
        session: SessionId,
    },
    /// Bytes of a peer snapshot the node asked for ([`ToOrchestrator::FetchSnapshot`]), at
    /// `offset` in the concatenation of its files (manifest order), at most
    /// `crate::snapshot::SNAPSHOT_CHUNK_BYTES` per frame. The node checks every file against
    /// the manifest it already has from the turn.
    PeerSnapshotChunk {
        session: SessionId,
        digest: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// The snapshot the node asked for cannot be sent (its answer is gone, or its files no
    /// longer match); the waiting turn goes on without it.
    PeerSnapshotUnavailable {
        session: SessionId,
        digest: String,
        reason: String,
    },
    /// Send `payload` straight back (link round-trip measurements).
    #[cfg(feature = "bench")]
    Echo {
        nonce: u64,
        payload: Envelope<AgentReport>,
    },
    /// Send `count` copies of `template` as reports of `agent`/`incarnation`, numbered from
    /// `first_seq`, as fast as possible (throughput measurements of the report path).
    #[cfg(feature = "bench")]
    Flood {
        agent: u32,
        incarnation: u64,
        first_seq: u64,
        count: u32,
        template: Envelope<AgentReport>,
    },
}

/// Agent node → orchestrator. Every message after `Hello` carries the node's `link` key (see
/// the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToOrchestrator {
    Hello(NodeHello),
    Heartbeat {
        link: u64,
    },
    /// The answer to [`ToHost::Spawn`]: `error` says why the agent could not start (a missing
    /// API key on this node, a provider the node's operator does not allow, a required MCP
    /// server that did not start); `tools` says how each of its MCP servers started on the
    /// node (for the journal), in config order.
    Spawned {
        link: u64,
        session: SessionId,
        agent: u32,
        incarnation: u64,
        error: Option<String>,
        tools: Vec<crate::tools::ServerStartReport>,
    },
    /// An agent's report; the envelope names the session and the sender.
    Report {
        link: u64,
        agent: u32,
        incarnation: u64,
        envelope: Envelope<AgentReport>,
    },
    /// A hosted agent needs the snapshot of answer `label` (content digest `digest`) to show
    /// its peers' files and the node does not have it yet: the orchestrator sends it as
    /// [`ToHost::PeerSnapshotChunk`]s. Nodes cache snapshots by digest per session, so a
    /// snapshot crosses the link once per node, not once per turn.
    FetchSnapshot {
        link: u64,
        session: SessionId,
        agent: u32,
        incarnation: u64,
        label: String,
        digest: String,
    },
    /// A hosted agent died on its own (not stopped by the session).
    AgentExited {
        link: u64,
        session: SessionId,
        agent: u32,
        incarnation: u64,
        reason: String,
    },
    #[cfg(feature = "bench")]
    EchoReply {
        nonce: u64,
        payload: Envelope<AgentReport>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StreamChunk, TraceContext, TurnId, decode, encode};

    #[test]
    fn frames_round_trip_and_fit_the_transport_limit() {
        let report = ToOrchestrator::Report {
            link: 42,
            agent: 1,
            incarnation: 7,
            envelope: Envelope {
                session: SessionId("s".into()),
                sender: "beta".into(),
                seq: 3,
                trace: TraceContext::default(),
                body: AgentReport::Chunk {
                    turn: TurnId(2),
                    chunk: StreamChunk::Content { text: "hi".into() },
                },
            },
        };
        let frame = encode(&report).unwrap();
        assert_eq!(decode::<ToOrchestrator>(&frame).unwrap(), report);
        assert!(MAX_CLUSTER_FRAME_BYTES > MAX_FRAME_BYTES as u64);
        assert_eq!(host_group(0xab), "host.00000000000000ab");
    }
}
