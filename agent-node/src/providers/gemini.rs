//! Google Gemini streaming (`POST {base_url}/models/{model}:streamGenerateContent?alt=sse`,
//! key in `x-goog-api-key`).
//!
//! Request, and why it looks the way it does:
//!
//! - system messages become one `systemInstruction`; the rest become `contents` with roles
//!   `user` and `model`. Adjacent turns of the same role are merged, so tool results and a
//!   following corrective user message travel as one `user` turn, which Gemini requires
//!   (function responses must directly follow the turn that called the functions).
//! - an assistant tool call becomes a `functionCall {name, args}` part carrying the call's
//!   [`ToolCall::signature`] as `thoughtSignature`: Gemini 3 rejects a replayed function
//!   call whose signature was lost. A reasoning signature that belongs to no tool call rides
//!   on the assistant's text part, as Gemini returned it. Thought text is not sent back.
//! - a tool result becomes a `functionResponse {name, response: {content}}` part. Gemini
//!   pairs responses with calls by name, so the name is found from the preceding assistant
//!   call with the same id. Ids that conclave generated (`call_{n}`, for calls Gemini sent
//!   without one) are not sent back; ids Gemini chose are.
//! - tool parameter schemas are rewritten into the OpenAPI subset Gemini accepts (see
//!   [`gemini_schema`]): unsupported keywords such as `additionalProperties` are dropped,
//!   local `$ref`s are inlined, `["string","null"]` becomes `nullable`.
//! - Gemini refuses a request that mixes built-in tools (`google_search`, `code_execution`)
//!   with function declarations. Coordination turns need the workflow functions, so when
//!   both are configured the built-ins are dropped and a warning is logged once per backend.
//! - `generationConfig` carries temperature, topP, maxOutputTokens and a `thinkingConfig`:
//!   an explicit thinking budget wins; a reasoning effort becomes `thinkingLevel` on Gemini 3
//!   and a budget on older models; models that think by default are asked to include their
//!   thoughts, so the display can show them.
//! - `extra_body` is merged into the body recursively (objects key by key), so
//!   `{"generationConfig": {"seed": 1}}` adds a seed without dropping the temperature.
//!
//! Stream: each SSE `data:` record is a complete `GenerateContentResponse`. Parts of the first
//! candidate become chunks as they arrive: `text` is [`StreamChunk::Content`] (or
//! [`StreamChunk::Reasoning`] with `thought: true`); a `functionCall` is complete on arrival
//! and becomes a [`StreamChunk::ToolCallDelta`] (for display) and a [`StreamChunk::ToolCall`]
//! with id `functionCall.id` or a generated `call_{n}`. Every `thoughtSignature` (on a text
//! part or a function call part) becomes a [`StreamChunk::ReasoningSignature`] in stream
//! order; one on a function call part is also kept as that call's signature, so it survives
//! even if the caller replays only the tool calls. `finishReason` may appear more than once
//! (the last wins) and `usageMetadata` is cumulative on every chunk (the last wins), so both
//! are emitted once, when the body ends: [`StreamChunk::Finish`], then
//! [`StreamChunk::Usage`] (output tokens exclude thought tokens, as the SDK reports).
//!
//! Failures: the status is checked before anything is parsed (a 404 arrives with an SSE
//! content type and a bare JSON body). An `error` object in the stream becomes
//! [`StreamChunk::Error`] and ends the stream with [`ProviderError::InStream`]; a prompt
//! blocked by safety filters (`promptFeedback.blockReason`) is reported the same way. A body
//! that ends without any `finishReason` ends with [`ProviderError::Truncated`]. Usage seen so
//! far is emitted before either error, because those tokens were billed.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};

use conclave_protocol::config::BackendSpec;
use conclave_protocol::{StreamChunk, ToolCall, Usage};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Backend, ChunkStream, ProviderError};
use crate::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use crate::sse::{self, SseEvent, SseStream, snippet};

/// `{base_url}/models/{model}:streamGenerateContent?alt=sse`. A model written the way the
/// API names it (`models/gemini-2.5-pro`) is accepted too. A model name that would change
/// the URL's meaning (a `/`, `?`, `#` or whitespace) is refused here, before any call.
pub(crate) fn endpoint(spec: &BackendSpec) -> Result<String, ProviderError> {
    let model = spec.model.trim();
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() {
        return Err(ProviderError::Config(format!(
            "provider `{}` has no model; set `model:` (e.g. gemini-2.5-flash)",
            spec.provider
        )));
    }
    if model
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace())
    {
        return Err(ProviderError::Config(format!(
            "Gemini model name `{model}` contains characters that cannot appear in the \
             request URL; use the plain model id (e.g. gemini-2.5-flash)"
        )));
    }
    Ok(format!(
        "{}/models/{model}:streamGenerateContent?alt=sse",
        spec.base_url.trim_end_matches('/'),
    ))
}

/// Whether the model thinks unless told otherwise (Gemini 2.5 and 3 families), so that
/// asking it to include its thoughts is both valid and useful.
pub fn thinks_by_default(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    name.starts_with("gemini-2.5") || name.starts_with("gemini-3") || name.contains("thinking")
}

