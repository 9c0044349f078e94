//! An OpenAI-compatible face of `conclave server --http`: any OpenAI SDK can call a conclave
//! as if it were a model.
//!
//! | Route | What it does |
//! |---|---|
//! | `GET /v1/models` | `conclave` (the server's `--config`, when it has one) and `conclave/NAME` for every `NAME.yaml` in the config directory |
//! | `POST /v1/chat/completions` | runs one session; `stream: true` answers with `chat.completion.chunk` Server-Sent Events, else one `chat.completion` |
//!
//! **Model → config.** `model: "conclave"` runs the server's own `--config`; `"conclave/NAME"`
//! runs `NAME.yaml` from the config directory, exactly as `"config": "NAME.yaml"` of `POST
//! /sessions` does: resolved only inside `--config-dir`, loaded untrusted, every backend
//! checked against the allow-lists (see the `server` module docs, "Trust"). A name that is
//! not there is a 404 `model_not_found`, whatever the reason, so the disk cannot be probed.
//!
//! **Messages → task.** The last message must be the user's: it is the question. Earlier
//! user/assistant messages become the conversation's history (consecutive user messages are
//! joined); `system` / `developer` messages are put before the question as instructions, since
//! a session has no system message of its own for the user. Content is a string or an array of
//! `text` parts; other parts (images, audio) are refused with a 400 saying so.
//!
//! **Answer.** The final answer is the message content. Streaming sends the final presentation
//! as `delta.content` while the presenting agent writes it (its turn is the one journaled with
//! mode `present`); whatever the presenter's stream did not carry (a session that ended
//! without a presentation, a watcher that lagged) is sent when the final answer is known.
//! With `"stream_options": {"include_progress": true}` (or `"conclave_progress": true`) the
//! agents' own streams and the session's milestones come first as `delta.reasoning_content`,
//! the field reasoning models use, so clients that show reasoning show the deliberation.
//! `usage` sums every agent's tokens (the last chunk when `stream_options.include_usage`
//! is set; always in a non-streamed response). The response's `conclave` field carries the
//! session id, why it ended and the winner.
//!
//! **Errors** use OpenAI's envelope `{"error": {"message", "type", "param", "code"}}` and its
//! status codes: 400 `invalid_request_error`, 401 (the bearer token is the API key), 404
//! `model_not_found`, 429 when `--max-queued` sessions wait, 500/503 for a session that could
//! not run or produced no answer. An error after a stream began is sent as a last event
//! `{"error": {...}}`, which the SDKs raise.
//!
//! **Cancel.** A client that goes away (closes the stream, or the connection of a
//! non-streamed request) cancels its session: it ends at once with its best answer so far,
//! journaled like any cancel, rather than spending tokens for nobody.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tracing::info;

use super::{Job, Server, SessionEntry, SubmitError, Submitter};
use crate::cli::args::EXIT_USAGE;

/// The model name of the server's default config.
pub const DEFAULT_MODEL: &str = "conclave";

#[derive(Clone)]
struct OpenAi {
    server: Arc<Server>,
    token: Option<Arc<str>>,
}

/// The `/v1` routes, with their own bearer check (answering in OpenAI's error envelope). The
/// caller adds the server's request-wide layers (same-site checks, body limit, timeouts).
pub fn routes<S: Clone + Send + Sync + 'static>(
    server: Arc<Server>,
    token: Option<Arc<str>>,
) -> Router<S> {
    let state = OpenAi { server, token };
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(completions))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// OpenAI's error envelope.
fn error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: impl Into<String>,
) -> Response {
    (status, axum::Json(error_body(kind, code, message))).into_response()
}

fn error_body(kind: &str, code: Option<&str>, message: impl Into<String>) -> Value {
    json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}})
}

fn invalid(message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        message,
    )
}

