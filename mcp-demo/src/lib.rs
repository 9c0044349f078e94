//! A tiny, deterministic MCP server for conclave's tool demo, tests and bench.
//!
//! It lives in its own crate (not in `conclave-sim`) so the MCP *server* side of rmcp (axum
//! service, macros, schema derivation) stays out of the simulated provider and out of the
//! agent node, which only needs the client side. The binary `conclave-mcp-demo` serves it over
//! stdio (the default) or Streamable HTTP (`--http ADDR`, path `/mcp`); tests and the bench can
//! also run the HTTP server in-process with [`serve_http`].
//!
//! Every tool answers the same way for the same arguments, so a test or a demo transcript can
//! assert on the text:
//! - `lookup(key)`: a fixed fact for a few keys, a fixed "no fact" text otherwise;
//! - `add(a, b)`: the sum;
//! - `slow(ms)`: sleeps, then says so (timeouts);
//! - `fail(message?)`: a tool error result (`isError: true`);
//! - `big(bytes)`: that many `x` characters (truncation);
//! - `pid()`: the server's process id (orphan checks);
//! - `crash()`: exits the process at once, without answering (restart after a crash).

use std::time::Duration;

use rmcp::{
    ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig},
    schemars, tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use tokio_util::sync::CancellationToken;

/// The most `big` will produce (a guard, not a feature).
pub const MAX_BIG_BYTES: u64 = 16 * 1024 * 1024;
/// The longest `slow` will sleep.
pub const MAX_SLOW_MS: u64 = 600_000;

/// The facts `lookup` knows.
pub const FACTS: &[(&str, &str)] = &[
    ("capital of france", "The capital of France is Paris."),
    (
        "boiling point",
        "Water boils at 100 degrees Celsius at sea level.",
    ),
    ("answer", "The answer is 42."),
    (
        "conclave",
        "conclave runs several LLM agents that answer, vote and agree.",
    ),
];

/// What `lookup` returns for `key`.
pub fn fact(key: &str) -> String {
    let wanted = key.trim().to_lowercase();
    FACTS
        .iter()
        .find(|(k, _)| wanted.contains(k))
        .map(|(_, fact)| (*fact).to_owned())
        .unwrap_or_else(|| format!("No fact is stored for \"{}\".", key.trim()))
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct LookupArgs {
    /// What to look up, e.g. "capital of france".
    pub key: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct AddArgs {
    pub a: f64,
    pub b: f64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SlowArgs {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct FailArgs {
    /// The error text to return.
    pub message: Option<String>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct BigArgs {
    /// How many bytes of text to return.
    pub bytes: u64,
}

/// The demo server.
#[derive(Debug, Clone)]
pub struct DemoServer {
    tool_router: ToolRouter<Self>,
}

impl Default for DemoServer {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoServer {
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl DemoServer {
    #[tool(description = "Look up a stored fact by key, e.g. \"capital of france\".")]
    fn lookup(&self, Parameters(LookupArgs { key }): Parameters<LookupArgs>) -> String {
        fact(&key)
    }

    #[tool(description = "Add two numbers.")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Sleep for `ms` milliseconds, then answer.")]
    async fn slow(&self, Parameters(SlowArgs { ms }): Parameters<SlowArgs>) -> String {
        let ms = ms.min(MAX_SLOW_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms} ms")
    }

    #[tool(description = "Always fails with a tool error.")]
    fn fail(&self, Parameters(FailArgs { message }): Parameters<FailArgs>) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(
            message.unwrap_or_else(|| "the demo tool failed as asked".to_owned()),
        )])
    }

    #[tool(description = "Return `bytes` bytes of text.")]
    fn big(&self, Parameters(BigArgs { bytes }): Parameters<BigArgs>) -> String {
        "x".repeat(usize::try_from(bytes.min(MAX_BIG_BYTES)).unwrap_or(0))
    }

    #[tool(description = "The server's process id.")]
    fn pid(&self) -> String {
        std::process::id().to_string()
    }

    #[tool(description = "Exit the server process at once, without answering.")]
    fn crash(&self) -> String {
        std::process::exit(3)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("conclave's deterministic demo tools")
    }
}

/// Serves the demo over MCP Streamable HTTP at `/mcp` on `listener` until `stop` is
/// cancelled.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let service: StreamableHttpService<DemoServer, LocalSessionManager> =
        StreamableHttpService::new(
            || Ok(DemoServer::new()),
            Default::default(),
            StreamableHttpServerConfig::default()
                .with_sse_keep_alive(None)
                .with_cancellation_token(stop.child_token()),
        );
    let router = axum::Router::new().nest_service("/mcp", service);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled_owned().await })
        .await
}
