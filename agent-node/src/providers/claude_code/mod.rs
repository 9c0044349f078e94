//! Claude Code: drives the `claude` CLI as a child process in stream-json mode, one process
//! per call:
//!
//! ```text
//! claude -p --output-format stream-json --verbose --include-partial-messages
//!        [--model M] [--system-prompt S] [--max-turns N] [--allowedTools a,b]
//!        [--disallowedTools c] [--permission-mode P]        < prompt on stdin
//! ```
//!
//! Why it is done this way:
//!
//! - **Program.** `spec.base_url` names the program (a path, or a name on `PATH`). When it
//!   names none in particular (empty, an http(s) URL, or the config loader's default
//!   `claude`), `CONCLAVE_CLAUDE_BIN` decides, so a deployment can point every agent at one
//!   install; otherwise `claude` on `PATH`. A program that cannot be found is
//!   [`ProviderError::Config`] with the install command, because no retry can fix it.
//! - **Model.** `--model` is passed unless the model is empty or `default` (what the config
//!   loader gives a `claude_code` backend without a model): then the CLI picks, as in MassGen.
//! - **Secrets.** The API key read on this node ([`Backend::api_key`]) is given to the child
//!   as `ANTHROPIC_API_KEY` in its environment, never on the command line (which other users
//!   of the machine can read). Without a key the CLI uses its own login.
//! - **Prompt.** The CLI takes one prompt, so the conversation is rendered as a transcript
//!   (`<user>`, `<assistant>`, `<tool_call>`, `<tool_result>` sections) and written to stdin,
//!   which has no argument-length limit and stays out of `ps`. System messages go to
//!   `--system-prompt` (replacing Claude Code's coding persona: a conclave agent answers the
//!   task it was given), unless they are too long for one argument, in which case they head
//!   the prompt instead.
//! - **Tools.** The CLI cannot be handed our function tools (`new_answer`, `vote`, ...). They
//!   are described at the end of the prompt with their JSON schemas, and the model is asked
//!   to end its reply with a fenced `json` block holding `{"tool": NAME, "arguments": {...}}`.
//!   The final text (the `result` message) is searched for such blocks; each one naming an
//!   offered tool becomes a [`StreamChunk::ToolCall`] with id `call_{n}`. Blocks naming
//!   anything else are left as text, so an answer that merely contains JSON is not mistaken
//!   for a call. The workflow's own check (exactly one valid call, else a corrective
//!   message) does the rest; the CLI's own tools (Read, Bash, ...) keep working, under the
//!   CLI's permission rules.
//! - **Streaming.** `--include-partial-messages` makes the CLI forward the API's deltas
//!   (`stream_event` lines), so text and thinking are shown as they are written and the
//!   turn's stall watchdog sees progress. The complete `assistant` message that follows
//!   repeats the text; it is used only for messages that were not streamed (older CLIs).
//!   The CLI's own tool uses and their results are shown ([`StreamChunk::ToolCallDelta`],
//!   [`StreamChunk::ToolResult`]) but never returned as [`StreamChunk::ToolCall`]s: the CLI
//!   has already run them. Output of sub-agents (`parent_tool_use_id`) is not ours and is
//!   skipped.
//! - **End.** The `result` line gives the usage (input counts cache reads and writes, as
//!   OpenAI's and Gemini's prompt counts do), the finish reason (`stop_reason`, else the last
//!   message's, else the result subtype) and `is_error`. An error result becomes
//!   [`StreamChunk::Error`] and [`ProviderError::InStream`]. A process that exits non-zero,
//!   or without a result, ends the stream with an in-stream error carrying the exit status
//!   and the end of its stderr.
//! - **Cancellation.** The child is spawned with `kill_on_drop`: dropping the stream (a
//!   cancelled turn) kills the CLI. A CLI that lingers after its result is killed after a
//!   short grace period.
//!
//! Settings the CLI does not take (temperature, top_p, max_tokens, reasoning effort) are
//! ignored with a debug log; `thinking_budget` becomes `MAX_THINKING_TOKENS`. CLI settings
//! live in `extra_body`, as a JSON object with the keys `cwd`, `allowed_tools`,
//! `disallowed_tools`, `permission_mode`, `max_turns` and `system_prompt` (MassGen's
//! `claude_code` backend names, which the config loader moves there from `backend:`); an
//! unknown key is a configuration error. `cwd` is the directory the CLI works in (created when
//! missing, as MassGen creates the agent's workspace); `system_prompt` heads the CLI's
//! `--system-prompt`, before the agent's system message and conclave's instructions.
//!
//! Files: `mod.rs` builds the command line and the prompt and finds calls in the reply,
//! `run.rs` drives the child process, `parse.rs` is the parser state machine over its
//! stream-json lines ([`ClaudeCodeParser`]).