/// Compares without an early exit, so timing does not reveal how much of a guess matched.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn authorize(State(api): State<OpenAi>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()));
        if !ok {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                Some("invalid_api_key"),
                "the API key must be this server's bearer token (--http-token-file or CONCLAVE_HTTP_TOKEN)",
            );
        }
    }
    next.run(request).await
}

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(api): State<OpenAi>) -> Response {
    let server = api.server.clone();
    let names = tokio::task::spawn_blocking(move || model_names(&server))
        .await
        .unwrap_or_default();
    let data: Vec<Value> = names
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "conclave"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `conclave` when the server has a default config, and `conclave/NAME` for each `NAME.yaml`
/// directly in the config directory, sorted.
fn model_names(server: &Server) -> Vec<String> {
    let mut names = Vec::new();
    if server.args.config.is_some() {
        names.push(DEFAULT_MODEL.to_owned());
    }
    if let Some(dir) = &server.config_dir
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        let mut found: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".yaml").map(str::to_owned))
            .filter(|stem| {
                !stem.is_empty() && !stem.starts_with('.') && {
                    let name = std::path::PathBuf::from(format!("{stem}.yaml"));
                    super::resolve_config_name(dir, &name).is_some()
                }
            })
            .map(|stem| format!("{DEFAULT_MODEL}/{stem}"))
            .collect();
        found.sort();
        names.extend(found);
    }
    names
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// conclave's own switch for the agents' progress as `reasoning_content`.
    #[serde(default)]
    conclave_progress: bool,
    // Sampling parameters (temperature, max_tokens, ...) are the config's business: accepted
    // and ignored, as the agents' own settings apply.
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
    #[serde(default)]
    include_progress: bool,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

/// A message's text: a string, or the `text` parts of an array.
fn text_of(message: &Message, index: usize) -> Result<String, String> {
    match &message.content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(piece)) => text.push_str(piece),
                    (kind, _) => {
                        return Err(format!(
                            "messages[{index}]: only text content is supported (got a `{}` part)",
                            kind.unwrap_or("untyped")
                        ));
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(format!(
            "messages[{index}].content must be a string or an array of text parts"
        )),
    }
}

/// The question and history of a conversation (see the module docs).
fn task_of(messages: &[Message]) -> Result<(String, Vec<(String, String)>), String> {
    let Some((last, earlier)) = messages.split_last() else {
        return Err("`messages` is empty; the last message must be the user's question".into());
    };
    if last.role != "user" {
        return Err(format!(
            "the last message must have role `user` (the question), not `{}`",
            last.role
        ));
    }
    let mut instructions = Vec::new();
    let mut history = Vec::new();
    let mut asked: Option<String> = None;
    for (index, message) in earlier.iter().enumerate() {
        let text = text_of(message, index)?;
        match message.role.as_str() {
            "system" | "developer" => instructions.push(text),
            "user" => {
                asked = Some(match asked.take() {
                    Some(before) => format!("{before}\n\n{text}"),
                    None => text,
                });
            }
            "assistant" => history.push((asked.take().unwrap_or_default(), text)),
            other => {
                return Err(format!(
                    "messages[{index}] has role `{other}`; conclave takes system, developer, user and assistant messages"
                ));
            }
        }
    }
    let mut question = text_of(last, messages.len() - 1)?;
    if let Some(pending) = asked {
        question = format!("{pending}\n\n{question}");
    }
    if question.trim().is_empty() {
        return Err("the last user message is empty".into());
    }
    if !instructions.is_empty() {
        question = format!("Instructions: {}\n\n{question}", instructions.join("\n\n"));
    }
    Ok((question, history))
}

/// The config a model name runs: `None` for the default, `Some(file name)` otherwise; `Err`
/// with the message of a 404 `model_not_found`.
fn config_of(model: &str) -> Result<Option<std::path::PathBuf>, String> {
    if model == DEFAULT_MODEL {
        return Ok(None);
    }
    match model.strip_prefix("conclave/") {
        Some(name) if !name.is_empty() => Ok(Some(format!("{name}.yaml").into())),
        _ => Err(format!(
            "no model `{model}` here: use `{DEFAULT_MODEL}` (the server's --config) or `{DEFAULT_MODEL}/NAME` (NAME.yaml in its config directory); GET /v1/models lists them"
        )),
    }
}

