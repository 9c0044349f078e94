//! The HTTP surface: the model endpoints of every wire format and the `/__sim/*` inspection
//! endpoints.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions`, `POST /chat/completions` | OpenAI Chat Completions |
//! | `POST /v1/responses`, `POST /responses` | OpenAI Responses |
//! | `POST /v1/messages`, `POST /messages` | Anthropic Messages |
//! | `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` (also `:generateContent`, and under `/v1/models/` and `/models/`) | Google Gemini |
//! | `GET /v1/models`, `GET /models` | a one-entry model list, for clients that probe it |
//! | `GET /health` | liveness |
//! | `GET /__sim/requests` | the request log, a JSON array of [`RequestRecord`] |
//! | `GET /__sim/stats` | [`crate::SimStats`] |
//! | `POST /__sim/reset` | clears the log and the fault counts (204) |
//!
//! Every model endpoint parses its format into one [`SimRequest`] and goes through
//! [`serve`]: the same options, policy, faults, pacing and request log for all of them, so a
//! session mixing formats is measured on one timeline. Gemini's Chat-Completions-style base
//! URL (`{base_url}/models/...`) is accepted too, so one base URL serves every format.
//!
//! Client mistakes are answered the way the real API answers them: status 400 with the
//! format's error envelope (404 with OpenAI's for an unknown route), so the client's error
//! path is exercised for real.
//!
//! With `stream: true` the response headers leave at once and the first event follows after
//! `first_byte_ms`: time to first token is measured on the body, where a client's stall
//! watchdog looks. Without it the handler waits as long as the stream would have taken
//! (first byte delay plus the pacing of every piece) and then answers at once, like a real
//! server that generates the whole completion before replying.
//!
//! Faults (see `fault`): a status fault is answered at once with the format's error envelope
//! and the retry headers asked for; `slow_first_byte` holds the response headers; mid-stream
//! faults strike inside the body (see `stream`). A non-streaming request has no stream to
//! break, so there they act on the whole body when it is due: `stream_error` becomes a 500,
//! `truncate` sends the first half of the JSON, `malformed` a body that is not JSON, `reset`
//! aborts the connection, and `stall` holds the response for [`MAX_STALL`] before a 500.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use tokio::time::Instant;

use crate::fault::{Fault, MAX_STALL, SLOW_FIRST_BYTE_DEFAULT};
use crate::log::{RequestRecord, stats_from};
use crate::options::{ModelOptions, RetryHint};
use crate::policy::Reply;
use crate::request::SimRequest;
use crate::state::{ResetSwitch, SimState};
use crate::stream::{MidStreamFault, RecordGuard, ReplyStream};
use crate::wire::{self, ResponseIds, StreamWriter, Usage, Wire};

/// Largest accepted request body. Generous: a vote turn of a large session carries every
/// agent's answer in one user message.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The simulator's router over `state`.
pub(crate) fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/responses", post(responses))
        .route("/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/messages", post(messages))
        .route("/v1beta/models/{*target}", post(gemini))
        .route("/v1/models/{*target}", post(gemini))
        .route("/models/{*target}", post(gemini))
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
        .route("/health", get(health))
        .route("/__sim/requests", get(list_requests))
        .route("/__sim/stats", get(stats))
        .route("/__sim/reset", post(reset))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// The connection's reset switch, when the request came through our accept loop.
type Switch = Option<Extension<ResetSwitch>>;

/// `POST /v1/chat/completions`.
async fn chat_completions(
    State(state): State<Arc<SimState>>,
    switch: Switch,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let parsed = Wire::OpenAiChat.parse(&body, None);
    serve(state, Wire::OpenAiChat, parsed, started, &body, switch).await
}

/// `POST /v1/responses`.
async fn responses(State(state): State<Arc<SimState>>, switch: Switch, body: Bytes) -> Response {
    let started = Instant::now();
    let parsed = Wire::OpenAiResponses.parse(&body, None);
    serve(state, Wire::OpenAiResponses, parsed, started, &body, switch).await
}

/// `POST /v1/messages`.
async fn messages(State(state): State<Arc<SimState>>, switch: Switch, body: Bytes) -> Response {
    let started = Instant::now();
    let parsed = Wire::Anthropic.parse(&body, None);
    serve(state, Wire::Anthropic, parsed, started, &body, switch).await
}

