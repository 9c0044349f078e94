//! The child process of one Claude Code call: spawned with the prompt on stdin, its stdout
//! lines fed to the [`ClaudeCodeParser`], its exit status judged at the end. Dropping the
//! stream kills the child.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use conclave_protocol::StreamChunk;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::{ClaudeCodeParser, CliOptions, INSTALL_HINT};
use crate::providers::client::Target;
use crate::providers::error::ProviderError;
use crate::providers::stream::{ChunkStream, Flow, Out};

/// How long a CLI may take to exit after its result (or after closing stdout) before it is
/// killed. Claude Code sometimes waits for MCP servers to shut down.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How much of the CLI's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 2048;

/// Kills a helper task when the stream that owns it is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spawns the CLI with `args`, writes `prompt` to its stdin and returns its chunks as
/// `parser` reads them.
pub(super) fn start(
    target: &Target,
    options: &CliOptions,
    args: &[String],
    prompt: String,
    parser: ClaudeCodeParser,
) -> Result<ChunkStream, ProviderError> {
    let spec = &target.spec;
    let program = &target.endpoint;

    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(key) = target.api_key.as_ref() {
        command.env("ANTHROPIC_API_KEY", key.expose());
    }
    if let Some(budget) = spec.options.thinking_budget {
        command.env("MAX_THINKING_TOKENS", budget.to_string());
    }
    if let Some(cwd) = &options.cwd {
        // The agent's workspace: created when missing (MassGen does the same).
        std::fs::create_dir_all(cwd).map_err(|error| {
            ProviderError::Config(format!(
                "cannot create the Claude Code working directory {} (`cwd`): {error}",
                cwd.display()
            ))
        })?;
        command.current_dir(cwd);
    }
    let mut child = command
        .spawn()
        .map_err(|e| spawn_error(program, options, e))?;
    tracing::debug!(
        provider = %spec.provider,
        model = %spec.model,
        program = %program,
        pid = child.id(),
        prompt_bytes = prompt.len(),
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
    pending: Out,
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
