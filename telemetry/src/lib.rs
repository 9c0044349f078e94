//! # conclave-telemetry
//!
//! Tracing for both binaries (`conclave` and `conclave-agent`): the stderr log and OTLP trace
//! export ([`init`]), trace context across nodes, and the GenAI conventions both sides record
//! spans by ([`capture_content`], [`provider_name`]).
//!
//! Design choice: this is a crate of its own, not part of the cluster transport, because the
//! two never meet: the transport (`conclave-cluster`) carries frames and knows no spans, while
//! the users of this crate are the agent's turn worker (it parents its spans on the carried
//! context), the orchestrator's coordinator (it injects the context) and the two binaries'
//! start-up. It was a module of the agent crate, which made the orchestrator reach into the
//! agent crate for its own exporter.
//!
//! Every [`Envelope`](conclave_protocol::Envelope) carries a [`TraceContext`]: the W3C
//! `traceparent` / `tracestate` (and `baggage`) fields of the span that sent it. The sender
//! [`inject`]s the context of its span; the receiver [`extract`]s it and makes it the parent of
//! its own span ([`set_parent`]). An agent's `invoke_agent` span only ever takes its parent from
//! the StartTurn envelope, never from whatever span happens to be current on its node, so the
//! agent can live in another process and its spans still hang under the orchestrator's
//! `invoke_workflow conclave` trace.
//!
//! Propagation goes through OpenTelemetry's global text-map propagator. Until [`enable`] is
//! called ([`init`] does it when it installs an OTLP exporter, on the orchestrator and on an
//! agent node alike), the global propagator is a no-op and [`inject_span`] returns an empty
//! context without touching the span, so tracing costs nothing when it is off.
//!
//! **Export** ([`init`], shared by the `conclave` and `conclave-agent` binaries): off by
//! default and free when off. Without `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), or with `OTEL_SDK_DISABLED=true`, only the plain
//! stderr log subscriber is installed: no OpenTelemetry layer, no propagator, no exporter
//! thread. On: an OTLP/gRPC batch exporter behind a `tracing-opentelemetry` layer, next to the
//! stderr log layer; the two filter separately (`RUST_LOG`/`-v` only shape the log; the
//! OpenTelemetry layer sees conclave's spans at INFO and up). The SDK reads the rest of the
//! standard environment itself (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, ...); `OTEL_SERVICE_NAME` overrides the binary's
//! default service name. [`TelemetryGuard`] flushes and shuts the exporter down at exit,
//! within [`SHUTDOWN_TIMEOUT`].
//!
//! Problems with export itself (the exporter cannot be built, the last spans cannot be sent)
//! are `tracing` warnings. They are only ever logged while the stderr log subscriber is
//! installed: [`init`] installs the log-only subscriber *before* it reports an exporter it
//! could not build, and a [`TelemetryGuard`] exists only once [`init`] has installed the
//! subscriber, so neither warning can be lost to a process without one.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use conclave_protocol::TraceContext;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, global};
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The OpenTelemetry switch for recording prompts and completions on spans.
pub const CAPTURE_CONTENT_ENV: &str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Installs the W3C propagators (trace context and baggage) as the global text-map propagator
/// and marks trace export as active on this node. Call once, when an OpenTelemetry layer is
/// installed.
pub fn enable() {
    global::set_text_map_propagator(propagator());
    ACTIVE.store(true, Ordering::Release);
}

/// Whether an OpenTelemetry layer is installed on this node (see [`enable`]). Callers use it to
/// skip building span events and attributes nobody would export.
pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// The propagator [`enable`] installs: W3C `traceparent`/`tracestate`, then W3C `baggage`.
pub fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Whether prompts, completions and tool arguments may be recorded on spans: only when
/// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (read once per process).
pub fn capture_content() -> bool {
    static CAPTURE: OnceLock<bool> = OnceLock::new();
    *CAPTURE.get_or_init(|| {
        std::env::var(CAPTURE_CONTENT_ENV).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
    })
}

/// How long the exit may wait for the last spans to be exported.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The instrumentation scope of conclave's spans.
const SCOPE: &str = "conclave";

