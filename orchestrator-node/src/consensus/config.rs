//! What the consensus state machine needs to know about a session, and why a configuration is
//! refused.

use conclave_protocol::config::{OrchestratorSettings, RestartPolicy};
use serde::{Deserialize, Serialize};

/// How many rejected decisions (answers over a cap, votes for labels that are not current
/// answers, decisions claiming a revision the agent was never sent) an agent may make before it
/// is failed. The fourth rejection fails the agent.
pub const DEFAULT_MAX_REJECTED_DECISIONS: u32 = 3;

/// The rules of one session. Journaled with the session start, so a resumed session replays its
/// inputs into a machine built from the very same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusConfig {
    /// How many agents take part; agent indices are `0..agents` in config order.
    pub agents: u32,
    /// An agent with this many accepted answers may only vote. `None`: unlimited (in practice
    /// `u32::MAX`, so labels never overflow).
    pub max_new_answers_per_agent: Option<u32>,
    /// The session accepts at most this many answers in total; after that everyone may only
    /// vote. `None`: unlimited.
    pub max_total_answers: Option<u32>,
    /// What happens to in-flight turns that a newly accepted answer makes stale.
    pub restart_policy: RestartPolicy,
    /// Under [`RestartPolicy::Inject`], how many injections one turn may be sent.
    #[serde(default = "default_max_injections")]
    pub max_injections: u32,
    /// Under [`RestartPolicy::Inject`], what a turn that declines an injection gets:
    /// `Cancel` (cancelled and restarted) or `Finish` (left to finish).
    #[serde(default)]
    pub inject_fallback: RestartPolicy,
    /// An agent whose rejected decisions exceed this number is failed, so a confused model
    /// cannot keep a session busy forever.
    pub max_rejected_decisions: u32,
    /// Finish with the winning answer as it stands instead of asking its author to present it.
    pub skip_final_presentation: bool,
    /// One agent, one call: the session starts with the agent's presentation of its own
    /// answer to the question (no coordination turn, no vote) and ends with it. Only with
    /// exactly one agent.
    pub single_call: bool,
}

impl ConsensusConfig {
    /// Defaults for `agents` agents: no caps, inject new answers into stale turns (cancel those
    /// that cannot take them), present the winner.
    pub fn new(agents: u32) -> Self {
        Self::from_settings(agents, &OrchestratorSettings::default())
    }

    /// The consensus part of the resolved `orchestrator:` settings.
    pub fn from_settings(agents: u32, settings: &OrchestratorSettings) -> Self {
        Self {
            agents,
            max_new_answers_per_agent: settings.max_new_answers_per_agent,
            max_total_answers: settings.max_total_answers,
            restart_policy: settings.restart_policy,
            max_injections: settings.max_midstream_injections_per_round,
            inject_fallback: settings.inject_fallback,
            max_rejected_decisions: DEFAULT_MAX_REJECTED_DECISIONS,
            skip_final_presentation: settings.skip_final_presentation,
            single_call: settings.single_call && agents == 1,
        }
    }

    /// Refuses settings under which no session could ever produce an answer.
    pub fn validate(&self) -> Result<(), ConsensusConfigError> {
        if self.agents == 0 {
            return Err(ConsensusConfigError::NoAgents);
        }
        if self.max_new_answers_per_agent == Some(0) {
            return Err(ConsensusConfigError::ZeroCap {
                setting: "max_new_answers_per_agent",
            });
        }
        if self.max_total_answers == Some(0) {
            return Err(ConsensusConfigError::ZeroCap {
                setting: "max_total_answers",
            });
        }
        Ok(())
    }
}

fn default_max_injections() -> u32 {
    conclave_protocol::config::DEFAULT_MAX_INJECTIONS
}

/// Why [`ConsensusConfig::validate`] refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusConfigError {
    #[error("a session needs at least one agent; add an entry under `agents:`")]
    NoAgents,
    #[error(
        "orchestrator setting `{setting}` is 0, so no answer could ever be accepted; \
         set it to at least 1 or remove it for no limit"
    )]
    ZeroCap { setting: &'static str },
}
