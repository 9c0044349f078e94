//! `conclave probe`: one streaming call to one backend, printed as normalised events.
//!
//! Before a session it is worth knowing that a provider answers at all: that the key is
//! read, the base URL and the model are right, a proxy speaks the wire format, tool calls
//! come back whole. `probe` makes exactly that one call, with no session, no coordination
//! prompt and **no retries** (a 429 or a 503 is what you want to see), and prints what
//! conclave's backend made of the stream, so a provider quirk shows up as it is:
//!
//! ```text
//! $ conclave probe --backend openai --model gpt-4o-mini --tools tools.json "Vote, please."
//! {"type":"tool_call","id":"call_…","name":"vote","arguments":{"agent_id":"agent1.1",…}}
//! {"type":"finish","reason":"tool_calls"}
//! {"type":"usage","input_tokens":412,"output_tokens":31}
//! ```
//!
//! The backend is resolved exactly as for `conclave --model` ([`config::single_agent`]:
//! `--backend` names a type or preset, or the model name implies it) and built by the same
//! [`Backend::new`] the agents use, so what works here works in a session.
//!
//! ## Output: one JSON object per line on stdout, one line per chunk
//!
//! | `type` | fields | from |
//! |---|---|---|
//! | `content` | `text` | assistant text, one line per streamed piece (nothing is coalesced) |
//! | `reasoning` | `text` | reasoning / thinking text |
//! | `reasoning_signature` | `signature` | the opaque signature closing a reasoning block |
//! | `refusal` | `text` | OpenAI refusals |
//! | `tool_call` | `id`, `name`, `arguments`, (`signature`) | a complete call; `arguments` is the parsed JSON when it parses, else the raw string |
//! | `usage` | `input_tokens`, `output_tokens` | the provider's usage report |
//! | `finish` | `reason` | the provider's raw finish reason |
//! | `error` | `kind`, `message`, (`status`, `code`) | an HTTP error, a broken or malformed stream, an in-stream error, a stall |
//!
//! Tool-call fragments (`ToolCallDelta`) are not printed: every backend also emits the
//! complete call, which is what a user checks, and fragments of JSON are noise. An in-stream
//! error is printed once even though the backend reports it twice (as a chunk, then as the
//! stream's error). `kind` of an error is the provider's own error type for an in-stream
//! error (`overloaded_error`, `server_error`, ...), else one of `http` (with `status`),
//! `connect`, `malformed`, `truncated`, `stalled`.
//!
//! ## Exit codes
//!
//! 0: the call completed. 1: nothing was called, because the command line, the `--tools`
//! file or the backend cannot work (a missing API key names its variable); the reason is on
//! stderr and stdout stays empty. 2: the call failed (an `error` line says how).
//!
//! Every wait is bounded: connecting by the default `connect_timeout_seconds`, and the
//! stream by the default `stall_timeout_seconds` between two chunks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use conclave_agent::providers::{Backend, ProviderError, http_client};
use conclave_protocol::StreamChunk;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::args::{EXIT_EXECUTION, EXIT_OK, EXIT_USAGE, ProbeArgs};
use crate::config::{self, ConfigError};
use crate::console;

/// Why `probe` could not make its call (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `--model`, `--backend` or `--base-url` do not resolve to a backend.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The `--tools` file cannot be read.
    #[error("cannot read --tools {path}: {source}")]
    ToolsRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The `--tools` file is not a JSON array of `{name, description, parameters}`.
    #[error(
        "--tools {path} must be a JSON array of {{\"name\", \"description\", \"parameters\"}} objects: {problem}"
    )]
    ToolsInvalid { path: PathBuf, problem: String },
    /// The backend cannot be built: a missing API key (the message names the variable) or a
    /// configuration the backend refuses.
    #[error(transparent)]
    Backend(ProviderError),
}