/// `POST /v1beta/models/{model}:{method}`: the model (options included) is the path up to
/// the last `:`; the method decides streaming.
async fn gemini(
    State(state): State<Arc<SimState>>,
    Path(target): Path<String>,
    uri: Uri,
    switch: Switch,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let Some((model, method)) = target.rsplit_once(':') else {
        return reject(
            &state,
            Wire::Gemini,
            &format!(
                "expected models/{{model}}:streamGenerateContent or :generateContent, got models/{target}"
            ),
        );
    };
    let stream = match method {
        "streamGenerateContent" => {
            let sse = uri
                .query()
                .is_some_and(|query| query.split('&').any(|pair| pair == "alt=sse"));
            if !sse {
                return reject(
                    &state,
                    Wire::Gemini,
                    "conclave-sim streams Gemini replies as server-sent events only: add ?alt=sse",
                );
            }
            true
        }
        "generateContent" => false,
        other => {
            return reject(
                &state,
                Wire::Gemini,
                &format!(
                    "unknown method `{other}`; expected streamGenerateContent or generateContent"
                ),
            );
        }
    };
    let parsed = Wire::Gemini
        .parse(&body, Some(model))
        .map(|request| SimRequest { stream, ..request });
    serve(state, Wire::Gemini, parsed, started, &body, switch).await
}

/// Serves one parsed request in any format: options, fault decision, policy, log record,
/// then the streamed or whole reply (or the fault).
async fn serve(
    state: Arc<SimState>,
    wire: Wire,
    parsed: Result<SimRequest, String>,
    started: Instant,
    body: &[u8],
    switch: Switch,
) -> Response {
    let request = match parsed {
        Ok(request) => request,
        Err(message) => return reject(&state, wire, &message),
    };
    let options = match ModelOptions::parse(&request.model, &state.config) {
        Ok(options) => options,
        Err(err) => return reject(&state, wire, &err.to_string()),
    };
    let fault = options
        .fault
        .filter(|_| state.faults.strikes(&request.model, options.fault_times));
    let reply = Reply::decide(&options, &request);
    let request_bytes = body.len() as u64;
    let recorded_body = options.record_body.then(|| {
        let kept = &body[..body.len().min(crate::options::MAX_RECORDED_BODY)];
        String::from_utf8_lossy(kept).into_owned()
    });
    let usage = Usage {
        prompt_tokens: request_bytes.div_ceil(4),
        completion_tokens: reply.pieces() as u64,
    };
    let id = state.log().begin(RequestRecord {
        id: 0,
        wire,
        model: request.model.clone(),
        decision: reply.kind,
        vote_target: reply.vote_target.clone(),
        fingerprint: request.fingerprint.clone(),
        stream: request.stream,
        started_ms: state.ms_at(started),
        first_byte_ms: None,
        ended_ms: None,
        completed: false,
        request_bytes,
        prompt_tokens: usage.prompt_tokens,
        output_tokens: 0,
        fault,
        body: recorded_body,
    });
    tracing::debug!(
        request_id = id,
        wire = wire.as_str(),
        model = %request.model,
        decision = ?reply.kind,
        vote_target = reply.vote_target.as_deref(),
        stream = request.stream,
        fault = fault.map(Fault::as_str),
        "simulated request"
    );
    let mut guard = RecordGuard::new(Arc::clone(&state), id);
    let ids = ResponseIds {
        request_id: id,
        created: unix_seconds(),
        model: request.model.clone(),
    };
    let mut headers = HeaderMap::new();
    let request_id = match wire {
        Wire::OpenAiChat => wire::chat::completion_id(&ids),
        _ => format!("sim-{id}"),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", value.clone());
        if wire == Wire::Anthropic {
            headers.insert("request-id", value);
        }
    }

    if let Some((status, body)) = fault.and_then(|fault| wire::fault_response(wire, fault)) {
        retry_headers(&mut headers, &options.retry_hint);
        guard.fail();
        return (status, headers, Json(body)).into_response();
    }
    // The delay before the first piece: normally measured on the body; `slow_first_byte`
    // moves it before the headers, where a client's connect-phase watchdog looks.
    let first_piece_at = if fault == Some(Fault::SlowFirstByte) {
        let hold = if options.first_byte_delay.is_zero() {
            SLOW_FIRST_BYTE_DEFAULT
        } else {
            options.first_byte_delay
        };
        // A client that gives up meanwhile drops this future and the guard records it.
        tokio::time::sleep_until(started + hold).await;
        Instant::now()
    } else {
        started + options.first_byte_delay
    };
    let mid_stream = fault.filter(|fault| fault.is_mid_stream());
    let switch = switch.map(|Extension(switch)| switch);

    if request.stream {
        let after = options.fault_after(reply.pieces());
        let writer = StreamWriter::new(wire, &ids, request.include_usage.then_some(usage));
        let mut stream =
            ReplyStream::new(reply, writer, first_piece_at, options.token_delay, guard);
        if let Some(fault) = mid_stream {
            stream = stream.with_fault(MidStreamFault { fault, after }, switch);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return (headers, Body::from_stream(stream)).into_response();
    }

    if mid_stream == Some(Fault::Stall) {
        tokio::time::sleep(MAX_STALL).await;
    } else {
        let pieces = u32::try_from(reply.pieces()).unwrap_or(u32::MAX);
        let last_piece_at =
            first_piece_at + options.token_delay.saturating_mul(pieces.saturating_sub(1));
        // If the client disconnects meanwhile, hyper drops this future and with it the
        // guard, which records the request as cancelled.
        tokio::time::sleep_until(last_piece_at).await;
    }
    let body = wire::completion_body(wire, &ids, &reply, usage);
    guard.first_byte();
    match mid_stream {
        None => {
            guard.delivered(usage.completion_tokens);
            guard.complete();
            (headers, Json(body)).into_response()
        }
        Some(fault) => {
            guard.fail();
            whole_body_fault(wire, fault, &body, headers, switch)
        }
    }
}

/// A mid-stream fault applied to a non-streaming response (see the module docs).
fn whole_body_fault(
    wire: Wire,
    fault: Fault,
    body: &serde_json::Value,
    mut headers: HeaderMap,
    switch: Option<ResetSwitch>,
) -> Response {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match fault {
        Fault::Truncate => {
            let text = body.to_string();
            let mut half = text.len() / 2;
            while !text.is_char_boundary(half) {
                half -= 1;
            }
            (headers, text[..half].to_owned()).into_response()
        }
        Fault::Malformed => (headers, "{\"conclave-sim\": this is not JSON").into_response(),
        Fault::Reset => {
            if let Some(switch) = switch {
                switch.trip();
            }
            let failing = futures::stream::once(async {
                Err::<Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                ))
            });
            (headers, Body::from_stream(failing)).into_response()
        }
        // stream_error, and a stall that outlasted its bound.
        _ => match wire::fault_response(wire, Fault::ServerError) {
            Some((status, body)) => (status, headers, Json(body)).into_response(),
            None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
    }
}