/// Gemini 3 takes a `thinkingLevel`; older thinking models only a `thinkingBudget`.
fn takes_thinking_level(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    name.starts_with("gemini-3")
}

/// The budget that stands for a reasoning effort on models without `thinkingLevel`: the
/// values Google's OpenAI-compatible endpoint uses for `reasoning_effort`.
fn budget_for_effort(effort: &str) -> Option<u32> {
    match effort {
        "minimal" => Some(512),
        "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// The built-in tools the spec asks for, by the name Gemini gives them.
pub fn builtin_tools(spec: &BackendSpec) -> Vec<&'static str> {
    let mut tools = Vec::new();
    if spec.options.web_search {
        tools.push("google_search");
    }
    if spec.options.code_execution {
        tools.push("code_execution");
    }
    tools
}

/// The JSON request body. Public so tests and tools can show exactly what is sent.
pub fn request_body(
    spec: &BackendSpec,
    extra_body: Option<&Map<String, Value>>,
    request: &ChatRequest,
) -> Value {
    let mut body = Map::new();
    let (system, contents) = contents(&request.messages);
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = system {
        body.insert(
            "systemInstruction".into(),
            json!({ "parts": [{ "text": system }] }),
        );
    }

    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request.tools.iter().map(function_declaration).collect();
        body.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
        let mode = match request.tool_choice {
            ToolChoice::Auto => "AUTO",
            ToolChoice::Required => "ANY",
            ToolChoice::None => "NONE",
        };
        body.insert(
            "toolConfig".into(),
            json!({ "functionCallingConfig": { "mode": mode } }),
        );
    } else {
        let builtins: Vec<Value> = builtin_tools(spec)
            .into_iter()
            .map(|name| json!({ name: {} }))
            .collect();
        if !builtins.is_empty() {
            body.insert("tools".into(), Value::Array(builtins));
        }
    }

    let generation = generation_config(spec);
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    let mut body = Value::Object(body);
    if let Some(extra) = extra_body {
        merge(&mut body, &Value::Object(extra.clone()));
    }
    body
}

fn generation_config(spec: &BackendSpec) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(temperature) = spec.temperature {
        config.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = spec.top_p {
        config.insert("topP".into(), json!(top_p));
    }
    if let Some(max_tokens) = spec.max_tokens {
        config.insert("maxOutputTokens".into(), json!(max_tokens));
    }
    let effort = spec
        .options
        .reasoning_effort
        .as_deref()
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty());
    let thinking = match (spec.options.thinking_budget, effort) {
        (Some(budget), effort) => {
            if effort.is_some() {
                tracing::debug!(
                    model = %spec.model,
                    "both thinking_budget and reasoning_effort set; Gemini takes one, using the budget"
                );
            }
            Some(json!({ "thinkingBudget": budget, "includeThoughts": true }))
        }
        (None, Some(effort)) if takes_thinking_level(&spec.model) => {
            Some(json!({ "thinkingLevel": effort, "includeThoughts": true }))
        }
        (None, Some(effort)) => match budget_for_effort(&effort) {
            Some(budget) => Some(json!({ "thinkingBudget": budget, "includeThoughts": true })),
            None => {
                tracing::warn!(
                    model = %spec.model,
                    %effort,
                    "unknown reasoning_effort for Gemini (expected minimal, low, medium or high); ignored"
                );
                thinks_by_default(&spec.model).then(|| json!({ "includeThoughts": true }))
            }
        },
        (None, None) => thinks_by_default(&spec.model).then(|| json!({ "includeThoughts": true })),
    };
    if let Some(thinking) = thinking {
        config.insert("thinkingConfig".into(), thinking);
    }
    config
}

/// Merges `extra` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, extra) => *base = extra.clone(),
    }
}

fn function_declaration(tool: &ToolSpec) -> Value {
    let mut declaration = Map::new();
    declaration.insert("name".into(), Value::String(tool.name.clone()));
    declaration.insert(
        "description".into(),
        Value::String(tool.description.clone()),
    );
    let parameters = gemini_schema(&tool.parameters);
    // Gemini rejects an OBJECT schema without properties ("should be non-empty for OBJECT
    // type"); a function without arguments simply has no `parameters`.
    let no_arguments = parameters.get("type").and_then(Value::as_str) == Some("object")
        && parameters
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty);
    if !no_arguments {
        declaration.insert("parameters".into(), parameters);
    }
    Value::Object(declaration)
}

/// Schema keywords Gemini's `Schema` type accepts. Everything else (`additionalProperties`,
/// `$schema`, `exclusiveMinimum`, `examples`, ...) makes the request fail with 400.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// How deep `$ref`s are inlined; a recursive schema is cut off there (as a bare object).
const MAX_REF_DEPTH: usize = 8;

