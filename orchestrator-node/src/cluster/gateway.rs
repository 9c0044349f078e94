//! The Gateway actor: the orchestrator's one point of contact with its agent nodes.
//!
//! It owns the orchestrator's inbox (pg group `orchestrators`), watches the `conclave` pg
//! scope and the node server's session events, admits nodes that say hello, heartbeats them,
//! and routes each session's traffic: commands out to the node hosting the agent, reports in to
//! the session's coordinator.
//!
//! Choices, and why:
//! - **Admission.** A node is admitted on its `Hello` (after ractor_cluster accepted its
//!   cookie, and TLS its certificate). The hello's sender is the node session its inbox lives
//!   on (the pg group of its instance), never a name in the hello. A hello under the name of a
//!   node that is still joined is *refused* — a second process cannot evict a live node by
//!   claiming its name — unless it comes from the same process (same random instance number)
//!   over a new connection, which replaces the old link. A restarted node is admitted once its
//!   previous life is lost (heartbeat deadline). With TLS, the node's certificate (verified
//!   against the CA by conclave's acceptor) must be issued for the node's name (a DNS SAN equal
//!   to `--name`); otherwise the node is refused and the log names both. A node speaking
//!   another cluster protocol version is refused with a reason.
//! - **Sender of a frame.** ractor_cluster does not tell an actor which connection a cast came
//!   over. The gateway issues every admitted node a random link key in its `Welcome` (over that
//!   node's connection only) and takes the sender of a frame to be the node that holds the
//!   frame's key: a report, spawn answer or exit is accepted only for an agent placed on that
//!   node, and a heartbeat only keeps that node alive. Frames with an unknown key are dropped.
//!   Incarnation numbers are random, so one node cannot guess another's.
//! - **Loss.** A node is lost when its heartbeats stop past the deadline, when its inbox leaves
//!   the `hosts` pg group, or when its node session closes, whichever comes first. Its node
//!   session is then torn down (a half-open link would otherwise linger), and every live agent
//!   it hosted gets `CoordinatorMsg::AgentDown`: the session goes on with the others.
//! - **Lost before a session.** A node lost while the orchestrator runs is remembered (until
//!   it returns). A session placed on it later does not fail: its agents there are placed
//!   `Down` without a spawn, the coordinator gets `AgentDown` on attach, and a return spawns
//!   them like any lost agent's. A node never seen is still an error (it may be a typo).
//! - **Return.** When a node with agents in a running session says hello again, each of those
//!   agents is spawned anew under a fresh *incarnation* number; once the node confirms,
//!   the coordinator gets `CoordinatorMsg::AgentBack` (its machine gives the agent a fresh
//!   turn with the current answers). Reports carry the incarnation: anything from an older
//!   one is dropped here, so nothing is applied twice, and the coordinator can forget the
//!   agent's old sequence numbers on purpose. What the lost incarnation had in flight is lost,
//!   and the journal says so (`agent_lost`, `agent_failed`).
//! - **Refusals.** A connection that fails its TLS handshake, or does not finish it or the
//!   cookie handshake within 5 s, is dropped and logged by the node layer
//!   (`conclave_cluster::node`); one that fails ractor_cluster's cookie handshake or
//!   closes before authenticating is logged here. Each log line is a `warn` naming the peer
//!   address and the reason; such a peer is never admitted and never seen by a session.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use conclave_cluster::heartbeat::{HeartbeatConfig, Liveness};
use conclave_cluster::inbox::spawn_inbox;
use conclave_cluster::node::{self, NodeEvent, NodeHandle};
use conclave_cluster::security::certificate_names;
use conclave_cluster::wire::{HostInbox, send_to_host};
#[cfg(feature = "bench")]
use conclave_protocol::AgentReport;
use conclave_protocol::cluster::TurnLimits;
use conclave_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, HOST_GROUP, NodeHello, ORCHESTRATOR_GROUP, SCOPE, SpawnAgent, ToHost,
    ToOrchestrator, host_group,
};
use conclave_protocol::config::AgentSpec;
use conclave_protocol::tools::ServerStartReport;
use conclave_protocol::{CoordinatorCommand, Envelope, SessionId};
use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::NodeId;
use ractor_cluster::node::NodeServerSessionInformation;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{PLACE_TIMEOUT, PlaceError, PlacedTools, Placement};
use crate::coordinator::CoordinatorMsg;

/// A joined agent node, as sessions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub instance: u64,
    pub version: String,
    /// Names of the provider-key variables the node holds.
    pub provider_keys: Vec<String>,
    pub peer_addr: String,
}

/// Messages of the gateway.
pub enum GatewayMsg {
    /// A frame from an agent node (through the inbox).
    FromNode(ToOrchestrator),
    Node(NodeEvent),
    /// The heartbeat timer, with the instant it fired: nodes' liveness is judged as of then
    /// (every frame that reached the gateway before it has been handled by the time it is).
    Tick(Instant),
    Place {
        session: SessionId,
        placements: Vec<Placement>,
        reply: PlaceReply,
    },
    PlaceTimeout {
        session: SessionId,
    },
    Attach {
        session: SessionId,
        coordinator: ActorRef<CoordinatorMsg>,
    },
    Command {
        session: SessionId,
        agent: u32,
        envelope: Envelope<CoordinatorCommand>,
    },
    EndSession {
        session: SessionId,
    },
    /// The session's answer snapshots, for its nodes' `FetchSnapshot`s.
    ShareSnapshots {
        session: SessionId,
        store: std::sync::Arc<crate::snapshots::SnapshotStore>,
    },
    #[cfg(feature = "bench")]
    Echo {
        node: String,
        payload: Envelope<AgentReport>,
        reply: oneshot::Sender<Envelope<AgentReport>>,
    },
    #[cfg(feature = "bench")]
    Flood {
        agent: u32,
        first_seq: u64,
        count: u32,
        template: Envelope<AgentReport>,
    },
}

