//! MassGen's provider-option keys of a `backend:` mapping → [`BackendOptions`].
//!
//! The key names are MassGen's, which are mostly the providers' own request fields (MassGen
//! forwards backend keys it does not consume to the provider SDK):
//!
//! | YAML key (MassGen) | option | where MassGen uses it |
//! |---|---|---|
//! | `reasoning: {effort, summary}` | `reasoning_effort`, `reasoning_summary` | OpenAI Responses (`configs/BACKEND_CONFIGURATION.md`, most GPT-5 example configs) |
//! | `reasoning_effort` | `reasoning_effort` | Chat Completions name of the same thing |
//! | `text: {verbosity}` | `verbosity` | OpenAI Responses (GPT-5 example configs) |
//! | `verbosity` | `verbosity` | Chat Completions name of the same thing |
//! | `thinking: {type: enabled, budget_tokens}` | `thinking_budget` | Anthropic Messages field, forwarded by MassGen's Claude backend (its computer-use example configs) |
//! | `max_thinking_tokens` | `thinking_budget` | Claude Code (`ClaudeAgentOptions`, `BACKEND_CONFIGURATION.md`) |
//! | `thinking_config: {thinking_budget, thinking_level}` | `thinking_budget`, `reasoning_effort` | google-genai `GenerateContentConfig`, forwarded by MassGen's Gemini backend |
//! | `thinking_budget` | `thinking_budget` | conclave's own short form |
//! | `enable_web_search` | `web_search` | OpenAI (Responses), Claude, Gemini, Grok backends |
//! | `enable_code_interpreter` / `enable_code_execution` | `code_execution` | OpenAI (Responses) and Azure / Claude and Gemini |
//! | `api_version` | `api_version` | Azure OpenAI (`AzureOpenAI(api_version=...)`) |
//!
//! Choices, and why:
//! - Values are checked here, with the key path and the allowed values in the error, rather
//!   than turned into an HTTP 400 on the first call. Names are matched ignoring ASCII case
//!   and stored lowercase (Gemini writes `thinking_level: HIGH`).
//! - Options are stored whatever the wire format: each backend translates the ones its API
//!   has and logs the ones it cannot honour. `type: openai` speaks the Responses API, which
//!   has them all (`reasoning: {effort, summary}`, `text: {verbosity}`, the built-in
//!   `web_search` and `code_interpreter` tools); Chat Completions backends (`openai_chat`,
//!   `azure_openai`, the OpenAI-compatible hosts) send `reasoning_effort` and `verbosity` and
//!   log that summaries and built-in tools are ignored. Only the thinking budget's range
//!   depends on the wire format (Anthropic's minimum of 1024 tokens, Gemini's `-1` for dynamic thinking).
//!   A budget not below `max_tokens` is not an error: the Anthropic backend then adds
//!   `max_tokens` on top of the budget.
//! - Two keys meaning the same option (`reasoning.effort` and `reasoning_effort`, the three
//!   budget spellings, `enable_code_execution` and `enable_code_interpreter`) may both be
//!   written only with the same value; otherwise the error names both keys.
//! - A value a provider accepts but the list here does not (a host-specific effort such as
//!   `none`) can still be sent raw through `extra_body`.
//! - Azure's `api_version` falls back to the `AZURE_OPENAI_API_VERSION` variable, as in
//!   MassGen; without either the backend sends its default version.

use std::fmt::Display;

use conclave_protocol::config::{BackendOptions, WireFormat};

use super::error::ConfigError;
use super::tree::{Ctx, Field, Fields, KnownKey, optional};

/// Reasoning efforts accepted (`reasoning.effort`, `reasoning_effort`,
/// `thinking_config.thinking_level`).
pub const REASONING_EFFORTS: &[&str] = &["minimal", "low", "medium", "high"];
/// Reasoning summary modes accepted (`reasoning.summary`).
pub const REASONING_SUMMARIES: &[&str] = &["auto", "concise", "detailed"];
/// Verbosities accepted (`text.verbosity`, `verbosity`).
pub const VERBOSITIES: &[&str] = &["low", "medium", "high"];
/// Anthropic's smallest extended-thinking budget (`thinking.budget_tokens`).
pub const MIN_CLAUDE_THINKING_BUDGET: u32 = 1024;
/// The largest Gemini thinking budget (Gemini 2.5 Pro's; Flash stops at 24576).
pub const MAX_GEMINI_THINKING_BUDGET: u32 = 32768;
/// The variable MassGen reads Azure's API version from when `api_version` is not set.
pub const AZURE_API_VERSION_VAR: &str = "AZURE_OPENAI_API_VERSION";

