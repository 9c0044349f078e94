//! The tool layer: the tools an agent may call besides the workflow tools (`new_answer`,
//! `vote`), and how a call is run.
//!
//! A [`ToolKind`] is one source of tools (one MCP server, module [`mcp`]; the agent's file workspace, module [`workspace`]). A
//! [`ToolBox`] aggregates an agent's kinds for the agent's whole life and is what the turn
//! worker talks to: [`ToolBox::specs`] lists the tools as [`ToolSpec`]s to offer the model,
//! [`ToolBox::call_batch`] runs the calls of one model reply and returns, in call order, one
//! [`ToolCallRecord`] per call: the text to feed back ([`ToolCallRecord::message`]) and the
//! facts for the journal.
//!
//! Choices, and why:
//! - **Names follow MassGen**: an MCP tool `t` of server `s` is offered as `mcp__s__t`, so
//!   `allowed_tools` / `exclude_tools` lists written for MassGen work unchanged.
//! - **Bad tool use is the model's problem, not a crash**: an unknown tool, arguments that are
//!   not a JSON object, arguments that miss the schema, a tool that fails, a call that exceeds
//!   `tool_timeout_seconds` and a server that died all become an *error result* whose text
//!   tells the model what went wrong and what to do; nothing here returns `Err` for a call.
//! - **Arguments are checked before they leave the node** with a small schema check (object,
//!   required properties, the JSON type of each declared property, `enum`): the part of JSON
//!   Schema that catches what models actually get wrong, without a schema engine in every
//!   agent node. The server still validates fully; its complaint reaches the model as a tool
//!   error.
//! - **Results are bounded**: a result longer than `max_tool_result_bytes` is cut at a
//!   character boundary and ends with a note saying so and naming the key, so the model knows
//!   it saw part of it and a runaway tool cannot blow the context window.
//! - **Calls of one reply run concurrently**, at most `max_concurrent_tools` at a time, and the
//!   results come back in call order (providers pair results with calls by position or id).
//!
//! How a turn worker uses it (`context.tools` is the agent's `Arc<ToolBox>`):
//!
//! ```text
//! request.tools = workflow_specs ++ context.tools.specs();      // Vec<llm::ToolSpec>
//! loop {
//!     reply = stream(request)
//!     let (workflow, others) = reply.tool_calls split by name (context.tools.has(name))
//!     if others is empty { check workflow as today; break }
//!     if rounds == context.tools.limits().max_tool_rounds { fail naming max_tool_rounds }
//!     let records = context.tools.call_batch(&others).await;   // call order, never Err
//!     request.messages.push(ChatMessage::Assistant { tool_calls: reply.tool_calls, .. });
//!     request.messages.extend(records.iter().map(ToolCallRecord::message));
//!     journal each record.report()  (protocol::tools::ToolCallReport)
//! }
//! ```
//!
//! Unknown names (neither workflow nor offered) can go through `call_batch` too: they come
//! back as "there is no tool named ..." results listing the offered tools.

pub mod command;
pub mod mcp;
pub mod workspace;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_protocol::tools::{AgentTools, ToolCallReport, ToolLimits};
use conclave_protocol::{ToolCall, TurnMode};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Map as JsonMap, Value as Json};
use tracing::Instrument;

use crate::llm::{ChatMessage, ToolSpec};

pub use mcp::{EnvFn, ServerStart, ToolStartError};

/// One tool as its kind describes it (kind-local name).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    /// The name the kind knows it by (the MCP server's tool name).
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments object.
    pub schema: Json,
}

/// What a tool returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The result as text (MCP content blocks joined).
    pub text: String,
    /// The tool itself reported an error (MCP `isError`).
    pub is_error: bool,
}

/// Why a call did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The server could not be reached, died, or answered with a protocol error.
    #[error("{0}")]
    Failed(String),
}