impl ractor::Message for GatewayMsg {}

pub struct GatewayArgs {
    pub node: NodeHandle,
    pub heartbeat: HeartbeatConfig,
    pub nodes: watch::Sender<BTreeMap<String, NodeInfo>>,
    /// The nodes lost while this orchestrator runs and not back yet, with why.
    pub lost: watch::Sender<BTreeMap<String, String>>,
    pub tls: bool,
    pub listen: SocketAddr,
}

struct Joined {
    info: NodeInfo,
    host: HostInbox,
    node_id: NodeId,
    /// The link key issued in `Welcome`.
    link: u64,
    liveness: Liveness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Spawn sent, waiting for `Spawned`; `rejoin` when it replaces a lost incarnation.
    Spawning {
        rejoin: bool,
    },
    Live,
    Down,
}

struct Placed {
    node: String,
    spec: AgentSpec,
    limits: TurnLimits,
    incarnation: u64,
    link: Link,
    /// Why the agent went down before a coordinator was attached (told on attach).
    untold_loss: Option<String>,
    /// How its MCP servers started on the node (from `Spawned`).
    tools: Vec<ServerStartReport>,
}

/// Where a placement's answer goes.
type PlaceReply = oneshot::Sender<Result<PlacedTools, PlaceError>>;

struct Route {
    coordinator: Option<ActorRef<CoordinatorMsg>>,
    agents: HashMap<u32, Placed>,
    /// While placing: the reply and the agents not yet confirmed.
    placing: Option<(PlaceReply, HashSet<u32>)>,
    /// The session's answer snapshots, served to its nodes on request.
    snapshots: Option<std::sync::Arc<crate::snapshots::SnapshotStore>>,
}

impl Route {
    /// Answers the placement once no agent is still starting: how each agent's MCP servers
    /// started (none for an agent that starts down).
    fn answer_placing_when_done(&mut self) {
        if self
            .placing
            .as_ref()
            .is_some_and(|(_, pending)| pending.is_empty())
            && let Some((reply, _)) = self.placing.take()
        {
            let mut started: PlacedTools = self
                .agents
                .iter()
                .map(|(agent, placed)| (*agent, placed.tools.clone()))
                .collect();
            started.sort_by_key(|(agent, _)| *agent);
            let _ = reply.send(Ok(started));
        }
    }
}

/// A connection the node server opened, before and after authentication.
struct Peer {
    addr: String,
    authenticated: bool,
    refusal_logged: bool,
}

pub struct GatewayState {
    node: NodeHandle,
    heartbeat: HeartbeatConfig,
    nodes_tx: watch::Sender<BTreeMap<String, NodeInfo>>,
    /// Nodes that were joined and are lost (see the module docs, "Loss"), until they return.
    lost_tx: watch::Sender<BTreeMap<String, String>>,
    joined: HashMap<String, Joined>,
    peers: HashMap<ActorId, Peer>,
    sessions_by_node: HashMap<NodeId, NodeServerSessionInformation>,
    routes: HashMap<SessionId, Route>,
    /// Link key → node name.
    links: HashMap<u64, String>,
    /// Hellos that arrived before their node session's `Authenticated` event (the event and
    /// the frame travel separate paths); handled when the event comes.
    early_hellos: HashMap<NodeId, NodeHello>,
    /// Whether the cluster runs mutual TLS (then certificate names are checked).
    tls: bool,
    #[cfg(feature = "bench")]
    next_nonce: u64,
    #[cfg(feature = "bench")]
    echoes: HashMap<u64, oneshot::Sender<Envelope<AgentReport>>>,
}

/// A random number that is never 0 (incarnations and link keys; 0 means "none").
fn random_nonzero() -> u64 {
    loop {
        let n: u64 = rand::random();
        if n != 0 {
            return n;
        }
    }
}

/// The gateway actor.
pub struct Gateway;

impl GatewayState {
    fn publish(&self) {
        let nodes = self
            .joined
            .iter()
            .map(|(name, joined)| (name.clone(), joined.info.clone()))
            .collect();
        self.nodes_tx.send_replace(nodes);
    }

    fn send(&self, node: &str, message: ToHost) -> bool {
        match self.joined.get(node) {
            Some(joined) => match send_to_host(&joined.host, message) {
                Ok(()) => true,
                Err(error) => {
                    debug!(%node, %error, "frame to node not sent");
                    false
                }
            },
            None => false,
        }
    }

    fn incarnation(&mut self) -> u64 {
        random_nonzero()
    }

    /// The node a link key was issued to.
    fn sender(&self, link: u64) -> Option<&str> {
        self.links.get(&link).map(String::as_str)
    }