/// Rewrites a JSON schema into the OpenAPI subset Gemini accepts:
///
/// - unsupported keywords are dropped, recursively (property *names* are kept, whatever
///   they are);
/// - `{"$ref": "#/$defs/X"}` (or `#/definitions/X`) is replaced by the definition, since
///   Gemini has no references;
/// - `type: ["string", "null"]` becomes `type: string, nullable: true`; several non-null
///   types become an `anyOf`;
/// - `const` becomes a one-value `enum`, `oneOf` becomes `anyOf` (close enough for the
///   model: it picks one);
/// - `format` is kept only where Gemini supports it (`enum`, `date-time`, and the number
///   formats), since e.g. `format: uri` is a 400;
/// - `required` keeps only names that are among the properties.
pub fn gemini_schema(schema: &Value) -> Value {
    let definitions = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object);
    convert_schema(schema, definitions, 0)
}

fn convert_schema(schema: &Value, definitions: Option<&Map<String, Value>>, depth: usize) -> Value {
    let Some(object) = schema.as_object() else {
        // `true`/`false` schemas and other oddities: "anything".
        return json!({});
    };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let name = reference
            .strip_prefix("#/$defs/")
            .or_else(|| reference.strip_prefix("#/definitions/"));
        let target = name.and_then(|name| definitions.and_then(|defs| defs.get(name)));
        return match target {
            Some(target) if depth < MAX_REF_DEPTH => {
                let mut inlined = convert_schema(target, definitions, depth + 1);
                // Keywords next to the `$ref` (often a description) refine the target.
                if let Value::Object(inlined) = &mut inlined
                    && let Some(Value::String(description)) = object.get("description")
                {
                    inlined.insert("description".into(), Value::String(description.clone()));
                }
                inlined
            }
            _ => {
                tracing::debug!(
                    reference,
                    "schema reference not inlined (unknown or too deep)"
                );
                json!({ "type": "object" })
            }
        };
    }

    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "type" => convert_type(value, &mut out),
            "properties" => {
                if let Some(properties) = value.as_object() {
                    let converted = properties
                        .iter()
                        .map(|(name, property)| {
                            (name.clone(), convert_schema(property, definitions, depth))
                        })
                        .collect();
                    out.insert("properties".into(), Value::Object(converted));
                }
            }
            "items" => {
                let items = match value {
                    // Tuple form: Gemini has one item schema.
                    Value::Array(items) => items.first().cloned().unwrap_or_else(|| json!({})),
                    other => other.clone(),
                };
                out.insert("items".into(), convert_schema(&items, definitions, depth));
            }
            "anyOf" | "oneOf" => {
                if let Some(options) = value.as_array() {
                    let converted: Vec<Value> = options
                        .iter()
                        .filter(|option| option.get("type").and_then(Value::as_str) != Some("null"))
                        .map(|option| convert_schema(option, definitions, depth))
                        .collect();
                    if converted.len() < options.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                    match converted.len() {
                        0 => {}
                        1 => {
                            if let Some(Value::Object(only)) = converted.into_iter().next() {
                                for (k, v) in only {
                                    out.entry(k).or_insert(v);
                                }
                            }
                        }
                        _ => {
                            out.insert("anyOf".into(), Value::Array(converted));
                        }
                    }
                }
            }
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "format" => {
                if let Some(format) = value.as_str()
                    && matches!(
                        format,
                        "enum" | "date-time" | "int32" | "int64" | "float" | "double"
                    )
                {
                    out.insert("format".into(), value.clone());
                }
            }
            key if SCHEMA_KEYS.contains(&key) => {
                out.insert(key.to_owned(), value.clone());
            }
            _ => {}
        }
    }
    // Gemini enums are string enums and want the type said.
    if !out.contains_key("type")
        && !out.contains_key("anyOf")
        && out
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|values| values.iter().all(Value::is_string))
    {
        out.insert("type".into(), Value::String("string".into()));
    }
    if let Some(Value::Array(required)) = out.get("required") {
        let properties = out.get("properties").and_then(Value::as_object);
        let kept: Vec<Value> = required
            .iter()
            .filter(|name| {
                name.as_str()
                    .is_some_and(|name| properties.is_some_and(|p| p.contains_key(name)))
            })
            .cloned()
            .collect();
        if kept.is_empty() {
            out.remove("required");
        } else {
            out.insert("required".into(), Value::Array(kept));
        }
    }
    Value::Object(out)
}

/// `type` may be a list in JSON schema; Gemini wants one type plus `nullable`.
fn convert_type(value: &Value, out: &mut Map<String, Value>) {
    match value {
        Value::String(_) => {
            out.insert("type".into(), value.clone());
        }
        Value::Array(types) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            if names.contains(&"null") {
                out.insert("nullable".into(), Value::Bool(true));
            }
            let concrete: Vec<&str> = names.into_iter().filter(|t| *t != "null").collect();
            match concrete.as_slice() {
                [] => {}
                [one] => {
                    out.insert("type".into(), Value::String((*one).to_owned()));
                }
                many => {
                    let options = many.iter().map(|t| json!({ "type": t })).collect();
                    out.insert("anyOf".into(), Value::Array(options));
                }
            }
        }
        _ => {}
    }
}

