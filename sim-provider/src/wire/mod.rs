//! The wire formats the simulator speaks, one module each, behind one dispatch.
//!
//! | module | endpoint | format |
//! |---|---|---|
//! | [`chat`] | `POST /v1/chat/completions` | OpenAI Chat Completions |
//! | [`anthropic`] | `POST /v1/messages` | Anthropic Messages |
//! | [`responses`] | `POST /v1/responses` | OpenAI Responses |
//! | [`gemini`] | `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` | Google Gemini |
//!
//! A module holds everything that is specific to its format: parsing the request into a
//! [`SimRequest`], the stream events of a reply, the non-streaming body, the error envelope,
//! and what an in-stream error or a malformed line looks like. Everything else (the policy,
//! pacing, faults, the request log) is shared, so the four formats behave identically apart
//! from their bytes. Event shapes follow recordings of the real APIs, so a client that works
//! here works there.
//!
//! Per-piece events are written by hand into byte buffers instead of through
//! `serde_json::json!` values: a bench runs a thousand streams at a hundred events per second
//! each. Only the strings that come from the request or the reply go through `serde_json`
//! for escaping. Once-per-response events (a stream's opening and closing) use `json!`.

pub(crate) mod anthropic;
pub(crate) mod chat;
pub(crate) mod gemini;
pub(crate) mod responses;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fault::Fault;
use crate::policy::Reply;
use crate::request::SimRequest;

/// Which wire format a request used; recorded in the request log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Wire {
    /// OpenAI Chat Completions. The default, so logs written before the field existed read
    /// back as what they were.
    #[default]
    #[serde(rename = "openai_chat")]
    OpenAiChat,
    /// OpenAI Responses.
    #[serde(rename = "openai_responses")]
    OpenAiResponses,
    /// Anthropic Messages.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Google Gemini `generateContent` / `streamGenerateContent`.
    #[serde(rename = "gemini")]
    Gemini,
}

impl Wire {
    /// The name used in logs: `openai_chat`, `openai_responses`, `anthropic`, `gemini`.
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::OpenAiChat => "openai_chat",
            Wire::OpenAiResponses => "openai_responses",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
        }
    }

    /// Parses a request body of this format. `url_model` is the model named in the URL
    /// (Gemini); the error is a message for the client.
    pub(crate) fn parse(self, body: &[u8], url_model: Option<&str>) -> Result<SimRequest, String> {
        match self {
            Wire::OpenAiChat => chat::parse(body),
            Wire::OpenAiResponses => responses::parse(body),
            Wire::Anthropic => anthropic::parse(body),
            Wire::Gemini => gemini::parse(body, url_model.unwrap_or_default()),
        }
    }
}

/// Token counts reported to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The identity of one response, from which each format derives its ids (`chatcmpl-sim-N`,
/// `msg_sim_N`, `resp_sim_N`, ...). N is the request log id, so an id names one request.
#[derive(Debug, Clone)]
pub(crate) struct ResponseIds {
    pub request_id: u64,
    /// Unix seconds.
    pub created: u64,
    /// The model string as the client sent it.
    pub model: String,
}

/// Writes the server-sent events of one streamed reply in one wire format. Piece 0 carries
/// whatever opens the response in that format; [`StreamWriter::finish`] whatever closes it.
#[derive(Debug)]
pub(crate) enum StreamWriter {
    Chat(chat::ChunkWriter),
    Anthropic(anthropic::EventWriter),
    Responses(responses::EventWriter),
    Gemini(gemini::ChunkWriter),
}

impl StreamWriter {
    /// `usage` is reported at the end (and, where the format does so, at the start); `None`
    /// only for a Chat Completions stream that did not ask for it.
    pub fn new(wire: Wire, ids: &ResponseIds, usage: Option<Usage>) -> Self {
        match wire {
            Wire::OpenAiChat => StreamWriter::Chat(chat::ChunkWriter::new(ids, usage)),
            Wire::Anthropic => {
                StreamWriter::Anthropic(anthropic::EventWriter::new(ids, usage_or_zero(usage)))
            }
            Wire::OpenAiResponses => {
                StreamWriter::Responses(responses::EventWriter::new(ids, usage_or_zero(usage)))
            }
            Wire::Gemini => {
                StreamWriter::Gemini(gemini::ChunkWriter::new(ids, usage_or_zero(usage)))
            }
        }
    }

    /// The events for piece `index` of `reply` (may be empty: Gemini sends a tool call whole).
    pub fn piece(&mut self, out: &mut Vec<u8>, reply: &Reply, index: usize) {
        match self {
            StreamWriter::Chat(writer) => writer.piece(out, reply, index),
            StreamWriter::Anthropic(writer) => writer.piece(out, reply, index),
            StreamWriter::Responses(writer) => writer.piece(out, reply, index),
            StreamWriter::Gemini(writer) => writer.piece(out, reply, index),
        }
    }