/// Whether the environment asks for trace export: an OTLP endpoint is set and the SDK is not
/// disabled. `env` looks a variable up (the process environment in [`init`]).
pub fn export_requested(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |key: &str| env(key).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The resource of a process's spans: `service.name` (`default_service_name` unless the
/// environment names one), `service.version`, the SDK's telemetry attributes, then whatever
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` say (they win).
pub fn resource(default_service_name: &str) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_service_name(default_service_name.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detectors(&[
            Box::new(TelemetryResourceDetector) as Box<dyn ResourceDetector>,
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME")
        && !name.trim().is_empty()
    {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// A tracer provider with an OTLP/gRPC batch exporter and the [`resource`] of
/// `default_service_name`. `endpoint` overrides the environment
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`); everything else
/// comes from the environment. An `https://` endpoint is verified against the system's root
/// certificates.
///
/// Must be called inside a Tokio runtime (the gRPC channel spawns its connection task on it),
/// and that runtime must outlive the provider's shutdown.
pub fn tracer_provider(
    endpoint: Option<&str>,
    default_service_name: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let effective = endpoint.map(str::to_owned).or_else(|| {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.trim().is_empty()))
    });
    let mut exporter = SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    if effective.is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("https://")) {
        exporter = exporter.with_tls_config(ClientTlsConfig::new().with_enabled_roots());
    }
    let exporter = exporter.build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(default_service_name))
        .build())
}

/// The OpenTelemetry layer over `provider`, filtered to conclave's own spans (and the
/// warnings logged inside them, which become span events) at INFO and up.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    // `conclave` also covers `conclave_agent`, `conclave_cluster`, ...: targets match by prefix.
    let filter = Targets::new().with_target("conclave", Level::INFO);
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_threads(false)
        .with_target(false)
        .with_location(false)
        .with_tracked_inactivity(false)
        .with_filter(filter)
}

/// Flushes and shuts the exporter down when dropped (or on [`TelemetryGuard::shutdown`]), so
/// the spans of a short run are not lost at exit. Waits at most [`SHUTDOWN_TIMEOUT`].
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Only [`init`] makes a guard, after installing the subscriber its warning goes to.
    fn new(provider: SdkTracerProvider) -> Self {
        Self {
            provider: Some(provider),
        }
    }

    /// Exports what is left and stops the exporter. A failure (the collector is unreachable)
    /// is logged once as a warning; it never changes the exit code.
    pub fn shutdown(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!("traces could not all be exported over OTLP: {error}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// How the stderr log looks.
#[derive(Clone, Copy, Debug)]
pub struct LogStyle {
    /// Show each event's target (module path).
    pub target: bool,
    /// Colour the log with ANSI escapes (`None`: the subscriber's default, which honours
    /// `NO_COLOR`).
    pub ansi: Option<bool>,
}

/// Installs the global `tracing` subscriber: the stderr log filtered by `log_filter` and
/// styled by `style`, plus the OTLP exporter when [`export_requested`] (see the module docs),
/// exporting under `default_service_name` unless `OTEL_SERVICE_NAME` says otherwise. Returns
/// the guard to keep until exit when export is on. Call once, inside a Tokio runtime
/// (`Runtime::enter`) that outlives the guard.
pub fn init(
    default_service_name: &str,
    log_filter: EnvFilter,
    style: LogStyle,
) -> Option<TelemetryGuard> {
    if !export_requested(&|key| std::env::var(key).ok()) {
        init_log_only(log_filter, style);
        return None;
    }
    let provider = match tracer_provider(None, default_service_name) {
        Ok(provider) => provider,
        Err(error) => {
            // The log first, so the warning has somewhere to go.
            init_log_only(log_filter, style);
            tracing::warn!("trace export disabled: {error}");
            return None;
        }
    };
    let mut log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(style.target);
    if let Some(ansi) = style.ansi {
        log = log.with_ansi(ansi);
    }
    let installed = Registry::default()
        .with(log.with_filter(log_filter))
        .with(otel_layer(&provider))
        .try_init();
    if installed.is_err() {
        // Another subscriber is already in place (an embedding program): export nothing.
        let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        return None;
    }
    enable();
    Some(TelemetryGuard::new(provider))
}

/// The stderr log alone, with a global filter: what runs when export is off.
fn init_log_only(log_filter: EnvFilter, style: LogStyle) {
    let mut log = tracing_subscriber::fmt()
        .with_env_filter(log_filter)
        .with_writer(std::io::stderr)
        .with_target(style.target);
    if let Some(ansi) = style.ansi {
        log = log.with_ansi(ansi);
    }
    let _ = log.try_init();
}

struct Carrier<'a>(&'a mut TraceContext);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(key, value);
    }
}

struct Reader<'a>(&'a TraceContext);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.fields.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The W3C fields of `cx`, through the global propagator.
pub fn inject(cx: &Context) -> TraceContext {
    let mut trace = TraceContext::default();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(cx, &mut Carrier(&mut trace))
    });
    trace
}