mod parse;
mod run;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use conclave_protocol::config::BackendSpec;
use serde::Deserialize;
use serde_json::Value;

pub use parse::ClaudeCodeParser;

use super::client::Target;
use super::error::ProviderError;
use super::stream::ChunkStream;
use crate::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};

/// The environment variable that names the CLI when the config does not.
pub const PROGRAM_ENV: &str = "CONCLAVE_CLAUDE_BIN";

/// The CLI's name on `PATH`.
const DEFAULT_PROGRAM: &str = "claude";

/// The model name that lets the CLI choose (`--model` is then left out).
const CLI_DEFAULT_MODEL: &str = "default";

/// How to get the CLI, for the error when it is missing.
pub const INSTALL_HINT: &str = "install Claude Code with `npm install -g @anthropic-ai/claude-code`, \
     or give the program's path as the backend's `base_url` or in CONCLAVE_CLAUDE_BIN";

/// A system prompt longer than this goes into the prompt instead of `--system-prompt`
/// (Linux limits one argument to 128 KiB).
const MAX_SYSTEM_ARG_BYTES: usize = 64 * 1024;

/// The program calls run: see the module docs for the order of precedence. The options in
/// `extra_body` are checked here too, so a typo fails when the backend is built.
pub(crate) fn endpoint(spec: &BackendSpec) -> Result<String, ProviderError> {
    CliOptions::from_spec(spec)?;
    Ok(program(&spec.base_url, std::env::var(PROGRAM_ENV).ok()))
}

fn program(base_url: &str, from_env: Option<String>) -> String {
    let configured = base_url.trim();
    let is_url = configured.starts_with("http://") || configured.starts_with("https://");
    if !configured.is_empty() && !is_url && configured != DEFAULT_PROGRAM {
        return configured.to_owned();
    }
    from_env
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PROGRAM.to_owned())
}

/// Claude Code settings from `extra_body` (MassGen's `claude_code` backend keys).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliOptions {
    /// The directory the CLI works in (its tools read and write there).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// `--allowedTools`: CLI tools allowed without asking.
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    /// `--disallowedTools`.
    #[serde(default)]
    pub disallowed_tools: Vec<String>,
    /// `--permission-mode` (`default`, `acceptEdits`, `bypassPermissions`, `plan`).
    #[serde(default)]
    pub permission_mode: Option<String>,
    /// `--max-turns`: agentic turns the CLI may take within one call.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// MassGen's backend `system_prompt`: the base of the CLI's `--system-prompt`, ahead of
    /// the conversation's system messages (the agent's `system_message` and conclave's
    /// coordination instructions), as MassGen puts its workflow prompt after the base one.
    #[serde(default)]
    pub system_prompt: Option<String>,
}

/// The CLI's system prompt: the configured base ([`CliOptions::system_prompt`]) and then the
/// conversation's system text, blank-line separated; `None` when both are empty.
pub fn system_prompt(options: &CliOptions, from_messages: Option<String>) -> Option<String> {
    let base = options
        .system_prompt
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    match (base, from_messages) {
        (Some(base), Some(rest)) => Some(format!("{base}\n\n{rest}")),
        (Some(base), None) => Some(base.to_owned()),
        (None, rest) => rest,
    }
}

