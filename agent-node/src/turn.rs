//! The TurnWorker: one actor per LLM turn, spawned linked to its AgentActor.
//!
//! A worker builds the turn's messages, calls the provider (streaming every chunk to the
//! coordinator), retries failed provider calls under the shared [`RetryPolicy`], checks that a
//! coordination turn ended in exactly one valid workflow call (asking again with a corrective
//! message, a bounded number of times), and reports the outcome through the agent's
//! [`Outbox`], its final report through the turn's [`TurnEnd`] (which the agent shares, so a
//! turn that timed out or was cancelled never also reports a result). Then it stops.
//!
//! What is a crash and what is a failure:
//! * A provider that keeps failing after its retries, or a model that never makes a valid
//!   call, is a *failure*: the worker reports `TurnFailed` itself and stops normally.
//! * A panic, or a provider that goes silent for `stall_timeout` (accepts the request and then
//!   sends nothing), is a *crash*: the worker's handler fails, ractor tells the AgentActor, and
//!   the agent restarts the turn with backoff under its restart-intensity limit.
//! * Cancellation is a kill from the AgentActor: the handler future is dropped mid-await,
//!   which drops the HTTP response and closes the provider stream at once.
//!
//! Tracing (OpenTelemetry GenAI conventions): one `invoke_agent {agent}` span per worker, whose
//! parent is taken only from the StartTurn envelope's trace context (never from whatever span
//! is current on this node, so an agent on another machine joins the session's trace); under
//! it one `chat {model}` span per provider call (retries included) and, for a valid workflow
//! call, one `execute_tool new_answer|vote` span. Prompts and completions are recorded only
//! when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`. API keys never reach a span.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_protocol::config::WorkflowMode;
use conclave_protocol::message::TOOL_RESULT_JOURNAL_BYTES;
use conclave_protocol::{
    AgentReport, Decision, DecisionHow, SessionId, StreamChunk, ToolCall, TraceContext, TurnError,
    TurnErrorKind, TurnEvent, TurnMode, TurnSpec,
};
use conclave_telemetry as telemetry;
use futures::StreamExt;
use opentelemetry::{Array, StringValue, Value};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{Instrument, Span, debug, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::accumulate::TurnOutput;
use crate::llm::{ChatMessage, ChatRequest, ToolChoice};
use crate::outbox::{Outbox, TurnEnd};
use crate::providers::retry::RetryPolicy;
use crate::providers::{Backend, ProviderError};
use crate::tools::ToolCallRecord;
use crate::workflow;

/// Limits that shape every turn of an agent.
#[derive(Debug, Clone)]
pub struct TurnSettings {
    /// Corrective retries after a turn without exactly one valid workflow call.
    pub max_workflow_retries: u32,
    /// The whole turn, retries included.
    pub turn_timeout: Duration,
    /// No chunk for this long: the provider stalled.
    pub stall_timeout: Duration,
    /// Worker crashes tolerated within `restart_window` before the agent gives up on a turn:
    /// the crash after the last tolerated one fails the turn, which reports the agent failed
    /// (the session goes on without it). A session takes it from
    /// `orchestrator.max_turn_restarts` (default 3); a remote agent gets it in its
    /// `TurnLimits`.
    pub max_restarts: u32,
    /// The sliding window in which crashes count toward `max_restarts`
    /// (`orchestrator.restart_window_seconds`, default 60 s).
    pub restart_window: Duration,
}

impl Default for TurnSettings {
    fn default() -> Self {
        Self {
            max_workflow_retries: 3,
            turn_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(120),
            max_restarts: conclave_protocol::config::DEFAULT_MAX_TURN_RESTARTS,
            restart_window: Duration::from_secs(
                conclave_protocol::config::DEFAULT_RESTART_WINDOW_SECONDS,
            ),
        }
    }
}

/// What every turn of one agent shares.
#[derive(Debug)]
pub struct AgentContext {
    pub agent_id: String,
    pub backend: Arc<Backend>,
    pub outbox: Arc<Outbox>,
    pub system_message: Option<String>,
    pub settings: TurnSettings,
    /// How this agent states its decisions; shared by its turns, so an `auto` agent that
    /// switched to text stays switched.
    pub workflow: WorkflowState,
    /// The agent's tools besides the workflow ones (its MCP servers), started with the agent
    /// and stopped when the last reference goes (see [`crate::tools`]).
    pub tools: Arc<crate::tools::ToolBox>,
    /// The agent's workspace snapshots (captured with each answer, peers' shown read-only);
    /// `None` for an agent without a workspace (see [`crate::snapshot`]).
    pub snapshots: Option<Arc<crate::snapshot::AgentSnapshots>>,
}

/// An agent's workflow mode (`workflow:` in its config) and, for `auto`, whether it has
/// switched to the text protocol.
#[derive(Debug, Default)]
pub struct WorkflowState {
    configured: WorkflowMode,
    switched_to_text: AtomicBool,
}

impl WorkflowState {
    pub fn new(configured: WorkflowMode) -> Self {
        WorkflowState {
            configured,
            switched_to_text: AtomicBool::new(false),
        }
    }

    /// Whether the next turn decides through the text protocol.
    pub fn uses_text(&self) -> bool {
        match self.configured {
            WorkflowMode::Text => true,
            WorkflowMode::Tools => false,
            WorkflowMode::Auto => self.switched_to_text.load(Ordering::Relaxed),
        }
    }

    /// Whether a turn that ignored the tools moves this agent to text.
    fn may_switch(&self) -> bool {
        self.configured == WorkflowMode::Auto && !self.uses_text()
    }

    fn switch_to_text(&self) {
        self.switched_to_text.store(true, Ordering::Relaxed);
    }
}

/// The least text (non-whitespace characters) a turn must have written to be kept as an
/// implicit answer when it made no decision: below it, the "answer" is a stray word or an
/// apology, not work worth keeping.
pub const MIN_IMPLICIT_ANSWER_CHARS: usize = 10;

/// Newer answers for a running coordination turn (restart policy `inject`). The agent actor
/// stores what the coordinator sends ([`Injections::offer`]); the turn's worker takes it at its
/// next tool boundary ([`Injections::take`]). What was delivered is remembered, so a worker
/// restarted after a crash starts from the revision the coordinator now expects.
#[derive(Debug, Default)]
pub struct Injections {
    slot: Mutex<InjectionSlot>,
}

#[derive(Debug, Default)]
struct InjectionSlot {
    pending: Option<TurnSpec>,
    delivered: Option<TurnSpec>,
    count: u32,
    /// A tool boundary may still come: the turn offers the model its own tools and has not
    /// left its tool loop for the decision yet. Otherwise injections are declined.
    in_tool_loop: bool,
}

impl Injections {
    fn lock(&self) -> std::sync::MutexGuard<'_, InjectionSlot> {
        // A worker that panicked while holding the lock left a consistent slot behind (every
        // update is a single assignment), so a poisoned lock is still good.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps newer answers for the turn's next tool boundary (a newer offer replaces an older
    /// one not taken yet) and returns true; returns false, keeping nothing, when the turn has
    /// no tool call in flight (no boundary is ahead).
    pub fn offer(&self, spec: TurnSpec) -> bool {
        let mut slot = self.lock();
        if !slot.in_tool_loop {
            return false;
        }
        let newer = slot
            .pending
            .as_ref()
            .or(slot.delivered.as_ref())
            .is_none_or(|known| spec.revision > known.revision);
        if newer {
            slot.pending = Some(spec);
        }
        true
    }

    fn set_in_tool_loop(&self, in_loop: bool) {
        self.lock().in_tool_loop = in_loop;
    }

    /// The pending answers, if newer than `current`, and the injection's number in the turn.
    fn take(&self, current: &TurnSpec) -> Option<(TurnSpec, u32)> {
        let mut slot = self.lock();
        let spec = slot.pending.take()?;
        if spec.turn != current.turn || spec.revision <= current.revision {
            return None;
        }
        slot.count += 1;
        slot.delivered = Some(spec.clone());
        Some((spec, slot.count))
    }

    /// The spec a (re)started worker begins with: the last delivered one, else `original`.
    pub fn starting_spec(&self, original: &TurnSpec) -> TurnSpec {
        self.lock()
            .delivered
            .clone()
            .unwrap_or_else(|| original.clone())
    }
}

/// The turn worker actor.
pub struct TurnWorker;

/// Arguments of one worker: the turn and the agent it works for.
pub struct WorkerArgs {
    pub spec: TurnSpec,
    pub context: Arc<AgentContext>,
    /// The session: the `gen_ai.conversation.id` of the turn's spans.
    pub session: SessionId,
    /// The StartTurn envelope's trace context: the only parent the turn's span ever takes.
    pub trace: TraceContext,
    /// The turn's end, shared with the agent: the final report goes through it, so it is
    /// ordered with the agent's own deadline and cancellation (a turn that timed out never
    /// also reports a result). A worker run on its own (in tests) gets a fresh one.
    pub end: Arc<TurnEnd>,
    /// Newer answers the coordinator sends while the turn runs (restart policy `inject`).
    pub injections: Arc<Injections>,
}

/// The worker's only message: run the turn (sent to itself once it has started, so the
/// actor is fully linked and killable before any I/O begins).
pub enum WorkerMsg {
    Run,
}

impl ractor::Message for WorkerMsg {}

pub struct WorkerState {
    spec: TurnSpec,
    context: Arc<AgentContext>,
    session: SessionId,
    trace: TraceContext,
    end: Arc<TurnEnd>,
    injections: Arc<Injections>,
}

impl WorkerState {
    /// Sends the turn's final report, unless the agent ended the turn first (see
    /// [`WorkerArgs::end`]).
    fn deliver(&self, report: AgentReport) {
        self.end.report(&self.context.outbox, report);
    }
}

/// Why a single provider call did not produce a complete output.
enum CallError {
    Provider(ProviderError),
    Stalled(Duration),
}

impl Actor for TurnWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        myself.send_message(WorkerMsg::Run)?;
        Ok(WorkerState {
            spec: args.spec,
            context: args.context,
            session: args.session,
            trace: args.trace,
            end: args.end,
            injections: args.injections,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Run => {
                let span = turn_span(state);
                let result = run_turn(
                    &state.spec,
                    &state.context,
                    &state.session,
                    &state.injections,
                )
                .instrument(span.clone())
                .await;
                match result {
                    Ok(report) => {
                        if let AgentReport::TurnFailed { error, .. } = &report {
                            record_error(&span, error.kind.as_str());
                        }
                        state.deliver(report);
                        myself.stop(None);
                        Ok(())
                    }
                    // A stall is a crash: fail the handler so the agent restarts the turn.
                    Err(CallError::Stalled(after)) => {
                        record_error(&span, TurnErrorKind::Stalled.as_str());
                        Err(format!("stalled: no data from the provider for {after:?}").into())
                    }
                    Err(CallError::Provider(error)) => {
                        record_error(&span, error_kind(&error).as_str());
                        state.deliver(AgentReport::TurnFailed {
                            turn: state.spec.turn,
                            error: TurnError {
                                kind: error_kind(&error),
                                message: error.to_string(),
                            },
                        });
                        myself.stop(None);
                        Ok(())
                    }
                }
            }
        }
    }
}

