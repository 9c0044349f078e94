//! The whole document → [`SessionConfig`]: agents, `orchestrator:`, `timeout_settings:`,
//! `ui:`.
//!
//! Choices, and why:
//! - `agents:` (a list) and `agent:` (one mapping) are both MassGen forms; giving both is an
//!   error, as in MassGen. An agent without `id` is called `agent{n}` (1-based), as MassGen
//!   does; ids must be unique because votes and the final report name them.
//! - MassGen v1 keys (`models`, `num_agents`, ...) are refused, as MassGen refuses them.
//! - `max_new_answers_per_agent: null` means unlimited (MassGen's default); `0` is an error
//!   because an agent that may never answer only makes sense as "vote only", which would
//!   leave a session without answers.
//! - Timeouts are whole seconds from 1 to 30 days. The upper bound keeps deadline arithmetic
//!   (`Instant + Duration`) far from overflow. MassGen's validator also documents
//!   `orchestrator.timeout.orchestrator_timeout_seconds`; it is read when
//!   `timeout_settings` does not set the value.
//! - `timeout_settings.node_join_timeout_seconds` (conclave's own key, default 30): how long a
//!   session waits for the agent nodes named by `node:`; it lands in
//!   `OrchestratorSettings::node_join_timeout_seconds`.
//! - `orchestrator.max_turn_restarts` (default 3, 0 to 100) and
//!   `orchestrator.restart_window_seconds` (default 60, 1 s to 30 days), conclave's own keys:
//!   the restart intensity of every agent's turn worker. A worker that crashes (a panic, or a
//!   provider stalled past `stall_timeout_seconds`) is restarted with backoff at most
//!   `max_turn_restarts` times within `restart_window_seconds`; past the limit the agent is
//!   reported failed and the session goes on without it. They sit under `orchestrator:`
//!   beside the other limits (a restart count is not a timeout) and reach agent nodes in each
//!   agent's `TurnLimits`. `0` restarts is allowed (the first crash fails the turn); a zero
//!   window is not, since no crash could then ever count.
//! - `ui.display_type`: MassGen's full-screen displays (`rich_terminal`, `textual_terminal`,
//!   and `tui`) map to the terminal UI (which falls back to plain lines when stdout is not a
//!   terminal); `terminal`, `simple` and `plain` to the plain live display; `silent`, `quiet` and `none`
//!   to quiet; `json` to one JSON event per line. `ui.type`, used by some MassGen example
//!   configs, is read when `display_type` is absent. `logging_enabled: false` has no effect:
//!   the session journal is always written (resume depends on it), so it gets a warning.
//! - `ui.use_orchestrator_for_single_agent` (MassGen's, default true): `false` lets a config
//!   with exactly one agent answer in one streamed call instead of answer, self-vote and
//!   presentation (three calls); read into `orchestrator.single_call`.
//! - `workflow: tools | text | auto` (conclave's own key, per agent or under its `backend:`;
//!   the agent's wins): how the agent states its decision. `auto` (default) starts with the
//!   workflow tools and switches the agent to the text protocol after the first turn in which
//!   the model ignores them; `text` is for models known not to call tools (many small local
//!   models); `tools` never falls back.

use std::collections::HashMap;

use conclave_protocol::config::{
    AgentSpec, DisplayKind, ModelPrice, OrchestratorSettings, RestartPolicy, SessionConfig,
    TimeoutSettings, WorkflowMode,
};

use super::backend;
use super::error::ConfigError;
use super::massgen;
use super::tree::{Ctx, Field, Fields, KnownKey, Node, optional};
use super::workspace;

/// The longest timeout accepted, in seconds (30 days).
pub const MAX_TIMEOUT_SECONDS: u64 = 30 * 24 * 3600;

/// The most retries of a turn without a valid workflow call.
const MAX_WORKFLOW_RETRIES: u64 = 100;

/// The most restarts of a crashed turn worker within the restart window.
const MAX_TURN_RESTARTS: u64 = 100;
const TURN_RESTARTS_ALLOWED: &str =
    "a whole number from 0 to 100 (0: a crashed turn worker is not restarted)";

const TIMEOUT_ALLOWED: &str = "a whole number of seconds from 1 to 2592000 (30 days)";
const ANSWER_LIMIT_ALLOWED: &str =
    "a whole number of at least 1, or null (or leave the key out) for no limit";

