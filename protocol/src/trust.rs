//! What a node's operator lets an untrusted config do with the node's provider keys.
//!
//! A config that arrives over HTTP (`conclave server --http`) or over the cluster (an agent
//! spec sent to an agent node) is written by someone else than the operator of the node that
//! holds the API keys. Such a config may only name:
//!
//! - **key variables** the operator allows: those of the provider presets, those named by the
//!   operator's own config, and those given with `--allow-key-env VAR`;
//! - **base URLs** the operator allows: a prefix given with `--allow-base-url PREFIX`, a base
//!   URL of the operator's own config, or the default URL of a *hosted* preset (an official API
//!   host such as `https://api.openai.com/v1`) — the latter only together with that preset's
//!   own key variable or with no key, so a client cannot send the Groq key to the OpenAI host or
//!   any key to a host of its choosing. Local presets (`vllm`, `ollama`, ...) default to the
//!   node's own loopback ports; a client reaching those is a request forgery, so they need the
//!   operator's `--allow-base-url` like any other URL;
//! - for the `claude_code` backend, whose "base URL" names a program to run: only the default
//!   program (`claude` on `PATH`) or a program the operator allowed with `--allow-base-url`
//!   (matched whole, never as a prefix).
//!
//! Prefixes match at a boundary: `https://llm.example.com/v1` allows
//! `https://llm.example.com/v1/` and `https://llm.example.com/v1?x`, never
//! `https://llm.example.com/v10` or `https://llm.example.com.evil.net`. Scheme and host compare
//! without regard to ASCII case.
//!
//! Errors name the rule and the client's own value (the variable name or URL the client wrote),
//! never a value read from the node's environment or files.

use std::collections::BTreeSet;

use crate::config::{BackendSpec, WireFormat};
use crate::presets::PRESETS;

/// The program the `claude_code` backend runs when a config names none.
pub const DEFAULT_CLAUDE_CODE_PROGRAM: &str = "claude";

/// Why an untrusted backend was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error(
        "the key variable `{var}` is not allowed here: a submitted config may only name the key variables of the provider presets, of the operator's own config, or given with --allow-key-env"
    )]
    KeyEnv { var: String },
    #[error(
        "the base URL `{url}` is not allowed here: a submitted config may only use the default URL of a hosted provider preset (with that provider's own key), a base URL of the operator's own config, or a prefix given with --allow-base-url"
    )]
    BaseUrl { url: String },
    #[error(
        "the claude_code program `{program}` is not allowed here: a submitted config may only run `{DEFAULT_CLAUDE_CODE_PROGRAM}` from PATH or a program the operator allowed with --allow-base-url"
    )]
    Program { program: String },
}

/// The operator's allow-lists for configs it did not write. Built from the presets, then
/// widened by the operator's flags and own config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderAllowList {
    key_envs: BTreeSet<String>,
    base_url_prefixes: BTreeSet<String>,
}

impl Default for ProviderAllowList {
    fn default() -> Self {
        Self::presets()
    }
}

impl ProviderAllowList {
    /// Only what the presets name: their key variables, and the default URLs of hosted presets
    /// (with their own keys).
    pub fn presets() -> Self {
        ProviderAllowList {
            key_envs: PRESETS
                .iter()
                .filter_map(|p| p.api_key_env.map(str::to_owned))
                .collect(),
            base_url_prefixes: BTreeSet::new(),
        }
    }

    /// Allows one more key variable (`--allow-key-env VAR`).
    pub fn allow_key_env(&mut self, var: impl Into<String>) -> &mut Self {
        self.key_envs.insert(var.into());
        self
    }

    /// Allows one more base-URL prefix (`--allow-base-url PREFIX`); for `claude_code`, one more
    /// program (matched whole).
    pub fn allow_base_url(&mut self, prefix: impl Into<String>) -> &mut Self {
        let prefix = prefix.into();
        let trimmed = prefix.trim().trim_end_matches('/');
        if !trimmed.is_empty() {
            self.base_url_prefixes.insert(trimmed.to_owned());
        }
        self
    }

    /// Allows what a backend of the operator's own config uses: its key variable and its base
    /// URL.
    pub fn allow_backend(&mut self, spec: &BackendSpec) -> &mut Self {
        if let Some(var) = &spec.api_key_env {
            self.allow_key_env(var.clone());
        }
        self.allow_base_url(spec.base_url.clone())
    }

    /// Whether `var` may be named by a submitted config.
    pub fn key_env_allowed(&self, var: &str) -> bool {
        self.key_envs.contains(var)
    }

    /// The key variables allowed, sorted (for a startup log line).
    pub fn key_envs(&self) -> impl Iterator<Item = &str> {
        self.key_envs.iter().map(String::as_str)
    }

    /// The base-URL prefixes the operator allowed, sorted.
    pub fn base_url_prefixes(&self) -> impl Iterator<Item = &str> {
        self.base_url_prefixes.iter().map(String::as_str)
    }

    /// Checks a backend of a config this node's operator did not write.
    pub fn check(&self, spec: &BackendSpec) -> Result<(), TrustError> {
        if let Some(var) = &spec.api_key_env
            && !self.key_env_allowed(var)
        {
            return Err(TrustError::KeyEnv { var: var.clone() });
        }
        if spec.wire == WireFormat::ClaudeCode {
            let program = spec.base_url.trim();
            if program == DEFAULT_CLAUDE_CODE_PROGRAM
                || self.base_url_prefixes.iter().any(|p| p == program)
            {
                return Ok(());
            }
            return Err(TrustError::Program {
                program: spec.base_url.clone(),
            });
        }
        if self
            .base_url_prefixes
            .iter()
            .any(|prefix| url_has_prefix(&spec.base_url, prefix))
            || self.hosted_default(spec)
        {
            return Ok(());
        }
        Err(TrustError::BaseUrl {
            url: spec.base_url.clone(),
        })
    }

