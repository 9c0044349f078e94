//! OpenTelemetry traces for the orchestrator: installing the OTLP exporter, and the session
//! span with its events.
//!
//! **Off by default, and free when off.** Without `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), or with `OTEL_SDK_DISABLED=true`, [`init`] installs
//! the plain stderr log subscriber and nothing else: no OpenTelemetry layer, no propagator, no
//! exporter thread; envelopes carry an empty trace context.
//!
//! **On:** an OTLP/gRPC batch exporter behind a `tracing-opentelemetry` layer, next to the
//! stderr log layer. The two layers filter separately: `RUST_LOG`/`-v` only shape the log; the
//! OpenTelemetry layer sees conclave's spans at INFO and up whatever the log level. The SDK
//! reads the rest of the standard environment itself: `OTEL_EXPORTER_OTLP_HEADERS` (e.g. an
//! auth header for a hosted backend), `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_INSECURE`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME` (default [`DEFAULT_SERVICE_NAME`]), and the
//! `OTEL_BSP_*` batch settings. [`TelemetryGuard`] flushes and shuts the exporter down when the
//! process ends, within [`SHUTDOWN_TIMEOUT`].
//!
//! **One trace per session** (OpenTelemetry GenAI conventions): the coordinator holds the root
//! span `invoke_workflow conclave` for the session's life ([`session_span`]), records the
//! session's decisions as span events on it ([`session_event`]), and injects its context into
//! every command it sends; each agent turn is an `invoke_agent {agent}` span parented on that
//! context, with `chat {model}` and `execute_tool {tool}` spans under it (see
//! `conclave_agent::turn`).

use conclave_protocol::SessionId;
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Span, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;

use crate::consensus::EndReason;
use crate::journal::JournalEvent;
use crate::outcome::SessionOutcome;

/// The exporter plumbing is shared with the agent node (`conclave-agent`).
pub use conclave_telemetry::{SHUTDOWN_TIMEOUT, TelemetryGuard, export_requested, otel_layer};

/// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "conclave-orchestrator";

/// The name of the session span.
pub const SESSION_SPAN: &str = "invoke_workflow conclave";

