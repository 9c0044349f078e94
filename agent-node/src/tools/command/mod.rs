//! The command tool (MassGen's `enable_mcp_command_line`): one tool,
//! `mcp__command_line__execute_command`, that runs a shell command in the agent's workspace,
//! on this node ([`local`]) or in the agent's own container ([`docker`]).
//!
//! What a call does, following MassGen's `execute_command`:
//! - Arguments: `command` (required; run by `/bin/sh -c`, so pipes and redirections work),
//!   `timeout` (seconds, optional; at most the configured `command_line_timeout_seconds`,
//!   which is also the default) and `work_dir` (optional; a directory of the workspace,
//!   relative to it or absolute inside it).
//! - Before it runs, the command is checked, in MassGen's order: MassGen's built-in patterns
//!   of dangerous commands (`rm -rf /`, `dd`, `sudo`, `su`, `chmod`, `chown`, fork bombs, ...),
//!   then `command_line_allowed_commands` (when non-empty the command must match one) and
//!   `command_line_blocked_commands` (it must match none). Patterns are regular expressions
//!   matched at the start of the command (Python's `re.match`, as MassGen does). A refusal is
//!   an error result that names the rule, so the model can choose another command.
//! - The result is MassGen's JSON object: `success` (exit code 0), `exit_code`, `stdout`,
//!   `stderr`, `execution_time` (seconds), `command`, `work_dir`. A command that fails (a
//!   non-zero exit) is a normal result the model reads; a command that hits its deadline is
//!   killed with everything it started and comes back as an error result with what it wrote
//!   until then.
//! - Output is capped: stdout and stderr together keep at most
//!   `command_line_max_output_bytes`; the rest is read and counted but dropped, and a note at
//!   the end of the cut stream says how much was written and names the key.
//! - The environment holds none of the node's secrets (see [`local`] and [`docker`]).
//!
//! The tool loop's own per-call bound (`tool_timeout_seconds`) does not apply: this kind keeps
//! its own deadline ([`ToolKind::timeout`]) and kills the command itself, so a long build can
//! be allowed more than a quick MCP lookup.

mod docker;
mod local;
mod output;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conclave_protocol::tools::{AgentTools, CommandLineSpec, CommandMode};
use futures::future::BoxFuture;
use regex::Regex;
use serde_json::{Map as JsonMap, Value as Json, json};

pub use docker::{
    AGENT_LABEL, BUILD_HINT, Container, DOCKER_BIN_ENV, DockerSettings, OWNER_LABEL, RUNNER_LABEL,
    SESSION_LABEL, sweep_orphans,
};

use super::{ServerStart, ToolDef, ToolError, ToolKind, ToolOutput, ToolStartError};
use output::{Captured, Outcome};

/// The kind's name: tools are offered as `mcp__command_line__{tool}`, as in MassGen.
pub const SERVER: &str = "command_line";
/// The one tool.
pub const TOOL: &str = "execute_command";
/// How long past its own deadline a call may take (killing and draining) before the tool
/// loop gives up on it.
const KILL_GRACE: Duration = Duration::from_secs(15);

/// MassGen's built-in refusals (its `_sanitize_command`), checked with `search` semantics
/// anywhere in the command; conclave has no `command_line_docker_enable_sudo`, so the sudo
/// patterns always apply.
const DANGEROUS: &[(&str, &str)] = &[
    (r"\brm\s+-rf\s+/", "use of `rm -rf /` is not allowed"),
    (
        r"\bmv\b.*?\s+/dev/null",
        "moving files to /dev/null is not allowed",
    ),
    (r"\bdd\b", "use of `dd` is not allowed"),
    (
        r">\s*/dev/sd[a-z][1-9]?",
        "overwriting disk blocks directly is not allowed",
    ),
    (r":\(\)\{\s*:\|:&\s*\};:", "fork bombs are not allowed"),
    (r"\bsudo\b", "use of `sudo` is not allowed"),
    (r"\bsu\b", "use of `su` is not allowed"),
    (r"\bchown\b", "use of `chown` is not allowed"),
    (r"\bchmod\b", "use of `chmod` is not allowed"),
];

/// Compiles one allow or block pattern the way MassGen applies it (`re.match`: anchored at
/// the start of the command, not at its end). `Err` explains what is wrong with it.
pub fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})")).map_err(|error| {
        let detail = error.to_string();
        let last = detail.lines().last().unwrap_or_default().trim().to_owned();
        format!("`{pattern}` is not a regular expression conclave can use ({last})")
    })
}

