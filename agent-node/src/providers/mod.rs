//! Provider backends: one folder per wire format, behind one [`Backend`] handle.
//!
//! A backend is built once per agent from its [`BackendSpec`] (which crossed the cluster and so
//! holds no secrets): [`Backend::new`] reads the API key on this node and fails early, before
//! any request, when a required key is missing or the spec cannot work (a bad `base_url` or
//! `extra_body`).
//! [`Backend::stream`] then starts one streaming call and yields normalised
//! [`StreamChunk`](conclave_protocol::StreamChunk)s, which [`crate::accumulate::TurnOutput`]
//! folds into the call's result.
//!
//! Errors are classified by [`ProviderError`] so that [`retry::RetryPolicy`] can decide, as
//! the official SDKs do, whether a failed call is worth repeating.
//!
//! # Layout
//!
//! The shared pieces, each importing only those listed before it:
//!
//! | module | what |
//! | --- | --- |
//! | [`error`] | [`ProviderError`] and the HTTP error details (retry hints, bounded bodies) |
//! | [`retry`] | when a failed call is repeated, and the one retry loop |
//! | [`sse`] | server-sent events over HTTP |
//! | [`client`] | the [`client::Target`] a call goes to, the API key, the HTTP client |
//! | [`stream`] | the parser trait, the one stream adapter, the start of an HTTP stream |
//! | [`openai`] | facts about OpenAI models that both OpenAI wire formats use |
//!
//! Then one folder per wire format, each with its request building and `stream()` in
//! `mod.rs`, its parser state machine in `parse.rs` and its wire types in `wire.rs` (tests in
//! `tests.rs`): [`openai_chat`] (with Azure's URLs in [`openai_chat::azure`]),
//! [`openai_responses`], [`anthropic`], [`gemini`] and [`claude_code`] (a child process
//! instead of HTTP). A wire format imports the shared pieces, never another wire format nor
//! this module, so `providers/` has no import circle.

pub mod anthropic;
pub mod claude_code;
pub mod client;
pub mod error;
pub mod gemini;
pub mod openai;
pub mod openai_chat;
pub mod openai_responses;
pub mod retry;
pub mod sse;
pub mod stream;

use std::fmt;

use conclave_protocol::config::{BackendSpec, WireFormat};

pub use client::{ApiKey, http_client};
pub use error::{MAX_ERROR_BODY_BYTES, ProviderError};
pub use stream::ChunkStream;

use crate::llm::ChatRequest;
use client::Target;

/// A configured provider backend: the spec, the API key read on this node and the shared
/// HTTP client. Cheap to share behind an `Arc`; `stream` takes `&self`.
pub struct Backend {
    target: Target,
}

impl fmt::Debug for Backend {
    /// Never prints the key, only whether there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("target", &self.target)
            .finish()
    }
}

impl Backend {
    /// Checks the spec and resolves the API key through `env` (a lookup function, so tests and
    /// remote nodes can inject it). A missing required key is [`ProviderError::MissingApiKey`]
    /// here, before any call; a spec that cannot work (bad URL or `extra_body`) is
    /// [`ProviderError::Config`].
    pub fn new(
        spec: &BackendSpec,
        http: reqwest::Client,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ProviderError> {
        let endpoint = match spec.wire {
            WireFormat::OpenAiChat => openai_chat::endpoint(&spec.base_url),
            WireFormat::OpenAiResponses => openai_responses::endpoint(spec)?,
            WireFormat::Anthropic => anthropic::endpoint(spec)?,
            WireFormat::Gemini => gemini::endpoint(spec)?,
            WireFormat::AzureOpenAi => openai_chat::azure::endpoint(spec)?,
            WireFormat::ClaudeCode => claude_code::endpoint(spec)?,
        };
        if spec.wire != WireFormat::ClaudeCode
            && !spec.base_url.starts_with("http://")
            && !spec.base_url.starts_with("https://")
        {
            return Err(ProviderError::Config(format!(
                "base_url `{}` of provider `{}` must start with http:// or https://",
                spec.base_url, spec.provider
            )));
        }
        Ok(Self {
            target: Target::new(spec, endpoint, http, env)?,
        })
    }

    /// The API key read on this node, if any.
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.target.api_key.as_ref()
    }

    /// The spec this backend was built from.
    pub fn spec(&self) -> &BackendSpec {
        &self.target.spec
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.target.endpoint
    }

    /// Whether the provider runs tools of its own inside a call and reports them in the
    /// stream ([`StreamChunk::ToolCall`](conclave_protocol::StreamChunk::ToolCall) and
    /// `ToolResult` chunks): the Claude Code CLI's Read, Bash, ... Those are shown, never
    /// executed by conclave.
    pub fn runs_own_tools(&self) -> bool {
        self.target.spec.wire == WireFormat::ClaudeCode
    }