    /// The closing events: finish reason, usage and the terminal event of the format.
    pub fn finish(&mut self, out: &mut Vec<u8>, reply: &Reply) {
        match self {
            StreamWriter::Chat(writer) => writer.finish(out, reply),
            StreamWriter::Anthropic(writer) => writer.finish(out, reply),
            StreamWriter::Responses(writer) => writer.finish(out, reply),
            StreamWriter::Gemini(writer) => writer.finish(out, reply),
        }
    }

    /// An error reported inside the stream, the way the format reports one (the `stream_error`
    /// fault). Nothing follows it.
    pub fn error_event(&mut self, out: &mut Vec<u8>) {
        match self {
            StreamWriter::Chat(_) => chat::error_event(out),
            StreamWriter::Anthropic(_) => anthropic::error_event(out),
            StreamWriter::Responses(writer) => writer.error_event(out),
            StreamWriter::Gemini(_) => gemini::error_event(out),
        }
    }

    /// One event whose data is not JSON (the `malformed` fault), framed like the format's
    /// other events so that only the JSON parse can notice.
    pub fn malformed(&self, out: &mut Vec<u8>) {
        match self {
            StreamWriter::Chat(_) => out.extend_from_slice(MALFORMED_LF),
            StreamWriter::Anthropic(_) => {
                out.extend_from_slice(b"event: content_block_delta\n");
                out.extend_from_slice(MALFORMED_LF);
            }
            StreamWriter::Responses(_) => {
                out.extend_from_slice(b"event: response.output_text.delta\n");
                out.extend_from_slice(MALFORMED_LF);
            }
            StreamWriter::Gemini(_) => out.extend_from_slice(MALFORMED_CRLF),
        }
    }
}

/// The data line of the `malformed` fault: looks like the start of a JSON object, is not one.
const MALFORMED_LF: &[u8] = b"data: {\"conclave-sim\": this is not JSON\n\n";
/// [`MALFORMED_LF`] with Gemini's CRLF framing.
const MALFORMED_CRLF: &[u8] = b"data: {\"conclave-sim\": this is not JSON\r\n\r\n";

fn usage_or_zero(usage: Option<Usage>) -> Usage {
    usage.unwrap_or(Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
    })
}

/// The non-streaming response body for `reply`.
pub(crate) fn completion_body(wire: Wire, ids: &ResponseIds, reply: &Reply, usage: Usage) -> Value {
    match wire {
        Wire::OpenAiChat => chat::completion(ids, reply, usage),
        Wire::Anthropic => anthropic::message(ids, reply, usage),
        Wire::OpenAiResponses => responses::response(ids, reply, usage, "completed"),
        Wire::Gemini => gemini::response(ids, reply, usage),
    }
}

/// A client mistake (bad JSON, unknown model option), in the format's error envelope.
pub(crate) fn invalid_request(wire: Wire, message: &str) -> (StatusCode, Value) {
    let body = match wire {
        Wire::OpenAiChat | Wire::OpenAiResponses => {
            chat::error_body(message, "invalid_request_error", None)
        }
        Wire::Anthropic => anthropic::error_body("invalid_request_error", message),
        Wire::Gemini => gemini::error_body(400, "INVALID_ARGUMENT", message),
    };
    (StatusCode::BAD_REQUEST, body)
}

/// The status and body of a status fault, in the format's error envelope. `None` for a fault
/// that is not a status fault.
pub(crate) fn fault_response(wire: Wire, fault: Fault) -> Option<(StatusCode, Value)> {
    let status = StatusCode::from_u16(fault.status()?).ok()?;
    let body = match wire {
        Wire::OpenAiChat | Wire::OpenAiResponses => chat::fault_body(fault),
        Wire::Anthropic => anthropic::fault_body(fault),
        Wire::Gemini => gemini::fault_body(fault),
    };
    Some((status, body))
}

/// The message of each status fault, shared by the formats (each wraps it in its envelope).
/// The quota message is OpenAI's and Gemini's own wording, which clients recognise.
pub(crate) fn fault_message(fault: Fault) -> &'static str {
    match fault {
        Fault::RateLimited => "Rate limit reached for requests (simulated by conclave-sim).",
        Fault::QuotaExhausted => {
            "You exceeded your current quota, please check your plan and billing details."
        }
        Fault::ServerError => {
            "The server had an error while processing your request (simulated by conclave-sim)."
        }
        Fault::Unavailable => {
            "The server is overloaded or not ready yet (simulated by conclave-sim)."
        }
        Fault::Overloaded => "Overloaded (simulated by conclave-sim).",
        _ => "Simulated failure.",
    }
}

/// Appends `text` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut Vec<u8>, text: &str) {
    // Serializing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// Appends `value` as compact JSON.
pub(crate) fn push_json(out: &mut Vec<u8>, value: &Value) {
    // Serializing a `Value` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// Appends one named event: `event: NAME\ndata: JSON\n\n` (Anthropic and Responses frame
/// every event this way).
pub(crate) fn push_named_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    push_json(out, data);
    out.extend_from_slice(b"\n\n");
}