/// The compiled checks of one agent's commands.
#[derive(Debug, Clone)]
pub struct CommandFilters {
    dangerous: Vec<(Regex, &'static str)>,
    allowed: Vec<(String, Regex)>,
    blocked: Vec<(String, Regex)>,
}

impl CommandFilters {
    /// Compiles the allow and block lists; `Err` names the first bad pattern.
    pub fn new(allowed: &[String], blocked: &[String]) -> Result<Self, String> {
        let compile = |list: &[String]| -> Result<Vec<(String, Regex)>, String> {
            list.iter()
                .map(|p| compile_pattern(p).map(|r| (p.clone(), r)))
                .collect()
        };
        let dangerous = DANGEROUS
            .iter()
            .filter_map(|(p, why)| Regex::new(p).ok().map(|r| (r, *why)))
            .collect();
        Ok(CommandFilters {
            dangerous,
            allowed: compile(allowed)?,
            blocked: compile(blocked)?,
        })
    }

    /// `Err` is the refusal the model reads.
    pub fn check(&self, command: &str) -> Result<(), String> {
        if let Some((_, why)) = self.dangerous.iter().find(|(r, _)| r.is_match(command)) {
            return Err(format!(
                "the command was refused as potentially dangerous: {why}"
            ));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|(_, r)| r.is_match(command)) {
            let list: Vec<&str> = self.allowed.iter().map(|(p, _)| p.as_str()).collect();
            return Err(format!(
                "the command is not in the allowed list (command_line_allowed_commands); a \
                 command must start with a match of one of: {}",
                list.join(", ")
            ));
        }
        if let Some((pattern, _)) = self.blocked.iter().find(|(_, r)| r.is_match(command)) {
            return Err(format!(
                "the command matches the blocked pattern `{pattern}` \
                 (command_line_blocked_commands)"
            ));
        }
        Ok(())
    }
}

/// Where commands run.
#[derive(Debug)]
enum Runner {
    Local,
    Docker(Container),
}

/// The command tool of one agent.
#[derive(Debug)]
pub struct CommandTool {
    spec: CommandLineSpec,
    workspace: PathBuf,
    filters: CommandFilters,
    runner: Runner,
}

impl CommandTool {
    /// Prepares the tool for agent `agent` of session `session`: creates the workspace if it
    /// is missing and, in docker mode, starts the agent's container (which fails when the
    /// image is missing, saying how to build one). `peers` is the directory of peers'
    /// snapshots, mounted read-only in the container when given; so is each of `context`
    /// (the agent's context paths, which must exist).
    pub async fn start(
        session: &str,
        agent: &str,
        spec: &CommandLineSpec,
        workspace: &Path,
        peers: Option<&Path>,
        context: &[&Path],
    ) -> Result<CommandTool, String> {
        let filters = CommandFilters::new(&spec.allowed_commands, &spec.blocked_commands)?;
        std::fs::create_dir_all(workspace).map_err(|error| {
            format!(
                "cannot create the agent's workspace {}: {error}",
                workspace.display()
            )
        })?;
        let workspace = workspace.canonicalize().map_err(|error| {
            format!(
                "cannot resolve the agent's workspace {}: {error}",
                workspace.display()
            )
        })?;
        let runner = match &spec.mode {
            CommandMode::Local => Runner::Local,
            CommandMode::Docker {
                image,
                network_mode,
                memory_limit,
                cpu_limit,
            } => {
                let settings = DockerSettings {
                    image: image.clone(),
                    network_mode: network_mode.clone(),
                    memory_limit: memory_limit.clone(),
                    cpu_limit: cpu_limit.clone(),
                };
                let peers = match peers {
                    Some(dir) => Some(
                        std::fs::create_dir_all(dir)
                            .and_then(|()| dir.canonicalize())
                            .map_err(|error| {
                                format!(
                                    "cannot prepare the peers' directory {}: {error}",
                                    dir.display()
                                )
                            })?,
                    ),
                    None => None,
                };
                let mut read_only: Vec<std::path::PathBuf> = peers.into_iter().collect();
                for path in context {
                    read_only.push(path.canonicalize().map_err(|error| {
                        format!("cannot use the context path {}: {error}", path.display())
                    })?);
                }
                Runner::Docker(
                    Container::start(session, agent, &settings, &workspace, &read_only).await?,
                )
            }
        };
        Ok(CommandTool {
            spec: spec.clone(),
            workspace,
            filters,
            runner,
        })
    }

    /// The agent's workspace (absolute).
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The container of a docker-mode tool.
    pub fn container(&self) -> Option<&Container> {
        match &self.runner {
            Runner::Docker(container) => Some(container),
            Runner::Local => None,
        }
    }