const RAW_HINT: &str = " (a value only your provider knows can be sent raw under `extra_body`)";

/// An option's value with the key path it came from, so a second key that disagrees can name
/// the first.
struct Sourced<T> {
    value: T,
    path: String,
}

/// Records `value` from `path`, or fails when another key already set a different value.
fn settle<T: PartialEq>(
    slot: &mut Option<Sourced<T>>,
    value: T,
    path: &str,
    what: &str,
    show: impl Fn(&T) -> String,
    ctx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    match slot {
        Some(first) if first.value != value => Err(ctx.invalid(
            path,
            format!(
                "sets {what} to {}, but `{}` sets it to {}; keep one of them",
                show(&value),
                first.path,
                show(&first.value)
            ),
        )),
        Some(_) => Ok(()),
        None => {
            *slot = Some(Sourced {
                value,
                path: path.to_owned(),
            });
            Ok(())
        }
    }
}

fn quoted<T: Display>(value: &T) -> String {
    format!("`{value}`")
}

fn show_budget(budget: &Option<u32>) -> String {
    match budget {
        Some(tokens) => format!("`{tokens}`"),
        None => "the provider's default".to_owned(),
    }
}

/// One of `allowed`, matched ignoring ASCII case, returned lowercase.
fn choice(
    field: Field<'_, '_>,
    allowed: &[&str],
    hint: &str,
    ctx: &Ctx<'_>,
) -> Result<String, ConfigError> {
    let text = field.string(ctx)?;
    let wanted = text.trim().to_ascii_lowercase();
    match allowed.iter().find(|name| **name == wanted) {
        Some(name) => Ok((*name).to_owned()),
        None => Err(ctx.invalid_value(field.path, text, format!("{}{hint}", allowed.join(", ")))),
    }
}

/// Reads `key` of `fields` with [`choice`]; returns the value and its path.
fn choice_at(
    fields: &mut Fields<'_>,
    key: &str,
    allowed: &[&str],
    hint: &str,
    ctx: &Ctx<'_>,
) -> Result<Option<(String, String)>, ConfigError> {
    let path = fields.child_path(key);
    Ok(optional(fields, key, |f| choice(f, allowed, hint, ctx))?.map(|value| (value, path)))
}

/// What a thinking budget may be on `wire`, for errors.
fn budget_allowed(wire: WireFormat) -> String {
    match wire {
        WireFormat::Anthropic => format!(
            "a whole number of tokens of at least {MIN_CLAUDE_THINKING_BUDGET} (Anthropic's \
             minimum)"
        ),
        WireFormat::ClaudeCode => format!(
            "0 (no thinking) or a whole number of tokens of at least \
             {MIN_CLAUDE_THINKING_BUDGET}"
        ),
        WireFormat::Gemini => format!(
            "-1 (dynamic thinking), 0 (no thinking) or a whole number of tokens up to \
             {MAX_GEMINI_THINKING_BUDGET}"
        ),
        WireFormat::OpenAiChat | WireFormat::OpenAiResponses | WireFormat::AzureOpenAi => {
            format!("a whole number of tokens from 0 to {}", u32::MAX)
        }
    }
}

/// A thinking budget for `wire`: `None` means the provider's default (Gemini's `-1`).
fn budget_tokens(
    field: Field<'_, '_>,
    wire: WireFormat,
    ctx: &Ctx<'_>,
) -> Result<Option<u32>, ConfigError> {
    let allowed = budget_allowed(wire);
    let value = field.integer(ctx, &allowed)?;
    let min_claude = i128::from(MIN_CLAUDE_THINKING_BUDGET);
    let fits = match wire {
        WireFormat::Anthropic => value >= min_claude,
        WireFormat::ClaudeCode => value == 0 || value >= min_claude,
        WireFormat::Gemini => {
            if value == -1 {
                return Ok(None);
            }
            (0..=i128::from(MAX_GEMINI_THINKING_BUDGET)).contains(&value)
        }
        WireFormat::OpenAiChat | WireFormat::OpenAiResponses | WireFormat::AzureOpenAi => {
            value >= 0
        }
    };
    match u32::try_from(value) {
        Ok(tokens) if fits => Ok(Some(tokens)),
        _ => Err(ctx.out_of_range(field.path, value, allowed)),
    }
}

