//! Running one session: build the agents' backends (checking API keys before any call), open
//! the journal, start the SessionSupervisor with its Coordinator and AgentActors, and wait for
//! the outcome.
//!
//! Supervision: the SessionSupervisor is the parent of the coordinator and of every local
//! agent actor. An agent actor that dies while the session runs is reported to the
//! coordinator as lost (its turns are failed, the session goes on with the others). When the
//! coordinator stops, the supervisor stops the agents and itself. A coordinator that crashes
//! ends the session with an error; the journal keeps everything decided up to then.
//!
//! Remote agents (`node: NAME` in the config) need the orchestrator's cluster (`--listen`):
//! the session first waits for their nodes (up to `timeout_settings.node_join_timeout_seconds`,
//! then fails naming the missing ones, before any journal is written; a node this orchestrator
//! lost earlier is not waited for, its agents start down: see [`crate::cluster`]), has each node start its
//! agents with the node's own API keys, and only then starts the coordinator. A remote agent's
//! command channel goes through the cluster gateway; its reports come back to the coordinator
//! as ordinary `CoordinatorMsg::Report`s, and its node's loss as `CoordinatorMsg::AgentDown`
//! (see [`crate::cluster`]).
//!
//! Before anything runs, a cost cap that cannot hold (an agent's model has no price and no
//! token cap bounds it) is refused ([`crate::pricing::check_budget`]). A session holds its
//! journal's lock for as long as it runs ([`crate::journal::JournalLock`]): a new session takes
//! it when it creates the journal, a resumed one before it reads the journal (or, for a plan
//! read without the lock, takes it here and checks that the journal did not grow meanwhile).
//! A journal that fails to write ends the session with [`SessionError::Journal`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use conclave_agent::agent::{AgentActor, AgentArgs, AgentMsg};
use conclave_agent::outbox::{Outbox, ReportSink};
use conclave_agent::providers::{Backend, ProviderError, http_client};
use conclave_agent::snapshot::AgentSnapshots;
use conclave_agent::tools::ToolBox;
use conclave_agent::turn::{AgentContext, TurnSettings, WorkflowState};
use conclave_protocol::config::{SessionConfig, WorkflowMode};
use conclave_protocol::{CoordinatorCommand, Envelope, SessionId, TaskSpec};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cluster::{Cluster, PlaceError, PlacedTools, Placement};
use crate::consensus::{Consensus, ConsensusConfig, ConsensusConfigError};
use crate::coordinator::{
    AgentLink, Budget, CommandSink, Coordinator, CoordinatorArgs, CoordinatorMsg, Resumed,
    SessionOutcome,
};
use crate::display::{Display, Shown};
use crate::journal::{AgentInfo, EVENTS_FILE, Journal, JournalError, JournalEvent, JournalLock};
use crate::pricing::PriceBook;
use crate::resume::ResumePlan;

/// Looks up environment variables (process env merged with `.env`) on this node.
pub type EnvFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("agent `{agent}`: {source}")]
    Backend {
        agent: String,
        source: ProviderError,
    },
    #[error(
        "agent `{agent}` is placed on node `{node}`, but this orchestrator has no cluster: start it with --listen HOST:PORT (and a cookie) so agent nodes can join, or remove `node:` from the agent"
    )]
    NoCluster { agent: String, node: String },
    #[error(
        "agent node(s) {} did not join within {waited_s} s (start `conclave-agent --join <this orchestrator's --listen address> --name NAME` with the same cookie on each)",
        .nodes.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    )]
    NodesMissing { nodes: Vec<String>, waited_s: u64 },
    #[error("cannot start the remote agents: {0}")]
    Placement(#[from] PlaceError),
    #[error(transparent)]
    Consensus(#[from] ConsensusConfigError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Budget(#[from] crate::pricing::BudgetError),
    #[error(
        "the journal {0} grew while the resume was being prepared (another process was still running the session); resume it again"
    )]
    JournalMoved(PathBuf),
    #[error("could not start the session's actors: {0}")]
    Spawn(String),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshots::RestoreError),
    /// A required MCP server of a local agent did not start.
    #[error(transparent)]
    Tools(#[from] conclave_agent::tools::ToolStartError),
    #[error(
        "the coordinator stopped without an outcome (it crashed); the journal at {0} holds everything decided up to then"
    )]
    CoordinatorLost(PathBuf),
    /// Asked for with [`Controls::pause`]: the turns in flight finished and were journaled,
    /// and the session stopped without ending.
    #[error(
        "the session was paused with its journal left open; `conclave resume {}` continues it",
        .0.display()
    )]
    Paused(PathBuf),
}

