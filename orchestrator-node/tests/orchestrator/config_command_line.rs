//! The command tool's keys through the loader: MassGen's `enable_mcp_command_line` and
//! `command_line_*` keys load into `CommandLineSpec`; the agent gets a default workspace; keys
//! conclave does not implement, bad patterns and bad limits are refused naming the key.

use conclave::config::{ConfigError, LoadedConfig, load_str, load_str_untrusted};
use conclave_protocol::tools::{
    CommandLineSpec, CommandMode, DEFAULT_COMMAND_MAX_OUTPUT_BYTES, DEFAULT_COMMAND_TIMEOUT_SECONDS,
};

fn no_env(_: &str) -> Option<String> {
    None
}

fn agent_yaml(backend: &str) -> String {
    let body: String = backend.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "agents:\n  - id: coder\n    backend:\n      type: openai\n      model: m\n{}",
        body.replace("    ", "      ")
    )
}

fn load(backend: &str) -> LoadedConfig {
    load_str(&agent_yaml(backend), "cmd.yaml", &no_env)
        .unwrap_or_else(|e| panic!("expected a load, got: {e}"))
}

fn load_err(backend: &str) -> ConfigError {
    match load_str(&agent_yaml(backend), "cmd.yaml", &no_env) {
        Ok(_) => panic!("expected an error for {backend}"),
        Err(e) => e,
    }
}

fn spec_of(loaded: &LoadedConfig) -> CommandLineSpec {
    loaded.config.agents[0]
        .tools
        .command_line
        .clone()
        .expect("the command tool is on")
}

#[test]
fn enable_mcp_command_line_loads_local_mode_with_defaults_and_a_workspace() {
    let loaded = load("enable_mcp_command_line: true\n");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let spec = spec_of(&loaded);
    assert_eq!(spec.mode, CommandMode::Local);
    assert!(spec.allowed_commands.is_empty() && spec.blocked_commands.is_empty());
    assert_eq!(spec.timeout_seconds, DEFAULT_COMMAND_TIMEOUT_SECONDS);
    assert_eq!(spec.max_output_bytes, DEFAULT_COMMAND_MAX_OUTPUT_BYTES);
    let workspace = loaded.config.agents[0]
        .tools
        .workspace
        .clone()
        .expect("an agent that runs commands gets a workspace");
    // Left open by the loader: the session places it under its directory
    // (`session::place_workspaces`).
    assert!(workspace.cwd.is_empty() && workspace.peers_dir.is_empty());
    assert!(!workspace.configured);
    // Off: no tool, no workspace.
    let loaded = load("enable_mcp_command_line: false\n");
    assert!(loaded.config.agents[0].tools.command_line.is_none());
    assert!(loaded.config.agents[0].tools.workspace.is_none());
}

#[test]
fn docker_mode_reads_massgens_keys() {
    let loaded = load(
        "enable_mcp_command_line: true\ncommand_line_execution_mode: docker\n\
         command_line_docker_image: conclave-runner:minimal\ncommand_line_docker_network_mode: bridge\n\
         command_line_docker_memory_limit: 2g\ncommand_line_docker_cpu_limit: 1.5\n\
         command_line_allowed_commands: [\"python .*\", \"ls\"]\ncommand_line_blocked_commands: \"rm .*\"\n\
         command_line_timeout_seconds: 30\ncommand_line_max_output_bytes: 4096\n\
         command_line_docker_enable_sudo: false\n",
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let spec = spec_of(&loaded);
    assert_eq!(
        spec.mode,
        CommandMode::Docker {
            image: "conclave-runner:minimal".into(),
            network_mode: "bridge".into(),
            memory_limit: Some("2g".into()),
            cpu_limit: Some("1.5".into()),
        }
    );
    assert_eq!(spec.allowed_commands, ["python .*", "ls"]);
    assert_eq!(spec.blocked_commands, ["rm .*"]);
    assert_eq!((spec.timeout_seconds, spec.max_output_bytes), (30, 4096));
    // The defaults of docker mode: network none, no limits, conclave's full runner image.
    let spec = spec_of(&load(
        "enable_mcp_command_line: true\ncommand_line_execution_mode: docker\n",
    ));
    assert_eq!(
        spec.mode,
        CommandMode::Docker {
            image: "conclave-runner:full".into(),
            network_mode: "none".into(),
            memory_limit: None,
            cpu_limit: None,
        }
    );
}

#[test]
fn settings_without_the_switch_or_out_of_their_mode_warn() {
    let loaded = load("command_line_execution_mode: docker\n");
    assert!(loaded.config.agents[0].tools.command_line.is_none());
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("enable_mcp_command_line: true")),
        "{warnings:?}"
    );
    let loaded = load("enable_mcp_command_line: true\ncommand_line_docker_image: x\n");
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.contains("only applies with")),
        "{warnings:?}"
    );
}

