//! `conclave-cluster-bench`: measures the cluster link between an orchestrator and real
//! `conclave-agent` processes on loopback.
//!
//! The orchestrator side (node server, gateway, and a real Coordinator with its journal) runs
//! inside this process; each agent node is a `conclave-agent` child process, as a user starts
//! it. Two figures:
//!
//! * **Chunk throughput**: one agent per node is placed in a session whose coordinator is
//!   real; each node then streams `--chunks` chunk reports (`--chunk-bytes` of text each) as
//!   fast as it can, all nodes at once, through the same path a remote agent's reports take
//!   (node host → cluster frame → gateway → coordinator, deduplicated by sequence number).
//!   The clock stops when the coordinator has journaled every node's final usage report.
//!   The agents themselves stay silent: their provider never answers during the bench.
//! * **Vote round trip**: a `Decided { Vote }` report travels orchestrator → node → orchestrator
//!   through the gateway and the node's host (`--round-trips` times, one at a time); p50/p99.
//!
//! The bench's messages (`Echo`, `Flood`) exist only with the `bench` feature, which release
//! builds never turn on; build the bench and an agent node that answers it together:
//! `cargo build --release --features conclave-tests/bench -p conclave-agent -p conclave-tests
//! && target/release/conclave-cluster-bench`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use conclave::cluster::{Cluster, ClusterOptions, Placement};
use conclave::consensus::{Consensus, ConsensusConfig};
use conclave::coordinator::{AgentLink, Budget, Coordinator, CoordinatorArgs, CoordinatorMsg};
use conclave::display::Display;
use conclave::journal::Journal;
use conclave_cluster::heartbeat::HeartbeatConfig;
use conclave_cluster::security::Cookie;
use conclave_protocol::cluster::TurnLimits;
use conclave_protocol::config::{
    AgentSpec, BackendOptions, BackendSpec, OrchestratorSettings, WireFormat,
};
use conclave_protocol::{
    AgentReport, AnswerLabel, Decision, DecisionHow, Envelope, SessionId, StreamChunk, TaskSpec,
    TraceContext, TurnId, Usage,
};
use conclave_sim::{SimConfig, SimServer};
use conclave_tests::{Running, free_port, journal_lines, start_agent_node};

#[derive(Parser, Debug)]
#[command(
    name = "conclave-cluster-bench",
    about = "Measure conclave's cluster link: remote chunk throughput and vote round trips"
)]
struct Args {
    /// Agent node processes.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Chunks each node streams.
    #[arg(long, default_value_t = 20_000)]
    chunks: u32,
    /// Text bytes per chunk.
    #[arg(long, default_value_t = 16)]
    chunk_bytes: usize,
    /// Sequential vote round trips per node.
    #[arg(long, default_value_t = 1_000)]
    round_trips: u32,
}

const COOKIE: &str = "conclave-cluster-bench-cookie";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn envelope(session: &SessionId, sender: &str, body: AgentReport) -> Envelope<AgentReport> {
    Envelope {
        session: session.clone(),
        sender: sender.to_owned(),
        seq: 0,
        trace: TraceContext::default(),
        body,
    }
}