/// The W3C fields of a `tracing` span's OpenTelemetry context; empty while tracing is off (or
/// when the span is disabled).
pub fn inject_span(span: &tracing::Span) -> TraceContext {
    if !is_active() || span.is_disabled() {
        return TraceContext::default();
    }
    inject(&span.context())
}

/// The OpenTelemetry context carried by `trace`, through the global propagator. An empty or
/// malformed carrier gives an empty context (the receiving span becomes a root).
pub fn extract(trace: &TraceContext) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&Reader(trace)))
}

/// Makes the context carried by `trace` the parent of `span`. Call right after creating the
/// span, before it is entered. Does nothing when `trace` is empty or no OpenTelemetry layer is
/// installed.
pub fn set_parent(span: &tracing::Span, trace: &TraceContext) {
    if trace.is_empty() || span.is_disabled() {
        return;
    }
    // Errors only mean there is no OpenTelemetry layer (nothing to parent) or the span was
    // already started, which the callers rule out.
    let _ = span.set_parent(extract(trace));
}

/// The `gen_ai.provider.name` of a conclave provider preset: the OpenTelemetry well-known value
/// where there is one, the preset name otherwise.
pub fn provider_name(preset: &str) -> &str {
    match preset {
        "openai" | "openai_chat" => "openai",
        "anthropic" | "claude_code" => "anthropic",
        "gemini" => "gcp.gemini",
        "azure_openai" => "azure.ai.openai",
        "xai" => "x_ai",
        "deepseek" => "deepseek",
        "groq" => "groq",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    #[test]
    fn traceparent_round_trips_through_trace_context() {
        let propagator = propagator();
        let span_context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "v1")]).unwrap(),
        );
        let cx = Context::new().with_remote_span_context(span_context.clone());
        let mut trace = TraceContext::default();
        propagator.inject_context(&cx, &mut Carrier(&mut trace));
        assert_eq!(
            trace.get("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(trace.get("tracestate"), Some("vendor=v1"));

        // Across the wire the carrier is just data.
        let wire: TraceContext = serde_json::from_str(&serde_json::to_string(&trace).unwrap())
            .expect("the carrier serialises");
        let back = propagator.extract(&Reader(&wire));
        let extracted = back.span().span_context().clone();
        assert_eq!(extracted.trace_id(), span_context.trace_id());
        assert_eq!(extracted.span_id(), span_context.span_id());
        assert!(extracted.is_sampled());
        assert!(extracted.is_remote());
        assert_eq!(extracted.trace_state().header(), "vendor=v1");
    }

    #[test]
    fn global_inject_and_extract_use_the_installed_propagator() {
        enable();
        assert!(is_active());
        let span_context = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let trace = inject(&Context::new().with_remote_span_context(span_context.clone()));
        assert_eq!(
            trace.get("TraceParent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            "keys are looked up case-insensitively"
        );
        let back = extract(&trace);
        assert_eq!(
            back.span().span_context().trace_id(),
            span_context.trace_id()
        );
        assert_eq!(back.span().span_context().span_id(), span_context.span_id());
    }

    #[test]
    fn empty_or_malformed_carriers_extract_to_no_parent() {
        let propagator = propagator();
        let empty = propagator.extract(&Reader(&TraceContext::default()));
        assert!(!empty.span().span_context().is_valid());
        let mut bad = TraceContext::default();
        bad.set("traceparent", "00-not-a-trace-01".into());
        let bad = propagator.extract(&Reader(&bad));
        assert!(!bad.span().span_context().is_valid());
    }

    #[test]
    fn export_is_requested_only_with_an_endpoint_and_not_disabled() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                vars.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!export_requested(&env(&[])));
        assert!(!export_requested(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(export_requested(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4317"
        )])));
        assert!(export_requested(&env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4317"
        )])));
        assert!(!export_requested(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(export_requested(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "false"),
        ])));
    }

    #[test]
    fn the_resource_carries_the_default_service_name() {
        // Only meaningful when the test runner's environment does not name a service.
        if std::env::var_os("OTEL_SERVICE_NAME").is_some()
            || std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_some()
        {
            return;
        }
        let resource = resource("conclave-agent-gpu-1");
        assert_eq!(
            resource
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string())
                .as_deref(),
            Some("conclave-agent-gpu-1")
        );
    }

    #[test]
    fn provider_names_follow_the_semantic_conventions() {
        assert_eq!(provider_name("openai"), "openai");
        assert_eq!(provider_name("gemini"), "gcp.gemini");
        assert_eq!(provider_name("xai"), "x_ai");
        assert_eq!(provider_name("sim"), "sim");
    }
}
