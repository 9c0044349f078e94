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
//! `disallowed_tools`, `permission_mode` and `max_turns` (MassGen's `claude_code` backend
//! names); an unknown key is a configuration error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use conclave_protocol::config::BackendSpec;
use conclave_protocol::{StreamChunk, ToolCall, Usage};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::{Backend, ChunkStream, ProviderError};
use crate::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use crate::sse::snippet;

/// The environment variable that names the CLI when the config does not.
pub const PROGRAM_ENV: &str = "CONCLAVE_CLAUDE_BIN";

/// The CLI's name on `PATH`.
const DEFAULT_PROGRAM: &str = "claude";

/// The model name that lets the CLI choose (`--model` is then left out).
const CLI_DEFAULT_MODEL: &str = "default";

/// How to get the CLI, for the error when it is missing.
pub const INSTALL_HINT: &str = "install Claude Code with `npm install -g @anthropic-ai/claude-code`, \
     or give the program's path as the backend's `base_url` or in CONCLAVE_CLAUDE_BIN";

/// How long a CLI may take to exit after its result (or after closing stdout) before it is
/// killed. Claude Code sometimes waits for MCP servers to shut down.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How much of the CLI's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 2048;

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
                 with cwd, allowed_tools, disallowed_tools, permission_mode and max_turns",
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
            ChatMessage::Tool { call_id, content } => {
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

/// Kills a helper task when the stream that owns it is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the CLI and returns its parsed output (see the module docs).
pub(crate) async fn stream(
    backend: &Backend,
    request: &ChatRequest,
) -> Result<ChunkStream, ProviderError> {
    let spec = &backend.spec;
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
    let (system, prompt) = prompt(request);
    let args = arguments(spec, &options, system.as_deref());
    let program = &backend.endpoint;

    let mut command = Command::new(program);
    command
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(key) = backend.api_key() {
        command.env("ANTHROPIC_API_KEY", key.expose());
    }
    if let Some(budget) = spec.options.thinking_budget {
        command.env("MAX_THINKING_TOKENS", budget.to_string());
    }
    if let Some(cwd) = &options.cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .spawn()
        .map_err(|e| spawn_error(program, &options, e))?;
    tracing::debug!(
        provider = %spec.provider,
        model = %spec.model,
        program = %program,
        pid = child.id(),
        prompt_bytes = prompt.len(),
        tools = request.tools.len(),
        "started the Claude Code CLI"
    );

    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ProviderError::Config(
            "could not open the Claude Code CLI's stdin/stdout/stderr".to_owned(),
        ));
    };
    // Written from a task: a large prompt must not block reading the CLI's output.
    let writer = tokio::spawn(async move {
        if let Err(e) = stdin.write_all(prompt.as_bytes()).await {
            tracing::debug!(error = %e, "could not write the prompt to the Claude Code CLI");
        }
        // Dropping stdin closes it: the CLI reads the prompt to end of input.
        drop(stdin);
    });
    let stderr = tokio::spawn(read_tail(stderr));

    let parser = ClaudeCodeParser::new(request);
    let run = CliRun {
        child,
        lines: BufReader::new(stdout).lines(),
        parser,
        pending: VecDeque::new(),
        reading: true,
        done: false,
        stderr: Some(AbortOnDrop(stderr)),
        _writer: AbortOnDrop(writer),
    };
    let stream = futures::stream::unfold(run, |mut run| async move {
        let item = run.next_item().await?;
        Some((item, run))
    });
    Ok(Box::pin(stream))
}

fn spawn_error(program: &str, options: &CliOptions, error: std::io::Error) -> ProviderError {
    match error.kind() {
        std::io::ErrorKind::NotFound => match &options.cwd {
            Some(cwd) if !cwd.is_dir() => ProviderError::Config(format!(
                "the Claude Code working directory `{}` does not exist",
                cwd.display()
            )),
            _ => ProviderError::Config(format!(
                "the Claude Code CLI `{program}` was not found; {INSTALL_HINT}"
            )),
        },
        std::io::ErrorKind::PermissionDenied => ProviderError::Config(format!(
            "the Claude Code CLI `{program}` cannot be executed (permission denied); {INSTALL_HINT}"
        )),
        _ => ProviderError::Config(format!(
            "could not start the Claude Code CLI `{program}`: {error}"
        )),
    }
}