/// One source of tools. Implementations must be cheap to call concurrently.
pub trait ToolKind: Send + Sync {
    /// The kind's name: the `{server}` of `mcp__{server}__{tool}`.
    fn name(&self) -> &str;
    /// The tools it offers (fixed after start).
    fn list(&self) -> Vec<ToolDef>;
    /// Calls `tool` with `arguments` (already checked against its schema).
    fn call(
        &self,
        tool: &str,
        arguments: JsonMap<String, Json>,
    ) -> BoxFuture<'_, Result<ToolOutput, ToolError>>;
    /// Calls `tool` during a turn of `mode`. Kinds whose permissions depend on the phase
    /// override it (the workspace: context paths are writable only in the final
    /// presentation); the others answer as [`Self::call`] does.
    fn call_during(
        &self,
        mode: TurnMode,
        tool: &str,
        arguments: JsonMap<String, Json>,
    ) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        let _ = mode;
        self.call(tool, arguments)
    }
    /// What the model should be told about this kind in a turn of `mode` (the workspace: where
    /// it works and what it may write), added to the turn's system message. `None`: nothing.
    fn prompt_note(&self, mode: TurnMode) -> Option<String> {
        let _ = mode;
        None
    }
    /// Stops whatever the kind runs (child processes, connections). Idempotent.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    /// A kind that bounds its calls itself (the command tool kills a command at its own
    /// deadline) says how long a call may take; the toolbox then waits that long instead of
    /// `tool_timeout_seconds`. `None`: the toolbox's bound applies.
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

/// Makes a child process (an MCP server over stdio, a command) its own process group, so it
/// can be killed with everything it started, and, on Linux, makes the kernel kill it when
/// this process dies (`PR_SET_PDEATHSIG`), so a crash leaves no orphan behind.
pub(crate) fn own_group_dying_with_us(cmd: &mut tokio::process::Command) {
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The MassGen name of tool `tool` of server `server`.
pub fn mcp_tool_name(server: &str, tool: &str) -> String {
    format!("mcp__{server}__{tool}")
}

/// One offered tool.
struct Entry {
    spec: ToolSpec,
    kind: usize,
    tool: String,
}

/// What happened to one tool call, for the model and for the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallRecord {
    /// The provider's id of the call.
    pub call_id: String,
    /// The tool name the model called (as offered, e.g. `mcp__demo__lookup`).
    pub tool: String,
    /// The arguments as the model sent them (JSON text, possibly invalid).
    pub arguments: String,
    pub duration: Duration,
    /// Size of the tool's own result text in bytes, before truncation (0 when there was none).
    pub result_bytes: u64,
    /// The result was cut to `max_tool_result_bytes`.
    pub truncated: bool,
    /// What went wrong, when something did (unknown tool, bad arguments, tool error,
    /// timeout, dead server). The model reads the same text in [`Self::content`].
    pub error: Option<String>,
    /// The kind of [`Self::error`], for traces (`error.type`): `tool_error` (the tool ran and
    /// reported an error), `unknown_tool`, `invalid_arguments`, `tool_unavailable` (the server
    /// could not run the call) or `timeout`.
    pub error_type: Option<&'static str>,
    /// The text fed back to the model as the call's result.
    pub content: String,
}

impl ToolCallRecord {
    /// The message that carries this result back to the model, marked as an error when the
    /// call failed.
    pub fn message(&self) -> ChatMessage {
        if self.error.is_some() {
            ChatMessage::tool_error(self.call_id.clone(), self.content.clone())
        } else {
            ChatMessage::tool(self.call_id.clone(), self.content.clone())
        }
    }

    /// The journal's view of the call (no result text).
    pub fn report(&self) -> ToolCallReport {
        ToolCallReport {
            call_id: self.call_id.clone(),
            tool: self.tool.clone(),
            arguments: self.arguments.clone(),
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            result_bytes: self.result_bytes,
            truncated: self.truncated,
            error: self.error.clone(),
        }
    }
}

/// An agent's tools for its whole life.
pub struct ToolBox {
    kinds: Vec<Arc<dyn ToolKind>>,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    limits: ToolLimits,
    starts: Vec<ServerStart>,
}

impl std::fmt::Debug for ToolBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolBox")
            .field(
                "tools",
                &self
                    .entries
                    .iter()
                    .map(|e| &e.spec.name)
                    .collect::<Vec<_>>(),
            )
            .field("limits", &self.limits)
            .finish()
    }
}

/// Which tools of a kind are offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolFilter {
    /// `Some`: only these (bare or full name). `None`: all.
    pub allowed: Option<Vec<String>>,
    /// Never these (bare or full name).
    pub exclude: Vec<String>,
}