/// How the caller stops a running session early.
#[derive(Clone, Default)]
pub struct Controls {
    /// Ends the session with the best available answer (the CLI's and server's Ctrl-C).
    pub interrupt: CancellationToken,
    /// Stops it without ending it, once the provider calls in flight have finished: the
    /// journal stays open and a resume sends nothing twice ([`SessionError::Paused`]).
    pub pause: CancellationToken,
}

impl Controls {
    /// Only an interrupt.
    pub fn interrupt(interrupt: CancellationToken) -> Self {
        Self {
            interrupt,
            pause: CancellationToken::new(),
        }
    }
}

/// Everything needed to run one session.
pub struct SessionPlan {
    pub session: SessionId,
    /// The session's own directory (journal and final answer go here).
    pub dir: PathBuf,
    pub config: SessionConfig,
    pub task: TaskSpec,
    pub env: EnvFn,
    /// A shared HTTP client, or `None` to build one.
    pub http: Option<reqwest::Client>,
    /// The cluster agent nodes join, when the orchestrator listens for them (`--listen`).
    pub cluster: Option<Cluster>,
}

/// A new session id: `YYYYMMDD-HHMMSS-xxxxxx` (UTC, then 6 random hex digits), sortable by
/// start time and unique enough for concurrent batch sessions.
pub fn new_session_id() -> SessionId {
    use std::hash::{BuildHasher, Hasher};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    session_id_at(now.as_secs(), hasher.finish())
}

/// The session id of a start at `unix_secs` (UTC) with the low 24 bits of `random`. The
/// calendar is chrono's (already linked through the MCP client), not a hand-written one.
fn session_id_at(unix_secs: u64, random: u64) -> SessionId {
    let start = i64::try_from(unix_secs)
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    SessionId(format!(
        "{}-{:06x}",
        start.format("%Y%m%d-%H%M%S"),
        random & 0xff_ffff
    ))
}

/// The directory of a session under a sessions root.
pub fn session_dir(root: &Path, session: &SessionId) -> PathBuf {
    root.join(session.as_str())
}

/// Chooses the directories the config left to the session (see `config::workspace`): an agent
/// with a workspace but no `cwd` works in `<session dir>/workspaces/<agent id>`, and sees its
/// peers' files in `<session dir>/peers/<agent id>` unless `agent_temporary_workspace` was
/// set. For an agent on a node the same paths are relative, `workspaces/<session>/<agent id>`
/// and `peers/<session>/<agent id>`, and the node resolves them against its `--work-dir`.
/// Done before the session is journaled, so a resumed session finds the same directories.
pub fn place_workspaces(config: &mut SessionConfig, session: &SessionId, dir: &Path) {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for agent in &mut config.agents {
        let name = crate::config::agent_dir_name(&agent.id);
        let Some(workspace) = &mut agent.tools.workspace else {
            continue;
        };
        let place = |kind: &str| match agent.node {
            Some(_) => Path::new(kind)
                .join(session.as_str())
                .join(&name)
                .display()
                .to_string(),
            None => dir.join(kind).join(&name).display().to_string(),
        };
        if workspace.cwd.is_empty() {
            workspace.cwd = place("workspaces");
        }
        if workspace.peers_dir.is_empty() {
            workspace.peers_dir = place("peers");
        }
    }
}

/// Where each agent with a workspace leaves its files, as `final.md` names them.
fn final_files(config: &SessionConfig) -> Vec<(String, String)> {
    config
        .agents
        .iter()
        .filter_map(|agent| {
            let workspace = agent.tools.workspace.as_ref()?;
            let place = match &agent.node {
                Some(node) if Path::new(&workspace.cwd).is_relative() => format!(
                    "`{}` under the work directory of node `{node}`",
                    workspace.cwd
                ),
                Some(node) => format!("`{}` on node `{node}`", workspace.cwd),
                None => format!("`{}`", workspace.cwd),
            };
            Some((agent.id.clone(), place))
        })
        .collect()
}

