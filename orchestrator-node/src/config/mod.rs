//! The config loader: MassGen-style YAML (or CLI flags) → the resolved [`SessionConfig`].
//!
//! MassGen users bring their YAML unchanged: `agents:` / `agent:`, backend `type:` names,
//! `orchestrator:`, `timeout_settings:` and `ui:` mean what they mean in MassGen. conclave's
//! own keys sit beside them (`orchestrator.max_total_answers`, `restart_policy`,
//! `max_workflow_retries`, `skip_final_presentation`, `max_turn_restarts`,
//! `restart_window_seconds`; `timeout_settings.turn_timeout_seconds`,
//! `stall_timeout_seconds`, `connect_timeout_seconds`; agent `node`; backend `api_key_env`,
//! `max_retries`, `extra_body`, `thinking_budget`, and the tool-loop bounds `max_tool_rounds`,
//! `tool_timeout_seconds`, `max_tool_result_bytes`, `max_concurrent_tools`). MassGen's
//! `mcp_servers`, `allowed_tools`, `exclude_tools` and `concurrent_tool_execution` are read
//! (module `tools`); `backend.cwd`, `context_paths`, `orchestrator.agent_temporary_workspace`,
//! `snapshot_storage` and the workspace limits (`snapshot_max_bytes`, `snapshot_max_files`,
//! `max_file_read_bytes`) in module `workspace`.
//!
//! How a load goes, and why:
//! 1. The `config` crate parses the YAML (module `tree`); the loader then walks the values itself,
//!    so every error names the file, the key path and what is allowed, and every key nobody
//!    read becomes a [`ConfigWarning`] (MassGen features conclave lacks are named as such).
//! 2. `${VAR}` and `${VAR:-default}` are expanded in the string values the loader reads, from
//!    the lookup function the caller passes ([`EnvLookup`]: process environment over `.env`).
//!    Keys that are ignored are not expanded; neither are MCP server values (module `tools`),
//!    whose `${TOKEN}` is kept and expanded on the node that runs the agent. `$${` writes a literal `${`. A config someone else wrote (one
//!    submitted to `conclave server`) loads with expansion off ([`load_str_untrusted`]): a
//!    `${` reference is an error saying so, and nothing is read from the environment, so none
//!    of the server's variables can reach the config, its journal, its event feed or an error.
//!    An error about a value that *was* expanded names the key and the variable, never the
//!    value ([`ConfigError::FromEnvironment`]): errors travel to logs and HTTP clients.
//! 3. Backends resolve through the provider presets (module `backend`), their provider
//!    options (reasoning, verbosity, thinking budget, built-in tools, API version) through
//!    module `options`; sessions through module `session`. The result holds no secrets: it is
//!    journaled and sent to agent nodes.
//!
//! API keys are not checked while loading, because the key lives on the node that calls the
//! provider. [`missing_api_keys`] lets the CLI report missing keys of locally run agents
//! before any provider call.

mod backend;
mod command_line;
mod env;
mod error;
mod massgen;
mod options;
mod session;
mod tools;
mod tree;
mod workspace;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use conclave_protocol::config::{AgentSpec, BackendSpec, SessionConfig};
use conclave_protocol::presets;

pub use backend::{
    AZURE_ENDPOINT_VAR, DEFAULT_CLAUDE_CODE_CLI, DEFAULT_CLAUDE_CODE_MODEL, DEFAULT_MAX_RETRIES,
    supported_backend_types,
};
pub use env::{EnvLookup, parse_dotenv};
pub use error::{ConfigError, ConfigWarning};
pub use options::{
    AZURE_API_VERSION_VAR, MAX_GEMINI_THINKING_BUDGET, MIN_CLAUDE_THINKING_BUDGET,
    REASONING_EFFORTS, REASONING_SUMMARIES, VERBOSITIES,
};
pub use session::MAX_TIMEOUT_SECONDS;
pub use workspace::agent_dir_name;

use tree::{Ctx, Expansion};

/// A loaded config: the resolved session settings, the keys that were ignored, and the file
/// it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedConfig {
    pub config: SessionConfig,
    /// Ignored keys with their paths, e.g. `agents[1].backend.foo: unknown key, ignored`.
    pub warnings: Vec<ConfigWarning>,
    /// The file, when loaded with [`load_file`].
    pub source: Option<PathBuf>,
}

