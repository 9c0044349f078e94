//! MCP servers as a [`ToolKind`], with rmcp (the official Rust SDK) as the client.
//!
//! Lifecycle, and why:
//! - **Start**: every server of an agent starts concurrently when the agent starts
//!   ([`start_all`]), each under the start timeout (`mcp_start_timeout_seconds`); the start-up
//!   time is measured and returned ([`ServerStart`]) for the journal. A required server that
//!   cannot start fails the agent's start with an error naming the agent, the server and the
//!   tail of its stderr ([`ToolStartError`]); an `optional` one is left out.
//! - **`${VAR}`** in the command, args, env values, cwd, url and header values is expanded here,
//!   on the node that runs the agent, from that node's environment (the [`EnvFn`] passed in):
//!   the orchestrator never sees the secrets, and a variable that is not set is an error naming
//!   it (never a value).
//! - **Reuse and restart**: one connection serves all the agent's turns. A call that finds the
//!   connection dead (the child exited, the HTTP session broke) gets an error result; the next
//!   call restarts the server, after a backoff that doubles per consecutive failure (0.5 s up
//!   to 30 s) and resets after a call that worked.
//! - **No orphans**: a stdio server runs in its own process group; dropping the connection
//!   kills the whole group with SIGKILL at once (so `npx`'s grandchildren die too), tokio's
//!   `kill_on_drop` is set as a second line, and on Linux the child asks the kernel for SIGKILL
//!   when the agent process dies (`PR_SET_PDEATHSIG`), which covers a crash or `kill -9` of the
//!   agent, where no destructor runs.
//! - **stderr** of a stdio server is captured (the last [`STDERR_TAIL_BYTES`]) for the start
//!   error, and logged at debug level.
//! - MassGen's legacy `sse` transport is not offered: rmcp dropped its SSE client, and the
//!   config loader refuses `type: sse` with a message saying to use `streamable-http`.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conclave_protocol::tools::{McpServerSpec, McpTransport};
use futures::future::BoxFuture;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ContentBlock};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Map as JsonMap, Value as Json};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use super::{ToolDef, ToolError, ToolFilter, ToolKind, ToolOutput};

/// Looks a variable up in the environment of the node that runs the agent.
pub type EnvFn<'a> = dyn Fn(&str) -> Option<String> + Send + Sync + 'a;

/// How much of a stdio server's stderr is kept for error messages.
pub const STDERR_TAIL_BYTES: usize = 2048;
/// How long a server may take to start (spawn, MCP initialize, tools/list).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How one server's start went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStart {
    pub server: String,
    /// `stdio` or `streamable-http`.
    pub transport: &'static str,
    pub duration: Duration,
    /// Tools offered after filtering (0 when it did not start).
    pub tools: usize,
    /// The server is marked `optional: true`.
    pub optional: bool,
    /// Why an optional server was left out.
    pub error: Option<String>,
}

impl ServerStart {
    /// The journal's view of the start.
    pub fn report(&self) -> conclave_protocol::tools::ServerStartReport {
        conclave_protocol::tools::ServerStartReport {
            server: self.server.clone(),
            transport: self.transport.to_owned(),
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            tools: u32::try_from(self.tools).unwrap_or(u32::MAX),
            optional: self.optional,
            error: self.error.clone(),
        }
    }
}

/// A required MCP server that could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent `{agent}`: MCP server `{server}` could not start: {problem}{}", stderr_note(.stderr_tail))]
pub struct ToolStartError {
    pub agent: String,
    pub server: String,
    pub problem: String,
    /// The last lines the server wrote to stderr (stdio servers), if any.
    pub stderr_tail: String,
}

fn stderr_note(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{}", tail.trim_end())
    }
}

/// Starts every server concurrently. Returns, in spec order, each server (or `None` for an
/// optional one that failed) with its start record.
pub(crate) async fn start_all(
    agent: &str,
    specs: &[McpServerSpec],
    env: &EnvFn<'_>,
) -> Result<Vec<(Option<Arc<McpServer>>, ServerStart)>, ToolStartError> {
    let starts = specs.iter().map(|spec| async move {
        let started = Instant::now();
        let server = Arc::new(McpServer::new(spec.clone(), env));
        let outcome = server.connect(DEFAULT_START_TIMEOUT).await;
        (server, outcome, started.elapsed())
    });
    let mut out = Vec::new();
    for (server, outcome, duration) in futures::future::join_all(starts).await {
        let spec = &server.spec;
        match outcome {
            Ok(()) => {
                let filter = server.filter();
                let tools = server
                    .list()
                    .iter()
                    .filter(|t| filter.admits(&spec.name, &t.name))
                    .count();
                info!(agent, server = %spec.name, tools, ms = duration.as_millis() as u64, "MCP server started");
                out.push((
                    Some(server.clone()),
                    ServerStart {
                        server: spec.name.clone(),
                        transport: spec.transport.kind(),
                        duration,
                        tools,
                        optional: spec.optional,
                        error: None,
                    },
                ));
            }
            Err(problem) if spec.optional => {
                warn!(agent, server = %spec.name, %problem, "optional MCP server could not start; left out");
                out.push((
                    None,
                    ServerStart {
                        server: spec.name.clone(),
                        transport: spec.transport.kind(),
                        duration,
                        tools: 0,
                        optional: true,
                        error: Some(problem),
                    },
                ));
            }
            Err(problem) => {
                let stderr_tail = server.stderr_tail();
                // Stop the servers that did start.
                for (started, _) in &out {
                    if let Some(started) = started {
                        started.stop();
                    }
                }
                return Err(ToolStartError {
                    agent: agent.to_owned(),
                    server: spec.name.clone(),
                    problem,
                    stderr_tail,
                });
            }
        }
    }
    Ok(out)
}