/// Resolves a parsed document.
pub(crate) fn resolve(root: &Node, ctx: &mut Ctx<'_>) -> Result<SessionConfig, ConfigError> {
    let mut top = Fields::new(root, "", "a mapping with `agents:` or `agent:`", ctx)?;

    if let Some(key) = massgen::V1_KEYS.iter().find(|key| top.has(key)) {
        return Err(ctx.invalid(
            key,
            "this is the MassGen v1 config format, which is not supported; use `agents:` \
             with an `id` and a `backend: {type, model}` per agent",
        ));
    }

    let mut agents = agents(&mut top, ctx)?;

    let mut timeouts = TimeoutSettings::default();
    let mut orchestrator = OrchestratorSettings::default();
    let mut legacy_timeout = None;
    let mut shared = workspace::SharedWorkspace::default();
    if let Some(node) = top.take("orchestrator") {
        (orchestrator, legacy_timeout, shared) = orchestrator_settings(node, ctx)?;
    }
    let base = base_dir(ctx)?;
    workspace::finish(&mut agents, &shared, &base, ctx)?;
    orchestrator.snapshot_storage = workspace::storage_dir(orchestrator.snapshot_storage, &base);
    let explicit_timeout = match top.take("timeout_settings") {
        Some(node) => timeout_settings(node, &mut timeouts, &mut orchestrator, ctx)?,
        None => false,
    };
    if let Some(seconds) = legacy_timeout {
        if explicit_timeout {
            ctx.warn(
                "orchestrator.timeout.orchestrator_timeout_seconds",
                "overridden by timeout_settings.orchestrator_timeout_seconds, ignored",
            );
        } else {
            timeouts.orchestrator_timeout_seconds = seconds;
        }
    }

    let (display, use_orchestrator) = match top.take("ui") {
        Some(node) => ui(node, ctx)?,
        None => (DisplayKind::default(), None),
    };
    // MassGen's default is true: a lone agent still answers, votes and presents.
    orchestrator.single_call = use_orchestrator == Some(false);

    top.finish(massgen::TOP, ctx);

    Ok(SessionConfig {
        agents,
        orchestrator,
        timeouts,
        display,
    })
}

/// `agents:` or `agent:`, with ids made unique-checked.
fn agents(top: &mut Fields<'_>, ctx: &mut Ctx<'_>) -> Result<Vec<AgentSpec>, ConfigError> {
    let list = top.take("agents");
    let single = top.take("agent");
    let agents = match (list, single) {
        (Some(_), Some(_)) => {
            return Err(ctx.invalid(
                "agent",
                "give either `agents:` (a list) or `agent:` (a single agent), not both",
            ));
        }
        (Some(Node::List(items)), None) => {
            if items.is_empty() {
                return Err(ConfigError::NoAgents {
                    origin: ctx.origin.clone(),
                    path: "agents".to_owned(),
                });
            }
            let mut agents = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let path = format!("agents[{index}]");
                agents.push((agent(item, &path, index, ctx)?, path));
            }
            agents
        }
        (Some(other), None) => {
            return Err(ctx.wrong_type(
                "agents",
                "a list of agents (`- id: ...`); for a single agent write `agent:`",
                other,
            ));
        }
        (None, Some(node)) => vec![(agent(node, "agent", 0, ctx)?, "agent".to_owned())],
        (None, None) => {
            return Err(ctx.missing(
                "agents",
                "add `agents:` with at least one agent (`- id: a1` and `backend: {type: openai, \
                 model: gpt-4o-mini}`), or `agent:` for a single one",
            ));
        }
    };

    let mut first_use: HashMap<&str, &str> = HashMap::new();
    for (spec, path) in &agents {
        if let Some(first_path) = first_use.insert(&spec.id, path) {
            return Err(ConfigError::DuplicateAgentId {
                origin: ctx.origin.clone(),
                path: format!("{path}.id"),
                id: spec.id.clone(),
                first_path: format!("{first_path}.id"),
            });
        }
    }
    Ok(agents.into_iter().map(|(spec, _)| spec).collect())
}

