//! Identifiers: sessions, turns, and the anonymous answer labels agents see.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A session id: `YYYYMMDD-HHMMSS-xxxxxx` style strings are produced by the orchestrator, but any
/// non-empty string made of `[A-Za-z0-9._-]` is accepted so users can name sessions for batches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub String);

impl SessionId {
    /// Checks that the id is safe to use as a directory name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 128 {
            return Err(format!(
                "session id must be 1..=128 characters, got {}",
                raw.len()
            ));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "session id {raw:?} contains {bad:?}; use only letters, digits, '.', '_' and '-'"
            ));
        }
        if raw.starts_with('.') {
            return Err(format!("session id {raw:?} must not start with '.'"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one LLM turn inside a session. Turn ids are allocated by the coordinator, are
/// unique within a session and only grow, so a late message from a cancelled turn can be told
/// apart from the current one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct TurnId(pub u64);

impl fmt::Display for TurnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "turn-{}", self.0)
    }
}

/// The anonymous name of an answer: agent `k`'s `m`-th answer is `agent{k}.{m}`. `k` is the
/// agent's 1-based position in config order, `m` counts that agent's accepted answers from 1.
/// Agents only ever see labels; real agent ids appear in logs and the final report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AnswerLabel {
    /// 1-based position of the author in config order.
    pub agent: u32,
    /// 1-based count of the author's accepted answers.
    pub answer: u32,
}

impl AnswerLabel {
    pub fn new(agent: u32, answer: u32) -> Self {
        Self { agent, answer }
    }
}

impl fmt::Display for AnswerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent{}.{}", self.agent, self.answer)
    }
}

/// Why a string is not an answer label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an answer label; labels look like \"agent2.1\"")]
pub struct LabelParseError {
    pub input: String,
}

impl FromStr for AnswerLabel {
    type Err = LabelParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LabelParseError {
            input: s.to_owned(),
        };
        let rest = s.trim().strip_prefix("agent").ok_or_else(err)?;
        let (agent, answer) = rest.split_once('.').ok_or_else(err)?;
        let agent: u32 = agent.parse().map_err(|_| err())?;
        let answer: u32 = answer.parse().map_err(|_| err())?;
        if agent == 0 || answer == 0 {
            return Err(err());
        }
        Ok(Self { agent, answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_round_trips_through_text() {
        let label = AnswerLabel::new(3, 12);
        assert_eq!(label.to_string(), "agent3.12");
        assert_eq!("agent3.12".parse::<AnswerLabel>(), Ok(label));
    }

    #[test]
    fn bad_labels_are_rejected() {
        for bad in [
            "agent",
            "agent1",
            "agent0.1",
            "agent1.0",
            "bob1.1",
            "agent1.x",
            "",
            "agent-1.1",
        ] {
            assert!(bad.parse::<AnswerLabel>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn session_ids_must_be_path_safe() {
        assert!(SessionId::parse("20261124-101500-ab12").is_ok());
        assert!(SessionId::parse("../etc").is_err());
        assert!(SessionId::parse("a/b").is_err());
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse(".hidden").is_err());
    }
}