impl ToolFilter {
    pub(crate) fn admits(&self, server: &str, tool: &str) -> bool {
        let full = mcp_tool_name(server, tool);
        let named = |list: &[String]| list.iter().any(|n| n == tool || *n == full);
        self.allowed.as_deref().is_none_or(named) && !named(&self.exclude)
    }
}

impl ToolBox {
    /// A toolbox with no tools (an agent without `mcp_servers`).
    pub fn empty() -> Self {
        Self::from_kinds(Vec::new(), ToolLimits::default())
    }

    /// Sets up the agent's workspace when it has one (module [`workspace`]; its paths must be
    /// absolute by now) and starts every MCP server of `tools` concurrently (module [`mcp`]):
    /// fails with a workspace that cannot be set up, or with the first required server that
    /// cannot start, naming the agent, the server and its stderr tail; an optional server that
    /// cannot start is left out and reported in [`Self::starts`]. `env` resolves `${VAR}` in
    /// the servers' command, args, env, cwd, url and headers (the environment of the node that
    /// runs the agent).
    ///
    /// With `command_line`, the command tool ([`command`]) starts too, in the agent's
    /// workspace; in docker mode that starts the agent's container, labelled with `session`.
    pub async fn start(
        session: &str,
        agent_id: &str,
        tools: &AgentTools,
        env: &EnvFn<'_>,
    ) -> Result<ToolBox, ToolStartError> {
        let mut kinds: Vec<(Arc<dyn ToolKind>, ToolFilter)> = Vec::new();
        if let Some(spec) = &tools.workspace {
            let workspace = workspace::Workspace::open(spec).map_err(|error| ToolStartError {
                agent: agent_id.to_owned(),
                server: conclave_protocol::tools::FILESYSTEM_TOOLS.to_owned(),
                problem: error.to_string(),
                stderr_tail: String::new(),
            })?;
            let filter = workspace.filter();
            kinds.push((Arc::new(workspace), filter));
        }
        let started = mcp::start_all(agent_id, &tools.mcp_servers, env).await?;
        let mut starts = Vec::new();
        for (server, start) in started {
            if let Some(server) = server {
                kinds.push((server.clone(), server.filter()));
            }
            starts.push(start);
        }
        if let Some(spec) = &tools.command_line {
            let (tool, start) = command::start_for_agent(session, agent_id, tools, spec).await?;
            kinds.push((Arc::new(tool), ToolFilter::default()));
            starts.push(start);
        }
        let mut toolbox = Self::from_filtered_kinds(kinds, tools.limits);
        toolbox.starts = starts;
        Ok(toolbox)
    }

    /// A toolbox over `kinds`, offering all their tools.
    pub fn from_kinds(kinds: Vec<Arc<dyn ToolKind>>, limits: ToolLimits) -> Self {
        Self::from_filtered_kinds(
            kinds
                .into_iter()
                .map(|k| (k, ToolFilter::default()))
                .collect(),
            limits,
        )
    }

    /// A toolbox over `kinds`, each with its filter.
    pub fn from_filtered_kinds(
        kinds: Vec<(Arc<dyn ToolKind>, ToolFilter)>,
        limits: ToolLimits,
    ) -> Self {
        let mut entries = Vec::new();
        let mut by_name = HashMap::new();
        let mut kept = Vec::new();
        for (index, (kind, filter)) in kinds.into_iter().enumerate() {
            for def in kind.list() {
                if !filter.admits(kind.name(), &def.name) {
                    continue;
                }
                let name = mcp_tool_name(kind.name(), &def.name);
                if by_name.contains_key(&name) {
                    tracing::warn!(tool = %name, "two tools share a name; the first is offered");
                    continue;
                }
                by_name.insert(name.clone(), entries.len());
                entries.push(Entry {
                    spec: ToolSpec {
                        name,
                        description: def.description,
                        parameters: normalise_schema(def.schema),
                    },
                    kind: index,
                    tool: def.name,
                });
            }
            kept.push(kind);
        }
        ToolBox {
            kinds: kept,
            entries,
            by_name,
            limits,
            starts: Vec::new(),
        }
    }

