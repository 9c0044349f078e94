//! Provider backends: one module per wire format, behind one [`Backend`] handle.
//!
//! A backend is built once per agent from its [`BackendSpec`] (which crossed the cluster and so
//! holds no secrets): [`Backend::new`] reads the API key on this node and fails early, before
//! any request, when a required key is missing or the spec cannot work (a bad `base_url` or
//! `extra_body`).
//! [`Backend::stream`] then starts one streaming call and yields normalised
//! [`StreamChunk`]s, which [`crate::accumulate::TurnOutput`] folds into the call's result.
//!
//! Errors are classified by [`ProviderError`] so that [`crate::retry::RetryPolicy`] can decide,
//! as the official SDKs do, whether a failed call is worth repeating.
//!
//! Key requirement: a key is required when the spec names an environment variable and either
//! the provider is a hosted preset (`key_required`), the provider is not a known preset, or the
//! variable differs from the preset's default (the user named it on purpose). Local servers
//! (vLLM, Ollama, ...) with their default variable unset are called without `Authorization`.

pub mod anthropic;
pub mod azure_openai;
pub mod claude_code;
pub mod gemini;
pub mod openai_chat;
pub mod openai_responses;

use std::fmt;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use conclave_protocol::StreamChunk;
use conclave_protocol::config::{BackendSpec, WireFormat};
use conclave_protocol::presets;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::llm::ChatRequest;

/// The chunks of one streaming call. Errors after the first byte (connection lost, in-stream
/// error, malformed data, truncation) arrive as the stream's last item.
pub type ChunkStream =
    Pin<Box<dyn futures::Stream<Item = Result<StreamChunk, ProviderError>> + Send>>;

/// Error bodies are kept for diagnosis, but bounded: a misbehaving server must not make an
/// error (which is logged and sent to the coordinator) megabytes long.
pub const MAX_ERROR_BODY_BYTES: usize = 4096;

/// Why a provider call failed. Each message says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The backend needs an API key and the environment variable holding it is not set.
    #[error(
        "no API key for provider `{provider}`: set the environment variable {env_var} on the node \
         that runs this agent (e.g. `export {env_var}=...`, or a line `{env_var}=...` in .env)"
    )]
    MissingApiKey { provider: String, env_var: String },

    /// The backend configuration cannot work (bad `base_url` or `extra_body`, ...).
    #[error("backend configuration error: {0}")]
    Config(String),

    /// The provider answered with a non-success HTTP status before streaming anything.
    #[error("{}", http_error_message(provider, *status, body))]
    Http {
        /// The preset name, so the message can say which provider answered.
        provider: String,
        status: u16,
        /// The response body, truncated to [`MAX_ERROR_BODY_BYTES`].
        body: String,
        /// From `retry-after-ms` or `retry-after` (seconds or an HTTP date).
        retry_after: Option<Duration>,
        /// From `x-should-retry: true|false`, which overrides the status classification.
        should_retry: Option<bool>,
    },

    /// The connection could not be made, or broke while the body was streaming.
    #[error("{0}")]
    Connect(String),

    /// The provider reported an error inside a stream that had started with HTTP 200.
    #[error(
        "the provider reported an error mid-stream ({kind}{}): {message}",
        code.as_deref().map(|c| format!(", code {c}")).unwrap_or_default()
    )]
    InStream {
        kind: String,
        message: String,
        code: Option<String>,
    },

    /// A data line that is not valid JSON of the expected shape.
    #[error(
        "the provider sent data conclave cannot parse: {0}; if base_url points to a proxy, \
         check that it speaks this backend's wire format"
    )]
    Malformed(String),

    /// The stream ended without `[DONE]`, without a finish reason and without an error.
    #[error(
        "the stream ended before the response was complete (no finish reason, no [DONE]); \
         the connection was probably cut by the server or a proxy"
    )]
    Truncated,
}

impl ProviderError {
    /// Builds an [`ProviderError::Http`] from a response's status, headers and body, parsing
    /// the retry hints the official SDKs honour.
    pub fn from_http(provider: &str, status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        ProviderError::Http {
            provider: provider.to_owned(),
            status,
            body: truncate_body(body),
            retry_after: parse_retry_after(headers, SystemTime::now()),
            should_retry: parse_should_retry(headers),
        }
    }

    /// Reads (at most [`MAX_ERROR_BODY_BYTES`] of) a non-success response and classifies it.
    pub async fn from_response(provider: &str, mut response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let body = read_bounded(&mut response, MAX_ERROR_BODY_BYTES).await;
        let error = Self::from_http(provider, status, &headers, &body);
        tracing::warn!(provider, status, error = %error, "provider returned an HTTP error");
        error
    }

    /// Classifies a `reqwest` error raised while sending a request or reading its body.
    pub fn from_transport(provider: &str, url: &str, error: reqwest::Error) -> Self {
        let timed_out = error.is_timeout();
        let while_body = error.is_body() || error.is_decode();
        let chain = error_chain(&error.without_url());
        let message = if timed_out {
            format!(
                "timed out connecting to {provider} at {url}: {chain}; check base_url and the network"
            )
        } else if while_body {
            format!("connection to {provider} at {url} broke while streaming: {chain}")
        } else {
            format!(
                "could not reach {provider} at {url}: {chain}; check base_url and that the server is running"
            )
        };
        ProviderError::Connect(message)
    }

