//! Helpers shared by the HTTP tests: start a server on a free loopback port, build
//! OpenAI-style requests, and read a server-sent-event body back into one reply.

#![allow(dead_code)] // Each test file uses its own subset.

use std::time::Duration;

use conclave_sim::{SimConfig, SimServer};
use serde_json::{Value, json};

/// A server on `127.0.0.1:0`.
pub async fn start(config: SimConfig) -> SimServer {
    let addr = "127.0.0.1:0".parse().expect("loopback address");
    SimServer::start(config, addr)
        .await
        .expect("simulated provider starts")
}

/// Short replies, fast pacing: for tests about content rather than timing.
pub fn fast() -> SimConfig {
    SimConfig {
        tokens: 8,
        token_delay: Duration::from_millis(1),
        first_byte_delay: Duration::ZERO,
    }
}

/// The `vote` workflow tool with `labels` as the `agent_id` enum.
pub fn vote_tool(labels: &[&str]) -> Value {
    json!({"type": "function", "function": {
        "name": "vote",
        "description": "Vote for the best existing answer.",
        "parameters": {
            "type": "object",
            "properties": {
                "agent_id": {"type": "string", "enum": labels},
                "reason": {"type": "string"}
            },
            "required": ["agent_id", "reason"]
        }
    }})
}

/// The `new_answer` workflow tool.
pub fn new_answer_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "new_answer",
        "description": "Submit a new, complete answer to the task.",
        "parameters": {
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"]
        }
    }})
}

/// A chat request for `model`, streaming with usage, offering `tools` when given.
pub fn chat(model: &str, tools: Option<Value>) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are one of several agents."},
            {"role": "user", "content": "What is the capital of France?"}
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(tools) = tools {
        body["tools"] = tools;
    }
    body
}

/// POSTs `body` to the server's chat completions endpoint.
pub async fn post(base_url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base_url}/chat/completions"))
        .json(body)
        .send()
        .await
        .expect("request reaches the simulator")
}

/// A streamed reply put back together, the way an OpenAI client accumulates deltas.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Every `data:` payload except `[DONE]`, parsed.
    pub chunks: Vec<Value>,
    /// Whether `data: [DONE]` was the last event.
    pub done_last: bool,
    pub role: Option<String>,
    pub content: String,
    /// Number of chunks carrying a `delta.content` string.
    pub content_pieces: usize,
    pub tool_id: Option<String>,
    pub tool_name: Option<String>,
    pub arguments: String,
    /// Number of chunks carrying an arguments fragment (the header's `""` included).
    pub argument_pieces: usize,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
}

/// Parses a whole SSE body.
pub fn parse_sse(body: &str) -> Streamed {
    let mut streamed = Streamed::default();
    let events: Vec<&str> = body
        .split("\n\n")
        .map(str::trim)
        .filter(|event| !event.is_empty())
        .collect();
    for (index, event) in events.iter().enumerate() {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("event without data: {event:?}"));
        if data == "[DONE]" {
            streamed.done_last = index + 1 == events.len();
            continue;
        }
        let chunk: Value = serde_json::from_str(data).expect("chunk is JSON");
        if let Some(usage) = chunk.get("usage").filter(|usage| !usage.is_null()) {
            streamed.usage = Some(usage.clone());
        }
        if let Some(choice) = chunk["choices"].get(0) {
            let delta = &choice["delta"];
            if let Some(role) = delta["role"].as_str() {
                streamed.role = Some(role.to_owned());
            }
            if let Some(content) = delta["content"].as_str() {
                streamed.content.push_str(content);
                streamed.content_pieces += 1;
            }
            if let Some(call) = delta["tool_calls"].get(0) {
                assert_eq!(call["index"], 0);
                if let Some(id) = call["id"].as_str() {
                    streamed.tool_id = Some(id.to_owned());
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    streamed.tool_name = Some(name.to_owned());
                }
                if let Some(fragment) = call["function"]["arguments"].as_str() {
                    streamed.arguments.push_str(fragment);
                    streamed.argument_pieces += 1;
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                streamed.finish_reason = Some(reason.to_owned());
            }
        }
        streamed.chunks.push(chunk);
    }
    streamed
}