fn silent_agent(id: &str, node: &str, base_url: &str) -> AgentSpec {
    AgentSpec {
        id: id.to_owned(),
        backend: BackendSpec {
            wire: WireFormat::OpenAiChat,
            provider: "sim".into(),
            // The provider holds its first byte for ten minutes: the agent never reports.
            model: "bench:first_byte_ms=600000".into(),
            base_url: base_url.to_owned(),
            api_key_env: None,
            temperature: None,
            top_p: None,
            max_tokens: None,
            extra_body: None,
            max_retries: 0,
            options: BackendOptions::default(),
        },
        system_message: None,
        node: Some(node.to_owned()),
        workflow: Default::default(),
        tools: Default::default(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let dir = tempfile::tempdir()?;
    let cookie_file = dir.path().join("cookie");
    std::fs::write(&cookie_file, COOKIE)?;
    let sim = SimServer::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let cluster = Cluster::start(ClusterOptions {
        listen: listen.parse()?,
        cookie: Cookie::new(COOKIE)?,
        tls: None,
        heartbeat: HeartbeatConfig::default(),
    })
    .await
    .context("cannot start the cluster")?;
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("bench-{i}")).collect();
    let mut nodes: Vec<Running> = Vec::new();
    for name in &names {
        nodes.push(start_agent_node(
            &listen,
            name,
            &cookie_file,
            &[
                "--reconnect-max-ms",
                "300",
                "--allow-base-url",
                &sim.base_url(),
            ],
            &[],
        )?);
    }
    let result = measure(&args, &cluster, &names, &sim, dir.path()).await;
    for node in nodes {
        let _ = node.signal(libc::SIGTERM);
        let _ = tokio::task::spawn_blocking(move || node.wait(Duration::from_secs(10))).await;
    }
    cluster.shutdown().await;
    sim.shutdown().await;
    result
}

async fn measure(
    args: &Args,
    cluster: &Cluster,
    names: &[String],
    sim: &SimServer,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    if let Err(missing) = cluster.wait_for_nodes(names, Duration::from_secs(30)).await {
        bail!("agent nodes did not join: {missing:?}");
    }

    // A session with one silent agent per node and a real coordinator.
    let session = SessionId::parse("cluster-bench").map_err(anyhow::Error::msg)?;
    let agents: Vec<AgentSpec> = names
        .iter()
        .enumerate()
        .map(|(i, node)| silent_agent(&format!("agent-{}", i + 1), node, &sim.base_url()))
        .collect();
    let limits = TurnLimits {
        max_workflow_retries: 0,
        turn_timeout_ms: 3_600_000,
        stall_timeout_ms: 3_600_000,
        connect_timeout_ms: 5_000,
        max_restarts: 0,
        restart_window_ms: 60_000,
    };
    let placements = agents
        .iter()
        .enumerate()
        .map(|(i, spec)| Placement {
            agent: i as u32,
            node: spec.node.clone().unwrap_or_default(),
            spec: spec.clone(),
            limits: limits.clone(),
        })
        .collect();
    cluster
        .place(&session, placements)
        .await
        .context("placing the bench agents")?;
    let session_dir = dir.join("session");
    let journal = Journal::create(&session_dir)?;
    let machine = Consensus::new(ConsensusConfig::from_settings(
        agents.len() as u32,
        &OrchestratorSettings::default(),
    ))?;
    let (done, _done_rx) = tokio::sync::oneshot::channel();
    let (coordinator, _) = ractor::Actor::spawn(
        None,
        Coordinator,
        CoordinatorArgs {
            session: session.clone(),
            session_dir: session_dir.clone(),
            task: Arc::new(TaskSpec {
                question: "bench".into(),
                history: Vec::new(),
            }),
            machine,
            journal,
            display: Display::none(),
            timeout: Duration::from_secs(3600),
            done,
            resumed: None,
            budget: Budget::default(),
            final_files: Vec::new(),
            snapshots: None,
        },
    )
    .await?;
    cluster.attach(&session, coordinator.clone());
    let links = agents
        .iter()
        .enumerate()
        .map(|(i, spec)| AgentLink {
            id: spec.id.clone().into(),
            commands: cluster.command_sink(&session, i as u32),
        })
        .collect();
    coordinator.send_message(CoordinatorMsg::Begin { agents: links })?;

    // Chunk throughput.
    let text = "x".repeat(args.chunk_bytes);
    let first_seq = 1_000_000;
    let started = Instant::now();
    for (i, spec) in agents.iter().enumerate() {
        let chunk = envelope(
            &session,
            &spec.id,
            AgentReport::Chunk {
                turn: TurnId(1),
                chunk: StreamChunk::Content { text: text.clone() },
            },
        );
        cluster.flood(i as u32, first_seq, args.chunks, chunk);
        let usage = envelope(
            &session,
            &spec.id,
            AgentReport::Chunk {
                turn: TurnId(1),
                chunk: StreamChunk::Usage(Usage {
                    input_tokens: 1,
                    output_tokens: 1,
                }),
            },
        );
        cluster.flood(i as u32, first_seq + u64::from(args.chunks), 1, usage);
    }
    let want = agents.len();
    let deadline = Duration::from_secs(300);
    let usage_seen = tokio::task::spawn_blocking(move || {
        conclave_tests::poll_until(deadline, || {
            let usage = journal_lines(&session_dir)
                .iter()
                .filter(|l| l.contains("\"type\":\"usage\""))
                .count();
            (usage >= want).then_some(())
        })
    })
    .await?;
    let elapsed = started.elapsed();
    if usage_seen.is_none() {
        bail!("the coordinator did not receive every node's chunks within {deadline:?}");
    }
    let total = u64::from(args.chunks) * agents.len() as u64;
    let chunks_per_s = total as f64 / elapsed.as_secs_f64();

    // Vote round trips, one node at a time, one trip at a time.
    let vote = envelope(
        &session,
        "agent-1",
        AgentReport::Decided {
            turn: TurnId(2),
            decision: Decision::Vote {
                label: AnswerLabel {
                    agent: 1,
                    answer: 1,
                },
                reason: "the clearest explanation of the three".into(),
            },
            seen_revision: 3,
            how: DecisionHow::Tool,
        },
    );
    let mut trips = Vec::with_capacity((args.round_trips as usize) * names.len());
    for name in names {
        for _ in 0..args.round_trips {
            let sent = Instant::now();
            let back = cluster
                .echo(name, vote.clone(), Duration::from_secs(5))
                .await
                .with_context(|| format!("no echo from {name}"))?;
            trips.push(sent.elapsed());
            anyhow::ensure!(back == vote, "the vote came back changed");
        }
    }
    trips.sort();
    coordinator.stop(None);

    let mut report = BTreeMap::new();
    report.insert("nodes", serde_json::json!(names.len()));
    report.insert("chunks_total", serde_json::json!(total));
    report.insert("chunk_bytes", serde_json::json!(args.chunk_bytes));
    report.insert("chunks_elapsed_ms", serde_json::json!(elapsed.as_millis()));
    report.insert("chunks_per_s", serde_json::json!(chunks_per_s.round()));
    report.insert("vote_round_trips", serde_json::json!(trips.len()));
    let us = |d: Duration| (d.as_secs_f64() * 1e6).round();
    report.insert(
        "vote_rtt_p50_us",
        serde_json::json!(us(percentile(&trips, 0.50))),
    );
    report.insert(
        "vote_rtt_p99_us",
        serde_json::json!(us(percentile(&trips, 0.99))),
    );
    report.insert(
        "vote_rtt_max_us",
        serde_json::json!(us(percentile(&trips, 1.0))),
    );
    eprintln!(
        "remote chunks: {total} from {} node(s) in {:.2} s = {:.0} chunks/s at the coordinator",
        names.len(),
        elapsed.as_secs_f64(),
        chunks_per_s
    );
    eprintln!(
        "vote round trip (orchestrator -> node -> orchestrator, loopback): p50 {:.0} us, p99 {:.0} us over {} trips",
        us(percentile(&trips, 0.50)),
        us(percentile(&trips, 0.99)),
        trips.len()
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