/// The turn limits of a session's agents, from its config: the same for local agents and,
/// as `TurnLimits`, for agents placed on nodes.
pub fn turn_settings(config: &SessionConfig) -> TurnSettings {
    TurnSettings {
        max_workflow_retries: config.orchestrator.max_workflow_retries,
        turn_timeout: Duration::from_secs(config.timeouts.turn_timeout_seconds.max(1)),
        stall_timeout: Duration::from_secs(config.timeouts.stall_timeout_seconds.max(1)),
        max_restarts: config.orchestrator.max_turn_restarts,
        restart_window: Duration::from_secs(config.orchestrator.restart_window_seconds.max(1)),
    }
}

/// A session's budget caps and the price of each agent's model.
pub fn budget_of(config: &SessionConfig) -> Budget {
    let book = PriceBook::new(config.orchestrator.pricing.clone());
    Budget {
        max_cost_usd: config.orchestrator.max_cost_usd,
        max_total_tokens: config.orchestrator.max_total_tokens,
        prices: config
            .agents
            .iter()
            .map(|a| book.price(&a.backend.model))
            .collect(),
    }
}

/// Builds the backend of every local agent (`None` for an agent placed on a node, which
/// builds its own). Fails before any provider call if a key is missing or a backend cannot
/// work, and when an agent is placed on a node but there is no cluster.
pub fn build_backends(
    config: &SessionConfig,
    env: &EnvFn,
    http: reqwest::Client,
    cluster: Option<&Cluster>,
) -> Result<Vec<Option<Arc<Backend>>>, SessionError> {
    config
        .agents
        .iter()
        .map(|agent| {
            if let Some(node) = &agent.node {
                if cluster.is_none() {
                    return Err(SessionError::NoCluster {
                        agent: agent.id.clone(),
                        node: node.clone(),
                    });
                }
                return Ok(None);
            }
            Backend::new(&agent.backend, http.clone(), &|key| env(key))
                .map(|backend| Some(Arc::new(backend)))
                .map_err(|source| SessionError::Backend {
                    agent: agent.id.clone(),
                    source,
                })
        })
        .collect()
}

/// Starts the tools (MCP servers) of every local agent, concurrently; an agent placed on a
/// node starts its own there and gets an empty toolbox here. Fails with the first required
/// server that cannot start (naming the agent, the server and its stderr tail). A local
/// agent's workspace paths are absolute by now ([`place_workspaces`]).
pub async fn start_tools(
    session: &SessionId,
    config: &SessionConfig,
    env: &EnvFn,
) -> Result<Vec<Arc<ToolBox>>, SessionError> {
    let lookup = |key: &str| env(key);
    let session = session.to_string();
    let session = session.as_str();
    let starts = config.agents.iter().map(|agent| async {
        if agent.node.is_some() {
            return Ok(Arc::new(ToolBox::empty()));
        }
        ToolBox::start(session, &agent.id, &agent.tools, &lookup)
            .await
            .map(Arc::new)
    });
    futures::future::try_join_all(starts)
        .await
        .map_err(SessionError::from)
}

/// Stops every toolbox of a session that ended (MCP servers, runner containers), each within
/// a bound.
async fn shutdown_tools(toolboxes: &[Arc<ToolBox>]) {
    let stops = toolboxes.iter().map(|tools| async move {
        if tokio::time::timeout(Duration::from_secs(30), tools.shutdown())
            .await
            .is_err()
        {
            warn!("an agent's tools did not stop within 30 s");
        }
    });
    futures::future::join_all(stops).await;
}

/// The distinct nodes a config places agents on, in config order.
pub fn placed_nodes(config: &SessionConfig) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    for agent in &config.agents {
        if let Some(node) = &agent.node
            && !nodes.contains(node)
        {
            nodes.push(node.clone());
        }
    }
    nodes
}

