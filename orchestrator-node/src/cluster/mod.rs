//! The orchestrator's side of the cluster: a ractor_cluster node server that agent nodes
//! (`conclave-agent`) join, and the [`gateway::Gateway`] actor that knows which nodes are up
//! and carries each session's commands and reports to and from the agents placed on them.
//!
//! [`Cluster`] is the handle sessions use:
//! 1. [`Cluster::wait_for_nodes`]: a session whose config places agents on nodes (`node:`)
//!    waits for those nodes up to `timeout_settings.node_join_timeout_seconds` (default 30 s),
//!    then fails naming the nodes that never came ([`crate::session::SessionError::NodesMissing`],
//!    exit code 2: the config was valid, the cluster did not come up). A node that was joined
//!    and has been lost since (a batch, or a server between sessions) is not waited for: the
//!    session starts with that node's agents down, as if it had lost the node while running,
//!    and they are spawned if the node returns. So a node lost mid-batch fails only its
//!    agents' turns, in the sessions running then and in the ones that start after.
//! 2. [`Cluster::place`]: each remote agent is spawned on its node, which builds the backend
//!    from its own environment; an error there (a key missing on that node) fails the session
//!    before any turn, like a missing key does for a local agent.
//! 3. [`Cluster::attach`] routes the session's reports to its coordinator;
//!    [`Cluster::command_sink`] is the agents' [`CommandSink`](crate::coordinator::CommandSink).
//! 4. [`Cluster::end_session`] stops what is left of the session on the nodes.
//!
//! Loss and return: see [`gateway`]. Auth: a connection whose cookie is wrong is closed by
//! ractor_cluster during its handshake, before any conclave message is read; the gateway
//! logs the refusal (`warn`, with the peer address), and no session ever sees that node.
//! Strangers: every inbound handshake (TLS, then cookie) runs on its own under a 5 s deadline
//! (see `conclave_cluster::node::start_node`), so silent or garbage connections cannot
//! delay an honest node. Impersonation: see [`gateway`] (link keys, certificate names).

pub mod gateway;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use conclave_cluster::heartbeat::HeartbeatConfig;
use conclave_cluster::node::{NodeOptions, new_instance, start_node, unique_node_name};
use conclave_cluster::security::{Cookie, Tls};
#[cfg(feature = "bench")]
use conclave_protocol::AgentReport;
use conclave_protocol::cluster::TurnLimits;
use conclave_protocol::config::AgentSpec;
use conclave_protocol::{CoordinatorCommand, Envelope, SessionId};
use ractor::ActorRef;
use tokio::sync::{oneshot, watch};

use crate::coordinator::{CommandSink, CoordinatorMsg};
pub use gateway::{Gateway, GatewayMsg, NodeInfo};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Node(#[from] conclave_cluster::node::NodeError),
    #[error("the cluster gateway did not start: {0}")]
    Spawn(String),
}

/// Why remote agents could not be placed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaceError {
    /// The node refused the agent (its backend cannot work there, e.g. a missing key).
    #[error("agent `{agent}` on node `{node}`: {message}")]
    Agent {
        agent: String,
        node: String,
        message: String,
    },
    /// The cluster failed while placing (a node lost, no answer in time).
    #[error("{0}")]
    Cluster(String),
}

/// How the orchestrator listens for agent nodes.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub listen: SocketAddr,
    pub cookie: Cookie,
    pub tls: Option<Tls>,
    pub heartbeat: HeartbeatConfig,
}

/// One remote agent of a session.
#[derive(Debug, Clone)]
pub struct Placement {
    pub agent: u32,
    pub node: String,
    pub spec: AgentSpec,
    pub limits: TurnLimits,
}

/// A handle on the running cluster (cheap to clone).
#[derive(Clone)]
pub struct Cluster {
    gateway: ActorRef<GatewayMsg>,
    nodes: watch::Receiver<BTreeMap<String, NodeInfo>>,
    /// Nodes lost while this orchestrator runs and not back yet, with why.
    lost: watch::Receiver<BTreeMap<String, String>>,
    listen: SocketAddr,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("listen", &self.listen)
            .finish()
    }
}

/// How long an agent node has to answer a spawn request: 15 s, plus the time its MCP servers
/// may take to start there.
pub const PLACE_TIMEOUT: Duration =
    Duration::from_secs(15 + conclave_agent::tools::mcp::DEFAULT_START_TIMEOUT.as_secs());

/// How the MCP servers of each placed agent started on its node: `(agent index, one report
/// per server in config order)`, in agent order.
pub type PlacedTools = Vec<(u32, Vec<conclave_protocol::tools::ServerStartReport>)>;

