//! Tracing: a real three-agent session (the `conclave` binary against the simulated provider
//! over loopback HTTP) exports its spans over OTLP/gRPC to an in-process fake collector, and
//! the span tree follows the OpenTelemetry GenAI conventions: one trace per session, the root
//! `invoke_workflow conclave`, `invoke_agent {agent}` per turn under it, `chat {model}` and
//! `execute_tool {tool}` under those, session decisions as span events. Without an endpoint
//! nothing is exported. The cross-node parenting (context carried by the envelope only) is
//! checked in-process with an in-memory exporter.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_protocol::TraceContext;
use conclave_sim::{SimConfig, SimServer};
use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use tokio::sync::oneshot;

const SECRET: &str = "sk-conclave-otel-secret-9090";
const QUESTION: &str = "Why is the sky blue?";
const CAPTURE: &str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";

/// The OTEL variables a developer's shell might set; every run starts without them.
const OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    CAPTURE,
    "RUST_LOG",
];

/// A fake collector drained continuously (its channel holds 64 spans; a full channel would
/// stall the exporter), collecting every span it receives.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let mut server = FakeCollectorServer::start()
            .await
            .expect("the fake collector starts");
        let endpoint = server.endpoint();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel();
        let sink = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let batch = server.exported_spans(1, Duration::from_millis(50)).await;
                sink.lock().unwrap().extend(batch);
                if stopped.try_recv().is_ok() {
                    // One last drain for anything that arrived meanwhile.
                    let batch = server.exported_spans(1, Duration::from_millis(50)).await;
                    sink.lock().unwrap().extend(batch);
                    server.abort();
                    return;
                }
            }
        });
        Self {
            endpoint,
            spans,
            stop: Some(stop),
            task,
        }
    }

    /// Everything exported until now, after a short grace period.
    async fn finish(mut self) -> Vec<ExportedSpan> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        std::mem::take(&mut *self.spans.lock().unwrap())
    }
}