fn refusal(refused: SubmitError, model: &str) -> Response {
    match refused {
        SubmitError::NotFound(_) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("no model `{model}` here; GET /v1/models lists them"),
        ),
        SubmitError::Busy(message) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message,
        ),
        SubmitError::Stopping => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            None,
            "the server is stopping",
        ),
        refused @ (SubmitError::Invalid(_) | SubmitError::Conflict(_) | SubmitError::InUse(_)) => {
            invalid(refused.to_string())
        }
    }
}

/// Cancels the session when dropped before the session ended: the client went away.
struct CancelOnDrop(Arc<SessionEntry>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.0.done.is_cancelled() {
            info!(session = %self.0.id, "the OpenAI client went away; cancelling its session");
            self.0.cancel.cancel();
        }
    }
}

async fn completions(State(api): State<OpenAi>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejected) => {
            return error(
                rejected.status(),
                "invalid_request_error",
                None,
                format!("the body could not be read: {}", rejected.body_text()),
            );
        }
    };
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return invalid(format!(
                "the body must be a chat completion request {{\"model\", \"messages\", \"stream\"?}}: {e}"
            ));
        }
    };
    let (question, history) = match task_of(&request.messages) {
        Ok(task) => task,
        Err(message) => return invalid(message),
    };
    let config = match config_of(&request.model) {
        Ok(config) => config,
        Err(message) => {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                message,
            );
        }
    };
    let job = Job {
        question,
        config,
        config_yaml: None,
        session_id: None,
        conversation: None,
        history,
    };
    let entry = match api.server.submit(job, Submitter::Client) {
        Ok(entry) => entry,
        Err(refused) => return refusal(refused, &request.model),
    };
    info!(session = %entry.id, model = %request.model, stream = request.stream, "chat completion started");
    let options = request.stream_options.unwrap_or_default();
    if request.stream {
        stream(
            entry,
            request.model,
            options.include_usage,
            options.include_progress || request.conclave_progress,
        )
    } else {
        whole(entry, request.model).await
    }
}

fn usage_of(result: &Value) -> Value {
    let input = result["usage"]["input_tokens"].as_u64().unwrap_or(0);
    let output = result["usage"]["output_tokens"].as_u64().unwrap_or(0);
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input.saturating_add(output)})
}

fn about(result: &Value) -> Value {
    json!({
        "session": result["session"],
        "reason": result["reason"],
        "winner": result["winner"],
        "exit_code": result["exit_code"],
        "cost_usd": result["cost_usd"],
    })
}

/// The error of a session that ended without an answer, or `None`.
fn failed(result: &Value) -> Option<(StatusCode, String)> {
    if let Some(message) = result["error"].as_str() {
        let status = if result["exit_code"].as_i64() == Some(i64::from(EXIT_USAGE)) {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return Some((status, message.to_owned()));
    }
    if result["final_answer"].as_str().is_none() {
        return Some((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the conclave produced no answer (the session ended: {})",
                result["reason"].as_str().unwrap_or("unknown")
            ),
        ));
    }
    None
}

async fn whole(entry: Arc<SessionEntry>, model: String) -> Response {
    // A client that drops the connection drops this future, and the guard cancels the session.
    let guard = CancelOnDrop(entry.clone());
    let limit = entry.timeout.saturating_add(super::http::WAIT_GRACE);
    if tokio::time::timeout(limit, entry.done.cancelled())
        .await
        .is_err()
    {
        drop(guard);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("timeout"),
            format!(
                "session `{}` did not end in time (it may have waited for a slot); it was cancelled",
                entry.id
            ),
        );
    }
    drop(guard);
    let result = entry.result().unwrap_or(Value::Null);
    if let Some((status, message)) = failed(&result) {
        let kind = if status == StatusCode::BAD_REQUEST {
            "invalid_request_error"
        } else {
            "server_error"
        };
        return error(status, kind, None, message);
    }
    axum::Json(json!({
        "id": format!("chatcmpl-{}", entry.id),
        "object": "chat.completion",
        "created": unix_s(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result["final_answer"]},
            "finish_reason": "stop",
        }],
        "usage": usage_of(&result),
        "conclave": about(&result),
    }))
    .into_response()
}

