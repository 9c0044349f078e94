//! OpenAI Chat Completions streaming (`POST {base_url}/chat/completions`, `stream: true`), the
//! wire format of OpenAI and of nearly every OpenAI-compatible host (Groq, Together, vLLM,
//! Ollama, ...). Hosts differ in small ways, so parsing is lenient where that costs nothing:
//!
//! - reasoning arrives as `delta.reasoning_content` (DeepSeek, vLLM) or `delta.reasoning`
//!   (Groq, OpenRouter); either becomes [`StreamChunk::Reasoning`];
//! - a text field that is not a string (`content` as an array of parts) is reduced to its text;
//! - a tool-call fragment without `index` continues the previous call unless it brings a new id;
//!   a call that never got an id is given `call_{index}` so its result can refer to it;
//! - usage is read from the `choices: []` chunk (`stream_options.include_usage`), from any
//!   chunk that carries `usage`, or from Groq's `x_groq.usage`;
//! - an in-stream error is an `event: error` frame or a data object with a top-level `error`.
//!
//! Output order: text, reasoning, refusal and [`StreamChunk::ToolCallDelta`] as they arrive;
//! at the finish reason (or, without one, at `[DONE]`) one [`StreamChunk::ToolCall`] per call
//! in index order, then [`StreamChunk::Finish`]; usage whenever the server sends it. An
//! in-stream error yields [`StreamChunk::Error`] (so the accumulator records it) and then ends
//! the stream with [`ProviderError::InStream`]; tool calls still incomplete at that point are
//! dropped, since nothing must execute a call the model did not finish. A stream that ends
//! with no `[DONE]`, no finish reason and no error ends with [`ProviderError::Truncated`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use conclave_protocol::config::BackendSpec;
use conclave_protocol::{StreamChunk, ToolCall, Usage};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde_json::{Map, Value, json};

use super::{Backend, ChunkStream, ProviderError};
use crate::llm::{ChatMessage, ChatRequest};
use crate::sse::{self, SseEvent, SseStream, snippet};

/// `{base_url}/chat/completions`, whatever trailing slashes the user wrote.
pub fn endpoint(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// Whether the model is an OpenAI reasoning model (o1, o3, o4, gpt-5 families), which takes
/// `max_completion_tokens` instead of `max_tokens` and rejects `temperature` and `top_p`.
pub fn is_reasoning_model(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Set once the "options Chat Completions cannot express" notice has been logged, so a
/// session of many agents and turns says it once.
static IGNORED_OPTIONS_LOGGED: AtomicBool = AtomicBool::new(false);

/// The JSON request body. Public so tests and tools can show exactly what is sent.
///
/// The shared options Chat Completions can express become its parameters:
/// `options.reasoning_effort` → `reasoning_effort`, `options.verbosity` → `verbosity`.
/// `extra_body` is merged last, so a value there wins over both. Reasoning summaries and the
/// built-in web search and code execution tools need the Responses API; they are ignored,
/// with a log line once per process. Azure OpenAI deployments use this body unchanged.
pub fn request_body(
    spec: &BackendSpec,
    extra_body: Option<&Map<String, Value>>,
    request: &ChatRequest,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(spec.model.clone()));
    body.insert(
        "messages".into(),
        Value::Array(request.messages.iter().map(message_json).collect()),
    );
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    }
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        body.insert(
            "tool_choice".into(),
            Value::String(request.tool_choice.as_str().into()),
        );
    }
    body.insert("stream".into(), Value::Bool(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));

    let reasoning_model = is_reasoning_model(&spec.model);
    if reasoning_model {
        if spec.temperature.is_some() || spec.top_p.is_some() {
            tracing::debug!(
                model = %spec.model,
                "not sending temperature/top_p: reasoning models reject them"
            );
        }
    } else {
        if let Some(temperature) = spec.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        if let Some(top_p) = spec.top_p {
            body.insert("top_p".into(), json!(top_p));
        }
    }
    if let Some(max_tokens) = spec.max_tokens {
        let key = if reasoning_model {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(key.into(), json!(max_tokens));
    }
    let options = &spec.options;
    for (key, value) in [
        ("reasoning_effort", &options.reasoning_effort),
        ("verbosity", &options.verbosity),
    ] {
        if let Some(value) = value {
            body.insert(key.into(), Value::String(value.clone()));
        }
    }
    if (options.reasoning_summary.is_some() || options.web_search || options.code_execution)
        && !IGNORED_OPTIONS_LOGGED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            provider = %spec.provider,
            "this backend speaks Chat Completions: reasoning_summary, web_search and \
             code_execution are ignored (they need the Responses API)"
        );
    }
    if let Some(extra) = extra_body {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    Value::Object(body)
}

