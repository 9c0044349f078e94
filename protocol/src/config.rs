//! The resolved configuration schema: what a session runs with after the YAML (MassGen keys
//! included), the CLI flags and the environment have been merged and checked by the
//! orchestrator's config loader.
//!
//! These types cross the cluster (an orchestrator tells an agent node which backend to build),
//! so they hold no secrets: a backend names the environment variable its API key is read from
//! on the node that calls the provider, never the key itself.

use serde::{Deserialize, Serialize};

/// The wire format a backend speaks. Provider presets (Groq, vLLM, Ollama, ...) are data on
/// top of one of these, not separate code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WireFormat {
    /// OpenAI Chat Completions (`POST {base_url}/chat/completions`), spoken by OpenAI and
    /// nearly every OpenAI-compatible host.
    OpenAiChat,
    /// OpenAI Responses API (`POST {base_url}/responses`).
    OpenAiResponses,
    /// Anthropic Messages (`POST {base_url}/messages`).
    Anthropic,
    /// Google Gemini `streamGenerateContent?alt=sse`.
    Gemini,
    /// Azure OpenAI deployments.
    AzureOpenAi,
    /// The `claude` CLI in stream-json mode.
    ClaudeCode,
}

impl WireFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WireFormat::OpenAiChat => "openai_chat",
            WireFormat::OpenAiResponses => "openai_responses",
            WireFormat::Anthropic => "anthropic",
            WireFormat::Gemini => "gemini",
            WireFormat::AzureOpenAi => "azure_openai",
            WireFormat::ClaudeCode => "claude_code",
        }
    }
}

/// One agent's backend, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub wire: WireFormat,
    /// The provider preset name (`openai`, `groq`, `vllm`, ...), used for logs and the
    /// `gen_ai.provider.name` span attribute.
    pub provider: String,
    pub model: String,
    /// Base URL up to and including the API version segment, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The environment variable that holds the API key on the calling node. `None` for hosts
    /// that need no key (local servers).
    pub api_key_env: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Extra JSON object merged into every request body (provider-specific options the schema
    /// does not name), as JSON text.
    pub extra_body: Option<String>,
    /// How many times a failed provider call is retried (SDK default: 2).
    pub max_retries: u32,
    /// Provider-side options that several wire formats share, each translated by the
    /// backend into its own request shape.
    pub options: BackendOptions,
}

/// Options that mean the same thing across providers; each backend maps them to its wire
/// format and ignores (with a log line) the ones it cannot honour.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BackendOptions {
    /// Reasoning effort (`minimal`, `low`, `medium`, `high`): OpenAI `reasoning.effort` /
    /// `reasoning_effort`, Gemini thinking level.
    pub reasoning_effort: Option<String>,
    /// Reasoning summaries to stream (`auto`, `concise`, `detailed`): Responses
    /// `reasoning.summary`.
    pub reasoning_summary: Option<String>,
    /// Output verbosity (`low`, `medium`, `high`): Responses `text.verbosity`.
    pub verbosity: Option<String>,
    /// Token budget for extended thinking: Anthropic `thinking.budget_tokens`, Gemini
    /// `thinkingConfig.thinkingBudget`.
    pub thinking_budget: Option<u32>,
    /// Offer the provider's built-in web search (Responses `web_search`, Anthropic
    /// `web_search`, Gemini `google_search`).
    pub web_search: bool,
    /// Offer the provider's built-in code execution (Responses `code_interpreter`, Anthropic
    /// `code_execution`, Gemini `code_execution`).
    pub code_execution: bool,
    /// API version where the provider wants one: Azure `api-version`, Anthropic
    /// `anthropic-version`.
    pub api_version: Option<String>,
}

/// One agent of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// The configured id (real name, shown in logs and the final report only).
    pub id: String,
    pub backend: BackendSpec,
    pub system_message: Option<String>,
    /// The agent node this agent runs on; `None` runs it inside the orchestrator process.
    pub node: Option<String>,
    /// How the agent states its decision: workflow tools, a marked line of text, or tools
    /// first and text once the model ignores them.
    pub workflow: WorkflowMode,
    /// MCP servers and tool-loop bounds (started on the node that runs the agent).
    pub tools: crate::tools::AgentTools,
}

/// How an agent states its decision (`workflow:` per agent or backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowMode {
    /// Only the workflow tools (`new_answer`, `vote`).
    Tools,
    /// Only the text protocol: the reply ends with `VOTE: agent2.1 — reason` or
    /// `NEW ANSWER:` and the answer. For models that cannot call tools.
    Text,
    /// Tools first; after the first turn in which the model ignores them, text for the rest
    /// of the session.
    #[default]
    Auto,
}