/// Builds the chunks of a streamed completion.
struct Chunks {
    id: String,
    model: String,
    created: u64,
}

impl Chunks {
    fn delta(&self, delta: Value, finish: Option<&str>) -> Event {
        self.event(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    }

    fn event(&self, value: Value) -> Event {
        Event::default().data(value.to_string())
    }
}

/// What the stream makes of the session's feed (the `--display json` lines).
struct Feed {
    progress: bool,
    /// (agent, turn) of presentation turns.
    presenting: HashSet<(String, u64)>,
    /// The final answer's text sent so far.
    sent: String,
    /// The agent whose progress text was shown last (a header when it changes).
    last_agent: Option<String>,
    final_seen: bool,
}

impl Feed {
    /// The deltas a feed line gives: (`content`?, `reasoning_content`?).
    fn take(&mut self, line: &str) -> Vec<Value> {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            return Vec::new();
        };
        let kind = value["type"].as_str().unwrap_or_default();
        let agent = value["agent"].as_str().unwrap_or_default().to_owned();
        match kind {
            "turn_started" => {
                let turn = value["turn"].as_u64().unwrap_or(0);
                if value["mode"] == "present" {
                    self.presenting.insert((agent.clone(), turn));
                }
                self.milestone(
                    &agent,
                    &format!("turn {turn} ({})", value["mode"].as_str().unwrap_or("?")),
                )
            }
            "chunk" => {
                let turn = value["turn"].as_u64().unwrap_or(0);
                let text = value["data"].as_str().unwrap_or_default();
                let chunk_kind = value["kind"].as_str().unwrap_or_default();
                if text.is_empty() {
                    return Vec::new();
                }
                if chunk_kind == "content" && self.presenting.contains(&(agent.clone(), turn)) {
                    self.sent.push_str(text);
                    return vec![json!({"content": text})];
                }
                if self.progress && matches!(chunk_kind, "content" | "reasoning") {
                    let mut out = String::new();
                    if self.last_agent.as_deref() != Some(&agent) {
                        out.push_str(&format!("\n[{agent}] "));
                        self.last_agent = Some(agent);
                    }
                    out.push_str(text);
                    return vec![json!({"reasoning_content": out})];
                }
                Vec::new()
            }
            "answer_accepted" => self.milestone(
                &agent,
                &format!("answer {} accepted", value["label"].as_str().unwrap_or("?")),
            ),
            "vote_accepted" => self.milestone(
                &agent,
                &format!("voted for {}", value["target"].as_str().unwrap_or("?")),
            ),
            "final" => {
                self.final_seen = true;
                let content = value["content"].as_str().unwrap_or_default();
                // What the presenter's stream did not carry (see the module docs).
                match content.strip_prefix(self.sent.as_str()) {
                    Some(rest) if !rest.is_empty() => {
                        self.sent.push_str(rest);
                        vec![json!({"content": rest})]
                    }
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    fn milestone(&mut self, agent: &str, what: &str) -> Vec<Value> {
        if !self.progress {
            return Vec::new();
        }
        self.last_agent = None;
        vec![json!({"reasoning_content": format!("\n· {agent}: {what}\n")})]
    }
}

fn stream(
    entry: Arc<SessionEntry>,
    model: String,
    include_usage: bool,
    progress: bool,
) -> Response {
    let chunks = Chunks {
        id: format!("chatcmpl-{}", entry.id),
        model,
        created: unix_s(),
    };
    let mut watch = entry.watch();
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        // Dropped when this task ends: before the session ended means the client left.
        let _guard = CancelOnDrop(entry.clone());
        let mut feed = Feed {
            progress,
            presenting: HashSet::new(),
            sent: String::new(),
            last_agent: None,
            final_seen: false,
        };
        if tx
            .send(chunks.delta(json!({"role": "assistant", "content": ""}), None))
            .await
            .is_err()
        {
            return;
        }
        for line in std::mem::take(&mut watch.kept) {
            for delta in feed.take(&line) {
                if tx.send(chunks.delta(delta, None)).await.is_err() {
                    return;
                }
            }
        }
        if let Some(mut live) = watch.live.take() {
            loop {
                let line = tokio::select! {
                    line = live.recv() => line,
                    () = tx.closed() => return,
                };
                match line {
                    Ok(line) => {
                        for delta in feed.take(&line) {
                            if tx.send(chunks.delta(delta, None)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                }
            }
        }
        // The feed closes when the session's result is in.
        let waited = tokio::select! {
            () = entry.done.cancelled() => true,
            () = tx.closed() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => false,
        };
        let result = if waited {
            entry.result().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        if let Some((_, message)) = failed(&result).filter(|_| feed.sent.is_empty()) {
            let _ = tx
                .send(chunks.event(error_body("server_error", None, message)))
                .await;
            return;
        }
        if !feed.final_seen
            && let Some(answer) = result["final_answer"].as_str()
            && let Some(rest) = answer.strip_prefix(feed.sent.as_str())
            && !rest.is_empty()
        {
            let _ = tx.send(chunks.delta(json!({"content": rest}), None)).await;
        }
        let last = json!({
            "id": chunks.id,
            "object": "chat.completion.chunk",
            "created": chunks.created,
            "model": chunks.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "conclave": about(&result),
        });
        let _ = tx.send(chunks.event(last)).await;
        if include_usage {
            let usage = json!({
                "id": chunks.id,
                "object": "chat.completion.chunk",
                "created": chunks.created,
                "model": chunks.model,
                "choices": [],
                "usage": usage_of(&result),
            });
            let _ = tx.send(chunks.event(usage)).await;
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(event), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: Value) -> Message {
        Message {
            role: role.to_owned(),
            content: Some(content),
        }
    }

    #[test]
    fn messages_become_question_history_and_instructions() {
        let messages = vec![
            message("system", json!("Be brief.")),
            message("user", json!("Hi?")),
            message("assistant", json!("Hello.")),
            message(
                "user",
                json!([{"type": "text", "text": "Two"}, {"type": "text", "text": "+2?"}]),
            ),
        ];
        let (question, history) = task_of(&messages).expect("valid");
        assert_eq!(question, "Instructions: Be brief.\n\nTwo+2?");
        assert_eq!(history, vec![("Hi?".to_owned(), "Hello.".to_owned())]);
        let error = task_of(&[message("assistant", json!("x"))]).expect_err("last not user");
        assert!(error.contains("role `user`"), "{error}");
        let error = task_of(&[message("user", json!([{"type": "image_url"}]))]).expect_err("image");
        assert!(error.contains("only text"), "{error}");
        assert!(task_of(&[]).is_err());
    }

    #[test]
    fn model_names_map_to_configs() {
        assert_eq!(config_of("conclave").ok(), Some(None));
        assert_eq!(
            config_of("conclave/team").ok(),
            Some(Some(std::path::PathBuf::from("team.yaml")))
        );
        assert!(config_of("gpt-4o").is_err());
        assert!(config_of("conclave/").is_err());
    }

    #[test]
    fn the_feed_streams_the_presentation_and_the_rest_of_the_final_answer() {
        let mut feed = Feed {
            progress: false,
            presenting: HashSet::new(),
            sent: String::new(),
            last_agent: None,
            final_seen: false,
        };
        let line = |v: Value| v.to_string();
        assert!(feed
            .take(&line(json!({"type": "chunk", "agent": "a", "turn": 1, "kind": "content", "data": "draft"}))).is_empty());
        feed.take(&line(
            json!({"type": "turn_started", "agent": "a", "turn": 4, "mode": "present"}),
        ));
        let out = feed.take(&line(
            json!({"type": "chunk", "agent": "a", "turn": 4, "kind": "content", "data": "The "}),
        ));
        assert_eq!(out, vec![json!({"content": "The "})]);
        let out = feed.take(&line(json!({"type": "final", "content": "The answer."})));
        assert_eq!(out, vec![json!({"content": "answer."})]);
        assert!(feed.final_seen);
    }
}
