//! Google Gemini (`POST /v1beta/models/{model}:streamGenerateContent?alt=sse` and
//! `:generateContent`): the request, the CRLF-framed `data:` stream, the
//! `GenerateContentResponse` object and Google's error envelope.
//!
//! The model (with its simulator options) is the URL's model segment, not a body field.
//! Tools are `tools[].functionDeclarations[]` (snake_case accepted too), the vote enum at
//! `parameters.properties.agent_id.enum` (or `parametersJsonSchema`).
//!
//! A streamed text reply is one chunk per piece, `candidates[0].content.parts[0].text`. A
//! tool call cannot be streamed in Gemini's format (a `functionCall` part carries whole
//! `args`), so it is one chunk at piece 0 and the remaining pieces only take time. Every
//! chunk carries `usageMetadata.promptTokenCount`, as Gemini's do; the stream ends with a
//! chunk holding an empty text part, `finishReason: "STOP"` and the full usage (the shape
//! Gemini sends after a function call). Records are framed with CRLF, as Gemini frames them.

use std::io::Write as _;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ResponseIds, Usage, fault_message, push_json, push_json_str};
use crate::fault::Fault;
use crate::policy::Reply;
use crate::request::{SimRequest, fingerprint, last_user_text, offered_tools, result_text};

/// A `generateContent` body: `contents`, `systemInstruction` and `tools` are read.
#[derive(Debug, Deserialize)]
struct GenerateRequest {
    contents: Vec<Value>,
    #[serde(default, rename = "systemInstruction", alias = "system_instruction")]
    system_instruction: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
}

/// Parses a `generateContent` body for the model named in the URL. `stream` is left false:
/// the method in the URL decides it.
pub(crate) fn parse(body: &[u8], model: &str) -> Result<SimRequest, String> {
    let request: GenerateRequest = serde_json::from_slice(body)
        .map_err(|err| format!("Invalid JSON payload received: {err}"))?;
    let declarations = request.tools.iter().flatten().flat_map(|tool| {
        tool.get("functionDeclarations")
            .or_else(|| tool.get("function_declarations"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    });
    let (tool_names, vote_label, tool_params) =
        offered_tools(declarations.filter_map(|declaration| {
            let name = declaration.get("name").and_then(Value::as_str)?;
            let schema = [
                "parameters",
                "parametersJsonSchema",
                "parameters_json_schema",
            ]
            .iter()
            .find_map(|key| declaration.get(*key));
            Some((name, schema))
        }));
    let tool_results = request
        .contents
        .iter()
        .filter_map(|content| content.get("parts").and_then(Value::as_array))
        .flatten()
        .filter_map(|part| part.get("functionResponse"))
        .map(|response| {
            response
                .get("response")
                .map(result_text)
                .unwrap_or_default()
        })
        .collect();
    Ok(SimRequest {
        fingerprint: fingerprint(&[
            &request.system_instruction,
            &request.contents,
            &request.tools,
        ]),
        model: model.to_owned(),
        stream: false,
        include_usage: true,
        last_user_text: last_user_text(&request.contents, "parts"),
        tool_names,
        vote_label,
        tool_params,
        tool_results,
    })
}

/// `sim-N`.
fn response_id(ids: &ResponseIds) -> String {
    format!("sim-{}", ids.request_id)
}

/// The `functionCall` part of a tool reply: whole arguments, as Gemini sends them.
fn function_call_part(name: &str, reply: &Reply) -> Value {
    // The arguments are JSON the policy generated; an object in any case.
    let args = serde_json::from_str::<Value>(&reply.body).unwrap_or_else(|_| json!({}));
    json!({"functionCall": {"name": name, "args": args}})
}

/// Writes the chunks of one streamed reply.
#[derive(Debug)]
pub(crate) struct ChunkWriter {
    /// `,"usageMetadata":{"promptTokenCount":P,"totalTokenCount":P},"modelVersion":…,"responseId":…}`
    /// closing every chunk but the last.
    running_suffix: Vec<u8>,
    ids: ResponseIds,
    usage: Usage,
}

impl ChunkWriter {
    pub fn new(ids: &ResponseIds, usage: Usage) -> Self {
        let mut running_suffix = Vec::with_capacity(128 + ids.model.len());
        let _ = write!(
            running_suffix,
            ",\"usageMetadata\":{{\"promptTokenCount\":{0},\"totalTokenCount\":{0}}},\"modelVersion\":",
            usage.prompt_tokens
        );
        push_json_str(&mut running_suffix, &ids.model);
        running_suffix.extend_from_slice(b",\"responseId\":");
        push_json_str(&mut running_suffix, &response_id(ids));
        running_suffix.extend_from_slice(b"}\r\n\r\n");
        ChunkWriter {
            running_suffix,
            ids: ids.clone(),
            usage,
        }
    }

    /// A text piece is one chunk; a tool call is one chunk at piece 0 and nothing after.
    pub fn piece(&self, out: &mut Vec<u8>, reply: &Reply, index: usize) {
        let part = match reply.tool_name() {
            Some(name) if index == 0 => {
                let mut part = Vec::with_capacity(reply.body.len() + 64);
                push_json(&mut part, &function_call_part(name, reply));
                part
            }
            Some(_) => return,
            None => {
                let mut part = Vec::with_capacity(32);
                part.extend_from_slice(b"{\"text\":");
                push_json_str(&mut part, reply.piece(index));
                part.push(b'}');
                part
            }
        };
        out.extend_from_slice(b"data: {\"candidates\":[{\"content\":{\"parts\":[");
        out.extend_from_slice(&part);
        out.extend_from_slice(b"],\"role\":\"model\"},\"index\":0}]");
        out.extend_from_slice(&self.running_suffix);
    }

    /// The last chunk: an empty text part, `finishReason`, the full usage.
    pub fn finish(&self, out: &mut Vec<u8>, _reply: &Reply) {
        out.extend_from_slice(b"data: ");
        push_json(
            out,
            &json!({
                "candidates": [{
                    "content": {"parts": [{"text": ""}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }],
                "usageMetadata": usage_metadata(self.usage),
                "modelVersion": self.ids.model,
                "responseId": response_id(&self.ids),
            }),
        );
        out.extend_from_slice(b"\r\n\r\n");
    }
}

fn usage_metadata(usage: Usage) -> Value {
    json!({
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": usage.completion_tokens,
        "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// The in-stream error of the `stream_error` fault: Google's envelope as a data record.
pub(crate) fn error_event(out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    push_json(
        out,
        &error_body(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later. (simulated by conclave-sim)",
        ),
    );
    out.extend_from_slice(b"\r\n\r\n");
}

/// The non-streaming `GenerateContentResponse` for `reply`.
pub(crate) fn response(ids: &ResponseIds, reply: &Reply, usage: Usage) -> Value {
    let part = match reply.tool_name() {
        Some(name) => function_call_part(name, reply),
        None => json!({"text": reply.body}),
    };
    json!({
        "candidates": [{
            "content": {"parts": [part], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": usage_metadata(usage),
        "modelVersion": ids.model,
        "responseId": response_id(ids),
    })
}

/// Google's error envelope: `{"error": {"code", "message", "status"}}`.
pub(crate) fn error_body(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// A status fault in Google's envelope, with Google's status name for each code.
pub(crate) fn fault_body(fault: Fault) -> Value {
    let status = match fault {
        Fault::RateLimited | Fault::QuotaExhausted => "RESOURCE_EXHAUSTED",
        Fault::ServerError => "INTERNAL",
        _ => "UNAVAILABLE",
    };
    error_body(fault.status().unwrap_or(500), status, fault_message(fault))
}