#[test]
fn what_conclave_cannot_honour_is_refused_naming_the_key() {
    for (backend, key, fragment) in [
        (
            "enable_mcp_command_line: true\ncommand_line_execution_mode: podman\n",
            "command_line_execution_mode",
            "`local` or `docker`",
        ),
        (
            "enable_mcp_command_line: true\ncommand_line_allowed_commands: [\"(?<=x)y\"]\n",
            "command_line_allowed_commands[0]",
            "not a regular expression",
        ),
        (
            "enable_mcp_command_line: true\ncommand_line_blocked_commands: [\"(\"]\n",
            "command_line_blocked_commands[0]",
            "not a regular expression",
        ),
        (
            "enable_mcp_command_line: true\ncommand_line_docker_enable_sudo: true\n",
            "command_line_docker_enable_sudo",
            "sudo",
        ),
        (
            "enable_mcp_command_line: true\ncommand_line_docker_credentials: {env_file: .env}\n",
            "command_line_docker_credentials",
            "credentials",
        ),
        (
            "enable_mcp_command_line: true\ncommand_line_shell: zsh\n",
            "command_line_shell",
            "not a command-line setting",
        ),
        (
            "enable_mcp_command_line: true\ncommand_line_execution_mode: docker\ncommand_line_docker_network_mode: macvlan\n",
            "command_line_docker_network_mode",
            "`none`, `bridge` or `host`",
        ),
        (
            "enable_mcp_command_line: true\ncommand_line_execution_mode: docker\ncommand_line_docker_memory_limit: lots\n",
            "command_line_docker_memory_limit",
            "512m",
        ),
        (
            "enable_mcp_command_line: true\ncommand_line_timeout_seconds: 0\n",
            "command_line_timeout_seconds",
            "1 to 86400",
        ),
    ] {
        let err = load_err(backend);
        let text = err.to_string();
        assert_eq!(
            err.key_path(),
            Some(format!("agents[0].backend.{key}").as_str()),
            "{text}"
        );
        assert!(text.contains(fragment), "{key}: {text}");
    }
    // Claude Code runs commands with its own Bash tool.
    let yaml = "agents:\n  - id: c\n    backend:\n      type: claude_code\n      enable_mcp_command_line: true\n";
    let err = load_str(yaml, "cmd.yaml", &no_env)
        .err()
        .unwrap_or_else(|| panic!("refused"));
    assert!(err.to_string().contains("Bash tool"), "{err}");
}

#[test]
fn a_submitted_config_may_run_commands_only_in_a_container() {
    let local = agent_yaml("enable_mcp_command_line: true\n");
    let err = load_str_untrusted(&local, "submitted")
        .err()
        .unwrap_or_else(|| panic!("local refused"));
    assert!(
        err.to_string()
            .contains("command_line_execution_mode: docker"),
        "{err}"
    );
    let host = agent_yaml(
        "enable_mcp_command_line: true\ncommand_line_execution_mode: docker\ncommand_line_docker_network_mode: host\n",
    );
    let err = load_str_untrusted(&host, "submitted")
        .err()
        .unwrap_or_else(|| panic!("host network refused"));
    assert!(err.to_string().contains("`host` is refused"), "{err}");
    let docker = agent_yaml("enable_mcp_command_line: true\ncommand_line_execution_mode: docker\n");
    assert!(load_str_untrusted(&docker, "submitted").is_ok());
}

#[test]
fn claude_code_takes_massgens_cwd_and_system_prompt() {
    let yaml = "agents:\n  - id: c\n    backend:\n      type: claude_code\n      cwd: claude_ws\n      \
                system_prompt: You are terse.\n      permission_mode: acceptEdits\n      \
                allowed_tools: [Read, Write]\n      disallowed_tools: [Bash]\n";
    let loaded = load_str(yaml, "cmd.yaml", &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let extra: serde_json::Value = serde_json::from_str(
        loaded.config.agents[0]
            .backend
            .extra_body
            .as_deref()
            .expect("CLI options"),
    )
    .expect("JSON");
    assert_eq!(extra["cwd"], "claude_ws");
    assert_eq!(extra["system_prompt"], "You are terse.");
    assert_eq!(extra["permission_mode"], "acceptEdits");
    assert_eq!(extra["allowed_tools"], serde_json::json!(["Read", "Write"]));
    assert_eq!(extra["disallowed_tools"], serde_json::json!(["Bash"]));
    // Elsewhere `system_prompt` is still refused: those backends take `system_message`.
    let err = load_err("system_prompt: hi\n");
    assert!(err.to_string().contains("system_message"), "{err}");
}