fn message_json(message: &ChatMessage) -> Value {
    match message {
        ChatMessage::System { content } => json!({ "role": "system", "content": content }),
        ChatMessage::User { content } => json!({ "role": "user", "content": content }),
        // Chat Completions has no way to send reasoning back; hosts re-derive it.
        ChatMessage::Assistant {
            content,
            tool_calls,
            reasoning: _,
        } => {
            let mut object = Map::new();
            object.insert("role".into(), Value::String("assistant".into()));
            // Strict servers reject a null content without tool calls.
            let content = match content {
                Some(text) => Value::String(text.clone()),
                None if tool_calls.is_empty() => Value::String(String::new()),
                None => Value::Null,
            };
            object.insert("content".into(), content);
            if !tool_calls.is_empty() {
                let calls = tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": { "name": call.name, "arguments": call.arguments },
                        })
                    })
                    .collect();
                object.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(object)
        }
        ChatMessage::Tool { call_id, content } => {
            json!({ "role": "tool", "tool_call_id": call_id, "content": content })
        }
    }
}

/// Sends the request and returns the parsed stream (see the module docs).
pub(crate) async fn stream(
    backend: &Backend,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let spec = &backend.spec;
    let body = request_body(spec, backend.extra_body.as_ref(), request);
    let body = serde_json::to_vec(&body)
        .map_err(|e| ProviderError::Config(format!("could not encode the request: {e}")))?;
    tracing::debug!(
        provider = %spec.provider,
        model = %spec.model,
        url = %backend.endpoint,
        messages = request.messages.len(),
        tools = request.tools.len(),
        "starting chat completions stream"
    );
    let response = backend
        .post_json(&backend.endpoint, body)
        .send()
        .await
        .map_err(|e| ProviderError::from_transport(&spec.provider, &backend.endpoint, e))?;
    let events = sse::open(&spec.provider, &backend.endpoint, response).await?;
    Ok(Box::pin(ChatStream::new(events)))
}

/// Turns SSE events into chunks; the parsing state lives in [`ChatStreamParser`].
pub struct ChatStream {
    events: SseStream,
    parser: ChatStreamParser,
    pending: VecDeque<Result<StreamChunk, ProviderError>>,
    done: bool,
}

