//! OpenAI Chat Completions: the request, the `chat.completion.chunk` stream, the
//! non-streaming `chat.completion` object, and OpenAI's error envelope (which the Responses
//! API shares).
//!
//! Field order and the `usage: null` on every chunk of a stream that asked for usage follow
//! what api.openai.com sends. An in-stream error is a `data:` line whose object has a
//! top-level `error`, as OpenAI sends it (OpenAI-compatible hosts such as Groq add an
//! `event: error` line; clients must accept both).

use std::io::Write as _;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ResponseIds, Usage, fault_message, push_json, push_json_str};
use crate::fault::Fault;
use crate::policy::Reply;
use crate::request::{SimRequest, content_text, fingerprint, offered_tools, result_text};

/// A `POST /v1/chat/completions` body: only `model`, `messages`, `tools`, `stream` and
/// `stream_options` are read.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// `stream_options` of a streaming request.
#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Parses a Chat Completions body. Tools may use the Chat Completions shape
/// (`{"type":"function","function":{"name":..}}`) or the flat shape some clients send.
pub(crate) fn parse(body: &[u8]) -> Result<SimRequest, String> {
    let request: ChatRequest = serde_json::from_slice(body)
        .map_err(|err| format!("We could not parse the JSON body of your request: {err}"))?;
    let (tool_names, vote_label, tool_params) =
        offered_tools(request.tools.iter().flatten().filter_map(|tool| {
            let function = tool.get("function").unwrap_or(tool);
            let name = function.get("name").and_then(Value::as_str)?;
            Some((name, function.get("parameters")))
        }));
    // The last `user` message, even when it has no text: what this simulator always did for
    // Chat Completions, so answers to existing conversations keep their words.
    let last_user_text = request
        .messages
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|message| message.get("content"))
        .map(content_text)
        .unwrap_or_default();
    let tool_results = request
        .messages
        .iter()
        .filter(|message| message.get("role").and_then(Value::as_str) == Some("tool"))
        .map(|message| message.get("content").map(result_text).unwrap_or_default())
        .collect();
    Ok(SimRequest {
        fingerprint: fingerprint(&[&request.messages, &request.tools]),
        stream: request.stream.unwrap_or(false),
        include_usage: request
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
        model: request.model,
        last_user_text,
        tool_names,
        vote_label,
        tool_params,
        tool_results,
    })
}

