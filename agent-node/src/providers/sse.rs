//! Server-sent events over HTTP, shared by every streaming backend.
//!
//! Framing (LF, CR or CRLF line ends, multi-line `data:`, comments, a BOM, events split across
//! network reads, UTF-8 split across reads) is handled by `eventsource-stream`, which follows
//! the WHATWG rules: an event is dispatched at a blank line, so a last event with no blank line
//! after it is dropped, as every SDK does. This module adds what a provider client needs on
//! top: the HTTP status is checked before anything is parsed (a 404 can arrive with a
//! `text/event-stream` content type and a bare JSON body), and transport, UTF-8 and framing
//! failures become [`ProviderError`]s. In front of `eventsource-stream`, a line splitter keeps
//! the cost linear and the memory bounded whatever the server sends (see `Lines`).

use std::pin::Pin;
use std::task::{Context, Poll};

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};

use super::error::{
    MAX_ERROR_BODY_BYTES, ProviderError, error_body_summary, error_chain, read_bounded, snippet,
};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name; `message` when the server gave none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// The events of one response. A failure ends the stream as its last item.
pub type SseStream = Pin<Box<dyn Stream<Item = Result<SseEvent, ProviderError>> + Send>>;

/// Checks the response status and, when it is a success, returns its events.
///
/// A non-success status becomes [`ProviderError::Http`] with the (bounded) body and the retry
/// headers. A 200 whose content type is `application/json` means the server ignored
/// `stream: true` or reported an error as plain JSON; it becomes [`ProviderError::InStream`]
/// when the body is an error envelope and [`ProviderError::Malformed`] otherwise.
pub async fn open(
    provider: &str,
    url: &str,
    mut response: reqwest::Response,
) -> Result<SseStream, ProviderError> {
    if !response.status().is_success() {
        return Err(ProviderError::from_response(provider, response).await);
    }
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if is_json {
        let body = read_bounded(&mut response, MAX_ERROR_BODY_BYTES).await;
        let text = String::from_utf8_lossy(&body);
        return Err(json_instead_of_events(&text));
    }
    Ok(events(response.bytes_stream(), provider, url))
}

fn json_instead_of_events(body: &str) -> ProviderError {
    let error = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    match error {
        Some(error) if !error.is_null() => {
            let kind = error
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("error")
                .to_owned();
            let code = error.get("code").and_then(|c| match c {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            ProviderError::InStream {
                kind,
                message: error_body_summary(body),
                code,
            }
        }
        _ => ProviderError::Malformed(format!(
            "expected an event stream but got a JSON document (the server ignored `stream: true`?): {}",
            snippet(body)
        )),
    }
}

/// Parses any byte stream as SSE. `provider` and `url` only name the peer in errors.
pub fn events<S, B, E>(bytes: S, provider: &str, url: &str) -> SseStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]>,
    E: std::error::Error + Send + 'static,
{
    let peer = format!("{provider} at {url}");
    let stream = Lines::new(bytes).eventsource().map(move |item| match item {
        Ok(event) => Ok(SseEvent {
            event: event.event,
            data: event.data,
        }),
        Err(EventStreamError::Transport(LineError::Transport(e))) => {
            Err(ProviderError::Connect(format!(
                "connection to {peer} broke while streaming: {}",
                error_chain(&e)
            )))
        }
        Err(EventStreamError::Transport(LineError::Utf8(e))) => Err(ProviderError::Malformed(
            format!("the event stream from {peer} is not valid UTF-8: {e}"),
        )),
        Err(EventStreamError::Transport(LineError::TooLong(what))) => Err(
            ProviderError::Malformed(format!("the event stream from {peer} has {what}")),
        ),
        Err(EventStreamError::Utf8(e)) => Err(ProviderError::Malformed(format!(
            "the event stream from {peer} is not valid UTF-8: {e}"
        ))),
        Err(EventStreamError::Parser(e)) => Err(ProviderError::Malformed(format!(
            "the event stream from {peer} is not valid SSE: {e}"
        ))),
    });
    Box::pin(stream)
}

/// The longest line accepted, and the most `data:` bytes one event may gather: generous for
/// any real provider event (a Responses `response.completed` repeats the whole answer), and a
/// bound on what a broken or hostile server can make a client buffer.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Hands `eventsource-stream` the body one complete line at a time, validated as UTF-8.
///
/// `eventsource-stream` re-parses (and shifts) its whole buffer for every line and every read,
/// so a read holding many lines, or a long line arriving in many reads, costs quadratic time
/// (64 KiB of blank lines in one read took a second; 1 MiB took minutes), and after an invalid
/// UTF-8 byte it buffers everything that follows until the body ends. This adapter scans each
/// byte once, fails at the first invalid line, and caps lines and events at
/// [`MAX_EVENT_BYTES`]. Line ends are CR, LF or CRLF (a CRLF may be split across reads).
///
/// It also strips the byte order mark itself: `eventsource-stream` 0.2.3 removes a leading
/// U+FEFF with `&string[1..]`, which panics (the BOM is three bytes). To keep that code from
/// ever seeing a BOM, the first piece handed on is a blank line, a no-op for SSE.
struct Lines<S> {
    inner: Pin<Box<S>>,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Lines (with their ends) ready to hand on.
    ready: std::collections::VecDeque<Vec<u8>>,
    /// Whether the last line ended with a CR, so an LF first in the next read is its CRLF.
    after_cr: bool,
    /// `data` bytes of the event being gathered (since the last blank line).
    event_bytes: usize,
    /// Why the stream stops, once the lines before it have been handed on.
    error: Option<String>,
    /// Whether the first line was seen (and its byte order mark, if any, removed).
    started: bool,
    done: bool,
}

/// Why [`Lines`] stopped.
#[derive(Debug)]
enum LineError<E> {
    Transport(E),
    Utf8(std::str::Utf8Error),
    TooLong(String),
}

impl<E: std::fmt::Display> std::fmt::Display for LineError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::Transport(e) => e.fmt(f),
            LineError::Utf8(e) => e.fmt(f),
            LineError::TooLong(what) => f.write_str(what),
        }
    }
}