/// One agent mapping.
fn agent(
    node: &Node,
    path: &str,
    index: usize,
    ctx: &mut Ctx<'_>,
) -> Result<AgentSpec, ConfigError> {
    let mut fields = Fields::new(node, path, "a mapping with `id` and `backend`", ctx)?;

    let id = optional(&mut fields, "id", |f| {
        if !matches!(f.node, Node::Str(_)) {
            return Err(ctx.wrong_type(f.path, "a string such as `researcher`", f.node));
        }
        let id = f.non_empty_string(ctx, "an agent id")?;
        if id.chars().any(char::is_control) {
            return Err(ctx.invalid(f.path, "an agent id must not contain control characters"));
        }
        Ok(id)
    })?
    .unwrap_or_else(|| format!("agent{}", index + 1));

    let backend_path = fields.child_path("backend");
    let mut backend_workflow = None;
    let (backend, tools) = match fields.take("backend") {
        Some(node) => {
            // `workflow` may sit under `backend:` too (backend.rs marks it read).
            if let Node::Map(entries) = node
                && let Some((_, value)) = entries
                    .iter()
                    .find(|(k, v)| k == "workflow" && *v != Node::Null)
            {
                let path = format!("{backend_path}.workflow");
                backend_workflow = Some(workflow_mode(
                    Field {
                        node: value,
                        path: &path,
                    },
                    ctx,
                )?);
            }
            backend::resolve(node, &backend_path, ctx)?
        }
        None => {
            return Err(ctx.missing(
                &backend_path,
                "every agent needs `backend: {type: ..., model: ...}`",
            ));
        }
    };

    let system_message = optional(&mut fields, "system_message", |f| f.string(ctx))?
        .filter(|message| !message.trim().is_empty());
    let node_name = optional(&mut fields, "node", |f| {
        f.non_empty_string(ctx, "`node` (the agent node's name)")
    })?;

    let workflow = optional(&mut fields, "workflow", |f| workflow_mode(f, ctx))?
        .or(backend_workflow)
        .unwrap_or_default();

    super::tools::refuse_keys(&mut fields, massgen::AGENT_REFUSED, ctx)?;
    fields.finish(massgen::AGENT, ctx);
    Ok(AgentSpec {
        id,
        backend,
        system_message,
        node: node_name,
        workflow,
        tools,
    })
}

/// `workflow: tools | text | auto`.
fn workflow_mode(f: Field<'_, '_>, ctx: &Ctx<'_>) -> Result<WorkflowMode, ConfigError> {
    let value = f.non_empty_string(ctx, "`workflow`")?;
    WorkflowMode::parse(&value)
        .ok_or_else(|| ctx.invalid_value(f.path, value, "one of tools, text, auto"))
}

/// The largest `max_cost_usd` accepted: a guard against typos (a missing decimal point).
const MAX_COST_USD: f64 = 1_000_000.0;

