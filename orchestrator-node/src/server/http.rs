//! The HTTP API of `conclave server --http IP:PORT`. Every body is JSON; every error is
//! `{"error": "what to fix"}` with a fitting status.
//!
//! | Route | What it does |
//! |---|---|
//! | `GET /healthz` | `{"status": "ok", "running": N, "nodes": N}`; needs no token |
//! | `POST /sessions` | body `{"question", "config"?, "config_yaml"?, "session_id"?}`: validates (400 with the config error, 409 for a taken id) and starts the session: 202 with its status and a `Location`. With `?wait=true` it answers 200 once the session has ended |
//! | `GET /sessions` | every session this server remembers, oldest first |
//! | `GET /sessions/{id}` | `{"session", "state": "queued"\|"running"\|"cancelling"\|"done", "question", "started_at_ms", "events", "result"?}`; `result` is the line printed on stdout. A session this process did not run is read from its journal: `done` with its result, or `unfinished` (resumable) |
//! | `GET /sessions/{id}/events` | Server-Sent Events: each `data:` is one object of `--display json` (journal events, stream chunks, then `final`). A late watcher first gets the journal events so far (for an ended session, read from its journal, which also holds its start, usage and end); chunks are live only. `event: lagged` says how many items a slow watcher missed. The stream ends when the session does |
//! | `POST /sessions/{id}/resume` | continues a session whose orchestrator died before it ended, from its journal (no journaled decision is asked for again): 202 (or 200 with `?wait=true`); 409 when it is running or has ended, 404 when there is no such journal |
//! | `POST /sessions/{id}/cancel` | interrupts the session: it presents its best answer so far (exit code 130); 202, or 409 when it has already ended |
//! | `GET /nodes` | the joined agent nodes: name, address, version, provider keys held (names only) |
//!
//! **Auth.** With a token (`--http-token-file` or `CONCLAVE_HTTP_TOKEN`), every route but
//! `/healthz` needs `Authorization: Bearer TOKEN` (401 otherwise, compared in constant time).
//! Without one the server only binds loopback addresses. A `config` path is read on the
//! server, with the server's permissions: give the token only to people who may run it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
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

use super::{Job, Server, SessionEntry, SubmitError};

#[derive(Clone)]
struct Api {
    server: Arc<Server>,
    token: Option<Arc<str>>,
}

/// Serves the API on `listener` until `stop` is cancelled and open responses have ended.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    token: Option<String>,
    stop: CancellationToken,
) {
    let app = router(server, token);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        warn!("the HTTP API stopped: {error}");
    }
}

fn router(server: Arc<Server>, token: Option<String>) -> Router {
    let api = Api {
        server,
        token: token.map(Arc::from),
    };
    let guarded = Router::new()
        .route("/sessions", post(submit).get(list))
        .route("/sessions/{id}", get(status))
        .route("/sessions/{id}/events", get(events))
        .route("/sessions/{id}/cancel", post(cancel))
        .route("/sessions/{id}/resume", post(resume))
        .route("/nodes", get(nodes))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route("/healthz", get(health))
        .merge(guarded)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; see GET /healthz, /sessions, /nodes",
            )
        })
        .with_state(api)
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

async fn submit(State(api): State<Api>, Query(query): Query<SubmitQuery>, body: Bytes) -> Response {
    let job: Job = match serde_json::from_slice(&body) {
        Ok(job) => job,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be JSON {{\"question\", \"config\"?, \"config_yaml\"?, \"session_id\"?}}: {e}"
                ),
            );
        }
    };
    let entry = match api.server.submit(job) {
        Ok(entry) => entry,
        Err(refused) => return refusal(refused),
    };
    info!(session = %entry.id, "session submitted over HTTP");
    started(entry, query.wait).await
}

fn refusal(refused: SubmitError) -> Response {
    let status = match refused {
        SubmitError::Invalid(_) => StatusCode::BAD_REQUEST,
        SubmitError::Conflict(_) => StatusCode::CONFLICT,
        SubmitError::NotFound(_) => StatusCode::NOT_FOUND,
        SubmitError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, refused.to_string())
}

/// 202 with the status of a session just started, or 200 once it has ended with `wait`.
async fn started(entry: Arc<SessionEntry>, wait: bool) -> Response {
    let location = HeaderValue::from_str(&format!("/sessions/{}", entry.id)).ok();
    let (code, body) = if wait {
        entry.done.cancelled().await;
        (StatusCode::OK, entry.status())
    } else {
        (StatusCode::ACCEPTED, entry.status())
    };
    let mut response = (code, axum::Json(body)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

async fn list(State(api): State<Api>) -> Response {
    let sessions: Vec<Value> = api
        .server
        .registry()
        .all()
        .iter()
        .map(|entry| entry.status())
        .collect();
    axum::Json(json!({ "sessions": sessions })).into_response()
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
        return axum::Json(entry.status()).into_response();
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
    let resumed = match tokio::task::spawn_blocking(move || server.resume(&lookup)).await {
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
        return unknown(&id);
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
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same_secret(b"", b"0123456789abcdef"));
    }
}
