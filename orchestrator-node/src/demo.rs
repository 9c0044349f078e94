//! `conclave demo`: the whole system with no API keys. It starts the simulated
//! OpenAI-compatible provider on a loopback port and runs three agents against it over real
//! HTTP and SSE, exactly as they would talk to a hosted provider.

use conclave_protocol::config::{
    AgentSpec, BackendSpec, DisplayKind, OrchestratorSettings, SessionConfig, TimeoutSettings,
    WireFormat,
};

/// The default question of the demo.
pub const DEFAULT_QUESTION: &str = "What is the most useful habit for writing reliable software?";

/// A session config of `agents` simulated agents talking to the provider at `base_url`.
pub fn demo_config(base_url: &str, agents: u32, display: DisplayKind) -> SessionConfig {
    const NAMES: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let agents = (0..agents)
        .map(|i| {
            let name = NAMES
                .get(i as usize)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("agent{}", i + 1));
            AgentSpec {
                id: name.clone(),
                backend: BackendSpec {
                    wire: WireFormat::OpenAiChat,
                    provider: "sim".into(),
                    model: format!("sim-{name}"),
                    base_url: base_url.to_owned(),
                    api_key_env: None,
                    temperature: None,
                    top_p: None,
                    max_tokens: None,
                    extra_body: None,
                    max_retries: 2,
                    options: Default::default(),
                },
                system_message: None,
                node: None,
                workflow: Default::default(),
                tools: Default::default(),
            }
        })
        .collect();
    SessionConfig {
        agents,
        orchestrator: OrchestratorSettings::default(),
        timeouts: TimeoutSettings {
            orchestrator_timeout_seconds: 300,
            ..TimeoutSettings::default()
        },
        display,
    }
}

/// The name of the demo MCP server binary (crate `conclave-mcp-demo`), looked up next to the
/// running `conclave` binary by [`demo_mcp_server`].
pub const DEMO_MCP_BIN: &str = "conclave-mcp-demo";

/// The demo MCP server next to the running executable (`target/<profile>/` or the install
/// directory), if it is there.
pub fn demo_mcp_server() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let path = dir.join(format!("{DEMO_MCP_BIN}{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

/// `conclave demo --tools`: every agent gets the demo MCP server (`command`, over stdio) as
/// server `demo`, and its simulated model uses the `tools` policy, so each turn first calls
/// `mcp__demo__lookup` with the question and then answers quoting the fact it got back.
pub fn with_demo_tools(mut config: SessionConfig, command: &std::path::Path) -> SessionConfig {
    use conclave_protocol::tools::{AgentTools, McpServerSpec, McpTransport};
    for agent in &mut config.agents {
        agent.backend.model = format!("{}:policy=tools,tool=lookup", agent.backend.model);
        agent.tools = AgentTools {
            mcp_servers: vec![McpServerSpec {
                name: "demo".into(),
                transport: McpTransport::Stdio {
                    command: command.display().to_string(),
                    args: Vec::new(),
                    env: Vec::new(),
                    cwd: None,
                },
                allowed_tools: Some(vec!["lookup".into(), "add".into()]),
                exclude_tools: Vec::new(),
                optional: false,
            }],
            ..AgentTools::default()
        };
    }
    config
}