impl Usage {
    fn to_openai_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Writes the `chat.completion.chunk` events of one streamed reply.
#[derive(Debug)]
pub(crate) struct ChunkWriter {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`
    prefix: Vec<u8>,
    /// `,"usage":null` when the client asked for usage, empty otherwise.
    usage_suffix: &'static [u8],
    /// The trailing usage chunk, when asked for.
    usage: Option<Usage>,
    call_id: String,
}

impl ChunkWriter {
    pub fn new(ids: &ResponseIds, usage: Option<Usage>) -> Self {
        let mut prefix = Vec::with_capacity(96 + ids.model.len());
        prefix.extend_from_slice(b"data: {\"id\":\"");
        prefix.extend_from_slice(completion_id(ids).as_bytes());
        prefix.extend_from_slice(b"\",\"object\":\"chat.completion.chunk\",\"created\":");
        let _ = write!(prefix, "{}", ids.created);
        prefix.extend_from_slice(b",\"model\":");
        push_json_str(&mut prefix, &ids.model);
        prefix.extend_from_slice(b",\"system_fingerprint\":null,\"choices\":[");
        ChunkWriter {
            prefix,
            usage_suffix: if usage.is_some() {
                b",\"usage\":null"
            } else {
                b""
            },
            usage,
            call_id: call_id(ids),
        }
    }

    /// The events for piece `index` of `reply`: the role (and, for a tool call, the call's
    /// id and name with empty arguments) comes with piece 0, as OpenAI sends it.
    pub fn piece(&self, out: &mut Vec<u8>, reply: &Reply, index: usize) {
        let piece = reply.piece(index);
        match reply.tool_name() {
            None => {
                self.open_choice(out);
                if index == 0 {
                    out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":");
                } else {
                    out.extend_from_slice(b"{\"content\":");
                }
                push_json_str(out, piece);
                out.push(b'}');
                self.close_choice(out, None);
            }
            Some(name) => {
                if index == 0 {
                    self.open_choice(out);
                    out.extend_from_slice(
                        b"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":",
                    );
                    push_json_str(out, &self.call_id);
                    out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                    push_json_str(out, name);
                    out.extend_from_slice(b",\"arguments\":\"\"}}]}");
                    self.close_choice(out, None);
                }
                self.open_choice(out);
                out.extend_from_slice(
                    b"{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":",
                );
                push_json_str(out, piece);
                out.extend_from_slice(b"}}]}");
                self.close_choice(out, None);
            }
        }
    }

    /// The closing events: an empty delta with the finish reason, the usage chunk (with
    /// `"choices": []`) if asked for, and `data: [DONE]`.
    pub fn finish(&self, out: &mut Vec<u8>, reply: &Reply) {
        self.open_choice(out);
        out.extend_from_slice(b"{}");
        self.close_choice(out, Some(finish_reason(reply)));
        if let Some(usage) = self.usage {
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(b"],\"usage\":");
            push_json(out, &usage.to_openai_json());
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    /// Writes the prefix up to the delta of choice 0.
    fn open_choice(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"index\":0,\"delta\":");
    }

    /// Closes choice 0 and the chunk.
    fn close_choice(&self, out: &mut Vec<u8>, finish: Option<&str>) {
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(reason) => push_json_str(out, reason),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]");
        out.extend_from_slice(self.usage_suffix);
        out.extend_from_slice(b"}\n\n");
    }
}

/// `chatcmpl-sim-N`.
pub(crate) fn completion_id(ids: &ResponseIds) -> String {
    format!("chatcmpl-sim-{}", ids.request_id)
}

/// `call_sim_N`, the id of a tool call (Chat Completions and Responses).
pub(crate) fn call_id(ids: &ResponseIds) -> String {
    format!("call_sim_{}", ids.request_id)
}

/// The in-stream error of the `stream_error` fault.
pub(crate) fn error_event(out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    push_json(
        out,
        &error_body(
            "The server had an error while processing your request (simulated by conclave-sim).",
            "server_error",
            Some("server_error"),
        ),
    );
    out.extend_from_slice(b"\n\n");
}

/// The non-streaming `chat.completion` object for `reply`.
pub(crate) fn completion(ids: &ResponseIds, reply: &Reply, usage: Usage) -> Value {
    let message = match reply.tool_name() {
        None => json!({"role": "assistant", "content": reply.body, "refusal": null}),
        Some(name) => json!({
            "role": "assistant",
            "content": null,
            "refusal": null,
            "tool_calls": [{
                "id": call_id(ids),
                "type": "function",
                "function": {"name": name, "arguments": reply.body},
            }],
        }),
    };
    json!({
        "id": completion_id(ids),
        "object": "chat.completion",
        "created": ids.created,
        "model": ids.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reply),
        }],
        "usage": usage.to_openai_json(),
    })
}

/// The OpenAI error envelope: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// A status fault in OpenAI's envelope, with OpenAI's `type`/`code` for each status.
pub(crate) fn fault_body(fault: Fault) -> Value {
    let (kind, code) = match fault {
        Fault::RateLimited => ("requests", Some("rate_limit_exceeded")),
        Fault::QuotaExhausted => ("insufficient_quota", Some("insufficient_quota")),
        _ => ("server_error", None),
    };
    error_body(fault_message(fault), kind, code)
}

fn finish_reason(reply: &Reply) -> &'static str {
    if reply.tool_name().is_some() {
        "tool_calls"
    } else {
        "stop"
    }
}