/// Runs `conclave probe` with events on stdout and problems on stderr; returns the exit code.
pub async fn main(args: &ProbeArgs, env: &dyn Fn(&str) -> Option<String>) -> u8 {
    let mut stdout = StdoutLines;
    match run(args, env, &mut stdout).await {
        Ok(code) => code,
        Err(error) => {
            console::error!("{error}");
            EXIT_USAGE
        }
    }
}

/// Where event lines go: stdout in the binary, a buffer in tests.
pub trait EventSink {
    /// Writes one event as a line; an error means nobody is reading any more.
    fn event(&mut self, event: &Value) -> std::io::Result<()>;
}

/// Stdout, flushed per line so events show as they arrive. The lock is taken per line and
/// never held across an await.
struct StdoutLines;

impl EventSink for StdoutLines {
    fn event(&mut self, event: &Value) -> std::io::Result<()> {
        let line = type_first(event);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()
    }
}

/// An event as one line of JSON with `type` as its first key, so a person scanning the
/// output (or `cut`) sees the kind first; the other keys follow in their usual order.
fn type_first(event: &Value) -> String {
    let Some(object) = event.as_object() else {
        return event.to_string();
    };
    let Some(kind) = object.get("type") else {
        return event.to_string();
    };
    let mut line = format!("{{\"type\":{kind}");
    for (key, value) in object.iter().filter(|(key, _)| key.as_str() != "type") {
        line.push(',');
        line.push_str(&Value::String(key.clone()).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push('}');
    line
}

impl EventSink for Vec<Value> {
    fn event(&mut self, event: &Value) -> std::io::Result<()> {
        self.push(event.clone());
        Ok(())
    }
}

/// Resolves the backend, makes the call and writes its events to `sink`. `Ok` carries the
/// exit code of a call that was made (0 or 2); `Err` means no call was made (exit 1).
pub async fn run(
    args: &ProbeArgs,
    env: &dyn Fn(&str) -> Option<String>,
    sink: &mut dyn EventSink,
) -> Result<u8, ProbeError> {
    let config = config::single_agent(
        &args.model,
        args.backend.as_deref(),
        args.base_url.as_deref(),
        env,
    )?;
    let Some(agent) = config.agents.first() else {
        // single_agent always makes exactly one agent; refuse rather than panic if not.
        return Err(ProbeError::Backend(ProviderError::Config(
            "the command line resolved to no agent".to_owned(),
        )));
    };
    let mut spec = agent.backend.clone();
    if let Some(var) = &args.api_key_env {
        spec.api_key_env = Some(var.clone());
    }
    let tools = match &args.tools {
        Some(path) => read_tools(path)?,
        None => Vec::new(),
    };
    let connect_timeout = Duration::from_secs(config.timeouts.connect_timeout_seconds.max(1));
    let idle_timeout = Duration::from_secs(config.timeouts.stall_timeout_seconds.max(1));
    let http = http_client(connect_timeout).map_err(ProbeError::Backend)?;
    let backend = Backend::new(&spec, http, env).map_err(ProbeError::Backend)?;
    tracing::info!(
        wire = spec.wire.as_str(),
        provider = %spec.provider,
        model = %spec.model,
        endpoint = backend.endpoint(),
        "probing"
    );
    let request = ChatRequest {
        messages: vec![ChatMessage::user(args.prompt.clone())],
        tools,
        tool_choice: ToolChoice::Auto,
    };
    Ok(stream_events(&backend, &request, idle_timeout, sink).await)
}

/// One call, its chunks written as events; returns the exit code.
async fn stream_events(
    backend: &Backend,
    request: &ChatRequest,
    idle_timeout: Duration,
    sink: &mut dyn EventSink,
) -> u8 {
    let stalled = || {
        json!({
            "type": "error",
            "kind": "stalled",
            "message": format!("no data from the provider for {} s", idle_timeout.as_secs()),
        })
    };
    let mut stream = match tokio::time::timeout(idle_timeout, backend.stream(request)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return finish_with(sink, &error_event(&error)),
        Err(_) => return finish_with(sink, &stalled()),
    };
    let mut reported_error = false;
    loop {
        let item = match tokio::time::timeout(idle_timeout, stream.next()).await {
            Ok(item) => item,
            Err(_) => return finish_with(sink, &stalled()),
        };
        let event = match item {
            None => break,
            Some(Ok(chunk)) => {
                reported_error |= matches!(chunk, StreamChunk::Error { .. });
                chunk_event(&chunk)
            }
            // The in-stream error was already printed from its chunk.
            Some(Err(ProviderError::InStream { .. })) if reported_error => return EXIT_EXECUTION,
            Some(Err(error)) => return finish_with(sink, &error_event(&error)),
        };
        if let Some(event) = event
            && sink.event(&event).is_err()
        {
            return EXIT_EXECUTION;
        }
    }
    if reported_error {
        EXIT_EXECUTION
    } else {
        EXIT_OK
    }
}

/// Writes a final error event; the exit code of a failed call.
fn finish_with(sink: &mut dyn EventSink, event: &Value) -> u8 {
    // If stdout is gone too there is nobody left to tell; the exit code still says it.
    let _ = sink.event(event);
    EXIT_EXECUTION
}

/// The event line of a chunk; `None` for tool-call fragments (see the module docs).
pub fn chunk_event(chunk: &StreamChunk) -> Option<Value> {
    Some(match chunk {
        StreamChunk::Content { text } => json!({"type": "content", "text": text}),
        StreamChunk::Reasoning { text } => json!({"type": "reasoning", "text": text}),
        StreamChunk::ReasoningSignature { signature } => {
            json!({"type": "reasoning_signature", "signature": signature})
        }
        StreamChunk::Refusal { text } => json!({"type": "refusal", "text": text}),
        StreamChunk::ToolCallDelta { .. } => return None,
        StreamChunk::ToolCall(call) => {
            let mut event = json!({
                "type": "tool_call",
                "id": call.id,
                "name": call.name,
                "arguments": parsed_or_raw(&call.arguments),
            });
            if let Some(signature) = &call.signature {
                event["signature"] = json!(signature);
            }
            event
        }
        StreamChunk::ToolResult { id, name, content } => {
            json!({"type": "tool_result", "id": id, "name": name, "content": content})
        }
        StreamChunk::Usage(usage) => json!({
            "type": "usage",
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
        }),
        StreamChunk::Finish { reason } => json!({"type": "finish", "reason": reason}),
        StreamChunk::Error {
            kind,
            message,
            code,
        } => {
            let mut event = json!({"type": "error", "kind": kind, "message": message});
            if let Some(code) = code {
                event["code"] = json!(code);
            }
            event
        }
    })
}

/// The event line of a failed call.
pub fn error_event(error: &ProviderError) -> Value {
    let message = error.to_string();
    match error {
        ProviderError::Http { status, .. } => {
            json!({"type": "error", "kind": "http", "status": status, "message": message})
        }
        ProviderError::InStream { kind, code, .. } => {
            let mut event = json!({"type": "error", "kind": kind, "message": message});
            if let Some(code) = code {
                event["code"] = json!(code);
            }
            event
        }
        ProviderError::MissingApiKey { .. } => {
            json!({"type": "error", "kind": "missing_api_key", "message": message})
        }
        ProviderError::Config(_) => json!({"type": "error", "kind": "config", "message": message}),
        ProviderError::Connect(_) => {
            json!({"type": "error", "kind": "connect", "message": message})
        }
        ProviderError::Malformed(_) => {
            json!({"type": "error", "kind": "malformed", "message": message})
        }
        ProviderError::Truncated => {
            json!({"type": "error", "kind": "truncated", "message": message})
        }
    }
}

/// Tool arguments as JSON when they parse (the usual case), else the raw text, so a model
/// that produced broken JSON is visible as such.
fn parsed_or_raw(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// One entry of a `--tools` file.
#[derive(Debug, Deserialize)]
struct ToolEntry {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: Option<Value>,
}

/// Reads a `--tools` file: a JSON array of `{name, description, parameters}` (parameters
/// default to an empty object schema).
fn read_tools(path: &Path) -> Result<Vec<ToolSpec>, ProbeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProbeError::ToolsRead {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |problem: String| ProbeError::ToolsInvalid {
        path: path.to_path_buf(),
        problem,
    };
    let entries: Vec<ToolEntry> =
        serde_json::from_str(&text).map_err(|err| invalid(err.to_string()))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            if entry.name.trim().is_empty() {
                return Err(invalid(format!("tool {index} has an empty name")));
            }
            let parameters = entry
                .parameters
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            if !parameters.is_object() {
                return Err(invalid(format!(
                    "`parameters` of tool `{}` must be a JSON schema object",
                    entry.name
                )));
            }
            Ok(ToolSpec {
                name: entry.name,
                description: entry.description,
                parameters,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_protocol::{ToolCall, Usage};

    #[test]
    fn chunks_become_one_line_each_and_fragments_are_skipped() {
        assert_eq!(
            chunk_event(&StreamChunk::Content { text: "Hi".into() }),
            Some(json!({"type": "content", "text": "Hi"}))
        );
        assert_eq!(
            chunk_event(&StreamChunk::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "{\"a".into()
            }),
            None
        );
        let call = StreamChunk::ToolCall(ToolCall::new("c1", "vote", r#"{"agent_id":"agent1.1"}"#));
        assert_eq!(
            chunk_event(&call),
            Some(json!({"type": "tool_call", "id": "c1", "name": "vote",
                "arguments": {"agent_id": "agent1.1"}}))
        );
        let broken = StreamChunk::ToolCall(ToolCall::new("c2", "vote", "{\"agent_id"));
        assert_eq!(
            chunk_event(&broken).map(|event| event["arguments"].clone()),
            Some(json!("{\"agent_id"))
        );
        assert_eq!(
            chunk_event(&StreamChunk::Usage(Usage {
                input_tokens: 3,
                output_tokens: 4
            })),
            Some(json!({"type": "usage", "input_tokens": 3, "output_tokens": 4}))
        );
    }

    #[test]
    fn lines_start_with_the_type() {
        let event = json!({"type": "usage", "input_tokens": 1, "output_tokens": 2});
        let line = type_first(&event);
        assert!(line.starts_with(r#"{"type":"usage","#), "{line}");
        assert_eq!(serde_json::from_str::<Value>(&line).ok(), Some(event));
    }

    #[test]
    fn errors_name_their_kind() {
        let http = ProviderError::Http {
            provider: "openai".into(),
            status: 429,
            body: "{}".into(),
            retry_after: None,
            should_retry: None,
        };
        let event = error_event(&http);
        assert_eq!(
            (event["kind"].clone(), event["status"].clone()),
            (json!("http"), json!(429))
        );
        assert_eq!(error_event(&ProviderError::Truncated)["kind"], "truncated");
    }

    #[test]
    fn tools_file_is_validated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"[{"name": "vote", "description": "d", "parameters": {"type": "object"}},
                {"name": "new_answer"}]"#,
        )
        .expect("write");
        let tools = read_tools(&good).expect("valid tools");
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[1].parameters["type"], "object");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"name": "vote"}"#).expect("write");
        assert!(matches!(
            read_tools(&bad),
            Err(ProbeError::ToolsInvalid { .. })
        ));
        std::fs::write(&bad, r#"[{"name": "vote", "parameters": [1]}]"#).expect("write");
        assert!(matches!(
            read_tools(&bad),
            Err(ProbeError::ToolsInvalid { .. })
        ));
        assert!(matches!(
            read_tools(&dir.path().join("absent.json")),
            Err(ProbeError::ToolsRead { .. })
        ));
    }
}