/// POSTs a streaming `body` and parses the whole reply.
pub async fn stream(base_url: &str, body: &Value) -> Streamed {
    let response = post(base_url, body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("whole body");
    parse_sse(&text)
}

/// One server-sent event: its `event:` name (if any) and its `data:` payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

impl Event {
    /// The payload as JSON; panics (failing the test) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|err| panic!("event data is not JSON ({err}): {:?}", self.data))
    }
}

/// Splits an SSE body into events, for any framing (LF or CRLF). Events without data are
/// dropped, as an SSE client drops them.
pub fn events(body: &str) -> Vec<Event> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data: Option<String> = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match &mut data {
                        Some(existing) => {
                            existing.push('\n');
                            existing.push_str(value);
                        }
                        None => data = Some(value.to_owned()),
                    }
                }
            }
            data.map(|data| Event { name, data })
        })
        .collect()
}

/// The `vote` tool in Anthropic's shape (`input_schema`).
pub fn anthropic_vote_tool(labels: &[&str]) -> Value {
    let function = &vote_tool(labels)["function"];
    json!({"name": "vote", "description": function["description"],
        "input_schema": function["parameters"]})
}

/// The `new_answer` tool in Anthropic's shape.
pub fn anthropic_new_answer_tool() -> Value {
    let function = &new_answer_tool()["function"];
    json!({"name": "new_answer", "description": function["description"],
        "input_schema": function["parameters"]})
}

/// A tool in the Responses API's flat shape.
pub fn flat_tool(chat_tool: &Value) -> Value {
    let function = &chat_tool["function"];
    json!({"type": "function", "name": function["name"], "description": function["description"],
        "parameters": function["parameters"]})
}

/// Gemini's `tools` with the given chat-shaped tools as function declarations.
pub fn gemini_tools(chat_tools: &[Value]) -> Value {
    let declarations: Vec<Value> = chat_tools
        .iter()
        .map(|tool| {
            let function = &tool["function"];
            json!({"name": function["name"], "description": function["description"],
                "parameters": function["parameters"]})
        })
        .collect();
    json!([{"functionDeclarations": declarations}])
}

/// The question every test asks, in each format.
pub const QUESTION: &str = "What is the capital of France?";

/// An Anthropic Messages request.
pub fn anthropic(model: &str, tools: Option<Value>, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": 1024,
        "system": "You are one of several agents.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
        "stream": stream,
    });
    if let Some(tools) = tools {
        body["tools"] = tools;
    }
    body
}

/// An OpenAI Responses request.
pub fn responses(model: &str, tools: Option<Value>, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "instructions": "You are one of several agents.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}],
        "stream": stream,
    });
    if let Some(tools) = tools {
        body["tools"] = tools;
    }
    body
}

/// A Gemini `generateContent` request (the model goes in the URL).
pub fn gemini(tools: Option<Value>) -> Value {
    let mut body = json!({
        "systemInstruction": {"parts": [{"text": "You are one of several agents."}]},
        "contents": [{"role": "user", "parts": [{"text": QUESTION}]}],
    });
    if let Some(tools) = tools {
        body["tools"] = tools;
    }
    body
}

/// The streaming Gemini URL for `model` under `base` (`…/v1beta` or `…/v1`).
pub fn gemini_stream_url(base: &str, model: &str) -> String {
    format!("{base}/models/{model}:streamGenerateContent?alt=sse")
}

/// POSTs `body` to `url`.
pub async fn post_to(url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request reaches the simulator")
}

/// POSTs `body` to `url`, expects a 200 and returns the whole body as text.
pub async fn body_of(url: &str, body: &Value) -> String {
    let response = post_to(url, body).await;
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.expect("whole body")
}