    /// The directory a call runs in: the workspace, or `work_dir` inside it.
    fn work_dir(&self, requested: Option<&str>) -> Result<PathBuf, String> {
        let Some(requested) = requested.map(str::trim).filter(|d| !d.is_empty()) else {
            return Ok(self.workspace.clone());
        };
        let path = Path::new(requested);
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.workspace.join(path)
        };
        let outside = || {
            format!(
                "work_dir `{requested}` is outside the workspace ({}); give a directory inside it",
                self.workspace.display()
            )
        };
        let resolved = joined.canonicalize().map_err(|_| {
            format!("work_dir `{requested}` does not exist; create it first or leave work_dir out")
        })?;
        if !resolved.starts_with(&self.workspace) {
            return Err(outside());
        }
        if !resolved.is_dir() {
            return Err(format!("work_dir `{requested}` is not a directory"));
        }
        Ok(resolved)
    }

    /// The deadline of a call: the model's `timeout`, at most the configured one.
    fn deadline(&self, requested: Option<u64>) -> Duration {
        let configured = self.spec.timeout_seconds.max(1);
        Duration::from_secs(requested.map_or(configured, |t| t.clamp(1, configured)))
    }

    /// Runs one call (arguments already checked against the schema).
    pub async fn execute(&self, arguments: &JsonMap<String, Json>) -> ToolOutput {
        let command = arguments
            .get("command")
            .and_then(Json::as_str)
            .unwrap_or_default();
        if command.trim().is_empty() {
            return refusal("`command` is empty; give the command line to run");
        }
        if let Err(why) = self.filters.check(command) {
            return refusal(&why);
        }
        let dir = match self.work_dir(arguments.get("work_dir").and_then(Json::as_str)) {
            Ok(dir) => dir,
            Err(why) => return refusal(&why),
        };
        let requested = arguments.get("timeout").and_then(Json::as_u64);
        let timeout = self.deadline(requested);
        let max_output = self.spec.max_output_bytes;
        let outcome = match &self.runner {
            Runner::Local => local::run(command, &self.workspace, &dir, timeout, max_output).await,
            Runner::Docker(container) => container.run(command, &dir, timeout, max_output).await,
        };
        match outcome {
            Ok(outcome) => render(command, &dir, timeout, &outcome),
            Err(problem) => refusal(&format!("the command could not be started: {problem}")),
        }
    }
}

/// Starts the command tool of agent `agent` from its resolved tools (the toolbox's part, see
/// [`super::ToolBox::start`]): the workspace is `tools.workspace.cwd`, a relative one taken
/// against this process's working directory (an agent node's; the orchestrator resolves its
/// own agents' against the session directory first). Returns the start record for the
/// journal (transport `local` or `docker`).
pub(crate) async fn start_for_agent(
    session: &str,
    agent: &str,
    tools: &AgentTools,
    spec: &CommandLineSpec,
) -> Result<(CommandTool, ServerStart), ToolStartError> {
    let started = Instant::now();
    let failed = |problem: String| ToolStartError {
        agent: agent.to_owned(),
        server: SERVER.to_owned(),
        problem,
        stderr_tail: String::new(),
    };
    let workspace = tools.workspace.as_ref().ok_or_else(|| {
        failed(
            "the command tool runs commands in the agent's workspace, and this agent has none \
                (give the backend a `cwd`)"
                .to_owned(),
        )
    })?;
    let peers = Path::new(&workspace.peers_dir);
    let context: Vec<&Path> = workspace
        .context_paths
        .iter()
        .map(|context| Path::new(&context.path))
        .collect();
    let tool = CommandTool::start(
        session,
        agent,
        spec,
        Path::new(&workspace.cwd),
        (!workspace.peers_dir.trim().is_empty()).then_some(peers),
        &context,
    )
    .await
    .map_err(failed)?;
    let start = ServerStart {
        server: SERVER.to_owned(),
        transport: match spec.mode {
            CommandMode::Local => "local",
            CommandMode::Docker { .. } => "docker",
        },
        duration: started.elapsed(),
        tools: 1,
        optional: false,
        error: None,
    };
    Ok((tool, start))
}

/// An error result that says why nothing ran.
fn refusal(why: &str) -> ToolOutput {
    ToolOutput {
        text: why.to_owned(),
        is_error: true,
    }
}