    /// The backend talks to a hosted preset's default URL, with that preset's key or none.
    fn hosted_default(&self, spec: &BackendSpec) -> bool {
        PRESETS.iter().filter(|p| p.key_required).any(|p| {
            p.base_url
                .is_some_and(|default| same_url(&spec.base_url, default))
                && match &spec.api_key_env {
                    None => true,
                    Some(var) => p.api_key_env == Some(var.as_str()),
                }
        })
    }
}

/// `url` starts with `prefix` at a path boundary; scheme and host compare case-insensitively.
pub fn url_has_prefix(url: &str, prefix: &str) -> bool {
    let (url_origin, url_rest) = split_origin(url.trim());
    let (prefix_origin, prefix_rest) = split_origin(prefix.trim().trim_end_matches('/'));
    if !url_origin.eq_ignore_ascii_case(prefix_origin) {
        return false;
    }
    match url_rest.strip_prefix(prefix_rest) {
        Some(after) => {
            after.is_empty() || prefix_rest.ends_with('/') || after.starts_with(['/', '?', '#'])
        }
        None => false,
    }
}

fn same_url(a: &str, b: &str) -> bool {
    let (ao, ar) = split_origin(a.trim().trim_end_matches('/'));
    let (bo, br) = split_origin(b.trim().trim_end_matches('/'));
    ao.eq_ignore_ascii_case(bo) && ar == br
}

/// `scheme://authority` and the rest (path, query, fragment).
fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map(|i| after_scheme + i)
        .unwrap_or(url.len());
    url.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendOptions;

    fn spec(wire: WireFormat, base_url: &str, key: Option<&str>) -> BackendSpec {
        BackendSpec {
            wire,
            provider: "x".into(),
            model: "m".into(),
            base_url: base_url.into(),
            api_key_env: key.map(str::to_owned),
            temperature: None,
            top_p: None,
            max_tokens: None,
            extra_body: None,
            max_retries: 2,
            options: BackendOptions::default(),
        }
    }

    #[test]
    fn prefixes_match_only_at_a_boundary() {
        let p = "https://llm.example.com/v1";
        assert!(url_has_prefix("https://llm.example.com/v1", p));
        assert!(url_has_prefix("https://LLM.example.com/v1/", p));
        assert!(url_has_prefix("https://llm.example.com/v1?x=1", p));
        assert!(!url_has_prefix("https://llm.example.com/v10", p));
        assert!(!url_has_prefix("https://llm.example.com.evil.net/v1", p));
        assert!(!url_has_prefix("http://llm.example.com/v1", p));
        assert!(url_has_prefix(
            "http://127.0.0.1:9000/v1",
            "http://127.0.0.1:9000/"
        ));
        assert!(!url_has_prefix(
            "http://127.0.0.1:90000/v1",
            "http://127.0.0.1:9000"
        ));
    }

    #[test]
    fn hosted_defaults_only_with_their_own_key() {
        let allow = ProviderAllowList::presets();
        let openai = "https://api.openai.com/v1";
        assert!(
            allow
                .check(&spec(
                    WireFormat::OpenAiResponses,
                    openai,
                    Some("OPENAI_API_KEY")
                ))
                .is_ok()
        );
        assert_eq!(
            allow.check(&spec(WireFormat::OpenAiChat, openai, Some("GROQ_API_KEY"))),
            Err(TrustError::BaseUrl { url: openai.into() })
        );
        // A preset's key variable, a host of the client's choosing: refused.
        assert!(matches!(
            allow.check(&spec(
                WireFormat::OpenAiChat,
                "https://attacker.example/v1",
                Some("OPENAI_API_KEY")
            )),
            Err(TrustError::BaseUrl { .. })
        ));
        // Local presets' loopback defaults need the operator.
        assert!(
            allow
                .check(&spec(
                    WireFormat::OpenAiChat,
                    "http://localhost:8000/v1",
                    None
                ))
                .is_err()
        );
    }

    #[test]
    fn unknown_key_variables_are_refused_by_name() {
        let mut allow = ProviderAllowList::presets();
        allow.allow_base_url("http://127.0.0.1:7399/v1");
        let bad = spec(
            WireFormat::OpenAiChat,
            "http://127.0.0.1:7399/v1",
            Some("HOME"),
        );
        let err = allow.check(&bad).unwrap_err();
        assert_eq!(err, TrustError::KeyEnv { var: "HOME".into() });
        assert!(err.to_string().contains("--allow-key-env"));
        allow.allow_key_env("HOME");
        assert!(allow.check(&bad).is_ok());
    }

    #[test]
    fn claude_code_programs_match_whole() {
        let mut allow = ProviderAllowList::presets();
        assert!(
            allow
                .check(&spec(WireFormat::ClaudeCode, "claude", None))
                .is_ok()
        );
        let other = spec(WireFormat::ClaudeCode, "/bin/sh", None);
        assert!(matches!(
            allow.check(&other),
            Err(TrustError::Program { .. })
        ));
        allow.allow_base_url("/bin");
        assert!(allow.check(&other).is_err(), "a program is never a prefix");
        allow.allow_base_url("/bin/sh");
        assert!(allow.check(&other).is_ok());
    }

    #[test]
    fn the_operators_own_backends_are_allowed() {
        let mut allow = ProviderAllowList::presets();
        let own = spec(
            WireFormat::OpenAiChat,
            "https://llm.internal/v1",
            Some("INTERNAL_KEY"),
        );
        assert!(allow.check(&own).is_err());
        allow.allow_backend(&own);
        assert!(allow.check(&own).is_ok());
    }
}