/// A pricing table: a mapping of model-name prefix to
/// `{input_per_million, output_per_million}` in US dollars, as written under
/// `orchestrator.pricing` or in a `--pricing` file.
pub(crate) fn pricing_table(
    node: &Node,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Vec<ModelPrice>, ConfigError> {
    const EXPECTED: &str = "a mapping of model name to {input_per_million, output_per_million}";
    let Node::Map(entries) = node else {
        return Err(ctx.wrong_type(path, EXPECTED, node));
    };
    let mut prices = Vec::with_capacity(entries.len());
    for (model, value) in entries {
        let model_path = if path.is_empty() {
            model.clone()
        } else {
            format!("{path}.{model}")
        };
        let mut fields = Fields::new(
            value,
            &model_path,
            "a mapping with input_per_million and output_per_million",
            ctx,
        )?;
        let per_million =
            |key: &str, fields: &mut Fields<'_>, ctx: &mut Ctx<'_>| -> Result<f64, ConfigError> {
                let key_path = fields.child_path(key);
                optional(fields, key, |f| f.number_in(ctx, 0.0, 10_000.0))?.ok_or_else(|| {
                    ctx.missing(
                        &key_path,
                        "give the price in US dollars per million tokens, e.g. `2.5`",
                    )
                })
            };
        let input_per_million = per_million("input_per_million", &mut fields, ctx)?;
        let output_per_million = per_million("output_per_million", &mut fields, ctx)?;
        fields.finish(&[], ctx);
        prices.push(ModelPrice {
            model: model.clone(),
            input_per_million,
            output_per_million,
        });
    }
    Ok(prices)
}

/// The most injections per turn `max_midstream_injections_per_round` accepts.
const MAX_INJECTIONS: u64 = 100;

/// The restart policy from `orchestrator.restart_policy` and MassGen's midstream-injection keys:
/// - `defer_peer_updates_until_restart: true` or `max_midstream_injections_per_round: 0`
///   (MassGen: no midstream updates, the agent sees them when it restarts) is `finish`;
/// - otherwise `max_midstream_injections_per_round: N` (N > 0) or
///   `defer_peer_updates_until_restart: false` is `inject`;
/// - an explicit `restart_policy` that says otherwise is a contradiction, refused;
/// - none of them: the default.
fn restart_policy(
    policy: Option<RestartPolicy>,
    injections: Option<u32>,
    defer: Option<bool>,
    ctx: &Ctx<'_>,
) -> Result<RestartPolicy, ConfigError> {
    let implied = match (defer, injections) {
        (Some(true), _) | (_, Some(0)) => Some((
            RestartPolicy::Finish,
            "defer_peer_updates_until_restart: true / max_midstream_injections_per_round: 0",
        )),
        (_, Some(_)) => Some((
            RestartPolicy::Inject,
            "max_midstream_injections_per_round above 0",
        )),
        (Some(false), None) => Some((
            RestartPolicy::Inject,
            "defer_peer_updates_until_restart: false",
        )),
        (None, None) => None,
    };
    match (policy, implied) {
        (Some(policy), Some((implied, because))) if policy != implied => Err(ctx.invalid(
            "orchestrator.restart_policy",
            format!(
                "`{}` contradicts {because}, which means `{}`; remove one of them",
                policy.as_str(),
                implied.as_str()
            ),
        )),
        (Some(policy), _) => Ok(policy),
        (None, Some((implied, _))) => Ok(implied),
        (None, None) => Ok(conclave_protocol::config::DEFAULT_RESTART_POLICY),
    }
}

/// `orchestrator:`; also returns MassGen's `orchestrator.timeout.orchestrator_timeout_seconds`.
/// What relative paths of the config are relative to (see module `workspace`), absolute.
fn base_dir(ctx: &Ctx<'_>) -> Result<std::path::PathBuf, ConfigError> {
    let current = || {
        std::env::current_dir().map_err(|error| {
            ctx.invalid(
                "",
                format!("cannot read the current directory to resolve relative paths: {error}"),
            )
        })
    };
    match &ctx.base_dir {
        Some(dir) if dir.is_absolute() => Ok(dir.clone()),
        Some(dir) => Ok(current()?.join(dir)),
        None => current(),
    }
}

/// `orchestrator:`: the settings, MassGen's legacy `timeout.orchestrator_timeout_seconds`, and
/// the workspace keys every agent shares (module `workspace`).
fn orchestrator_settings(
    node: &Node,
    ctx: &mut Ctx<'_>,
) -> Result<
    (
        OrchestratorSettings,
        Option<u64>,
        workspace::SharedWorkspace,
    ),
    ConfigError,
> {
    let mut fields = Fields::new(node, "orchestrator", "a mapping", ctx)?;
    let mut settings = OrchestratorSettings::default();
    let (shared, storage) = workspace::orchestrator_keys(&mut fields, ctx)?;
    settings.snapshot_storage = storage;

    let answer_limit = |f: Field<'_, '_>| {
        f.integer_in(ctx, 1, u64::from(u32::MAX), ANSWER_LIMIT_ALLOWED)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    settings.max_new_answers_per_agent =
        optional(&mut fields, "max_new_answers_per_agent", answer_limit)?;
    settings.max_total_answers = optional(&mut fields, "max_total_answers", answer_limit)?;

    let policy = optional(&mut fields, "restart_policy", |f| {
        let text = f.string(ctx)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "cancel" => Ok(RestartPolicy::Cancel),
            "finish" => Ok(RestartPolicy::Finish),
            "inject" => Ok(RestartPolicy::Inject),
            _ => Err(ctx.invalid_value(
                f.path,
                text,
                "`cancel` (stop stale turns at once), `finish` (let them complete) or `inject` \
                 (hand them the new answers at their next tool call)",
            )),
        }
    })?;
    // MassGen's midstream-injection keys map onto the restart policy (see `restart_policy`).
    let injections = optional(&mut fields, "max_midstream_injections_per_round", |f| {
        f.integer_in(ctx, 0, MAX_INJECTIONS, "a whole number from 0 to 100")
            .map(|n| u32::try_from(n).unwrap_or(0))
    })?;
    let defer = optional(&mut fields, "defer_peer_updates_until_restart", |f| {
        f.bool(ctx)
    })?;
    settings.restart_policy = restart_policy(policy, injections, defer, ctx)?;
    if let Some(fallback) = optional(&mut fields, "inject_fallback", |f| {
        let text = f.string(ctx)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "cancel" => Ok(RestartPolicy::Cancel),
            "finish" => Ok(RestartPolicy::Finish),
            _ => Err(ctx.invalid_value(
                f.path,
                text,
                "`cancel` (restart a turn that cannot take the answers) or `finish` (let it finish)",
            )),
        }
    })? {
        settings.inject_fallback = fallback;
    }
    // Where answers' workspace snapshots are kept (see `crate::snapshots`).
    settings.snapshot_storage = optional(&mut fields, "snapshot_storage", |f| {
        let text = f.string(ctx)?;
        if text.trim().is_empty() {
            return Err(ctx.invalid_value(f.path, text, "a directory path"));
        }
        Ok(text)
    })?;
    if let Some(injections) = injections.filter(|n| *n > 0) {
        settings.max_midstream_injections_per_round = injections;
    }

    if let Some(retries) = optional(&mut fields, "max_workflow_retries", |f| {
        f.integer_in(ctx, 0, MAX_WORKFLOW_RETRIES, "a whole number from 0 to 100")
    })? {
        settings.max_workflow_retries = u32::try_from(retries).unwrap_or(u32::MAX);
    }

    if let Some(restarts) = optional(&mut fields, "max_turn_restarts", |f| {
        f.integer_in(ctx, 0, MAX_TURN_RESTARTS, TURN_RESTARTS_ALLOWED)
    })? {
        settings.max_turn_restarts = u32::try_from(restarts).unwrap_or(u32::MAX);
    }
    if let Some(window) = optional(&mut fields, "restart_window_seconds", |f| {
        f.integer_in(ctx, 1, MAX_TIMEOUT_SECONDS, TIMEOUT_ALLOWED)
    })? {
        settings.restart_window_seconds = window;
    }

    if let Some(skip) = optional(&mut fields, "skip_final_presentation", |f| f.bool(ctx))? {
        settings.skip_final_presentation = skip;
    }

    settings.max_cost_usd = optional(&mut fields, "max_cost_usd", |f| {
        let usd = f.number(ctx)?;
        if usd > 0.0 && usd <= MAX_COST_USD {
            Ok(usd)
        } else {
            Err(ctx.out_of_range(
                f.path,
                usd,
                format!("a number of US dollars above 0 and at most {MAX_COST_USD}"),
            ))
        }
    })?;
    settings.max_total_tokens = optional(&mut fields, "max_total_tokens", |f| {
        f.integer_in(ctx, 1, u64::MAX / 2, "a whole number of tokens, at least 1")
    })?;
    let pricing_path = fields.child_path("pricing");
    if let Some(node) = fields.take("pricing") {
        settings.pricing = pricing_table(node, &pricing_path, ctx)?;
    }

    let mut legacy_timeout = None;
    if let Some(node) = fields.take("timeout") {
        let mut timeout = Fields::new(node, "orchestrator.timeout", "a mapping", ctx)?;
        legacy_timeout = optional(&mut timeout, "orchestrator_timeout_seconds", |f| {
            f.integer_in(ctx, 1, MAX_TIMEOUT_SECONDS, TIMEOUT_ALLOWED)
        })?;
        timeout.finish(massgen::ORCHESTRATOR_TIMEOUT, ctx);
    }

    super::tools::refuse_keys(&mut fields, massgen::ORCHESTRATOR_REFUSED, ctx)?;
    if let Some(node) = fields.take("coordination") {
        coordination(node, ctx)?;
    }

    fields.finish(massgen::ORCHESTRATOR, ctx);
    Ok((settings, legacy_timeout, shared))
}

