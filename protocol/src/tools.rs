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
}

impl AgentTools {
    /// Whether the agent has any tool beyond the workflow ones.
    pub fn is_empty(&self) -> bool {
        self.mcp_servers.is_empty()
    }
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