/// Reads a pipe to its end, keeping the last [`STDERR_TAIL_BYTES`].
async fn read_tail(mut pipe: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buffer[..n]);
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).trim().to_owned()
}

/// One running CLI call: the child, its output lines and the parser. Dropping it kills the
/// child (`kill_on_drop`) and aborts the helper tasks.
struct CliRun {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    parser: ClaudeCodeParser,
    pending: VecDeque<Result<StreamChunk, ProviderError>>,
    /// Still reading stdout.
    reading: bool,
    /// Everything, including the exit status, has been handled.
    done: bool,
    stderr: Option<AbortOnDrop<String>>,
    _writer: AbortOnDrop<()>,
}

impl CliRun {
    async fn next_item(&mut self) -> Option<Result<StreamChunk, ProviderError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if !self.reading {
                self.finish().await;
                continue;
            }
            match self.lines.next_line().await {
                Ok(Some(line)) => {
                    if self.parser.on_line(&line, &mut self.pending) == Flow::Done {
                        self.reading = false;
                    }
                }
                Ok(None) => self.reading = false,
                Err(e) => {
                    self.pending.push_back(Err(ProviderError::Malformed(format!(
                        "could not read the Claude Code CLI's output: {e}"
                    ))));
                    self.reading = false;
                }
            }
        }
    }

    /// Waits (briefly) for the exit status and lets the parser judge it.
    async fn finish(&mut self) {
        self.done = true;
        let code = match tokio::time::timeout(EXIT_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not wait for the Claude Code CLI");
                None
            }
            Err(_) => {
                tracing::debug!("the Claude Code CLI did not exit in time; killing it");
                if let Err(e) = self.child.start_kill() {
                    tracing::debug!(error = %e, "could not kill the Claude Code CLI");
                }
                None
            }
        };
        let stderr = match self.stderr.take() {
            Some(mut task) => match tokio::time::timeout(Duration::from_secs(1), &mut task.0).await
            {
                Ok(Ok(tail)) => tail,
                _ => String::new(),
            },
            None => String::new(),
        };
        self.parser.on_exit(code, &stderr, &mut self.pending);
    }
}

/// Whether to keep reading after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next line.
    Continue,
    /// The result (or a fatal problem) has been seen; only the exit status is left.
    Done,
}

type Out = VecDeque<Result<StreamChunk, ProviderError>>;

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
    /// The CLI's own tool uses: id → name, and the display index of the next one.
    cli_tools: HashMap<String, String>,
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
        push_error("cli_exit".into(), message, code.map(|c| c.to_string()), out);
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
                    // The CLI runs its own tools; shown, never returned as calls.
                    let (id, name) = (field("id").to_owned(), field("name").to_owned());
                    let arguments = block.get("input").map(Value::to_string).unwrap_or_default();
                    let index = self.cli_tool_index;
                    self.cli_tool_index = self.cli_tool_index.saturating_add(1);
                    self.cli_tools.insert(id.clone(), name.clone());
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
            let name = self.cli_tools.get(&id).cloned().unwrap_or_default();
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
            push_error(subtype.to_owned(), message, code, out);
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

