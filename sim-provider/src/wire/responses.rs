//! OpenAI Responses (`POST /v1/responses`): the request, the `response.*` event stream and
//! the `response` object. Errors use OpenAI's envelope (see `chat`).
//!
//! A streamed reply is one output item, as the API sends it:
//!
//! ```text
//! response.created, response.in_progress                     (status in_progress, usage null)
//! response.output_item.added       message | function_call {call_id, name, arguments ""}
//! response.content_part.added      (message only)
//! response.output_text.delta × n | response.function_call_arguments.delta × n
//! response.output_text.done, response.content_part.done | response.function_call_arguments.done
//! response.output_item.done
//! response.completed                                         (output, usage)
//! ```
//!
//! Every event carries an increasing `sequence_number`. Tools are flat
//! (`{"type":"function","name":..,"parameters":..}`). An in-stream error is an `error` event
//! followed by `response.failed`: clients that stop at either see the failure.

use std::io::Write as _;

use serde::Deserialize;
use serde_json::{Value, json};

use super::chat::call_id;
use super::{ResponseIds, Usage, push_json_str, push_named_event};
use crate::policy::Reply;
use crate::request::{SimRequest, fingerprint, last_user_text, offered_tools, result_text};

/// A `POST /v1/responses` body: `model`, `instructions`, `input`, `tools` and `stream` are
/// read.
#[derive(Debug, Deserialize)]
struct ResponsesRequest {
    model: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    instructions: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Parses a Responses body. `input` is a string (one user message) or a list of items;
/// built-in tools without a name (`{"type": "web_search"}`) are not function tools.
pub(crate) fn parse(body: &[u8]) -> Result<SimRequest, String> {
    let request: ResponsesRequest = serde_json::from_slice(body)
        .map_err(|err| format!("We could not parse the JSON body of your request: {err}"))?;
    let (tool_names, vote_label, tool_params) =
        offered_tools(request.tools.iter().flatten().filter_map(|tool| {
            let function = tool.get("function").unwrap_or(tool);
            let name = function.get("name").and_then(Value::as_str)?;
            Some((name, function.get("parameters")))
        }));
    let last_user_text = match &request.input {
        Value::String(text) => text.clone(),
        Value::Array(items) => last_user_text(items, "content"),
        _ => String::new(),
    };
    let tool_results = match &request.input {
        Value::Array(items) => items
            .iter()
            .filter(|item| item.get("type").and_then(Value::as_str) == Some("function_call_output"))
            .map(|item| item.get("output").map(result_text).unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    };
    Ok(SimRequest {
        fingerprint: fingerprint(&[&request.instructions, &request.input, &request.tools]),
        stream: request.stream.unwrap_or(false),
        include_usage: true,
        model: request.model,
        last_user_text,
        tool_names,
        vote_label,
        tool_params,
        tool_results,
    })
}

/// `resp_sim_N`.
fn response_id(ids: &ResponseIds) -> String {
    format!("resp_sim_{}", ids.request_id)
}

/// The output item's id: `msg_sim_N` for text, `fc_sim_N` for a function call.
fn item_id(ids: &ResponseIds, reply: &Reply) -> String {
    match reply.tool_name() {
        Some(_) => format!("fc_sim_{}", ids.request_id),
        None => format!("msg_sim_{}", ids.request_id),
    }
}

/// Writes the events of one streamed reply.
#[derive(Debug)]
pub(crate) struct EventWriter {
    ids: ResponseIds,
    usage: Usage,
    /// The next event's `sequence_number`.
    sequence: u64,
}

impl EventWriter {
    pub fn new(ids: &ResponseIds, usage: Usage) -> Self {
        EventWriter {
            ids: ids.clone(),
            usage,
            sequence: 0,
        }
    }

    /// Takes the next sequence number.
    fn next_sequence(&mut self) -> u64 {
        let sequence = self.sequence;
        self.sequence += 1;
        sequence
    }

    /// An event whose data is `data` plus the next `sequence_number`.
    fn event(&mut self, out: &mut Vec<u8>, name: &str, mut data: Value) {
        if let Some(object) = data.as_object_mut() {
            object.insert("sequence_number".to_owned(), json!(self.next_sequence()));
        }
        push_named_event(out, name, &data);
    }

    /// Piece 0 opens the response and its output item; every piece is one delta.
    pub fn piece(&mut self, out: &mut Vec<u8>, reply: &Reply, index: usize) {
        if index == 0 {
            self.open(out, reply);
        }
        let sequence = self.next_sequence();
        let event = if reply.tool_name().is_some() {
            "response.function_call_arguments.delta"
        } else {
            "response.output_text.delta"
        };
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(event.as_bytes());
        let _ = write!(out, "\",\"sequence_number\":{sequence},\"item_id\":");
        push_json_str(out, &item_id(&self.ids, reply));
        out.extend_from_slice(b",\"output_index\":0,");
        if reply.tool_name().is_none() {
            out.extend_from_slice(b"\"content_index\":0,");
        }
        out.extend_from_slice(b"\"delta\":");
        push_json_str(out, reply.piece(index));
        out.extend_from_slice(b"}\n\n");
    }

    fn open(&mut self, out: &mut Vec<u8>, reply: &Reply) {
        let skeleton = skeleton(&self.ids, "in_progress", json!([]), Value::Null);
        self.event(
            out,
            "response.created",
            json!({"type": "response.created", "response": skeleton}),
        );
        self.event(
            out,
            "response.in_progress",
            json!({"type": "response.in_progress", "response": skeleton}),
        );
        let added = match reply.tool_name() {
            Some(name) => json!({
                "type": "function_call",
                "id": item_id(&self.ids, reply),
                "call_id": call_id(&self.ids),
                "name": name,
                "arguments": "",
                "status": "in_progress",
            }),
            None => json!({
                "type": "message",
                "id": item_id(&self.ids, reply),
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }),
        };
        self.event(
            out,
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
        );
        if reply.tool_name().is_none() {
            self.event(
                out,
                "response.content_part.added",
                json!({
                    "type": "response.content_part.added",
                    "item_id": item_id(&self.ids, reply),
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                }),
            );
        }
    }

    /// Closes the item and completes the response with its usage.
    pub fn finish(&mut self, out: &mut Vec<u8>, reply: &Reply) {
        let item_id = item_id(&self.ids, reply);
        if reply.tool_name().is_some() {
            self.event(
                out,
                "response.function_call_arguments.done",
                json!({
                    "type": "response.function_call_arguments.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "arguments": reply.body,
                }),
            );
        } else {
            self.event(
                out,
                "response.output_text.done",
                json!({
                    "type": "response.output_text.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "text": reply.body,
                }),
            );
            self.event(
                out,
                "response.content_part.done",
                json!({
                    "type": "response.content_part.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": reply.body, "annotations": []},
                }),
            );
        }
        self.event(
            out,
            "response.output_item.done",
            json!({
                "type": "response.output_item.done",
                "output_index": 0,
                "item": output_item(&self.ids, reply),
            }),
        );
        self.event(
            out,
            "response.completed",
            json!({
                "type": "response.completed",
                "response": response(&self.ids, reply, self.usage, "completed"),
            }),
        );
    }

    /// The in-stream error of the `stream_error` fault: `error`, then `response.failed`.
    pub fn error_event(&mut self, out: &mut Vec<u8>) {
        let message =
            "The server had an error while processing your request (simulated by conclave-sim).";
        self.event(
            out,
            "error",
            json!({"type": "error", "code": "server_error", "message": message, "param": null}),
        );
        let mut failed = skeleton(&self.ids, "failed", json!([]), Value::Null);
        failed["error"] = json!({"code": "server_error", "message": message});
        self.event(
            out,
            "response.failed",
            json!({"type": "response.failed", "response": failed}),
        );
    }
}

/// The finished output item for `reply`.
fn output_item(ids: &ResponseIds, reply: &Reply) -> Value {
    match reply.tool_name() {
        Some(name) => json!({
            "type": "function_call",
            "id": item_id(ids, reply),
            "call_id": call_id(ids),
            "name": name,
            "arguments": reply.body,
            "status": "completed",
        }),
        None => json!({
            "type": "message",
            "id": item_id(ids, reply),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": reply.body, "annotations": []}],
        }),
    }
}

/// A `response` object with the given status, output and usage.
fn skeleton(ids: &ResponseIds, status: &str, output: Value, usage: Value) -> Value {
    json!({
        "id": response_id(ids),
        "object": "response",
        "created_at": ids.created,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "model": ids.model,
        "output": output,
        "usage": usage,
    })
}

/// The finished `response` object for `reply` (the non-streaming body, and the payload of
/// `response.completed`).
pub(crate) fn response(ids: &ResponseIds, reply: &Reply, usage: Usage, status: &str) -> Value {
    skeleton(
        ids,
        status,
        json!([output_item(ids, reply)]),
        json!({
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }),
    )
}