/// Ids conclave made up for calls Gemini sent without one; see [`GeminiStreamParser`].
fn is_generated_id(id: &str) -> bool {
    id.strip_prefix("call_")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The system instruction (all system messages, in order) and the `contents` turns.
fn contents(messages: &[ChatMessage]) -> (Option<String>, Vec<Value>) {
    let mut system: Vec<&str> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (position, message) in messages.iter().enumerate() {
        match message {
            ChatMessage::System { content } => system.push(content),
            ChatMessage::User { content } => {
                push_parts(&mut turns, "user", vec![json!({ "text": content })]);
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
                reasoning,
            } => {
                let mut parts = Vec::new();
                // The signature Gemini put on a text part: one that belongs to no tool call.
                let call_signatures: HashSet<&str> = tool_calls
                    .iter()
                    .filter_map(|call| call.signature.as_deref())
                    .collect();
                let text_signature = reasoning
                    .iter()
                    .filter_map(|block| block.signature.as_deref())
                    .find(|signature| !call_signatures.contains(signature));
                if let Some(text) = content.as_deref().filter(|t| !t.is_empty()) {
                    let mut part = Map::new();
                    part.insert("text".into(), Value::String(text.to_owned()));
                    if let Some(signature) = text_signature {
                        part.insert("thoughtSignature".into(), Value::String(signature.into()));
                    }
                    parts.push(Value::Object(part));
                }
                for call in tool_calls {
                    parts.push(function_call_part(call));
                }
                if !parts.is_empty() {
                    push_parts(&mut turns, "model", parts);
                }
            }
            ChatMessage::Tool { call_id, content } => {
                let call = messages[..position]
                    .iter()
                    .rev()
                    .filter_map(|m| match m {
                        ChatMessage::Assistant { tool_calls, .. } => Some(tool_calls),
                        _ => None,
                    })
                    .flatten()
                    .find(|call| call.id == *call_id);
                let name = match call {
                    Some(call) => call.name.clone(),
                    None => {
                        tracing::warn!(
                            call_id,
                            "tool result without a preceding call; naming it by its id"
                        );
                        call_id.clone()
                    }
                };
                let mut response = Map::new();
                if !is_generated_id(call_id) {
                    response.insert("id".into(), Value::String(call_id.clone()));
                }
                response.insert("name".into(), Value::String(name));
                response.insert("response".into(), json!({ "content": content }));
                push_parts(
                    &mut turns,
                    "user",
                    vec![json!({ "functionResponse": response })],
                );
            }
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({ "role": role, "parts": parts }))
        .collect();
    (system, contents)
}

fn function_call_part(call: &ToolCall) -> Value {
    let args = match serde_json::from_str::<Value>(&call.arguments) {
        Ok(Value::Object(args)) => Value::Object(args),
        Ok(Value::Null) | Err(_) if call.arguments.trim().is_empty() => json!({}),
        _ => {
            tracing::warn!(
                tool = %call.name,
                "tool call arguments are not a JSON object; replaying them as {{}}"
            );
            json!({})
        }
    };
    let mut function_call = Map::new();
    if !is_generated_id(&call.id) {
        function_call.insert("id".into(), Value::String(call.id.clone()));
    }
    function_call.insert("name".into(), Value::String(call.name.clone()));
    function_call.insert("args".into(), args);
    let mut part = Map::new();
    part.insert("functionCall".into(), Value::Object(function_call));
    if let Some(signature) = &call.signature {
        part.insert("thoughtSignature".into(), Value::String(signature.clone()));
    }
    Value::Object(part)
}

fn push_parts(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, parts: Vec<Value>) {
    match turns.last_mut() {
        Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
        _ => turns.push((role, parts)),
    }
}

/// Logs the built-ins dropped in favour of function tools, once per backend (endpoint) per
/// process: the situation is a configuration fact, not news on every call.
fn warn_dropped_builtins_once(backend: &Backend, dropped: &[&str]) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let warned = WARNED.get_or_init(|| Mutex::new(HashSet::new()));
    let first = match warned.lock() {
        Ok(mut set) => set.insert(backend.endpoint.clone()),
        Err(poisoned) => poisoned.into_inner().insert(backend.endpoint.clone()),
    };
    if first {
        tracing::warn!(
            provider = %backend.spec.provider,
            model = %backend.spec.model,
            dropped = ?dropped,
            "Gemini cannot combine built-in tools with function tools; the function tools \
             (workflow and agent tools) are kept and these built-ins are not offered"
        );
    }
}

/// Sends the request and returns the parsed stream (see the module docs).
pub(crate) async fn stream(
    backend: &Backend,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let spec = &backend.spec;
    if !request.tools.is_empty() {
        let dropped = builtin_tools(spec);
        if !dropped.is_empty() {
            warn_dropped_builtins_once(backend, &dropped);
        }
    }
    let body = request_body(spec, backend.extra_body.as_ref(), request);
    let body = serde_json::to_vec(&body)
        .map_err(|e| ProviderError::Config(format!("could not encode the request: {e}")))?;
    tracing::debug!(
        provider = %spec.provider,
        model = %spec.model,
        url = %backend.endpoint,
        messages = request.messages.len(),
        tools = request.tools.len(),
        "starting Gemini stream"
    );
    let response = backend
        .post_json(&backend.endpoint, body)
        .send()
        .await
        .map_err(|e| ProviderError::from_transport(&spec.provider, &backend.endpoint, e))?;
    let events = sse::open(&spec.provider, &backend.endpoint, response).await?;
    Ok(Box::pin(GeminiStream::new(events)))
}

/// Turns SSE events into chunks; the parsing state lives in [`GeminiStreamParser`].
pub struct GeminiStream {
    events: SseStream,
    parser: GeminiStreamParser,
    pending: VecDeque<Result<StreamChunk, ProviderError>>,
    done: bool,
}

impl GeminiStream {
    /// Parses `events` (already checked for HTTP success) as a Gemini stream.
    pub fn new(events: SseStream) -> Self {
        Self {
            events,
            parser: GeminiStreamParser::default(),
            pending: VecDeque::new(),
            done: false,
        }
    }
}

impl fmt::Debug for GeminiStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiStream")
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for GeminiStream {
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
    /// The stream is over (an error, or malformed data); stop reading.
    Done,
}

type Out = VecDeque<Result<StreamChunk, ProviderError>>;

/// The pure state machine behind [`GeminiStream`]: events in, chunks out. No I/O, so it can
/// be driven directly in tests.
#[derive(Debug, Default)]
pub struct GeminiStreamParser {
    /// Function calls seen so far: the next call's index and generated id.
    calls: u32,
    /// The last `finishReason`.
    finish_reason: Option<String>,
    /// The last `usageMetadata` (it is cumulative).
    usage: Option<Usage>,
}

impl GeminiStreamParser {
    /// Handles one SSE event.
    pub fn on_event(&mut self, event: &SseEvent, out: &mut Out) -> Flow {
        if event.event == "error" {
            self.flush_usage(out);
            push_in_stream_error(parse_error(&event.data), out);
            return Flow::Done;
        }
        if event.event != "message" {
            tracing::trace!(event = %event.event, "ignoring SSE event");
            return Flow::Continue;
        }
        let data = event.data.trim();
        if data.is_empty() {
            return Flow::Continue;
        }
        let chunk: WireChunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                self.flush_usage(out);
                out.push_back(Err(ProviderError::Malformed(format!(
                    "Gemini stream chunk is not valid: {e}; data: {}",
                    snippet(data)
                ))));
                return Flow::Done;
            }
        };
        if let Some(usage) = &chunk.usage_metadata {
            self.usage = Some(Usage {
                input_tokens: usage.prompt_token_count.unwrap_or(0),
                output_tokens: usage.candidates_token_count.unwrap_or(0),
            });
        }
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            self.flush_usage(out);
            push_in_stream_error(parse_error_value(&error), out);
            return Flow::Done;
        }
        let candidates = chunk.candidates.unwrap_or_default();
        if candidates.is_empty()
            && let Some(reason) = chunk
                .prompt_feedback
                .and_then(|feedback| feedback.block_reason)
                .filter(|r| !r.is_empty())
        {
            self.flush_usage(out);
            push_in_stream_error(
                (
                    "prompt_blocked".to_owned(),
                    format!(
                        "Gemini blocked the prompt ({reason}); rephrase the task or check the safety settings"
                    ),
                    Some(reason),
                ),
                out,
            );
            return Flow::Done;
        }
        // conclave asks for one candidate; any other is ignored.
        if let Some(candidate) = candidates.into_iter().find(|c| c.index.unwrap_or(0) == 0) {
            let parts = candidate
                .content
                .and_then(|content| content.parts)
                .unwrap_or_default();
            for part in parts {
                self.on_part(part, out);
            }
            if let Some(reason) = candidate.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        Flow::Continue
    }

    /// Handles the end of the body: the finish reason and usage, or truncation.
    pub fn on_end(&mut self, out: &mut Out) {
        match self.finish_reason.take() {
            Some(reason) => {
                out.push_back(Ok(StreamChunk::Finish { reason }));
                self.flush_usage(out);
            }
            None => {
                tracing::debug!(
                    calls = self.calls,
                    "Gemini stream ended without a finishReason"
                );
                self.flush_usage(out);
                out.push_back(Err(ProviderError::Truncated));
            }
        }
    }

    fn flush_usage(&mut self, out: &mut Out) {
        if let Some(usage) = self.usage.take() {
            out.push_back(Ok(StreamChunk::Usage(usage)));
        }
    }

    fn on_part(&mut self, part: WirePart, out: &mut Out) {
        if let Some(text) = part.text.filter(|t| !t.is_empty()) {
            if part.thought == Some(true) {
                out.push_back(Ok(StreamChunk::Reasoning { text }));
            } else {
                out.push_back(Ok(StreamChunk::Content { text }));
            }
        }
        let signature = part.thought_signature.filter(|s| !s.is_empty());
        if let Some(signature) = &signature {
            out.push_back(Ok(StreamChunk::ReasoningSignature {
                signature: signature.clone(),
            }));
        }
        if let Some(call) = part.function_call {
            let index = self.calls;
            self.calls = self.calls.saturating_add(1);
            let id = call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("call_{index}"));
            let name = call.name.unwrap_or_default();
            let arguments = match call.args {
                Some(args) if !args.is_null() => args.to_string(),
                _ => "{}".to_owned(),
            };
            out.push_back(Ok(StreamChunk::ToolCallDelta {
                index,
                id: Some(id.clone()),
                name: Some(name.clone()),
                arguments: arguments.clone(),
            }));
            out.push_back(Ok(StreamChunk::ToolCall(ToolCall {
                id,
                name,
                arguments,
                signature,
            })));
        }
        if part.executable_code.is_some() || part.code_execution_result.is_some() {
            tracing::trace!("ignoring a code execution part (the model reports results in text)");
        }
    }
}