    /// The tools to offer the model, in a stable order (server order, then the server's).
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.entries.iter().map(|e| e.spec.clone()).collect()
    }

    /// Whether `name` is one of the offered tools.
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Whether there is any tool at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn limits(&self) -> ToolLimits {
        self.limits
    }

    /// How each MCP server's start went (for the journal: start-up time, tool count, the
    /// error of an optional server that was left out).
    pub fn starts(&self) -> &[ServerStart] {
        &self.starts
    }

    /// What the kinds tell the model for a turn of `mode` (see [`ToolKind::prompt_note`]),
    /// joined; `None` when no kind has anything to say.
    pub fn prompt_note(&self, mode: TurnMode) -> Option<String> {
        let notes: Vec<String> = self
            .kinds
            .iter()
            .filter_map(|k| k.prompt_note(mode))
            .collect();
        (!notes.is_empty()).then(|| notes.join("\n"))
    }

    /// Runs the calls of one model reply of a turn of `mode`, at most `max_concurrent_tools`
    /// at a time; the records come back in call order. Never fails: every problem is an
    /// error result.
    pub async fn call_batch(&self, calls: &[ToolCall], mode: TurnMode) -> Vec<ToolCallRecord> {
        let width = usize::try_from(self.limits.max_concurrent_tools.max(1)).unwrap_or(1);
        // Owned calls: a future borrowing its argument through the closure would not be
        // `Send` for every lifetime, which a turn worker (an actor) needs.
        futures::stream::iter(calls.to_vec())
            .map(|call| async move { self.call(&call, mode).await })
            .buffered(width)
            .collect()
            .await
    }

    /// Runs one call (see [`Self::call_batch`]) inside its `execute_tool {name}` span
    /// ([`tool_span`]), a child of whatever span is current (the turn's `invoke_agent`).
    pub async fn call(&self, call: &ToolCall, mode: TurnMode) -> ToolCallRecord {
        let span = tool_span(call);
        let record = self
            .call_untraced(call, mode)
            .instrument(span.clone())
            .await;
        finish_tool_span(&span, &record);
        record
    }

    async fn call_untraced(&self, call: &ToolCall, mode: TurnMode) -> ToolCallRecord {
        let started = Instant::now();
        let mut record = ToolCallRecord {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            arguments: call.arguments.clone(),
            duration: Duration::ZERO,
            result_bytes: 0,
            truncated: false,
            error: None,
            error_type: None,
            content: String::new(),
        };
        let outcome = self.run(call, mode).await;
        record.duration = started.elapsed();
        match outcome {
            Ok(output) => {
                record.result_bytes = output.text.len() as u64;
                let (text, truncated) = truncate(output.text, self.limits.max_tool_result_bytes);
                record.truncated = truncated;
                if output.is_error {
                    let text = format!("error: tool `{}` failed: {text}", call.name);
                    record.error = Some(text.clone());
                    record.error_type = Some("tool_error");
                    record.content = text;
                } else {
                    record.content = text;
                }
            }
            Err((kind, problem)) => {
                let text = format!("error: {problem}");
                record.error = Some(text.clone());
                record.error_type = Some(kind);
                record.content = text;
            }
        }
        record
    }

    /// Looks the tool up, checks the arguments and calls it under the timeout. `Err` is the
    /// kind of problem (see [`ToolCallRecord::error_type`]) and the text told to the model.
    async fn run(
        &self,
        call: &ToolCall,
        mode: TurnMode,
    ) -> Result<ToolOutput, (&'static str, String)> {
        let Some(&index) = self.by_name.get(&call.name) else {
            return Err(("unknown_tool", self.unknown_tool(&call.name)));
        };
        let entry = &self.entries[index];
        let invalid = |problem| ("invalid_arguments", problem);
        let arguments = parse_arguments(&call.name, &call.arguments).map_err(invalid)?;
        check_arguments(&entry.spec.parameters, &arguments).map_err(|problem| {
            invalid(format!(
                "the arguments of `{}` do not match its schema: {problem}; call it again with \
                 arguments that do",
                call.name
            ))
        })?;
        let kind = &self.kinds[entry.kind];
        let timeout = kind
            .timeout()
            .unwrap_or_else(|| Duration::from_secs(self.limits.tool_timeout_seconds.max(1)));
        match tokio::time::timeout(timeout, kind.call_during(mode, &entry.tool, arguments)).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(ToolError::Failed(problem))) => Err((
                "tool_unavailable",
                format!("tool `{}` could not run: {problem}", call.name),
            )),
            Err(_) => Err((
                "timeout",
                format!(
                    "tool `{}` did not answer within {} s (the agent's tool_timeout_seconds); \
                 the call was abandoned",
                    call.name,
                    timeout.as_secs()
                ),
            )),
        }
    }

    fn unknown_tool(&self, name: &str) -> String {
        let mut names: Vec<&str> = self.entries.iter().map(|e| e.spec.name.as_str()).collect();
        names.truncate(50);
        if names.is_empty() {
            format!("there is no tool named `{name}`, and no tools besides the workflow ones")
        } else {
            format!(
                "there is no tool named `{name}`; the tools you can call are: {}",
                names.join(", ")
            )
        }
    }

    /// Stops every kind (servers, connections). Dropping the toolbox also stops them; this
    /// waits for a graceful stop.
    pub async fn shutdown(&self) {
        futures::future::join_all(self.kinds.iter().map(|k| k.shutdown())).await;
    }
}

