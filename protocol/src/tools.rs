//! The tools an agent may call besides the workflow tools: its MCP servers and the bounds of
//! its tool loop.
//!
//! These types are the *resolved, secret-free* spec that travels from the orchestrator to the
//! node that runs the agent and into the journal. `${VAR}` references in a server's `env` and
//! `headers` are kept as written: they are expanded on the node that runs the agent, from that
//! node's environment, so secrets never cross the cluster and the orchestrator never needs them.
//!
//! Like every protocol type these are bincode-encoded: plain structs and externally tagged
//! enums only, pairs as `Vec<(String, String)>` (ordered, so a journal diff is stable).

use serde::{Deserialize, Serialize};

/// Default bound on tool rounds (model replies with tool calls) in one turn.
pub const DEFAULT_MAX_TOOL_ROUNDS: u32 = 25;
/// Default bound on one tool call, in seconds.
pub const DEFAULT_TOOL_TIMEOUT_SECONDS: u64 = 60;
/// Default bound on the text of one tool result fed back to the model, in bytes.
pub const DEFAULT_MAX_TOOL_RESULT_BYTES: u64 = 64 * 1024;
/// Default number of tool calls of one reply that run at the same time.
pub const DEFAULT_MAX_CONCURRENT_TOOLS: u32 = 4;

/// Everything an agent can do besides answering and voting.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentTools {
    /// MCP servers, started on the node that runs the agent (`backend.mcp_servers`).
    pub mcp_servers: Vec<McpServerSpec>,
    pub limits: ToolLimits,
    /// The agent's file workspace and file tools (`backend.cwd`, `orchestrator.context_paths`);
    /// `None`: the agent has no files.
    #[serde(default)]
    pub workspace: Option<WorkspaceSpec>,
    /// The command tool (`enable_mcp_command_line`); `None`: the agent cannot run commands.
    #[serde(default)]
    pub command_line: Option<CommandLineSpec>,
}

impl AgentTools {
    /// Whether the agent has any tool beyond the workflow ones.
    pub fn is_empty(&self) -> bool {
        self.mcp_servers.is_empty() && self.workspace.is_none() && self.command_line.is_none()
    }
}

/// Default cap on one answer's workspace snapshot, in bytes (`snapshot_max_bytes`).
pub const DEFAULT_SNAPSHOT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default cap on the number of files in one snapshot (`snapshot_max_files`).
pub const DEFAULT_SNAPSHOT_MAX_FILES: u32 = 2_000;
/// Default cap on the bytes of one file read into a prompt by a file tool
/// (`max_file_read_bytes`).
pub const DEFAULT_MAX_FILE_READ_BYTES: u64 = 256 * 1024;

/// An agent's file workspace (MassGen semantics): the directory the agent works in, the shared
/// project directories it may see, and the bounds on what moves between agents.
///
/// Where the directory is: `cwd` as the orchestrator resolved it. For an agent in the
/// orchestrator process it is absolute (the configured `backend.cwd` resolved against the
/// config's directory, or `<session dir>/workspaces/<agent id>` when none is configured). For an
/// agent on an agent node a relative `cwd` is resolved on that node, against the node's work
/// directory, so the orchestrator never needs the node's file system layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceSpec {
    /// The agent's own working directory (created if missing).
    pub cwd: String,
    /// Whether `cwd` was configured (`backend.cwd`): the winner's final presentation leaves its
    /// files there and `final.md` names it. `false`: conclave chose it under the session dir.
    pub configured: bool,
    /// Where peers' answer snapshots are shown to this agent, read-only and anonymous
    /// (`<peers_dir>/agent1.1/...`): MassGen's temporary workspace
    /// (`orchestrator.agent_temporary_workspace`). Resolved like `cwd`; by default
    /// `<session dir>/peers/<agent id>` (or relative, on an agent node).
    pub peers_dir: String,
    /// Shared project directories or files (`orchestrator.context_paths` and the agent's own
    /// `backend.context_paths`). Resolved like `cwd`; each must exist when the agent starts.
    pub context_paths: Vec<ContextPath>,
    pub limits: WorkspaceLimits,
    /// `Some`: only these file tools are offered (bare names such as `write_file`, or full
    /// `mcp__filesystem__write_file`); from MassGen's backend-level `allowed_tools` when it
    /// names a `mcp__filesystem__` tool. `None` offers all.
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// File tools never offered (same naming; from `exclude_tools` / `disallowed_tools`).
    #[serde(default)]
    pub exclude_tools: Vec<String>,
}

/// The name under which the file tools are offered: `mcp__filesystem__{tool}`, as MassGen's
/// filesystem MCP server names them.
pub const FILESYSTEM_TOOLS: &str = "filesystem";

/// One shared directory or file (`orchestrator.context_paths` entry). A file grants that file
/// only, never its siblings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextPath {
    pub path: String,
    pub permission: ContextPermission,
    /// MassGen's `protected_paths`: files or directories inside a `write` context path that
    /// stay read-only (relative ones are relative to the context path, or to its directory
    /// when the context path is a file).
    #[serde(default)]
    pub protected_paths: Vec<String>,
}

/// What an agent may do in a context path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContextPermission {
    /// Read, always.
    Read,
    /// Read always; write only during the final presentation (as in MassGen).
    Write,
}

/// Bounds on workspaces and snapshots; each is a config key named in the error that hits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceLimits {
    /// One answer's snapshot, all files together (`snapshot_max_bytes`).
    pub snapshot_max_bytes: u64,
    /// Files in one snapshot (`snapshot_max_files`).
    pub snapshot_max_files: u32,
    /// One file read into a prompt by a file tool (`max_file_read_bytes`).
    pub max_file_read_bytes: u64,
}

