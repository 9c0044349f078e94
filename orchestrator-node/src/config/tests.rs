//! The option mapping and the per-wire rules for every backend type. The public-API tests
//! are in `tests/orchestrator/config_loading.rs`.

use conclave_protocol::config::{BackendOptions, BackendSpec, WireFormat};

use super::{ConfigError, LoadedConfig, load_str};

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(yaml: &str) -> LoadedConfig {
    load_str(yaml, "unit.yaml", &no_env)
        .unwrap_or_else(|err| panic!("expected the config to load, got: {err}"))
}

fn load_err(yaml: &str) -> ConfigError {
    match load_str(yaml, "unit.yaml", &no_env) {
        Ok(loaded) => panic!("expected an error, got {:#?}", loaded.config),
        Err(err) => err,
    }
}

/// The one agent's backend of `agent: {backend: {<backend>}}`.
fn backend(backend: &str) -> BackendSpec {
    let loaded = load(&format!("agent:\n  backend:\n{}", indent(backend)));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    loaded.config.agents[0].backend.clone()
}

fn backend_err(backend: &str) -> ConfigError {
    load_err(&format!("agent:\n  backend:\n{}", indent(backend)))
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}

fn warnings(loaded: &LoadedConfig) -> Vec<String> {
    loaded.warnings.iter().map(ToString::to_string).collect()
}

/// Asserts an error names `path` (exactly, as its key path) and contains every fragment.
fn assert_err(err: &ConfigError, path: &str, fragments: &[&str]) {
    let text = err.to_string();
    assert_eq!(err.key_path(), Some(path), "{text}");
    assert!(text.contains("unit.yaml"), "{text}");
    for fragment in fragments {
        assert!(text.contains(fragment), "no {fragment:?} in: {text}");
    }
}

#[test]
fn openai_reasoning_text_and_builtin_tools_become_options() {
    let spec = backend(
        "type: openai\nmodel: gpt-5-mini\nreasoning: {effort: High, summary: auto}\n\
         text: {verbosity: low}\nenable_web_search: true\nenable_code_interpreter: true\n",
    );
    assert_eq!(
        spec.options,
        BackendOptions {
            reasoning_effort: Some("high".into()),
            reasoning_summary: Some("auto".into()),
            verbosity: Some("low".into()),
            web_search: true,
            code_execution: true,
            ..BackendOptions::default()
        }
    );
    assert_eq!(
        spec.extra_body, None,
        "options no longer ride in extra_body"
    );
}

#[test]
fn chat_completions_names_of_the_same_options_are_read_too() {
    let spec = backend("type: vllm\nmodel: m\nreasoning_effort: minimal\nverbosity: medium\n");
    assert_eq!(spec.options.reasoning_effort.as_deref(), Some("minimal"));
    assert_eq!(spec.options.verbosity.as_deref(), Some("medium"));
    assert_eq!(spec.extra_body, None);
    // Both spellings with the same value are fine.
    let spec =
        backend("type: openai\nmodel: gpt-5\nreasoning: {effort: low}\nreasoning_effort: low\n");
    assert_eq!(spec.options.reasoning_effort.as_deref(), Some("low"));
}

