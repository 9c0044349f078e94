//! The Azure OpenAI backend over real HTTP: the deployment URL with its `api-version` query,
//! the `api-key` header, Azure's v1 URL, a streamed answer with Azure's content-filter
//! extras, and Azure's error envelope.

use crate::common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::{client, hello, run};
use conclave_agent::providers::{Backend, ProviderError};
use conclave_protocol::config::{BackendSpec, WireFormat};
use serde_json::Value;

/// A request as the server saw it, query string included (the shared fake server keeps only
/// the path).
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct Answer {
    status: u16,
    content_type: &'static str,
    body: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn answer(
    State(answer): State<Answer>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer.seen.lock().expect("lock").push(Seen {
        uri: uri.to_string(),
        headers,
        body,
    });
    let status = StatusCode::from_u16(answer.status).expect("valid status");
    (status, [("content-type", answer.content_type)], answer.body).into_response()
}

/// Starts a server answering every request with `body`; returns its root URL (no path) and
/// what it saw.
async fn serve(
    status: u16,
    content_type: &'static str,
    body: &'static str,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = Answer {
        status,
        content_type,
        body,
        seen: Arc::clone(&seen),
    };
    let router = Router::new().fallback(answer).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}"), seen)
}

/// An Azure stream: a first chunk with only prompt filter results, content chunks with
/// content filter results, a finish, the usage chunk and `[DONE]`.
const AZURE_STREAM: &str = concat!(
    "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}}}]}\n\n",
    "data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{\"content\":\"\",\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0}],\"created\":1,\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-11-20\",\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"choices\":[{\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}},\"delta\":{\"content\":\"Sunny in \"},\"finish_reason\":null,\"index\":0}],\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{\"content\":\"San Francisco.\"},\"finish_reason\":null,\"index\":0}],\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"choices\":[],\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":6,\"prompt_tokens\":14,\"total_tokens\":20}}\n\n",
    "data: [DONE]\n\n",
);

const AZURE_KEY: &str = "azure-test-key-0123";

fn azure_backend(base_url: &str, deployment: &str, api_version: Option<&str>) -> Backend {
    let mut spec = BackendSpec {
        wire: WireFormat::AzureOpenAi,
        provider: "azure_openai".into(),
        model: deployment.into(),
        base_url: base_url.into(),
        api_key_env: Some("AZURE_OPENAI_API_KEY".into()),
        temperature: Some(0.3),
        top_p: None,
        max_tokens: Some(50),
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    };
    spec.options.api_version = api_version.map(str::to_owned);
    Backend::new(&spec, client(), &|name| {
        (name == "AZURE_OPENAI_API_KEY").then(|| AZURE_KEY.to_owned())
    })
    .expect("azure backend")
}

#[tokio::test]
async fn a_deployment_is_called_at_its_url_with_the_api_key_header() {
    let (root, seen) = serve(200, "text/event-stream", AZURE_STREAM).await;
    let backend = azure_backend(&format!("{root}/"), "my-gpt4o", None);
    let (output, error) = run(&backend, &hello()).await.expect("call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.text, "Sunny in San Francisco.");
    assert_eq!(output.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        output.usage.map(|u| (u.input_tokens, u.output_tokens)),
        Some((14, 6))
    );

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].uri,
        "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(
        seen[0].headers.get("api-key").and_then(|v| v.to_str().ok()),
        Some(AZURE_KEY)
    );
    assert!(seen[0].headers.get("authorization").is_none());
    let body: Value = serde_json::from_slice(&seen[0].body).expect("JSON body");
    assert_eq!(body["model"], "my-gpt4o");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["temperature"], 0.3);
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["messages"][0]["role"], "user");
    assert!(!format!("{backend:?}").contains(AZURE_KEY));
}

#[tokio::test]
async fn the_configured_api_version_and_the_v1_api_are_honoured() {
    let (root, seen) = serve(200, "text/event-stream", AZURE_STREAM).await;
    let backend = azure_backend(
        &format!("{root}/openai"),
        "o4-mini",
        Some("2025-04-01-preview"),
    );
    let (_, error) = run(&backend, &hello()).await.expect("call");
    assert!(error.is_none(), "{error:?}");
    let v1 = azure_backend(&format!("{root}/openai/v1/"), "o4-mini", Some("ignored"));
    let (output, error) = run(&v1, &hello()).await.expect("call");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(output.text, "Sunny in San Francisco.");

    let seen = seen.lock().expect("lock").clone();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(
        uris,
        vec![
            "/openai/deployments/o4-mini/chat/completions?api-version=2025-04-01-preview",
            "/openai/v1/chat/completions",
        ]
    );
    // A reasoning deployment gets max_completion_tokens and no temperature.
    let body: Value = serde_json::from_slice(&seen[1].body).expect("JSON body");
    assert_eq!(body["model"], "o4-mini");
    assert_eq!(body["max_completion_tokens"], 50);
    assert!(body.get("temperature").is_none(), "{body}");
}

#[tokio::test]
async fn a_missing_deployment_is_a_readable_http_error() {
    let (root, _) = serve(
        404,
        "application/json",
        r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}"#,
    )
    .await;
    let error = azure_backend(&root, "nope", None)
        .stream(&hello())
        .await
        .err()
        .expect("a 404 fails the call");
    assert!(
        matches!(&error, ProviderError::Http { status: 404, body, .. } if body.contains("DeploymentNotFound")),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(
            "HTTP 404 from azure_openai: The API deployment for this resource does not exist."
        ),
        "{message}"
    );
    assert!(!message.contains(AZURE_KEY));
}

#[test]
fn a_missing_base_url_or_key_fails_before_any_call() {
    let spec = BackendSpec {
        wire: WireFormat::AzureOpenAi,
        provider: "azure_openai".into(),
        model: "gpt-4o".into(),
        base_url: String::new(),
        api_key_env: Some("AZURE_OPENAI_API_KEY".into()),
        temperature: None,
        top_p: None,
        max_tokens: None,
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    };
    let error = Backend::new(&spec, client(), &|_| Some("k".into())).err();
    assert!(
        matches!(&error, Some(ProviderError::Config(m)) if m.contains("needs base_url")),
        "{error:?}"
    );
    let with_url = BackendSpec {
        base_url: "https://r.openai.azure.com".into(),
        ..spec
    };
    let error = Backend::new(&with_url, client(), &|_| None).err();
    assert!(
        matches!(&error, Some(ProviderError::MissingApiKey { env_var, .. }) if env_var == "AZURE_OPENAI_API_KEY"),
        "{error:?}"
    );
}