/// Loads a YAML config file. `env` resolves `${VAR}` references.
pub fn load_file(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    let text = read(path)?;
    let mut loaded = load(
        &text,
        &path.display().to_string(),
        env,
        Expansion::On,
        path.parent(),
    )?;
    loaded.source = Some(path.to_path_buf());
    Ok(loaded)
}

/// Loads YAML text; `origin` names it in errors (a file name, `<stdin>`, `request body`).
pub fn load_str(
    yaml: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    load(yaml, origin, env, Expansion::On, None)
}

/// Loads a config someone other than the operator wrote (a config submitted to `conclave
/// server`, or a file the request names): no `${VAR}` is expanded (a reference is an error
/// saying so) and nothing at all is read from the environment, so no value of the server's
/// environment can reach the resolved config, its journal or an error. `api_key: ${VAR}` and
/// `api_key_env: VAR` still *name* a key variable; the caller checks the name against its
/// allow-list ([`conclave_protocol::trust::ProviderAllowList`]).
pub fn load_str_untrusted(yaml: &str, origin: &str) -> Result<LoadedConfig, ConfigError> {
    load(yaml, origin, &|_| None, Expansion::Off, None)
}

/// [`load_str_untrusted`] for a file; `origin` names it in errors (the name the request gave,
/// not the server's path).
pub fn load_file_untrusted(path: &Path, origin: &str) -> Result<LoadedConfig, ConfigError> {
    let text = read(path)?;
    let mut loaded = load_str_untrusted(&text, origin)?;
    loaded.source = Some(path.to_path_buf());
    Ok(loaded)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load(
    yaml: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
    expansion: Expansion,
    base_dir: Option<&Path>,
) -> Result<LoadedConfig, ConfigError> {
    let root = tree::parse_yaml(yaml, origin)?;
    let mut ctx = Ctx::new(origin, env, expansion);
    // A config file in the current directory has an empty parent: `.`.
    ctx.base_dir = base_dir.map(|dir| {
        if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        }
    });
    match session::resolve(&root, &mut ctx) {
        Ok(config) => Ok(LoadedConfig {
            config,
            warnings: ctx.warnings,
            source: None,
        }),
        Err(error) => Err(redact(error, &ctx)),
    }
}

/// An error about a value that came from the environment, rewritten so it names the key and
/// the variables but not the value (which may be a secret, and errors reach HTTP clients and
/// logs). An error counts as such when its key path (or a parent of it) was expanded from the
/// environment, or when its text contains the value of a variable the load read.
fn redact(error: ConfigError, ctx: &Ctx<'_>) -> ConfigError {
    let from_env = ctx.from_env.borrow();
    let Some(path) = error.key_path().map(str::to_owned) else {
        return error;
    };
    let text = error.to_string();
    let mut vars: Vec<&str> = Vec::new();
    for (env_path, names) in from_env.iter() {
        let under = path == *env_path
            || path.starts_with(&format!("{env_path}."))
            || path.starts_with(&format!("{env_path}["));
        let shown = names.iter().any(|name| {
            (ctx.env)(name).is_some_and(|value| {
                let value = value.trim().trim_end_matches('/');
                // Very short values ("1", "on") would match unrelated text; they are caught by
                // the key path above.
                value.len() >= 4 && text.contains(value)
            })
        });
        if under || shown {
            vars.extend(names.iter().map(String::as_str));
        }
    }
    if vars.is_empty() {
        return error;
    }
    vars.sort_unstable();
    vars.dedup();
    let what = match &error {
        ConfigError::WrongType { expected, .. } => format!("expected {expected}"),
        ConfigError::OutOfRange { allowed, .. } | ConfigError::InvalidValue { allowed, .. } => {
            format!("allowed: {allowed}")
        }
        ConfigError::UnknownBackendType { supported, .. }
        | ConfigError::UnsupportedBackendType { supported, .. } => {
            format!("not a backend type conclave runs; supported: {supported}")
        }
        ConfigError::Missing { hint, .. } => hint.clone(),
        _ if path.ends_with("base_url") || path.ends_with("azure_endpoint") => {
            "expected an http(s) URL with a host, e.g. `https://RESOURCE.openai.azure.com`"
                .to_owned()
        }
        // The loader's own "allowed: ..." lists are fixed text, never part of the value.
        ConfigError::Invalid { problem, .. } if problem.contains("allowed: ") => {
            problem[problem.rfind("allowed: ").unwrap_or(0)..].to_owned()
        }
        _ => "see the documentation of this key".to_owned(),
    };
    ConfigError::FromEnvironment {
        origin: ctx.origin.clone(),
        path,
        vars: vars
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", "),
        what,
    }
}