/// MassGen's `orchestrator.coordination`: the settings that give agents abilities are refused
/// when on (naming the key and the feature), the others are ignored with a warning (see
/// module `massgen`). A sub-mapping with `enabled: false` counts as off.
fn coordination(node: &Node, ctx: &mut Ctx<'_>) -> Result<(), ConfigError> {
    let mut fields = Fields::new(node, "orchestrator.coordination", "a mapping", ctx)?;
    for (key, feature) in massgen::COORDINATION_REFUSED {
        let path = fields.child_path(key);
        let on = match fields.take(key) {
            Some(Node::Map(entries)) => match entries.iter().find(|(k, _)| k == "enabled") {
                Some((_, enabled)) => super::tools::is_on(enabled),
                None => !entries.is_empty(),
            },
            Some(other) => super::tools::is_on(other),
            None => false,
        };
        if on {
            return Err(ctx.invalid(
                &path,
                format!(
                    "MassGen's {feature} is not supported yet by conclave; remove `{key}` or \
                     set it to false"
                ),
            ));
        }
    }
    fields.finish(
        &[KnownKey {
            name: "*",
            note: massgen::COORDINATION_NOT_YET,
        }],
        ctx,
    );
    Ok(())
}

/// `timeout_settings:` into `timeouts` (and `node_join_timeout_seconds` into `orchestrator`,
/// where the resolved schema keeps it); says whether `orchestrator_timeout_seconds` was set.
fn timeout_settings(
    node: &Node,
    timeouts: &mut TimeoutSettings,
    settings: &mut OrchestratorSettings,
    ctx: &mut Ctx<'_>,
) -> Result<bool, ConfigError> {
    let mut fields = Fields::new(node, "timeout_settings", "a mapping", ctx)?;
    let seconds = |f: Field<'_, '_>| f.integer_in(ctx, 1, MAX_TIMEOUT_SECONDS, TIMEOUT_ALLOWED);
    let orchestrator = optional(&mut fields, "orchestrator_timeout_seconds", seconds)?;
    if let Some(s) = orchestrator {
        timeouts.orchestrator_timeout_seconds = s;
    }
    if let Some(s) = optional(&mut fields, "turn_timeout_seconds", seconds)? {
        timeouts.turn_timeout_seconds = s;
    }
    if let Some(s) = optional(&mut fields, "stall_timeout_seconds", seconds)? {
        timeouts.stall_timeout_seconds = s;
    }
    if let Some(s) = optional(&mut fields, "connect_timeout_seconds", seconds)? {
        timeouts.connect_timeout_seconds = s;
    }
    if let Some(s) = optional(&mut fields, "node_join_timeout_seconds", seconds)? {
        settings.node_join_timeout_seconds = s;
    }
    fields.finish(massgen::TIMEOUTS, ctx);
    Ok(orchestrator.is_some())
}

