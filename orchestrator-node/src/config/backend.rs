//! One agent's `backend:` mapping → [`BackendSpec`].
//!
//! Backend `type` names are looked up in the provider preset table
//! ([`conclave_protocol::presets`]), which already holds MassGen's names (`grok`, `claude`,
//! `chatcompletion`, `lmstudio`, ...). A few more MassGen names live here: `inference` (its
//! generic vLLM/SGLang backend, which is `chatcompletion` with a `base_url`) and the ones
//! conclave cannot run.
//!
//! Choices, and why:
//! - `type: openai` is the OpenAI Responses API, as in MassGen (OpenAI's recommended API, with
//!   reasoning summaries and the built-in web search and code interpreter tools);
//!   `type: openai_chat` is OpenAI over Chat Completions.
//! - A MassGen type conclave does not run at all (`ag2`, ...) is refused at load with an error
//!   saying so and listing the types that work, instead of failing on the first call.
//! - `type` may be left out when the model name implies the provider (`gpt-4o` → openai),
//!   as MassGen does.
//! - For `chatcompletion` the provider and its key variable are guessed from `base_url`
//!   (`api.groq.com` → groq, `GROQ_API_KEY`), as MassGen's generic backend does, unless
//!   `api_key_env` names one.
//! - Secrets never enter the resolved config (it is journaled and sent to agent nodes):
//!   `api_key: ${NAME}` becomes `api_key_env: NAME`, and a literal key is an error. The key is
//!   not looked up here either: the node that calls the provider reads it.
//! - `base_url` is required where the preset has none: the generic `chatcompletion` type and
//!   `azure_openai` (the Azure resource's endpoint; as in MassGen, `azure_endpoint` is read as
//!   a synonym and the `AZURE_OPENAI_ENDPOINT` variable when neither is given). For
//!   `claude_code` it is optional and names the `claude` CLI to run, so it need not be a URL;
//!   without it the CLI is looked up on `PATH`. `claude_code` needs no `model` either
//!   (MassGen lets the CLI pick): it gets Claude Code's `default` alias.
//! - Provider options shared across wire formats (reasoning effort and summary, verbosity,
//!   thinking budget, built-in web search and code execution, API version) are read into
//!   [`BackendSpec::options`] by module `options`, under MassGen's key names.
//! - MassGen forwards backend keys it does not know to the provider as request parameters.
//!   conclave does the same for well-known request parameters of the backend's wire format
//!   (Chat Completions: `top_k`, `seed`, `stop`, `chat_template_kwargs`, ...; Responses:
//!   `parallel_tool_calls`, `truncation`, `store`, ...; Anthropic: `top_k`,
//!   `stop_sequences`, ...) by merging them into `extra_body`. Such a parameter on a wire
//!   format that does not take it, and every other unknown key, gets a warning.

use conclave_protocol::config::{BackendSpec, WireFormat};
use conclave_protocol::presets::{self, PRESETS, Preset};
use conclave_protocol::tools::AgentTools;
use serde_json::{Map as JsonMap, Value as Json};

use super::error::ConfigError;
use super::massgen;
use super::options;
use super::tools;
use super::tree::{Ctx, Field, Fields, Node, optional};

/// How many times a failed provider call is retried when the config does not say (the
/// OpenAI SDK's default, which MassGen users are used to).
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// MassGen backend type names that are another preset under a different name.
const TYPE_ALIASES: &[(&str, &str)] = &[("inference", "chatcompletion")];

/// MassGen backend types conclave does not run, with what they are. They get
/// [`ConfigError::UnsupportedBackendType`].
const UNSUPPORTED_TYPES: &[(&str, &str)] = &[
    ("ag2", "AG2 framework agents"),
    (
        "poe",
        "Poe, not in the preset table yet; use `type: chatcompletion` with \
         `base_url: https://api.poe.com/v1` and `api_key_env: POE_API_KEY`",
    ),
];

/// What `base_url` names for `claude_code` when the config does not say: the CLI on `PATH`.
pub const DEFAULT_CLAUDE_CODE_CLI: &str = "claude";

