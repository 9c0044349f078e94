//! Anthropic Messages (`POST /v1/messages`): the request, the named-event stream, the
//! non-streaming `message` object and Anthropic's error envelope.
//!
//! A streamed reply is one content block, as Claude sends it:
//!
//! ```text
//! message_start            (usage.input_tokens, output_tokens 1)
//! content_block_start      text "" | tool_use {id, name, input: {}}
//! ping
//! content_block_delta × n  text_delta | input_json_delta
//! content_block_stop
//! message_delta            stop_reason end_turn | tool_use, usage.output_tokens
//! message_stop
//! ```
//!
//! Tools are `{name, description, input_schema}`; the vote enum is read from
//! `input_schema.properties.agent_id.enum`. An in-stream error is `event: error` with
//! `{"type":"error","error":{"type":"overloaded_error",...}}`, as the API sends it.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ResponseIds, Usage, fault_message, push_json_str, push_named_event};
use crate::fault::Fault;
use crate::policy::Reply;
use crate::request::{SimRequest, fingerprint, last_user_text, offered_tools, result_text};

/// A `POST /v1/messages` body: `model`, `system`, `messages`, `tools` and `stream` are read.
#[derive(Debug, Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Parses a Messages body. Server tools (`{"type": "web_search_...", "name": ...}`) are
/// offered tools like any other; only `vote`'s schema matters.
pub(crate) fn parse(body: &[u8]) -> Result<SimRequest, String> {
    let request: MessagesRequest = serde_json::from_slice(body)
        .map_err(|err| format!("The request body is not valid JSON for the Messages API: {err}"))?;
    let (tool_names, vote_label, tool_params) =
        offered_tools(request.tools.iter().flatten().filter_map(|tool| {
            let name = tool.get("name").and_then(Value::as_str)?;
            Some((name, tool.get("input_schema")))
        }));
    let tool_results = request
        .messages
        .iter()
        .filter_map(|message| message.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|block| block.get("content").map(result_text).unwrap_or_default())
        .collect();
    Ok(SimRequest {
        fingerprint: fingerprint(&[&request.system, &request.messages, &request.tools]),
        stream: request.stream.unwrap_or(false),
        include_usage: true,
        last_user_text: last_user_text(&request.messages, "content"),
        model: request.model,
        tool_names,
        vote_label,
        tool_params,
        tool_results,
    })
}

/// `msg_sim_N`.
fn message_id(ids: &ResponseIds) -> String {
    format!("msg_sim_{}", ids.request_id)
}

/// `toolu_sim_N`.
fn tool_use_id(ids: &ResponseIds) -> String {
    format!("toolu_sim_{}", ids.request_id)
}

/// Writes the events of one streamed reply.
#[derive(Debug)]
pub(crate) struct EventWriter {
    ids: ResponseIds,
    usage: Usage,
}

impl EventWriter {
    pub fn new(ids: &ResponseIds, usage: Usage) -> Self {
        EventWriter {
            ids: ids.clone(),
            usage,
        }
    }

    /// Piece 0 opens the message and its content block; every piece is one delta.
    pub fn piece(&self, out: &mut Vec<u8>, reply: &Reply, index: usize) {
        if index == 0 {
            self.open(out, reply);
        }
        out.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":",
        );
        if reply.tool_name().is_some() {
            out.extend_from_slice(b"{\"type\":\"input_json_delta\",\"partial_json\":");
        } else {
            out.extend_from_slice(b"{\"type\":\"text_delta\",\"text\":");
        }
        push_json_str(out, reply.piece(index));
        out.extend_from_slice(b"}}\n\n");
    }

    fn open(&self, out: &mut Vec<u8>, reply: &Reply) {
        push_named_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(&self.ids),
                "type": "message",
                "role": "assistant",
                "model": self.ids.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": self.usage.prompt_tokens, "output_tokens": 1},
            }}),
        );
        let block = match reply.tool_name() {
            Some(name) => json!({
                "type": "tool_use", "id": tool_use_id(&self.ids), "name": name, "input": {}
            }),
            None => json!({"type": "text", "text": ""}),
        };
        push_named_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
        );
        push_named_event(out, "ping", &json!({"type": "ping"}));
    }

    /// Closes the block and the message: stop reason, output usage, `message_stop`.
    pub fn finish(&self, out: &mut Vec<u8>, reply: &Reply) {
        push_named_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        );
        push_named_event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
                "usage": {"output_tokens": self.usage.completion_tokens},
            }),
        );
        push_named_event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

/// The in-stream error of the `stream_error` fault: Anthropic's overload, the in-stream
/// error real clients meet most.
pub(crate) fn error_event(out: &mut Vec<u8>) {
    push_named_event(
        out,
        "error",
        &error_body(
            "overloaded_error",
            "Overloaded (simulated by conclave-sim).",
        ),
    );
}

/// The non-streaming `message` object for `reply`.
pub(crate) fn message(ids: &ResponseIds, reply: &Reply, usage: Usage) -> Value {
    let content = match reply.tool_name() {
        Some(name) => {
            // The arguments are JSON the policy generated; an object in any case.
            let input = serde_json::from_str::<Value>(&reply.body).unwrap_or_else(|_| json!({}));
            json!([{"type": "tool_use", "id": tool_use_id(ids), "name": name, "input": input}])
        }
        None => json!([{"type": "text", "text": reply.body}]),
    };
    json!({
        "id": message_id(ids),
        "type": "message",
        "role": "assistant",
        "model": ids.model,
        "content": content,
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    })
}

/// Anthropic's error envelope: `{"type": "error", "error": {"type", "message"}}`.
pub(crate) fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// A status fault in Anthropic's envelope, with Anthropic's error type for each status.
pub(crate) fn fault_body(fault: Fault) -> Value {
    let kind = match fault {
        Fault::RateLimited | Fault::QuotaExhausted => "rate_limit_error",
        Fault::Overloaded => "overloaded_error",
        _ => "api_error",
    };
    error_body(kind, fault_message(fault))
}

fn stop_reason(reply: &Reply) -> &'static str {
    if reply.tool_name().is_some() {
        "tool_use"
    } else {
        "end_turn"
    }
}
