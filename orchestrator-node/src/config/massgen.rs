//! MassGen keys conclave recognises but does not act on (yet).
//!
//! A MassGen config must load unchanged, so keys that do not change what an agent can do
//! (storage locations, UI and debug switches, tuning conclave does its own way) produce a
//! warning that names the feature as not supported, instead of the "unknown key" warning a
//! typo gets. Keys that would change what an agent can do, or what it is told, are never
//! dropped with a warning: conclave honours them or refuses the config naming the key and
//! what to do (the `*_REFUSED` lists, and `orchestrator.coordination`, see
//! [`coordination`]). The lists follow MassGen's YAML reference, its config validator and the
//! example configs it ships.

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
pub(crate) const AGENT: &[KnownKey] = &[not_yet("memory")];

/// `agents[i]` keys conclave refuses when set (see the module docs).
pub(crate) const AGENT_REFUSED: &[(&str, &str)] = &[(
    "append_system_prompt",
    "MassGen's `append_system_prompt` is not supported by conclave; put the whole text in \
     the agent's `system_message` instead",
)];

/// `agents[i].backend` keys conclave refuses when set (see the module docs). The tool keys
/// are refused in module `tools`.
pub(crate) const BACKEND_REFUSED: &[(&str, &str)] = &[
    (
        "upload_files",
        "MassGen's `upload_files` (files and images sent to the model) is not supported yet by \
         conclave; remove the key",
    ),
    (
        "system_prompt",
        "MassGen's backend `system_prompt` is not supported by conclave; put the whole text in \
         the agent's `system_message` instead",
    ),
    (
        "append_system_prompt",
        "MassGen's backend `append_system_prompt` is not supported by conclave; put the whole \
         text in the agent's `system_message` instead",
    ),
    (
        "agent_config",
        "`agent_config` configures an AG2 agent, and the `ag2` backend is not supported by \
         conclave; remove the key",
    ),
    (
        "group_config",
        "`group_config` configures an AG2 group chat, and the `ag2` backend is not supported \
         by conclave; remove the key",
    ),
];

/// `agents[i].backend`: options conclave does not act on that do not change what an agent can
/// do. (Built-in web search and code execution, reasoning and thinking keys and `api_version`
/// are read, see module `options`; MCP servers, tool filters and tool limits are read and the
/// tool keys conclave cannot honour are refused, see module `tools`.)
pub(crate) const BACKEND: &[KnownKey] = &[
    not_yet("enable_rate_limit"),
    not_yet("betas"),
    KnownKey {
        name: "permission_mode",
        note: "only the `claude_code` backend reads it (it is passed to the CLI there), ignored",
    },
    KnownKey {
        name: "max_turns",
        note: "only the `claude_code` backend reads it (it is passed to the CLI there), ignored",
    },
];

/// `orchestrator:`.
pub(crate) const ORCHESTRATOR: &[KnownKey] = &[
    not_yet("voting_sensitivity"),
    not_yet("answer_novelty_requirement"),
    KnownKey {
        name: "agent_temporary_workspace",
        note: "MassGen's shared temporary workspaces are not supported yet by conclave, ignored \
               (they only matter with agent workspaces, `cwd`, which conclave refuses)",
    },
    KnownKey {
        name: "session_storage",
        note: "conclave keeps sessions under `--session-dir` instead, ignored",
    },
    KnownKey {
        name: "skip_coordination_rounds",
        note: "a MassGen debug switch; conclave always coordinates, ignored",
    },
    not_yet("debug_final_answer"),
    not_yet("dspy"),
];

/// `orchestrator:` keys conclave refuses when set.
pub(crate) const ORCHESTRATOR_REFUSED: &[(&str, &str)] = &[(
    "context_paths",
    "MassGen's file-system context paths (which give agents read or write access to \
     directories) are not supported yet by conclave; remove the key",
)];

/// `orchestrator.coordination` keys that give agents abilities (planning, memory and skill
/// files, subagents, broadcasts to peers or a human, workspace writes) or limit what their
/// tools may do (`enable_planning_mode`: no irreversible MCP actions while coordinating).
/// Dropping any of them would change what an agent can do, so each is refused when on.
pub(crate) const COORDINATION_REFUSED: &[(&str, &str)] = &[
    (
        "enable_agent_task_planning",
        "agent task planning (a planning tool)",
    ),
    (
        "task_planning_filesystem_mode",
        "task plans kept as workspace files",
    ),
    (
        "enable_memory_filesystem_mode",
        "memory kept as workspace files",
    ),
    ("use_skills", "skills (files and scripts agents can run)"),
    ("load_previous_session_skills", "skills of earlier sessions"),
    ("enable_subagents", "subagents"),
    ("subagent_orchestrator", "subagent orchestration"),
    (
        "broadcast",
        "broadcasts to other agents or a human (an ask-others tool)",
    ),
    (
        "enable_planning_mode",
        "planning mode (no irreversible MCP actions while coordinating)",
    ),
    ("write_mode", "workspace write modes"),
];

/// The note for `orchestrator.coordination` keys that do not change what an agent can do.
pub(crate) const COORDINATION_NOT_YET: &str =
    "MassGen coordination setting not supported yet by conclave, ignored";

/// `ui:`.
pub(crate) const UI: &[KnownKey] = &[not_yet("automation_mode"), not_yet("debug")];

/// `timeout_settings:` has no MassGen keys beyond the ones conclave reads.
pub(crate) const TIMEOUTS: &[KnownKey] = &[];

/// `orchestrator.timeout:` (MassGen's validator documents it; its runtime reads
/// `timeout_settings`).
pub(crate) const ORCHESTRATOR_TIMEOUT: &[KnownKey] = &[];
