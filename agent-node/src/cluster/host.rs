//! The AgentHost: the root actor of an agent node (`conclave-agent`).
//!
//! It runs the node's ractor_cluster `NodeServer`, dials the orchestrator, says hello once
//! the orchestrator's inbox shows up in the `orchestrators` pg group, and then hosts
//! AgentActors on request: for each `Spawn` it builds the agent's provider backend from *this
//! node's* environment (so API keys never cross the cluster), spawns the agent linked to
//! itself, routes coordinator commands to it and sends its reports back.
//!
//! Link life cycle, and the choices behind it:
//! - **Connecting.** A connection attempt (TCP/TLS connect, bounded by 5 s) must end in the
//!   orchestrator's `Welcome` within `join_timeout` (10 s by default). If the orchestrator
//!   closes the connection during ractor_cluster's cookie handshake, the log says so and
//!   names the likely cause (a different cookie).
//! - **Joined.** Both sides send a heartbeat every `interval`; silence past `deadline` (or the
//!   node session closing, or the orchestrator's inbox leaving the pg group) is a lost link.
//! - **Lost link.** Every hosted agent is stopped at once: the orchestrator has marked them
//!   failed (or will, at its own deadline), and a node that comes back starts fresh. The node
//!   session is torn down (a half-open TCP link would otherwise linger) and the host dials
//!   again after a bounded exponential backoff (250 ms doubling to 5 s, with jitter), for as
//!   long as the process runs. The backoff resets once a connection is welcomed.
//! - **Stale events.** Every attempt has a generation number; results and events of an older
//!   attempt or session are ignored, so a late "disconnected" never tears down a newer link.
//! - **Provider allow-list.** An agent spec comes from the orchestrator, not from this node's
//!   operator, yet runs with this node's keys. Every spec is checked against
//!   [`HostOptions::allow`] (the presets plus the operator's `--allow-base-url` and
//!   `--allow-key-env`) before a backend is built; a refusal is the agent's spawn error, which
//!   the orchestrator shows, and no provider is called.
//! - **Link key.** The `Welcome` carries the node's link key; every later frame carries it
//!   (see `conclave_protocol::cluster`).
//! - **Agents that die on their own** (a crash past the agent's own supervision) are reported
//!   as `AgentExited`; agents stopped by the session (`Stop`, `EndSession`) are not.
//! - **MCP servers start off the actor.** Starting an agent's MCP servers can take seconds
//!   (`npx` fetching a package), and the host's handler must keep answering heartbeats and
//!   spawning other agents meanwhile. So a `Spawn` does the quick checks (allow-list, backend)
//!   in the handler, then starts the servers in a task that sends [`HostMsg::ToolsStarted`]
//!   back; only then is the agent spawned and `Spawned` answered, with how each server
//!   started (for the orchestrator's journal) or why a required one did not. A start whose
//!   agent was replaced, whose session ended or whose link was lost meanwhile is stopped and
//!   not answered.
//! - **Workspaces live here.** An agent's workspace paths come relative from the orchestrator
//!   (it does not know this machine's layout) and are resolved against
//!   [`HostOptions::work_dir`] (`--work-dir`, default the current directory) before its tools
//!   start; the workspace is created then, on this node.
//! - **Peer snapshots.** An agent with a workspace shows its peers' answer snapshots; the bytes
//!   come from the orchestrator on request (`FetchSnapshot`, sent here with the link key) and
//!   land in the node's [`NodeSnapshotCache`], keyed by session and digest, so each snapshot
//!   crosses the link once per node. A session's cache goes with the session, a lost link
//!   fails the fetches in flight, and the host's stop removes the cache (see
//!   `crate::snapshot::cache`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use conclave_cluster::heartbeat::{Backoff, HeartbeatConfig, Liveness};
use conclave_cluster::inbox::spawn_inbox;
use conclave_cluster::node::{self, NodeEvent, NodeHandle, NodeOptions};
use conclave_cluster::security::Tls;
use conclave_cluster::wire::{OrchestratorInbox, send_to_orchestrator};
use conclave_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, HOST_GROUP, NodeHello, ORCHESTRATOR_GROUP, SCOPE, SpawnAgent, ToHost,
    ToOrchestrator, host_group,
};
use conclave_protocol::tools::ServerStartReport;
use conclave_protocol::trust::ProviderAllowList;
use conclave_protocol::{AgentReport, Envelope, SessionId};
use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::node::NodeServerSessionInformation;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{NodeEnv, settings_from_limits};
use crate::agent::{AgentActor, AgentArgs, AgentMsg};
use crate::outbox::{Outbox, ReportSink};
use crate::providers::{Backend, http_client};
use crate::snapshot::AgentSnapshots;
use crate::snapshot::cache::{FetchRequest, FetchSender, NodeSnapshotCache, NodeSource};
use crate::tools::{ServerStart, ToolBox, ToolStartError};
use crate::turn::AgentContext;
use crate::turn::WorkflowState;