/// The retry headers of a status fault: `retry-after-ms`, and `retry-after` in seconds or as
/// an HTTP date (rounded up to the next whole second, so the client waits at least the
/// seconds asked for).
fn retry_headers(headers: &mut HeaderMap, hint: &RetryHint) {
    if let Some(millis) = hint.millis {
        headers.insert(
            HeaderName::from_static("retry-after-ms"),
            HeaderValue::from(millis),
        );
    }
    if let Some(seconds) = hint.seconds {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(seconds) = hint.date_in_seconds {
        let at = SystemTime::now() + Duration::from_secs(seconds);
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let whole = since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0);
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(whole));
        if let Ok(value) = HeaderValue::from_str(&date) {
            headers.insert(header::RETRY_AFTER, value);
        }
    }
}

/// Answers a request the simulator cannot serve with a 400 in the format's error envelope.
fn reject(state: &SimState, wire: Wire, message: &str) -> Response {
    state.log().reject();
    tracing::warn!(%message, wire = wire.as_str(), "rejected simulated request");
    let (status, body) = wire::invalid_request(wire, message);
    (status, Json(body)).into_response()
}

/// `GET /v1/models`: any model name is accepted, so one representative entry.
async fn list_models() -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": "sim", "object": "model", "created": 0, "owned_by": "conclave-sim"}],
    }))
}

/// `GET /health`.
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /__sim/requests`.
async fn list_requests(State(state): State<Arc<SimState>>) -> Json<Vec<RequestRecord>> {
    Json(state.log().records())
}

/// `GET /__sim/stats`.
async fn stats(State(state): State<Arc<SimState>>) -> Json<crate::SimStats> {
    let summary = state.log().summary();
    Json(stats_from(summary))
}

/// `POST /__sim/reset`.
async fn reset(State(state): State<Arc<SimState>>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

/// Any other route: a 404 shaped like OpenAI's.
async fn unknown_route(method: Method, uri: Uri) -> Response {
    let message = format!("Unknown request URL: {method} {}.", uri.path());
    (
        StatusCode::NOT_FOUND,
        Json(wire::chat::error_body(
            &message,
            "invalid_request_error",
            Some("unknown_url"),
        )),
    )
        .into_response()
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