impl ChatStream {
    /// Parses `events` (already checked for HTTP success) as a chat completions stream.
    pub fn new(events: SseStream) -> Self {
        Self {
            events,
            parser: ChatStreamParser::default(),
            pending: VecDeque::new(),
            done: false,
        }
    }
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for ChatStream {
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

/// Whether the stream goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next event.
    Continue,
    /// The stream is over (`[DONE]`, an error, or malformed data); stop reading.
    Done,
}

/// The pure state machine behind [`ChatStream`]: events in, chunks out. No I/O, so it can be
/// driven directly in tests.
#[derive(Debug, Default)]
pub struct ChatStreamParser {
    /// Tool calls being streamed, by index (a map: hosts may send indices in any order, and
    /// a sorted vector would make a long descending run quadratic).
    calls: BTreeMap<u32, PendingCall>,
    /// Whether a finish reason arrived.
    finished: bool,
}

#[derive(Debug, Default)]
struct PendingCall {
    id: String,
    name: String,
    arguments: String,
}

type Out = VecDeque<Result<StreamChunk, ProviderError>>;

impl ChatStreamParser {
    /// Handles one SSE event.
    pub fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow {
        if event.event == "error" {
            push_in_stream_error(&event.data, out);
            return Flow::Done;
        }
        if event.event != "message" {
            tracing::trace!(event = %event.event, "ignoring SSE event");
            return Flow::Continue;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.flush_calls(out);
            return Flow::Done;
        }
        let chunk: WireChunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                out.push_back(Err(ProviderError::Malformed(format!(
                    "chat completion chunk is not valid: {e}; data: {}",
                    snippet(data)
                ))));
                return Flow::Done;
            }
        };
        if chunk.error.as_ref().is_some_and(|e| !e.is_null()) {
            push_in_stream_error(data, out);
            return Flow::Done;
        }
        for choice in chunk.choices.unwrap_or_default() {
            // conclave asks for one choice; anything else is ignored.
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                self.on_delta(delta, out);
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.flush_calls(out);
                self.finished = true;
                out.push_back(Ok(StreamChunk::Finish { reason }));
            }
        }
        let usage = chunk
            .usage
            .or_else(|| chunk.x_groq.and_then(|extension| extension.usage));
        if let Some(usage) = usage {
            out.push_back(Ok(StreamChunk::Usage(Usage {
                input_tokens: usage.prompt_tokens.unwrap_or(0),
                output_tokens: usage.completion_tokens.unwrap_or(0),
            })));
        }
        Flow::Continue
    }

    /// Handles the end of the body without `[DONE]`.
    pub fn on_end(&mut self, out: &mut Out) {
        if self.finished {
            self.flush_calls(out);
        } else {
            tracing::debug!(
                pending_tool_calls = self.calls.len(),
                "chat stream ended without finish reason or [DONE]"
            );
            out.push_back(Err(ProviderError::Truncated));
        }
    }

    fn on_delta(&mut self, delta: WireDelta, out: &mut Out) {
        let reasoning = delta
            .reasoning_content
            .filter(|r| !r.is_empty())
            .or(delta.reasoning);
        if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
            out.push_back(Ok(StreamChunk::Reasoning { text }));
        }
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            out.push_back(Ok(StreamChunk::Content { text }));
        }
        if let Some(text) = delta.refusal.filter(|t| !t.is_empty()) {
            out.push_back(Ok(StreamChunk::Refusal { text }));
        }
        for fragment in delta.tool_calls.unwrap_or_default() {
            self.on_tool_fragment(fragment, out);
        }
    }

    fn on_tool_fragment(&mut self, fragment: WireToolCall, out: &mut Out) {
        let id = fragment.id.filter(|id| !id.is_empty());
        let (name, arguments) = match fragment.function {
            Some(function) => (
                function.name.filter(|n| !n.is_empty()),
                function.arguments.unwrap_or_default(),
            ),
            None => (None, String::new()),
        };
        let index = match fragment.index {
            Some(index) => index,
            // No index: continue the last call unless this fragment starts a new one.
            None => match self.calls.last_key_value() {
                Some((&last, call)) if id.as_ref().is_none_or(|id| *id == call.id) => last,
                Some((&last, _)) => last.saturating_add(1),
                None => 0,
            },
        };
        let call = self.calls.entry(index).or_default();
        if let Some(id) = &id
            && call.id.is_empty()
        {
            call.id.clone_from(id);
        }
        if let Some(name) = &name {
            // OpenAI sends the name once; some hosts repeat it on every fragment.
            if call.name.is_empty() {
                call.name.clone_from(name);
            } else if *name != call.name {
                call.name.push_str(name);
            }
        }
        call.arguments.push_str(&arguments);
        out.push_back(Ok(StreamChunk::ToolCallDelta {
            index,
            id,
            name,
            arguments,
        }));
    }

    fn flush_calls(&mut self, out: &mut Out) {
        for (index, call) in std::mem::take(&mut self.calls) {
            let id = if call.id.is_empty() {
                tracing::debug!(index, "tool call without id; naming it");
                format!("call_{index}")
            } else {
                call.id
            };
            out.push_back(Ok(StreamChunk::ToolCall(ToolCall {
                id,
                name: call.name,
                arguments: call.arguments,
                signature: None,
            })));
        }
    }
}