/// The `execute_tool {name}` span of one call, with the OpenTelemetry GenAI tool attributes
/// (`gen_ai.operation.name`, `gen_ai.tool.name`, `gen_ai.tool.call.id`, `gen_ai.tool.type`).
/// The arguments are recorded only when content capture is on
/// ([`conclave_telemetry::capture_content`]); `error.type` and the result are filled in by
/// [`finish_tool_span`].
fn tool_span(call: &ToolCall) -> tracing::Span {
    let span = tracing::info_span!(
        "execute_tool",
        otel.name = %format!("execute_tool {}", call.name),
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %call.name,
        gen_ai.tool.call.id = %call.id,
        gen_ai.tool.type = "function",
        gen_ai.tool.call.arguments = tracing::field::Empty,
        gen_ai.tool.call.result = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if !span.is_disabled() && content_captured() {
        span.record("gen_ai.tool.call.arguments", call.arguments.as_str());
    }
    span
}

/// Whether tool arguments and results may go on spans (an exporter is on and content capture
/// was asked for).
fn content_captured() -> bool {
    conclave_telemetry::is_active() && conclave_telemetry::capture_content()
}

/// Records how a call ended on its span: `error.type` ([`ToolCallRecord::error_type`]) with
/// an error status, and the result when content capture is on.
fn finish_tool_span(span: &tracing::Span, record: &ToolCallRecord) {
    if span.is_disabled() {
        return;
    }
    if let Some(kind) = record.error_type {
        span.record("error.type", kind);
        span.record("otel.status_code", "ERROR");
    }
    if content_captured() {
        span.record("gen_ai.tool.call.result", record.content.as_str());
    }
}

/// Parses a call's arguments: a JSON object; empty text counts as `{}` (models send it for
/// tools without parameters).
fn parse_arguments(tool: &str, text: &str) -> Result<JsonMap<String, Json>, String> {
    if text.trim().is_empty() {
        return Ok(JsonMap::new());
    }
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "the arguments of `{tool}` must be a JSON object, not {}; call it again with an \
             object such as {{\"name\": value}}",
            json_type(&other)
        )),
        Err(error) => Err(format!(
            "the arguments of `{tool}` are not valid JSON ({error}); call it again with one \
             JSON object"
        )),
    }
}

/// An arguments schema every provider accepts: an object schema with `properties`.
fn normalise_schema(schema: Json) -> Json {
    match schema {
        Json::Object(mut map) => {
            map.entry("type").or_insert_with(|| Json::from("object"));
            map.entry("properties")
                .or_insert_with(|| Json::Object(JsonMap::new()));
            Json::Object(map)
        }
        _ => serde_json::json!({"type": "object", "properties": {}}),
    }
}