/// The budget that means "no thinking" on `wire`: an explicit 0 where thinking may be on by
/// default (Gemini 2.5, Claude Code), the default (off) elsewhere.
fn budget_off(wire: WireFormat) -> Option<u32> {
    match wire {
        WireFormat::Gemini | WireFormat::ClaudeCode => Some(0),
        _ => None,
    }
}

/// Checks an API version: it ends up in a URL query or a header, so only letters, digits,
/// `-`, `.` and `_` are allowed. `origin` tells where the value came from, for the error.
fn check_api_version(
    version: String,
    path: &str,
    origin: &str,
    ctx: &Ctx<'_>,
) -> Result<String, ConfigError> {
    if version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        Ok(version)
    } else {
        let allowed = "an API version such as `2024-10-21`, `2025-04-01-preview` or `v1` \
                       (letters, digits, `-`, `.` and `_`)";
        Err(if origin.is_empty() {
            ctx.invalid_value(path, version, allowed)
        } else {
            ctx.invalid(
                path,
                format!("`{version}`{origin} is not valid; allowed: {allowed}"),
            )
        })
    }
}

/// Reads every option key of a `backend:` mapping for a backend on `wire`.
pub(crate) fn resolve(
    fields: &mut Fields<'_>,
    wire: WireFormat,
    ctx: &mut Ctx<'_>,
) -> Result<BackendOptions, ConfigError> {
    let mut effort: Option<Sourced<String>> = None;
    let mut summary = None;
    let mut verbosity: Option<Sourced<String>> = None;
    let mut budget: Option<Sourced<Option<u32>>> = None;
    let effort_what = "the reasoning effort";
    let verbosity_what = "the verbosity";
    let budget_what = "the thinking budget";

    // reasoning: {effort, summary}
    let reasoning_path = fields.child_path("reasoning");
    if let Some(node) = fields.take("reasoning") {
        let mut reasoning = Fields::new(
            node,
            &reasoning_path,
            "a mapping like `{effort: low, summary: auto}`",
            ctx,
        )?;
        if let Some((value, path)) =
            choice_at(&mut reasoning, "effort", REASONING_EFFORTS, RAW_HINT, ctx)?
        {
            settle(&mut effort, value, &path, effort_what, quoted, ctx)?;
        }
        summary = choice_at(&mut reasoning, "summary", REASONING_SUMMARIES, "", ctx)?
            .map(|(value, _)| value);
        reasoning.finish(&[], ctx);
    }
    if let Some((value, path)) =
        choice_at(fields, "reasoning_effort", REASONING_EFFORTS, RAW_HINT, ctx)?
    {
        settle(&mut effort, value, &path, effort_what, quoted, ctx)?;
    }

    // text: {verbosity}
    let text_path = fields.child_path("text");
    if let Some(node) = fields.take("text") {
        let mut text = Fields::new(node, &text_path, "a mapping like `{verbosity: low}`", ctx)?;
        if let Some((value, path)) = choice_at(&mut text, "verbosity", VERBOSITIES, RAW_HINT, ctx)?
        {
            settle(&mut verbosity, value, &path, verbosity_what, quoted, ctx)?;
        }
        text.finish(&[], ctx);
    }
    if let Some((value, path)) = choice_at(fields, "verbosity", VERBOSITIES, RAW_HINT, ctx)? {
        settle(&mut verbosity, value, &path, verbosity_what, quoted, ctx)?;
    }

    // thinking: {type: enabled|disabled, budget_tokens} (Anthropic's request field)
    let thinking_path = fields.child_path("thinking");
    if let Some(node) = fields.take("thinking") {
        let mut thinking = Fields::new(
            node,
            &thinking_path,
            "a mapping like `{type: enabled, budget_tokens: 2048}`",
            ctx,
        )?;
        let kind_path = thinking.child_path("type");
        let kind = optional(&mut thinking, "type", |f| {
            choice(f, &["enabled", "disabled"], "", ctx)
        })?;
        if kind.as_deref() == Some("disabled") {
            settle(
                &mut budget,
                budget_off(wire),
                &kind_path,
                budget_what,
                show_budget,
                ctx,
            )?;
            thinking.finish(
                &[KnownKey {
                    name: "budget_tokens",
                    note: "ignored because `type` is `disabled`",
                }],
                ctx,
            );
        } else {
            let budget_path = thinking.child_path("budget_tokens");
            let value = optional(&mut thinking, "budget_tokens", |f| {
                budget_tokens(f, wire, ctx)
            })?
            .ok_or_else(|| {
                ctx.missing(
                    &budget_path,
                    "extended thinking needs a token budget, e.g. `thinking: {type: enabled, \
                     budget_tokens: 2048}`; or write `type: disabled`",
                )
            })?;
            settle(
                &mut budget,
                value,
                &budget_path,
                budget_what,
                show_budget,
                ctx,
            )?;
            thinking.finish(&[], ctx);
        }
    }

    // max_thinking_tokens (Claude Code), thinking_budget (conclave's short form)
    for key in ["max_thinking_tokens", "thinking_budget"] {
        let path = fields.child_path(key);
        if let Some(value) = optional(fields, key, |f| budget_tokens(f, wire, ctx))? {
            settle(&mut budget, value, &path, budget_what, show_budget, ctx)?;
        }
    }

    // thinking_config: {thinking_budget, thinking_level, include_thoughts} (google-genai)
    let config_path = fields.child_path("thinking_config");
    if let Some(node) = fields.take("thinking_config") {
        let mut config = Fields::new(
            node,
            &config_path,
            "a mapping like `{thinking_budget: 2048}`",
            ctx,
        )?;
        let path = config.child_path("thinking_budget");
        if let Some(value) = optional(&mut config, "thinking_budget", |f| {
            budget_tokens(f, wire, ctx)
        })? {
            settle(&mut budget, value, &path, budget_what, show_budget, ctx)?;
        }
        if let Some((value, path)) = choice_at(
            &mut config,
            "thinking_level",
            REASONING_EFFORTS,
            RAW_HINT,
            ctx,
        )? {
            settle(&mut effort, value, &path, effort_what, quoted, ctx)?;
        }
        config.finish(
            &[KnownKey {
                name: "include_thoughts",
                note: "not supported yet: conclave's Gemini backend always asks for thought \
                       summaries; ignored",
            }],
            ctx,
        );
    }

    // Built-in tools.
    let web_search = optional(fields, "enable_web_search", |f| f.bool(ctx))?.unwrap_or(false);
    let mut code_execution: Option<Sourced<bool>> = None;
    for key in ["enable_code_execution", "enable_code_interpreter"] {
        let path = fields.child_path(key);
        if let Some(value) = optional(fields, key, |f| f.bool(ctx))? {
            settle(
                &mut code_execution,
                value,
                &path,
                "code execution",
                quoted,
                ctx,
            )?;
        }
    }

    let version_path = fields.child_path("api_version");
    let mut api_version = optional(fields, "api_version", |f| {
        let version = f.non_empty_string(ctx, "`api_version`")?;
        check_api_version(version, f.path, "", ctx)
    })?;
    if api_version.is_none() && wire == WireFormat::AzureOpenAi {
        api_version = match ctx.lookup(AZURE_API_VERSION_VAR, &version_path) {
            Some(version) if !version.trim().is_empty() => Some(check_api_version(
                version.trim().to_owned(),
                &version_path,
                &format!(" (from {AZURE_API_VERSION_VAR}, used because `api_version` is not set)"),
                ctx,
            )?),
            _ => None,
        };
    }

    Ok(BackendOptions {
        reasoning_effort: effort.map(|e| e.value),
        reasoning_summary: summary,
        verbosity: verbosity.map(|v| v.value),
        thinking_budget: budget.and_then(|b| b.value),
        web_search,
        code_execution: code_execution.is_some_and(|c| c.value),
        api_version,
    })
}