/// Everything an agent node is started with.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The node's name (`--name`), matched against `node:` in session configs.
    pub name: String,
    /// This process's instance number (see `conclave_protocol::cluster::NodeHello`).
    pub instance: u64,
    /// The orchestrator's `HOST:PORT`.
    pub join: String,
    pub node: NodeOptions,
    /// The TLS server name to expect from the orchestrator (when TLS is on).
    pub tls_server_name: Option<rustls::pki_types::ServerName<'static>>,
    pub heartbeat: HeartbeatConfig,
    pub backoff: Backoff,
    /// From connection to `Welcome`.
    pub join_timeout: Duration,
    pub env: Arc<NodeEnv>,
    /// Which providers this node's operator lets the orchestrator's agent specs call.
    pub allow: ProviderAllowList,
    /// Where relative workspace paths of the agents placed here are resolved (`--work-dir`,
    /// absolute; see `tools::workspace::resolve_spec`).
    pub work_dir: std::path::PathBuf,
}

/// Messages of the host.
pub enum HostMsg {
    /// A frame from the orchestrator (through the inbox).
    Frame(ToHost),
    /// Start connection attempt `attempt` (ignored if a newer one exists).
    Connect {
        attempt: u64,
    },
    ConnectFailed {
        attempt: u64,
        error: String,
    },
    Node(NodeEvent),
    /// The heartbeat timer, with the instant it fired. The orchestrator's liveness is judged as
    /// of that instant: every frame that reached this actor before it has been handled by then,
    /// while frames that arrived later may still wait behind a long queue (a snapshot's
    /// chunks), so judging as of the handling time could lose a live orchestrator.
    Tick(Instant),
    /// An agent's MCP servers finished starting (see the module docs).
    ToolsStarted(Box<ToolsStarted>),
    /// A hosted agent needs a peer snapshot the node lacks: ask the orchestrator.
    FetchSnapshot(FetchRequest),
    /// A hosted agent's report, to forward.
    Report {
        agent: u32,
        incarnation: u64,
        envelope: Envelope<AgentReport>,
    },
    /// Stop everything and exit.
    Shutdown,
}

impl ractor::Message for HostMsg {}

enum Phase {
    /// Waiting for the next attempt (backoff).
    Waiting,
    Connecting {
        since: Instant,
    },
    Joined,
}

struct Hosted {
    incarnation: u64,
    actor: ActorRef<AgentMsg>,
}

/// The outcome of starting an agent's MCP servers, sent back to the host by the start task.
pub struct ToolsStarted {
    request: SpawnAgent,
    backend: Arc<Backend>,
    /// The link key when the `Spawn` arrived: a start that outlived its link is dropped.
    link: u64,
    result: Result<ToolBox, ToolStartError>,
}

pub struct HostState {
    opts: Arc<HostOptions>,
    node: NodeHandle,
    attempt: u64,
    failures: u32,
    phase: Phase,
    /// Our outgoing node session of the current attempt.
    session: Option<NodeServerSessionInformation>,
    authenticated: bool,
    gateway: Option<OrchestratorInbox>,
    /// The link key of the current link (from `Welcome`).
    link: u64,
    hello_sent: bool,
    /// When the last `Hello` left, while no `Welcome` came back (see [`HELLO_AGAIN`]).
    hello_at: Option<Instant>,
    liveness: Liveness,
    agents: HashMap<(SessionId, u32), Hosted>,
    by_actor: HashMap<ActorId, (SessionId, u32)>,
    /// Agents whose MCP servers are starting: their incarnation.
    starting: HashMap<(SessionId, u32), u64>,
    http: HashMap<u64, reqwest::Client>,
    /// Peer snapshots fetched from the orchestrator (see the module docs).
    snapshots: Arc<NodeSnapshotCache>,
    beats: Beats,
}