fn json_type(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Whether `value` has the JSON Schema type `wanted`.
fn has_type(value: &Json, wanted: &str) -> bool {
    match wanted {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|x| x.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        // A type this check does not know: the server decides.
        _ => true,
    }
}

/// The small schema check (see the module docs): required properties, each declared
/// property's `type` (a name or a list of names) and `enum`.
pub fn check_arguments(schema: &Json, arguments: &JsonMap<String, Json>) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    if let Some(required) = schema.get("required").and_then(Json::as_array) {
        let missing: Vec<&str> = required
            .iter()
            .filter_map(Json::as_str)
            .filter(|name| !arguments.contains_key(*name))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "missing required {} {}",
                if missing.len() == 1 {
                    "property"
                } else {
                    "properties"
                },
                missing
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let properties = schema.get("properties").and_then(Json::as_object);
    if let Some(properties) = properties {
        for (name, value) in arguments {
            let Some(property) = properties.get(name).and_then(Json::as_object) else {
                continue;
            };
            let types: Vec<&str> = match property.get("type") {
                Some(Json::String(t)) => vec![t.as_str()],
                Some(Json::Array(list)) => list.iter().filter_map(Json::as_str).collect(),
                _ => Vec::new(),
            };
            if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
                return Err(format!(
                    "property `{name}` must be {}, not {}",
                    types.join(" or "),
                    json_type(value)
                ));
            }
            if let Some(allowed) = property.get("enum").and_then(Json::as_array)
                && !allowed.contains(value)
            {
                return Err(format!(
                    "property `{name}` must be one of {}",
                    Json::Array(allowed.clone())
                ));
            }
        }
    }
    if schema.get("additionalProperties") == Some(&Json::Bool(false)) {
        let known = |name: &String| properties.is_some_and(|p| p.contains_key(name));
        if let Some(extra) = arguments.keys().find(|name| !known(name)) {
            return Err(format!("property `{extra}` is not one the tool takes"));
        }
    }
    Ok(())
}