/// A live connection to a server.
struct Connection {
    client: RunningService<RoleClient, ()>,
    /// The process group of a stdio server (its pid), killed on drop.
    process_group: Option<i32>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(group) = self.process_group.take() {
            kill_group(group);
        }
    }
}

/// Kills process group `group` with SIGKILL (a no-op for `group <= 0`).
#[cfg(unix)]
pub(crate) fn kill_group(group: i32) {
    if group > 0 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        let _ = unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

#[cfg(not(unix))]
pub(crate) fn kill_group(_group: i32) {}

/// Restart bookkeeping.
#[derive(Default)]
struct Restarts {
    /// Consecutive failures (connection lost or restart failed).
    failures: u32,
}

/// One MCP server of an agent.
pub struct McpServer {
    spec: McpServerSpec,
    /// `${VAR}`-expanded transport, or why it could not be expanded.
    resolved: Result<McpTransport, String>,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    tools: Mutex<Vec<ToolDef>>,
    restarts: Mutex<Restarts>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
}

impl McpServer {
    fn new(spec: McpServerSpec, env: &EnvFn<'_>) -> Self {
        let resolved = expand_transport(&spec.transport, env);
        McpServer {
            spec,
            resolved,
            connection: tokio::sync::Mutex::new(None),
            tools: Mutex::new(Vec::new()),
            restarts: Mutex::new(Restarts::default()),
            stderr: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    /// The filter from the spec's `allowed_tools` / `exclude_tools`.
    pub(crate) fn filter(&self) -> ToolFilter {
        ToolFilter {
            allowed: self.spec.allowed_tools.clone(),
            exclude: self.spec.exclude_tools.clone(),
        }
    }

    /// The pid of a running stdio server (tests check for orphans with it).
    pub async fn pid(&self) -> Option<u32> {
        let guard = self.connection.lock().await;
        guard
            .as_ref()
            .and_then(|c| c.process_group)
            .and_then(|p| u32::try_from(p).ok())
    }

    /// The last bytes the server wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let buffer = self
            .stderr
            .lock()
            .map(|b| b.iter().copied().collect::<Vec<u8>>());
        String::from_utf8_lossy(&buffer.unwrap_or_default()).into_owned()
    }

    /// Connects (spawning a stdio server) and lists its tools, under `timeout`.
    async fn connect(&self, timeout: Duration) -> Result<(), String> {
        let mut guard = self.connection.lock().await;
        if guard.is_some() {
            return Ok(());
        }
        let transport = self.resolved.clone()?;
        let connection = tokio::time::timeout(timeout, self.open(&transport))
            .await
            .map_err(|_| {
                format!(
                    "no answer to MCP initialize and tools/list within {} s",
                    timeout.as_secs()
                )
            })??;
        let tools = connection
            .client
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"));
        let tools = match tools {
            Ok(tools) => tools,
            Err(problem) => return Err(problem),
        };
        let defs = tools
            .into_iter()
            .map(|tool| ToolDef {
                name: tool.name.to_string(),
                description: tool.description.map(|d| d.to_string()).unwrap_or_default(),
                schema: Json::Object((*tool.input_schema).clone()),
            })
            .collect();
        if let Ok(mut list) = self.tools.lock() {
            // The first list is the one offered; a restarted server keeps the offer.
            if list.is_empty() {
                *list = defs;
            }
        }
        *guard = Some(Arc::new(connection));
        Ok(())
    }

    async fn open(&self, transport: &McpTransport) -> Result<Connection, String> {
        match transport {
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .kill_on_drop(true);
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                super::own_group_dying_with_us(&mut cmd);
                let (child, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(Stdio::piped())
                    .spawn()
                    // Named as configured: an expanded `${VAR}` is not shown.
                    .map_err(|e| format!("cannot run `{}`: {e}", self.spec_url()))?;
                let process_group = child.id().and_then(|p| i32::try_from(p).ok());
                if let Some(stderr) = stderr {
                    tokio::spawn(keep_tail(
                        stderr,
                        self.stderr.clone(),
                        self.spec.name.clone(),
                    ));
                }
                match ().serve(child).await {
                    Ok(client) => Ok(Connection {
                        client,
                        process_group,
                    }),
                    Err(e) => {
                        if let Some(group) = process_group {
                            kill_group(group);
                        }
                        // Give the stderr reader a moment to collect the last words.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(format!("MCP initialize failed: {e}"))
                    }
                }
            }
            McpTransport::StreamableHttp { url, headers } => {
                let mut map = HashMap::new();
                for (name, value) in headers {
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("header name `{name}` is not a valid HTTP header"))?;
                    let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                        format!("the value of header `{name}` is not a valid HTTP header value")
                    })?;
                    map.insert(name, value);
                }
                let config =
                    StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(map);
                let transport = StreamableHttpClientTransport::from_config(config);
                let client = ()
                    .serve(transport)
                    .await
                    .map_err(|e| format!("MCP initialize at `{}` failed: {e}", self.spec_url()))?;
                Ok(Connection {
                    client,
                    process_group: None,
                })
            }
        }
    }

    /// The URL as configured (unexpanded, so no secret is shown).
    fn spec_url(&self) -> &str {
        match &self.spec.transport {
            McpTransport::StreamableHttp { url, .. } => url,
            McpTransport::Stdio { command, .. } => command,
        }
    }

    /// The live connection, restarting the server (after the backoff) when it is gone.
    async fn live(&self) -> Result<Arc<Connection>, ToolError> {
        let dead = {
            let guard = self.connection.lock().await;
            match guard.as_ref() {
                Some(connection) if !connection.client.is_closed() => {
                    return Ok(connection.clone());
                }
                other => other.cloned(),
            }
        };
        // Only the connection found dead is dropped: a concurrent call may already have
        // restarted the server.
        if let Some(dead) = &dead {
            self.drop_connection(dead).await;
        }
        let failures = self.restarts.lock().map(|r| r.failures).unwrap_or(0);
        if failures > 0 {
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << failures.min(7).saturating_sub(1))
                .min(MAX_BACKOFF);
            debug!(server = %self.spec.name, ms = backoff.as_millis() as u64, "restarting MCP server after backoff");
            tokio::time::sleep(backoff).await;
        }
        info!(server = %self.spec.name, "restarting MCP server");
        if let Err(problem) = self.connect(DEFAULT_START_TIMEOUT).await {
            self.note_failure();
            let tail = self.stderr_tail();
            return Err(ToolError::Failed(format!(
                "MCP server `{}` is down and could not be restarted: {problem}{}",
                self.spec.name,
                stderr_note(&tail)
            )));
        }
        let guard = self.connection.lock().await;
        guard.clone().ok_or_else(|| {
            ToolError::Failed(format!("MCP server `{}` is not connected", self.spec.name))
        })
    }

    fn note_failure(&self) {
        if let Ok(mut r) = self.restarts.lock() {
            r.failures = r.failures.saturating_add(1);
        }
    }

    /// Drops the connection (killing a stdio server) if it is still `which`.
    async fn drop_connection(&self, which: &Arc<Connection>) {
        let mut guard = self.connection.lock().await;
        if guard
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, which))
        {
            *guard = None;
        }
    }

    /// Stops the server now (synchronously kills a stdio server's group).
    pub(crate) fn stop(&self) {
        if let Ok(mut guard) = self.connection.try_lock()
            && let Some(connection) = guard.take()
        {
            if let Some(group) = connection.process_group {
                kill_group(group);
            }
            connection.client.cancellation_token().cancel();
        }
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.get_mut().take()
            && let Some(group) = connection.process_group
        {
            kill_group(group);
        }
    }
}