#[test]
fn defaults_are_empty_options() {
    let spec = backend("type: claude\nmodel: claude-sonnet-4-5\n");
    assert_eq!(spec.options, BackendOptions::default());
    assert_eq!(spec.wire, WireFormat::Anthropic);
    assert_eq!(spec.base_url, "https://api.anthropic.com/v1");
    assert_eq!(spec.api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
}

#[test]
fn bad_option_values_name_the_key_and_the_allowed_values() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "type: openai\nmodel: gpt-5\nreasoning: {effort: extreme}\n",
            "agent.backend.reasoning.effort",
            &["`extreme`", "minimal, low, medium, high", "extra_body"],
        ),
        (
            "type: openai\nmodel: gpt-5\nreasoning_effort: none\n",
            "agent.backend.reasoning_effort",
            &["`none`", "minimal, low, medium, high"],
        ),
        (
            "type: openai\nmodel: gpt-5\nreasoning: {summary: verbose}\n",
            "agent.backend.reasoning.summary",
            &["`verbose`", "auto, concise, detailed"],
        ),
        (
            "type: openai\nmodel: gpt-5\ntext: {verbosity: loud}\n",
            "agent.backend.text.verbosity",
            &["`loud`", "low, medium, high"],
        ),
        (
            "type: openai\nmodel: gpt-5\nverbosity: 3\n",
            "agent.backend.verbosity",
            &["a string"],
        ),
        (
            "type: openai\nmodel: gpt-5\nreasoning: low\n",
            "agent.backend.reasoning",
            &["{effort: low, summary: auto}"],
        ),
        (
            "type: claude\nmodel: claude-sonnet-4-5\nthinking: {type: enabled, budget_tokens: 512}\n",
            "agent.backend.thinking.budget_tokens",
            &["512", "at least 1024"],
        ),
        (
            "type: claude\nmodel: claude-sonnet-4-5\nthinking: {type: enabled}\n",
            "agent.backend.thinking.budget_tokens",
            &["budget_tokens: 2048", "type: disabled"],
        ),
        (
            "type: claude\nmodel: claude-sonnet-4-5\nthinking: {type: adaptive, budget_tokens: 2048}\n",
            "agent.backend.thinking.type",
            &["`adaptive`", "enabled, disabled"],
        ),
        (
            "type: claude\nmodel: claude-sonnet-4-5\nthinking_budget: 2048.5\n",
            "agent.backend.thinking_budget",
            &["2048.5", "at least 1024"],
        ),
        (
            "type: claude_code\nmodel: sonnet\nmax_thinking_tokens: 100\n",
            "agent.backend.max_thinking_tokens",
            &["100", "0 (no thinking)", "at least 1024"],
        ),
        (
            "type: gemini\nmodel: gemini-2.5-pro\nthinking_config: {thinking_budget: 40000}\n",
            "agent.backend.thinking_config.thinking_budget",
            &["40000", "-1 (dynamic thinking)", "32768"],
        ),
        (
            "type: gemini\nmodel: gemini-2.5-pro\nthinking_config: {thinking_budget: -2}\n",
            "agent.backend.thinking_config.thinking_budget",
            &["-2", "-1 (dynamic thinking)"],
        ),
        (
            "type: gemini\nmodel: gemini-3-pro\nthinking_config: {thinking_level: max}\n",
            "agent.backend.thinking_config.thinking_level",
            &["`max`", "minimal, low, medium, high"],
        ),
        (
            "type: openai\nmodel: gpt-5\nthinking_budget: -1\n",
            "agent.backend.thinking_budget",
            &["-1", "from 0"],
        ),
        (
            "type: gemini\nmodel: gemini-2.5-pro\nenable_code_execution: sometimes\n",
            "agent.backend.enable_code_execution",
            &["true or false"],
        ),
        (
            "type: openai\nmodel: gpt-5\nenable_web_search: 1\n",
            "agent.backend.enable_web_search",
            &["true or false"],
        ),
        (
            "type: azure_openai\nmodel: gpt-4o\nbase_url: https://r.openai.azure.com\n\
             api_version: \"2024-10-21&x=1\"\n",
            "agent.backend.api_version",
            &["2024-10-21&x=1", "2025-04-01-preview"],
        ),
        (
            "type: azure_openai\nmodel: gpt-4o\nbase_url: https://r.openai.azure.com\napi_version: \" \"\n",
            "agent.backend.api_version",
            &["must not be empty"],
        ),
    ];
    for (yaml, path, fragments) in cases {
        assert_err(&backend_err(yaml), path, fragments);
    }
}

