//! MassGen's MCP and tool keys through the loader: `mcp_servers` in both of MassGen's forms,
//! `${VAR}` kept for the node that runs the agent, tool filters and limits, and the refusal of
//! tool keys conclave cannot run (never a silent warning).

use conclave::config::{ConfigError, LoadedConfig, load_str, load_str_untrusted};
use conclave_protocol::tools::{AgentTools, McpTransport, ToolLimits};

fn env(name: &str) -> Option<String> {
    (name == "DISCORD_TOKEN").then(|| "secret-from-env".to_owned())
}

fn load(yaml: &str) -> LoadedConfig {
    load_str(yaml, "tools.yaml", &env).unwrap_or_else(|e| panic!("expected a load, got: {e}"))
}

fn load_err(yaml: &str) -> ConfigError {
    match load_str(yaml, "tools.yaml", &env) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn tools_of(backend: &str) -> AgentTools {
    let loaded = load(&format!("agent:\n  backend:\n{}", indent(backend)));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    loaded.config.agents[0].tools.clone()
}

fn backend_err(backend: &str) -> ConfigError {
    load_err(&format!("agent:\n  backend:\n{}", indent(backend)))
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}

#[test]
fn list_form_reads_stdio_servers_and_keeps_env_references_unexpanded() {
    let tools = tools_of(
        "type: openai\nmodel: gpt-4o-mini\nmcp_servers:\n  - name: discord\n    type: stdio\n    \
         command: npx\n    args: [\"-y\", \"mcp-discord\", \"--config\", \"${DISCORD_TOKEN}\"]\n    \
         env:\n      DISCORD_TOKEN: \"${DISCORD_TOKEN}\"\n    cwd: /srv/mcp\n    optional: true\n",
    );
    assert_eq!(tools.limits, ToolLimits::default());
    let server = &tools.mcp_servers[0];
    assert_eq!(server.name, "discord");
    assert!(server.optional);
    assert_eq!(
        server.transport,
        McpTransport::Stdio {
            command: "npx".into(),
            args: vec![
                "-y".into(),
                "mcp-discord".into(),
                "--config".into(),
                "${DISCORD_TOKEN}".into()
            ],
            env: vec![("DISCORD_TOKEN".into(), "${DISCORD_TOKEN}".into())],
            cwd: Some("/srv/mcp".into()),
        }
    );
    let text = format!("{:?}", load("agent:\n  backend:\n    type: openai\n    model: m\n    mcp_servers:\n      - {name: d, type: stdio, command: x, env: {T: \"${DISCORD_TOKEN}\"}}\n").config);
    assert!(
        !text.contains("secret-from-env"),
        "a secret entered the resolved config"
    );
}

#[test]
fn mapping_form_and_http_servers_with_headers() {
    let tools = tools_of(
        "type: claude\nmodel: claude-sonnet-4-5\nmcp_servers:\n  weather:\n    type: stdio\n    \
         command: npx\n    args: [\"-y\", \"@fak111/weather-mcp\"]\n  search:\n    type: \
         streamable-http\n    url: http://localhost:8000/mcp\n    headers:\n      \
         Authorization: \"Bearer ${SEARCH_TOKEN}\"\n",
    );
    let names: Vec<&str> = tools.mcp_servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["weather", "search"]);
    assert_eq!(
        tools.mcp_servers[1].transport,
        McpTransport::StreamableHttp {
            url: "http://localhost:8000/mcp".into(),
            headers: vec![("Authorization".into(), "Bearer ${SEARCH_TOKEN}".into())],
        }
    );
}

#[test]
fn backend_level_filters_and_limits_are_read() {
    let tools = tools_of(
        "type: openai\nmodel: gpt-4o-mini\nmcp_servers:\n  - {name: discord, type: stdio, command: npx}\n  \
         - {name: other, type: stdio, command: npx, exclude_tools: [drop]}\nallowed_tools: \
         [mcp__discord__read, mcp__discord__send]\nexclude_tools: [mcp__discord__send]\n\
         max_tool_rounds: 7\ntool_timeout_seconds: 5\nmax_tool_result_bytes: 4096\n\
         concurrent_tool_execution: false\n",
    );
    assert_eq!(
        tools.limits,
        ToolLimits {
            max_tool_rounds: 7,
            tool_timeout_seconds: 5,
            max_tool_result_bytes: 4096,
            max_concurrent_tools: 1,
        }
    );
    let discord = &tools.mcp_servers[0];
    assert_eq!(
        discord.allowed_tools.as_deref(),
        Some(
            &[
                "mcp__discord__read".to_owned(),
                "mcp__discord__send".to_owned()
            ][..]
        )
    );
    assert_eq!(discord.exclude_tools, ["mcp__discord__send"]);
    // An allow list that names MCP tools restricts every server: `other` offers none.
    assert_eq!(tools.mcp_servers[1].allowed_tools.as_deref(), Some(&[][..]));
    assert_eq!(
        tools.mcp_servers[1].exclude_tools,
        ["drop", "mcp__discord__send"]
    );

    // An allow list of a backend's own tools (Claude Code style) does not restrict MCP.
    let tools = tools_of(
        "type: openai\nmodel: m\nmcp_servers: [{name: s, type: stdio, command: x}]\n\
         allowed_tools: [Read, Bash]\n",
    );
    assert_eq!(tools.mcp_servers[0].allowed_tools, None);
}