/// Emits the error for the accumulator, then ends the stream with it.
pub(crate) fn push_in_stream_error(data: &str, out: &mut Out) {
    let (kind, message, code) = parse_error_object(data);
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

/// (type, message, code) of an error payload: `{"error": {...}}`, a bare error object, a string,
/// or text that is not JSON at all.
fn parse_error_object(data: &str) -> (String, String, Option<String>) {
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return ("error".into(), data.trim().to_owned(), None);
    };
    let error = value
        .get("error")
        .filter(|e| !e.is_null())
        .unwrap_or(&value);
    if let Some(text) = error.as_str() {
        return ("error".into(), text.to_owned(), None);
    }
    let kind = error
        .get("type")
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

// The wire shapes, as little as conclave reads. Unknown fields (`id`, `model`, `logprobs`,
// `obfuscation`, `channel`, ...) are skipped without allocating.

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Option<Vec<WireChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    x_groq: Option<GroqExtension>,
    /// Only looked at for presence; the text is re-parsed on this rare path.
    #[serde(default)]
    error: Option<IgnoredValue>,
}

/// Records whether a field held something other than `null`, without keeping it.
struct IgnoredValue {
    null: bool,
}

impl IgnoredValue {
    fn is_null(&self) -> bool {
        self.null
    }
}

impl<'de> Deserialize<'de> for IgnoredValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Option::<IgnoredAny>::deserialize(deserializer)?;
        Ok(Self {
            null: value.is_none(),
        })
    }
}

#[derive(Deserialize)]
struct GroqExtension {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default, deserialize_with = "lenient_text")]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default, deserialize_with = "lenient_text")]
    content: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    reasoning_content: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    reasoning: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, deserialize_with = "lenient_text")]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default, deserialize_with = "lenient_text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// A text field that some hosts fill with something else: `null` and numbers/booleans give
/// `None`; an array of parts (`[{"type":"text","text":"..."}]` or strings) gives the
/// concatenation of its text parts; an object gives its `text` field, if any.
fn lenient_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct LenientText;

    impl<'de> Visitor<'de> for LenientText {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, null, or text parts")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut text: Option<String> = None;
            while let Some(part) = seq.next_element::<Value>()? {
                if let Some(piece) = part_text(&part) {
                    text.get_or_insert_default().push_str(piece);
                }
            }
            Ok(text)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut text = None;
            while let Some(key) = map.next_key::<String>()? {
                if key == "text" {
                    text = map.next_value_seed(LenientTextSeed)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(text)
        }
    }

    struct LenientTextSeed;

    impl<'de> de::DeserializeSeed<'de> for LenientTextSeed {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(LenientText)
        }
    }

    deserializer.deserialize_any(LenientText)
}