    fn spawn_request(session: &SessionId, agent: u32, placed: &Placed) -> ToHost {
        ToHost::Spawn(Box::new(SpawnAgent {
            session: session.clone(),
            agent,
            incarnation: placed.incarnation,
            spec: placed.spec.clone(),
            limits: placed.limits.clone(),
        }))
    }

    /// A node is gone: tear its link down and fail its agents.
    fn node_lost(&mut self, name: &str, reason: &str) {
        let Some(joined) = self.joined.remove(name) else {
            return;
        };
        self.links.remove(&joined.link);
        warn!(node = %name, %reason, "agent node lost");
        // Known lost before the joined list changes: a session waiting for nodes then sees
        // both at once.
        self.lost_tx.send_modify(|lost| {
            lost.insert(name.to_owned(), reason.to_owned());
        });
        self.publish();
        if let Some(session) = self.sessions_by_node.get(&joined.node_id) {
            session.actor.stop(Some(format!("node lost: {reason}")));
        }
        for (session, route) in &mut self.routes {
            for (&agent, placed) in &mut route.agents {
                if placed.node != name {
                    continue;
                }
                let was = placed.link;
                placed.link = Link::Down;
                let why = format!("node `{name}` lost: {reason}");
                match was {
                    Link::Live => match &route.coordinator {
                        Some(coordinator) => {
                            let _ = coordinator
                                .send_message(CoordinatorMsg::AgentDown { agent, reason: why });
                        }
                        None => placed.untold_loss = Some(why),
                    },
                    // Lost while the session is being placed: the agent starts down, like one
                    // whose node was lost before (told on attach; spawned if the node returns).
                    Link::Spawning { rejoin: false } => {
                        placed.untold_loss =
                            Some(format!("{why} while starting agent `{}`", placed.spec.id));
                        if let Some((_, pending)) = &mut route.placing {
                            pending.remove(&agent);
                        }
                    }
                    Link::Spawning { rejoin: true } | Link::Down => {}
                }
                debug!(%session, agent, "agent marked down");
            }
            route.answer_placing_when_done();
        }
    }

    fn on_hello(&mut self, hello: NodeHello) {
        // After a reconnect the group can still hold the previous session's stand-in for a
        // moment; node ids only grow, so the newest session's is the highest.
        let members =
            ractor::pg::get_scoped_members(&SCOPE.to_owned(), &host_group(hello.instance));
        let Some(cell) = members
            .into_iter()
            .filter(|c| !c.get_id().is_local())
            .max_by_key(|c| match c.get_id() {
                ActorId::Remote { node_id, .. } => node_id,
                ActorId::Local(_) => 0,
            })
        else {
            // The cluster's group sync of a fresh link can land after the node's first frame;
            // the node says hello again each second until it is welcomed.
            debug!(node = %hello.name, "hello from a node whose inbox is not in the cluster yet; ignored");
            return;
        };
        let node_id = match cell.get_id() {
            ActorId::Remote { node_id, .. } => node_id,
            ActorId::Local(_) => return,
        };
        if !self.sessions_by_node.contains_key(&node_id) {
            self.early_hellos.insert(node_id, hello);
            return;
        }
        let host: HostInbox = ActorRef::from(cell);
        let peer_addr = self
            .sessions_by_node
            .get(&node_id)
            .map(|s| s.peer_addr.clone())
            .unwrap_or_default();
        let refuse = |reason: String| {
            warn!(node = %hello.name, peer = %peer_addr, %reason, "node refused");
            let _ = send_to_host(&host, ToHost::Refused { reason });
        };
        if self.tls {
            match self.node.peer_certificates.get(&peer_addr) {
                Some(cert) if certificate_names(&cert, &hello.name) => {}
                Some(_) => {
                    return refuse(format!(
                        "certificate name mismatch: the node calls itself `{}` but its TLS certificate is not issued for that name (its DNS subject alternative name must equal --name)",
                        hello.name
                    ));
                }
                None => {
                    return refuse(format!(
                        "no verified client certificate on the connection of node `{}`",
                        hello.name
                    ));
                }
            }
        }
        if hello.protocol != CLUSTER_PROTOCOL_VERSION {
            let reason = format!(
                "cluster protocol {} is not this orchestrator's {CLUSTER_PROTOCOL_VERSION}; run the same conclave version on every node",
                hello.protocol
            );
            return refuse(reason);
        }
        if let Some(previous) = self.joined.get(&hello.name) {
            if previous.host.get_id() == host.get_id() {
                let _ = send_to_host(
                    &host,
                    ToHost::Welcome {
                        orchestrator: env!("CARGO_PKG_VERSION").to_owned(),
                        link: previous.link,
                    },
                );
                return;
            }
            if previous.info.instance != hello.instance {
                return refuse(format!(
                    "a node named `{}` is already joined (from {}); stop it or give this node another --name",
                    hello.name, previous.info.peer_addr
                ));
            }
            self.node_lost(&hello.name, "it reconnected over a new link");
        }
        let link = random_nonzero();
        info!(
            node = %hello.name,
            peer = %peer_addr,
            version = %hello.version,
            provider_keys = ?hello.provider_keys,
            "agent node joined"
        );
        let _ = send_to_host(
            &host,
            ToHost::Welcome {
                orchestrator: env!("CARGO_PKG_VERSION").to_owned(),
                link,
            },
        );
        self.links.insert(link, hello.name.clone());
        self.lost_tx
            .send_if_modified(|lost| lost.remove(&hello.name).is_some());
        self.joined.insert(
            hello.name.clone(),
            Joined {
                info: NodeInfo {
                    instance: hello.instance,
                    version: hello.version,
                    provider_keys: hello.provider_keys,
                    peer_addr,
                },
                host,
                node_id,
                link,
                liveness: Liveness::new(Instant::now(), self.heartbeat.deadline),
            },
        );
        self.publish();
        self.offer_rejoin(&hello.name);
    }

