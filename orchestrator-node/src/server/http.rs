//! The HTTP API of `conclave server --http IP:PORT`. Every body is JSON; every error is
//! `{"error": "what to fix"}` with a fitting status.
//!
//! | Route | What it does |
//! |---|---|
//! | `GET /`, `/app.js`, `/app.css` | the web page (see [`crate::web`]); needs no token (the page asks for it, and sends it with every API call) |
//! | `GET /healthz` | `{"status": "ok", "running": N, "nodes": N}`; needs no token |
//! | `POST /sessions` | body `{"question", "config"?, "config_yaml"?, "session_id"?, "conversation"?}` (`config`: a file name inside `--config-dir`; `conversation`: continue that conversation, as `.../continue` below): validates (400 with the config error or the allow-list rule broken, 404 for a config name not in the config directory, 409 for a taken id, 429 when `--max-queued` sessions wait) and starts the session: 202 with its status and a `Location`. With `?wait=true` it answers 200 once the session has ended |
//! | `POST /sessions/{id}/continue` | a follow-up question in the conversation of session `id` (its first session or any later turn): body `{"question", "config"?, "config_yaml"?}`; runs as session `<conversation>-N` whose agents get the earlier questions and final answers (see [`super::conversations`]); 202 (or 200 with `?wait=true`), 404 when `id` has no conversation, 409 while one of its turns has not ended |
//! | `GET /sessions?limit=N&offset=M` | a page of the sessions, newest first: this server's and those on disk under `--session-dir` (earlier runs, the CLI); `{"sessions", "total", "offset", "limit", "next_offset"}` (see [`super::listing`]; `limit` 1 to 500, default 50) |
//! | `GET /sessions/{id}` | `{"session", "conversation", "history", "state": "queued"\|"running"\|"cancelling"\|"done", "question", "started_at_ms", "events", "result"?}`; `result` is the line printed on stdout. A session this process did not run is read from its journal: `done` with its result, or `unfinished` (resumable) |
//! | `GET /sessions/{id}/events` | Server-Sent Events: each `data:` is one object of `--display json` (journal events, stream chunks, then `final`). A late watcher first gets the journal events so far (for an ended session, read from its journal, which also holds its start, usage and end); chunks are live only. `event: lagged` says how many items a slow watcher missed. The stream ends when the session does. A session this process did not run is replayed from its journal (and its `final` rebuilt from it) |
//! | `POST /sessions/{id}/resume` | continues a session whose orchestrator died before it ended, from its journal (no journaled decision is asked for again): 202 (or 200 with `?wait=true`); 409 when it is running or has ended, 404 when there is no such journal |
//! | `POST /sessions/{id}/cancel` | interrupts the session: it presents its best answer so far (exit code 130); 202, or 409 when it has already ended |
//! | `GET /nodes` | the joined agent nodes: name, address, version, provider keys held (names only) |
//!
//! **Auth.** With a token (`--http-token-file` or `CONCLAVE_HTTP_TOKEN`), every route but
//! `/healthz` needs `Authorization: Bearer TOKEN` (401 otherwise, compared in constant time).
//! Without one the server only binds loopback addresses.
//!
//! **Trust.** A submitted config is untrusted (see the `server` module docs, "Trust"): no `${VAR}`
//! expansion, key variables and base URLs only from the operator's allow-lists (400 naming the
//! agent and the rule), `"config": NAME` only inside `--config-dir` (a name outside it and a
//! missing one get the same 404, so the disk cannot be probed), and errors about a file on the
//! server name the key, not the file's values.
//!
//! **Browsers.** A web page may send requests to the API from the user's browser (a
//! cross-site request), and a page whose DNS name is rebound to 127.0.0.1 even looks
//! same-site. So: every `POST` needs `Content-Type: application/json` (415 otherwise; a plain
//! HTML form cannot send it, and a page's script then needs the server's consent, which it
//! never gives); a request with an `Origin` that is not this server (the host and port the
//! request was sent to, or `localhost` / a loopback IP with the listen port) is refused (403);
//! and a server without a token (loopback only) also refuses a `Host` that is not `localhost`,
//! a loopback IP or its listen IP (any port, so an SSH tunnel works): a rebound DNS name
//! cannot pass. Requests without `Origin` (curl, SDKs) pass. With a token any `Host` is
//! accepted (a reverse proxy's name): a page cannot send the token anyway.
//!
//! **Limits.** Request bodies up to [`MAX_BODY_BYTES`] (413 beyond); a client gets
//! `--http-read-timeout` to send a request's headers (an idle keep-alive connection too) and
//! the same between pieces of its body, then its connection is closed, so a slow client cannot
//! hold a connection forever; at most `--max-connections` are open at once (the next is
//! answered 503 and closed, rather than left waiting unseen); at most `--max-queued` HTTP
//! sessions wait for a slot (429 beyond); `?wait=true` answers at the latest
//! [`WAIT_GRACE`] after the session's own orchestrator timeout, with 202 and the status
//! when it has not ended by then (it may have waited in the queue).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Job, Server, SessionEntry, SubmitError, Submitter};

