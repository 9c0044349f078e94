//! A scripted HTTP server on 127.0.0.1 for provider tests: it answers every request with one
//! recorded response (status, headers, body bytes, optionally in small pieces) and keeps what
//! it received, so tests can check both directions of the real HTTP path.

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use conclave_agent::accumulate::TurnOutput;
use conclave_agent::llm::{ChatMessage, ChatRequest};
use conclave_agent::providers::{Backend, ProviderError, http_client};
use conclave_protocol::config::{BackendSpec, WireFormat};
use futures::StreamExt;

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body in pieces of this many bytes (exercises framing across reads).
    pub piece_size: Option<usize>,
    /// After the body, break the connection instead of ending it cleanly.
    pub break_after_body: bool,
}

impl Scripted {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            piece_size: None,
            break_after_body: false,
        }
    }

    pub fn sse(body: impl Into<Vec<u8>>) -> Self {
        Self::new(200, "text/event-stream", body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the client sends JSON")
    }
}

#[derive(Clone)]
struct ServerState {
    script: Arc<Scripted>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A running scripted server; it stops when the test's runtime ends.
pub struct FakeServer {
    /// `http://127.0.0.1:PORT/v1` (with a trailing slash, to check it is trimmed).
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeServer {
    pub async fn start(script: Scripted) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = ServerState {
            script: Arc::new(script),
            received: Arc::clone(&received),
        };
        let router = Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            base_url: format!("http://{address}/v1/"),
            received,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

async fn answer(
    State(state): State<ServerState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.received.lock().expect("lock").push(Received {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let script = &state.script;
    let pieces: Vec<Bytes> = match script.piece_size {
        Some(size) => script
            .body
            .chunks(size.max(1))
            .map(Bytes::copy_from_slice)
            .collect(),
        None => vec![Bytes::copy_from_slice(&script.body)],
    };
    let body = if script.break_after_body {
        // Let the headers and the body go out first, then break the connection.
        let items =
            futures::stream::iter(pieces.into_iter().map(Ok)).chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "scripted connection break",
                ))
            }));
        Body::from_stream(items)
    } else if script.piece_size.is_some() {
        Body::from_stream(futures::stream::iter(
            pieces.into_iter().map(Ok::<_, Infallible>),
        ))
    } else {
        Body::from(pieces.into_iter().next().unwrap_or_default())
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(script.status).expect("valid status");
    for (name, value) in &script.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            axum::http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A chat completions spec for a local server.
pub fn spec(base_url: &str, provider: &str, api_key_env: Option<&str>) -> BackendSpec {
    BackendSpec {
        wire: WireFormat::OpenAiChat,
        provider: provider.into(),
        model: "gpt-4o-mini".into(),
        base_url: base_url.into(),
        api_key_env: api_key_env.map(str::to_owned),
        temperature: None,
        top_p: None,
        max_tokens: None,
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    }
}

pub fn client() -> reqwest::Client {
    http_client(Duration::from_secs(5)).expect("HTTP client")
}

/// A backend for a server that needs no key.
pub fn keyless_backend(base_url: &str) -> Backend {
    Backend::new(&spec(base_url, "chatcompletion", None), client(), &|_| None)
        .expect("keyless backend")
}

pub fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::user("What's the weather in San Francisco?")],
        ..ChatRequest::default()
    }
}

/// Runs one call to the end: the folded output, and the error that ended the stream (if any).
/// Panics if anything follows an error.
pub async fn run(
    backend: &Backend,
    request: &ChatRequest,
) -> Result<(TurnOutput, Option<ProviderError>), ProviderError> {
    let mut stream = backend.stream(request).await?;
    let mut output = TurnOutput::default();
    let mut error = None;
    let deadline = Duration::from_secs(20);
    while let Some(item) = tokio::time::timeout(deadline, stream.next())
        .await
        .expect("the stream must not stall")
    {
        assert!(
            error.is_none(),
            "an item followed the stream's error: {item:?}"
        );
        match item {
            Ok(chunk) => output.apply(&chunk),
            Err(e) => error = Some(e),
        }
    }
    Ok((output, error))
}

/// The key the Anthropic tests configure (through `ANTHROPIC_API_KEY`).
pub const ANTHROPIC_TEST_KEY: &str = "sk-ant-test-key";

/// An Anthropic Messages spec for a local server, with the preset's key variable.
pub fn anthropic_spec(base_url: &str) -> BackendSpec {
    BackendSpec {
        wire: WireFormat::Anthropic,
        provider: "anthropic".into(),
        model: "claude-sonnet-4-20250514".into(),
        base_url: base_url.into(),
        api_key_env: Some("ANTHROPIC_API_KEY".into()),
        temperature: None,
        top_p: None,
        max_tokens: None,
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    }
}