impl ToolKind for McpServer {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn list(&self) -> Vec<ToolDef> {
        self.tools.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn call(
        &self,
        tool: &str,
        arguments: JsonMap<String, Json>,
    ) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        let tool = tool.to_owned();
        Box::pin(async move {
            let connection = self.live().await?;
            let params = CallToolRequestParams::new(tool).with_arguments(arguments);
            match connection.client.call_tool(params).await {
                Ok(result) => {
                    if let Ok(mut r) = self.restarts.lock() {
                        r.failures = 0;
                    }
                    let text = content_text(&result.content, result.structured_content.as_ref());
                    Ok(ToolOutput {
                        text,
                        is_error: result.is_error == Some(true),
                    })
                }
                Err(ServiceError::McpError(error)) => Err(ToolError::Failed(format!(
                    "MCP server `{}` refused the call: {}",
                    self.spec.name, error.message
                ))),
                Err(error) => {
                    // The connection is broken (the child died, the session is gone): drop
                    // it so the next call restarts the server.
                    self.note_failure();
                    self.drop_connection(&connection).await;
                    Err(ToolError::Failed(format!(
                        "MCP server `{}` stopped answering ({error}); it will be restarted on \
                         the next call",
                        self.spec.name
                    )))
                }
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let connection = self.connection.lock().await.take();
            if let Some(connection) = connection {
                connection.client.cancellation_token().cancel();
                if let Some(group) = connection.process_group {
                    kill_group(group);
                }
            }
        })
    }
}

/// The text of a tool result: text blocks joined by newlines, other blocks as short notes;
/// structured content when there is no text.
fn content_text(content: &[ContentBlock], structured: Option<&Json>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for block in content {
        match block {
            ContentBlock::Text(text) => parts.push(text.text.clone()),
            ContentBlock::Image(image) => parts.push(format!("[image: {}]", image.mime_type)),
            ContentBlock::Audio(audio) => parts.push(format!("[audio: {}]", audio.mime_type)),
            ContentBlock::Resource(resource) => parts.push(
                serde_json::to_string(&resource.resource).unwrap_or_else(|_| "[resource]".into()),
            ),
            ContentBlock::ResourceLink(link) => parts.push(format!("[resource: {}]", link.uri)),
            _ => parts.push("[content of a kind conclave does not show]".to_owned()),
        }
    }
    if parts.is_empty()
        && let Some(structured) = structured
    {
        return structured.to_string();
    }
    parts.join("\n")
}

/// Reads a child's stderr into the tail buffer until it closes.
async fn keep_tail(
    mut stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<u8>>>,
    server: String,
) {
    let mut chunk = [0u8; 1024];
    loop {
        match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                debug!(server = %server, stderr = %String::from_utf8_lossy(&chunk[..n]).trim_end(), "MCP server stderr");
                if let Ok(mut buffer) = tail.lock() {
                    buffer.extend(&chunk[..n]);
                    while buffer.len() > STDERR_TAIL_BYTES {
                        buffer.pop_front();
                    }
                }
            }
        }
    }
}

