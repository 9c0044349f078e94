//! How a session ended, as its caller sees it: [`SessionOutcome`], the process exit code of
//! each [`EndReason`] and the reason's name (in the journal, the HTTP API, the summary line and
//! the session span).
//!
//! The coordinator produces outcomes; the command line, the server, batch and the session span
//! in [`crate::telemetry`] read them. Keeping the type here, apart from the actor, lets those
//! readers depend on the outcome without depending on the coordinator (and the coordinator on
//! telemetry without a loop back).

use std::time::Duration;

use conclave_protocol::{SessionId, Usage};

use crate::consensus::EndReason;

/// How a session ended, as the caller sees it.
#[derive(Debug, Clone)]
pub struct SessionOutcome {
    pub session: SessionId,
    pub reason: EndReason,
    pub final_answer: Option<String>,
    /// The configured id of the winning answer's author.
    pub winner: Option<String>,
    pub label: Option<String>,
    pub presented_by: Option<String>,
    pub usage: Usage,
    pub usage_by_agent: Vec<(String, Usage)>,
    /// The priced part of the usage in US dollars; `None` when no agent's model has a price.
    pub cost_usd: Option<f64>,
    /// Agents whose model has no known price (their tokens are not in `cost_usd`).
    pub unpriced: Vec<String>,
    pub answers: u32,
    pub turns: u64,
    pub wall: Duration,
}

impl SessionOutcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> i32 {
        self.reason.exit_code()
    }
}

impl EndReason {
    /// The process exit code of a session that ended for this reason: 0 done, 2 every agent
    /// failed, 3 timeout or budget cap, 130 interrupted.
    pub fn exit_code(self) -> i32 {
        match self {
            EndReason::Consensus => 0,
            EndReason::AllAgentsFailed => 2,
            EndReason::Timeout | EndReason::BudgetExhausted => 3,
            EndReason::Interrupted => 130,
        }
    }

    /// The reason's name in the journal (`session_ended.reason`), the API and the spans.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Consensus => "consensus",
            EndReason::Timeout => "timeout",
            EndReason::AllAgentsFailed => "all_agents_failed",
            EndReason::Interrupted => "interrupted",
            EndReason::BudgetExhausted => "budget_exhausted",
        }
    }
}