async fn sim() -> SimServer {
    SimServer::start(
        SimConfig {
            tokens: 6,
            token_delay: Duration::from_millis(2),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("sim provider starts")
}

/// Three agents against the sim; `finish` lets every opening answer land, so the session has
/// three answers, then votes, consensus and a presentation.
fn config(dir: &Path, base_url: &str) -> std::path::PathBuf {
    config_with(dir, base_url, ["sim-a", "sim-b", "sim-c"])
}

fn config_with(dir: &Path, base_url: &str, models: [&str; 3]) -> std::path::PathBuf {
    let mut yaml = String::from("agents:\n");
    for (id, model) in ["alpha", "beta", "gamma"].into_iter().zip(models) {
        yaml.push_str(&format!(
            "  - id: {id}\n    backend:\n      type: sim\n      model: \"{model}\"\n      base_url: \"{base_url}\"\n"
        ));
    }
    yaml.push_str("orchestrator:\n  restart_policy: finish\n");
    yaml.push_str("timeout_settings:\n  orchestrator_timeout_seconds: 60\n");
    let path = dir.join("three.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs one session with the binary, with `env` on top of a clean OTEL environment.
async fn run_session(dir: &Path, config: &Path, session: &str, env: Vec<(&str, String)>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_conclave"));
    command
        .args([
            "--config",
            config.to_str().unwrap(),
            "--display",
            "quiet",
            "--session-dir",
            "sessions",
            "--session-id",
            session,
            QUESTION,
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("CONCLAVE_SIM_API_KEY", SECRET);
    for var in OTEL_VARS {
        command.env_remove(var);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("runner thread")
        .expect("conclave runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// An attribute's value as the collector shows it (`Some(AnyValue { value: Some(...) })`).
fn raw<'a>(attributes: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    attributes.get(key).map(String::as_str)
}

fn string_attr(attributes: &BTreeMap<String, String>, key: &str) -> Option<String> {
    let raw = raw(attributes, key)?;
    let inner = raw
        .strip_prefix("Some(AnyValue { value: Some(StringValue(\"")?
        .strip_suffix("\")) })")?;
    Some(inner.to_owned())
}

fn int_attr(attributes: &BTreeMap<String, String>, key: &str) -> Option<i64> {
    raw(attributes, key)?
        .strip_prefix("Some(AnyValue { value: Some(IntValue(")?
        .strip_suffix(")) })")?
        .parse()
        .ok()
}

fn named<'a>(spans: &'a [ExportedSpan], prefix: &str) -> Vec<&'a ExportedSpan> {
    spans
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .collect()
}

const CONTENT_KEYS: &[&str] = &[
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "conclave.answer.content",
    "conclave.vote.reason",
];

fn dump(spans: &[ExportedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} <- {} {:?}\n",
                s.span_id,
                s.name,
                s.parent_span_id,
                s.events.iter().map(|e| &e.name).collect::<Vec<_>>()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_exports_one_genai_trace() {
    let sim = sim().await;
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim.base_url());
    let output = run_session(
        dir.path(),
        &config,
        "traced",
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone()),
            ("OTEL_SERVICE_NAME", "conclave-test".into()),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("warning: traces") && !stderr.contains("ExportError"),
        "export failed:\n{stderr}"
    );
    let spans = collector.finish().await;
    sim.shutdown().await;
    let tree = dump(&spans);

    // One trace, one root: the session.
    let traces: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "more than one trace:\n{tree}");
    let roots: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "roots:\n{tree}");
    let root = roots[0];
    assert_eq!(root.name, "invoke_workflow conclave");
    assert_eq!(
        string_attr(&root.attributes, "gen_ai.operation.name").as_deref(),
        Some("invoke_workflow")
    );
    assert_eq!(
        string_attr(&root.attributes, "gen_ai.conversation.id").as_deref(),
        Some("traced")
    );
    assert_eq!(int_attr(&root.attributes, "conclave.agent.count"), Some(3));
    assert_eq!(
        string_attr(&root.attributes, "conclave.end_reason").as_deref(),
        Some("consensus")
    );
    assert!(int_attr(&root.attributes, "gen_ai.usage.output_tokens").unwrap_or(0) > 0);

    // Every span hangs off a span of the same export: the tree is complete.
    let by_id: HashMap<&str, &ExportedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for span in &spans {
        if !span.parent_span_id.is_empty() {
            assert!(
                by_id.contains_key(span.parent_span_id.as_str()),
                "{} has a parent that was not exported:\n{tree}",
                span.name
            );
        }
    }

    // invoke_agent {agent}: one per turn, children of the session span.
    let turns = named(&spans, "invoke_agent ");
    let mut agents: Vec<&str> = turns
        .iter()
        .map(|s| s.name.trim_start_matches("invoke_agent "))
        .collect();
    agents.sort();
    agents.dedup();
    assert_eq!(agents, vec!["alpha", "beta", "gamma"], "{tree}");
    for turn in &turns {
        assert_eq!(turn.parent_span_id, root.span_id, "{tree}");
        assert_eq!(
            string_attr(&turn.attributes, "gen_ai.operation.name").as_deref(),
            Some("invoke_agent")
        );
        assert_eq!(
            string_attr(&turn.attributes, "gen_ai.agent.name").as_deref(),
            Some(turn.name.trim_start_matches("invoke_agent "))
        );
        assert_eq!(
            string_attr(&turn.attributes, "gen_ai.conversation.id").as_deref(),
            Some("traced")
        );
    }
    // The journal's turns and the exported turns agree.
    let journal = std::fs::read_to_string(dir.path().join("sessions/traced/events.jsonl")).unwrap();
    let started = journal
        .lines()
        .filter(|l| l.contains("\"type\":\"turn_started\""))
        .count();
    assert_eq!(turns.len(), started, "{tree}");

    // chat {model}: under a turn, with the GenAI attributes.
    let chats = named(&spans, "chat ");
    assert!(chats.len() >= turns.len(), "{tree}");
    for chat in &chats {
        let parent = by_id[chat.parent_span_id.as_str()];
        assert!(parent.name.starts_with("invoke_agent "), "{tree}");
        let a = &chat.attributes;
        let model = chat.name.trim_start_matches("chat ");
        assert!(
            ["sim-a", "sim-b", "sim-c"].contains(&model),
            "{}",
            chat.name
        );
        assert_eq!(chat.kind, "SPAN_KIND_CLIENT");
        assert_eq!(
            string_attr(a, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            string_attr(a, "gen_ai.provider.name").as_deref(),
            Some("sim")
        );
        assert_eq!(
            string_attr(a, "gen_ai.request.model").as_deref(),
            Some(model)
        );
        assert_eq!(
            string_attr(a, "gen_ai.conversation.id").as_deref(),
            Some("traced")
        );
        assert!(
            int_attr(a, "gen_ai.usage.input_tokens").unwrap_or(0) > 0,
            "{a:#?}"
        );
        assert!(
            int_attr(a, "gen_ai.usage.output_tokens").unwrap_or(0) > 0,
            "{a:#?}"
        );
        let reasons = raw(a, "gen_ai.response.finish_reasons").unwrap_or_default();
        assert!(
            reasons.contains("ArrayValue") && reasons.contains("StringValue"),
            "finish reasons are a string array: {reasons}"
        );
        assert_eq!(
            string_attr(a, "server.address").as_deref(),
            Some("127.0.0.1")
        );
    }

    // execute_tool new_answer|vote: the workflow decision, inside its turn.
    let tools = named(&spans, "execute_tool ");
    assert_eq!(
        tools
            .iter()
            .filter(|s| s.name == "execute_tool new_answer")
            .count(),
        3,
        "{tree}"
    );
    assert!(
        tools.iter().any(|s| s.name == "execute_tool vote"),
        "{tree}"
    );
    for tool in &tools {
        let parent = by_id[tool.parent_span_id.as_str()];
        assert!(parent.name.starts_with("invoke_agent "), "{tree}");
        assert_eq!(
            string_attr(&tool.attributes, "gen_ai.tool.name").as_deref(),
            Some(tool.name.trim_start_matches("execute_tool "))
        );
        assert!(string_attr(&tool.attributes, "gen_ai.tool.call.id").is_some());
    }

    // Session decisions are events on the root, with labels and revisions.
    let events = |name: &str| {
        root.events
            .iter()
            .filter(|e| e.name == name)
            .collect::<Vec<_>>()
    };
    let answers = events("conclave.answer");
    let mut labels: Vec<String> = answers
        .iter()
        .map(|e| string_attr(&e.attributes, "conclave.answer.label").unwrap())
        .collect();
    labels.sort();
    assert_eq!(labels, vec!["agent1.1", "agent2.1", "agent3.1"]);
    let mut revisions: Vec<i64> = answers
        .iter()
        .map(|e| int_attr(&e.attributes, "conclave.revision").unwrap())
        .collect();
    revisions.sort();
    assert_eq!(revisions, vec![1, 2, 3]);
    let votes = events("conclave.vote");
    assert!(votes.len() >= 3, "{:#?}", root.events);
    let final_votes: Vec<_> = votes
        .iter()
        .filter(|e| int_attr(&e.attributes, "conclave.revision") == Some(3))
        .collect();
    assert_eq!(final_votes.len(), 3, "{:#?}", root.events);
    assert!(final_votes.iter().all(|e| {
        string_attr(&e.attributes, "conclave.answer.label").as_deref() == Some("agent1.1")
    }));
    let consensus = events("conclave.consensus");
    assert_eq!(consensus.len(), 1);
    assert_eq!(
        string_attr(&consensus[0].attributes, "conclave.answer.label").as_deref(),
        Some("agent1.1")
    );
    assert_eq!(
        string_attr(&consensus[0].attributes, "conclave.winner").as_deref(),
        Some("alpha")
    );
    assert_eq!(
        int_attr(&consensus[0].attributes, "conclave.votes"),
        Some(3)
    );

    // No content without the capture switch, and never the API key.
    for span in &spans {
        for key in CONTENT_KEYS {
            assert!(
                !span.attributes.contains_key(*key),
                "{} has {key}",
                span.name
            );
            for event in &span.events {
                assert!(
                    !event.attributes.contains_key(*key),
                    "{} has {key}",
                    event.name
                );
            }
        }
    }
    let everything = serde_json::to_string(&spans).unwrap();
    assert!(!everything.contains(SECRET), "the API key reached a span");
    assert!(!everything.contains(QUESTION), "content reached a span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_content_is_recorded_only_when_asked() {
    let sim = sim().await;
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim.base_url());
    run_session(
        dir.path(),
        &config,
        "captured",
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone()),
            (CAPTURE, "true".into()),
        ],
    )
    .await;
    let spans = collector.finish().await;
    sim.shutdown().await;
    let tree = dump(&spans);

    let chats = named(&spans, "chat ");
    assert!(!chats.is_empty(), "{tree}");
    for chat in &chats {
        let input = raw(&chat.attributes, "gen_ai.input.messages").unwrap_or_default();
        assert!(input.contains(QUESTION), "input messages: {input}");
        assert!(
            raw(&chat.attributes, "gen_ai.output.messages").is_some(),
            "{:#?}",
            chat.attributes
        );
    }
    let answers = named(&spans, "execute_tool new_answer");
    assert!(
        answers
            .iter()
            .all(|s| s.attributes.contains_key("gen_ai.tool.call.arguments")),
        "{tree}"
    );
    let root = spans
        .iter()
        .find(|s| s.name == "invoke_workflow conclave")
        .expect("session span");
    assert!(
        root.events
            .iter()
            .filter(|e| e.name == "conclave.answer")
            .all(|e| e.attributes.contains_key("conclave.answer.content"))
    );
    let everything = serde_json::to_string(&spans).unwrap();
    assert!(!everything.contains(SECRET), "the API key reached a span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_provider_call_and_its_retry_are_visible() {
    let sim = sim().await;
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flaky = "sim-a:fault=429,fault_times=1,retry_after_ms=5";
    let config = config_with(dir.path(), &sim.base_url(), [flaky, "sim-b", "sim-c"]);
    run_session(
        dir.path(),
        &config,
        "retried",
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone())],
    )
    .await;
    let spans = collector.finish().await;
    sim.shutdown().await;
    let tree = dump(&spans);

    let failed: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| string_attr(&s.attributes, "error.type").is_some())
        .collect();
    assert_eq!(failed.len(), 1, "{tree}");
    let failed = failed[0];
    assert_eq!(failed.name, format!("chat {flaky}"));
    assert_eq!(
        string_attr(&failed.attributes, "error.type").as_deref(),
        Some("429")
    );
    assert_eq!(
        failed.status.as_ref().map(|s| s.code.as_str()),
        Some("STATUS_CODE_ERROR")
    );
    // The retry is a second call in the same turn, and it succeeded.
    let siblings: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id == failed.parent_span_id && s.name.starts_with("chat "))
        .collect();
    assert_eq!(siblings.len(), 2, "{tree}");
    assert!(
        siblings
            .iter()
            .any(|s| int_attr(&s.attributes, "gen_ai.usage.output_tokens").is_some())
    );
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .expect("session span");
    let retry = root
        .events
        .iter()
        .find(|e| e.name == "conclave.retry")
        .unwrap_or_else(|| panic!("no retry event: {:#?}", root.events));
    assert_eq!(
        string_attr(&retry.attributes, "gen_ai.agent.name").as_deref(),
        Some("alpha")
    );
    assert_eq!(int_attr(&retry.attributes, "conclave.attempt"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_an_endpoint_or_when_disabled() {
    let sim = sim().await;
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim.base_url());
    // No endpoint at all.
    run_session(dir.path(), &config, "untraced", Vec::new()).await;
    // An endpoint, but the SDK is disabled.
    run_session(
        dir.path(),
        &config,
        "disabled",
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone()),
            ("OTEL_SDK_DISABLED", "true".into()),
        ],
    )
    .await;
    let spans = collector.finish().await;
    sim.shutdown().await;
    assert!(spans.is_empty(), "exported:\n{}", dump(&spans));
}