/// The largest request body accepted (413 beyond). A config is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long past a session's own orchestrator timeout `?wait=true` may wait (its final
/// presentation, the journal's end).
pub const WAIT_GRACE: Duration = Duration::from_secs(60);
/// Connections being refused at once (each gets a 503 within a second); more are dropped.
const MAX_REFUSING: usize = 64;

#[derive(Clone)]
struct Api {
    server: Arc<Server>,
    token: Option<Arc<str>>,
    /// The address the API listens on (for the same-origin checks).
    listen: SocketAddr,
}

/// How the API treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub read_timeout: Duration,
}

/// Serves the API on `listener` until `stop` is cancelled and open responses have ended.
///
/// Each connection is served by hyper directly (not `axum::serve`, which has neither a header
/// read timeout nor a connection cap): a permit per connection, a timer for the header read
/// timeout, and a graceful shutdown of each connection when `stop` comes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    token: Option<String>,
    stop: CancellationToken,
    limits: Limits,
) {
    let listen = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            warn!("the HTTP listener has no address: {error}");
            return;
        }
    };
    let app = router(server, token, listen, limits.read_timeout);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        // Reap finished connections so the set does not grow with the server's lifetime.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                warn!("accepting an HTTP connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%peer, "HTTP connection refused: --max-connections are open");
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                connections.spawn(async move {
                    refuse_connection(stream).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    // Ends the connection after the response in flight (a live event feed
                    // ends with its session).
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                info!(%peer, "HTTP connection closed: {error}");
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Answers a connection beyond `--max-connections` with 503 and closes it. The request is read
/// first (briefly), so the client sees the answer rather than a reset.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await;
    let body = json!({"error": "too many connections to this server (--max-connections); try again later"})
        .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

fn router(
    server: Arc<Server>,
    token: Option<String>,
    listen: SocketAddr,
    read_timeout: Duration,
) -> Router {
    let api = Api {
        server,
        token: token.map(Arc::from),
        listen,
    };
    let guarded = Router::new()
        .route("/sessions", post(submit).get(list))
        .route("/sessions/{id}", get(status))
        .route("/sessions/{id}/events", get(events))
        .route("/sessions/{id}/cancel", post(cancel))
        .route("/sessions/{id}/resume", post(resume))
        .route("/sessions/{id}/continue", post(follow_up))
        .route("/nodes", get(nodes))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route("/healthz", get(health))
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/app.js", get(page))
        .route("/app.css", get(page))
        .merge(guarded)
        // The OpenAI-compatible routes (`/v1/...`), with their own auth and error envelope.
        .merge(super::openai::routes(api.server.clone(), api.token.clone()))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; see GET /, /healthz, /sessions, /nodes",
            )
        })
        .layer(middleware::from_fn_with_state(api.clone(), same_site))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            read_timeout,
        ))
        .with_state(api)
}

/// The host and port of `authority` (`host[:port]`, IPv6 in brackets), lowercased; the port
/// defaults to `default_port`.
fn host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let authority = authority.trim().to_ascii_lowercase();
    if authority.is_empty() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host.to_owned(), port.parse().ok()?),
        _ => (authority.clone(), default_port),
    };
    Some((host, port))
}

/// Whether the `Origin` authority `authority` is this server: the host and port the request
/// was sent to (`host_header`; the `Host` check has vouched for it), or `localhost` / a
/// loopback IP / the listen IP with the listen port.
fn is_own(
    authority: &str,
    default_port: u16,
    host_header: Option<&str>,
    listen: SocketAddr,
) -> bool {
    let Some((host, port)) = host_port(authority, default_port) else {
        return false;
    };
    if host_header.and_then(|h| host_port(h, default_port)) == Some((host.clone(), port)) {
        return true;
    }
    port == listen.port() && is_local_name(&host, listen)
}

/// `localhost`, a loopback IP or the listen IP: names a rebound DNS name cannot take.
fn is_local_name(host: &str, listen: SocketAddr) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == listen.ip())
}