    /// The HTTP status, for errors that have one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ProviderError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Reads at most `limit` bytes of a body; a read error just ends the body (the status is what
/// matters for an error response).
pub(crate) async fn read_bounded(response: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(bytes)) => body.extend_from_slice(&bytes),
            Ok(None) | Err(_) => break,
        }
    }
    body
}

fn truncate_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= MAX_ERROR_BODY_BYTES {
        return text.into_owned();
    }
    let mut end = MAX_ERROR_BODY_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `retry-after-ms` (milliseconds, OpenAI) wins over `retry-after` (seconds or an HTTP date).
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && let Ok(delay) = Duration::try_from_secs_f64(ms / 1000.0)
    {
        return Some(delay);
    }
    let value = header_str(headers, "retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_should_retry(headers: &HeaderMap) -> Option<bool> {
    match header_str(headers, "x-should-retry")? {
        v if v.eq_ignore_ascii_case("true") => Some(true),
        v if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The readable part of an error body: `error.message` of the JSON envelopes used by OpenAI,
/// Anthropic and Gemini (or a top-level `message`/`detail`), else the body itself.
pub(crate) fn error_body_summary(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(body) {
        let error = value.get("error").unwrap_or(&value);
        if let Some(text) = error.as_str() {
            return text.to_owned();
        }
        for key in ["message", "detail"] {
            if let Some(text) = error.get(key).and_then(|m| m.as_str()) {
                return text.to_owned();
            }
        }
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        "(empty body)".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn http_error_message(provider: &str, status: u16, body: &str) -> String {
    let hint = match status {
        401 => "; check that the API key is valid for this provider",
        403 => "; the API key has no access to this model or endpoint",
        404 => "; check the model name and base_url",
        429 if crate::retry::quota_exhausted(body) => {
            "; the account's quota or spend limit is exhausted: check its plan and billing"
        }
        408 | 409 | 429 => " (retryable)",
        s if s >= 500 => " (the provider failed; retryable)",
        _ => "",
    };
    format!(
        "HTTP {status} from {provider}: {}{hint}",
        error_body_summary(body)
    )
}

/// `reqwest` errors say little at the top level ("error sending request"); the cause chain
/// ("Connection refused") is what the user needs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

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

/// A configured provider backend: the spec, the API key read on this node and the shared
/// HTTP client. Cheap to share behind an `Arc`; `stream` takes `&self`.
pub struct Backend {
    spec: BackendSpec,
    /// The header that carries the key (`Authorization: Bearer …`, `x-api-key`, `api-key`,
    /// `x-goog-api-key`, by wire format), marked sensitive; `None` when no key is used.
    pub(crate) auth: Option<(HeaderName, HeaderValue)>,
    /// The raw key, for backends that hand it to a child process (Claude Code).
    pub(crate) api_key: Option<ApiKey>,
    http: reqwest::Client,
    /// The full request URL, computed once.
    endpoint: String,
    /// `spec.extra_body`, parsed once.
    extra_body: Option<serde_json::Map<String, serde_json::Value>>,
}

impl fmt::Debug for Backend {
    /// Never prints the key, only whether there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("wire", &self.spec.wire)
            .field("provider", &self.spec.provider)
            .field("model", &self.spec.model)
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
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
            WireFormat::AzureOpenAi => azure_openai::endpoint(spec)?,
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

    /// The API key read on this node, if any.
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }

    /// The spec this backend was built from.
    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Starts one streaming call. Errors before the first byte (HTTP status, connect) come
    /// back here; later ones as the stream's last item.
    pub async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        match self.spec.wire {
            WireFormat::OpenAiChat => openai_chat::stream(self, request).await,
            WireFormat::OpenAiResponses => openai_responses::stream(self, request).await,
            WireFormat::Anthropic => anthropic::stream(self, request).await,
            WireFormat::Gemini => gemini::stream(self, request).await,
            WireFormat::AzureOpenAi => azure_openai::stream(self, request).await,
            WireFormat::ClaudeCode => claude_code::stream(self, request).await,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderName;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                map.insert(name, value);
            }
        }
        map
    }

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
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after-ms", "1500")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(20));
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(20))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(20));
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "soon")]), now),
            None
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "-4")]), now),
            None
        );
    }

    #[test]
    fn should_retry_header() {
        assert_eq!(
            parse_should_retry(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            parse_should_retry(&headers(&[("x-should-retry", "False")])),
            Some(false)
        );
        assert_eq!(parse_should_retry(&headers(&[])), None);
    }

    #[test]
    fn http_message_uses_the_envelope() {
        let error = ProviderError::from_http(
            "groq",
            404,
            &HeaderMap::new(),
            br#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error"}}"#,
        );
        assert_eq!(
            error.to_string(),
            "HTTP 404 from groq: The model `x` does not exist; check the model name and base_url"
        );
        let plain = ProviderError::from_http("vllm", 502, &HeaderMap::new(), b"Bad Gateway\n");
        assert!(
            plain
                .to_string()
                .starts_with("HTTP 502 from vllm: Bad Gateway")
        );
    }

    #[test]
    fn long_bodies_are_truncated_on_a_char_boundary() {
        let body = "é".repeat(MAX_ERROR_BODY_BYTES);
        let ProviderError::Http { body, .. } =
            ProviderError::from_http("p", 500, &HeaderMap::new(), body.as_bytes())
        else {
            panic!("expected Http");
        };
        assert!(body.len() <= MAX_ERROR_BODY_BYTES + '…'.len_utf8());
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
                backend.auth.is_some(),
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