/// The model of a `claude_code` backend that names none (MassGen lets the CLI choose):
/// Claude Code's own alias for the recommended model of the account.
pub const DEFAULT_CLAUDE_CODE_MODEL: &str = "default";

/// The variable MassGen reads the Azure endpoint from when `base_url` is not set.
pub const AZURE_ENDPOINT_VAR: &str = "AZURE_OPENAI_ENDPOINT";

/// Chat Completions request parameters (OpenAI's plus the common vLLM / SGLang extensions)
/// that MassGen passes through from the backend mapping; conclave moves them into
/// `extra_body`. `reasoning_effort` and `verbosity` are options (module `options`).
const CHAT_PARAMS: &[&str] = &[
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "response_format",
    "max_completion_tokens",
    "chat_template_kwargs",
    "service_tier",
    "user",
];

/// Top-level Responses API request parameters passed through the same way (`type: openai`).
/// Reasoning (`reasoning: {effort, summary}`), verbosity and the built-in tools
/// (`enable_web_search`, `enable_code_interpreter`) are options (module `options`).
/// Parameters only Chat Completions has (`seed`, `stop`, ...) get a warning naming the wire
/// format.
const RESPONSES_PARAMS: &[&str] = &[
    "parallel_tool_calls",
    "max_tool_calls",
    "service_tier",
    "user",
    "top_logprobs",
    "metadata",
    "truncation",
    "store",
];

/// Top-level Anthropic Messages request parameters passed through the same way.
const ANTHROPIC_PARAMS: &[&str] = &["top_k", "stop_sequences", "metadata", "service_tier"];

/// The Claude Code CLI settings MassGen's `claude_code` backend takes at the top level of
/// `backend:`, passed on like `extra_body` (the provider reads them from there): the tool
/// allow and deny lists, the permission mode, the turn bound, the CLI's working directory
/// (`cwd`, the agent's workspace) and the base of its system prompt (`system_prompt`). They
/// decide what the CLI may do and is told, so they are honoured, never dropped (other
/// backends refuse `cwd` and `system_prompt`).
const CLAUDE_CODE_PARAMS: &[&str] = &[
    "allowed_tools",
    "disallowed_tools",
    "permission_mode",
    "max_turns",
    "cwd",
    "system_prompt",
];

/// The request parameters passed through for `wire`.
pub(crate) fn passthrough_params(wire: WireFormat) -> &'static [&'static str] {
    match wire {
        WireFormat::OpenAiChat | WireFormat::AzureOpenAi => CHAT_PARAMS,
        WireFormat::OpenAiResponses => RESPONSES_PARAMS,
        WireFormat::Anthropic => ANTHROPIC_PARAMS,
        // Gemini nests its parameters (`generationConfig.topK`).
        WireFormat::Gemini => &[],
        WireFormat::ClaudeCode => CLAUDE_CODE_PARAMS,
    }
}

