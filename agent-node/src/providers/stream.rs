//! What every wire format shares between the bytes and the chunks: the [`EventParser`] trait
//! (SSE events in, [`StreamChunk`]s out, an end hook), the one stream adapter over it
//! ([`ParsedStream`]), the in-stream error helper, and [`open`], the start of every HTTP
//! streaming call (encode the body, post it, check the status, parse the events).
//!
//! Design: each wire format is a pure state machine with no I/O (so tests and fuzzers drive
//! it directly with events) and knows nothing of polling; [`ParsedStream`] owns the event
//! stream, the parser and a queue of chunks the parser has produced but the caller has not
//! taken yet. One parser step may yield several chunks (a finish reason flushes every
//! pending tool call), and the queue hands them out one per `poll_next`. After
//! [`Flow::Done`], a transport error or the end of the body, nothing more is read.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use conclave_protocol::StreamChunk;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;

use super::client::Target;
use super::error::ProviderError;
use super::sse::{self, SseEvent, SseStream};
use crate::llm::ChatRequest;

/// The chunks of one streaming call. Errors after the first byte (connection lost, in-stream
/// error, malformed data, truncation) arrive as the stream's last item.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk, ProviderError>> + Send>>;

/// What a parser step produced, in order; an `Err` is always the last item of a stream.
pub type Out = VecDeque<Result<StreamChunk, ProviderError>>;

/// Whether the stream goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next event.
    Continue,
    /// The stream is over (its terminal event, an error, or malformed data); stop reading.
    Done,
}

/// A wire format's stream parser: a pure state machine, events in, chunks out.
pub trait EventParser {
    /// Handles one SSE event.
    fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow;

    /// Handles the end of the body (never called after [`Flow::Done`]): flushes what a
    /// complete answer still owes, or reports [`ProviderError::Truncated`].
    fn on_end(&mut self, out: &mut Out);
}

/// Turns SSE events into chunks with an [`EventParser`].
pub struct ParsedStream<P> {
    events: SseStream,
    parser: P,
    pending: Out,
    done: bool,
}

impl<P: EventParser + Default> ParsedStream<P> {
    /// Parses `events` (already checked for HTTP success) with a fresh parser.
    pub fn new(events: SseStream) -> Self {
        Self::with_parser(events, P::default())
    }
}

impl<P: EventParser> ParsedStream<P> {
    /// Parses `events` with `parser`.
    pub fn with_parser(events: SseStream, parser: P) -> Self {
        Self {
            events,
            parser,
            pending: VecDeque::new(),
            done: false,
        }
    }
}

impl<P> fmt::Debug for ParsedStream<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedStream")
            .field("parser", &std::any::type_name::<P>())
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<P: EventParser + Unpin> Stream for ParsedStream<P> {
    type Item = Result<StreamChunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.events.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(event))) => {
                    if this.parser.on_event(&event, &mut this.pending) == Flow::Done {
                        this.done = true;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.pending.push_back(Err(error));
                    this.done = true;
                }
                Poll::Ready(None) => {
                    this.parser.on_end(&mut this.pending);
                    this.done = true;
                }
            }
        }
    }
}

/// Posts `body` (with `headers` besides the key) to the target's URL and parses the answer
/// with `parser`. Errors before the first byte (encoding, connect, HTTP status) come back
/// here; later ones as the stream's last item. `wire` names the format in the debug log.
pub(crate) async fn open<P>(
    target: &Target,
    request: &ChatRequest,
    body: &Value,
    headers: Vec<(HeaderName, HeaderValue)>,
    wire: &str,
    parser: P,
) -> Result<ChunkStream, ProviderError>
where
    P: EventParser + Unpin + Send + 'static,
{
    let spec = &target.spec;
    let url = &target.endpoint;
    let body = serde_json::to_vec(body)
        .map_err(|e| ProviderError::Config(format!("could not encode the request: {e}")))?;
    tracing::debug!(
        provider = %spec.provider,
        model = %spec.model,
        url = %url,
        messages = request.messages.len(),
        tools = request.tools.len(),
        "starting {wire} stream"
    );
    let mut builder = target.post_json(url, body);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let response = builder
        .send()
        .await
        .map_err(|e| ProviderError::from_transport(&spec.provider, url, e))?;
    let events = sse::open(&spec.provider, url, response).await?;
    Ok(Box::pin(ParsedStream::with_parser(events, parser)))
}

/// Emits an in-stream error as a chunk (so the accumulator records it), then ends the stream
/// with it as [`ProviderError::InStream`].
pub(crate) fn push_in_stream_error(
    kind: String,
    message: String,
    code: Option<String>,
    out: &mut Out,
) {
    tracing::warn!(%kind, %message, code = code.as_deref(), "in-stream provider error");
    out.push_back(Ok(StreamChunk::Error {
        kind: kind.clone(),
        message: message.clone(),
        code: code.clone(),
    }));
    out.push_back(Err(ProviderError::InStream {
        kind,
        message,
        code,
    }));
}

/// (kind, message, code) of an error payload: `{"error": {...}}`, a bare error object, a
/// string, or text that is not JSON at all. `kind_key` names the field that holds the kind
/// (`type` for OpenAI and Anthropic, `status` for Google).
pub(crate) fn error_fields(data: &str, kind_key: &str) -> (String, String, Option<String>) {
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return ("error".into(), data.trim().to_owned(), None);
    };
    let error = value
        .get("error")
        .filter(|e| !e.is_null())
        .unwrap_or(&value);
    error_object_fields(error, kind_key)
}

/// (kind, message, code) of one error object (or string).
pub(crate) fn error_object_fields(
    error: &Value,
    kind_key: &str,
) -> (String, String, Option<String>) {
    if let Some(text) = error.as_str() {
        return ("error".into(), text.to_owned(), None);
    }
    let kind = error
        .get(kind_key)
        .and_then(Value::as_str)
        .unwrap_or("error")
        .to_owned();
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string());
    let code = match error.get("code") {
        Some(Value::String(code)) => Some(code.clone()),
        Some(Value::Number(code)) => Some(code.to_string()),
        _ => None,
    };
    (kind, message, code)
}

/// Test support: drives a parser over `events` (and its end hook, when `end` and the parser
/// did not stop first), folds the chunks and returns the folded output, the chunks and the
/// final error (its `Debug` text).
#[cfg(test)]
pub(crate) fn run_parser(
    mut parser: impl EventParser,
    events: &[SseEvent],
    end: bool,
) -> (
    crate::accumulate::TurnOutput,
    Vec<StreamChunk>,
    Option<String>,
) {
    let mut out = VecDeque::new();
    let mut done = false;
    for event in events {
        if parser.on_event(event, &mut out) == Flow::Done {
            done = true;
            break;
        }
    }
    if end && !done {
        parser.on_end(&mut out);
    }
    let mut turn = crate::accumulate::TurnOutput::default();
    let mut chunks = Vec::new();
    let mut error = None;
    for item in out {
        match item {
            Ok(chunk) => {
                turn.apply(&chunk);
                chunks.push(chunk);
            }
            Err(e) => error = Some(format!("{e:?}")),
        }
    }
    (turn, chunks, error)
}