/// Waits for the config's nodes to join the cluster (see the module docs).
pub async fn wait_for_nodes(
    config: &SessionConfig,
    cluster: Option<&Cluster>,
) -> Result<(), SessionError> {
    let nodes = placed_nodes(config);
    let Some(cluster) = cluster else {
        return Ok(());
    };
    if nodes.is_empty() {
        return Ok(());
    }
    let waited_s = config.orchestrator.node_join_timeout_seconds.max(1);
    let missing_now: Vec<&String> = nodes
        .iter()
        .filter(|n| !cluster.nodes().contains_key(n.as_str()))
        .collect();
    if !missing_now.is_empty() {
        info!(nodes = ?missing_now, timeout_s = waited_s, "waiting for agent nodes to join");
    }
    cluster
        .wait_for_nodes(&nodes, Duration::from_secs(waited_s))
        .await
        .map_err(|nodes| SessionError::NodesMissing { nodes, waited_s })
}

/// The placements of a config's remote agents.
fn placements(config: &SessionConfig) -> Vec<Placement> {
    let settings = turn_settings(config);
    let limits = conclave_agent::cluster::limits_from_settings(
        &settings,
        Duration::from_secs(config.timeouts.connect_timeout_seconds.max(1)),
    );
    config
        .agents
        .iter()
        .enumerate()
        .filter_map(|(index, agent)| {
            Some(Placement {
                agent: index as u32,
                node: agent.node.clone()?,
                spec: agent.clone(),
                limits: limits.clone(),
            })
        })
        .collect()
}

/// Ends a session's remote part (its agents on the nodes) when dropped, however the session
/// setup or run ends. Ending twice is harmless.
struct RemotePart {
    cluster: Option<Cluster>,
    session: SessionId,
    /// How the remote agents' MCP servers started on their nodes.
    tools: PlacedTools,
}

impl Drop for RemotePart {
    fn drop(&mut self) {
        if let Some(cluster) = &self.cluster {
            cluster.end_session(&self.session);
        }
    }
}

/// Starts a session's remote agents on their nodes; what started is stopped again when the
/// returned guard drops.
async fn place_remote(
    session: &SessionId,
    config: &SessionConfig,
    cluster: Option<&Cluster>,
) -> Result<RemotePart, SessionError> {
    let mut part = RemotePart {
        cluster: cluster.cloned(),
        session: session.clone(),
        tools: Vec::new(),
    };
    if let Some(cluster) = cluster {
        let placements = placements(config);
        if !placements.is_empty() {
            part.tools = cluster.place(session, placements).await?;
        }
    }
    Ok(part)
}

/// Journals how every agent's MCP servers started, one `tool_server_started` per server and
/// agent: the local agents' from their toolboxes, the remote ones' as their nodes reported.
/// Once they are durable, the display shows them.
async fn journal_tool_starts(
    journal: &Journal,
    config: &SessionConfig,
    local: &[Arc<ToolBox>],
    remote: &PlacedTools,
    display: &Display,
) -> Result<(), SessionError> {
    let local = local
        .iter()
        .enumerate()
        .map(|(agent, tools)| (agent, tools.starts().iter().map(|s| s.report()).collect()))
        .collect::<Vec<(usize, Vec<_>)>>();
    let remote = remote
        .iter()
        .map(|(agent, reports)| (*agent as usize, reports.clone()));
    let mut shown = Vec::new();
    for (agent, reports) in local.into_iter().chain(remote) {
        let Some(spec) = config.agents.get(agent) else {
            continue;
        };
        for report in reports {
            let event = JournalEvent::tool_server_started(&spec.id, spec.node.clone(), report);
            journal.record(event.clone())?;
            shown.push(event);
        }
    }
    if !shown.is_empty() {
        journal.commit().await?;
    }
    for event in shown {
        display.show(Shown::Event(event));
    }
    Ok(())
}

/// Runs a session to its end. `interrupt` ends it early with the best available answer.
pub async fn run_session(
    plan: SessionPlan,
    display: Display,
    interrupt: CancellationToken,
) -> Result<SessionOutcome, SessionError> {
    run_session_with(plan, display, Controls::interrupt(interrupt)).await
}