/// The agent side takes its parent only from the envelope: a span on "another node" (a
/// separate subscriber, no shared `tracing` state) joins the sender's trace through nothing
/// but the [`TraceContext`] carried by the message.
#[test]
fn a_trace_context_carries_the_parent_across_nodes() {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    conclave_telemetry::enable();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let node = |name: &str| {
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(name.to_owned())))
    };

    // The orchestrator node: the session span, its context injected into an envelope field.
    let (carried, session_ids): (TraceContext, _) =
        tracing::subscriber::with_default(node("orchestrator"), || {
            let session = conclave::telemetry::session_span(
                &conclave_protocol::SessionId::parse("s").unwrap(),
                3,
                false,
            );
            let trace = conclave_telemetry::inject_span(&session);
            let cx = {
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                session.context()
            };
            let ids = (
                cx.span().span_context().trace_id(),
                cx.span().span_context().span_id(),
            );
            (trace, ids)
        });
    assert!(carried.get("traceparent").is_some(), "{carried:?}");

    // The wire: only the serialised carrier crosses.
    let carried: TraceContext =
        serde_json::from_str(&serde_json::to_string(&carried).unwrap()).unwrap();

    // The agent node: a span with an unrelated current span, parented from the carrier only.
    tracing::subscriber::with_default(node("agent"), || {
        let unrelated = tracing::info_span!("unrelated");
        let _inside = unrelated.enter();
        let turn =
            tracing::info_span!(parent: None, "invoke_agent", otel.name = "invoke_agent alpha");
        conclave_telemetry::set_parent(&turn, &carried);
        turn.in_scope(|| {});
    });
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let turn = spans
        .iter()
        .find(|s| s.name == "invoke_agent alpha")
        .expect("the turn span was exported");
    assert_eq!(turn.span_context.trace_id(), session_ids.0);
    assert_eq!(turn.parent_span_id, session_ids.1);
}