/// `ui:` → the display kind and `use_orchestrator_for_single_agent`.
fn ui(node: &Node, ctx: &mut Ctx<'_>) -> Result<(DisplayKind, Option<bool>), ConfigError> {
    let mut fields = Fields::new(node, "ui", "a mapping", ctx)?;
    let read_display = |f: Field<'_, '_>| {
        let text = f.string(ctx)?;
        display_kind(&text).ok_or_else(|| {
            ctx.invalid_value(
                f.path,
                text.clone(),
                "rich_terminal, textual_terminal, tui (terminal UI); terminal, simple, plain \
                 (live lines); \
                 json (JSON lines); silent, quiet, none (final answer only)",
            )
        })
    };
    let from_display_type = optional(&mut fields, "display_type", read_display)?;
    let had_type = fields.has("type");
    let from_type = optional(&mut fields, "type", read_display)?;
    if from_display_type.is_some() && had_type {
        ctx.warn("ui.type", "`ui.display_type` is set too and wins, ignored");
    }
    if optional(&mut fields, "logging_enabled", |f| f.bool(ctx))? == Some(false) {
        ctx.warn(
            "ui.logging_enabled",
            "the session journal is always written (resume needs it); `false` has no effect",
        );
    }
    let use_orchestrator = optional(&mut fields, "use_orchestrator_for_single_agent", |f| {
        f.bool(ctx)
    })?;
    fields.finish(massgen::UI, ctx);
    Ok((
        from_display_type.or(from_type).unwrap_or_default(),
        use_orchestrator,
    ))
}

/// MassGen and conclave display names → [`DisplayKind`].
fn display_kind(name: &str) -> Option<DisplayKind> {
    match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "rich_terminal" | "textual_terminal" | "tui" => Some(DisplayKind::Tui),
        "terminal" | "simple" | "plain" => Some(DisplayKind::Plain),
        "json" => Some(DisplayKind::Json),
        "silent" | "quiet" | "none" => Some(DisplayKind::Quiet),
        _ => None,
    }
}
