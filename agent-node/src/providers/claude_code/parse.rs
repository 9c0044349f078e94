//! The Claude Code stream parser: a pure state machine, the CLI's stream-json lines in,
//! chunks out, then the exit status (see the parent module's docs for the rules).

use std::collections::{HashMap, HashSet};

use conclave_protocol::{StreamChunk, ToolCall, Usage};
use serde_json::Value;

use super::parse_tool_calls;
use crate::llm::{ChatRequest, ToolChoice, ToolSpec};
use crate::providers::error::{ProviderError, snippet};
use crate::providers::stream::{Flow, Out, push_in_stream_error};

/// How the run ended, as far as the output lines tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// No result line yet.
    Running,
    /// A successful result.
    Succeeded,
    /// An error was already reported (error result or unreadable output).
    Failed,
}

/// The pure state machine behind the CLI stream: stdout lines in, chunks out; then the exit
/// status. No I/O, so it can be driven directly in tests.
#[derive(Debug)]
pub struct ClaudeCodeParser {
    /// The tools offered in the prompt, for recognising calls in the final text.
    tools: Vec<ToolSpec>,
    /// Whether calls are expected at all (`ToolChoice::None` offers none).
    parse_calls: bool,
    /// Messages whose text arrived as `stream_event` deltas (so their full copy is skipped).
    streamed: HashSet<String>,
    /// The id and text of the latest assistant message, for a result without `result` text.
    last_message: Option<String>,
    last_text: String,
    /// The latest assistant `stop_reason`.
    stop_reason: Option<String>,
    /// The CLI's own tool uses still waiting for their result: id → (name, arguments); and
    /// the display index of the next one.
    cli_tools: HashMap<String, (String, String)>,
    cli_tool_index: u32,
    outcome: Outcome,
}

impl ClaudeCodeParser {
    /// A parser for the output of a call made with `request`.
    pub fn new(request: &ChatRequest) -> Self {
        Self {
            tools: request.tools.clone(),
            parse_calls: !request.tools.is_empty() && request.tool_choice != ToolChoice::None,
            streamed: HashSet::new(),
            last_message: None,
            last_text: String::new(),
            stop_reason: None,
            cli_tools: HashMap::new(),
            cli_tool_index: 0,
            outcome: Outcome::Running,
        }
    }

    /// Handles one line of the CLI's stdout.
    pub fn on_line(&mut self, line: &str, out: &mut Out) -> Flow {
        let line = line.trim();
        if line.is_empty() {
            return Flow::Continue;
        }
        if !line.starts_with('{') {
            // Some CLI builds print debug lines to stdout.
            tracing::debug!(
                line = snippet(line),
                "skipping a non-JSON line from the Claude Code CLI"
            );
            return Flow::Continue;
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(e) => {
                self.outcome = Outcome::Failed;
                out.push_back(Err(ProviderError::Malformed(format!(
                    "Claude Code CLI output line is not valid JSON: {e}; line: {}",
                    snippet(line)
                ))));
                return Flow::Done;
            }
        };
        // Sub-agents' messages are theirs, not this call's output.
        if value
            .get("parent_tool_use_id")
            .is_some_and(|parent| !parent.is_null())
        {
            return Flow::Continue;
        }
        match value.get("type").and_then(Value::as_str).unwrap_or("") {
            "system" => {
                let subtype = value.get("subtype").and_then(Value::as_str).unwrap_or("");
                if subtype == "init" {
                    tracing::debug!(
                        model = value.get("model").and_then(serde_json::Value::as_str),
                        session = value.get("session_id").and_then(serde_json::Value::as_str),
                        "Claude Code session started"
                    );
                } else {
                    tracing::trace!(subtype, "Claude Code system message");
                }
                Flow::Continue
            }
            "stream_event" => {
                if let Some(event) = value.get("event") {
                    self.on_stream_event(event, out);
                }
                Flow::Continue
            }
            "assistant" => {
                if let Some(message) = value.get("message") {
                    self.on_assistant(message, out);
                }
                Flow::Continue
            }
            "user" => {
                if let Some(message) = value.get("message") {
                    self.on_tool_results(message, out);
                }
                Flow::Continue
            }
            "result" => {
                self.on_result(&value, out);
                Flow::Done
            }
            other => {
                tracing::trace!(kind = other, "ignoring a Claude Code message");
                Flow::Continue
            }
        }
    }

    /// Judges the exit status once the output is over. `code` is `None` when the process was
    /// killed by a signal (or could not be waited for).
    pub fn on_exit(&mut self, code: Option<i32>, stderr: &str, out: &mut Out) {
        let outcome = self.outcome;
        self.outcome = Outcome::Failed;
        if outcome == Outcome::Failed || (outcome == Outcome::Succeeded && code == Some(0)) {
            return;
        }
        let status = code.map_or_else(|| "a signal".to_owned(), |c| format!("status {c}"));
        let mut message = if outcome == Outcome::Running {
            format!("the Claude Code CLI exited with {status} without a result")
        } else {
            format!("the Claude Code CLI exited with {status} after its result")
        };
        if !stderr.is_empty() {
            message.push_str(": ");
            message.push_str(stderr);
        }
        push_in_stream_error("cli_exit".into(), message, code.map(|c| c.to_string()), out);
    }

