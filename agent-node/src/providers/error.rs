//! Why a provider call failed: [`ProviderError`], built from an HTTP status and its retry
//! headers, a transport failure, or a problem in the stream, with messages that say what the
//! user can do. The ground floor of `providers/`: it imports nothing from its siblings, and
//! [`super::retry`] classifies what it defines (the quota test lives here because both the
//! error message and the retry policy use it).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

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
        429 if quota_exhausted(body) => {
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

/// A 429 that means "you are out of money", not "slow down" (OpenAI `insufficient_quota`,
/// spend limits, billing hard limits).
pub(crate) fn quota_exhausted(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "insufficient_quota",
        "spend limit",
        "spending limit",
        "billing",
    ]
    .iter()
    .any(|marker| lower.contains(marker))
}

/// The start of a payload, for error messages.
pub(crate) fn snippet(text: &str) -> &str {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

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
}