/// A binary of this workspace next to the `conclave` binary (`target/<profile>/<name>`).
/// `cargo test --workspace` builds every binary; for `cargo test -p conclave`, run
/// `cargo build -p conclave-agent` (same profile) first.
fn workspace_bin(name: &str) -> std::path::PathBuf {
    let conclave = Path::new(env!("CARGO_BIN_EXE_conclave"));
    let path = conclave
        .with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
        .to_path_buf();
    assert!(
        path.exists(),
        "{} is not built; run `cargo build -p {name}` (same profile) first",
        path.display()
    );
    path
}

/// Waits for `child` at most `deadline`, killing it past that (`None`).
async fn wait_child(
    mut child: std::process::Child,
    deadline: Duration,
) -> Option<std::process::ExitStatus> {
    tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("waiter thread")
}

/// The orchestrator (`--listen`) and one `conclave-agent` process export to the same
/// collector: the agent node's `invoke_agent` and `chat` spans join the session's trace, under
/// the orchestrator's `invoke_workflow conclave` span, through the envelope's trace context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_process_exports_its_spans_into_the_session_trace() {
    let agent_bin = workspace_bin("conclave-agent");
    let sim = sim().await;
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("cookie");
    std::fs::write(&cookie, "conclave-tracing-cluster-cookie\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let join = format!("127.0.0.1:{port}");
    let base_url = sim.base_url();
    // alpha runs in the orchestrator, beta on the agent node `tnode`.
    let config = dir.path().join("cluster.yaml");
    std::fs::write(
        &config,
        format!(
            "agents:\n\
             \x20 - id: alpha\n    backend:\n      type: sim\n      model: \"sim-a\"\n      base_url: \"{base_url}\"\n\
             \x20 - id: beta\n    backend:\n      type: sim\n      model: \"sim-b\"\n      base_url: \"{base_url}\"\n    node: tnode\n\
             orchestrator:\n  restart_policy: finish\n\
             timeout_settings:\n  orchestrator_timeout_seconds: 60\n  node_join_timeout_seconds: 30\n"
        ),
    )
    .unwrap();
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let clean = |command: &mut Command| {
        for var in OTEL_VARS {
            command.env_remove(var);
        }
        command
            .env_remove("CONCLAVE_COOKIE")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint);
    };

    let mut orchestrator = Command::new(env!("CARGO_BIN_EXE_conclave"));
    orchestrator
        .arg("--config")
        .arg(&config)
        .args(["--listen", &join, "--cookie-file"])
        .arg(&cookie)
        .args([
            "--session-dir",
            "sessions",
            "--session-id",
            "clustered",
            "--display",
            "quiet",
            QUESTION,
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log("orchestrator.out"))
        .stderr(log("orchestrator.err"))
        .env("CONCLAVE_SIM_API_KEY", SECRET);
    clean(&mut orchestrator);
    let orchestrator = orchestrator.spawn().expect("conclave starts");

    let mut node = Command::new(agent_bin);
    node.args(["--join", &join, "--name", "tnode", "--cookie-file"])
        .arg(&cookie)
        .args(["--reconnect-max-ms", "300"])
        // The node's operator allows the simulated provider (agent nodes refuse other URLs).
        .args(["--allow-base-url", &base_url])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log("node.err"))
        .env("CONCLAVE_SIM_API_KEY", SECRET);
    clean(&mut node);
    let node = node.spawn().expect("conclave-agent starts");
    let node_pid = node.id();

    let run = wait_child(orchestrator, Duration::from_secs(90)).await;
    // SIGTERM: the node stops cleanly and flushes its last spans on the way out.
    let _ = Command::new("kill")
        .args(["-TERM", &node_pid.to_string()])
        .status();
    let stopped = wait_child(node, Duration::from_secs(15)).await;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let logs = format!(
        "orchestrator stderr:\n{}\nnode stderr:\n{}",
        read("orchestrator.err"),
        read("node.err")
    );
    assert_eq!(run.and_then(|s| s.code()), Some(0), "{logs}");
    assert_eq!(stopped.and_then(|s| s.code()), Some(0), "{logs}");
    assert!(
        !logs.contains("warning: traces") && !logs.contains("ExportError"),
        "export failed:\n{logs}"
    );
    let spans = collector.finish().await;
    sim.shutdown().await;
    let tree = dump(&spans);

    let root = spans
        .iter()
        .find(|s| s.name == "invoke_workflow conclave" && s.parent_span_id.is_empty())
        .unwrap_or_else(|| panic!("no session span:\n{tree}"));
    assert_eq!(
        string_attr(&root.attributes, "gen_ai.conversation.id").as_deref(),
        Some("clustered")
    );
    assert!(
        spans.iter().all(|s| s.trace_id == root.trace_id),
        "more than one trace:\n{tree}"
    );

    // beta only ever runs on the agent node, so its spans can only come from that process.
    for agent in ["alpha", "beta"] {
        let turns = named(&spans, &format!("invoke_agent {agent}"));
        assert!(!turns.is_empty(), "no {agent} turn:\n{tree}");
        for turn in &turns {
            assert_eq!(turn.trace_id, root.trace_id, "{tree}");
            assert_eq!(turn.parent_span_id, root.span_id, "{tree}");
        }
    }
    let beta_turns: std::collections::HashSet<&str> = named(&spans, "invoke_agent beta")
        .iter()
        .map(|s| s.span_id.as_str())
        .collect();
    let beta_chats = named(&spans, "chat sim-b");
    assert!(
        !beta_chats.is_empty(),
        "no chat from the agent node:\n{tree}"
    );
    for chat in &beta_chats {
        assert_eq!(chat.trace_id, root.trace_id, "{tree}");
        assert!(
            beta_turns.contains(chat.parent_span_id.as_str()),
            "chat sim-b is not under a beta turn:\n{tree}"
        );
    }
    // The journal's turns of beta and the exported ones agree.
    let journal =
        std::fs::read_to_string(dir.path().join("sessions/clustered/events.jsonl")).unwrap();
    let started = journal
        .lines()
        .filter(|l| l.contains("\"type\":\"turn_started\"") && l.contains("\"agent\":\"beta\""))
        .count();
    assert_eq!(beta_turns.len(), started, "{tree}");
    let everything = serde_json::to_string(&spans).unwrap();
    assert!(!everything.contains(SECRET), "the API key reached a span");
}
