//! Azure OpenAI deployments: the Chat Completions wire format at Azure's URLs.
//!
//! Azure serves OpenAI models from per-resource endpoints. The user gives the resource URL as
//! `base_url` (`https://{resource}.openai.azure.com`; the preset has no default) and the
//! deployment name as `model`; the key travels in the `api-key` header (the backend's
//! [`Target`](crate::providers::client::Target) sets it).
//!
//! - Classic API: `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=V`,
//!   with `V` = `options.api_version` or [`DEFAULT_API_VERSION`] (the current GA version). A
//!   `base_url` that already ends in `/openai` is not given a second one.
//! - Azure's v1 API: a `base_url` ending in `/openai/v1` is called like OpenAI itself,
//!   `{base_url}/chat/completions` with the deployment as `model` and no `api-version`.
//!
//! The body and the stream are those of Chat Completions ([`super`]: the backend dispatches
//! Azure there), which already copes with what Azure adds (a first chunk with `choices: []`
//! and `prompt_filter_results`, content filter results on every chunk, `finish_reason:
//! content_filter`). Whether the deployment is a
//! reasoning model is judged from the deployment name, which usually is the model's name.
//! [`super::request_body`] also turns the shared `reasoning_effort` and `verbosity`
//! options into their Chat Completions parameters (unless `extra_body` sets them) and logs
//! that reasoning summaries and the built-in tools, which need the Responses API, are ignored.

use conclave_protocol::config::BackendSpec;

use crate::providers::error::ProviderError;

/// The `api-version` sent when the config names none: the latest generally available data
/// plane version of the classic API.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The chat completions URL of the deployment (see the module docs). Fails, before any call,
/// when `base_url` is missing or the deployment name or API version cannot be put in a URL.
pub(crate) fn endpoint(spec: &BackendSpec) -> Result<String, ProviderError> {
    let base = spec.base_url.trim().trim_end_matches('/');
    if base.is_empty() {
        return Err(ProviderError::Config(format!(
            "provider `{}` (azure_openai) needs base_url: the resource endpoint, e.g. \
             https://my-resource.openai.azure.com",
            spec.provider
        )));
    }
    if base.ends_with("/openai/v1") {
        return Ok(super::endpoint(base));
    }
    let deployment = spec.model.trim();
    if deployment.is_empty() || !deployment.chars().all(is_name_char) {
        return Err(ProviderError::Config(format!(
            "provider `{}` (azure_openai): model must be the deployment name (letters, digits, \
             `-`, `_`, `.`), got `{}`",
            spec.provider, spec.model
        )));
    }
    let api_version = spec
        .options
        .api_version
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_API_VERSION);
    if !api_version.chars().all(is_name_char) {
        return Err(ProviderError::Config(format!(
            "provider `{}` (azure_openai): api_version `{api_version}` is not a valid version \
             (e.g. {DEFAULT_API_VERSION})",
            spec.provider
        )));
    }
    let resource = base.strip_suffix("/openai").unwrap_or(base);
    Ok(format!(
        "{resource}/openai/deployments/{deployment}/chat/completions?api-version={api_version}"
    ))
}

/// Characters Azure allows in deployment names, which are also all an API version uses; none
/// of them needs escaping in a URL.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_protocol::config::WireFormat;

    fn spec(base_url: &str, model: &str, api_version: Option<&str>) -> BackendSpec {
        BackendSpec {
            wire: WireFormat::AzureOpenAi,
            provider: "azure_openai".into(),
            model: model.into(),
            base_url: base_url.into(),
            api_key_env: None,
            temperature: None,
            top_p: None,
            max_tokens: None,
            extra_body: None,
            max_retries: 2,
            options: conclave_protocol::config::BackendOptions {
                api_version: api_version.map(str::to_owned),
                ..Default::default()
            },
        }
    }

    fn url(base_url: &str, model: &str, api_version: Option<&str>) -> Result<String, String> {
        endpoint(&spec(base_url, model, api_version)).map_err(|e| e.to_string())
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            url("https://r.openai.azure.com/", "gpt-4o", None).as_deref(),
            Ok(
                "https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
            )
        );
        assert_eq!(
            url(
                "https://r.openai.azure.com/openai",
                "dep.1",
                Some("2025-04-01-preview")
            )
            .as_deref(),
            Ok(
                "https://r.openai.azure.com/openai/deployments/dep.1/chat/completions?api-version=2025-04-01-preview"
            )
        );
        assert_eq!(
            url(
                "https://r.openai.azure.com/openai/v1/",
                "any name",
                Some("x")
            )
            .as_deref(),
            Ok("https://r.openai.azure.com/openai/v1/chat/completions")
        );
        assert!(url("", "gpt-4o", None).is_err_and(|e| e.contains("needs base_url")));
        assert!(url("https://r", "a/b", None).is_err_and(|e| e.contains("deployment name")));
        assert!(url("https://r", "a", Some("1&x=2")).is_err_and(|e| e.contains("api_version")));
    }
}