/// A `Hello` with no `Welcome` after this long is sent again (until the join timeout). The
/// orchestrator drops a `Hello` that arrives before it has learnt this node's inbox from the
/// cluster's group sync (a race of the two on a fresh link); an unanswered one used to cost
/// the whole join timeout and a reconnect. A repeated `Hello` is answered with the same link.
const HELLO_AGAIN: Duration = Duration::from_secs(1);

/// The node's heartbeats to the orchestrator leave from a task of their own, not from the host
/// actor: the host may be busy for seconds with a snapshot (encoding its chunks, or unpacking a
/// peer's), and a heartbeat queued behind that work would make the orchestrator lose a live
/// node. The host aims the task at the orchestrator while joined and disarms it when the link
/// goes; its liveness check of the orchestrator stays in the host (`HostMsg::Tick`).
struct Beats {
    target: Arc<std::sync::Mutex<Option<(OrchestratorInbox, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Beats {
    fn start(interval: Duration) -> Self {
        let target: Arc<std::sync::Mutex<Option<(OrchestratorInbox, u64)>>> = Arc::default();
        let aimed = target.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let to = aimed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some((gateway, link)) = to
                    && let Err(error) =
                        send_to_orchestrator(&gateway, ToOrchestrator::Heartbeat { link })
                {
                    debug!(%error, "heartbeat not sent");
                }
            }
        });
        Beats { target, task }
    }

    fn aim(&self, to: Option<(OrchestratorInbox, u64)>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Drop for Beats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent node's root actor.
pub struct AgentHost;

impl AgentHost {
    fn schedule_retry(myself: &ActorRef<HostMsg>, state: &mut HostState) -> Duration {
        let delay = state.opts.backoff.jittered(state.failures);
        state.failures = state.failures.saturating_add(1);
        state.attempt += 1;
        state.phase = Phase::Waiting;
        let attempt = state.attempt;
        myself.send_after(delay, move || HostMsg::Connect { attempt });
        delay
    }

    fn stop_agents(state: &mut HostState, reason: &str) {
        state.by_actor.clear();
        state.starting.clear();
        for ((session, agent), hosted) in state.agents.drain() {
            debug!(%session, agent, %reason, "stopping hosted agent");
            hosted.actor.kill();
        }
    }

    /// The link is gone: stop the agents, drop the session, dial again later.
    fn teardown(myself: &ActorRef<HostMsg>, state: &mut HostState, reason: &str) {
        let hosted = state.agents.len();
        Self::stop_agents(state, "link lost");
        state
            .snapshots
            .fail_all_fetches("the link to the orchestrator was lost");
        if let Some(session) = state.session.take() {
            session.actor.stop(Some(reason.to_owned()));
        }
        state.gateway = None;
        state.link = 0;
        state.beats.aim(None);
        state.hello_sent = false;
        state.hello_at = None;
        state.authenticated = false;
        let delay = Self::schedule_retry(myself, state);
        warn!(
            orchestrator = %state.opts.join,
            %reason,
            stopped_agents = hosted,
            retry_in_ms = delay.as_millis() as u64,
            "link to the orchestrator lost; reconnecting"
        );
    }

    fn is_current(state: &HostState, info: &NodeServerSessionInformation) -> bool {
        state
            .session
            .as_ref()
            .is_some_and(|s| s.actor.get_id() == info.actor.get_id())
    }

    fn send(state: &HostState, message: ToOrchestrator) -> bool {
        match &state.gateway {
            Some(gateway) => match send_to_orchestrator(gateway, message) {
                Ok(()) => true,
                Err(error) => {
                    debug!(%error, "frame to the orchestrator not sent");
                    false
                }
            },
            None => false,
        }
    }

    fn maybe_hello(state: &mut HostState) {
        if state.hello_sent || state.gateway.is_none() {
            return;
        }
        let hello = NodeHello {
            name: state.opts.name.clone(),
            instance: state.opts.instance,
            protocol: CLUSTER_PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            provider_keys: state.opts.env.provider_key_names(),
        };
        state.hello_sent = Self::send(state, ToOrchestrator::Hello(hello));
        state.hello_at = state.hello_sent.then(Instant::now);
    }

    fn on_pg(myself: &ActorRef<HostMsg>, state: &mut HostState, change: GroupChangeMessage) {
        match change {
            GroupChangeMessage::Join(scope, group, actors)
                if scope == SCOPE && group == ORCHESTRATOR_GROUP =>
            {
                let session_node = state.session.as_ref().map(|s| s.node_id);
                let Some(cell) = actors.into_iter().find(|cell| match cell.get_id() {
                    ActorId::Remote { node_id, .. } => session_node == Some(node_id),
                    ActorId::Local(_) => false,
                }) else {
                    return;
                };
                if state.gateway.is_none() {
                    debug!(orchestrator = %state.opts.join, "orchestrator inbox found");
                    state.gateway = Some(ActorRef::from(cell));
                    Self::maybe_hello(state);
                }
            }
            GroupChangeMessage::Leave(scope, group, actors)
                if scope == SCOPE && group == ORCHESTRATOR_GROUP =>
            {
                let ours = state.gateway.as_ref().map(|g| g.get_id());
                if actors.iter().any(|cell| Some(cell.get_id()) == ours) {
                    Self::teardown(myself, state, "the orchestrator left the cluster");
                }
            }
            _ => {}
        }
    }

    fn on_node_event(myself: &ActorRef<HostMsg>, state: &mut HostState, event: NodeEvent) {
        match event {
            NodeEvent::Opened(info) => {
                if !info.is_server
                    && state.session.is_none()
                    && matches!(state.phase, Phase::Connecting { .. })
                {
                    state.session = Some(info);
                }
            }
            NodeEvent::Authenticated(info) => {
                if Self::is_current(state, &info) {
                    state.authenticated = true;
                    debug!(orchestrator = %state.opts.join, "cookie accepted");
                }
            }
            NodeEvent::Ready(info) => {
                if Self::is_current(state, &info) {
                    if state.gateway.is_none() {
                        // The pg join may have been seen before this session was known.
                        state.gateway = ractor::pg::get_scoped_members(
                            &SCOPE.to_owned(),
                            &ORCHESTRATOR_GROUP.to_owned(),
                        )
                        .into_iter()
                        .find(|cell| {
                            matches!(cell.get_id(), ActorId::Remote { node_id, .. } if node_id == info.node_id)
                        })
                        .map(ActorRef::from);
                    }
                    Self::maybe_hello(state);
                }
            }
            NodeEvent::Disconnected(info) => {
                if Self::is_current(state, &info) {
                    state.session = None;
                    let reason = if state.authenticated {
                        "the connection to the orchestrator closed"
                    } else {
                        "the orchestrator closed the connection during the cookie handshake (is the cookie the same on both nodes?)"
                    };
                    Self::teardown(myself, state, reason);
                }
            }
        }
    }

    /// The quick part of a `Spawn`, in the handler: replaces an older incarnation, checks the
    /// allow-list and builds the backend. `Err` is the spawn error to answer.
    fn prepare_spawn(state: &mut HostState, request: &SpawnAgent) -> Result<Arc<Backend>, String> {
        let key = (request.session.clone(), request.agent);
        state.starting.remove(&key);
        if let Some(old) = state.agents.remove(&key) {
            state.by_actor.remove(&old.actor.get_id());
            old.actor.kill();
        }
        if let Err(refusal) = state.opts.allow.check(&request.spec.backend) {
            return Err(format!(
                "node `{}` does not allow this provider: {refusal}",
                state.opts.name
            ));
        }
        let connect_ms = request.limits.connect_timeout_ms.max(1);
        let http = match state.http.get(&connect_ms) {
            Some(client) => client.clone(),
            None => match http_client(Duration::from_millis(connect_ms)) {
                Ok(client) => {
                    state.http.insert(connect_ms, client.clone());
                    client
                }
                Err(error) => return Err(format!("cannot build an HTTP client: {error}")),
            },
        };
        let env = state.opts.env.clone();
        Backend::new(&request.spec.backend, http, &|key| env.get(key))
            .map(Arc::new)
            .map_err(|error| format!("on node `{}`: {error}", state.opts.name))
    }

    /// A `Spawn`: the quick checks here, then the agent's MCP servers start in a task, on this
    /// node with this node's environment for `${VAR}` (see the module docs).
    fn on_spawn(myself: &ActorRef<HostMsg>, state: &mut HostState, request: SpawnAgent) {
        let backend = match Self::prepare_spawn(state, &request) {
            Ok(backend) => backend,
            Err(error) => return Self::answer_spawn(state, &request, Some(error), Vec::new()),
        };
        state.starting.insert(
            (request.session.clone(), request.agent),
            request.incarnation,
        );
        let env = state.opts.env.clone();
        let reply = myself.clone();
        let link = state.link;
        let mut tools = request.spec.tools.clone();
        if let Some(workspace) = &mut tools.workspace {
            crate::tools::workspace::resolve_spec(workspace, &state.opts.work_dir);
        }
        tokio::spawn(async move {
            let lookup = |key: &str| env.get(key);
            let result = ToolBox::start(
                &request.session.to_string(),
                &request.spec.id,
                &tools,
                &lookup,
            )
            .await;
            // A host that is gone drops the message, and with it the servers.
            let _ = reply.send_message(HostMsg::ToolsStarted(Box::new(ToolsStarted {
                request,
                backend,
                link,
                result,
            })));
        });
    }

    /// The agent's MCP servers started (or did not): spawn the agent and answer the `Spawn`,
    /// unless the start is stale (see the module docs).
    async fn on_tools_started(
        myself: &ActorRef<HostMsg>,
        state: &mut HostState,
        started: ToolsStarted,
    ) {
        let ToolsStarted {
            request,
            backend,
            link,
            result,
        } = started;
        let key = (request.session.clone(), request.agent);
        if link != state.link || state.starting.get(&key) != Some(&request.incarnation) {
            debug!(session = %request.session, agent = request.agent, "MCP servers of a replaced or ended agent stopped");
            if let Ok(tools) = result {
                tools.shutdown().await;
            }
            return;
        }
        state.starting.remove(&key);
        let (error, reports) = match result {
            Ok(tools) => {
                let reports = tools.starts().iter().map(ServerStart::report).collect();
                let error =
                    Self::launch_agent(myself, state, &request, backend, Arc::new(tools)).await;
                (error, reports)
            }
            Err(error) => (
                Some(format!("on node `{}`: {error}", state.opts.name)),
                Vec::new(),
            ),
        };
        Self::answer_spawn(state, &request, error, reports);
    }

    /// Answers a `Spawn` with `Spawned`.
    fn answer_spawn(
        state: &HostState,
        request: &SpawnAgent,
        error: Option<String>,
        tools: Vec<ServerStartReport>,
    ) {
        if let Some(error) = &error {
            warn!(session = %request.session, agent = request.agent, %error, "agent could not start");
        }
        Self::send(
            state,
            ToOrchestrator::Spawned {
                link: state.link,
                session: request.session.clone(),
                agent: request.agent,
                incarnation: request.incarnation,
                error,
                tools,
            },
        );
    }

    /// Spawns the agent actor with its backend and tools. `Some` is the spawn error.
    async fn launch_agent(
        myself: &ActorRef<HostMsg>,
        state: &mut HostState,
        request: &SpawnAgent,
        backend: Arc<Backend>,
        tools: Arc<ToolBox>,
    ) -> Option<String> {
        let key = (request.session.clone(), request.agent);
        let (agent, incarnation) = (request.agent, request.incarnation);
        let to_host = myself.clone();
        let sink: ReportSink = Arc::new(move |envelope| {
            to_host
                .send_message(HostMsg::Report {
                    agent,
                    incarnation,
                    envelope,
                })
                .is_ok()
        });
        let context = Arc::new(AgentContext {
            agent_id: request.spec.id.clone(),
            backend,
            outbox: Arc::new(Outbox::new(
                request.session.clone(),
                request.spec.id.clone(),
                sink,
            )),
            system_message: request.spec.system_message.clone(),
            settings: settings_from_limits(&request.limits),
            workflow: WorkflowState::new(request.spec.workflow),
            tools,
            snapshots: request.spec.tools.workspace.as_ref().map(|workspace| {
                let to_host = myself.clone();
                let send: FetchSender = Arc::new(move |fetch| {
                    to_host.send_message(HostMsg::FetchSnapshot(fetch)).is_ok()
                });
                let source = NodeSource {
                    cache: state.snapshots.clone(),
                    send,
                    session: request.session.clone(),
                    agent,
                    incarnation,
                };
                Arc::new(AgentSnapshots::new(
                    workspace,
                    &state.opts.work_dir,
                    Arc::new(source),
                ))
            }),
        });
        match Actor::spawn_linked(None, AgentActor, AgentArgs { context }, myself.get_cell()).await
        {
            Ok((actor, _)) => {
                info!(
                    session = %request.session,
                    agent = %request.spec.id,
                    incarnation,
                    model = %request.spec.backend.model,
                    "agent started"
                );
                state.by_actor.insert(actor.get_id(), key.clone());
                state.agents.insert(key, Hosted { incarnation, actor });
                None
            }
            Err(error) => Some(format!("the agent actor did not start: {error}")),
        }
    }

    async fn on_frame(myself: &ActorRef<HostMsg>, state: &mut HostState, frame: ToHost) {
        // Once joined, any frame from the orchestrator shows the link is alive: its heartbeat
        // may wait behind a snapshot's chunks on the same link.
        if matches!(state.phase, Phase::Joined) {
            state.liveness.saw(Instant::now());
        }
        match frame {
            ToHost::Welcome { orchestrator, link } => {
                if matches!(state.phase, Phase::Connecting { .. }) {
                    state.phase = Phase::Joined;
                    state.hello_at = None;
                    state.link = link;
                    state
                        .beats
                        .aim(state.gateway.clone().map(|gateway| (gateway, link)));
                    state.failures = 0;
                    state.liveness = Liveness::new(Instant::now(), state.opts.heartbeat.deadline);
                    info!(
                        orchestrator = %state.opts.join,
                        orchestrator_version = %orchestrator,
                        node = %state.opts.name,
                        "joined the orchestrator"
                    );
                }
            }
            ToHost::Refused { reason } => {
                error!(orchestrator = %state.opts.join, %reason, "the orchestrator refused this node");
                Self::teardown(myself, state, "refused by the orchestrator");
            }
            ToHost::Heartbeat => {}
            ToHost::Spawn(request) => Self::on_spawn(myself, state, *request),
            ToHost::Command {
                agent,
                incarnation,
                envelope,
            } => {
                let key = (envelope.session.clone(), agent);
                match state.agents.get(&key) {
                    Some(hosted) if hosted.incarnation == incarnation => {
                        let _ = hosted.actor.send_message(AgentMsg::Command(envelope));
                    }
                    _ => debug!(
                        session = %envelope.session,
                        agent,
                        incarnation,
                        "command for an agent not hosted here dropped"
                    ),
                }
            }
            ToHost::PeerSnapshotChunk {
                session,
                digest,
                offset,
                data,
            } => state.snapshots.on_chunk(&session, &digest, offset, &data),
            ToHost::PeerSnapshotUnavailable {
                session,
                digest,
                reason,
            } => state.snapshots.fail(&session, &digest, &reason),
            ToHost::EndSession { session } => {
                state.snapshots.end_session(&session);
                state.starting.retain(|(s, _), _| *s != session);
                let ended: Vec<_> = state
                    .agents
                    .keys()
                    .filter(|(s, _)| *s == session)
                    .cloned()
                    .collect();
                for key in ended {
                    if let Some(hosted) = state.agents.remove(&key) {
                        state.by_actor.remove(&hosted.actor.get_id());
                        hosted.actor.stop(Some("session ended".into()));
                    }
                }
            }
            #[cfg(feature = "bench")]
            ToHost::Echo { nonce, payload } => {
                Self::send(state, ToOrchestrator::EchoReply { nonce, payload });
            }
            #[cfg(feature = "bench")]
            ToHost::Flood {
                agent,
                incarnation,
                first_seq,
                count,
                template,
            } => {
                for i in 0..u64::from(count) {
                    let mut envelope = template.clone();
                    envelope.seq = first_seq + i;
                    if !Self::send(
                        state,
                        ToOrchestrator::Report {
                            link: state.link,
                            agent,
                            incarnation,
                            envelope,
                        },
                    ) {
                        break;
                    }
                }
            }
        }
    }
}

impl Actor for AgentHost {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = HostOptions;

    async fn pre_start(
        &self,
        myself: ActorRef<HostMsg>,
        opts: HostOptions,
    ) -> Result<HostState, ActorProcessingErr> {
        let node = node::start_node(&opts.node).await?;
        node.server.get_cell().link(myself.get_cell());
        let to_host = myself.clone();
        node::subscribe(&node.server, "conclave-host", move |event| {
            let _ = to_host.send_message(HostMsg::Node(event));
        })?;
        ractor::pg::monitor_scope(SCOPE.to_owned(), myself.get_cell());
        let to_host = myself.clone();
        spawn_inbox::<ToHost>(
            myself.get_cell(),
            &[HOST_GROUP.to_owned(), host_group(opts.instance)],
            Arc::new(move |frame| to_host.send_message(HostMsg::Frame(frame)).is_ok()),
        )
        .await?;
        info!(
            node = %opts.name,
            orchestrator = %opts.join,
            listen = %node.listen,
            tls = opts.node.tls.is_some(),
            provider_keys = %opts.env.provider_key_names().join(", "),
            allowed_base_urls = %opts.allow.base_url_prefixes().collect::<Vec<_>>().join(", "),
            allowed_key_envs = %opts.allow.key_envs().collect::<Vec<_>>().join(", "),
            "agent node started"
        );
        myself.send_interval(opts.heartbeat.interval, || HostMsg::Tick(Instant::now()));
        myself.send_message(HostMsg::Connect { attempt: 0 })?;
        let deadline = opts.heartbeat.deadline;
        let heartbeat_interval = opts.heartbeat.interval;
        let opts_instance = opts.instance;
        Ok(HostState {
            opts: Arc::new(opts),
            node,
            attempt: 0,
            failures: 0,
            phase: Phase::Waiting,
            session: None,
            authenticated: false,
            gateway: None,
            link: 0,
            hello_sent: false,
            hello_at: None,
            liveness: Liveness::new(Instant::now(), deadline),
            agents: HashMap::new(),
            by_actor: HashMap::new(),
            starting: HashMap::new(),
            http: HashMap::new(),
            snapshots: Arc::new(NodeSnapshotCache::for_instance(opts_instance)),
            beats: Beats::start(heartbeat_interval),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HostMsg>,
        message: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HostMsg::Connect { attempt } => {
                if attempt != state.attempt {
                    return Ok(());
                }
                state.phase = Phase::Connecting {
                    since: Instant::now(),
                };
                state.session = None;
                state.authenticated = false;
                state.gateway = None;
                state.beats.aim(None);
                state.hello_sent = false;
                state.hello_at = None;
                let server = state.node.server.clone();
                let join = state.opts.join.clone();
                let tls: Option<(Tls, _)> =
                    match (&state.opts.node.tls, &state.opts.tls_server_name) {
                        (Some(tls), Some(name)) => Some((tls.clone(), name.clone())),
                        _ => None,
                    };
                let reply = myself.clone();
                tokio::spawn(async move {
                    let tls = tls.as_ref().map(|(tls, name)| (tls, name.clone()));
                    if let Err(error) = node::connect(&server, &join, tls).await {
                        let _ = reply.send_message(HostMsg::ConnectFailed {
                            attempt,
                            error: error.to_string(),
                        });
                    }
                });
            }
            HostMsg::ConnectFailed { attempt, error } => {
                if attempt == state.attempt {
                    let delay = Self::schedule_retry(&myself, state);
                    warn!(
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot reach the orchestrator"
                    );
                }
            }
            HostMsg::Node(event) => Self::on_node_event(&myself, state, event),
            HostMsg::Frame(frame) => Self::on_frame(&myself, state, frame).await,
            HostMsg::ToolsStarted(started) => {
                Self::on_tools_started(&myself, state, *started).await;
            }
            HostMsg::Tick(fired) => match state.phase {
                Phase::Joined => {
                    let now = fired;
                    if state.liveness.expired(now) {
                        let silent = state.liveness.silent_for(now);
                        Self::teardown(
                            &myself,
                            state,
                            &format!(
                                "no heartbeat from the orchestrator for {} ms (deadline {} ms)",
                                silent.as_millis(),
                                state.opts.heartbeat.deadline.as_millis()
                            ),
                        );
                    }
                }
                Phase::Connecting { since } if since.elapsed() <= state.opts.join_timeout => {
                    // Unanswered, or never sent (the send failed): say hello (again).
                    let unanswered = state
                        .hello_at
                        .is_some_and(|at| fired.duration_since(at) >= HELLO_AGAIN);
                    if unanswered || !state.hello_sent {
                        state.hello_sent = false;
                        Self::maybe_hello(state);
                    }
                }
                Phase::Connecting { .. } => {
                    let reason = if state.session.is_some() && !state.authenticated {
                        "connected, but the cookie handshake did not complete (is the cookie the same on both nodes?)"
                    } else {
                        "connected, but the orchestrator did not admit this node"
                    };
                    Self::teardown(
                        &myself,
                        state,
                        &format!("{reason} within {} s", state.opts.join_timeout.as_secs()),
                    );
                }
                _ => {}
            },
            HostMsg::FetchSnapshot(fetch) => {
                let sent = matches!(state.phase, Phase::Joined)
                    && Self::send(
                        state,
                        ToOrchestrator::FetchSnapshot {
                            link: state.link,
                            session: fetch.session.clone(),
                            agent: fetch.agent,
                            incarnation: fetch.incarnation,
                            label: fetch.label,
                            digest: fetch.digest.clone(),
                        },
                    );
                if !sent {
                    state.snapshots.fail(
                        &fetch.session,
                        &fetch.digest,
                        "the link to the orchestrator is down",
                    );
                }
            }
            HostMsg::Report {
                agent,
                incarnation,
                envelope,
            } => {
                if matches!(state.phase, Phase::Joined) {
                    Self::send(
                        state,
                        ToOrchestrator::Report {
                            link: state.link,
                            agent,
                            incarnation,
                            envelope,
                        },
                    );
                    // Let the link's writer run before the next report: the frame just handed
                    // over wakes it on this worker, where it would wait until this actor ran
                    // out of messages (a snapshot queues tens of 1 MiB chunks at once), and
                    // nothing, heartbeats included, would leave the node meanwhile.
                    tokio::task::yield_now().await;
                }
            }
            HostMsg::Shutdown => {
                info!(node = %state.opts.name, "shutting down");
                Self::stop_agents(state, "node shutting down");
                if let Some(session) = state.session.take() {
                    session.actor.stop(Some("node shutting down".into()));
                }
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<HostMsg>,
        event: SupervisionEvent,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure): (ActorCell, Option<String>) = match event {
            SupervisionEvent::ProcessGroupChanged(change) => {
                Self::on_pg(&myself, state, change);
                return Ok(());
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        if cell.get_id() == state.node.server.get_id() {
            error!("the cluster node server stopped; the agent node cannot continue");
            myself.stop(Some("node server stopped".into()));
            return Ok(());
        }
        if let Some(key) = state.by_actor.remove(&cell.get_id()) {
            let Some(hosted) = state.agents.remove(&key) else {
                return Ok(());
            };
            if let Some(reason) = failure {
                warn!(session = %key.0, agent = key.1, %reason, "hosted agent crashed");
                Self::send(
                    state,
                    ToOrchestrator::AgentExited {
                        link: state.link,
                        session: key.0,
                        agent: key.1,
                        incarnation: hosted.incarnation,
                        reason,
                    },
                );
            }
            return Ok(());
        }
        if failure.is_some() {
            // The inbox: without it the node cannot hear the orchestrator.
            error!("the agent node's inbox failed; stopping");
            myself.stop(Some("inbox failed".into()));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HostMsg>,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        Self::stop_agents(state, "host stopped");
        state.snapshots.clear();
        state.node.server.stop(Some("host stopped".into()));
        Ok(())
    }
}