#[test]
fn tool_keys_conclave_cannot_run_are_refused_naming_the_key() {
    for (key, value, fragment) in [
        (
            "custom_tools",
            "[{name: [two_num_tool], path: x.py, function: [f]}]",
            "custom tools are not supported yet",
        ),
        (
            "enable_image_generation",
            "true",
            "image generation is not supported yet",
        ),
        (
            "command_line_docker_packages",
            "{preinstalled: [numpy]}",
            "build them into the image",
        ),
    ] {
        let err = backend_err(&format!("type: openai\nmodel: m\n{key}: {value}\n"));
        let text = err.to_string();
        assert_eq!(
            err.key_path(),
            Some(format!("agent.backend.{key}").as_str()),
            "{text}"
        );
        assert!(text.contains(fragment), "{key}: {text}");
        assert!(text.contains("tools.yaml"), "{text}");
    }
    // Turned off, they change nothing and load.
    let loaded = load(
        "agent:\n  backend:\n    type: openai\n    model: m\n    enable_mcp_command_line: false\n    \
         custom_tools: []\n    enable_image_generation: false\n",
    );
    assert!(loaded.config.agents[0].tools.mcp_servers.is_empty());
    // `cwd` gives the agent a workspace (its snapshots travel with its answers).
    let loaded = load("agent:\n  backend:\n    type: openai\n    model: m\n    cwd: workspace1\n");
    let workspace = loaded.config.agents[0]
        .tools
        .workspace
        .as_ref()
        .expect("a workspace");
    // Relative to the config file's directory.
    assert!(
        std::path::Path::new(&workspace.cwd).is_absolute()
            && workspace.cwd.ends_with("/workspace1"),
        "{}",
        workspace.cwd
    );
    assert!(workspace.configured);
}

#[test]
fn bad_servers_get_errors_that_say_what_to_write() {
    let err = backend_err(
        "type: openai\nmodel: m\nmcp_servers: [{name: s, type: sse, url: http://x/sse}]\n",
    );
    assert!(err.to_string().contains("streamable-http"), "{err}");
    assert_eq!(err.key_path(), Some("agent.backend.mcp_servers[0].type"));
    let err = backend_err("type: openai\nmodel: m\nmcp_servers: [{type: stdio, command: x}]\n");
    assert!(err.to_string().contains("needs a `name`"), "{err}");
    let err = backend_err("type: openai\nmodel: m\nmcp_servers: [{name: s, type: stdio}]\n");
    assert!(err.to_string().contains("needs `command`"), "{err}");
    let err = backend_err(
        "type: openai\nmodel: m\nmcp_servers: [{name: \"a b\", type: stdio, command: x}]\n",
    );
    assert!(err.to_string().contains("letters, digits"), "{err}");
    let err = backend_err(
        "type: openai\nmodel: m\nmcp_servers: [{name: s, type: stdio, command: x}, {name: s, type: stdio, command: y}]\n",
    );
    assert!(
        err.to_string().contains("two MCP servers are named `s`"),
        "{err}"
    );
    let err = backend_err("type: claude_code\nmcp_servers: {s: {type: stdio, command: x}}\n");
    assert!(err.to_string().contains("claude_code"), "{err}");
    let err = backend_err("type: openai\nmodel: m\nmax_tool_rounds: -1\n");
    assert_eq!(err.key_path(), Some("agent.backend.max_tool_rounds"));
}

#[test]
fn a_submitted_config_may_not_start_programs_or_read_the_servers_environment() {
    let stdio = "agent:\n  backend:\n    type: openai\n    model: m\n    mcp_servers: [{name: s, type: stdio, command: /bin/sh}]\n";
    let err = load_str_untrusted(stdio, "submitted").expect_err("stdio refused");
    assert!(
        err.to_string()
            .contains("a submitted config may not start programs"),
        "{err}"
    );

    let header = "agent:\n  backend:\n    type: openai\n    model: m\n    mcp_servers: [{name: s, type: streamable-http, url: \"http://127.0.0.1:9/mcp\", headers: {A: \"${SECRET}\"}}]\n";
    let err = load_str_untrusted(header, "submitted").expect_err("${} refused");
    assert!(
        err.to_string()
            .contains("not expanded in a config submitted"),
        "{err}"
    );

    let plain = "agent:\n  backend:\n    type: openai\n    model: m\n    mcp_servers: [{name: s, type: streamable-http, url: \"http://127.0.0.1:9/mcp\"}]\n";
    let loaded = load_str_untrusted(plain, "submitted")
        .expect("an HTTP server loads (the server checks its URL)");
    assert_eq!(loaded.config.agents[0].tools.mcp_servers.len(), 1);
}