#[test]
fn two_keys_for_one_option_must_agree() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "type: openai\nmodel: gpt-5\nreasoning: {effort: low}\nreasoning_effort: high\n",
            "agent.backend.reasoning_effort",
            "agent.backend.reasoning.effort",
        ),
        (
            "type: openai\nmodel: gpt-5\ntext: {verbosity: low}\nverbosity: high\n",
            "agent.backend.verbosity",
            "agent.backend.text.verbosity",
        ),
        (
            "type: claude\nmodel: claude-sonnet-4-5\nthinking: {type: enabled, budget_tokens: 2048}\n\
             max_thinking_tokens: 4096\n",
            "agent.backend.max_thinking_tokens",
            "agent.backend.thinking.budget_tokens",
        ),
        (
            "type: gemini\nmodel: gemini-2.5-pro\nthinking_budget: 1024\n\
             thinking_config: {thinking_budget: -1}\n",
            "agent.backend.thinking_config.thinking_budget",
            "agent.backend.thinking_budget",
        ),
        (
            "type: gemini\nmodel: gemini-3-pro\nreasoning_effort: low\n\
             thinking_config: {thinking_level: high}\n",
            "agent.backend.thinking_config.thinking_level",
            "agent.backend.reasoning_effort",
        ),
        (
            "type: openai\nmodel: gpt-5\nenable_code_execution: true\nenable_code_interpreter: false\n",
            "agent.backend.enable_code_interpreter",
            "agent.backend.enable_code_execution",
        ),
        (
            "type: azure_openai\nmodel: gpt-4o\nbase_url: https://a.openai.azure.com\n\
             azure_endpoint: https://b.openai.azure.com\n",
            "agent.backend.azure_endpoint",
            "https://a.openai.azure.com",
        ),
    ];
    for (yaml, path, other) in cases {
        assert_err(&backend_err(yaml), path, &[other, "keep one"]);
    }
}

#[test]
fn claude_thinking_and_builtin_tools() {
    let spec = backend(
        "type: claude\nmodel: claude-sonnet-4-5\nmax_tokens: 8192\n\
         thinking: {type: enabled, budget_tokens: 4096}\nenable_web_search: true\n\
         enable_code_execution: true\napi_version: \"2023-06-01\"\n",
    );
    assert_eq!(
        spec.options,
        BackendOptions {
            thinking_budget: Some(4096),
            web_search: true,
            code_execution: true,
            api_version: Some("2023-06-01".into()),
            ..BackendOptions::default()
        }
    );
    // The minimum itself, and the other spellings.
    for form in [
        "thinking: {budget_tokens: 1024}",
        "max_thinking_tokens: 1024",
        "thinking_budget: \"1024\"",
    ] {
        let spec = backend(&format!("type: claude\nmodel: claude-opus-4-1\n{form}\n"));
        assert_eq!(spec.options.thinking_budget, Some(1024), "{form}");
    }
    // Disabled: the default (off), and a stray budget is only a warning.
    let loaded = load(
        "agent:\n  backend:\n    type: claude\n    model: claude-sonnet-4-5\n    \
         thinking: {type: disabled, budget_tokens: 2048}\n",
    );
    assert_eq!(
        loaded.config.agents[0].backend.options.thinking_budget,
        None
    );
    assert_eq!(
        warnings(&loaded),
        ["agent.backend.thinking.budget_tokens: ignored because `type` is `disabled`"]
    );
}

