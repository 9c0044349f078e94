//! Errors and warnings of the config loader.
//!
//! Every error names where the bad value came from (`origin`: the file name, or `command line`),
//! the key path inside it (`agents[2].backend.temperature`) and what would be accepted, so the
//! user can fix the file without reading conclave's source. Warnings are for keys that are
//! ignored: a typo or a MassGen feature conclave does not have yet should be visible, not fatal.

use std::fmt;
use std::path::PathBuf;

/// A config that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file (or `.env`) could not be read at all.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The text is not valid YAML (the message carries the line and column when the parser
    /// knows them) or its top level is not a mapping.
    #[error("{origin}: malformed YAML: {message}")]
    Yaml { origin: String, message: String },

    /// A value has the wrong type (a list where a mapping belongs, text where a number does).
    #[error("{origin}: `{path}`: expected {expected}, found {found}")]
    WrongType {
        origin: String,
        path: String,
        expected: String,
        found: String,
    },

    /// A number outside the range the key allows.
    #[error("{origin}: `{path}`: {value} is out of range; allowed: {allowed}")]
    OutOfRange {
        origin: String,
        path: String,
        value: String,
        allowed: String,
    },

    /// A value that is not one of the names the key accepts.
    #[error("{origin}: `{path}`: `{value}` is not valid; allowed: {allowed}")]
    InvalidValue {
        origin: String,
        path: String,
        value: String,
        allowed: String,
    },

    /// A required key is absent (or null).
    #[error("{origin}: `{path}` is missing; {hint}")]
    Missing {
        origin: String,
        path: String,
        hint: String,
    },

    /// A backend `type` conclave has never heard of.
    #[error("{origin}: `{path}`: unknown backend type `{name}`; supported: {supported}")]
    UnknownBackendType {
        origin: String,
        path: String,
        name: String,
        supported: String,
    },

    /// A MassGen backend `type` conclave knows but does not run (AG2 agents, ...); `what`
    /// says what it is and, where there is one, what to write instead.
    #[error(
        "{origin}: `{path}`: backend type `{name}` ({what}) is not supported by conclave; \
         supported: {supported}"
    )]
    UnsupportedBackendType {
        origin: String,
        path: String,
        name: String,
        what: String,
        supported: String,
    },

    /// Two agents share an id; ids must be unique because votes and reports refer to them.
    #[error(
        "{origin}: `{path}`: duplicate agent id `{id}` (already used by `{first_path}`); \
         give every agent its own id"
    )]
    DuplicateAgentId {
        origin: String,
        path: String,
        id: String,
        first_path: String,
    },

    /// `agents:` is an empty list.
    #[error(
        "{origin}: `{path}`: no agents configured; add at least one agent with an `id` and a `backend`"
    )]
    NoAgents { origin: String, path: String },

    /// A literal API key in the config. The resolved config is journaled and sent to agent
    /// nodes, so a secret must never be part of it. The key's value is never echoed.
    #[error(
        "{origin}: `{path}`: a literal API key is not allowed in a config file (configs are \
         journaled and sent to agent nodes); write `api_key: ${{VAR_NAME}}` or \
         `api_key_env: VAR_NAME` and put the key in the environment or in .env"
    )]
    LiteralApiKey { origin: String, path: String },

    /// `${VAR}` names a variable that is not set and has no default.
    #[error(
        "{origin}: `{path}`: environment variable `{var}` is not set; set it, add it to .env, \
         or give a default with `${{{var}:-default}}`"
    )]
    UnsetVariable {
        origin: String,
        path: String,
        var: String,
    },

    /// A value taken from the environment (`${VAR}`, or a variable the loader reads such as
    /// `AZURE_OPENAI_ENDPOINT`) is not valid for its key. The value is never shown: it may be a
    /// secret, and the error may travel to someone who must not see it.
    #[error(
        "{origin}: `{path}`: the value taken from the environment ({vars}) is not valid here \
         ({what}); the value is not shown because it came from the environment"
    )]
    FromEnvironment {
        origin: String,
        path: String,
        /// The variables, e.g. "`TEMPERATURE`".
        vars: String,
        /// What the key accepts, with no part of the value.
        what: String,
    },

    /// Any other problem with one key; `problem` says what is wrong and what to do.
    #[error("{origin}: `{path}`: {problem}")]
    Invalid {
        origin: String,
        path: String,
        problem: String,
    },

    /// A line of a `.env` file that cannot be parsed.
    #[error("{path}:{line}: {problem}")]
    Dotenv {
        path: PathBuf,
        line: usize,
        problem: String,
    },

    /// `--model` alone names a model whose provider cannot be guessed.
    #[error(
        "command line: `--model {model}`: cannot tell which provider serves this model; pass \
         `--backend` (one of: {supported}) and, for a generic OpenAI-compatible host, `--base-url`"
    )]
    UnknownModel { model: String, supported: String },
}

impl ConfigError {
    /// The key path the error is about, when it concerns one key.
    pub fn key_path(&self) -> Option<&str> {
        match self {
            ConfigError::WrongType { path, .. }
            | ConfigError::OutOfRange { path, .. }
            | ConfigError::InvalidValue { path, .. }
            | ConfigError::Missing { path, .. }
            | ConfigError::UnknownBackendType { path, .. }
            | ConfigError::UnsupportedBackendType { path, .. }
            | ConfigError::DuplicateAgentId { path, .. }
            | ConfigError::NoAgents { path, .. }
            | ConfigError::LiteralApiKey { path, .. }
            | ConfigError::UnsetVariable { path, .. }
            | ConfigError::FromEnvironment { path, .. }
            | ConfigError::Invalid { path, .. } => Some(path),
            ConfigError::Read { .. }
            | ConfigError::Yaml { .. }
            | ConfigError::Dotenv { .. }
            | ConfigError::UnknownModel { .. } => None,
        }
    }
}

/// A key that was accepted but ignored, with the reason. Loading still succeeds; the CLI
/// prints these so typos and not-yet-supported MassGen features do not go unnoticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Key path, e.g. `agents[1].backend.foo`.
    pub path: String,
    /// Why it was ignored, e.g. `unknown key, ignored`.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}