/// Reads a pricing file (`--pricing FILE`): a YAML or JSON mapping of model-name prefix to
/// `{input_per_million, output_per_million}` in US dollars. Unknown keys are warnings.
pub fn load_pricing_file(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<
    (
        Vec<conclave_protocol::config::ModelPrice>,
        Vec<ConfigWarning>,
    ),
    ConfigError,
> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let root = tree::parse_yaml(&text, &origin)?;
    let mut ctx = Ctx::new(origin, env, Expansion::On);
    let prices = session::pricing_table(&root, "", &mut ctx).map_err(|e| redact(e, &ctx))?;
    Ok((prices, ctx.warnings))
}

/// A one-agent session from CLI flags (`--model M [--backend T] [--base-url U]`).
///
/// Without `--backend` the provider is guessed from a well-known model name (`gpt-4o-mini` →
/// openai, the Responses API; `grok-4` → xai; `sim:...` → the simulated provider); an unknown
/// name is an error
/// asking for `--backend`. `${VAR}` in the flags is expanded from `env` like in YAML. The
/// agent's id is the model name, so the report shows what ran. Everything else is default.
pub fn single_agent(
    model: &str,
    backend: Option<&str>,
    base_url: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SessionConfig, ConfigError> {
    let ctx = Ctx::new("command line", env, Expansion::On);
    let model = env::expand(model, env, &ctx.origin, "--model")?
        .trim()
        .to_owned();
    if model.is_empty() {
        return Err(ctx.invalid("--model", "the model name must not be empty"));
    }

    let preset = match backend {
        Some(name) => backend::preset_for_type(name, "--backend", &ctx)?,
        None => match presets::preset_for_model(&model) {
            Some(preset) => {
                backend::preset_for_type(preset.name, &format!("--model {model}"), &ctx)?
            }
            None => {
                return Err(ConfigError::UnknownModel {
                    model,
                    supported: supported_backend_types(),
                });
            }
        },
    };

    let base_url = match base_url {
        Some(url) => {
            let url = env::expand(url, env, &ctx.origin, "--base-url")?;
            Some(
                backend::normalise_base_url_for(preset.wire, &url)
                    .map_err(|problem| ctx.invalid("--base-url", problem))?,
            )
        }
        None => None,
    };
    let endpoint = backend::endpoint(preset, base_url, None).ok_or_else(|| {
        ctx.missing(
            "--base-url",
            backend::missing_base_url_hint(preset, backend.unwrap_or(preset.name), "--base-url"),
        )
    })?;

    Ok(SessionConfig {
        agents: vec![AgentSpec {
            id: model.clone(),
            backend: BackendSpec {
                wire: preset.wire,
                provider: endpoint.provider,
                model,
                base_url: endpoint.base_url,
                api_key_env: endpoint.api_key_env,
                temperature: None,
                top_p: None,
                max_tokens: None,
                extra_body: None,
                max_retries: DEFAULT_MAX_RETRIES,
                options: Default::default(),
            },
            system_message: None,
            node: None,
            workflow: Default::default(),
            tools: Default::default(),
        }],
        orchestrator: Default::default(),
        timeouts: Default::default(),
        display: Default::default(),
    })
}

/// `(agent id, variable)` for every agent run in this process (`node: None`) whose API key
/// variable is unset or empty in `env`, when a key is needed: the provider requires one
/// (hosted APIs), or the config named a variable the preset does not use by default (the user
/// asked for a key). Agents on other nodes are skipped: their key lives there.
pub fn missing_api_keys(
    config: &SessionConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    config
        .agents
        .iter()
        .filter(|agent| agent.node.is_none())
        .filter_map(|agent| {
            let var = agent.backend.api_key_env.as_deref()?;
            let required = match presets::preset(&agent.backend.provider) {
                Some(preset) => preset.key_required || preset.api_key_env != Some(var),
                None => true,
            };
            let set = env(var).is_some_and(|value| !value.trim().is_empty());
            (required && !set).then(|| (agent.id.clone(), var.to_owned()))
        })
        .collect()
}