#[test]
fn claude_code_budget_and_cli_path() {
    let spec = backend("type: claude_code\nmodel: sonnet\nmax_thinking_tokens: 4096\n");
    assert_eq!(spec.wire, WireFormat::ClaudeCode);
    assert_eq!(spec.options.thinking_budget, Some(4096));
    assert_eq!(
        spec.base_url,
        super::DEFAULT_CLAUDE_CODE_CLI,
        "no base_url needed"
    );
    assert_eq!(spec.api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
    // MassGen's Claude Code configs often leave the model to the CLI.
    let spec = backend("type: claude_code\n");
    assert_eq!(spec.model, super::DEFAULT_CLAUDE_CODE_MODEL);
    assert_err(
        &backend_err("type: claude\n"),
        "agent.backend.model",
        &["needs a model"],
    );

    let off = backend("type: claude_code\nmodel: sonnet\nmax_thinking_tokens: 0\n");
    assert_eq!(off.options.thinking_budget, Some(0));
    let off = backend("type: claude_code\nmodel: sonnet\nthinking: {type: disabled}\n");
    assert_eq!(off.options.thinking_budget, Some(0));

    for path in ["/opt/claude/bin/claude", "claude-beta", "~/bin/claude "] {
        let spec = backend(&format!(
            "type: claude_code\nmodel: sonnet\nbase_url: \"{path}\"\n"
        ));
        assert_eq!(spec.base_url, path.trim());
    }
    assert_err(
        &backend_err("type: claude_code\nmodel: sonnet\nbase_url: \"  \"\n"),
        "agent.backend.base_url",
        &["`claude` CLI"],
    );
    // Other types still want a URL.
    assert_err(
        &backend_err("type: claude\nmodel: claude-sonnet-4-5\nbase_url: /usr/bin/claude\n"),
        "agent.backend.base_url",
        &["http(s) URL"],
    );
}

#[test]
fn gemini_thinking_forms() {
    let spec = backend(
        "type: gemini\nmodel: gemini-2.5-flash\nthinking_config: {thinking_budget: 2048}\n\
         enable_web_search: true\nenable_code_execution: true\n",
    );
    assert_eq!(
        spec.options,
        BackendOptions {
            thinking_budget: Some(2048),
            web_search: true,
            code_execution: true,
            ..BackendOptions::default()
        }
    );
    assert_eq!(spec.api_key_env.as_deref(), Some("GEMINI_API_KEY"));

    let dynamic = backend("type: gemini\nmodel: gemini-2.5-pro\nthinking_budget: -1\n");
    assert_eq!(
        dynamic.options.thinking_budget, None,
        "-1 is Gemini's default"
    );
    let off = backend("type: gemini\nmodel: gemini-2.5-flash\nthinking_budget: 0\n");
    assert_eq!(off.options.thinking_budget, Some(0));
    let max = backend("type: gemini\nmodel: gemini-2.5-pro\nthinking_budget: 32768\n");
    assert_eq!(max.options.thinking_budget, Some(32768));

    let level = load(
        "agent:\n  backend:\n    type: gemini\n    model: gemini-3-pro-preview\n    \
         thinking_config: {thinking_level: HIGH, include_thoughts: true}\n",
    );
    assert_eq!(
        level.config.agents[0]
            .backend
            .options
            .reasoning_effort
            .as_deref(),
        Some("high")
    );
    let texts = warnings(&level);
    assert_eq!(texts.len(), 1, "{texts:#?}");
    assert!(
        texts[0].starts_with("agent.backend.thinking_config.include_thoughts: not supported yet"),
        "{texts:#?}"
    );
}

#[test]
fn azure_needs_its_endpoint_and_takes_an_api_version() {
    let err = backend_err("type: azure_openai\nmodel: gpt-4o\n");
    assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
    assert_err(
        &err,
        "agent.backend.base_url",
        &[
            "azure_openai",
            "`base_url: https://my-resource.openai.azure.com`, or AZURE_OPENAI_ENDPOINT",
            "deployment",
        ],
    );

    let spec = backend(
        "type: azure_openai\nmodel: my-gpt-4o\nbase_url: https://res.openai.azure.com/\n\
         api_version: 2024-10-21\nenable_code_interpreter: true\n",
    );
    assert_eq!(spec.wire, WireFormat::AzureOpenAi);
    assert_eq!(spec.provider, "azure_openai");
    assert_eq!(spec.base_url, "https://res.openai.azure.com");
    assert_eq!(spec.api_key_env.as_deref(), Some("AZURE_OPENAI_API_KEY"));
    assert_eq!(spec.options.api_version.as_deref(), Some("2024-10-21"));
    assert!(spec.options.code_execution);

    // MassGen's `azure_endpoint`; an OpenAI host in it does not make it `openai`.
    let spec = backend(
        "type: azure\nmodel: d\nazure_endpoint: https://api.openai.com.example/\napi_version: v1\n",
    );
    assert_eq!(spec.provider, "azure_openai");
    assert_eq!(spec.api_key_env.as_deref(), Some("AZURE_OPENAI_API_KEY"));
    assert_eq!(spec.base_url, "https://api.openai.com.example");

    // As in MassGen, AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_VERSION stand in for missing
    // keys; the config's own values win.
    let env = |key: &str| match key {
        "AZURE_OPENAI_ENDPOINT" => Some("https://env.openai.azure.com/".to_owned()),
        "AZURE_OPENAI_API_VERSION" => Some("2025-04-01-preview".to_owned()),
        _ => None,
    };
    let load_env = |yaml: &str| load_str(yaml, "unit.yaml", &env);
    let from_env = load_env("agent: {backend: {type: azure_openai, model: d}}").unwrap();
    let spec = &from_env.config.agents[0].backend;
    assert_eq!(spec.base_url, "https://env.openai.azure.com");
    assert_eq!(
        spec.options.api_version.as_deref(),
        Some("2025-04-01-preview")
    );
    let own = load_env(
        "agent: {backend: {type: azure_openai, model: d, base_url: \"https://own.example\", \
         api_version: v1}}",
    )
    .unwrap();
    let spec = &own.config.agents[0].backend;
    assert_eq!(spec.base_url, "https://own.example");
    assert_eq!(spec.options.api_version.as_deref(), Some("v1"));
    // Other types do not read them.
    let openai = load_env("agent: {backend: {type: openai, model: gpt-4o}}").unwrap();
    assert_eq!(openai.config.agents[0].backend.options.api_version, None);

    let bad_env = |key: &str| match key {
        "AZURE_OPENAI_ENDPOINT" => Some("my-resource.openai.azure.com".to_owned()),
        "AZURE_OPENAI_API_VERSION" => Some("2024 10 21".to_owned()),
        _ => None,
    };
    let err = load_str(
        "agent: {backend: {type: azure_openai, model: d}}",
        "unit.yaml",
        &bad_env,
    )
    .unwrap_err();
    assert_err(
        &err,
        "agent.backend.base_url",
        &["AZURE_OPENAI_ENDPOINT", "http(s) URL"],
    );
    assert!(
        !err.to_string().contains("my-resource.openai.azure.com"),
        "{err}"
    );
    let err = load_str(
        "agent: {backend: {type: azure_openai, model: d, base_url: \"https://x.example\"}}",
        "unit.yaml",
        &bad_env,
    )
    .unwrap_err();
    assert_err(
        &err,
        "agent.backend.api_version",
        &["`AZURE_OPENAI_API_VERSION`", "2025-04-01-preview"],
    );
    assert!(
        !err.to_string().contains("2024 10 21"),
        "a value from the environment is never shown: {err}"
    );
}

#[test]
fn request_parameters_pass_through_only_where_the_wire_takes_them() {
    let loaded = load(
        "agents:\n  - id: claude\n    backend: {type: claude, model: claude-sonnet-4-5, top_k: 5, \
         stop_sequences: [END], seed: 7}\n  - id: gemini\n    backend: {type: gemini, \
         model: gemini-2.5-flash, top_k: 40, extra_body: {generationConfig: {topK: 40}}}\n  \
         - id: chat\n    backend: {type: openai_chat, model: gpt-4o, stop_sequences: [x], seed: 1}\n",
    );
    let body = |i: usize| -> serde_json::Value {
        serde_json::from_str(
            loaded.config.agents[i]
                .backend
                .extra_body
                .as_deref()
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        body(0),
        serde_json::json!({"top_k": 5, "stop_sequences": ["END"]})
    );
    assert_eq!(
        body(1),
        serde_json::json!({"generationConfig": {"topK": 40}})
    );
    assert_eq!(body(2), serde_json::json!({"seed": 1}));
    let texts = warnings(&loaded);
    let paths: Vec<&str> = texts
        .iter()
        .map(|w| w.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        [
            "agents[0].backend.seed",
            "agents[1].backend.top_k",
            "agents[2].backend.stop_sequences",
        ],
        "{texts:#?}"
    );
    assert!(
        texts[0].contains("not a request parameter of backend type `anthropic`"),
        "{texts:#?}"
    );
    assert!(texts.iter().all(|w| w.contains("extra_body")), "{texts:#?}");
}

#[test]
fn every_preset_is_a_supported_type_and_massgen_only_types_are_refused() {
    let all = super::supported_backend_types();
    for name in [
        "openai (openai_responses, responses)",
        "openai_chat (chatcompletion_openai, openai_chatcompletions)",
        "anthropic (claude)",
        "gemini",
        "azure_openai",
        "claude_code",
        "chatcompletion (openai_compatible, chat_completion, chatcompletions, inference)",
    ] {
        assert!(all.contains(name), "{name} missing from {all}");
    }
    assert!(!all.contains("ag2"), "{all}");

    for (name, what) in [
        ("ag2", "AG2"),
        ("AG2", "AG2"),
        ("poe", "type: chatcompletion"),
    ] {
        let err = backend_err(&format!("type: {name}\nmodel: m\n"));
        assert!(
            matches!(err, ConfigError::UnsupportedBackendType { .. }),
            "{name}: {err:?}"
        );
        assert_err(
            &err,
            "agent.backend.type",
            &[
                &format!("`{name}`"),
                what,
                "not supported by conclave",
                "supported: openai (",
                "claude_code",
            ],
        );
    }
}

#[test]
fn openai_speaks_responses_and_takes_its_options_and_parameters() {
    let spec = backend(
        "type: openai\nmodel: gpt-5\nreasoning: {effort: low, summary: detailed}\n\
         enable_web_search: true\nenable_code_interpreter: true\ntruncation: auto\n\
         parallel_tool_calls: false\nmax_tool_calls: 4\n",
    );
    assert_eq!(spec.wire, WireFormat::OpenAiResponses);
    assert_eq!(spec.provider, "openai");
    assert_eq!(spec.base_url, "https://api.openai.com/v1");
    assert_eq!(
        spec.options,
        BackendOptions {
            reasoning_effort: Some("low".into()),
            reasoning_summary: Some("detailed".into()),
            web_search: true,
            code_execution: true,
            ..BackendOptions::default()
        }
    );
    let body: serde_json::Value =
        serde_json::from_str(spec.extra_body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"parallel_tool_calls": false, "max_tool_calls": 4, "truncation": "auto"})
    );

    // Chat Completions-only parameters are not sent to the Responses API.
    let loaded = load("agent: {backend: {type: openai, model: gpt-5, seed: 3, stop: [x]}}\n");
    assert_eq!(loaded.config.agents[0].backend.extra_body, None);
    let texts = warnings(&loaded);
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts
            .iter()
            .all(|w| w.contains("`openai` (OpenAI Responses API)")),
        "{texts:#?}"
    );

    // openai_chat: the same host over Chat Completions, with its parameters.
    let chat = backend(
        "type: openai_chat\nmodel: gpt-4o\nseed: 3\nreasoning_effort: low\nverbosity: high\n",
    );
    assert_eq!(chat.wire, WireFormat::OpenAiChat);
    assert_eq!(chat.provider, "openai_chat");
    assert_eq!(chat.base_url, "https://api.openai.com/v1");
    assert_eq!(chat.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(chat.extra_body.as_deref(), Some(r#"{"seed":3}"#));
    assert_eq!(chat.options.reasoning_effort.as_deref(), Some("low"));
    assert_eq!(chat.options.verbosity.as_deref(), Some("high"));
    for alias in ["chatcompletion_openai", "openai_chatcompletions"] {
        let spec = backend(&format!("type: {alias}\nmodel: gpt-4o\n"));
        assert_eq!(
            (spec.wire, spec.provider.as_str()),
            (WireFormat::OpenAiChat, "openai_chat"),
            "{alias}"
        );
    }
    for alias in ["openai_responses", "responses"] {
        let spec = backend(&format!("type: {alias}\nmodel: gpt-4o\n"));
        assert_eq!(
            (spec.wire, spec.provider.as_str()),
            (WireFormat::OpenAiResponses, "openai"),
            "{alias}"
        );
    }
    // A generic Chat Completions backend at OpenAI's URL is OpenAI over Chat Completions.
    let generic =
        backend("type: chatcompletion\nmodel: gpt-4o\nbase_url: https://api.openai.com/v1\n");
    assert_eq!(generic.wire, WireFormat::OpenAiChat);
    assert_eq!(generic.provider, "openai_chat");
    assert_eq!(generic.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
}

#[test]
fn workflow_is_read_per_agent_or_backend_and_the_agent_wins() {
    use conclave_protocol::config::WorkflowMode;
    let loaded = load(
        "agents:\n\
         - id: a\n  backend: {type: sim, model: sim-a, base_url: 'http://127.0.0.1:1/v1', workflow: text}\n\
         - id: b\n  workflow: tools\n  backend: {type: sim, model: sim-b, base_url: 'http://127.0.0.1:1/v1', workflow: text}\n\
         - id: c\n  backend: {type: sim, model: sim-c, base_url: 'http://127.0.0.1:1/v1'}\n",
    );
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let modes: Vec<WorkflowMode> = loaded.config.agents.iter().map(|a| a.workflow).collect();
    assert_eq!(
        modes,
        [WorkflowMode::Text, WorkflowMode::Tools, WorkflowMode::Auto]
    );
    let err = load_err(
        "agent:\n  workflow: json\n  backend: {type: sim, model: m, base_url: 'http://127.0.0.1:1/v1'}\n",
    )
    .to_string();
    assert!(err.contains("agent.workflow"), "{err}");
    assert!(err.contains("tools, text, auto"), "{err}");
}