/// Emits the error for the accumulator, then ends the stream with it.
fn push_in_stream_error((kind, message, code): (String, String, Option<String>), out: &mut Out) {
    tracing::warn!(%kind, %message, code = code.as_deref(), "in-stream Gemini error");
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

/// (status, message, code) of an error payload that may not even be JSON.
fn parse_error(data: &str) -> (String, String, Option<String>) {
    match serde_json::from_str::<Value>(data) {
        Ok(value) => {
            let error = value
                .get("error")
                .filter(|e| !e.is_null())
                .unwrap_or(&value);
            parse_error_value(error)
        }
        Err(_) => ("error".into(), data.trim().to_owned(), None),
    }
}

/// Google's error object: `{"code": 500, "message": "...", "status": "INTERNAL"}`.
fn parse_error_value(error: &Value) -> (String, String, Option<String>) {
    if let Some(text) = error.as_str() {
        return ("error".into(), text.to_owned(), None);
    }
    let kind = error
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("error")
        .to_owned();
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string());
    let code = match error.get("code") {
        Some(Value::Number(code)) => Some(code.to_string()),
        Some(Value::String(code)) => Some(code.clone()),
        _ => None,
    };
    (kind, message, code)
}

// The wire shapes, as little as conclave reads. Unknown fields (`modelVersion`,
// `responseId`, `groundingMetadata`, token details, ...) are skipped.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireChunk {
    #[serde(default)]
    candidates: Option<Vec<WireCandidate>>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    prompt_feedback: Option<WirePromptFeedback>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default)]
    parts: Option<Vec<WirePart>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    thought_signature: Option<String>,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
    #[serde(default)]
    executable_code: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    code_execution_result: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accumulate::TurnOutput;
    use crate::llm::ReasoningBlock;
    use conclave_protocol::config::WireFormat;

    fn message(data: &str) -> SseEvent {
        SseEvent {
            event: "message".into(),
            data: data.into(),
        }
    }

    /// Feeds events through the parser; returns the folded output, the chunks and the error.
    fn run(events: &[SseEvent]) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
        let mut parser = GeminiStreamParser::default();
        let mut out = VecDeque::new();
        let mut done = false;
        for event in events {
            if parser.on_event(event, &mut out) == Flow::Done {
                done = true;
                break;
            }
        }
        if !done {
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
    fn thoughts_text_calls_and_signatures() {
        let (turn, chunks, error) = run(&[
            message(
                r#"{"candidates":[{"content":{"parts":[{"text":"hm","thought":true}],"role":"model"}}]}"#,
            ),
            message(
                r#"{"candidates":[{"content":{"parts":[{"text":"Hi","thoughtSignature":"s1"},{"functionCall":{"name":"f","args":{"a":1}},"thoughtSignature":"s2"},{"functionCall":{"id":"g1","name":"g"}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"thoughtsTokenCount":9}}"#,
            ),
        ]);
        assert_eq!(error, None);
        assert_eq!(turn.reasoning.as_deref(), Some("hm"));
        assert_eq!(turn.text, "Hi");
        assert_eq!(turn.reasoning_signatures, vec!["s1", "s2"]);
        assert_eq!(
            turn.reasoning_blocks[0],
            ReasoningBlock {
                text: "hm".into(),
                signature: Some("s1".into())
            }
        );
        assert_eq!(
            turn.tool_calls,
            vec![
                ToolCall {
                    id: "call_0".into(),
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into(),
                    signature: Some("s2".into()),
                },
                ToolCall {
                    id: "g1".into(),
                    name: "g".into(),
                    arguments: "{}".into(),
                    signature: None,
                },
            ]
        );
        assert_eq!(turn.finish_reason.as_deref(), Some("STOP"));
        assert_eq!(
            turn.usage,
            Some(Usage {
                input_tokens: 5,
                output_tokens: 2
            })
        );
        // Finish and usage come once, at the end.
        let tail: Vec<_> = chunks.iter().rev().take(2).collect();
        assert!(matches!(tail[0], StreamChunk::Usage(_)));
        assert!(matches!(tail[1], StreamChunk::Finish { .. }));
    }

    #[test]
    fn last_finish_reason_and_usage_win() {
        let (turn, chunks, error) = run(&[
            message(
                r#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":15,"candidatesTokenCount":1}}"#,
            ),
            message(
                r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":13,"candidatesTokenCount":4}}"#,
            ),
        ]);
        assert_eq!(error, None);
        assert_eq!(turn.finish_reason.as_deref(), Some("STOP"));
        assert_eq!(turn.usage.map(|u| u.input_tokens), Some(13));
        let finishes = chunks
            .iter()
            .filter(|c| matches!(c, StreamChunk::Finish { .. }))
            .count();
        assert_eq!(finishes, 1);
    }

    #[test]
    fn errors_truncation_blocking_and_malformed() {
        let (turn, _, error) = run(&[
            message(
                r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1}}"#,
            ),
            message(r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#),
        ]);
        assert_eq!(
            turn.error,
            Some((
                "UNAVAILABLE".into(),
                "overloaded".into(),
                Some("503".into())
            ))
        );
        assert_eq!(turn.usage.map(|u| u.input_tokens), Some(3));
        assert!(error.is_some_and(|e| e.starts_with("InStream")));

        let (turn, _, error) = run(&[message(
            r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#,
        )]);
        assert_eq!(turn.text, "x");
        assert_eq!(error.as_deref(), Some("Truncated"));

        let (turn, _, error) = run(&[message(r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#)]);
        assert_eq!(turn.error.map(|e| e.0), Some("prompt_blocked".into()));
        assert!(error.is_some_and(|e| e.starts_with("InStream")));

        let (_, _, error) = run(&[message("{not json")]);
        assert!(error.is_some_and(|e| e.starts_with("Malformed")));
        let (_, _, error) = run(&[message(
            r#"{"candidates":[{"content":{"parts":[{"text":7}]}}]}"#,
        )]);
        assert!(error.is_some_and(|e| e.starts_with("Malformed")));
    }

    #[test]
    fn other_candidates_are_ignored() {
        let (turn, _, error) = run(&[message(
            r#"{"candidates":[{"index":1,"content":{"parts":[{"text":"no"}]}},{"index":0,"content":{"parts":[{"text":"yes"}]},"finishReason":"STOP"}]}"#,
        )]);
        assert_eq!(error, None);
        assert_eq!(turn.text, "yes");
    }

    #[test]
    fn schemas_are_rewritten_for_gemini() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "additionalProperties": { "type": "string", "format": "uri" },
                "when": { "type": ["string", "null"], "format": "date-time" },
                "kind": { "const": "x" },
                "item": { "$ref": "#/$defs/Item", "description": "the item" },
                "either": { "oneOf": [{ "type": "integer" }, { "type": "null" }] },
                "list": { "type": "array", "items": { "type": "object", "additionalProperties": { "type": "string" }, "properties": { "a": { "type": "number", "exclusiveMinimum": 0 } } } }
            },
            "required": ["when", "missing"],
            "$defs": { "Item": { "type": "object", "properties": { "n": { "type": "integer" } }, "additionalProperties": false } }
        });
        assert_eq!(
            gemini_schema(&schema),
            json!({
                "type": "object",
                "properties": {
                    "additionalProperties": { "type": "string" },
                    "when": { "type": "string", "nullable": true, "format": "date-time" },
                    "kind": { "type": "string", "enum": ["x"] },
                    "item": { "type": "object", "properties": { "n": { "type": "integer" } }, "description": "the item" },
                    "either": { "type": "integer", "nullable": true },
                    "list": { "type": "array", "items": { "type": "object", "properties": { "a": { "type": "number" } } } }
                },
                "required": ["when"]
            })
        );
        // A recursive schema is cut off instead of looping.
        let recursive = json!({
            "type": "object",
            "properties": { "next": { "$ref": "#/$defs/Node" } },
            "$defs": { "Node": { "type": "object", "properties": { "next": { "$ref": "#/$defs/Node" } } } }
        });
        assert!(gemini_schema(&recursive).to_string().len() < 4096);
    }

    fn spec(model: &str) -> BackendSpec {
        BackendSpec {
            wire: WireFormat::Gemini,
            provider: "gemini".into(),
            model: model.into(),
            base_url: "https://generativelanguage.googleapis.com/v1beta/".into(),
            api_key_env: None,
            temperature: Some(0.2),
            top_p: None,
            max_tokens: Some(100),
            extra_body: None,
            max_retries: 2,
            options: Default::default(),
        }
    }

    #[test]
    fn endpoint_shapes_and_refusals() {
        assert_eq!(
            endpoint(&spec("models/gemini-2.5-flash")).ok().as_deref(),
            Some(
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
            )
        );
        assert!(matches!(endpoint(&spec("")), Err(ProviderError::Config(_))));
        assert!(matches!(
            endpoint(&spec("a/b")),
            Err(ProviderError::Config(_))
        ));
    }

    #[test]
    fn thinking_config_by_model_and_options() {
        let body = request_body(&spec("gemini-2.0-flash"), None, &ChatRequest::default());
        assert_eq!(
            body["generationConfig"],
            json!({ "temperature": 0.2, "maxOutputTokens": 100 })
        );
        let body = request_body(&spec("gemini-2.5-pro"), None, &ChatRequest::default());
        assert_eq!(
            body["generationConfig"]["thinkingConfig"],
            json!({ "includeThoughts": true })
        );
        let mut effort = spec("gemini-3-pro-preview");
        effort.options.reasoning_effort = Some("High".into());
        let body = request_body(&effort, None, &ChatRequest::default());
        assert_eq!(
            body["generationConfig"]["thinkingConfig"],
            json!({ "thinkingLevel": "high", "includeThoughts": true })
        );
        effort.model = "gemini-2.5-flash".into();
        let body = request_body(&effort, None, &ChatRequest::default());
        assert_eq!(
            body["generationConfig"]["thinkingConfig"]["thinkingBudget"],
            24576
        );
        effort.options.thinking_budget = Some(64);
        let body = request_body(&effort, None, &ChatRequest::default());
        assert_eq!(
            body["generationConfig"]["thinkingConfig"],
            json!({ "thinkingBudget": 64, "includeThoughts": true })
        );
    }

    #[test]
    fn extra_body_merges_recursively() {
        let mut extra = Map::new();
        extra.insert(
            "generationConfig".into(),
            json!({ "seed": 7, "temperature": 1.0 }),
        );
        extra.insert("safetySettings".into(), json!([]));
        let body = request_body(
            &spec("gemini-2.0-flash"),
            Some(&extra),
            &ChatRequest::default(),
        );
        assert_eq!(
            body["generationConfig"],
            json!({ "temperature": 1.0, "maxOutputTokens": 100, "seed": 7 })
        );
        assert_eq!(body["safetySettings"], json!([]));
    }

    #[test]
    fn builtins_only_without_function_tools() {
        let mut with_builtins = spec("gemini-2.5-flash");
        with_builtins.options.web_search = true;
        with_builtins.options.code_execution = true;
        let body = request_body(&with_builtins, None, &ChatRequest::default());
        assert_eq!(
            body["tools"],
            json!([{ "google_search": {} }, { "code_execution": {} }])
        );
        assert!(body.get("toolConfig").is_none());
        let request = ChatRequest {
            tools: vec![ToolSpec {
                name: "f".into(),
                description: "d".into(),
                parameters: json!({ "type": "object", "properties": {} }),
            }],
            tool_choice: ToolChoice::None,
            ..ChatRequest::default()
        };
        let body = request_body(&with_builtins, None, &request);
        assert_eq!(
            body["tools"],
            json!([{ "functionDeclarations": [{ "name": "f", "description": "d" }] }])
        );
        assert_eq!(body["toolConfig"]["functionCallingConfig"]["mode"], "NONE");
    }

    #[test]
    fn contents_merge_roles_and_name_tool_results() {
        let messages = vec![
            ChatMessage::system("a"),
            ChatMessage::system("b"),
            ChatMessage::user("q"),
            ChatMessage::Assistant {
                content: Some("let me".into()),
                tool_calls: vec![
                    ToolCall {
                        id: "call_0".into(),
                        name: "f".into(),
                        arguments: r#"{"x":1}"#.into(),
                        signature: Some("sig-call".into()),
                    },
                    ToolCall::new("fc-7", "g", "not json"),
                ],
                reasoning: vec![
                    ReasoningBlock {
                        text: "t".into(),
                        signature: Some("sig-text".into()),
                    },
                    ReasoningBlock {
                        text: String::new(),
                        signature: Some("sig-call".into()),
                    },
                ],
            },
            ChatMessage::tool("call_0", "one"),
            ChatMessage::tool("fc-7", "two"),
            ChatMessage::user("now vote"),
            ChatMessage::Assistant {
                content: None,
                tool_calls: Vec::new(),
                reasoning: Vec::new(),
            },
        ];
        let (system, contents) = contents(&messages);
        assert_eq!(system.as_deref(), Some("a\n\nb"));
        assert_eq!(
            Value::Array(contents),
            json!([
                { "role": "user", "parts": [{ "text": "q" }] },
                { "role": "model", "parts": [
                    { "text": "let me", "thoughtSignature": "sig-text" },
                    { "functionCall": { "name": "f", "args": { "x": 1 } }, "thoughtSignature": "sig-call" },
                    { "functionCall": { "id": "fc-7", "name": "g", "args": {} } }
                ] },
                { "role": "user", "parts": [
                    { "functionResponse": { "name": "f", "response": { "content": "one" } } },
                    { "functionResponse": { "id": "fc-7", "name": "g", "response": { "content": "two" } } },
                    { "text": "now vote" }
                ] }
            ])
        );
    }
}