/// [`run_session`], with a pause as well as an interrupt.
pub async fn run_session_with(
    plan: SessionPlan,
    display: Display,
    controls: Controls,
) -> Result<SessionOutcome, SessionError> {
    let SessionPlan {
        session,
        dir,
        mut config,
        task,
        env,
        http,
        cluster,
    } = plan;
    crate::pricing::check_budget(&config)?;
    place_workspaces(&mut config, &session, &dir);
    let snapshots = crate::snapshots::intake_for(&config, &session, &dir);
    let http = match http {
        Some(http) => http,
        None => http_client(Duration::from_secs(
            config.timeouts.connect_timeout_seconds.max(1),
        ))
        .map_err(|source| SessionError::Backend {
            agent: "*".into(),
            source,
        })?,
    };
    let backends = build_backends(&config, &env, http, cluster.as_ref())?;
    let tools = start_tools(&session, &config, &env).await?;
    let consensus_config =
        ConsensusConfig::from_settings(config.agents.len() as u32, &config.orchestrator);
    let machine = Consensus::new(consensus_config)?;
    wait_for_nodes(&config, cluster.as_ref()).await?;
    // Remote agents start before the journal: their nodes may refuse them (a missing key).
    let remote = place_remote(&session, &config, cluster.as_ref()).await?;

    let journal = Journal::create(&dir)?;
    journal.record(JournalEvent::SessionStarted {
        session: session.to_string(),
        question: task.question.clone(),
        history: task.history.clone(),
        conclave_version: env!("CARGO_PKG_VERSION").to_owned(),
        agents: config
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| AgentInfo {
                id: a.id.clone(),
                number: i as u32 + 1,
                provider: a.backend.provider.clone(),
                model: a.backend.model.clone(),
                node: a.node.clone(),
            })
            .collect(),
        config: config.clone(),
    })?;
    journal_tool_starts(&journal, &config, &tools, &remote.tools, &display).await?;
    info!(session = %session, dir = %dir.display(), agents = config.agents.len(), "session started");

    drive(
        Drive {
            session,
            dir,
            config,
            task,
            machine,
            journal,
            backends,
            tools,
            resumed: None,
            cluster,
            snapshots,
        },
        display,
        controls,
    )
    .await
}

/// Continues a session from its journal (see [`crate::resume`]). A session that had already
/// ended is not run again.
pub async fn resume_session(
    plan: ResumePlan,
    env: EnvFn,
    cluster: Option<Cluster>,
    display: Display,
    interrupt: CancellationToken,
) -> Result<SessionOutcome, SessionError> {
    resume_session_with(plan, env, cluster, display, Controls::interrupt(interrupt)).await
}

/// [`resume_session`], with a pause as well as an interrupt.
pub async fn resume_session_with(
    plan: ResumePlan,
    env: EnvFn,
    cluster: Option<Cluster>,
    display: Display,
    controls: Controls,
) -> Result<SessionOutcome, SessionError> {
    let mut plan = plan;
    crate::pricing::check_budget(&plan.config)?;
    // One writer: the lock first (taken already when the plan came from `resume::claim`). A
    // plan read without it may be stale: the process that held the journal may have written
    // more, or ended the session, since.
    let lock = match plan.lock.take() {
        Some(lock) => lock,
        None => {
            let lock = JournalLock::acquire(&plan.dir)?;
            let now = crate::journal::read_events(&plan.dir.join(EVENTS_FILE))?;
            if now.valid_len != plan.valid_len {
                return Err(SessionError::JournalMoved(plan.dir.join(EVENTS_FILE)));
            }
            lock
        }
    };
    let http = http_client(Duration::from_secs(
        plan.config.timeouts.connect_timeout_seconds.max(1),
    ))
    .map_err(|source| SessionError::Backend {
        agent: "*".into(),
        source,
    })?;
    let backends = build_backends(&plan.config, &env, http, cluster.as_ref())?;
    let tools = start_tools(&plan.session, &plan.config, &env).await?;
    wait_for_nodes(&plan.config, cluster.as_ref()).await?;
    let remote = place_remote(&plan.session, &plan.config, cluster.as_ref()).await?;
    let mut snapshots = crate::snapshots::intake_for(&plan.config, &plan.session, &plan.dir);
    if let Some(intake) = snapshots.as_mut() {
        let current: Vec<_> = plan
            .machine
            .current_answers()
            .iter()
            .map(|a| a.label)
            .collect();
        intake.restore(&plan.snapshots, &current)?;
    }
    let journal = Journal::reopen(&plan.dir, plan.valid_len, Some(lock))?;
    journal.record(JournalEvent::SessionResumed {
        replayed_inputs: plan.replayed_inputs,
        resent_turns: plan.resend.iter().map(|(_, p)| p.turn.0).collect(),
        torn_lines_skipped: plan.torn_lines,
    })?;
    journal_tool_starts(&journal, &plan.config, &tools, &remote.tools, &display).await?;
    info!(
        session = %plan.session,
        replayed = plan.replayed_inputs,
        resent = plan.resend.len(),
        "session resumed from its journal"
    );
    let resumed = Resumed {
        resend: plan.resend,
        usage: plan.usage,
        answers: plan.answers,
        turns: plan.turns,
    };
    drive(
        Drive {
            session: plan.session,
            dir: plan.dir,
            config: plan.config,
            task: plan.task,
            machine: plan.machine,
            journal,
            backends,
            tools,
            resumed: Some(resumed),
            cluster,
            snapshots,
        },
        display,
        controls,
    )
    .await
}