impl Cluster {
    /// Starts the node server and the gateway.
    pub async fn start(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let instance = new_instance();
        let node = start_node(&NodeOptions {
            node_name: unique_node_name("conclave-orchestrator", instance),
            listen: options.listen,
            cookie: options.cookie.clone(),
            tls: options.tls.clone(),
        })
        .await?;
        let (nodes_tx, nodes) = watch::channel(BTreeMap::new());
        let (lost_tx, lost) = watch::channel(BTreeMap::new());
        let listen = node.listen;
        let (gateway, _) = ractor::Actor::spawn(
            None,
            Gateway,
            gateway::GatewayArgs {
                node,
                heartbeat: options.heartbeat,
                nodes: nodes_tx,
                lost: lost_tx,
                tls: options.tls.is_some(),
                listen,
            },
        )
        .await
        .map_err(|e| ClusterError::Spawn(e.to_string()))?;
        Ok(Cluster {
            gateway,
            nodes,
            lost,
            listen,
        })
    }

    /// The address agent nodes join.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The nodes joined right now.
    pub fn nodes(&self) -> BTreeMap<String, NodeInfo> {
        self.nodes.borrow().clone()
    }

    /// The nodes lost while this orchestrator runs (they had joined) and not back yet.
    pub fn lost_nodes(&self) -> BTreeMap<String, String> {
        self.lost.borrow().clone()
    }

    /// Waits until every node in `names` has joined or is known lost (see the module docs),
    /// for at most `timeout`. On timeout, the names still missing.
    pub async fn wait_for_nodes(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<(), Vec<String>> {
        let mut nodes = self.nodes.clone();
        let lost = self.lost.clone();
        let missing = |nodes: &BTreeMap<String, NodeInfo>| -> Vec<String> {
            let lost = lost.borrow();
            names
                .iter()
                .filter(|n| !nodes.contains_key(n.as_str()) && !lost.contains_key(n.as_str()))
                .cloned()
                .collect()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now_missing = missing(&nodes.borrow_and_update());
            if now_missing.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, nodes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(missing(&nodes.borrow())),
            }
        }
    }

    /// Spawns a session's remote agents on their nodes; bounded by [`PLACE_TIMEOUT`].
    /// Returns how each agent's MCP servers started on its node.
    pub async fn place(
        &self,
        session: &SessionId,
        placements: Vec<Placement>,
    ) -> Result<PlacedTools, PlaceError> {
        if placements.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.gateway
            .send_message(GatewayMsg::Place {
                session: session.clone(),
                placements,
                reply,
            })
            .map_err(|e| PlaceError::Cluster(format!("the cluster gateway is gone: {e}")))?;
        match tokio::time::timeout(PLACE_TIMEOUT + Duration::from_secs(1), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PlaceError::Cluster("the cluster gateway stopped".into())),
            Err(_) => Err(PlaceError::Cluster(format!(
                "the agent nodes did not start the agents within {} s",
                PLACE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Routes the session's reports (and agent losses and returns) to its coordinator.
    pub fn attach(&self, session: &SessionId, coordinator: ActorRef<CoordinatorMsg>) {
        let _ = self.gateway.send_message(GatewayMsg::Attach {
            session: session.clone(),
            coordinator,
        });
    }

    /// Lets the session's nodes fetch its answer snapshots (see [`crate::snapshots`]).
    pub fn share_snapshots(
        &self,
        session: &SessionId,
        store: std::sync::Arc<crate::snapshots::SnapshotStore>,
    ) {
        let _ = self.gateway.send_message(GatewayMsg::ShareSnapshots {
            session: session.clone(),
            store,
        });
    }

    /// The command channel of one remote agent.
    pub fn command_sink(&self, session: &SessionId, agent: u32) -> CommandSink {
        let gateway = self.gateway.clone();
        let session = session.clone();
        std::sync::Arc::new(move |envelope: Envelope<CoordinatorCommand>| {
            gateway
                .send_message(GatewayMsg::Command {
                    session: session.clone(),
                    agent,
                    envelope,
                })
                .is_ok()
        })
    }

    /// The session is over: forget it and stop its agents on the nodes.
    pub fn end_session(&self, session: &SessionId) {
        let _ = self.gateway.send_message(GatewayMsg::EndSession {
            session: session.clone(),
        });
    }

    /// Sends `payload` to `node` and waits for it to come back (link round trip; bench only).
    #[cfg(feature = "bench")]
    pub async fn echo(
        &self,
        node: &str,
        payload: Envelope<AgentReport>,
        timeout: Duration,
    ) -> Option<Envelope<AgentReport>> {
        let (reply, answer) = oneshot::channel();
        self.gateway
            .send_message(GatewayMsg::Echo {
                node: node.to_owned(),
                payload,
                reply,
            })
            .ok()?;
        tokio::time::timeout(timeout, answer).await.ok()?.ok()
    }

    /// Asks the node of placed agent `agent` (of `template.session`) to send `count` copies
    /// of `template` as that agent's reports (see `ToHost::Flood`; bench only).
    #[cfg(feature = "bench")]
    pub fn flood(&self, agent: u32, first_seq: u64, count: u32, template: Envelope<AgentReport>) {
        let _ = self.gateway.send_message(GatewayMsg::Flood {
            agent,
            first_seq,
            count,
            template,
        });
    }

    /// Stops the gateway and the node server, after a short grace period (200 ms) so the
    /// last frames (a session's `Stop` and `EndSession`) reach the nodes.
    pub async fn shutdown(&self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.gateway.stop(Some("orchestrator shutting down".into()));
    }
}