/// The text of one content part; parts of other types (images, thinking blocks) give none.
fn part_text(part: &Value) -> Option<&str> {
    match part {
        Value::String(text) => Some(text),
        Value::Object(object) => {
            let kind = object.get("type").and_then(Value::as_str);
            if kind.is_none_or(|k| k == "text" || k == "output_text") {
                object.get("text").and_then(Value::as_str)
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accumulate::TurnOutput;
    use crate::llm::{ToolChoice, ToolSpec};
    use conclave_protocol::config::WireFormat;

    fn message(data: &str) -> SseEvent {
        SseEvent {
            event: "message".into(),
            data: data.into(),
        }
    }

    /// Feeds data lines through the parser; returns the folded output and the final error.
    fn run(events: &[SseEvent], end: bool) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
        let mut parser = ChatStreamParser::default();
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
        let mut turn = TurnOutput::default();
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

    #[test]
    fn tool_fragments_without_index_and_repeated_names() {
        let (turn, _, error) = run(
            &[
                message(
                    r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{\"x\""}}]}}]}"#,
                ),
                message(
                    r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":":1}"}}]}}]}"#,
                ),
                message(
                    r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
                ),
                message(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
                message("[DONE]"),
            ],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(
            turn.tool_calls,
            vec![
                ToolCall {
                    id: "a".into(),
                    name: "f".into(),
                    arguments: "{\"x\":1}".into(),
                    signature: None,
                },
                ToolCall {
                    id: "b".into(),
                    name: "g".into(),
                    arguments: "{}".into(),
                    signature: None,
                },
            ]
        );
    }

    #[test]
    fn calls_without_ids_get_one_and_done_flushes() {
        let (turn, _, error) = run(
            &[
                message(
                    r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{}"}}]}}]}"#,
                ),
                message("[DONE]"),
            ],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(turn.tool_calls.len(), 1);
        assert_eq!(turn.tool_calls[0].id, "call_0");
        assert_eq!(turn.finish_reason, None);
    }

    #[test]
    fn lenient_content_and_reasoning_content() {
        let (turn, _, error) = run(
            &[
                message(r#"{"choices":[{"delta":{"reasoning_content":"hm","content":null}}]}"#),
                message(
                    r#"{"choices":[{"delta":{"content":[{"type":"text","text":"a"},{"type":"image_url"},"b"]}}]}"#,
                ),
                message(r#"{"choices":[{"delta":{"content":7}}]}"#),
                message(r#"{"choices":null,"usage":{"prompt_tokens":2,"completion_tokens":null}}"#),
                message(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#),
            ],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(turn.reasoning.as_deref(), Some("hm"));
        assert_eq!(turn.text, "ab");
        assert_eq!(turn.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            turn.usage,
            Some(Usage {
                input_tokens: 2,
                output_tokens: 0
            })
        );
    }

    #[test]
    fn error_object_in_data_and_plain_error_event() {
        let (turn, _, error) = run(
            &[
                message(r#"{"choices":[{"delta":{"content":"x"}}]}"#),
                message(r#"{"error":{"message":"overloaded","type":"server_error","code":503}}"#),
            ],
            true,
        );
        assert_eq!(
            turn.error,
            Some((
                "server_error".into(),
                "overloaded".into(),
                Some("503".into())
            ))
        );
        assert!(error.is_some_and(|e| e.starts_with("InStream")));

        let (turn, _, error) = run(
            &[SseEvent {
                event: "error".into(),
                data: "upstream went away".into(),
            }],
            true,
        );
        assert_eq!(
            turn.error,
            Some(("error".into(), "upstream went away".into(), None))
        );
        assert!(error.is_some());
    }

    #[test]
    fn truncation_and_malformed() {
        let (_, _, error) = run(
            &[message(r#"{"choices":[{"delta":{"content":"x"}}]}"#)],
            true,
        );
        assert_eq!(error.as_deref(), Some("Truncated"));
        let (_, _, error) = run(&[message("{not json")], true);
        assert!(error.is_some_and(|e| e.starts_with("Malformed")));
        let (_, _, error) = run(&[message(r#"{"choices":"nope"}"#)], true);
        assert!(error.is_some_and(|e| e.starts_with("Malformed")));
        // A finish reason without [DONE] is a complete answer.
        let (turn, _, error) = run(
            &[message(
                r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
            )],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(turn.text, "x");
    }

    #[test]
    fn other_choices_and_unknown_events_are_ignored() {
        let (turn, _, error) = run(
            &[
                SseEvent {
                    event: "ping".into(),
                    data: "{}".into(),
                },
                message(r#"{"choices":[{"index":1,"delta":{"content":"no"}}]}"#),
                message(r#"{"choices":[{"index":0,"delta":{"content":"yes"}}]}"#),
                message("[DONE]"),
            ],
            true,
        );
        assert_eq!(error, None);
        assert_eq!(turn.text, "yes");
    }

    fn spec(model: &str) -> BackendSpec {
        BackendSpec {
            wire: WireFormat::OpenAiChat,
            provider: "openai".into(),
            model: model.into(),
            base_url: "https://api.openai.com/v1/".into(),
            api_key_env: None,
            temperature: Some(0.2),
            top_p: Some(0.9),
            max_tokens: Some(100),
            extra_body: None,
            max_retries: 2,
            options: Default::default(),
        }
    }

    #[test]
    fn request_body_shapes() {
        let request = ChatRequest {
            messages: vec![
                ChatMessage::system("s"),
                ChatMessage::user("u"),
                ChatMessage::Assistant {
                    content: None,
                    reasoning: Vec::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                        signature: None,
                    }],
                },
                ChatMessage::tool("c1", "result"),
            ],
            tools: vec![ToolSpec {
                name: "f".into(),
                description: "does f".into(),
                parameters: json!({"type": "object"}),
            }],
            tool_choice: ToolChoice::Required,
        };
        let mut extra = Map::new();
        extra.insert("seed".into(), json!(7));
        let body = request_body(&spec("gpt-4o-mini"), Some(&extra), &request);
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["seed"], 7);
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["tools"][0]["function"]["name"], "f");
        assert_eq!(body["messages"][2]["content"], Value::Null);
        assert_eq!(body["messages"][2]["tool_calls"][0]["type"], "function");
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");

        let reasoning = request_body(&spec("openai/o3-mini"), None, &ChatRequest::default());
        assert_eq!(reasoning["max_completion_tokens"], 100);
        assert!(reasoning.get("max_tokens").is_none());
        assert!(reasoning.get("temperature").is_none());
        assert!(reasoning.get("top_p").is_none());
        assert!(reasoning.get("tools").is_none());
        assert!(reasoning.get("tool_choice").is_none());
        assert!(is_reasoning_model("gpt-5-mini"));
        assert!(!is_reasoning_model("gpt-4o"));
    }

    #[test]
    fn options_become_chat_parameters_unless_extra_body_sets_them() {
        let mut spec = spec("o4-mini");
        spec.options.reasoning_effort = Some("low".into());
        spec.options.verbosity = Some("high".into());
        let body = request_body(&spec, None, &ChatRequest::default());
        assert_eq!(body["reasoning_effort"], "low");
        assert_eq!(body["verbosity"], "high");
        assert_eq!(body["stream"], true);

        let mut extra = Map::new();
        extra.insert("verbosity".into(), Value::String("medium".into()));
        let body = request_body(&spec, Some(&extra), &ChatRequest::default());
        assert_eq!(body["reasoning_effort"], "low");
        assert_eq!(body["verbosity"], "medium", "extra_body wins");

        // Options that Chat Completions cannot express add nothing to the body.
        spec.options = conclave_protocol::config::BackendOptions {
            reasoning_summary: Some("auto".into()),
            web_search: true,
            code_execution: true,
            ..Default::default()
        };
        let body = request_body(&spec, None, &ChatRequest::default());
        for key in [
            "reasoning_effort",
            "verbosity",
            "reasoning",
            "reasoning_summary",
            "tools",
            "web_search_options",
        ] {
            assert!(body.get(key).is_none(), "{key}: {body}");
        }
    }

    #[test]
    fn endpoint_trims_slashes() {
        assert_eq!(endpoint("http://h/v1//"), "http://h/v1/chat/completions");
    }
}