impl CliOptions {
    /// Reads the options; a key that is not one of them is a configuration error.
    pub fn from_spec(spec: &BackendSpec) -> Result<Self, ProviderError> {
        let Some(text) = spec.extra_body.as_deref().filter(|t| !t.trim().is_empty()) else {
            return Ok(Self::default());
        };
        serde_json::from_str(text).map_err(|e| {
            ProviderError::Config(format!(
                "extra_body of Claude Code backend `{}` is not valid: {e}; it takes a JSON object \
                 with cwd, allowed_tools, disallowed_tools, permission_mode, max_turns and \
                 system_prompt",
                spec.provider
            ))
        })
    }
}

/// The command-line arguments (never the key). Public so tests can show what is run.
pub fn arguments(spec: &BackendSpec, options: &CliOptions, system: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let model = spec.model.trim();
    if !model.is_empty() && model != CLI_DEFAULT_MODEL {
        args.push("--model".into());
        args.push(model.to_owned());
    }
    if let Some(system) = system {
        args.push("--system-prompt".into());
        args.push(system.to_owned());
    }
    if let Some(turns) = options.max_turns {
        args.push("--max-turns".into());
        args.push(turns.to_string());
    }
    if !options.allowed_tools.is_empty() {
        args.push("--allowedTools".into());
        args.push(options.allowed_tools.join(","));
    }
    if !options.disallowed_tools.is_empty() {
        args.push("--disallowedTools".into());
        args.push(options.disallowed_tools.join(","));
    }
    if let Some(mode) = &options.permission_mode {
        args.push("--permission-mode".into());
        args.push(mode.clone());
    }
    args
}

/// The system prompt (if it fits in an argument) and the prompt written to stdin.
pub fn prompt(request: &ChatRequest) -> (Option<String>, String) {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::System { content } if !content.trim().is_empty() => Some(content.as_str()),
            _ => None,
        })
        .collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let (system, mut prompt) = match system {
        Some(system) if system.len() > MAX_SYSTEM_ARG_BYTES => (
            None,
            format!("<instructions>\n{system}\n</instructions>\n\n"),
        ),
        other => (other, String::new()),
    };
    render_conversation(&request.messages, &mut prompt);
    if !request.tools.is_empty() && request.tool_choice != ToolChoice::None {
        prompt.push_str("\n\n");
        render_tools(&request.tools, request.tool_choice, &mut prompt);
    }
    (system, prompt)
}

/// A lone user message is the prompt as it is; anything longer becomes a transcript.
fn render_conversation(messages: &[ChatMessage], out: &mut String) {
    let turns: Vec<&ChatMessage> = messages
        .iter()
        .filter(|m| !matches!(m, ChatMessage::System { .. }))
        .collect();
    if let [ChatMessage::User { content }] = turns.as_slice() {
        out.push_str(content);
        return;
    }
    out.push_str(
        "The conversation so far is below, oldest first. Continue it as the assistant: \
         reply to the last message.\n\n",
    );
    let mut names: HashMap<&str, &str> = HashMap::new();
    for message in turns {
        match message {
            ChatMessage::System { .. } => {}
            ChatMessage::User { content } => {
                out.push_str("<user>\n");
                out.push_str(content);
                out.push_str("\n</user>\n");
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
                ..
            } => {
                out.push_str("<assistant>\n");
                if let Some(text) = content.as_deref().filter(|t| !t.is_empty()) {
                    out.push_str(text);
                    out.push('\n');
                }
                for call in tool_calls {
                    names.insert(&call.id, &call.name);
                    out.push_str(&format!(
                        "<tool_call id=\"{}\" name=\"{}\">{}</tool_call>\n",
                        call.id, call.name, call.arguments
                    ));
                }
                out.push_str("</assistant>\n");
            }
            ChatMessage::Tool {
                call_id, content, ..
            } => {
                let name = names.get(call_id.as_str()).copied().unwrap_or("unknown");
                out.push_str(&format!(
                    "<tool_result id=\"{call_id}\" name=\"{name}\">\n{content}\n</tool_result>\n"
                ));
            }
        }
    }
}