    fn on_stream_event(&mut self, event: &Value, out: &mut Out) {
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                if let Some(id) = event
                    .get("message")
                    .and_then(|m| m.get("id"))
                    .and_then(Value::as_str)
                {
                    self.streamed.insert(id.to_owned());
                }
            }
            "content_block_delta" => {
                let Some(delta) = event.get("delta") else {
                    return;
                };
                let text = |key: &str| {
                    delta
                        .get(key)
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                };
                match delta.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text_delta" => {
                        if let Some(text) = text("text") {
                            out.push_back(Ok(StreamChunk::Content { text }));
                        }
                    }
                    "thinking_delta" => {
                        if let Some(text) = text("thinking") {
                            out.push_back(Ok(StreamChunk::Reasoning { text }));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn on_assistant(&mut self, message: &Value, out: &mut Out) {
        let id = message.get("id").and_then(Value::as_str);
        let streamed = id.is_some_and(|id| self.streamed.contains(id));
        if id.is_none() || id != self.last_message.as_deref() {
            self.last_message = id.map(str::to_owned);
            self.last_text.clear();
        }
        if let Some(reason) = message.get("stop_reason").and_then(Value::as_str) {
            self.stop_reason = Some(reason.to_owned());
        }
        let blocks = message
            .get("content")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for block in blocks {
            let field = |key: &str| block.get(key).and_then(Value::as_str).unwrap_or("");
            match field("type") {
                "text" => {
                    let text = field("text");
                    self.last_text.push_str(text);
                    if !streamed && !text.is_empty() {
                        out.push_back(Ok(StreamChunk::Content {
                            text: text.to_owned(),
                        }));
                    }
                }
                "thinking" => {
                    let text = field("thinking");
                    if !streamed && !text.is_empty() {
                        out.push_back(Ok(StreamChunk::Reasoning {
                            text: text.to_owned(),
                        }));
                    }
                }
                "tool_use" => {
                    // The CLI runs its own tools: shown as it starts one, reported with its
                    // result (see `on_tool_results`), never returned as a call to execute.
                    let (id, name) = (field("id").to_owned(), field("name").to_owned());
                    let arguments = block.get("input").map(Value::to_string).unwrap_or_default();
                    let index = self.cli_tool_index;
                    self.cli_tool_index = self.cli_tool_index.saturating_add(1);
                    self.cli_tools
                        .insert(id.clone(), (name.clone(), arguments.clone()));
                    out.push_back(Ok(StreamChunk::ToolCallDelta {
                        index,
                        id: Some(id),
                        name: Some(name),
                        arguments,
                    }));
                }
                _ => {}
            }
        }
    }

    /// The results of the CLI's own tools. Each result of a known call comes as the call
    /// ([`StreamChunk::ToolCall`]) followed at once by its [`StreamChunk::ToolResult`]: the
    /// pair says the provider ran the call itself, so the accumulator sets it apart from the
    /// calls conclave executes, and a call that never got a result is never reported as one.
    fn on_tool_results(&mut self, message: &Value, out: &mut Out) {
        let Some(blocks) = message.get("content").and_then(Value::as_array) else {
            return;
        };
        for block in blocks {
            if block.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            let id = block
                .get("tool_use_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let name = match self.cli_tools.remove(&id) {
                Some((name, arguments)) => {
                    out.push_back(Ok(StreamChunk::ToolCall(ToolCall::new(
                        id.clone(),
                        name.clone(),
                        arguments,
                    ))));
                    name
                }
                None => String::new(),
            };
            let content = match block.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            out.push_back(Ok(StreamChunk::ToolResult { id, name, content }));
        }
    }

    fn on_result(&mut self, result: &Value, out: &mut Out) {
        let usage = result.get("usage").map(|usage| {
            let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
            // Saturating: a bogus huge count must not panic (found by fuzzing).
            Usage {
                input_tokens: count("input_tokens")
                    .saturating_add(count("cache_creation_input_tokens"))
                    .saturating_add(count("cache_read_input_tokens")),
                output_tokens: count("output_tokens"),
            }
        });
        let subtype = result
            .get("subtype")
            .and_then(Value::as_str)
            .unwrap_or("success");
        let is_error = result
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(subtype != "success");
        let text = result.get("result").and_then(Value::as_str);
        if is_error {
            self.outcome = Outcome::Failed;
            if let Some(usage) = usage {
                out.push_back(Ok(StreamChunk::Usage(usage)));
            }
            let errors: Vec<&str> = result
                .get("errors")
                .and_then(Value::as_array)
                .map(|errors| errors.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let message = match text.filter(|t| !t.trim().is_empty()) {
                Some(text) => text.trim().to_owned(),
                None if !errors.is_empty() => errors.join("; "),
                None => format!("Claude Code ended with `{subtype}`"),
            };
            let code = match result.get("api_error_status") {
                Some(Value::Number(status)) => Some(status.to_string()),
                Some(Value::String(status)) => Some(status.clone()),
                _ => None,
            };
            push_in_stream_error(subtype.to_owned(), message, code, out);
            return;
        }
        self.outcome = Outcome::Succeeded;
        if self.parse_calls {
            let final_text = text.unwrap_or(&self.last_text);
            let calls = parse_tool_calls(final_text, &self.tools);
            if calls.is_empty() {
                tracing::debug!("no tool call found in the Claude Code reply");
            }
            for (index, (name, arguments)) in calls.into_iter().enumerate() {
                out.push_back(Ok(StreamChunk::ToolCall(ToolCall::new(
                    format!("call_{index}"),
                    name,
                    arguments.to_string(),
                ))));
            }
        }
        let reason = result
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| self.stop_reason.clone())
            .unwrap_or_else(|| subtype.to_owned());
        out.push_back(Ok(StreamChunk::Finish { reason }));
        if let Some(usage) = usage {
            out.push_back(Ok(StreamChunk::Usage(usage)));
        }
    }
}