/// Refuses what a web page could make a browser send (see the module docs, "Browsers").
async fn same_site(State(api): State<Api>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    // Any port: a tunnel (`ssh -L 9000:127.0.0.1:7421`) changes it; a rebound name cannot
    // become `localhost`.
    let local_host = host
        .and_then(|h| host_port(h, 80))
        .is_some_and(|(h, _)| is_local_name(&h, api.listen));
    if api.token.is_none() && !local_host {
        warn!(path = %request.uri().path(), "HTTP request for another host refused");
        return error(
            StatusCode::FORBIDDEN,
            "the request's Host is not this server (a server without a token answers only to localhost, a loopback IP or its listen address)",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = origin.to_str().ok().and_then(|origin| {
            let (scheme, authority) = origin.split_once("://")?;
            let default_port = if scheme.eq_ignore_ascii_case("https") {
                443
            } else {
                80
            };
            Some(is_own(authority, default_port, host, api.listen))
        });
        if own != Some(true) {
            warn!(path = %request.uri().path(), "cross-origin HTTP request refused");
            return error(
                StatusCode::FORBIDDEN,
                "cross-origin requests are refused: the request's Origin is not this server",
            );
        }
    }
    if request.method() == Method::POST && !is_json(headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a POST needs `Content-Type: application/json`",
        );
    }
    next.run(request).await
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// Compares without an early exit, so timing does not reveal how much of a guess matched.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => {}
            Some(_) => {
                warn!(path = %request.uri().path(), "HTTP request with a wrong bearer token refused");
                return error(StatusCode::UNAUTHORIZED, "wrong bearer token");
            }
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "this server needs `Authorization: Bearer TOKEN`",
                );
            }
        }
    }
    next.run(request).await
}

/// The web page's assets (see [`crate::web`]): no token needed, they hold no secret; the
/// API calls the page makes do need it.
async fn page(uri: axum::http::Uri) -> Response {
    let Some((content_type, body)) = crate::web::asset(uri.path()) else {
        return error(StatusCode::NOT_FOUND, "no such page");
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                crate::web::CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn health(State(api): State<Api>) -> Response {
    let nodes = api.server.cluster().map_or(0, |c| c.nodes().len());
    axum::Json(json!({
        "status": "ok",
        "running": api.server.registry().running(),
        "nodes": nodes,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct SubmitQuery {
    #[serde(default)]
    wait: bool,
}

/// The session request in a body; an error response that says what to fix otherwise.
fn read_job(body: Result<Bytes, BytesRejection>) -> Result<Job, Box<Response>> {
    let body = match body {
        Ok(body) => body,
        Err(rejected) if rejected.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )));
        }
        Err(rejected) => {
            return Err(Box::new(error(
                rejected.status(),
                format!("the body could not be read: {}", rejected.body_text()),
            )));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!(
                "the body must be JSON {{\"question\", \"config\"?, \"config_yaml\"?, \"session_id\"?, \"conversation\"?}}: {e}"
            ),
        ))
    })
}

async fn submit(
    State(api): State<Api>,
    Query(query): Query<SubmitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = match read_job(body) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    start_job(api, job, query.wait).await
}

/// `POST /sessions/{id}/continue`: the next turn of the conversation of session `id`.
async fn follow_up(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(query): Query<SubmitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut job = match read_job(body) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    if job.conversation.as_ref().is_some_and(|named| *named != id) {
        return error(
            StatusCode::BAD_REQUEST,
            "the body names another conversation than the route; leave out \"conversation\"",
        );
    }
    job.conversation = Some(id);
    start_job(api, job, query.wait).await
}

/// Submits a job (reading a conversation's file or a config off the async workers) and
/// answers with the session's status.
async fn start_job(api: Api, job: Job, wait: bool) -> Response {
    let server = api.server.clone();
    let submitted =
        match tokio::task::spawn_blocking(move || server.submit(job, Submitter::Client)).await {
            Ok(submitted) => submitted,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the submit task failed"),
        };
    let entry = match submitted {
        Ok(entry) => entry,
        Err(refused) => return refusal(refused),
    };
    info!(session = %entry.id, conversation = %entry.conversation, "session submitted over HTTP");
    started(entry, wait).await
}

fn refusal(refused: SubmitError) -> Response {
    let status = match refused {
        SubmitError::Invalid(_) => StatusCode::BAD_REQUEST,
        SubmitError::Conflict(_) | SubmitError::InUse(_) => StatusCode::CONFLICT,
        SubmitError::NotFound(_) => StatusCode::NOT_FOUND,
        SubmitError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        SubmitError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
    };
    error(status, refused.to_string())
}