/// A backend for `spec` whose `ANTHROPIC_API_KEY` is [`ANTHROPIC_TEST_KEY`].
pub fn anthropic_backend(spec: &BackendSpec) -> Backend {
    Backend::new(spec, client(), &|name| {
        (name == "ANTHROPIC_API_KEY").then(|| ANTHROPIC_TEST_KEY.to_owned())
    })
    .expect("anthropic backend")
}

/// Every full request URI (path and query) a server received, in order.
pub type UriLog = Arc<Mutex<Vec<String>>>;

impl FakeServer {
    /// Like [`FakeServer::start`], and also keeps each request's full URI: [`Received`] has
    /// only the path, and some wire formats put meaning in the query (Gemini's `alt=sse`).
    pub async fn start_keeping_uris(script: Scripted) -> (Self, UriLog) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let uris: UriLog = Arc::new(Mutex::new(Vec::new()));
        let state = ServerState {
            script: Arc::new(script),
            received: Arc::clone(&received),
        };
        let log = Arc::clone(&uris);
        let handler = move |state: State<ServerState>,
                            uri: axum::http::Uri,
                            headers: HeaderMap,
                            body: Bytes| {
            let log = Arc::clone(&log);
            async move {
                log.lock().expect("lock").push(uri.to_string());
                answer(state, uri, headers, body).await
            }
        };
        let router = Router::new().fallback(handler).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let server = Self {
            base_url: format!("http://{address}/v1/"),
            received,
        };
        (server, uris)
    }
}

/// The key the Gemini test backends are given (through `GEMINI_API_KEY`).
pub const GEMINI_TEST_KEY: &str = "gemini-test-key";

/// A Gemini spec for a local server.
pub fn gemini_spec(base_url: &str, model: &str) -> BackendSpec {
    BackendSpec {
        wire: WireFormat::Gemini,
        provider: "gemini".into(),
        model: model.into(),
        base_url: base_url.into(),
        api_key_env: Some("GEMINI_API_KEY".into()),
        temperature: None,
        top_p: None,
        max_tokens: None,
        extra_body: None,
        max_retries: 2,
        options: Default::default(),
    }
}

/// A Gemini backend for `spec`, with [`GEMINI_TEST_KEY`] as its key.
pub fn gemini_backend(spec: &BackendSpec) -> Backend {
    Backend::new(spec, client(), &|name| {
        (name == "GEMINI_API_KEY").then(|| GEMINI_TEST_KEY.to_owned())
    })
    .expect("Gemini backend")
}

/// One recorded provider response from `../shared/fixtures/sse/<api>/`: its name, the
/// `.json` metadata with the SDK's expected parse, and the exact `.sse` body bytes.
pub struct Case {
    pub name: String,
    pub meta: serde_json::Value,
    pub body: Vec<u8>,
}

/// Every recorded case (`<case>.json` + `<case>.sse`) in a fixtures folder, sorted; panics if
/// the folder has none, so a moved fixture tree fails loudly instead of testing nothing.
pub fn fixture_cases(dir: &str) -> Vec<Case> {
    let dir = std::path::Path::new(dir);
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read the fixtures at {}: {e}", dir.display()));
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixture cases in {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let meta: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let body = std::fs::read(path.with_extension("sse"))
                .unwrap_or_else(|e| panic!("{name}.sse: {e}"));
            Case { name, meta, body }
        })
        .collect()
}

/// Compares a tool call with a fixture's expected one: id, name, the raw argument text and
/// the parsed arguments.
pub fn compare_call(got: &conclave_protocol::ToolCall, want: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    if Some(got.id.as_str()) != want["id"].as_str() {
        problems.push(format!(
            "tool call id: got {:?}, want {}",
            got.id, want["id"]
        ));
    }
    if Some(got.name.as_str()) != want["name"].as_str() {
        problems.push(format!(
            "tool call name: got {:?}, want {}",
            got.name, want["name"]
        ));
    }
    if Some(got.arguments.as_str()) != want["arguments_raw"].as_str() {
        problems.push(format!(
            "tool call raw arguments: got {:?}, want {}",
            got.arguments, want["arguments_raw"]
        ));
    }
    match serde_json::from_str::<serde_json::Value>(&got.arguments) {
        Ok(parsed) if parsed == want["arguments"] => {}
        Ok(parsed) => problems.push(format!(
            "tool call arguments: got {parsed}, want {}",
            want["arguments"]
        )),
        Err(e) => problems.push(format!("tool call arguments are not JSON: {e}")),
    }
    problems
}