/// The outcome of looking up a backend `type` name.
pub(crate) enum TypeLookup {
    Found(&'static Preset),
    Unsupported { what: String },
    Unknown,
}

/// Looks a backend type name up: the MassGen names conclave does not run first, then local
/// aliases, then the preset table.
pub(crate) fn lookup_type(name: &str) -> TypeLookup {
    let wanted = name.trim().to_ascii_lowercase().replace('-', "_");
    if let Some((_, what)) = UNSUPPORTED_TYPES.iter().find(|(n, _)| *n == wanted) {
        return TypeLookup::Unsupported {
            what: (*what).to_owned(),
        };
    }
    let canonical = TYPE_ALIASES
        .iter()
        .find(|(alias, _)| *alias == wanted)
        .map_or(wanted.as_str(), |(_, target)| target);
    match presets::preset(canonical) {
        Some(preset) => TypeLookup::Found(preset),
        None => TypeLookup::Unknown,
    }
}

/// The backend type names conclave runs, canonical name first with its aliases in
/// parentheses: the "what is allowed" part of backend type errors.
pub fn supported_backend_types() -> String {
    PRESETS
        .iter()
        .map(|p| {
            let mut aliases: Vec<&str> = p.aliases.to_vec();
            aliases.extend(
                TYPE_ALIASES
                    .iter()
                    .filter(|(_, target)| *target == p.name)
                    .map(|(alias, _)| *alias),
            );
            if aliases.is_empty() {
                p.name.to_owned()
            } else {
                format!("{} ({})", p.name, aliases.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn wire_description(wire: WireFormat) -> &'static str {
    match wire {
        WireFormat::OpenAiChat => "OpenAI Chat Completions",
        WireFormat::OpenAiResponses => "OpenAI Responses API",
        WireFormat::Anthropic => "Anthropic Messages",
        WireFormat::Gemini => "Google Gemini",
        WireFormat::AzureOpenAi => "Azure OpenAI",
        WireFormat::ClaudeCode => "Claude Code CLI",
    }
}

/// Where a backend's requests go and which variable holds its key.
pub(crate) struct Endpoint {
    pub provider: String,
    pub base_url: String,
    pub api_key_env: Option<String>,
}

/// Combines a preset with the user's `base_url` / `api_key_env`. `None` when neither the
/// user nor the preset gives a base URL (`claude_code` always has one: the CLI on `PATH`).
pub(crate) fn endpoint(
    preset: &'static Preset,
    base_url: Option<String>,
    explicit_key_env: Option<String>,
) -> Option<Endpoint> {
    let base_url = base_url
        .or_else(|| preset.base_url.map(str::to_owned))
        .or_else(|| {
            (preset.wire == WireFormat::ClaudeCode).then(|| DEFAULT_CLAUDE_CODE_CLI.to_owned())
        })?;
    // The generic Chat Completions preset (no URL of its own) takes its provider name and
    // key variable from a well-known host in the URL.
    let guessed = (preset.base_url.is_none() && preset.wire == WireFormat::OpenAiChat)
        .then(|| presets::preset_for_base_url(&base_url))
        .flatten();
    let named = guessed.unwrap_or(preset);
    Some(Endpoint {
        provider: named.name.to_owned(),
        api_key_env: explicit_key_env.or_else(|| named.api_key_env.map(str::to_owned)),
        base_url,
    })
}

/// Checks a base URL and drops trailing slashes (MassGen configs often write
/// `.../v4/`; requests append `/chat/completions`). Returns the problem on failure.
pub(crate) fn normalise_base_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("`{url}` is not an http(s) URL; write e.g. `http://localhost:8000/v1`")
        })?;
    if rest.is_empty() || rest.starts_with('/') || rest.chars().any(char::is_whitespace) {
        return Err(format!(
            "`{url}` has no host or contains spaces; write e.g. `https://api.example.com/v1`"
        ));
    }
    Ok(url.to_owned())
}

/// Checks a `base_url` for `wire`: an http(s) URL ([`normalise_base_url`]), except for
/// `claude_code`, where it names the CLI to run (a path or a program name).
pub(crate) fn normalise_base_url_for(wire: WireFormat, value: &str) -> Result<String, String> {
    if wire != WireFormat::ClaudeCode {
        return normalise_base_url(value);
    }
    let program = value.trim();
    if program.is_empty() {
        return Err(format!(
            "must name the `claude` CLI (a path such as `/usr/local/bin/claude`, or a program              on PATH); leave it out to run `{DEFAULT_CLAUDE_CODE_CLI}` from PATH"
        ));
    }
    Ok(program.to_owned())
}

/// How to fix a missing `base_url` for `preset`, written `type_name` by the user; `key` is
/// how the user sets the URL (`base_url:` or `--base-url`).
pub(crate) fn missing_base_url_hint(preset: &Preset, type_name: &str, key: &str) -> String {
    match preset.wire {
        WireFormat::AzureOpenAi => format!(
            "backend type `{type_name}` needs your Azure OpenAI resource's endpoint, e.g. \
             `{key} https://my-resource.openai.azure.com`, or {AZURE_ENDPOINT_VAR} set in the \
             environment or .env; `model` is the deployment name"
        ),
        _ => format!(
            "backend type `{type_name}` has no default URL; add the server's URL, e.g. \
             `{key} https://api.groq.com/openai/v1` or `{key} http://localhost:8000/v1`"
        ),
    }
}

/// Resolves the `backend:` mapping at `path`.
/// Also returns the agent's tools, which MassGen configures inside `backend:` (module
/// `tools`).
pub(crate) fn resolve(
    node: &Node,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<(BackendSpec, AgentTools), ConfigError> {
    let mut fields = Fields::new(node, path, "a mapping with `type` and `model`", ctx)?;

    let type_path = fields.child_path("type");
    let named_type = optional(&mut fields, "type", |f| f.non_empty_string(ctx, "`type`"))?;
    let named_preset = match &named_type {
        Some(name) => Some(preset_for_type(name, &type_path, ctx)?),
        None => None,
    };

    let model_path = fields.child_path("model");
    let model = optional(&mut fields, "model", |f| f.non_empty_string(ctx, "`model`"))?;
    let model = match (model, named_preset) {
        (Some(model), _) => model,
        (None, Some(preset)) if preset.wire == WireFormat::ClaudeCode => {
            DEFAULT_CLAUDE_CODE_MODEL.to_owned()
        }
        (None, _) => {
            return Err(ctx.missing(
                &model_path,
                "every backend needs a model, e.g. `model: gpt-4o-mini`",
            ));
        }
    };

    let preset = match named_preset {
        Some(preset) => preset,
        None => match presets::preset_for_model(&model) {
            // Named after the key the user wrote: the type came from the model.
            Some(preset) => preset_for_type(preset.name, &model_path, ctx)?,
            None => {
                return Err(ctx.missing(
                    &type_path,
                    format!(
                        "the provider of model `{model}` cannot be guessed; add `type:` (one \
                         of: {})",
                        supported_backend_types()
                    ),
                ));
            }
        },
    };

    let url_path = fields.child_path("base_url");
    let base_url = base_url(&mut fields, preset.wire, ctx)?;

    let explicit_key_env = api_key_env(&mut fields, ctx)?;

    let endpoint = endpoint(preset, base_url, explicit_key_env).ok_or_else(|| {
        let type_name = named_type.as_deref().unwrap_or(preset.name);
        ctx.missing(
            &url_path,
            missing_base_url_hint(preset, type_name, "base_url:"),
        )
    })?;

    let temperature = optional(&mut fields, "temperature", |f| f.number_in(ctx, 0.0, 2.0))?;
    let top_p = optional(&mut fields, "top_p", |f| f.number_in(ctx, 0.0, 1.0))?;
    let max_tokens = optional(&mut fields, "max_tokens", |f| {
        f.integer_in(
            ctx,
            1,
            u64::from(u32::MAX),
            "a whole number from 1 to 4294967295",
        )
    })?
    .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let max_retries = optional(&mut fields, "max_retries", |f| {
        f.integer_in(ctx, 0, 100, "a whole number from 0 to 100")
    })?
    .map_or(DEFAULT_MAX_RETRIES, |n| u32::try_from(n).unwrap_or(100));

    let options = options::resolve(&mut fields, preset.wire, ctx)?;
    let extra_body = extra_body(&mut fields, preset, ctx)?;

    // Read with the agent (config/session.rs), which decides between its own and this one.
    let _ = fields.take("workflow");
    let tools = tools::resolve(&mut fields, preset.wire, ctx)?;

    fields.finish(massgen::BACKEND, ctx);

    Ok((
        BackendSpec {
            wire: preset.wire,
            provider: endpoint.provider,
            model,
            base_url: endpoint.base_url,
            api_key_env: endpoint.api_key_env,
            temperature,
            top_p,
            max_tokens,
            extra_body,
            max_retries,
            options,
        },
        tools,
    ))
}

/// `base_url`; for `azure_openai` also MassGen's `azure_endpoint` (both may be given only
/// with the same value) and, when neither is, the `AZURE_OPENAI_ENDPOINT` variable, as in
/// MassGen.
fn base_url(
    fields: &mut Fields<'_>,
    wire: WireFormat,
    ctx: &Ctx<'_>,
) -> Result<Option<String>, ConfigError> {
    let read = |f: Field<'_, '_>| {
        let value = f.string(ctx)?;
        normalise_base_url_for(wire, &value).map_err(|problem| ctx.invalid(f.path, problem))
    };
    let url = optional(fields, "base_url", read)?;
    if wire != WireFormat::AzureOpenAi {
        return Ok(url);
    }
    let endpoint_path = fields.child_path("azure_endpoint");
    let azure_endpoint = optional(fields, "azure_endpoint", read)?;
    match (url, azure_endpoint) {
        (Some(a), Some(b)) if a != b => Err(ctx.invalid(
            &endpoint_path,
            format!("names `{b}` but `base_url` names `{a}`; keep one of them"),
        )),
        (None, None) => match ctx
            .lookup(AZURE_ENDPOINT_VAR, &fields.child_path("base_url"))
            .filter(|v| !v.trim().is_empty())
        {
            Some(value) => normalise_base_url(&value).map(Some).map_err(|problem| {
                ctx.invalid(
                    &fields.child_path("base_url"),
                    format!("is not set, so {AZURE_ENDPOINT_VAR} is used, but {problem}"),
                )
            }),
            None => Ok(None),
        },
        (a, b) => Ok(a.or(b)),
    }
}

/// The preset of a `type:` value, or the matching error.
pub(crate) fn preset_for_type(
    name: &str,
    path: &str,
    ctx: &Ctx<'_>,
) -> Result<&'static Preset, ConfigError> {
    match lookup_type(name) {
        TypeLookup::Found(preset) => Ok(preset),
        TypeLookup::Unsupported { what } => Err(ConfigError::UnsupportedBackendType {
            origin: ctx.origin.clone(),
            path: path.to_owned(),
            name: name.to_owned(),
            what,
            supported: supported_backend_types(),
        }),
        TypeLookup::Unknown => Err(ConfigError::UnknownBackendType {
            origin: ctx.origin.clone(),
            path: path.to_owned(),
            name: name.to_owned(),
            supported: supported_backend_types(),
        }),
    }
}

/// Reads `api_key` and `api_key_env` into the name of the key's variable. The value of a
/// literal key is never put into an error message.
fn api_key_env(fields: &mut Fields<'_>, ctx: &Ctx<'_>) -> Result<Option<String>, ConfigError> {
    let from_env_key = optional(fields, "api_key_env", |f| {
        let name = f.string(ctx)?.trim().to_owned();
        if super::env::is_var_name(&name) {
            Ok(name)
        } else {
            Err(ctx.invalid(
                f.path,
                "must be the NAME of an environment variable (letters, digits and `_`), not \
                 the key itself",
            ))
        }
    })?;
    let from_api_key = optional(fields, "api_key", |f| api_key_reference(f, ctx))?.flatten();
    match (from_env_key, from_api_key) {
        (Some(a), Some(b)) if a != b => Err(ctx.invalid(
            &fields.child_path("api_key"),
            format!("names `{b}` but `api_key_env` names `{a}`; keep one of them"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// `api_key: ${NAME}` → `Some(NAME)`; an empty `api_key` → `None` (the preset's variable is
/// used, as in MassGen); anything else is a literal secret and refused.
fn api_key_reference(field: Field<'_, '_>, ctx: &Ctx<'_>) -> Result<Option<String>, ConfigError> {
    let Node::Str(raw) = field.node else {
        return Err(ctx.wrong_type(field.path, "a `${VAR_NAME}` reference", field.node));
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let inner = raw
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .or_else(|| raw.strip_prefix('$'));
    match inner {
        Some(name) if super::env::is_var_name(name) => Ok(Some(name.to_owned())),
        Some(inner) if inner.contains(":-") => Err(ctx.invalid(
            field.path,
            "a default in `api_key` would put a literal key into the config; write \
             `api_key: ${VAR_NAME}` and set the variable in the environment or .env",
        )),
        _ => Err(ConfigError::LiteralApiKey {
            origin: ctx.origin.clone(),
            path: field.path.to_owned(),
        }),
    }
}

/// Collects the request-body extras: the request parameters `preset`'s wire format takes
/// (see [`passthrough_params`]) and `extra_body` (which wins on conflicts). Returns JSON text,
/// `None` when empty.
fn extra_body(
    fields: &mut Fields<'_>,
    preset: &Preset,
    ctx: &mut Ctx<'_>,
) -> Result<Option<String>, ConfigError> {
    let mut body = JsonMap::new();

    let taken = passthrough_params(preset.wire);
    for key in taken {
        if let Some(value) = optional(fields, key, |f| to_json(f.node, f.path, ctx))? {
            body.insert((*key).to_owned(), value);
        }
    }
    // Another wire format's parameter: say so instead of "unknown key".
    let mut others: Vec<&str> = [CHAT_PARAMS, RESPONSES_PARAMS, ANTHROPIC_PARAMS].concat();
    others.retain(|key| !taken.contains(key));
    others.sort_unstable();
    others.dedup();
    for key in others {
        if fields.take(key).is_some() {
            let path = fields.child_path(key);
            ctx.warn(
                path,
                format!(
                    "not a request parameter of backend type `{}` ({}), ignored; put \
                     provider-specific fields under `extra_body`, in the provider's own JSON shape",
                    preset.name,
                    wire_description(preset.wire)
                ),
            );
        }
    }

    let extra_path = fields.child_path("extra_body");
    if let Some(node) = fields.take("extra_body") {
        let explicit = match node {
            Node::Map(_) => match to_json(node, &extra_path, ctx)? {
                Json::Object(map) => map,
                _ => JsonMap::new(),
            },
            Node::Str(_) => {
                let text = Field {
                    node,
                    path: &extra_path,
                }
                .string(ctx)?;
                match serde_json::from_str::<Json>(&text) {
                    Ok(Json::Object(map)) => map,
                    _ => {
                        return Err(ctx.wrong_type(
                            &extra_path,
                            "a mapping (or a JSON object as text)",
                            node,
                        ));
                    }
                }
            }
            other => return Err(ctx.wrong_type(&extra_path, "a mapping", other)),
        };
        for (key, value) in explicit {
            if body.insert(key.clone(), value).is_some() {
                ctx.warn(
                    format!("{extra_path}.{key}"),
                    "also set directly on the backend; the `extra_body` value is used",
                );
            }
        }
    }

    if body.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&Json::Object(body))
        .map(Some)
        .map_err(|err| ctx.invalid(&extra_path, format!("cannot be encoded as JSON: {err}")))
}

/// A YAML value as JSON, with `${VAR}` expanded in strings.
fn to_json(node: &Node, path: &str, ctx: &Ctx<'_>) -> Result<Json, ConfigError> {
    Ok(match node {
        Node::Null => Json::Null,
        Node::Bool(b) => Json::Bool(*b),
        Node::Int(i) => match i64::try_from(*i) {
            Ok(i) => Json::from(i),
            Err(_) => match u64::try_from(*i) {
                Ok(u) => Json::from(u),
                Err(_) => return Err(ctx.out_of_range(path, i, "a 64-bit integer")),
            },
        },
        Node::Float(x) => serde_json::Number::from_f64(*x)
            .map(Json::Number)
            .ok_or_else(|| ctx.out_of_range(path, x, "a finite number"))?,
        Node::Str(_) => Json::String(Field { node, path }.string(ctx)?),
        Node::List(items) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &format!("{path}[{i}]"), ctx))
                .collect::<Result<_, _>>()?,
        ),
        Node::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v, &format!("{path}.{k}"), ctx)?)))
                .collect::<Result<_, ConfigError>>()?,
        ),
    })
}