/// The resource of the orchestrator's spans: `service.name` (default
/// [`DEFAULT_SERVICE_NAME`]), `service.version`, the SDK's telemetry attributes, then whatever
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` say (they win).
pub fn resource() -> Resource {
    conclave_telemetry::resource(DEFAULT_SERVICE_NAME)
}

/// A tracer provider with an OTLP/gRPC batch exporter and the orchestrator's [`resource`]
/// (see `conclave_telemetry::tracer_provider`). Must be called inside a Tokio runtime
/// that outlives the provider's shutdown.
pub fn tracer_provider(
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    conclave_telemetry::tracer_provider(endpoint, DEFAULT_SERVICE_NAME)
}

/// Installs the global `tracing` subscriber: the stderr log filtered by `log_filter`, plus the
/// OTLP exporter when [`export_requested`] (see the module docs). Returns the guard to keep
/// until exit when export is on. Call once, inside a Tokio runtime (`Runtime::enter`).
pub fn init(log_filter: EnvFilter) -> Option<TelemetryGuard> {
    conclave_telemetry::init(
        DEFAULT_SERVICE_NAME,
        log_filter,
        conclave_telemetry::LogStyle {
            target: false,
            ansi: None,
        },
    )
}

/// The root span of one session, `invoke_workflow conclave`. Held by the coordinator from the
/// start to the end of the session; every command it sends carries this span's context.
pub fn session_span(session: &SessionId, agents: usize, resumed: bool) -> Span {
    info_span!(
        parent: None,
        "invoke_workflow conclave",
        gen_ai.operation.name = "invoke_workflow",
        gen_ai.conversation.id = %session,
        conclave.agent.count = agents as i64,
        conclave.session.resumed = resumed,
        conclave.end_reason = tracing::field::Empty,
        conclave.answers = tracing::field::Empty,
        conclave.turns = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records how the session ended on its span (the caller then drops the span, which ends it).
/// Integers go in as `i64`: the OpenTelemetry layer records other integer types as strings.
pub fn end_session(span: &Span, outcome: &SessionOutcome) {
    if span.is_disabled() {
        return;
    }
    let reason = outcome.reason.as_str();
    span.record("conclave.end_reason", reason);
    span.record("conclave.answers", i64::from(outcome.answers));
    span.record("conclave.turns", outcome.turns as i64);
    span.record(
        "gen_ai.usage.input_tokens",
        outcome.usage.input_tokens as i64,
    );
    span.record(
        "gen_ai.usage.output_tokens",
        outcome.usage.output_tokens as i64,
    );
    match outcome.reason {
        EndReason::Consensus | EndReason::Interrupted => {}
        _ => {
            span.record("error.type", reason);
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Adds a journaled session event to the session span as a span event: answers, votes,
/// restarts, retries, failures, consensus, the end. Events that are only bookkeeping (usage,
/// the final text, ...) are left out. Does nothing while export is off.
pub fn session_event(span: &Span, event: &JournalEvent) {
    if !conclave_telemetry::is_active() || span.is_disabled() {
        return;
    }
    let capture = conclave_telemetry::capture_content();
    let agent = |name: &str| KeyValue::new("gen_ai.agent.name", name.to_owned());
    let label = |label: &str| KeyValue::new("conclave.answer.label", label.to_owned());
    let revision = |r: u64| KeyValue::new("conclave.revision", r as i64);
    let seen = |r: u64| KeyValue::new("conclave.seen_revision", r as i64);
    let text = |key: &'static str, value: &str| KeyValue::new(key, value.to_owned());
    let (name, attributes): (&'static str, Vec<KeyValue>) = match event {
        JournalEvent::TurnStarted {
            agent: a,
            turn,
            mode,
            revision: r,
            may_answer,
            ..
        } => (
            "conclave.turn.started",
            vec![
                agent(a),
                KeyValue::new("conclave.turn", *turn as i64),
                text("conclave.turn.mode", mode),
                revision(*r),
                KeyValue::new("conclave.may_answer", *may_answer),
            ],
        ),
        JournalEvent::TurnCancelled { agent: a, turn } => (
            "conclave.turn.cancelled",
            vec![agent(a), KeyValue::new("conclave.turn", *turn as i64)],
        ),
        JournalEvent::AnswerAccepted {
            agent: a,
            label: l,
            revision: r,
            seen_revision,
            stale,
            content,
            ..
        } => {
            let mut attributes = vec![
                agent(a),
                label(l),
                revision(*r),
                seen(*seen_revision),
                KeyValue::new("conclave.stale", *stale),
            ];
            if capture {
                attributes.push(text("conclave.answer.content", content));
            }
            ("conclave.answer", attributes)
        }
        JournalEvent::AnswerRejected { agent: a, reason } => (
            "conclave.answer.rejected",
            vec![agent(a), text("conclave.reason", reason)],
        ),
        JournalEvent::VoteAccepted {
            agent: a,
            label: l,
            revision: r,
            reason,
        } => {
            let mut attributes = vec![agent(a), label(l), revision(*r)];
            if capture {
                attributes.push(text("conclave.vote.reason", reason));
            }
            ("conclave.vote", attributes)
        }
        JournalEvent::VoteDiscarded {
            agent: a,
            label: l,
            seen_revision,
            revision: r,
            why,
        } => (
            "conclave.vote.discarded",
            vec![
                agent(a),
                label(l),
                seen(*seen_revision),
                revision(*r),
                text("conclave.reason", why),
            ],
        ),
        JournalEvent::Abstained {
            agent: a,
            turn,
            revision: r,
            reason,
        } => (
            "conclave.abstained",
            vec![
                agent(a),
                KeyValue::new("conclave.turn", *turn as i64),
                revision(*r),
                text("conclave.reason", reason),
            ],
        ),
        JournalEvent::VoteRejected {
            agent: a,
            label: l,
            seen_revision,
            revision: r,
            why,
        } => (
            "conclave.vote.rejected",
            vec![
                agent(a),
                label(l),
                seen(*seen_revision),
                revision(*r),
                text("conclave.reason", why),
            ],
        ),
        JournalEvent::TurnRestarted {
            agent: a,
            old_turn,
            reason,
        } => {
            let mut attributes = vec![agent(a), text("conclave.reason", reason)];
            if let Some(turn) = old_turn {
                attributes.push(KeyValue::new("conclave.turn", *turn as i64));
            }
            ("conclave.turn.restarted", attributes)
        }
        JournalEvent::TurnProgress {
            agent: a,
            turn,
            event,
        } => {
            let turn = KeyValue::new("conclave.turn", *turn as i64);
            match event {
                conclave_protocol::TurnEvent::ProviderRetry {
                    attempt,
                    wait_ms,
                    reason,
                } => (
                    "conclave.retry",
                    vec![
                        agent(a),
                        turn,
                        KeyValue::new("conclave.attempt", i64::from(*attempt)),
                        KeyValue::new("conclave.wait_ms", *wait_ms as i64),
                        text("conclave.reason", reason),
                    ],
                ),
                conclave_protocol::TurnEvent::CorrectiveRetry { attempt, problem } => (
                    "conclave.corrective_retry",
                    vec![
                        agent(a),
                        turn,
                        KeyValue::new("conclave.attempt", i64::from(*attempt)),
                        text("conclave.reason", problem),
                    ],
                ),
                conclave_protocol::TurnEvent::WorkerRestart { attempt, reason } => (
                    "conclave.worker.restarted",
                    vec![
                        agent(a),
                        turn,
                        KeyValue::new("conclave.attempt", i64::from(*attempt)),
                        text("conclave.reason", reason),
                    ],
                ),
                conclave_protocol::TurnEvent::ToolCalled { report, .. } => {
                    let mut attributes = vec![
                        agent(a),
                        turn,
                        KeyValue::new("gen_ai.tool.name", report.tool.clone()),
                        KeyValue::new("gen_ai.tool.call.id", report.call_id.clone()),
                        KeyValue::new("conclave.tool.duration_ms", report.duration_ms as i64),
                        KeyValue::new("conclave.tool.result_bytes", report.result_bytes as i64),
                    ];
                    if let Some(error) = &report.error {
                        attributes.push(text("error.type", error));
                    }
                    ("conclave.tool.called", attributes)
                }
                conclave_protocol::TurnEvent::AnswersInjected {
                    revision,
                    injection,
                    labels,
                } => (
                    "conclave.answers.injected",
                    vec![
                        agent(a),
                        turn,
                        KeyValue::new("conclave.revision", *revision as i64),
                        KeyValue::new("conclave.injection", i64::from(*injection)),
                        text("conclave.answers", &labels.join(",")),
                    ],
                ),
                conclave_protocol::TurnEvent::PeerSnapshotsUnavailable { reason } => (
                    "conclave.snapshots.unavailable",
                    vec![agent(a), turn, text("conclave.reason", reason)],
                ),
                conclave_protocol::TurnEvent::InjectionDeclined { revision } => (
                    "conclave.injection.declined",
                    vec![
                        agent(a),
                        turn,
                        KeyValue::new("conclave.revision", *revision as i64),
                    ],
                ),
                conclave_protocol::TurnEvent::WorkflowSwitched { to, reason } => (
                    "conclave.workflow.switched",
                    vec![
                        agent(a),
                        turn,
                        KeyValue::new("conclave.workflow", to.as_str()),
                        text("conclave.reason", reason),
                    ],
                ),
            }
        }
        JournalEvent::TurnFailed {
            agent: a,
            turn,
            kind,
            message,
        } => (
            "conclave.turn.failed",
            vec![
                agent(a),
                KeyValue::new("conclave.turn", *turn as i64),
                text("error.type", kind),
                text("conclave.reason", message),
            ],
        ),
        JournalEvent::AgentLost { agent: a, reason } => (
            "conclave.agent.lost",
            vec![agent(a), text("conclave.reason", reason)],
        ),
        JournalEvent::AgentFailed { agent: a, reason } => (
            "conclave.agent.failed",
            vec![agent(a), text("conclave.reason", reason)],
        ),
        JournalEvent::AgentRejoined { agent: a } => ("conclave.agent.rejoined", vec![agent(a)]),
        JournalEvent::PresentationFailed { agent: a, reason } => (
            "conclave.presentation.failed",
            vec![agent(a), text("conclave.reason", reason)],
        ),
        JournalEvent::ConsensusReached {
            winner,
            label: l,
            votes,
        } => (
            "conclave.consensus",
            vec![
                text("conclave.winner", winner),
                label(l),
                KeyValue::new("conclave.votes", i64::from(*votes)),
            ],
        ),
        JournalEvent::TimedOut { after_ms } => (
            "conclave.timeout",
            vec![KeyValue::new("conclave.after_ms", *after_ms as i64)],
        ),
        JournalEvent::BudgetExhausted { reason, .. } => (
            "conclave.budget_exhausted",
            vec![text("conclave.reason", reason)],
        ),
        JournalEvent::Interrupted => ("conclave.interrupted", Vec::new()),
        JournalEvent::SessionPaused { agents_waiting } => (
            "conclave.paused",
            vec![KeyValue::new(
                "conclave.turns_waiting",
                agents_waiting.len() as i64,
            )],
        ),
        JournalEvent::AllAgentsFailed => ("conclave.all_agents_failed", Vec::new()),
        _ => return,
    };
    span.add_event(name, attributes);
}