    /// Re-spawns, under new incarnations, the agents of running sessions placed on `name`
    /// that are down.
    fn offer_rejoin(&mut self, name: &str) {
        let mut requests = Vec::new();
        for (session, route) in &mut self.routes {
            if route.coordinator.is_none() {
                continue;
            }
            for (&agent, placed) in &mut route.agents {
                if placed.node == name && placed.link == Link::Down {
                    placed.incarnation = random_nonzero();
                    placed.link = Link::Spawning { rejoin: true };
                    info!(%session, agent = %placed.spec.id, node = %name, "offering the returning node its agent back");
                    requests.push(Self::spawn_request(session, agent, placed));
                }
            }
        }
        for request in requests {
            self.send(name, request);
        }
    }

    fn on_spawned(
        &mut self,
        sender: &str,
        session: SessionId,
        agent: u32,
        incarnation: u64,
        error: Option<String>,
        tools: Vec<ServerStartReport>,
    ) {
        let Some(route) = self.routes.get_mut(&session) else {
            return;
        };
        let Some(placed) = route.agents.get_mut(&agent) else {
            return;
        };
        if placed.incarnation != incarnation || placed.node != sender {
            return;
        }
        let Link::Spawning { rejoin } = placed.link else {
            return;
        };
        match error {
            None => {
                placed.link = Link::Live;
                if rejoin {
                    info!(%session, agent = %placed.spec.id, node = %placed.node, "agent back on its node");
                    if let Some(coordinator) = &route.coordinator {
                        let _ = coordinator.send_message(CoordinatorMsg::AgentBack {
                            agent,
                            node: placed.node.clone(),
                            tools: tools.clone(),
                        });
                    }
                }
                placed.tools = tools;
                if let Some((_, pending)) = &mut route.placing {
                    pending.remove(&agent);
                }
                route.answer_placing_when_done();
            }
            Some(message) => {
                placed.link = Link::Down;
                warn!(%session, agent = %placed.spec.id, node = %placed.node, %message, "agent could not start on its node");
                if let Some((reply, _)) = route.placing.take() {
                    let _ = reply.send(Err(PlaceError::Agent {
                        agent: placed.spec.id.clone(),
                        node: placed.node.clone(),
                        message,
                    }));
                }
            }
        }
    }

    /// Takes the sender of a frame from its link key; frames with an unknown key are dropped.
    fn on_frame(&mut self, frame: ToOrchestrator) {
        let link = match &frame {
            ToOrchestrator::Hello(hello) => return self.on_hello(hello.clone()),
            ToOrchestrator::Heartbeat { link }
            | ToOrchestrator::Spawned { link, .. }
            | ToOrchestrator::Report { link, .. }
            | ToOrchestrator::FetchSnapshot { link, .. }
            | ToOrchestrator::AgentExited { link, .. } => *link,
            #[cfg(feature = "bench")]
            ToOrchestrator::EchoReply { nonce, payload } => {
                if let Some(reply) = self.echoes.remove(nonce) {
                    let _ = reply.send(payload.clone());
                }
                return;
            }
        };
        let Some(sender) = self.sender(link).map(str::to_owned) else {
            debug!("cluster frame with an unknown link key dropped");
            return;
        };
        // Any frame under the node's key shows that its link is alive, not only a heartbeat:
        // a heartbeat queued behind a large snapshot (tens of 1 MiB chunks on the same link)
        // reaches us late although the node never stopped talking.
        if let Some(joined) = self.joined.get_mut(&sender) {
            joined.liveness.saw(Instant::now());
        }
        match frame {
            ToOrchestrator::Heartbeat { .. } => {}
            ToOrchestrator::Spawned {
                session,
                agent,
                incarnation,
                error,
                tools,
                ..
            } => self.on_spawned(&sender, session, agent, incarnation, error, tools),
            ToOrchestrator::Report {
                agent,
                incarnation,
                envelope,
                ..
            } => {
                let route = self.routes.get(&envelope.session);
                let placed = route.and_then(|r| r.agents.get(&agent));
                if let Some(placed) = placed
                    && placed.node != sender
                {
                    warn!(
                        node = %sender,
                        agent = %placed.spec.id,
                        host = %placed.node,
                        "report for an agent this node does not host dropped"
                    );
                    return;
                }
                let current = route.and_then(|r| {
                    let placed = r.agents.get(&agent)?;
                    (placed.incarnation == incarnation && placed.link == Link::Live)
                        .then_some(r.coordinator.as_ref())
                        .flatten()
                });
                match current {
                    Some(coordinator) => {
                        let _ = coordinator.send_message(CoordinatorMsg::Report(envelope));
                    }
                    None => debug!(
                        session = %envelope.session,
                        agent,
                        incarnation,
                        seq = envelope.seq,
                        "report of an agent incarnation that is not live dropped"
                    ),
                }
            }
            ToOrchestrator::AgentExited {
                session,
                agent,
                incarnation,
                reason,
                ..
            } => {
                let Some(route) = self.routes.get_mut(&session) else {
                    return;
                };
                let Some(placed) = route.agents.get_mut(&agent) else {
                    return;
                };
                if placed.node == sender
                    && placed.incarnation == incarnation
                    && placed.link == Link::Live
                {
                    placed.link = Link::Down;
                    if let Some(coordinator) = &route.coordinator {
                        let _ = coordinator.send_message(CoordinatorMsg::AgentDown {
                            agent,
                            reason: format!("agent on node `{}` exited: {reason}", placed.node),
                        });
                    }
                }
            }
            ToOrchestrator::FetchSnapshot {
                session,
                agent,
                incarnation,
                label,
                digest,
                ..
            } => {
                // Only a live agent of the session, asking through its own node's link.
                let route = self.routes.get(&session);
                let entitled = route.and_then(|r| r.agents.get(&agent)).is_some_and(|p| {
                    p.node == sender && p.incarnation == incarnation && p.link == Link::Live
                });
                let store = route.and_then(|r| r.snapshots.clone());
                let host = self.joined.get(&sender).map(|j| j.host.clone());
                match (entitled, store, host) {
                    (true, Some(store), Some(host)) => {
                        crate::snapshots::spawn_serve(store, host, session, label, digest);
                    }
                    _ => {
                        warn!(node = %sender, %session, agent, %label, "snapshot request of an agent this node does not host, or of a session without snapshots, dropped")
                    }
                }
            }
            ToOrchestrator::Hello(_) => {}
            #[cfg(feature = "bench")]
            ToOrchestrator::EchoReply { .. } => {}
        }
    }

