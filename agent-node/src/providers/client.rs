//! Where and how a backend's calls go: the [`Target`] (spec, URL, API key, parsed
//! `extra_body`, the shared HTTP client) that every wire format's `stream()` receives, the
//! process-wide [`http_client`], and how the API key is found and sent.
//!
//! The wire-format modules take a `&Target` rather than the [`super::Backend`] that owns it,
//! so they never import the module that dispatches to them (`providers/` has no import circle).
//!
//! Key requirement: a key is required when the spec names an environment variable and either
//! the provider is a hosted preset (`key_required`), the provider is not a known preset, or the
//! variable differs from the preset's default (the user named it on purpose). Local servers
//! (vLLM, Ollama, ...) with their default variable unset are called without `Authorization`.

use std::fmt;
use std::time::Duration;

use conclave_protocol::config::{BackendSpec, WireFormat};
use conclave_protocol::presets;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};

use super::error::ProviderError;

/// The process-wide HTTP client. One client shares its connection pool across every agent of
/// the process (1000 concurrent agents must not open 1000 pools). It has a connect timeout but
/// no overall timeout, because a streamed answer may legitimately take minutes; stalls are the
/// turn worker's watchdog's business. It speaks HTTP/1.1 with keep-alive only: one connection
/// per stream, so hundreds of concurrent streams to one host are not queued behind an HTTP/2
/// server's concurrent-stream limit.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .http1_only()
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("conclave/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config(format!("could not build the HTTP client: {e}")))
}

/// Everything one call needs besides the request: the spec, the key read on this node, the
/// shared HTTP client, the URL and `extra_body`. Built once per backend.
pub struct Target {
    pub(crate) spec: BackendSpec,
    /// The header that carries the key (`Authorization: Bearer …`, `x-api-key`, `api-key`,
    /// `x-goog-api-key`, by wire format), marked sensitive; `None` when no key is used.
    pub(crate) auth: Option<(HeaderName, HeaderValue)>,
    /// The raw key, for backends that hand it to a child process (Claude Code).
    pub(crate) api_key: Option<ApiKey>,
    http: reqwest::Client,
    /// The full request URL (for Claude Code, the program), computed once.
    pub(crate) endpoint: String,
    /// `spec.extra_body`, parsed once.
    pub(crate) extra_body: Option<serde_json::Map<String, serde_json::Value>>,
}

impl fmt::Debug for Target {
    /// Never prints the key, only whether there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("wire", &self.spec.wire)
            .field("provider", &self.spec.provider)
            .field("model", &self.spec.model)
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Resolves the API key through `env` and parses `extra_body`; `endpoint` is the URL the
    /// wire format computed. A missing required key is [`ProviderError::MissingApiKey`], a
    /// bad `extra_body` [`ProviderError::Config`].
    pub(crate) fn new(
        spec: &BackendSpec,
        endpoint: String,
        http: reqwest::Client,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ProviderError> {
        let extra_body = parse_extra_body(spec)?;
        let api_key = resolve_key(spec, env)?;
        let auth = match &api_key {
            Some(key) => auth_header(spec.wire, key)?,
            None => None,
        };
        Ok(Self {
            spec: spec.clone(),
            auth,
            api_key,
            http,
            endpoint,
            extra_body,
        })
    }

    /// A JSON POST to `url` with the key header and `Accept: text/event-stream`: the start of
    /// every HTTP streaming call, whatever the wire format.
    pub(crate) fn post_json(&self, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body);
        if let Some((name, value)) = &self.auth {
            request = request.header(name.clone(), value.clone());
        }
        request
    }
}

/// An API key read on this node. Never printed: `Debug` shows only that a key exists.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The header each wire format carries its key in.
fn auth_header(
    wire: WireFormat,
    key: &ApiKey,
) -> Result<Option<(HeaderName, HeaderValue)>, ProviderError> {
    let (name, text) = match wire {
        WireFormat::OpenAiChat | WireFormat::OpenAiResponses => {
            (AUTHORIZATION, format!("Bearer {}", key.expose()))
        }
        WireFormat::Anthropic => (
            HeaderName::from_static("x-api-key"),
            key.expose().to_owned(),
        ),
        WireFormat::Gemini => (
            HeaderName::from_static("x-goog-api-key"),
            key.expose().to_owned(),
        ),
        WireFormat::AzureOpenAi => (HeaderName::from_static("api-key"), key.expose().to_owned()),
        WireFormat::ClaudeCode => return Ok(None),
    };
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        ProviderError::Config(
            "the API key contains characters that cannot be sent in an HTTP header".to_owned(),
        )
    })?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

fn parse_extra_body(
    spec: &BackendSpec,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, ProviderError> {
    let Some(text) = spec.extra_body.as_deref() else {
        return Ok(None);
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ProviderError::Config(format!(
            "extra_body of provider `{}` must be a JSON object",
            spec.provider
        ))),
        Err(e) => Err(ProviderError::Config(format!(
            "extra_body of provider `{}` is not valid JSON: {e}",
            spec.provider
        ))),
    }
}

/// See the module docs for when a key is required.
fn key_required(spec: &BackendSpec, env_var: &str) -> bool {
    match presets::preset(&spec.provider) {
        Some(preset) => preset.key_required || preset.api_key_env != Some(env_var),
        None => true,
    }
}

fn resolve_key(
    spec: &BackendSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ApiKey>, ProviderError> {
    let Some(env_var) = spec.api_key_env.as_deref() else {
        return Ok(None);
    };
    let key = env(env_var).filter(|k| !k.trim().is_empty());
    let Some(key) = key else {
        if key_required(spec, env_var) {
            return Err(ProviderError::MissingApiKey {
                provider: spec.provider.clone(),
                env_var: env_var.to_owned(),
            });
        }
        tracing::debug!(
            provider = %spec.provider,
            env_var,
            "no API key set; calling without Authorization"
        );
        return Ok(None);
    };
    Ok(Some(ApiKey(key.trim().to_owned())))
}
