//! MassGen keys conclave recognises but does not act on (yet).
//!
//! A MassGen config must load unchanged, so these keys produce a warning that names the
//! feature as not supported, instead of the "unknown key" warning a typo gets. The lists
//! follow MassGen's YAML reference, its config validator and the example configs it ships.

use super::tree::KnownKey;

const NOT_YET: &str = "MassGen key not supported yet by conclave, ignored";

const fn not_yet(name: &'static str) -> KnownKey {
    KnownKey {
        name,
        note: NOT_YET,
    }
}

/// Top-level keys of MassGen v1 configs. MassGen itself refuses them; so does conclave.
pub(crate) const V1_KEYS: &[&str] = &[
    "models",
    "model_configs",
    "num_agents",
    "max_rounds",
    "consensus_threshold",
    "voting_enabled",
    "enable_voting",
];

/// Top level.
pub(crate) const TOP: &[KnownKey] = &[
    not_yet("memory"),
    KnownKey {
        name: "display",
        note: "not read by MassGen or conclave; use `ui.display_type`, ignored",
    },
];

/// `agents[i]` / `agent`.
pub(crate) const AGENT: &[KnownKey] = &[not_yet("memory"), not_yet("append_system_prompt")];

/// `agents[i].backend`: options conclave does not act on that do not change what an agent can
/// do. (Built-in web search and code execution, reasoning and thinking keys and `api_version`
/// are read, see module `options`; MCP servers, tool filters and tool limits are read and the
/// tool keys conclave cannot honour are refused, see module `tools`.)
pub(crate) const BACKEND: &[KnownKey] = &[
    not_yet("enable_rate_limit"),
    not_yet("disallowed_tools"),
    not_yet("upload_files"),
    not_yet("permission_mode"),
    not_yet("system_prompt"),
    not_yet("append_system_prompt"),
    not_yet("betas"),
    not_yet("agent_config"),
    not_yet("group_config"),
];

/// `orchestrator:`.
pub(crate) const ORCHESTRATOR: &[KnownKey] = &[
    not_yet("voting_sensitivity"),
    not_yet("answer_novelty_requirement"),
    not_yet("snapshot_storage"),
    not_yet("agent_temporary_workspace"),
    not_yet("session_storage"),
    not_yet("context_paths"),
    not_yet("coordination"),
    not_yet("skip_coordination_rounds"),
    not_yet("debug_final_answer"),
    not_yet("dspy"),
];

/// `ui:`.
pub(crate) const UI: &[KnownKey] = &[not_yet("automation_mode"), not_yet("debug")];

/// `timeout_settings:` has no MassGen keys beyond the ones conclave reads.
pub(crate) const TIMEOUTS: &[KnownKey] = &[];

/// `orchestrator.timeout:` (MassGen's validator documents it; its runtime reads
/// `timeout_settings`).
pub(crate) const ORCHESTRATOR_TIMEOUT: &[KnownKey] = &[];