    fn on_node_event(&mut self, myself: &ActorRef<GatewayMsg>, event: NodeEvent) {
        match event {
            NodeEvent::Opened(info) => {
                // Monitoring the session gives its exit reason (`auth_fail` for a wrong cookie).
                myself.get_cell().monitor(info.actor.get_cell());
                self.peers.insert(
                    info.actor.get_id(),
                    Peer {
                        addr: info.peer_addr.clone(),
                        authenticated: false,
                        refusal_logged: false,
                    },
                );
            }
            NodeEvent::Authenticated(info) => {
                if let Some(peer) = self.peers.get_mut(&info.actor.get_id()) {
                    peer.authenticated = true;
                }
                info!(peer = %info.peer_addr, "node connection authenticated");
                let node_id = info.node_id;
                self.sessions_by_node.insert(node_id, info);
                if let Some(hello) = self.early_hellos.remove(&node_id) {
                    self.on_hello(hello);
                }
            }
            NodeEvent::Ready(_) => {}
            NodeEvent::Disconnected(info) => {
                self.node.peer_certificates.remove(&info.peer_addr);
                self.early_hellos.remove(&info.node_id);
                if let Some(peer) = self.peers.remove(&info.actor.get_id())
                    && !peer.authenticated
                    && !peer.refusal_logged
                {
                    warn!(
                        peer = %peer.addr,
                        claimed_name = %info.peer_name.as_ref().map(|n| n.name.as_str()).unwrap_or("(none)"),
                        "refused a node connection: it closed before authenticating (not a conclave node, garbage, or an early close)"
                    );
                }
                let lost: Vec<String> = self
                    .joined
                    .iter()
                    .filter(|(_, j)| j.node_id == info.node_id)
                    .map(|(name, _)| name.clone())
                    .collect();
                let closed_current = self
                    .sessions_by_node
                    .get(&info.node_id)
                    .is_some_and(|s| s.actor.get_id() == info.actor.get_id());
                if closed_current {
                    self.sessions_by_node.remove(&info.node_id);
                }
                for name in lost {
                    self.node_lost(&name, "its connection closed");
                }
            }
        }
    }

    fn on_session_exit(&mut self, id: ActorId, reason: Option<String>) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !peer.authenticated && reason.as_deref() == Some(node::AUTH_TIMEOUT_REASON) {
            // The node layer has logged the refusal already.
            peer.refusal_logged = true;
        }
        if !peer.authenticated && reason.as_deref() == Some("auth_fail") {
            peer.refusal_logged = true;
            warn!(
                peer = %peer.addr,
                "refused a node connection: authentication failed (wrong cookie)"
            );
        }
    }

    /// Loses the nodes silent past the deadline as of `now` (when the timer fired), then
    /// sends each joined node a heartbeat.
    fn check_heartbeats(&mut self, now: Instant) {
        let expired: Vec<(String, u128)> = self
            .joined
            .iter()
            .filter(|(_, j)| j.liveness.expired(now))
            .map(|(name, j)| (name.clone(), j.liveness.silent_for(now).as_millis()))
            .collect();
        for (name, silent_ms) in expired {
            self.node_lost(
                &name,
                &format!(
                    "no heartbeat for {silent_ms} ms (deadline {} ms)",
                    self.heartbeat.deadline.as_millis()
                ),
            );
        }
        for (name, joined) in &self.joined {
            if let Err(error) = send_to_host(&joined.host, ToHost::Heartbeat) {
                debug!(node = %name, %error, "heartbeat not sent");
            }
        }
    }
}

impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        args.node.server.get_cell().link(myself.get_cell());
        let to_gateway = myself.clone();
        node::subscribe(&args.node.server, "conclave-gateway", move |event| {
            let _ = to_gateway.send_message(GatewayMsg::Node(event));
        })?;
        ractor::pg::monitor_scope(SCOPE.to_owned(), myself.get_cell());
        let to_gateway = myself.clone();
        spawn_inbox::<ToOrchestrator>(
            myself.get_cell(),
            &[ORCHESTRATOR_GROUP.to_owned()],
            std::sync::Arc::new(move |frame| {
                to_gateway.send_message(GatewayMsg::FromNode(frame)).is_ok()
            }),
        )
        .await?;
        myself.send_interval(args.heartbeat.interval, || GatewayMsg::Tick(Instant::now()));
        info!(listen = %args.listen, tls = args.tls, "cluster listening for agent nodes");
        Ok(GatewayState {
            node: args.node,
            heartbeat: args.heartbeat,
            nodes_tx: args.nodes,
            lost_tx: args.lost,
            joined: HashMap::new(),
            peers: HashMap::new(),
            sessions_by_node: HashMap::new(),
            routes: HashMap::new(),
            links: HashMap::new(),
            early_hellos: HashMap::new(),
            tls: args.tls,
            #[cfg(feature = "bench")]
            next_nonce: 0,
            #[cfg(feature = "bench")]
            echoes: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GatewayMsg>,
        message: GatewayMsg,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GatewayMsg::FromNode(frame) => state.on_frame(frame),
            GatewayMsg::Node(event) => state.on_node_event(&myself, event),
            GatewayMsg::Tick(fired) => state.check_heartbeats(fired),
            GatewayMsg::Place {
                session,
                placements,
                reply,
            } => {
                let mut route = Route {
                    coordinator: None,
                    agents: HashMap::new(),
                    placing: None,
                    snapshots: None,
                };
                let mut pending = HashSet::new();
                let mut requests = Vec::new();
                for placement in placements {
                    // A node lost earlier (in a batch, or between a server's sessions) does
                    // not stop the session: its agents start down, the coordinator is told on
                    // attach, and they are spawned if the node returns (as in a session
                    // that lost the node while running).
                    let lost = match state.joined.contains_key(&placement.node) {
                        true => None,
                        false => match state.lost_tx.borrow().get(&placement.node) {
                            Some(reason) => Some(format!(
                                "node `{}` lost before this session: {reason}",
                                placement.node
                            )),
                            None => {
                                let _ = reply.send(Err(PlaceError::Cluster(format!(
                                    "node `{}` of agent `{}` is not joined",
                                    placement.node, placement.spec.id
                                ))));
                                return Ok(());
                            }
                        },
                    };
                    let placed = Placed {
                        node: placement.node,
                        spec: placement.spec,
                        limits: placement.limits,
                        incarnation: state.incarnation(),
                        link: match lost {
                            Some(_) => Link::Down,
                            None => Link::Spawning { rejoin: false },
                        },
                        untold_loss: lost,
                        tools: Vec::new(),
                    };
                    if placed.untold_loss.is_some() {
                        info!(%session, agent = %placed.spec.id, node = %placed.node, "agent starts down: its node was lost");
                        route.agents.insert(placement.agent, placed);
                        continue;
                    }
                    requests.push((
                        placed.node.clone(),
                        GatewayState::spawn_request(&session, placement.agent, &placed),
                    ));
                    pending.insert(placement.agent);
                    route.agents.insert(placement.agent, placed);
                }
                route.placing = Some((reply, pending));
                // Every agent's node may be lost: then there is nothing to wait for.
                route.answer_placing_when_done();
                state.routes.insert(session.clone(), route);
                for (node, request) in requests {
                    state.send(&node, request);
                }
                myself.send_after(PLACE_TIMEOUT, move || GatewayMsg::PlaceTimeout { session });
            }
            GatewayMsg::PlaceTimeout { session } => {
                if let Some(route) = state.routes.get_mut(&session)
                    && let Some((reply, pending)) = route.placing.take()
                {
                    let names: Vec<String> = pending
                        .iter()
                        .filter_map(|a| route.agents.get(a))
                        .map(|p| format!("`{}` on `{}`", p.spec.id, p.node))
                        .collect();
                    let _ = reply.send(Err(PlaceError::Cluster(format!(
                        "no answer within {} s from the nodes starting {}",
                        PLACE_TIMEOUT.as_secs(),
                        names.join(", ")
                    ))));
                }
            }
            GatewayMsg::Attach {
                session,
                coordinator,
            } => {
                if let Some(route) = state.routes.get_mut(&session) {
                    for (&agent, placed) in &mut route.agents {
                        if let Some(reason) = placed.untold_loss.take() {
                            let _ = coordinator
                                .send_message(CoordinatorMsg::AgentDown { agent, reason });
                        }
                    }
                    route.coordinator = Some(coordinator);
                }
            }
            GatewayMsg::Command {
                session,
                agent,
                envelope,
            } => {
                let target = state
                    .routes
                    .get(&session)
                    .and_then(|r| r.agents.get(&agent))
                    .filter(|p| p.link == Link::Live)
                    .map(|p| (p.node.clone(), p.incarnation));
                let sent = match target {
                    Some((node, incarnation)) => state.send(
                        &node,
                        ToHost::Command {
                            agent,
                            incarnation,
                            envelope,
                        },
                    ),
                    None => false,
                };
                if !sent {
                    debug!(%session, agent, "command for an agent that is not live dropped");
                }
            }
            GatewayMsg::ShareSnapshots { session, store } => {
                if let Some(route) = state.routes.get_mut(&session) {
                    route.snapshots = Some(store);
                }
            }
            GatewayMsg::EndSession { session } => {
                if let Some(mut route) = state.routes.remove(&session) {
                    if let Some((reply, _)) = route.placing.take() {
                        let _ = reply.send(Err(PlaceError::Cluster("the session ended".into())));
                    }
                    let nodes: HashSet<String> =
                        route.agents.values().map(|p| p.node.clone()).collect();
                    for node in nodes {
                        state.send(
                            &node,
                            ToHost::EndSession {
                                session: session.clone(),
                            },
                        );
                    }
                }
            }
            #[cfg(feature = "bench")]
            GatewayMsg::Echo {
                node,
                payload,
                reply,
            } => {
                state.next_nonce += 1;
                let nonce = state.next_nonce;
                if state.send(&node, ToHost::Echo { nonce, payload }) {
                    state.echoes.insert(nonce, reply);
                }
            }
            #[cfg(feature = "bench")]
            GatewayMsg::Flood {
                agent,
                first_seq,
                count,
                template,
            } => {
                let target = state
                    .routes
                    .get(&template.session)
                    .and_then(|r| r.agents.get(&agent))
                    .map(|p| (p.node.clone(), p.incarnation));
                if let Some((node, incarnation)) = target {
                    state.send(
                        &node,
                        ToHost::Flood {
                            agent,
                            incarnation,
                            first_seq,
                            count,
                            template,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<GatewayMsg>,
        event: SupervisionEvent,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(
                scope,
                group,
                actors,
            )) if scope == SCOPE && group == HOST_GROUP => {
                let gone: HashSet<ActorId> = actors.iter().map(|a| a.get_id()).collect();
                let lost: Vec<String> = state
                    .joined
                    .iter()
                    .filter(|(_, j)| gone.contains(&j.host.get_id()))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in lost {
                    state.node_lost(&name, "it left the cluster");
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if cell.get_id() == state.node.server.get_id() {
                    warn!("the cluster node server stopped; stopping the gateway");
                    myself.stop(Some("node server stopped".into()));
                } else {
                    state.on_session_exit(cell.get_id(), reason);
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if cell.get_id() == state.node.server.get_id() {
                    warn!(%error, "the cluster node server failed; stopping the gateway");
                    myself.stop(Some("node server failed".into()));
                } else {
                    state.on_session_exit(cell.get_id(), Some(error.to_string()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GatewayMsg>,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        state.node.server.stop(Some("gateway stopped".into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The gateway's sender checks, on its state directly: two joined nodes with their link
    //! keys, one agent placed on the first, and frames that claim to be about that agent.

    use std::sync::Arc;

    use conclave_cluster::inbox::spawn_inbox;
    use conclave_cluster::node::{NodeOptions, start_node};
    use conclave_cluster::security::Cookie;
    use conclave_protocol::config::{BackendOptions, BackendSpec, WireFormat};
    use conclave_protocol::{AgentReport, StreamChunk, TraceContext, TurnId};
    use tokio::sync::mpsc;

    use super::*;

    const LINK_A: u64 = 0x1111;
    const LINK_B: u64 = 0x2222;
    const INCARNATION: u64 = 0x5eed;

    /// Forwards what the coordinator would get to the test.
    struct Recorder;

    impl Actor for Recorder {
        type Msg = CoordinatorMsg;
        type State = mpsc::UnboundedSender<CoordinatorMsg>;
        type Arguments = mpsc::UnboundedSender<CoordinatorMsg>;

        async fn pre_start(
            &self,
            _myself: ActorRef<CoordinatorMsg>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _myself: ActorRef<CoordinatorMsg>,
            message: CoordinatorMsg,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = tx.send(message);
            Ok(())
        }
    }

    fn spec() -> AgentSpec {
        AgentSpec {
            id: "alpha".into(),
            backend: BackendSpec {
                wire: WireFormat::OpenAiChat,
                provider: "sim".into(),
                model: "m".into(),
                base_url: "http://127.0.0.1:9/v1".into(),
                api_key_env: None,
                temperature: None,
                top_p: None,
                max_tokens: None,
                extra_body: None,
                max_retries: 0,
                options: BackendOptions::default(),
            },
            system_message: None,
            node: Some("node-a".into()),
            workflow: Default::default(),
            tools: Default::default(),
        }
    }

    fn report(session: &SessionId, link: u64) -> ToOrchestrator {
        ToOrchestrator::Report {
            link,
            agent: 0,
            incarnation: INCARNATION,
            envelope: Envelope {
                session: session.clone(),
                sender: "alpha".into(),
                seq: 1,
                trace: TraceContext::default(),
                body: AgentReport::Chunk {
                    turn: TurnId(1),
                    chunk: StreamChunk::Content { text: "hi".into() },
                },
            },
        }
    }

    async fn state_with_two_nodes(
        session: &SessionId,
    ) -> (GatewayState, mpsc::UnboundedReceiver<CoordinatorMsg>) {
        let node = start_node(&NodeOptions {
            node_name: "gateway-test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            cookie: Cookie::new("gateway-test-cookie").unwrap(),
            tls: None,
        })
        .await
        .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (coordinator, _) = Actor::spawn(None, Recorder, tx).await.unwrap();
        let (nodes_tx, _) = watch::channel(BTreeMap::new());
        let (lost_tx, _) = watch::channel(BTreeMap::new());
        let mut state = GatewayState {
            node,
            heartbeat: HeartbeatConfig::default(),
            nodes_tx,
            lost_tx,
            joined: HashMap::new(),
            peers: HashMap::new(),
            sessions_by_node: HashMap::new(),
            routes: HashMap::new(),
            links: HashMap::new(),
            early_hellos: HashMap::new(),
            tls: false,
            #[cfg(feature = "bench")]
            next_nonce: 0,
            #[cfg(feature = "bench")]
            echoes: HashMap::new(),
        };
        for (name, link, node_id) in [("node-a", LINK_A, 1), ("node-b", LINK_B, 2)] {
            let host =
                spawn_inbox::<ToHost>(coordinator.get_cell(), &[], Arc::new(|_frame: ToHost| true))
                    .await
                    .unwrap();
            state.joined.insert(
                name.into(),
                Joined {
                    info: NodeInfo {
                        instance: link,
                        version: "test".into(),
                        provider_keys: Vec::new(),
                        peer_addr: String::new(),
                    },
                    host,
                    node_id,
                    link,
                    liveness: Liveness::new(Instant::now(), Duration::from_secs(60)),
                },
            );
            state.links.insert(link, name.into());
        }
        let mut agents = HashMap::new();
        agents.insert(
            0,
            Placed {
                node: "node-a".into(),
                spec: spec(),
                limits: TurnLimits {
                    max_workflow_retries: 0,
                    turn_timeout_ms: 1000,
                    stall_timeout_ms: 1000,
                    connect_timeout_ms: 1000,
                    max_restarts: 0,
                    restart_window_ms: 1000,
                },
                incarnation: INCARNATION,
                link: Link::Live,
                untold_loss: None,
                tools: Vec::new(),
            },
        );
        state.routes.insert(
            session.clone(),
            Route {
                coordinator: Some(coordinator),
                agents,
                placing: None,
                snapshots: None,
            },
        );
        (state, rx)
    }

    use std::time::Duration;

    async fn next(rx: &mut mpsc::UnboundedReceiver<CoordinatorMsg>) -> Option<CoordinatorMsg> {
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn a_report_is_accepted_only_from_the_node_that_hosts_the_agent() {
        let session = SessionId("s".into());
        let (mut state, mut rx) = state_with_two_nodes(&session).await;
        // node-b knows the agent and its incarnation, and sends with its own valid link key.
        state.on_frame(report(&session, LINK_B));
        // A key nobody was issued.
        state.on_frame(report(&session, 0x3333));
        assert!(
            next(&mut rx).await.is_none(),
            "an impersonated report got through"
        );
        // node-b cannot take node-a's agent down either.
        state.on_frame(ToOrchestrator::AgentExited {
            link: LINK_B,
            session: session.clone(),
            agent: 0,
            incarnation: INCARNATION,
            reason: "forged".into(),
        });
        assert!(next(&mut rx).await.is_none(), "a forged exit got through");
        assert_eq!(state.routes[&session].agents[&0].link, Link::Live);
        // The hosting node's report goes through.
        state.on_frame(report(&session, LINK_A));
        assert!(matches!(
            next(&mut rx).await,
            Some(CoordinatorMsg::Report(_))
        ));
    }

    #[tokio::test]
    async fn a_heartbeat_keeps_alive_only_the_node_its_key_was_issued_to() {
        let session = SessionId("s".into());
        let (mut state, _rx) = state_with_two_nodes(&session).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        state.on_frame(ToOrchestrator::Heartbeat { link: LINK_B });
        let now = Instant::now();
        let silent_a = state.joined["node-a"].liveness.silent_for(now);
        let silent_b = state.joined["node-b"].liveness.silent_for(now);
        assert!(silent_b < silent_a, "node-b's key refreshed node-b only");
    }

    #[tokio::test]
    async fn any_frame_under_a_nodes_key_keeps_it_alive_not_only_heartbeats() {
        let session = SessionId("s".into());
        let (mut state, _rx) = state_with_two_nodes(&session).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A snapshot chunk (a report) from node-a, with its heartbeat still queued behind it.
        state.on_frame(report(&session, LINK_A));
        let now = Instant::now();
        let silent_a = state.joined["node-a"].liveness.silent_for(now);
        let silent_b = state.joined["node-b"].liveness.silent_for(now);
        assert!(silent_a < silent_b, "node-a's report refreshed node-a");
        assert!(silent_b >= Duration::from_millis(20));
    }

    #[test]
    fn incarnations_and_link_keys_are_random_and_never_zero() {
        let draws: Vec<u64> = (0..64).map(|_| random_nonzero()).collect();
        assert!(draws.iter().all(|&n| n != 0));
        let distinct: HashSet<u64> = draws.iter().copied().collect();
        assert_eq!(distinct.len(), draws.len());
        assert!(
            draws.windows(2).all(|w| w[1] != w[0].wrapping_add(1)),
            "sequential numbers"
        );
    }
}