/// Emits the error for the accumulator, then ends the stream with it.
fn push_error(kind: String, message: String, code: Option<String>, out: &mut Out) {
    tracing::warn!(%kind, %message, code = code.as_deref(), "Claude Code CLI error");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accumulate::TurnOutput;
    use conclave_protocol::config::WireFormat;
    use serde_json::json;

    fn vote_tool() -> ToolSpec {
        ToolSpec {
            name: "vote".into(),
            description: "Vote for the best existing answer.".into(),
            parameters: json!({"type": "object", "properties": {"agent_id": {"type": "string"}}}),
        }
    }

    fn request(tools: Vec<ToolSpec>) -> ChatRequest {
        ChatRequest {
            messages: vec![
                ChatMessage::system("Be brief."),
                ChatMessage::user("Which?"),
            ],
            tools,
            tool_choice: ToolChoice::Required,
        }
    }

    /// Feeds lines, then the exit status; returns the folded output and the final error.
    fn run(
        request: &ChatRequest,
        lines: &[Value],
        code: Option<i32>,
        stderr: &str,
    ) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
        let mut parser = ClaudeCodeParser::new(request);
        let mut out = VecDeque::new();
        for line in lines {
            if parser.on_line(&line.to_string(), &mut out) == Flow::Done {
                break;
            }
        }
        parser.on_exit(code, stderr, &mut out);
        let mut turn = TurnOutput::default();
        let mut chunks = Vec::new();
        let mut error = None;
        for item in out {
            match item {
                Ok(chunk) => {
                    turn.apply(&chunk);
                    chunks.push(chunk);
                }
                Err(e) => error = Some(e.to_string()),
            }
        }
        (turn, chunks, error)
    }

    #[test]
    fn tool_calls_are_found_in_fenced_json() {
        let tools = vec![vote_tool()];
        let text = "I compared them.\n```python\nprint({\"tool\": \"vote\"})\n```\n\
                    ```json\n{\"tool\": \"vote\", \"arguments\": {\"agent_id\": \"agent1.1\"}}\n```";
        assert_eq!(
            parse_tool_calls(text, &tools),
            vec![("vote".to_owned(), json!({"agent_id": "agent1.1"}))]
        );
        // Unknown tools are text; a bare object and string arguments are accepted.
        assert!(
            parse_tool_calls(
                "```json\n{\"tool\": \"rm\", \"arguments\": {}}\n```",
                &tools
            )
            .is_empty()
        );
        assert_eq!(
            parse_tool_calls(
                r#" {"name": "vote", "arguments": "{\"agent_id\": \"a\"}"} "#,
                &tools
            ),
            vec![("vote".to_owned(), json!({"agent_id": "a"}))]
        );
        assert!(parse_tool_calls("no call here", &tools).is_empty());
    }

    #[test]
    fn prompt_is_a_transcript_with_tools() {
        let mut request = request(vec![vote_tool()]);
        let (system, text) = prompt(&request);
        assert_eq!(system.as_deref(), Some("Be brief."));
        assert!(text.starts_with("Which?\n\n# Tools"), "{text}");
        assert!(text.contains("exactly one such tool call"));
        assert!(text.contains("## vote\nVote for the best existing answer."));

        request.messages.push(ChatMessage::Assistant {
            content: None,
            tool_calls: vec![ToolCall::new("call_0", "vote", r#"{"agent_id":"x"}"#)],
            reasoning: Vec::new(),
        });
        request
            .messages
            .push(ChatMessage::tool("call_0", "unknown label"));
        request.messages.push(ChatMessage::user("Try again."));
        request.tool_choice = ToolChoice::None;
        let (_, text) = prompt(&request);
        assert!(text.contains(
            "<user>\nWhich?\n</user>\n<assistant>\n<tool_call id=\"call_0\" name=\"vote\">{\"agent_id\":\"x\"}</tool_call>\n</assistant>\n<tool_result id=\"call_0\" name=\"vote\">\nunknown label\n</tool_result>\n<user>\nTry again.\n</user>\n"
        ), "{text}");
        assert!(
            !text.contains("# Tools"),
            "tool_choice none offers no tools"
        );
    }

    #[test]
    fn streamed_text_is_not_repeated_and_cli_tools_are_only_shown() {
        let request = request(vec![vote_tool()]);
        let lines = [
            json!({"type":"system","subtype":"init","model":"claude-sonnet-4-5","session_id":"s"}),
            json!({"type":"stream_event","event":{"type":"message_start","message":{"id":"m1"}}}),
            json!({"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}}),
            json!({"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Let me look."}}}),
            json!({"type":"assistant","message":{"id":"m1","content":[{"type":"thinking","thinking":"hm","signature":"x"}]}}),
            json!({"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"t1","name":"Read","input":{"file_path":"a"}}]}}),
            json!({"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"data"}]}]}}),
            json!({"type":"assistant","parent_tool_use_id":"t9","message":{"id":"sub","content":[{"type":"text","text":"sub-agent"}]}}),
            json!({"type":"assistant","message":{"id":"m2","stop_reason":"end_turn","content":[{"type":"text","text":"```json\n{\"tool\":\"vote\",\"arguments\":{\"agent_id\":\"agent1.1\"}}\n```"}]}}),
            json!({"type":"result","subtype":"success","is_error":false,"usage":{"input_tokens":3,"cache_creation_input_tokens":10,"cache_read_input_tokens":100,"output_tokens":7}}),
        ];
        let (turn, chunks, error) = run(&request, &lines, Some(0), "");
        assert_eq!(error, None);
        assert_eq!(turn.reasoning.as_deref(), Some("hm"));
        assert!(
            turn.text.starts_with("Let me look.```json"),
            "{}",
            turn.text
        );
        assert!(!turn.text.contains("sub-agent"));
        assert_eq!(
            turn.tool_calls,
            vec![ToolCall::new(
                "call_0",
                "vote",
                r#"{"agent_id":"agent1.1"}"#
            )]
        );
        assert_eq!(turn.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            turn.usage,
            Some(Usage {
                input_tokens: 113,
                output_tokens: 7
            })
        );
        assert!(chunks.iter().any(|c| matches!(c, StreamChunk::ToolResult { name, content, .. } if name == "Read" && content == "data")));
    }

    #[test]
    fn errors_exit_statuses_and_garbage() {
        let request = request(Vec::new());
        let error_result = json!({"type":"result","subtype":"error_max_turns","is_error":true,"errors":["too many turns"]});
        let (turn, _, error) = run(&request, &[error_result], Some(1), "");
        assert_eq!(turn.error.map(|e| e.0), Some("error_max_turns".into()));
        assert!(error.is_some_and(|e| e.contains("too many turns")));

        let (turn, _, error) = run(
            &request,
            &[json!({"type":"system","subtype":"init"})],
            Some(1),
            "Invalid API key",
        );
        assert_eq!(turn.error.map(|e| e.2), Some(Some("1".into())));
        assert!(error.is_some_and(|e| e.contains("status 1 without a result: Invalid API key")));

        let ok = json!({"type":"result","subtype":"success","is_error":false,"result":"hi"});
        let (_, _, error) = run(&request, std::slice::from_ref(&ok), Some(2), "");
        assert!(error.is_some_and(|e| e.contains("after its result")));
        let (turn, _, error) = run(&request, &[ok], Some(0), "");
        assert_eq!(error, None);
        assert_eq!(turn.finish_reason.as_deref(), Some("success"));

        let mut parser = ClaudeCodeParser::new(&request);
        let mut out = VecDeque::new();
        assert_eq!(parser.on_line("[debug] starting", &mut out), Flow::Continue);
        assert_eq!(parser.on_line("{broken", &mut out), Flow::Done);
        parser.on_exit(Some(0), "", &mut out);
        assert_eq!(out.len(), 1, "one error, not two");
        assert!(matches!(
            out.front(),
            Some(Err(ProviderError::Malformed(_)))
        ));
    }

    fn spec(extra_body: Option<&str>, base_url: &str) -> BackendSpec {
        BackendSpec {
            wire: WireFormat::ClaudeCode,
            provider: "claude_code".into(),
            model: "sonnet".into(),
            base_url: base_url.into(),
            api_key_env: Some("ANTHROPIC_API_KEY".into()),
            temperature: None,
            top_p: None,
            max_tokens: None,
            extra_body: extra_body.map(str::to_owned),
            max_retries: 2,
            options: Default::default(),
        }
    }

    #[test]
    fn program_and_options() {
        assert_eq!(
            program("/opt/claude", Some("/env/claude".into())),
            "/opt/claude"
        );
        assert_eq!(program("", Some("/env/claude".into())), "/env/claude");
        assert_eq!(program("https://api.anthropic.com", None), "claude");
        assert_eq!(program("claude", Some("/env/claude".into())), "/env/claude");
        let mut default_model = spec(None, "");
        default_model.model = "default".into();
        let args = arguments(&default_model, &CliOptions::default(), None);
        assert!(!args.contains(&"--model".to_owned()), "{args:?}");
        let options = CliOptions::from_spec(&spec(
            Some(
                r#"{"allowed_tools": ["Read", "Grep"], "max_turns": 3, "permission_mode": "plan"}"#,
            ),
            "",
        ))
        .expect("options");
        let args = arguments(&spec(None, ""), &options, Some("sys"));
        assert_eq!(
            args.join(" "),
            "-p --output-format stream-json --verbose --include-partial-messages --model sonnet \
             --system-prompt sys --max-turns 3 --allowedTools Read,Grep --permission-mode plan"
        );
        assert!(matches!(
            CliOptions::from_spec(&spec(Some(r#"{"allowed_tool": []}"#), "")),
            Err(ProviderError::Config(m)) if m.contains("allowed_tool")
        ));
    }
}
