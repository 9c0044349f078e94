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