/// Expands `${VAR}` / `${VAR:-default}` in every field of a transport.
fn expand_transport(transport: &McpTransport, env: &EnvFn<'_>) -> Result<McpTransport, String> {
    let x = |what: &str, text: &str| {
        expand(text, env)
            .map_err(|var| format!("{what} uses `${{{var}}}`, which is not set on this node"))
    };
    Ok(match transport {
        McpTransport::Stdio {
            command,
            args,
            env: vars,
            cwd,
        } => McpTransport::Stdio {
            command: x("`command`", command)?,
            args: args
                .iter()
                .map(|a| x("`args`", a))
                .collect::<Result<_, _>>()?,
            env: vars
                .iter()
                .map(|(k, v)| Ok((k.clone(), x(&format!("`env.{k}`"), v)?)))
                .collect::<Result<_, String>>()?,
            cwd: cwd.as_deref().map(|c| x("`cwd`", c)).transpose()?,
        },
        McpTransport::StreamableHttp { url, headers } => McpTransport::StreamableHttp {
            url: x("`url`", url)?,
            headers: headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), x(&format!("`headers.{k}`"), v)?)))
                .collect::<Result<_, String>>()?,
        },
    })
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`. `Err` names the first
/// variable that is not set (and has no default).
pub fn expand(text: &str, env: &EnvFn<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        if let Some(body) = after.strip_prefix("${")
            && let Some(end) = body.find('}')
        {
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            match env(name).or_else(|| default.map(str::to_owned)) {
                Some(value) => out.push_str(&value),
                None => return Err(name.to_owned()),
            }
            rest = &body[end + 1..];
            continue;
        }
        out.push('$');
        rest = &after[1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_reads_the_node_environment() {
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(expand("Bearer ${TOKEN}", &env).unwrap(), "Bearer s3cret");
        assert_eq!(expand("${MISSING:-x}/$${KEEP}", &env).unwrap(), "x/${KEEP}");
        assert_eq!(expand("${MISSING}", &env).unwrap_err(), "MISSING");
        assert_eq!(expand("cost $5", &env).unwrap(), "cost $5");
    }

    #[test]
    fn an_unset_variable_is_named_not_shown() {
        let env = |_: &str| None;
        let spec = McpTransport::StreamableHttp {
            url: "http://127.0.0.1/mcp".into(),
            headers: vec![("Authorization".into(), "Bearer ${API_TOKEN}".into())],
        };
        let problem = expand_transport(&spec, &env).unwrap_err();
        assert!(problem.contains("headers.Authorization"), "{problem}");
        assert!(problem.contains("API_TOKEN"), "{problem}");
    }
}