/// A session ready to run: everything but the actors.
struct Drive {
    session: SessionId,
    dir: PathBuf,
    config: SessionConfig,
    task: TaskSpec,
    machine: Consensus,
    journal: Journal,
    backends: Vec<Option<Arc<Backend>>>,
    /// One per agent (empty for agents on nodes), kept alive by the agents' contexts.
    tools: Vec<Arc<ToolBox>>,
    resumed: Option<Resumed>,
    cluster: Option<Cluster>,
    /// Answers' workspace snapshots, when an agent has a workspace.
    snapshots: Option<crate::snapshots::SnapshotIntake>,
}

/// Starts the session's actors and waits for the outcome.
async fn drive(
    run: Drive,
    display: Display,
    controls: Controls,
) -> Result<SessionOutcome, SessionError> {
    let Drive {
        session,
        dir,
        config,
        task,
        machine,
        journal,
        backends,
        tools,
        resumed,
        cluster,
        snapshots,
    } = run;
    let store = snapshots.as_ref().map(|intake| intake.store().clone());
    if let (Some(cluster), Some(store)) = (&cluster, &store) {
        cluster.share_snapshots(&session, store.clone());
    }
    let (done_tx, done_rx) = oneshot::channel();
    let toolboxes = tools.clone();
    let timeout = Duration::from_secs(config.timeouts.orchestrator_timeout_seconds.max(1));
    let args = SupervisorArgs {
        coordinator: CoordinatorArgs {
            session: session.clone(),
            session_dir: dir.clone(),
            task: Arc::new(task),
            machine,
            journal,
            display,
            timeout,
            done: done_tx,
            resumed,
            budget: budget_of(&config),
            final_files: final_files(&config),
            snapshots,
        },
        agents: config
            .agents
            .iter()
            .zip(backends)
            .zip(tools)
            .enumerate()
            .map(
                |(index, ((agent, backend), tools))| match (backend, &cluster) {
                    (Some(backend), _) => PendingAgent::Local {
                        id: agent.id.clone(),
                        backend,
                        system_message: agent.system_message.clone(),
                        tools,
                        workflow: agent.workflow,
                        snapshots: local_snapshots(agent, store.as_deref()),
                    },
                    (None, Some(cluster)) => PendingAgent::Remote {
                        id: agent.id.clone(),
                        commands: cluster.command_sink(&session, index as u32),
                    },
                    // build_backends only leaves a backend out when there is a cluster.
                    (None, None) => PendingAgent::Remote {
                        id: agent.id.clone(),
                        commands: Arc::new(|_| false),
                    },
                },
            )
            .collect(),
        settings: turn_settings(&config),
        cluster: cluster.clone(),
    };
    let (supervisor, supervisor_handle) = Actor::spawn(None, SessionSupervisor, args)
        .await
        .map_err(|e| SessionError::Spawn(e.to_string()))?;

    let outcome = {
        let mut done_rx = done_rx;
        let (mut interrupted, mut paused) = (false, false);
        loop {
            tokio::select! {
                result = &mut done_rx => break result,
                _ = controls.interrupt.cancelled(), if !interrupted => {
                    interrupted = true;
                    let _ = supervisor.send_message(SupervisorMsg::Interrupt);
                }
                _ = controls.pause.cancelled(), if !paused => {
                    paused = true;
                    let _ = supervisor.send_message(SupervisorMsg::Pause);
                }
            }
        }
    };
    // The supervisor stops its children and itself once the coordinator is done; bound the wait.
    if tokio::time::timeout(Duration::from_secs(5), supervisor_handle)
        .await
        .is_err()
    {
        warn!("session actors did not stop within 5 s; killing them");
        supervisor.kill();
    }
    shutdown_tools(&toolboxes).await;
    match outcome {
        Ok(Ok(Some(outcome))) => Ok(outcome),
        Ok(Ok(None)) => Err(SessionError::Paused(dir)),
        Ok(Err(journal)) => Err(SessionError::Journal(journal)),
        Err(_) => Err(SessionError::CoordinatorLost(dir)),
    }
}

