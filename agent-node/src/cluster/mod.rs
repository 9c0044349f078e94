//! The agent-node side of the cluster: the [`host::AgentHost`] that hosts agents for a remote
//! orchestrator, the node's environment ([`NodeEnv`]) and the wire form of an agent's turn
//! limits ([`settings_from_limits`], [`limits_from_settings`]).
//!
//! The transport under it (node servers, join, cookie and TLS, heartbeat, frames) is the
//! `conclave-cluster` crate, shared with the orchestrator; what stays here needs the agent
//! crate's actors and turn settings. The host dials again after a lost link with
//! `conclave_cluster::heartbeat::Backoff`.
//!
//! Secrets: an agent node reads provider keys from its own environment (process environment
//! over `.env`, see [`NodeEnv`]) and announces only the *names* of the key variables it holds.

pub mod host;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use conclave_protocol::cluster::TurnLimits;

use crate::turn::TurnSettings;

/// The turn limits of a remote agent, as its node applies them.
pub fn settings_from_limits(limits: &TurnLimits) -> TurnSettings {
    TurnSettings {
        max_workflow_retries: limits.max_workflow_retries,
        turn_timeout: Duration::from_millis(limits.turn_timeout_ms.max(1)),
        stall_timeout: Duration::from_millis(limits.stall_timeout_ms.max(1)),
        max_restarts: limits.max_restarts,
        restart_window: Duration::from_millis(limits.restart_window_ms.max(1)),
    }
}

/// The wire form of an agent's turn settings (plus the provider connect timeout).
pub fn limits_from_settings(settings: &TurnSettings, connect_timeout: Duration) -> TurnLimits {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    TurnLimits {
        max_workflow_retries: settings.max_workflow_retries,
        turn_timeout_ms: ms(settings.turn_timeout),
        stall_timeout_ms: ms(settings.stall_timeout),
        connect_timeout_ms: ms(connect_timeout),
        max_restarts: settings.max_restarts,
        restart_window_ms: ms(settings.restart_window),
    }
}

/// An agent node's environment: the process environment over `dir/.env`.
///
/// The `.env` reader takes the common subset: `KEY=value` lines, an optional `export `
/// prefix, blank lines and `#` comments, values in matching single or double quotes (taken
/// literally), and ` # comments` after unquoted values. Lines it cannot read are skipped with
/// a warning naming the line (never its content, which may be a key).
#[derive(Debug, Clone, Default)]
pub struct NodeEnv {
    vars: HashMap<String, String>,
}

impl NodeEnv {
    pub fn from_process_and_dotenv(dir: &Path) -> Self {
        let mut vars = HashMap::new();
        let path = dir.join(".env");
        if let Ok(text) = std::fs::read_to_string(&path) {
            for (number, line) in text.lines().enumerate() {
                match parse_dotenv_line(line) {
                    Ok(Some((key, value))) => {
                        vars.insert(key, value);
                    }
                    Ok(None) => {}
                    Err(()) => tracing::warn!(
                        file = %path.display(),
                        line = number + 1,
                        "unreadable .env line skipped"
                    ),
                }
            }
        }
        vars.extend(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        );
        Self { vars }
    }

    pub fn from_map(vars: HashMap<String, String>) -> Self {
        Self { vars }
    }

    /// A variable's value; empty values count as unset.
    pub fn get(&self, key: &str) -> Option<String> {
        self.vars.get(key).filter(|v| !v.trim().is_empty()).cloned()
    }

    /// The names of the provider-key variables set here: every preset's key variable, and any
    /// other variable whose name ends in `_API_KEY`. Sorted, names only.
    pub fn provider_key_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .vars
            .keys()
            .filter(|name| {
                name.ends_with("_API_KEY")
                    || conclave_protocol::presets::PRESETS
                        .iter()
                        .any(|p| p.api_key_env == Some(name.as_str()))
            })
            .filter(|name| self.get(name).is_some())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn parse_dotenv_line(line: &str) -> Result<Option<(String, String)>, ()> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let Some((key, value)) = line.split_once('=') else {
        return Ok(None);
    };
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(());
    }
    let value = value.trim();
    let value = match value.chars().next() {
        Some(quote @ ('"' | '\'')) => {
            let rest = &value[1..];
            let end = rest.find(quote).ok_or(())?;
            rest[..end].to_owned()
        }
        _ => match value.find(" #") {
            Some(comment) => value[..comment].trim_end().to_owned(),
            None => value.to_owned(),
        },
    };
    Ok(Some((key.to_owned(), value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines() {
        assert_eq!(
            parse_dotenv_line("export OPENAI_API_KEY=\"sk x\""),
            Ok(Some(("OPENAI_API_KEY".into(), "sk x".into())))
        );
        assert_eq!(
            parse_dotenv_line("A=b # note"),
            Ok(Some(("A".into(), "b".into())))
        );
        assert_eq!(parse_dotenv_line("# c"), Ok(None));
        assert_eq!(parse_dotenv_line("BARE"), Ok(None));
        assert_eq!(parse_dotenv_line("A='unterminated"), Err(()));
    }

    #[test]
    fn only_key_names_are_announced() {
        let env = NodeEnv::from_map(HashMap::from([
            ("OPENAI_API_KEY".to_owned(), "sk-secret".to_owned()),
            ("CUSTOM_API_KEY".to_owned(), "x".to_owned()),
            ("EMPTY_API_KEY".to_owned(), " ".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ]));
        assert_eq!(
            env.provider_key_names(),
            vec!["CUSTOM_API_KEY".to_owned(), "OPENAI_API_KEY".to_owned()]
        );
    }

    #[test]
    fn limits_round_trip() {
        let settings = TurnSettings::default();
        let back = settings_from_limits(&limits_from_settings(&settings, Duration::from_secs(3)));
        assert_eq!(back.turn_timeout, settings.turn_timeout);
        assert_eq!(back.max_restarts, settings.max_restarts);
        assert_eq!(back.restart_window, settings.restart_window);
    }
}