impl WorkflowMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowMode::Tools => "tools",
            WorkflowMode::Text => "text",
            WorkflowMode::Auto => "auto",
        }
    }

    /// Reads `tools`, `text` or `auto` (ASCII case ignored).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "tools" | "tool" => Some(WorkflowMode::Tools),
            "text" => Some(WorkflowMode::Text),
            "auto" => Some(WorkflowMode::Auto),
            _ => None,
        }
    }
}

/// What happens to in-flight turns when a new answer makes them stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Cancel them at once and restart with the new answers (saves tokens).
    #[default]
    Cancel,
    /// Let them finish; a stale vote is then discarded and its agent restarted.
    Finish,
    /// Let them run and deliver the new answers at the agent's next tool boundary (appended to
    /// its next tool result, at most [`OrchestratorSettings::max_midstream_injections_per_round`]
    /// times per turn): the agent then decides on the new revision. MassGen 0.1.97's midstream
    /// injection.
    ///
    /// A turn that can reach no tool boundary (its agent offers the model no tools of its own,
    /// decides through the text protocol, or has left its tool loop to decide) declines the
    /// answers, and gets [`OrchestratorSettings::inject_fallback`] (`cancel` by default). A
    /// turn that could have reached one but decides first (the model stopped calling tools, or
    /// the turn's injections were spent) is stale as under `Finish`: a vote is discarded and
    /// restarts the agent, an answer is accepted as new work.
    Inject,
}

impl RestartPolicy {
    /// The name used in configs and journals.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Cancel => "cancel",
            RestartPolicy::Finish => "finish",
            RestartPolicy::Inject => "inject",
        }
    }
}

/// Consensus and limit settings (`orchestrator:` in YAML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrchestratorSettings {
    /// An agent at this many accepted answers may only vote. `None`: unlimited.
    pub max_new_answers_per_agent: Option<u32>,
    /// The session accepts at most this many answers in total; after that everyone votes.
    pub max_total_answers: Option<u32>,
    pub restart_policy: RestartPolicy,
    /// How many times a turn without exactly one valid workflow call is retried with a
    /// corrective message before the turn fails.
    pub max_workflow_retries: u32,
    /// Skip the final presentation turn and use the winning answer as it stands.
    pub skip_final_presentation: bool,
    /// End the session (best available answer, exit 3) once its priced usage reaches this
    /// many US dollars. Agents on models without a known price count tokens only.
    pub max_cost_usd: Option<f64>,
    /// End the session once its agents have used this many tokens (input + output).
    pub max_total_tokens: Option<u64>,
    /// Prices that add to or override the built-in table, matched by model-name prefix.
    pub pricing: Vec<ModelPrice>,
    /// How long a session waits for the agent nodes its agents are placed on (`node:`) to
    /// join, in seconds. Read from `timeout_settings.node_join_timeout_seconds`; kept here
    /// because [`TimeoutSettings`] is built field by field elsewhere (fuzzers) and a cluster
    /// setting there would break them.
    pub node_join_timeout_seconds: u64,
    /// Restart intensity of an agent's turn worker (`orchestrator.max_turn_restarts`): a
    /// worker that crashes (panics, or stalls past `stall_timeout_seconds`) is restarted with
    /// exponential backoff (250 ms, doubling, at most 8 s) at most this many times within
    /// [`Self::restart_window_seconds`]. Past the limit the turn fails, the agent is reported
    /// failed and the session goes on without it. `0`: a crashed worker is never restarted.
    /// Applies to every agent, in-process or on an agent node.
    #[serde(default = "default_max_turn_restarts")]
    pub max_turn_restarts: u32,
    /// The sliding window, in seconds, in which crashes count toward
    /// [`Self::max_turn_restarts`] (`orchestrator.restart_window_seconds`); crashes further
    /// apart are forgiven. At least 1.
    #[serde(default = "default_restart_window_seconds")]
    pub restart_window_seconds: u64,
    /// A one-agent session answers in one streamed call (no self-vote, no separate
    /// presentation): MassGen's `ui.use_orchestrator_for_single_agent: false`, and
    /// `conclave --model` without `--orchestrate`. Ignored with several agents.
    #[serde(default)]
    pub single_call: bool,
    /// Under [`RestartPolicy::Inject`], how many times one turn may be handed newer answers
    /// at its tool boundaries (MassGen's `max_midstream_injections_per_round`, default 2).
    #[serde(default = "default_max_injections")]
    pub max_midstream_injections_per_round: u32,
    /// Under [`RestartPolicy::Inject`], what happens to a turn that declines newer answers
    /// because it can reach no tool boundary: `Cancel` (default) or `Finish`
    /// (`orchestrator.inject_fallback`).
    #[serde(default)]
    pub inject_fallback: RestartPolicy,
    /// Where answers' workspace snapshots are stored (`orchestrator.snapshot_storage`, MassGen's
    /// key, resolved against the config file's directory), one folder per session under it;
    /// `None`: `<session dir>/snapshots`.
    #[serde(default)]
    pub snapshot_storage: Option<String>,
}