/// 202 with the status of a session just started, or 200 once it has ended with `wait`.
async fn started(entry: Arc<SessionEntry>, wait: bool) -> Response {
    let location = HeaderValue::from_str(&format!("/sessions/{}", entry.id)).ok();
    let (code, body) = if wait {
        // Bounded: a session that waited long in the queue may still be running.
        let limit = entry.timeout.saturating_add(WAIT_GRACE);
        match tokio::time::timeout(limit, entry.done.cancelled()).await {
            Ok(()) => (StatusCode::OK, entry.status()),
            Err(_) => (StatusCode::ACCEPTED, entry.status()),
        }
    } else {
        (StatusCode::ACCEPTED, entry.status())
    };
    let mut response = (code, axum::Json(body)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
}

async fn list(
    State(api): State<Api>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use super::listing::{DEFAULT_LIMIT, MAX_LIMIT};
    let bad = || {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "limit must be a number from 1 to {MAX_LIMIT} and offset a number from 0 (GET /sessions?limit=N&offset=M)"
            ),
        )
    };
    let Ok(Query(query)) = query else {
        return bad();
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return bad();
    }
    // The session directory is read: off the async workers.
    let server = api.server.clone();
    match tokio::task::spawn_blocking(move || server.list(query.offset, limit)).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "listing the sessions failed",
        ),
    }
}

fn unknown(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no session `{id}` on this server (finished sessions beyond the most recent {} are only on disk)",
            super::MAX_FINISHED_KEPT
        ),
    )
}

async fn status(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if let Some(entry) = api.server.registry().get(&id) {
        // The earlier turns its agents got: here, not in every row of the list.
        let mut status = entry.status();
        status["history"] = json!(entry.history);
        return axum::Json(status).into_response();
    }
    // Not run by this server process (or forgotten): what its journal says, read off disk.
    let server = api.server.clone();
    let lookup = id.clone();
    match tokio::task::spawn_blocking(move || server.from_disk(&lookup)).await {
        Ok(Some(status)) => axum::Json(status).into_response(),
        _ => unknown(&id),
    }
}

async fn resume(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(query): Query<SubmitQuery>,
) -> Response {
    let server = api.server.clone();
    let lookup = id.clone();
    // Loading a journal reads the whole file: off the async workers.
    let resumed = match tokio::task::spawn_blocking(move || {
        server.resume(&lookup, Submitter::Client)
    })
    .await
    {
        Ok(resumed) => resumed,
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the resume task failed"),
    };
    match resumed {
        Ok(entry) => {
            info!(session = %id, "session resumed over HTTP");
            started(entry, query.wait).await
        }
        Err(refused) => refusal(refused),
    }
}

async fn cancel(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(entry) = api.server.registry().get(&id) else {
        return unknown(&id);
    };
    if entry.result().is_some() {
        return error(
            StatusCode::CONFLICT,
            format!("session `{id}` has already ended"),
        );
    }
    info!(session = %id, "session cancelled over HTTP");
    entry.cancel.cancel();
    (StatusCode::ACCEPTED, axum::Json(entry.status())).into_response()
}

async fn events(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(entry) = api.server.registry().get(&id) else {
        // Not run by this server process (or forgotten): replayed from its journal on disk.
        let server = api.server.clone();
        let lookup = id.clone();
        let replay = tokio::task::spawn_blocking(move || {
            server.journal_dir(&lookup).map(|dir| disk_replay(&dir))
        })
        .await;
        return match replay {
            Ok(Some(Ok(lines))) => Sse::new(futures::stream::iter(
                lines
                    .into_iter()
                    .map(|line| Ok::<_, Infallible>(Event::default().data(&*line))),
            ))
            .into_response(),
            Ok(Some(Err(message))) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
            _ => unknown(&id),
        };
    };
    let mut watch = entry.watch();
    if let Some((dir, final_line)) = watch.ended.take() {
        // An ended session's events are on disk only; the final object is kept.
        let read = tokio::task::spawn_blocking(move || journal_events(&dir)).await;
        match read {
            Ok(Ok(mut lines)) => {
                lines.extend(final_line);
                watch.kept = lines;
            }
            Ok(Err(message)) => return error(StatusCode::INTERNAL_SERVER_ERROR, message),
            Err(_) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "reading the journal failed",
                );
            }
        }
    }
    let kept = futures::stream::iter(
        watch
            .kept
            .into_iter()
            .map(|line| Ok::<_, Infallible>(Event::default().data(&*line))),
    );
    let live = futures::stream::unfold(watch.live, |live| async move {
        let mut live = live?;
        match live.recv().await {
            Ok(line) => Some((Ok(Event::default().data(&*line)), Some(live))),
            Err(RecvError::Lagged(skipped)) => Some((
                Ok(Event::default()
                    .event("lagged")
                    .data(json!({ "skipped": skipped }).to_string())),
                Some(live),
            )),
            Err(RecvError::Closed) => None,
        }
    });
    Sse::new(kept.chain(live))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The feed of a session known only from its journal: its events, then (when it ended) the