    /// Starts one streaming call. Errors before the first byte (HTTP status, connect) come
    /// back here; later ones as the stream's last item.
    pub async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let target = &self.target;
        match target.spec.wire {
            WireFormat::OpenAiChat | WireFormat::AzureOpenAi => {
                openai_chat::stream(target, request).await
            }
            WireFormat::OpenAiResponses => openai_responses::stream(target, request).await,
            WireFormat::Anthropic => anthropic::stream(target, request).await,
            WireFormat::Gemini => gemini::stream(target, request).await,
            WireFormat::ClaudeCode => claude_code::stream(target, request).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_protocol::presets;

    fn spec(provider: &str, env: Option<&str>) -> BackendSpec {
        BackendSpec {
            wire: WireFormat::OpenAiChat,
            provider: provider.into(),
            model: "m".into(),
            base_url: "http://127.0.0.1:1/v1/".into(),
            api_key_env: env.map(str::to_owned),
            temperature: None,
            top_p: None,
            max_tokens: None,
            extra_body: None,
            max_retries: 2,
            options: Default::default(),
        }
    }

    #[test]
    fn key_resolution() {
        let client = reqwest::Client::new();
        let none = |_: &str| None;
        // Hosted preset: required.
        let err = Backend::new(
            &spec("openai", Some("OPENAI_API_KEY")),
            client.clone(),
            &none,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("OPENAI_API_KEY"), "{err}");
        // Local preset with its default variable: optional.
        assert!(Backend::new(&spec("vllm", Some("VLLM_API_KEY")), client.clone(), &none).is_ok());
        // Local preset with a variable the user chose: required.
        assert!(matches!(
            Backend::new(&spec("vllm", Some("MY_VLLM_KEY")), client.clone(), &none),
            Err(ProviderError::MissingApiKey { .. })
        ));
        // No variable at all: no key.
        assert!(Backend::new(&spec("chatcompletion", None), client, &none).is_ok());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let backend = Backend::new(
            &spec("openai", Some("OPENAI_API_KEY")),
            reqwest::Client::new(),
            &|_| Some("sk-secret-123".to_owned()),
        );
        let text = format!("{backend:?}");
        assert!(!text.contains("sk-secret-123"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn every_preset_builds_a_backend_on_its_wire_format() {
        for preset in presets::PRESETS {
            let mut s = spec(preset.name, preset.api_key_env);
            s.wire = preset.wire;
            s.base_url = match preset.wire {
                WireFormat::AzureOpenAi => "https://r.openai.azure.com".into(),
                WireFormat::ClaudeCode => "/opt/bin/claude".into(),
                _ => preset.base_url.unwrap_or("http://127.0.0.1:1/v1").into(),
            };
            let backend = Backend::new(&s, reqwest::Client::new(), &|_| Some("k".to_owned()))
                .unwrap_or_else(|err| panic!("{}: {err}", preset.name));
            let expected = match preset.wire {
                WireFormat::OpenAiChat => "/chat/completions",
                WireFormat::OpenAiResponses => "/responses",
                WireFormat::Anthropic => "/messages",
                WireFormat::Gemini => "/models/m:streamGenerateContent?alt=sse",
                WireFormat::AzureOpenAi => "/openai/deployments/m/chat/completions?api-version=",
                WireFormat::ClaudeCode => "/opt/bin/claude",
            };
            assert!(
                backend.endpoint().contains(expected),
                "{}: {}",
                preset.name,
                backend.endpoint()
            );
            assert_eq!(
                backend.target.auth.is_some(),
                preset.api_key_env.is_some() && preset.wire != WireFormat::ClaudeCode,
                "{}",
                preset.name
            );
        }
        let openai = Backend::new(
            &BackendSpec {
                wire: WireFormat::OpenAiResponses,
                base_url: "https://api.openai.com/v1".into(),
                ..spec("openai", Some("OPENAI_API_KEY"))
            },
            reqwest::Client::new(),
            &|_| Some("k".to_owned()),
        )
        .unwrap();
        assert_eq!(openai.endpoint(), "https://api.openai.com/v1/responses");
    }

    #[test]
    fn bad_extra_body_is_a_config_error() {
        let mut s = spec("vllm", None);
        s.extra_body = Some("[1,2]".into());
        assert!(matches!(
            Backend::new(&s, reqwest::Client::new(), &|_| None),
            Err(ProviderError::Config(_))
        ));
    }
}