impl<E: std::error::Error> std::error::Error for LineError<E> {}

impl<S> Lines<S> {
    fn new(inner: S) -> Self {
        Self {
            inner: Box::pin(inner),
            partial: Vec::new(),
            ready: std::collections::VecDeque::from([b"\n".to_vec()]),
            after_cr: false,
            event_bytes: 0,
            error: None,
            started: false,
            done: false,
        }
    }

    /// Splits `bytes` into lines; an error when a line or an event grows too long.
    fn push(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                // The LF of a CRLF split across reads: part of the line already handed on.
                self.ready.push_back(vec![b'\n']);
                bytes = &bytes[1..];
            }
        }
        while let Some(end) = bytes.iter().position(|b| *b == b'\n' || *b == b'\r') {
            if self.partial.len() + end > MAX_EVENT_BYTES {
                return Err(format!("a line longer than {MAX_EVENT_BYTES} bytes"));
            }
            let mut stop = end + 1;
            if bytes[end] == b'\r' {
                match bytes.get(end + 1) {
                    Some(b'\n') => stop += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&bytes[..stop]);
            let line = self.without_bom(line);
            self.check_line(&line[..line.len() - (stop - end)])?;
            self.ready.push_back(line);
            bytes = &bytes[stop..];
        }
        if self.partial.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(format!("a line longer than {MAX_EVENT_BYTES} bytes"));
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// The first line without its byte order mark; other lines unchanged.
    fn without_bom(&mut self, mut line: Vec<u8>) -> Vec<u8> {
        if !self.started {
            self.started = true;
            if line.starts_with("\u{feff}".as_bytes()) {
                line.drain(..3);
            }
        }
        line
    }

    /// Counts a complete line (without its end) towards the event it belongs to.
    fn check_line(&mut self, line: &[u8]) -> Result<(), String> {
        if line.is_empty() {
            self.event_bytes = 0;
        } else if line.starts_with(b"data") {
            self.event_bytes += line.len();
            if self.event_bytes > MAX_EVENT_BYTES {
                return Err(format!(
                    "an event with more than {MAX_EVENT_BYTES} bytes of data"
                ));
            }
        }
        Ok(())
    }
}

impl<S, B, E> Stream for Lines<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    type Item = Result<Vec<u8>, LineError<E>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(line) = this.ready.pop_front() {
                if let Err(e) = std::str::from_utf8(&line) {
                    this.ready.clear();
                    this.error = None;
                    this.done = true;
                    return Poll::Ready(Some(Err(LineError::Utf8(e))));
                }
                return Poll::Ready(Some(Ok(line)));
            }
            if let Some(what) = this.error.take() {
                return Poll::Ready(Some(Err(LineError::TooLong(what))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => {
                    if let Err(what) = this.push(bytes.as_ref()) {
                        // The complete lines before the one that is too long still count.
                        this.error = Some(what);
                        this.done = true;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(LineError::Transport(e))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if !this.partial.is_empty() {
                        // A last line without an end: the SSE rules drop it, but it is still
                        // checked for UTF-8 (a body cut inside a character is an error).
                        let line = std::mem::take(&mut this.partial);
                        let line = this.without_bom(line);
                        this.ready.push_back(line);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    async fn collect(parts: Vec<&'static [u8]>) -> Vec<Result<SseEvent, String>> {
        let bytes = stream::iter(
            parts
                .into_iter()
                .map(Ok::<_, std::io::Error>)
                .collect::<Vec<_>>(),
        );
        events(bytes, "test", "http://x")
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    fn ev(event: &str, data: &str) -> Result<SseEvent, String> {
        Ok(SseEvent {
            event: event.into(),
            data: data.into(),
        })
    }

    #[tokio::test]
    async fn splits_and_line_endings() {
        let got = collect(vec![
            b"data: {\"a\":",
            b"1}\r\n\r\nevent: error\r",
            b"\ndata: x\r\n",
            b"data: y\r\n\r\n: comment\n\ndata: \xc3",
            b"\xa9\n\n",
        ])
        .await;
        assert_eq!(
            got,
            vec![
                ev("message", "{\"a\":1}"),
                ev("error", "x\ny"),
                ev("message", "é")
            ]
        );
    }

    #[tokio::test]
    async fn last_event_without_blank_line_is_dropped() {
        let got = collect(vec![b"data: one\n\ndata: two"]).await;
        assert_eq!(got, vec![ev("message", "one")]);
    }

    #[tokio::test]
    async fn transport_errors_become_connect() {
        let bytes = stream::iter(vec![
            Ok(&b"data: one\n\n"[..]),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )),
        ]);
        let got: Vec<_> = events(bytes, "p", "http://x").collect().await;
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[1], Err(ProviderError::Connect(m)) if m.contains("reset")));
    }

    #[test]
    fn json_error_body_on_200_is_in_stream() {
        let err = json_instead_of_events(r#"{"error":{"message":"bad","type":"x","code":7}}"#);
        assert!(
            matches!(&err, ProviderError::InStream { kind, message, code }
                if kind == "x" && message == "bad" && code.as_deref() == Some("7")),
            "{err:?}"
        );
        assert!(matches!(
            json_instead_of_events(r#"{"choices":[]}"#),
            ProviderError::Malformed(_)
        ));
    }
}