/// The `invoke_agent {agent}` span of one worker, parented on the StartTurn envelope's trace
/// context only (`parent: None` keeps any span current on this node out of it).
fn turn_span(state: &WorkerState) -> Span {
    let backend = state.context.backend.spec();
    let span = info_span!(
        parent: None,
        "invoke_agent",
        otel.name = %format!("invoke_agent {}", state.context.agent_id),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = %state.context.agent_id,
        gen_ai.conversation.id = %state.session,
        gen_ai.provider.name = %telemetry::provider_name(&backend.provider),
        gen_ai.request.model = %backend.model,
        conclave.turn = state.spec.turn.0 as i64,
        conclave.turn.mode = match state.spec.mode {
            TurnMode::Coordinate => "coordinate",
            TurnMode::Present => "present",
        },
        conclave.revision = state.spec.revision as i64,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    telemetry::set_parent(&span, &state.trace);
    span
}

/// Marks a span as failed with a low-cardinality `error.type`.
fn record_error(span: &Span, kind: &str) {
    span.record("error.type", kind);
    span.record("otel.status_code", "ERROR");
}

fn error_kind(error: &ProviderError) -> TurnErrorKind {
    match error {
        ProviderError::MissingApiKey { .. } => TurnErrorKind::Auth,
        ProviderError::Http {
            status: 401 | 403, ..
        } => TurnErrorKind::Auth,
        ProviderError::Config(_) => TurnErrorKind::Config,
        _ => TurnErrorKind::Provider,
    }
}

/// The agent's own system message with what its tools tell the model for a turn of `mode`
/// appended (the workspace: where the agent works, the peers' files, the context paths and
/// what it may write now).
fn system_with_tools(context: &AgentContext, mode: TurnMode) -> Option<String> {
    match (
        context.system_message.as_deref(),
        context.tools.prompt_note(mode),
    ) {
        (own, None) => own.map(str::to_owned),
        (None, Some(note)) => Some(note),
        (Some(own), Some(note)) => Some(format!("{own}\n\n{note}")),
    }
}

/// Runs one turn to its final report (Decided, Presented or a TurnFailed for an invalid
/// decision). Provider failures past the retry policy come back as errors.
async fn run_turn(
    spec: &TurnSpec,
    context: &AgentContext,
    session: &SessionId,
    injections: &Injections,
) -> Result<AgentReport, CallError> {
    let own_system = system_with_tools(context, spec.mode);
    let own_system = own_system.as_deref();
    show_peer_snapshots(spec, context).await;
    match spec.mode {
        TurnMode::Present => {
            // The presenter may use its own tools (never the workflow ones).
            let tools = context.tools.specs();
            let mut request = ChatRequest {
                messages: workflow::presentation_messages(spec, own_system),
                tool_choice: if tools.is_empty() {
                    ToolChoice::None
                } else {
                    ToolChoice::Auto
                },
                tools,
            };
            let mut rounds = 0;
            let mut spec = spec.clone();
            let output =
                call_with_tools(&mut spec, context, session, &mut request, &mut rounds, None)
                    .await?;
            Ok(AgentReport::Presented {
                turn: spec.turn,
                content: output.text,
            })
        }
        TurnMode::Coordinate => coordinate(spec.clone(), context, session, injections).await,
    }
}

/// A coordination turn: ask, read the decision (a workflow call, or a marked line in text
/// mode), and on a turn without a valid decision ask again with a corrective message, at most
/// `max_workflow_retries` times.
///
/// Models that do not call tools (see `workflow::text`):
/// - `workflow: auto` starts with tools. A reply with no tool call at all is the model
///   ignoring them: if its text holds a marked decision, that decision counts; either way the
///   agent switches to text for the rest of the session (reported, and journaled by the
///   coordinator), and the turn goes on in text.
/// - After the last retry, a turn that wrote at least [`MIN_IMPLICIT_ANSWER_CHARS`] of text
///   while it was allowed to answer keeps its longest text as a new answer (an *implicit*
///   answer), unless the agent already has a current answer: its work is then already in,
///   and answering again on every turn would restart the others forever. An agent that has
///   answers to vote for but made no decision abstains; only an agent with nothing to vote
///   for and nothing written fails the turn.
///
/// Under the restart policy `inject`, newer answers offered while the turn runs are handed to
/// the model at its next tool boundary (see [`call_with_tools`]); `spec` then becomes the turn
/// as updated, so the decision is read and reported against the new answers and revision.
async fn coordinate(
    mut spec: TurnSpec,
    context: &AgentContext,
    session: &SessionId,
    injections: &Injections,
) -> Result<AgentReport, CallError> {
    // The text protocol offers no tools, so only a tool request hears about them.
    let own_system = context.system_message.as_deref();
    let with_tools = system_with_tools(context, TurnMode::Coordinate);
    let mut text_mode = context.workflow.uses_text();
    let mut request = if text_mode {
        text_request(&spec, own_system)
    } else {
        let mut tools = workflow::workflow_tools(&spec);
        tools.extend(context.tools.specs());
        ChatRequest {
            messages: workflow::coordination_messages(&spec, with_tools.as_deref()),
            tools,
            tool_choice: ToolChoice::Auto,
        }
    };
    let mut tool_rounds = 0;
    // A turn that offers the model its own tools can reach a tool boundary until it decides;
    // one without (no tools, or the text protocol) declines injections at once.
    injections.set_in_tool_loop(!text_mode && !context.tools.is_empty());
    let decided = |spec: &TurnSpec, decision: Decision, how: DecisionHow| AgentReport::Decided {
        turn: spec.turn,
        decision,
        seen_revision: spec.revision,
        how,
    };
    let mut last_problem = None;
    // The longest text the model wrote; kept as an implicit answer if nothing else comes.
    let mut longest_text = String::new();
    for attempt in 0..=context.settings.max_workflow_retries {
        let output = call_with_tools(
            &mut spec,
            context,
            session,
            &mut request,
            &mut tool_rounds,
            Some(injections),
        )
        .await?;
        let spec = &spec;
        if output.text.trim().len() > longest_text.trim().len() {
            longest_text = output.text.clone();
        }
        let limit = context.tools.limits().max_tool_rounds;
        let problem = if !text_mode && has_tool_calls(context, &output) {
            // Only reached when the tool rounds are spent: the model must decide now, so the
            // agent's tools are no longer offered.
            request
                .tools
                .retain(|tool| workflow::is_workflow_tool(&tool.name));
            workflow::DecisionProblem::ToolRoundsExhausted { limit }
        } else if text_mode {
            match workflow::text::parse_text_decision(spec, &output.text) {
                Ok(decision) => match attach_snapshot(spec, context, &decision).await {
                    Ok(()) => return Ok(decided(spec, decision, DecisionHow::Text)),
                    Err(problem) => problem,
                },
                Err(problem) => problem,
            }
        } else {
            match workflow::parse_decision(spec, &output.tool_calls) {
                Ok(decision) => match attach_snapshot(spec, context, &decision).await {
                    Ok(()) => {
                        record_tool_call(&output, &decision);
                        return Ok(decided(spec, decision, DecisionHow::Tool));
                    }
                    Err(problem) => problem,
                },
                Err(problem) => problem,
            }
        };
        debug!(agent = %context.agent_id, turn = %spec.turn, code = problem.code(), text_mode, "no valid decision");
        if !text_mode && output.tool_calls.is_empty() && context.workflow.may_switch() {
            // The model ignored the tools: text from now on, for this turn and the next.
            context.workflow.switch_to_text();
            text_mode = true;
            context.outbox.send(AgentReport::TurnEvent {
                turn: spec.turn,
                event: TurnEvent::WorkflowSwitched {
                    to: WorkflowMode::Text,
                    reason: format!(
                        "the model answered without calling a workflow tool ({problem})"
                    ),
                },
            });
            let problem = match workflow::text::parse_text_decision(spec, &output.text) {
                Ok(decision) => match attach_snapshot(spec, context, &decision).await {
                    Ok(()) => return Ok(decided(spec, decision, DecisionHow::Text)),
                    Err(problem) => problem,
                },
                Err(problem) => problem,
            };
            request = text_request(spec, own_system);
            if attempt < context.settings.max_workflow_retries {
                corrective_retry(context, spec, attempt, &problem);
                workflow::text_correction(&mut request.messages, spec, &output, &problem);
            }
            last_problem = Some(problem);
            continue;
        }
        if attempt < context.settings.max_workflow_retries {
            corrective_retry(context, spec, attempt, &problem);
            if text_mode {
                workflow::text_correction(&mut request.messages, spec, &output, &problem);
            } else {
                workflow::correction(&mut request.messages, spec, &output, &problem);
            }
        }
        last_problem = Some(problem);
    }
    let mut problem = last_problem.map(|p| p.to_string()).unwrap_or_default();
    let written = longest_text.trim();
    let has_own_answer = spec
        .answers
        .iter()
        .any(|answer| answer.label.agent == spec.self_number);
    let substantial =
        written.chars().filter(|c| !c.is_whitespace()).count() >= MIN_IMPLICIT_ANSWER_CHARS;
    if spec.may_answer && !has_own_answer && substantial {
        let decision = Decision::NewAnswer {
            content: written.to_owned(),
        };
        match attach_snapshot(&spec, context, &decision).await {
            Ok(()) => return Ok(decided(&spec, decision, DecisionHow::Implicit)),
            Err(refused) => problem = refused.to_string(),
        }
    }
    if !spec.answers.is_empty() {
        return Ok(decided(
            &spec,
            Decision::Abstain {
                reason: format!(
                    "no valid decision after {} corrective retries: {problem}",
                    context.settings.max_workflow_retries
                ),
            },
            DecisionHow::Implicit,
        ));
    }
    Ok(AgentReport::TurnFailed {
        turn: spec.turn,
        error: TurnError {
            kind: TurnErrorKind::InvalidDecision,
            message: format!(
                "no valid decision and no answer after {} corrective retries: {problem}",
                context.settings.max_workflow_retries
            ),
        },
    })
}

/// For an agent with a workspace, captures it and sends the snapshot ahead of a `new_answer`
/// decision (see [`crate::snapshot`]). A capture that fails (over `snapshot_max_files` or
/// `snapshot_max_bytes`, an unreadable file) refuses the answer: the error is the problem the
/// model reads in its corrective message. Votes and abstentions carry no snapshot.
async fn attach_snapshot(
    spec: &TurnSpec,
    context: &AgentContext,
    decision: &Decision,
) -> Result<(), workflow::DecisionProblem> {
    let (Some(snapshots), Decision::NewAnswer { .. }) = (&context.snapshots, decision) else {
        return Ok(());
    };
    match snapshots.capture().await {
        Ok(captured) => {
            debug!(agent = %context.agent_id, turn = %spec.turn, files = captured.manifest.files.len(), bytes = captured.manifest.total_bytes, "workspace captured");
            crate::snapshot::AgentSnapshots::send(&context.outbox, spec.turn, captured);
            Ok(())
        }
        Err(error) => {
            warn!(agent = %context.agent_id, turn = %spec.turn, %error, "answer refused: workspace snapshot failed");
            Err(workflow::DecisionProblem::SnapshotRefused {
                reason: error.to_string(),
            })
        }
    }
}

/// Brings the agent's peers directory to the turn's snapshots (an agent with a workspace); a
/// failure is reported and the turn goes on without them.
async fn show_peer_snapshots(spec: &TurnSpec, context: &AgentContext) {
    let Some(snapshots) = &context.snapshots else {
        return;
    };
    if let Err(error) = snapshots.sync_peers(&spec.snapshots).await {
        warn!(agent = %context.agent_id, turn = %spec.turn, %error, "peers' snapshots not shown");
        context.outbox.send(AgentReport::TurnEvent {
            turn: spec.turn,
            event: TurnEvent::PeerSnapshotsUnavailable {
                reason: error.to_string(),
            },
        });
    }
}

/// Whether the reply calls any of the agent's own tools (anything but the workflow tools),
/// when it has tools at all. Without tools, a stray call is a workflow problem, as before.
fn has_tool_calls(context: &AgentContext, output: &TurnOutput) -> bool {
    !context.tools.is_empty()
        && output
            .tool_calls
            .iter()
            .any(|call| !workflow::is_workflow_tool(&call.name))
}

/// Calls the provider and runs the agent's tools for it until a reply calls none of them, or
/// the turn's `max_tool_rounds` are spent (`rounds` counts across the turn's attempts). Each
/// round's calls run concurrently (bounded by `max_concurrent_tools`, results in call order);
/// each result goes back in the provider's wire format (a `Tool` message per call) and to the
/// coordinator as a [`TurnEvent::ToolCalled`] (journal, displays) with a `ToolCall` and a
/// `ToolResult` chunk (live feed). A workflow call made in the same reply as tool calls is
/// answered "decide after reading the results": a decision must see what the tools said.
///
/// `injections` (coordination turns only): after a round's results, newer answers waiting
/// there are appended to the round's last tool result and become the turn's answers (`spec`
/// and the offered workflow tools are updated, and the coordinator told).
async fn call_with_tools(
    spec: &mut TurnSpec,
    context: &AgentContext,
    session: &SessionId,
    request: &mut ChatRequest,
    rounds: &mut u32,
    injections: Option<&Injections>,
) -> Result<TurnOutput, CallError> {
    loop {
        let output = call_with_retries(spec, context, session, request).await?;
        if !has_tool_calls(context, &output) || *rounds >= context.tools.limits().max_tool_rounds {
            if let Some(injections) = injections {
                injections.set_in_tool_loop(false);
            }
            return Ok(output);
        }
        *rounds += 1;
        if let Some(injections) = injections {
            injections.set_in_tool_loop(true);
        }
        let (tool_calls, workflow_calls): (Vec<ToolCall>, Vec<ToolCall>) = output
            .tool_calls
            .iter()
            .cloned()
            .partition(|call| !workflow::is_workflow_tool(&call.name));
        let records = context.tools.call_batch(&tool_calls, spec.mode).await;
        request.messages.push(ChatMessage::Assistant {
            content: (!output.text.is_empty()).then(|| output.text.clone()),
            tool_calls: output.tool_calls.clone(),
            reasoning: output.reasoning_blocks.clone(),
        });
        for record in &records {
            request.messages.push(record.message());
            report_tool_call(spec, context, record);
        }
        for call in &workflow_calls {
            request.messages.push(ChatMessage::tool(
                call.id.clone(),
                "not accepted: this decision was made in the same reply as tool calls; read \
                 their results, then decide",
            ));
        }
        if let Some((newer, injection)) = injections.and_then(|i| i.take(spec)) {
            show_peer_snapshots(&newer, context).await;
            inject(spec, newer, injection, context, request);
        }
    }
}

/// Hands newer answers to the model at a tool boundary: appended to the last tool result (as
/// MassGen does), the vote tool's labels and `new_answer` follow the new state, and the
/// coordinator learns that the turn now decides on the new revision.
fn inject(
    spec: &mut TurnSpec,
    newer: TurnSpec,
    injection: u32,
    context: &AgentContext,
    request: &mut ChatRequest,
) {
    let text = workflow::injection_text(spec, &newer);
    let labels = newer
        .answers
        .iter()
        .filter(|answer| !spec.answers.iter().any(|old| old.label == answer.label))
        .map(|answer| answer.label.to_string())
        .collect();
    match request
        .messages
        .iter_mut()
        .rev()
        .find_map(|message| match message {
            ChatMessage::Tool { content, .. } => Some(content),
            _ => None,
        }) {
        Some(content) => content.push_str(&text),
        None => request.messages.push(ChatMessage::User {
            content: text.trim_start().to_owned(),
        }),
    }
    let mut tools = workflow::workflow_tools(&newer);
    tools.extend(
        request
            .tools
            .drain(..)
            .filter(|tool| !workflow::is_workflow_tool(&tool.name)),
    );
    request.tools = tools;
    debug!(agent = %context.agent_id, turn = %spec.turn, from = spec.revision, to = newer.revision, "answers injected at a tool boundary");
    *spec = newer;
    context.outbox.send(AgentReport::TurnEvent {
        turn: spec.turn,
        event: TurnEvent::AnswersInjected {
            revision: spec.revision,
            injection,
            labels,
        },
    });
}

/// Tells the coordinator about one tool call: the live feed gets the call and its result as
/// chunks, the journal a [`TurnEvent::ToolCalled`].
fn report_tool_call(spec: &TurnSpec, context: &AgentContext, record: &ToolCallRecord) {
    let call = ToolCall::new(
        record.call_id.clone(),
        record.tool.clone(),
        record.arguments.clone(),
    );
    context.outbox.send(AgentReport::Chunk {
        turn: spec.turn,
        chunk: StreamChunk::ToolCall(call),
    });
    context.outbox.send(AgentReport::Chunk {
        turn: spec.turn,
        chunk: StreamChunk::ToolResult {
            id: record.call_id.clone(),
            name: record.tool.clone(),
            content: clip_bytes(&record.content, TOOL_RESULT_JOURNAL_BYTES).to_owned(),
        },
    });
    context.outbox.send(AgentReport::TurnEvent {
        turn: spec.turn,
        event: TurnEvent::ToolCalled {
            report: record.report(),
            result: clip_bytes(&record.content, TOOL_RESULT_JOURNAL_BYTES).to_owned(),
        },
    });
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn clip_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A text-protocol coordination request: no tools, the text rules.
fn text_request(spec: &TurnSpec, own_system: Option<&str>) -> ChatRequest {
    ChatRequest {
        messages: workflow::text_coordination_messages(spec, own_system),
        tools: Vec::new(),
        tool_choice: ToolChoice::None,
    }
}

/// Tells the coordinator that the model is asked again, and why.
fn corrective_retry(
    context: &AgentContext,
    spec: &TurnSpec,
    attempt: u32,
    problem: &workflow::DecisionProblem,
) {
    context.outbox.send(AgentReport::TurnEvent {
        turn: spec.turn,
        event: TurnEvent::CorrectiveRetry {
            attempt: attempt + 1,
            problem: problem.to_string(),
        },
    });
}

/// One provider call with the retry policy around it. Partial output of a failed attempt is
/// discarded; the whole call is made again.
async fn call_with_retries(
    spec: &TurnSpec,
    context: &AgentContext,
    session: &SessionId,
    request: &ChatRequest,
) -> Result<TurnOutput, CallError> {
    let policy = RetryPolicy {
        max_retries: context.backend.spec().max_retries,
    };
    // A stall is not a provider error and is never retried here (the agent restarts the
    // worker): it travels through the shared retry loop as a successful attempt's value.
    let outcome = crate::providers::retry::call_with_retries(
        &policy,
        || async move {
            match call_once(spec, context, session, request).await {
                Ok(output) => Ok(Ok(output)),
                Err(CallError::Provider(error)) => Err(error),
                Err(stalled) => Ok(Err(stalled)),
            }
        },
        |attempt, wait, error| {
            warn!(agent = %context.agent_id, turn = %spec.turn, attempt, wait_ms = wait.as_millis() as u64, %error, "provider call failed; retrying");
            context.outbox.send(AgentReport::TurnEvent {
                turn: spec.turn,
                event: TurnEvent::ProviderRetry {
                    attempt,
                    wait_ms: wait.as_millis() as u64,
                    reason: error.to_string(),
                },
            });
        },
    )
    .await;
    match outcome {
        Ok(result) => result,
        Err(error) => Err(CallError::Provider(error)),
    }
}

/// One streaming provider call, folded into a [`TurnOutput`], forwarding display chunks.
async fn call_once(
    spec: &TurnSpec,
    context: &AgentContext,
    session: &SessionId,
    request: &ChatRequest,
) -> Result<TurnOutput, CallError> {
    let span = chat_span(context, session, request);
    let stall = context.settings.stall_timeout;
    let result = async {
        let mut stream = match tokio::time::timeout(stall, context.backend.stream(request)).await {
            Err(_) => return Err(CallError::Stalled(stall)),
            Ok(Err(error)) => return Err(CallError::Provider(error)),
            Ok(Ok(stream)) => stream,
        };
        let mut output = TurnOutput::default();
        loop {
            let next = match tokio::time::timeout(stall, stream.next()).await {
                Err(_) => return Err(CallError::Stalled(stall)),
                Ok(next) => next,
            };
            match next {
                None => break,
                Some(Err(error)) => return Err(CallError::Provider(error)),
                Some(Ok(chunk)) => {
                    output.apply(&chunk);
                    let runs_own_tools = context.backend.runs_own_tools();
                    if let StreamChunk::ToolResult { id, .. } = &chunk
                        && runs_own_tools
                        && let Some(call) = output.provider_tool_calls.last()
                        && call.id == *id
                    {
                        // The call the provider ran, shown with its result.
                        context.outbox.send(AgentReport::Chunk {
                            turn: spec.turn,
                            chunk: StreamChunk::ToolCall(call.clone()),
                        });
                    }
                    if forwarded(&chunk, runs_own_tools) {
                        context.outbox.send(AgentReport::Chunk {
                            turn: spec.turn,
                            chunk,
                        });
                    }
                }
            }
        }
        Ok(output)
    }
    .instrument(span.clone())
    .await;
    match &result {
        Ok(output) => record_response(&span, output),
        Err(CallError::Stalled(_)) => record_error(&span, TurnErrorKind::Stalled.as_str()),
        Err(CallError::Provider(error)) => record_error(&span, &provider_error_type(error)),
    }
    result
}

/// The `chat {model}` span of one provider call, with the request's GenAI attributes (and its
/// messages, when content capture is on).
fn chat_span(context: &AgentContext, session: &SessionId, request: &ChatRequest) -> Span {
    let backend = context.backend.spec();
    let span = info_span!(
        "chat",
        otel.name = %format!("chat {}", backend.model),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = %telemetry::provider_name(&backend.provider),
        gen_ai.request.model = %backend.model,
        gen_ai.conversation.id = %session,
        gen_ai.request.temperature = tracing::field::Empty,
        gen_ai.request.top_p = tracing::field::Empty,
        gen_ai.request.max_tokens = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.system_instructions = tracing::field::Empty,
        gen_ai.input.messages = tracing::field::Empty,
        gen_ai.output.messages = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(temperature) = backend.temperature {
        span.record("gen_ai.request.temperature", temperature);
    }
    if let Some(top_p) = backend.top_p {
        span.record("gen_ai.request.top_p", top_p);
    }
    if let Some(max_tokens) = backend.max_tokens {
        span.record("gen_ai.request.max_tokens", i64::from(max_tokens));
    }
    if let Ok(url) = reqwest::Url::parse(&backend.base_url) {
        if let Some(host) = url.host_str() {
            span.record("server.address", host);
        }
        if let Some(port) = url.port_or_known_default() {
            span.record("server.port", i64::from(port));
        }
    }
    if telemetry::is_active() && telemetry::capture_content() {
        let (system, messages) = content::input_messages(&request.messages);
        if let Some(system) = system {
            span.record("gen_ai.system_instructions", system.as_str());
        }
        span.record("gen_ai.input.messages", messages.as_str());
    }
    span
}

/// Records what the provider answered on the call's `chat` span. (Integers go in as `i64`:
/// the OpenTelemetry layer records other integer types as strings.)
fn record_response(span: &Span, output: &TurnOutput) {
    if span.is_disabled() {
        return;
    }
    if let Some(usage) = output.usage {
        span.record("gen_ai.usage.input_tokens", usage.input_tokens as i64);
        span.record("gen_ai.usage.output_tokens", usage.output_tokens as i64);
    }
    if let Some(reason) = &output.finish_reason {
        // A string array per the conventions, which `tracing` fields cannot express.
        span.set_attribute(
            "gen_ai.response.finish_reasons",
            Value::Array(Array::String(vec![StringValue::from(reason.clone())])),
        );
    }
    if telemetry::is_active() && telemetry::capture_content() {
        span.record(
            "gen_ai.output.messages",
            content::output_messages(output).as_str(),
        );
    }
}

/// A low-cardinality `error.type` for a failed provider call: the HTTP status, or the kind of
/// failure.
fn provider_error_type(error: &ProviderError) -> String {
    match error {
        ProviderError::MissingApiKey { .. } => "missing_api_key".into(),
        ProviderError::Config(_) => "config".into(),
        ProviderError::Http { status, .. } => status.to_string(),
        ProviderError::Connect(_) => "connect".into(),
        ProviderError::InStream { kind, .. } => kind.clone(),
        ProviderError::Malformed(_) => "malformed".into(),
        ProviderError::Truncated => "truncated".into(),
    }
}

/// Records a valid workflow call as an `execute_tool {tool}` span under the turn's span: the
/// decision is the tool's effect (the coordinator applies it). Tool arguments are content.
fn record_tool_call(output: &TurnOutput, decision: &Decision) {
    let tool = decision.kind();
    let span = info_span!(
        "execute_tool",
        otel.name = %format!("execute_tool {tool}"),
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        gen_ai.tool.type = "function",
        gen_ai.tool.call.id = tracing::field::Empty,
        gen_ai.tool.call.arguments = tracing::field::Empty,
        conclave.vote.label = tracing::field::Empty,
    );
    if span.is_disabled() {
        return;
    }
    let call = output.tool_calls.iter().find(|call| call.name == tool);
    if let Some(call) = call {
        span.record("gen_ai.tool.call.id", call.id.as_str());
        if telemetry::is_active() && telemetry::capture_content() {
            span.record("gen_ai.tool.call.arguments", call.arguments.as_str());
        }
    }
    if let Decision::Vote { label, .. } = decision {
        span.record("conclave.vote.label", tracing::field::display(label));
    }
}

/// The opt-in message content attributes, in the JSON shapes of the GenAI conventions
/// (`gen_ai.input.messages`, `gen_ai.output.messages`, `gen_ai.system_instructions`).
mod content {
    use serde_json::{Value, json};

    use crate::accumulate::TurnOutput;
    use crate::llm::ChatMessage;

    fn text(content: &str) -> Value {
        json!({ "type": "text", "content": content })
    }

    fn tool_call(id: &str, name: &str, arguments: &str) -> Value {
        let arguments = serde_json::from_str::<Value>(arguments)
            .unwrap_or_else(|_| Value::String(arguments.to_owned()));
        json!({ "type": "tool_call", "id": id, "name": name, "arguments": arguments })
    }

    /// (system instructions, the other messages) as JSON text.
    pub(super) fn input_messages(messages: &[ChatMessage]) -> (Option<String>, String) {
        let mut system = Vec::new();
        let mut rest = Vec::new();
        for message in messages {
            match message {
                ChatMessage::System { content } => system.push(text(content)),
                ChatMessage::User { content } => {
                    rest.push(json!({ "role": "user", "parts": [text(content)] }))
                }
                ChatMessage::Assistant {
                    content,
                    tool_calls,
                    ..
                } => {
                    let mut parts: Vec<Value> = content.iter().map(|c| text(c)).collect();
                    parts.extend(
                        tool_calls
                            .iter()
                            .map(|c| tool_call(&c.id, &c.name, &c.arguments)),
                    );
                    rest.push(json!({ "role": "assistant", "parts": parts }));
                }
                ChatMessage::Tool {
                    call_id, content, ..
                } => rest.push(json!({
                    "role": "tool",
                    "parts": [{ "type": "tool_call_response", "id": call_id, "response": content }],
                })),
            }
        }
        let system = (!system.is_empty()).then(|| Value::Array(system).to_string());
        (system, Value::Array(rest).to_string())
    }

    /// The model's answer as one assistant output message.
    pub(super) fn output_messages(output: &TurnOutput) -> String {
        let mut parts = Vec::new();
        if let Some(reasoning) = &output.reasoning {
            parts.push(json!({ "type": "reasoning", "content": reasoning }));
        }
        if !output.text.is_empty() {
            parts.push(text(&output.text));
        }
        if let Some(refusal) = &output.refusal {
            parts.push(text(refusal));
        }
        parts.extend(
            output
                .tool_calls
                .iter()
                .map(|c| tool_call(&c.id, &c.name, &c.arguments)),
        );
        json!([{
            "role": "assistant",
            "parts": parts,
            "finish_reason": output.finish_reason.as_deref().unwrap_or(""),
        }])
        .to_string()
    }
}

/// Chunks the coordinator wants: what the display shows and what accounting counts. Complete
/// tool calls travel inside the decision; in-stream errors become retries. The results of
/// tools a provider ran itself (`runs_own_tools`: Claude Code's CLI) are shown too, each after
/// its call (sent by the caller); conclave's own tool loop reports its calls separately.
fn forwarded(chunk: &StreamChunk, runs_own_tools: bool) -> bool {
    match chunk {
        StreamChunk::Content { .. }
        | StreamChunk::Reasoning { .. }
        | StreamChunk::Refusal { .. }
        | StreamChunk::ToolCallDelta { .. }
        | StreamChunk::Usage(_) => true,
        StreamChunk::ToolResult { .. } => runs_own_tools,
        _ => false,
    }
}