fn render_tools(tools: &[ToolSpec], choice: ToolChoice, out: &mut String) {
    out.push_str(
        "# Tools\n\nYou can call the tools below. They are not among your built-in tools: \
         to call one, end your reply with a fenced code block tagged json that holds one \
         object of the form {\"tool\": \"<tool name>\", \"arguments\": {<the arguments>}}, \
         and write nothing after it. The call is carried out after your reply.\n",
    );
    if choice == ToolChoice::Required {
        out.push_str("Your reply must end with exactly one such tool call.\n");
    } else {
        out.push_str("Call a tool only when you need one.\n");
    }
    for tool in tools {
        out.push_str(&format!(
            "\n## {}\n{}\nArguments (JSON schema): {}\n",
            tool.name, tool.description, tool.parameters
        ));
    }
    if let Some(first) = tools.first() {
        out.push_str(&format!(
            "\nExample of the required ending:\n```json\n{{\"tool\": \"{}\", \"arguments\": {{...}}}}\n```\n",
            first.name
        ));
    }
}

/// The contents of every fenced code block in `text`, in order. A fence is a line that starts
/// (after indentation) with three backticks; the block ends at the next such line.
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let is_fence = line.trim_start().starts_with("```");
        match (&mut current, is_fence) {
            (None, true) => current = Some(String::new()),
            (Some(_), true) => {
                if let Some(block) = current.take() {
                    blocks.push(block);
                }
            }
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, false) => {}
        }
    }
    blocks
}

/// The calls of offered tools written in `text` as fenced JSON blocks (or as the whole text),
/// each as (name, arguments object).
pub fn parse_tool_calls(text: &str, tools: &[ToolSpec]) -> Vec<(String, Value)> {
    let offered: HashSet<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    let mut calls = Vec::new();
    for block in fenced_blocks(text) {
        calls.extend(calls_in(&block, &offered));
    }
    if calls.is_empty() {
        calls.extend(calls_in(text, &offered));
    }
    calls
}

/// The calls in one JSON text: an object, or an array of objects.
fn calls_in(text: &str, offered: &HashSet<&str>) -> Vec<(String, Value)> {
    let Ok(value) = serde_json::from_str::<Value>(text.trim()) else {
        return Vec::new();
    };
    let objects = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Vec::new(),
    };
    objects
        .iter()
        .filter_map(|object| {
            let name = object
                .get("tool")
                .or_else(|| object.get("name"))
                .and_then(Value::as_str)?;
            if !offered.contains(name) {
                return None;
            }
            let arguments = match object.get("arguments").or_else(|| object.get("args")) {
                None | Some(Value::Null) => Value::Object(Default::default()),
                // Arguments written as a JSON string: unwrap them if they are JSON.
                Some(Value::String(text)) => {
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
                }
                Some(other) => other.clone(),
            };
            Some((name.to_owned(), arguments))
        })
        .collect()
}

/// Starts the CLI and returns its parsed output (see the module docs).
pub(crate) async fn stream(
    target: &Target,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let spec = &target.spec;
    let options = CliOptions::from_spec(spec)?;
    if spec.temperature.is_some()
        || spec.top_p.is_some()
        || spec.max_tokens.is_some()
        || spec.options.reasoning_effort.is_some()
    {
        tracing::debug!(
            provider = %spec.provider,
            "the Claude Code CLI takes no temperature, top_p, max_tokens or reasoning effort; ignored"
        );
    }
    let (system, mut prompt) = prompt(request);
    let system = match system_prompt(&options, system) {
        // Too long for one argument: it heads the prompt instead (see `prompt`).
        Some(text) if text.len() > MAX_SYSTEM_ARG_BYTES => {
            prompt = format!("<instructions>\n{text}\n</instructions>\n\n{prompt}");
            None
        }
        other => other,
    };
    let args = arguments(spec, &options, system.as_deref());
    run::start(
        target,
        &options,
        &args,
        prompt,
        ClaudeCodeParser::new(request),
    )
}
