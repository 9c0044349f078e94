//! The config loader: MassGen-style YAML (or CLI flags) → the resolved [`SessionConfig`].
//!
//! MassGen users bring their YAML unchanged: `agents:` / `agent:`, backend `type:` names,
//! `orchestrator:`, `timeout_settings:` and `ui:` mean what they mean in MassGen. conclave's
//! own keys sit beside them (`orchestrator.max_total_answers`, `restart_policy`,
//! `max_workflow_retries`, `skip_final_presentation`, `max_turn_restarts`,
//! `restart_window_seconds`; `timeout_settings.turn_timeout_seconds`,
//! `stall_timeout_seconds`, `connect_timeout_seconds`; agent `node`; backend `api_key_env`,
//! `max_retries`, `extra_body`, `thinking_budget`).
//!
//! How a load goes, and why:
//! 1. The `config` crate parses the YAML (module `tree`); the loader then walks the values itself,
//!    so every error names the file, the key path and what is allowed, and every key nobody
//!    read becomes a [`ConfigWarning`] (MassGen features conclave lacks are named as such).
//! 2. `${VAR}` and `${VAR:-default}` are expanded in the string values the loader reads, from
//!    the lookup function the caller passes ([`EnvLookup`]: process environment over `.env`).
//!    Keys that are ignored are not expanded, so an MCP server's `${TOKEN}` in a MassGen config
//!    does not stop a load. `$${` writes a literal `${`.
//! 3. Backends resolve through the provider presets (module `backend`), their provider
//!    options (reasoning, verbosity, thinking budget, built-in tools, API version) through
//!    module `options`; sessions through module `session`. The result holds no secrets: it is
//!    journaled and sent to agent nodes.
//!
//! API keys are not checked while loading, because the key lives on the node that calls the
//! provider. [`missing_api_keys`] lets the CLI report missing keys of locally run agents
//! before any provider call.

mod backend;
mod env;
mod error;
mod massgen;
mod options;
mod session;
mod tree;

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

use tree::Ctx;

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
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loaded = load_str(&text, &path.display().to_string(), env)?;
    loaded.source = Some(path.to_path_buf());
    Ok(loaded)
}

/// Loads YAML text; `origin` names it in errors (a file name, `<stdin>`, `request body`).
pub fn load_str(
    yaml: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    let root = tree::parse_yaml(yaml, origin)?;
    let mut ctx = Ctx {
        origin: origin.to_owned(),
        env,
        warnings: Vec::new(),
    };
    let config = session::resolve(&root, &mut ctx)?;
    Ok(LoadedConfig {
        config,
        warnings: ctx.warnings,
        source: None,
    })
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
    let mut ctx = Ctx {
        origin,
        env,
        warnings: Vec::new(),
    };
    let prices = session::pricing_table(&root, "", &mut ctx)?;
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
    let ctx = Ctx {
        origin: "command line".to_owned(),
        env,
        warnings: Vec::new(),
    };
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