/// The snapshots of a local agent with a workspace: its peers' come straight from the store.
fn local_snapshots(
    agent: &conclave_protocol::config::AgentSpec,
    store: Option<&crate::snapshots::SnapshotStore>,
) -> Option<Arc<AgentSnapshots>> {
    let (workspace, store) = (agent.tools.workspace.as_ref()?, store?);
    let source = conclave_agent::snapshot::peers::StoreSource {
        root: store.root().to_path_buf(),
    };
    Some(Arc::new(AgentSnapshots::new(
        workspace,
        Path::new(""),
        Arc::new(source),
    )))
}

enum PendingAgent {
    /// Runs in this process, under the supervisor.
    Local {
        id: String,
        backend: Arc<Backend>,
        system_message: Option<String>,
        tools: Arc<ToolBox>,
        workflow: WorkflowMode,
        snapshots: Option<Arc<AgentSnapshots>>,
    },
    /// Already started on its node; reached through the cluster.
    Remote { id: String, commands: CommandSink },
}

struct SupervisorArgs {
    coordinator: CoordinatorArgs,
    agents: Vec<PendingAgent>,
    settings: TurnSettings,
    cluster: Option<Cluster>,
}

enum SupervisorMsg {
    Interrupt,
    Pause,
}

impl ractor::Message for SupervisorMsg {}

struct SupervisorState {
    coordinator: ActorRef<CoordinatorMsg>,
    /// Local agent actor cells with their agent index.
    agents: Vec<(u32, ActorCell)>,
    ending: bool,
}

/// The parent of one session's coordinator and local agents.
struct SessionSupervisor;