/// The restart policy of a config that names none: `inject` (with the `cancel` fallback), the
/// cheapest in `conclave-restart-bench` (README, "Restart policies"): a tool-using agent keeps
/// its work and decides on the new answers; an agent without tools is cancelled and restarted
/// at once, as under `cancel`.
pub const DEFAULT_RESTART_POLICY: RestartPolicy = RestartPolicy::Inject;

/// The default of [`OrchestratorSettings::max_midstream_injections_per_round`] (MassGen's).
pub const DEFAULT_MAX_INJECTIONS: u32 = 2;

fn default_max_injections() -> u32 {
    DEFAULT_MAX_INJECTIONS
}

/// The default of [`OrchestratorSettings::max_turn_restarts`]; also what a journal written
/// before the key existed resumes with.
pub const DEFAULT_MAX_TURN_RESTARTS: u32 = 3;

/// The default of [`OrchestratorSettings::restart_window_seconds`].
pub const DEFAULT_RESTART_WINDOW_SECONDS: u64 = 60;

fn default_max_turn_restarts() -> u32 {
    DEFAULT_MAX_TURN_RESTARTS
}

fn default_restart_window_seconds() -> u64 {
    DEFAULT_RESTART_WINDOW_SECONDS
}

/// The price of a model, in US dollars per million tokens. `model` matches any model whose
/// name starts with it (`gpt-4o` matches `gpt-4o-2024-08-06`); the longest match wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub model: String,
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Default for OrchestratorSettings {
    fn default() -> Self {
        Self {
            max_new_answers_per_agent: None,
            max_total_answers: None,
            restart_policy: DEFAULT_RESTART_POLICY,
            max_workflow_retries: 3,
            skip_final_presentation: false,
            max_cost_usd: None,
            max_total_tokens: None,
            pricing: Vec::new(),
            node_join_timeout_seconds: 30,
            max_turn_restarts: DEFAULT_MAX_TURN_RESTARTS,
            restart_window_seconds: DEFAULT_RESTART_WINDOW_SECONDS,
            single_call: false,
            max_midstream_injections_per_round: DEFAULT_MAX_INJECTIONS,
            inject_fallback: RestartPolicy::Cancel,
            snapshot_storage: None,
        }
    }
}

/// Time limits (`timeout_settings:` in YAML). All in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeoutSettings {
    /// The whole session; at the limit the best available answer is presented.
    pub orchestrator_timeout_seconds: u64,
    /// One LLM turn (including retries).
    pub turn_timeout_seconds: u64,
    /// No chunk for this long means the provider stalled.
    pub stall_timeout_seconds: u64,
    /// Connecting to a provider.
    pub connect_timeout_seconds: u64,
}

impl Default for TimeoutSettings {
    fn default() -> Self {
        Self {
            orchestrator_timeout_seconds: 1800,
            turn_timeout_seconds: 600,
            stall_timeout_seconds: 120,
            connect_timeout_seconds: 10,
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum DisplayKind {
    /// Each agent's stream live, labelled, then the final answer.
    #[default]
    Plain,
    /// One JSON event per line on stdout.
    Json,
    /// Only the final answer.
    Quiet,
    /// A full-screen terminal UI: one pane per agent, the answers and their votes, the final
    /// answer in its own view. Needs a terminal; the default when stdout is one.
    Tui,
}

/// A whole session's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionConfig {
    pub agents: Vec<AgentSpec>,
    pub orchestrator: OrchestratorSettings,
    pub timeouts: TimeoutSettings,
    pub display: DisplayKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_written_before_the_restart_keys_resume_with_the_defaults() {
        let settings = OrchestratorSettings {
            max_turn_restarts: 7,
            restart_window_seconds: 9,
            ..OrchestratorSettings::default()
        };
        let mut json = serde_json::to_value(&settings).expect("settings serialise");
        let back: OrchestratorSettings =
            serde_json::from_value(json.clone()).expect("settings deserialise");
        assert_eq!(back, settings);

        let object = json.as_object_mut().expect("a JSON object");
        object.remove("max_turn_restarts");
        object.remove("restart_window_seconds");
        let old: OrchestratorSettings = serde_json::from_value(json).expect("old settings load");
        assert_eq!(old.max_turn_restarts, DEFAULT_MAX_TURN_RESTARTS);
        assert_eq!(old.restart_window_seconds, DEFAULT_RESTART_WINDOW_SECONDS);
        assert_eq!((old.max_turn_restarts, old.restart_window_seconds), (3, 60));
    }
}