impl Default for WorkspaceLimits {
    fn default() -> Self {
        Self {
            snapshot_max_bytes: DEFAULT_SNAPSHOT_MAX_BYTES,
            snapshot_max_files: DEFAULT_SNAPSHOT_MAX_FILES,
            max_file_read_bytes: DEFAULT_MAX_FILE_READ_BYTES,
        }
    }
}

/// Default bound on one command, in seconds (`command_line_timeout_seconds`).
pub const DEFAULT_COMMAND_TIMEOUT_SECONDS: u64 = 120;
/// Default cap on a command's captured output (stdout and stderr together), in bytes
/// (`command_line_max_output_bytes`).
pub const DEFAULT_COMMAND_MAX_OUTPUT_BYTES: u64 = 64 * 1024;

/// The command tool of an agent (MassGen's `enable_mcp_command_line` and its
/// `command_line_*` keys). Commands run in the agent's workspace (`WorkspaceSpec::cwd`), with an
/// environment that holds none of the node's API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandLineSpec {
    pub mode: CommandMode,
    /// `command_line_allowed_commands`: when non-empty, a command must match one of these
    /// (MassGen: regular expressions matched against the command line).
    pub allowed_commands: Vec<String>,
    /// `command_line_blocked_commands`: a command matching one of these is refused.
    pub blocked_commands: Vec<String>,
    pub timeout_seconds: u64,
    pub max_output_bytes: u64,
}

/// Where commands run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandMode {
    /// A child process on the node that runs the agent.
    Local,
    /// A container per agent, the workspace mounted.
    Docker {
        /// `command_line_docker_image`.
        image: String,
        /// `command_line_docker_network_mode` (`none` by default).
        network_mode: String,
        /// `command_line_docker_memory_limit`, as docker takes it (`512m`); `None`: no limit.
        memory_limit: Option<String>,
        /// `command_line_docker_cpu_limit` (`1.5`); `None`: no limit.
        cpu_limit: Option<String>,
    },
}

/// One MCP server of an agent (MassGen's `mcp_servers` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServerSpec {
    /// The server's name: tools are offered as `mcp__{name}__{tool}`.
    pub name: String,
    pub transport: McpTransport,
    /// `Some`: only these tools are offered (each entry the server-side name or the full
    /// `mcp__{server}__{tool}` name; an empty list offers none). `None` offers all.
    pub allowed_tools: Option<Vec<String>>,
    /// These tools are never offered (same naming; applied after `allowed_tools`).
    pub exclude_tools: Vec<String>,
    /// A server that cannot start is skipped with a journal line instead of failing the
    /// session.
    pub optional: bool,
}

/// How to reach an MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum McpTransport {
    /// A child process speaking MCP over its stdin/stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        /// Extra environment of the child, values unexpanded (`${VAR}` kept).
        env: Vec<(String, String)>,
        /// Working directory of the child; `None` inherits the agent node's.
        cwd: Option<String>,
    },
    /// MCP Streamable HTTP at `url`.
    StreamableHttp {
        url: String,
        /// Extra request headers, values unexpanded (`${VAR}` kept).
        headers: Vec<(String, String)>,
    },
}

impl McpTransport {
    /// The MassGen `type:` name of this transport.
    pub fn kind(&self) -> &'static str {
        match self {
            McpTransport::Stdio { .. } => "stdio",
            McpTransport::StreamableHttp { .. } => "streamable-http",
        }
    }
}

/// The bounds of an agent's tool loop. Each is a config key (see the orchestrator's config
/// docs) and is named in the error a model or operator sees when it is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolLimits {
    /// Model replies with (non-workflow) tool calls per turn (`max_tool_rounds`).
    pub max_tool_rounds: u32,
    /// One tool call (`tool_timeout_seconds`).
    pub tool_timeout_seconds: u64,
    /// The text of one tool result, longer ones are cut with a note (`max_tool_result_bytes`).
    pub max_tool_result_bytes: u64,
    /// Calls of one reply run at once (`max_concurrent_tools`; 1 when MassGen's
    /// `concurrent_tool_execution: false`).
    pub max_concurrent_tools: u32,
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self {
            max_tool_rounds: DEFAULT_MAX_TOOL_ROUNDS,
            tool_timeout_seconds: DEFAULT_TOOL_TIMEOUT_SECONDS,
            max_tool_result_bytes: DEFAULT_MAX_TOOL_RESULT_BYTES,
            max_concurrent_tools: DEFAULT_MAX_CONCURRENT_TOOLS,
        }
    }
}

/// One tool call as the journal records it (and as an agent node reports it): what was
/// called, how long it took, how big the result was and what went wrong. The result text
/// itself is not included (it can be large; the model's next message shows its effect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallReport {
    pub call_id: String,
    /// The tool as offered (`mcp__{server}__{tool}`).
    pub tool: String,
    /// The arguments as the model sent them (JSON text, possibly invalid).
    pub arguments: String,
    pub duration_ms: u64,
    /// Bytes of the tool's own result before truncation.
    pub result_bytes: u64,
    pub truncated: bool,
    /// The error text the model read, if the call failed.
    pub error: Option<String>,
}

/// How one MCP server of an agent started, for the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStartReport {
    pub server: String,
    /// `stdio` or `streamable-http`.
    pub transport: String,
    pub duration_ms: u64,
    /// Tools offered after filtering (0 when it did not start).
    pub tools: u32,
    /// The server is marked `optional: true` (it may be left out when it cannot start).
    pub optional: bool,
    /// Why an optional server was left out.
    pub error: Option<String>,
}