/// A stream's text, with a note when it was cut.
fn stream_text(captured: &Captured) -> String {
    let mut text = captured.text();
    if captured.truncated() {
        text.push_str(&format!(
            "\n[conclave: output truncated: this stream wrote {} bytes, the first {} are shown \
             (stdout and stderr share command_line_max_output_bytes)]",
            captured.total,
            captured.kept.len()
        ));
    }
    text
}

/// MassGen's result object (see the module docs).
fn render(command: &str, dir: &Path, timeout: Duration, outcome: &Outcome) -> ToolOutput {
    let mut stderr = stream_text(&outcome.stderr);
    if outcome.timed_out {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str(&format!(
            "Command timed out after {} seconds and was killed with everything it started \
             (command_line_timeout_seconds caps the timeout argument)",
            timeout.as_secs()
        ));
    } else if let (None, Some(signal)) = (outcome.exit_code, outcome.signal) {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str(&format!(
            "[conclave: the command was killed by signal {signal}]"
        ));
    }
    let exit_code = outcome.exit_code.map_or(Json::Null, Json::from);
    let body = json!({
        "success": outcome.exit_code == Some(0),
        "exit_code": exit_code,
        "stdout": stream_text(&outcome.stdout),
        "stderr": stderr,
        "execution_time": (outcome.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "command": command,
        "work_dir": dir.display().to_string(),
    });
    ToolOutput {
        text: serde_json::to_string_pretty(&body).unwrap_or_else(|_| body.to_string()),
        is_error: outcome.timed_out,
    }
}

impl ToolKind for CommandTool {
    fn name(&self) -> &str {
        SERVER
    }

    fn list(&self) -> Vec<ToolDef> {
        let place = match &self.runner {
            Runner::Local => "on the agent's machine".to_owned(),
            Runner::Docker(_) => "in the agent's own container (the workspace is mounted at \
                                  the same path)"
                .to_owned(),
        };
        vec![ToolDef {
            name: TOOL.to_owned(),
            description: format!(
                "Execute a command line command with /bin/sh -c, {place}, in your workspace \
                 {}. Shell features (pipes, redirection, &&) work. Returns a JSON object with \
                 success, exit_code, stdout, stderr, execution_time, command and work_dir. \
                 Commands are killed after the timeout (at most {} s); output beyond {} bytes \
                 is cut.",
                self.workspace.display(),
                self.spec.timeout_seconds,
                self.spec.max_output_bytes
            ),
            schema: json!({
                "type": "object",
                "properties": {
                    "command": {
                        "type": "string",
                        "description": "The command to execute, e.g. `python test.py` or `ls -la`"
                    },
                    "timeout": {
                        "type": "integer",
                        "description": format!(
                            "Maximum execution time in seconds (default and maximum {})",
                            self.spec.timeout_seconds
                        )
                    },
                    "work_dir": {
                        "type": "string",
                        "description": "Working directory, relative to the workspace (default: the workspace)"
                    }
                },
                "required": ["command"]
            }),
        }]
    }

    fn call(
        &self,
        tool: &str,
        arguments: JsonMap<String, Json>,
    ) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        let unknown = (tool != TOOL).then(|| tool.to_owned());
        Box::pin(async move {
            if let Some(tool) = unknown {
                return Err(ToolError::Failed(format!(
                    "the command tool has no tool named `{tool}`"
                )));
            }
            Ok(self.execute(&arguments).await)
        })
    }

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.spec.timeout_seconds.max(1)) + KILL_GRACE)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Runner::Docker(container) = &self.runner {
                container.remove().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_at_the_start_like_python_re_match() {
        let filters =
            CommandFilters::new(&["python .*".into(), "ls".into()], &["ls -la".into()]).unwrap();
        assert!(filters.check("python x.py").is_ok());
        assert!(
            filters.check("lsblk").is_ok(),
            "re.match is not anchored at the end"
        );
        let refused = filters.check("echo python x").unwrap_err();
        assert!(
            refused.contains("command_line_allowed_commands"),
            "{refused}"
        );
        let blocked = filters.check("ls -la /").unwrap_err();
        assert!(blocked.contains("`ls -la`"), "{blocked}");
        let bad = CommandFilters::new(&["(".into()], &[]).unwrap_err();
        assert!(bad.contains("`(`"), "{bad}");
    }

    #[test]
    fn massgen_dangerous_patterns_are_refused() {
        let filters = CommandFilters::new(&[], &[]).unwrap();
        for command in ["rm -rf /", "sudo ls", "dd if=/dev/zero of=x", "chmod +x a"] {
            assert!(filters.check(command).is_err(), "{command}");
        }
        assert!(filters.check("rm -rf build").is_ok());
        assert!(filters.check("echo sudoku").is_ok());
    }
}