/// `final` object the live feed ends with, rebuilt from the journal's final answer and end.
fn disk_replay(dir: &std::path::Path) -> Result<Vec<Arc<str>>, String> {
    use crate::journal::JournalEvent;
    let path = dir.join(crate::journal::EVENTS_FILE);
    let journal =
        crate::journal::read_events(&path).map_err(|e| conclave_protocol::error_text(&e))?;
    let mut lines: Vec<Arc<str>> = Vec::with_capacity(journal.lines.len() + 1);
    let (mut answer, mut reason) = (None, None);
    for line in &journal.lines {
        match &line.event {
            JournalEvent::FinalAnswer {
                winner,
                label,
                content,
                ..
            } => answer = Some((winner.clone(), label.clone(), content.clone())),
            JournalEvent::SessionEnded { reason: why, .. } => reason = Some(why.clone()),
            _ => {}
        }
        if let Ok(text) = serde_json::to_string(&line.event) {
            lines.push(Arc::from(text));
        }
    }
    if let Some(reason) = reason {
        let (winner, label, content) = answer.unwrap_or_default();
        let last = json!({"type": "final", "winner": winner, "label": label, "reason": reason, "content": content});
        lines.push(Arc::from(last.to_string()));
    }
    Ok(lines)
}

/// A journal's events as the `json` display shows them (without the journal's timestamps).
fn journal_events(dir: &std::path::Path) -> Result<Vec<Arc<str>>, String> {
    let path = dir.join(crate::journal::EVENTS_FILE);
    if !path.exists() {
        // The session failed before it could journal anything (its result says why).
        return Ok(Vec::new());
    }
    let journal =
        crate::journal::read_events(&path).map_err(|e| conclave_protocol::error_text(&e))?;
    Ok(journal
        .lines
        .iter()
        .filter_map(|line| serde_json::to_string(&line.event).ok())
        .map(Arc::from)
        .collect())
}

async fn nodes(State(api): State<Api>) -> Response {
    let nodes: Vec<Value> = api
        .server
        .cluster()
        .map(|cluster| {
            cluster
                .nodes()
                .into_iter()
                .map(|(name, info)| {
                    json!({
                        "name": name,
                        "address": info.peer_addr,
                        "version": info.version,
                        "provider_keys": info.provider_keys,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    axum::Json(json!({ "nodes": nodes })).into_response()
}

#[cfg(test)]
mod tests {
    use super::{host_port, is_local_name, is_own, same_secret};

    #[test]
    fn own_origins_are_the_host_asked_or_local_names_with_the_listen_port() {
        let listen = "127.0.0.1:7421".parse().unwrap();
        let own = |authority: &str| is_own(authority, 80, None, listen);
        assert!(own("127.0.0.1:7421"));
        assert!(own("LOCALHOST:7421"));
        assert!(own("[::1]:7421"));
        assert!(!own("127.0.0.1:7422"), "another port is another site");
        assert!(!own("localhost"), "the default port is not this one");
        assert!(!own("evil.example:7421"), "a rebound name");
        assert!(!own("user@127.0.0.1:7421"));
        assert!(!own(""));
        // Through a tunnel or a proxy: the Host the client used.
        let sent = Some("localhost:9000");
        assert!(is_own("localhost:9000", 80, sent, listen));
        assert!(!is_own("localhost:9001", 80, sent, listen));
        let sent = Some("conclave.example.org");
        assert!(is_own("conclave.example.org", 443, sent, listen));
        assert!(!is_own("evil.example", 443, sent, listen));
        assert!(is_local_name("[::1]", listen) && is_local_name("127.0.0.2", listen));
        assert!(!is_local_name("evil.example", listen));
        assert_eq!(host_port("[::1]", 80), Some(("[::1]".to_owned(), 80)));
        assert_eq!(host_port("h:x", 80), None);
    }

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same_secret(b"", b"0123456789abcdef"));
    }
}