/// Cuts `text` to at most `max` bytes (at a character boundary) and appends a note saying
/// so. Returns the text and whether it was cut.
pub fn truncate(text: String, max: u64) -> (String, bool) {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let total = text.len();
    let mut cut = text;
    cut.truncate(end);
    cut.push_str(&format!(
        "\n[conclave: result truncated: showing the first {end} of {total} bytes \
         (max_tool_result_bytes)]"
    ));
    (cut, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_check_names_missing_and_mistyped_properties() {
        let schema = json!({"type": "object", "properties": {"key": {"type": "string"},
            "n": {"type": ["integer", "null"]}, "mode": {"enum": ["a", "b"]}}, "required": ["key"]});
        let args = |v: Json| v.as_object().cloned().unwrap_or_default();
        assert!(check_arguments(&schema, &args(json!({"key": "x"}))).is_ok());
        assert!(check_arguments(&schema, &args(json!({"key": "x", "n": 2.0}))).is_ok());
        let missing = check_arguments(&schema, &args(json!({}))).unwrap_err();
        assert!(missing.contains("`key`"), "{missing}");
        let typed = check_arguments(&schema, &args(json!({"key": 3}))).unwrap_err();
        assert!(typed.contains("must be string, not a number"), "{typed}");
        let typed = check_arguments(&schema, &args(json!({"key": "x", "n": "1"}))).unwrap_err();
        assert!(typed.contains("integer or null"), "{typed}");
        let enumed = check_arguments(&schema, &args(json!({"key": "x", "mode": "c"}))).unwrap_err();
        assert!(enumed.contains("one of"), "{enumed}");
    }

    #[test]
    fn truncation_keeps_a_char_boundary_and_says_so() {
        let (text, cut) = truncate("héllo".to_owned(), 2);
        assert!(cut);
        assert!(text.starts_with("h\n"), "{text}");
        assert!(text.contains("max_tool_result_bytes"));
        assert!(text.contains("of 6 bytes"));
        assert_eq!(truncate("abc".to_owned(), 3), ("abc".to_owned(), false));
    }

    #[test]
    fn filters_take_bare_and_full_names() {
        let filter = ToolFilter {
            allowed: Some(vec!["lookup".into(), "mcp__s__add".into()]),
            exclude: vec!["mcp__s__add".into()],
        };
        assert!(filter.admits("s", "lookup"));
        assert!(!filter.admits("s", "add"));
        assert!(!filter.admits("s", "big"));
        assert!(ToolFilter::default().admits("s", "big"));
        let none = ToolFilter {
            allowed: Some(Vec::new()),
            exclude: Vec::new(),
        };
        assert!(!none.admits("s", "lookup"));
    }

    /// A kind with one tool, `echo`, that returns its `text` argument, or reports a tool
    /// error when the text is `fail`.
    struct Echo;

    impl ToolKind for Echo {
        fn name(&self) -> &str {
            "demo"
        }
        fn list(&self) -> Vec<ToolDef> {
            vec![ToolDef {
                name: "echo".into(),
                description: "echoes".into(),
                schema: json!({"type": "object", "properties": {"text": {"type": "string"}},
                    "required": ["text"]}),
            }]
        }
        fn call(
            &self,
            _tool: &str,
            arguments: JsonMap<String, Json>,
        ) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
            let text = arguments
                .get("text")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned();
            Box::pin(async move {
                Ok(ToolOutput {
                    is_error: text == "fail",
                    text,
                })
            })
        }
        fn shutdown(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall::new(id, name, arguments)
    }

    /// Every call is one `execute_tool {name}` span under the turn's `invoke_agent` span, with
    /// the GenAI tool attributes; a failed call carries `error.type` and an error status; the
    /// arguments stay off the span while content capture is off.
    #[test]
    fn each_call_is_an_execute_tool_span_under_the_turn() {
        use opentelemetry::trace::{Status, TracerProvider as _};
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let toolbox = ToolBox::from_kinds(vec![Arc::new(Echo)], ToolLimits::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let records = tracing::subscriber::with_default(subscriber, || {
            let turn = tracing::info_span!("invoke_agent", otel.name = "invoke_agent alpha");
            runtime.block_on(
                async {
                    toolbox
                        .call_batch(
                            &[
                                call("c1", "mcp__demo__echo", r#"{"text": "hi"}"#),
                                call("c2", "mcp__demo__echo", r#"{"text": "fail"}"#),
                                call("c3", "mcp__demo__nope", "{}"),
                                call("c4", "mcp__demo__echo", "{}"),
                            ],
                            TurnMode::Coordinate,
                        )
                        .await
                }
                .instrument(turn),
            )
        });
        assert_eq!(records[0].error_type, None);
        assert_eq!(records[1].error_type, Some("tool_error"));
        assert_eq!(records[2].error_type, Some("unknown_tool"));
        assert_eq!(records[3].error_type, Some("invalid_arguments"));
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let turn = spans
            .iter()
            .find(|s| s.name == "invoke_agent alpha")
            .expect("the turn span");
        let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        let tools: Vec<_> = spans
            .iter()
            .filter(|s| s.name.starts_with("execute_tool "))
            .collect();
        assert_eq!(
            tools.len(),
            4,
            "{:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        for (id, error) in [
            ("c1", None),
            ("c2", Some("tool_error")),
            ("c3", Some("unknown_tool")),
            ("c4", Some("invalid_arguments")),
        ] {
            let span = tools
                .iter()
                .find(|s| attribute(s, "gen_ai.tool.call.id").as_deref() == Some(id))
                .unwrap_or_else(|| panic!("no span for call {id}"));
            assert_eq!(span.parent_span_id, turn.span_context.span_id());
            assert_eq!(span.span_context.trace_id(), turn.span_context.trace_id());
            let tool = if id == "c3" {
                "mcp__demo__nope"
            } else {
                "mcp__demo__echo"
            };
            assert_eq!(span.name, format!("execute_tool {tool}"));
            assert_eq!(
                attribute(span, "gen_ai.operation.name").as_deref(),
                Some("execute_tool")
            );
            assert_eq!(attribute(span, "gen_ai.tool.name").as_deref(), Some(tool));
            assert_eq!(
                attribute(span, "gen_ai.tool.type").as_deref(),
                Some("function")
            );
            assert_eq!(attribute(span, "error.type").as_deref(), error);
            assert_eq!(matches!(span.status, Status::Error { .. }), error.is_some());
            assert_eq!(attribute(span, "gen_ai.tool.call.arguments"), None);
            assert_eq!(attribute(span, "gen_ai.tool.call.result"), None);
        }
    }

    #[test]
    fn arguments_that_are_not_an_object_are_explained() {
        assert!(parse_arguments("t", "").unwrap().is_empty());
        assert!(
            parse_arguments("t", "[1]")
                .unwrap_err()
                .contains("not an array")
        );
        assert!(
            parse_arguments("t", "{\"a\":")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