/// MassGen keys that change what an agent can do, or what it is told, never load with only a
/// warning: `disallowed_tools` is honoured (MCP tools are excluded; on `claude_code` it and
/// the CLI's other restrictions go to the CLI), the rest are refused naming the key.
#[test]
fn massgen_keys_that_change_an_agent_are_honoured_or_refused() {
    // `disallowed_tools`: its `mcp__` names exclude MCP tools.
    let tools = tools_of(
        "type: openai\nmodel: m\nmcp_servers: [{name: s, type: stdio, command: x}]\n\
         disallowed_tools: [mcp__s__drop, Bash]\n",
    );
    assert_eq!(tools.mcp_servers[0].exclude_tools, ["mcp__s__drop"]);

    // `claude_code`: the CLI's allow/deny lists, permission mode and turn bound reach the CLI.
    let loaded = load(
        "agent:\n  backend:\n    type: claude_code\n    disallowed_tools: [Bash]\n    \
         allowed_tools: [Read]\n    permission_mode: default\n    max_turns: 3\n",
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    let body: serde_json::Value = serde_json::from_str(
        loaded.config.agents[0]
            .backend
            .extra_body
            .as_deref()
            .expect("the CLI settings"),
    )
    .unwrap();
    assert_eq!(body["disallowed_tools"], serde_json::json!(["Bash"]));
    assert_eq!(body["allowed_tools"], serde_json::json!(["Read"]));
    assert_eq!(body["permission_mode"], "default");
    assert_eq!(body["max_turns"], 3);

    // Backend keys refused.
    for (key, value, fragment) in [
        ("upload_files", "[{image_path: a.jpg}]", "`upload_files`"),
        ("system_prompt", "Be brief.", "`system_message`"),
        ("append_system_prompt", "Be brief.", "`system_message`"),
        ("agent_config", "{name: a}", "`ag2`"),
        ("group_config", "{max_round: 3}", "`ag2`"),
    ] {
        let err = backend_err(&format!("type: openai\nmodel: m\n{key}: {value}\n"));
        let text = err.to_string();
        assert_eq!(
            err.key_path(),
            Some(format!("agent.backend.{key}").as_str()),
            "{text}"
        );
        assert!(text.contains(fragment), "{key}: {text}");
    }

    // Agent and orchestrator keys refused.
    let agent = "agent:\n  backend: {type: openai, model: m}\n";
    for (yaml, path, fragment) in [
        (
            format!("{agent}  append_system_prompt: Be brief.\n"),
            "agent.append_system_prompt",
            "`system_message`",
        ),
        (
            format!("{agent}orchestrator:\n  coordination:\n    enable_planning_mode: true\n"),
            "orchestrator.coordination.enable_planning_mode",
            "planning mode",
        ),
        (
            format!("{agent}orchestrator:\n  coordination:\n    use_skills: true\n"),
            "orchestrator.coordination.use_skills",
            "skills",
        ),
        (
            format!(
                "{agent}orchestrator:\n  coordination:\n    subagent_orchestrator: {{enabled: true}}\n"
            ),
            "orchestrator.coordination.subagent_orchestrator",
            "subagent",
        ),
    ] {
        let err = load_err(&yaml);
        let text = err.to_string();
        assert_eq!(err.key_path(), Some(path), "{text}");
        assert!(text.contains(fragment), "{path}: {text}");
        assert!(text.contains("not supported"), "{text}");
    }

    // Coordination settings that are off, or that do not change what an agent can do, load
    // with a warning naming them; `session_storage` too (`snapshot_storage` is read).
    let loaded = load(&format!(
        "{agent}orchestrator:\n  snapshot_storage: snaps\n  session_storage: s\n  coordination:\n    \
         enable_subagents: false\n    subagent_orchestrator: {{enabled: false}}\n    \
         max_orchestration_restarts: 2\n"
    ));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    let storage = loaded.config.orchestrator.snapshot_storage.as_deref();
    assert!(
        storage
            .is_some_and(|dir| std::path::Path::new(dir).is_absolute() && dir.ends_with("/snaps")),
        "{storage:?}"
    );
    for key in [
        "orchestrator.session_storage",
        "orchestrator.coordination.max_orchestration_restarts",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(key)),
            "{key}: {warnings:?}"
        );
    }
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}