impl Actor for SessionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let session = args.coordinator.session.clone();
        let (coordinator, _) =
            Actor::spawn_linked(None, Coordinator, args.coordinator, myself.get_cell()).await?;
        // Before Begin: reports of remote agents can only follow commands, which follow Begin.
        if let Some(cluster) = &args.cluster {
            cluster.attach(&session, coordinator.clone());
        }
        let mut links = Vec::with_capacity(args.agents.len());
        let mut cells = Vec::with_capacity(args.agents.len());
        for (index, pending) in args.agents.into_iter().enumerate() {
            let (id, backend, system_message, tools, workflow, snapshots) = match pending {
                PendingAgent::Remote { id, commands } => {
                    links.push(AgentLink {
                        id: id.into(),
                        commands,
                    });
                    continue;
                }
                PendingAgent::Local {
                    id,
                    backend,
                    system_message,
                    tools,
                    workflow,
                    snapshots,
                } => (id, backend, system_message, tools, workflow, snapshots),
            };
            let to_coordinator = coordinator.clone();
            let sink: ReportSink = Arc::new(move |envelope| {
                to_coordinator
                    .send_message(CoordinatorMsg::Report(envelope))
                    .is_ok()
            });
            let context = Arc::new(AgentContext {
                agent_id: id.clone(),
                backend,
                outbox: Arc::new(Outbox::new(session.clone(), id.clone(), sink)),
                system_message,
                settings: args.settings.clone(),
                workflow: WorkflowState::new(workflow),
                tools,
                snapshots,
            });
            let (agent, _) =
                Actor::spawn_linked(None, AgentActor, AgentArgs { context }, myself.get_cell())
                    .await?;
            cells.push((index as u32, agent.get_cell()));
            let commands: CommandSink = Arc::new(move |envelope: Envelope<CoordinatorCommand>| {
                agent.send_message(AgentMsg::Command(envelope)).is_ok()
            });
            links.push(AgentLink {
                id: id.into(),
                commands,
            });
        }
        coordinator.send_message(CoordinatorMsg::Begin { agents: links })?;
        Ok(SupervisorState {
            coordinator,
            agents: cells,
            ending: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Interrupt => {
                let _ = state.coordinator.send_message(CoordinatorMsg::Interrupt);
            }
            SupervisorMsg::Pause => {
                let _ = state.coordinator.send_message(CoordinatorMsg::Pause);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match &event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell.clone(),
                reason.clone().unwrap_or_else(|| "stopped".into()),
            ),
            SupervisionEvent::ActorFailed(cell, error) => {
                (cell.clone(), format!("crashed: {error}"))
            }
            _ => return Ok(()),
        };
        if cell.get_id() == state.coordinator.get_id() {
            if matches!(event, SupervisionEvent::ActorFailed(..)) {
                error!(%reason, "the coordinator crashed");
            }
            state.ending = true;
            // Wait for the agents to stop on their own: a supervisor that stops first kills
            // the children still running, and a killed actor skips its `post_stop` (which
            // ends its worker's stream and aborts its pending timers).
            myself
                .stop_children_and_wait(Some("session over".into()), Some(Duration::from_secs(3)))
                .await;
            myself.stop(None);
            return Ok(());
        }
        if state.ending {
            return Ok(());
        }
        if let Some(&(index, _)) = state
            .agents
            .iter()
            .find(|(_, a)| a.get_id() == cell.get_id())
        {
            let _ = state.coordinator.send_message(CoordinatorMsg::AgentDown {
                agent: index,
                reason: format!("agent actor {reason}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_carry_the_utc_start_and_24_random_bits() {
        // The dates the hand-written calendar was checked on, now through chrono.
        assert_eq!(session_id_at(0, 0).as_str(), "19700101-000000-000000");
        assert_eq!(
            session_id_at(19_723 * 86_400, 0xab).as_str(),
            "20240101-000000-0000ab"
        );
        assert_eq!(
            session_id_at(11_016 * 86_400 + 86_399, 0xfff_abcdef).as_str(),
            "20000229-235959-abcdef"
        );
        assert_eq!(
            session_id_at(20_781 * 86_400 + 10 * 3600 + 15 * 60 + 7, 0x1_000_001).as_str(),
            "20261124-101507-000001"
        );
    }

    fn loaded(yaml: &str) -> SessionConfig {
        crate::config::load_str(yaml, "restarts.yaml", &|_| None)
            .expect("the config loads")
            .config
    }

    #[test]
    fn configured_restart_limits_reach_local_and_remote_agents() {
        let config = loaded(
            "agents:\n  - id: here\n    backend: {type: openai, model: gpt-4o-mini}\n  \
             - id: there\n    node: gpu-1\n    backend: {type: openai, model: gpt-4o-mini}\n\
             orchestrator:\n  max_turn_restarts: 1\n  restart_window_seconds: 5\n",
        );
        let local = turn_settings(&config);
        assert_eq!(local.max_restarts, 1);
        assert_eq!(local.restart_window, Duration::from_secs(5));

        // The spawn frame of the remote agent carries the configured values, and its node
        // turns them back into the same settings.
        let remote = placements(&config);
        assert_eq!(remote.len(), 1);
        assert_eq!((remote[0].agent, remote[0].node.as_str()), (1, "gpu-1"));
        assert_eq!(remote[0].limits.max_restarts, 1);
        assert_eq!(remote[0].limits.restart_window_ms, 5_000);
        let on_node = conclave_agent::cluster::settings_from_limits(&remote[0].limits);
        assert_eq!(on_node.max_restarts, 1);
        assert_eq!(on_node.restart_window, Duration::from_secs(5));

        // Left out, the defaults apply (3 within 60 s) on both paths.
        let config = loaded(
            "agents:\n  - id: there\n    node: gpu-1\n    backend: {type: openai, model: gpt-4o-mini}\n",
        );
        let local = turn_settings(&config);
        assert_eq!(
            (local.max_restarts, local.restart_window),
            (3, Duration::from_secs(60))
        );
        let limits = &placements(&config)[0].limits;
        assert_eq!((limits.max_restarts, limits.restart_window_ms), (3, 60_000));
    }

    #[test]
    fn session_ids_are_valid_and_distinct() {
        let a = new_session_id();
        let b = new_session_id();
        assert!(SessionId::parse(a.as_str()).is_ok());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), "20261124-101500-abcdef".len());
    }
}
