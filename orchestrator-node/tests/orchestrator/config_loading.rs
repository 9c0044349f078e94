//! The config loader against the example configs, MassGen-style input, the environment and
//! a catalogue of broken configs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use conclave::config::{
    ConfigError, EnvLookup, LoadedConfig, load_file, load_file_untrusted, load_str,
    load_str_untrusted, missing_api_keys, single_agent, supported_backend_types,
};
use conclave_protocol::config::{
    BackendOptions, DisplayKind, OrchestratorSettings, RestartPolicy, SessionConfig,
    TimeoutSettings, WireFormat,
};
use conclave_protocol::presets;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |key| map.get(key).cloned()
}

fn load(yaml: &str) -> LoadedConfig {
    match load_str(yaml, "test.yaml", &no_env) {
        Ok(loaded) => loaded,
        Err(err) => panic!("expected the config to load, got: {err}"),
    }
}

fn load_err(yaml: &str) -> ConfigError {
    match load_str(yaml, "test.yaml", &no_env) {
        Ok(loaded) => panic!("expected an error, got {loaded:#?}"),
        Err(err) => err,
    }
}

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// Loads an example config from `configs/`; any error fails the test.
fn example(name: &str) -> LoadedConfig {
    let path = configs_dir().join(name);
    load_file(&path, &example_env)
        .unwrap_or_else(|err| panic!("{} does not load: {err}", path.display()))
}

/// The variables the examples cannot do without (the rest have defaults in the files).
fn example_env(key: &str) -> Option<String> {
    (key == "AZURE_OPENAI_ENDPOINT").then(|| "https://example-resource.openai.azure.com".to_owned())
}

fn warning_texts(loaded: &LoadedConfig) -> Vec<String> {
    loaded.warnings.iter().map(ToString::to_string).collect()
}

// ---------------------------------------------------------------------------------------
// configs/

#[test]
fn every_example_config_loads() {
    let mut seen = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(configs_dir())
        .expect("configs/ exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    entries.sort();
    for path in entries {
        seen += 1;
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let loaded = example(&name);
        assert!(!loaded.config.agents.is_empty(), "{}", path.display());
        assert_eq!(loaded.source.as_deref(), Some(path.as_path()));
        let unknown: Vec<String> = warning_texts(&loaded)
            .into_iter()
            .filter(|w| !w.contains("not supported yet"))
            .collect();
        assert!(
            unknown.is_empty(),
            "{} has unexpected warnings: {unknown:#?}",
            path.display()
        );
        let is_massgen_example = path.file_name().is_some_and(|n| n == "massgen_style.yaml");
        if !is_massgen_example {
            assert!(
                loaded.warnings.is_empty(),
                "{}: conclave's own examples should load cleanly: {:#?}",
                path.display(),
                loaded.warnings
            );
        }
    }
    assert!(
        seen >= 14,
        "expected the fourteen example configs, found {seen}"
    );
}

#[test]
fn there_is_an_example_per_provider() {
    // (file, [(backend type written, wire format it resolves to)])
    let responses = ("openai", WireFormat::OpenAiResponses);
    let claude = ("claude", WireFormat::Anthropic);
    let gemini = ("gemini", WireFormat::Gemini);
    let grok = ("grok", WireFormat::OpenAiChat);
    for (file, types) in [
        ("openai.yaml", &[responses][..]),
        ("claude.yaml", &[claude]),
        ("gemini.yaml", &[gemini]),
        ("grok.yaml", &[grok]),
        (
            "azure_openai.yaml",
            &[("azure_openai", WireFormat::AzureOpenAi)],
        ),
        (
            "claude_code.yaml",
            &[("claude_code", WireFormat::ClaudeCode)],
        ),
        ("openrouter.yaml", &[("openrouter", WireFormat::OpenAiChat)]),
        ("mixed_team.yaml", &[claude, gemini, responses, grok]),
    ] {
        let text = std::fs::read_to_string(configs_dir().join(file))
            .unwrap_or_else(|err| panic!("{file}: {err}"));
        let loaded = example(file);
        for (ty, wire) in types {
            assert!(
                text.contains(&format!("type: {ty}\n")),
                "{file} has no `type: {ty}` backend"
            );
            let provider = presets::preset(ty).unwrap().name;
            assert!(
                loaded
                    .config
                    .agents
                    .iter()
                    .any(|a| a.backend.provider == provider && a.backend.wire == *wire),
                "{file}: no `{ty}` agent on {wire:?}"
            );
        }
    }
}

#[test]
fn provider_examples_carry_their_options() {
    let options = |loaded: &LoadedConfig, i: usize| loaded.config.agents[i].backend.options.clone();

    let openai = example("openai.yaml");
    for agent in &openai.config.agents {
        assert_eq!(
            agent.backend.wire,
            WireFormat::OpenAiResponses,
            "{}",
            agent.id
        );
        assert_eq!(agent.backend.base_url, "https://api.openai.com/v1");
    }
    assert_eq!(
        options(&openai, 0),
        BackendOptions {
            reasoning_effort: Some("medium".into()),
            verbosity: Some("low".into()),
            ..BackendOptions::default()
        }
    );
    assert_eq!(openai.config.agents[0].backend.extra_body, None);

    let grok = example("grok.yaml");
    assert_eq!(grok.config.agents[1].backend.provider, "xai");
    assert_eq!(options(&grok, 1).reasoning_effort.as_deref(), Some("high"));

    let openrouter = example("openrouter.yaml");
    for agent in &openrouter.config.agents {
        assert_eq!(agent.backend.provider, "openrouter");
        assert_eq!(agent.backend.base_url, "https://openrouter.ai/api/v1");
        assert_eq!(
            agent.backend.api_key_env.as_deref(),
            Some("OPENROUTER_API_KEY")
        );
    }
    assert_eq!(
        openrouter.config.agents[2].backend.extra_body.as_deref(),
        Some(r#"{"provider":{"sort":"throughput"}}"#)
    );

    let claude = example("claude.yaml");
    let sonnet = &claude.config.agents[0].backend;
    assert_eq!(sonnet.wire, WireFormat::Anthropic);
    assert_eq!(sonnet.api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
    assert_eq!(sonnet.options.thinking_budget, Some(8000));
    assert!(sonnet.options.web_search);
    assert!(options(&claude, 1).code_execution);

    let gemini = example("gemini.yaml");
    assert_eq!(gemini.config.agents[0].backend.wire, WireFormat::Gemini);
    assert_eq!(options(&gemini, 0).thinking_budget, Some(8192));
    assert!(options(&gemini, 0).code_execution);
    assert!(options(&gemini, 1).web_search);

    let azure = example("azure_openai.yaml");
    let backend = &azure.config.agents[0].backend;
    assert_eq!(backend.wire, WireFormat::AzureOpenAi);
    assert_eq!(
        backend.base_url,
        "https://example-resource.openai.azure.com"
    );
    assert_eq!(backend.model, "gpt-4o");
    assert_eq!(backend.api_key_env.as_deref(), Some("AZURE_OPENAI_API_KEY"));
    assert_eq!(backend.options.api_version.as_deref(), Some("2024-10-21"));
    // The endpoint is required: without the variable the file does not load.
    let err = load_file(&configs_dir().join("azure_openai.yaml"), &no_env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnsetVariable { var, .. } if var == "AZURE_OPENAI_ENDPOINT"),
        "{err}"
    );

    let code = example("claude_code.yaml");
    let backend = &code.config.agents[0].backend;
    assert_eq!(backend.wire, WireFormat::ClaudeCode);
    assert_eq!(backend.base_url, conclave::config::DEFAULT_CLAUDE_CODE_CLI);
    assert_eq!(backend.options.thinking_budget, Some(8000));

    let team = example("mixed_team.yaml");
    let providers: Vec<(&str, WireFormat)> = team
        .config
        .agents
        .iter()
        .map(|a| (a.backend.provider.as_str(), a.backend.wire))
        .collect();
    assert_eq!(
        providers,
        [
            ("anthropic", WireFormat::Anthropic),
            ("gemini", WireFormat::Gemini),
            ("openai", WireFormat::OpenAiResponses),
            ("xai", WireFormat::OpenAiChat),
        ]
    );
    assert_eq!(options(&team, 0).thinking_budget, Some(4096));
    assert_eq!(options(&team, 1).thinking_budget, Some(4096));
    assert_eq!(
        options(&team, 2).reasoning_effort.as_deref(),
        Some("medium")
    );
    assert_eq!(options(&team, 2).verbosity.as_deref(), Some("low"));
}

#[test]
fn three_agents_default_uses_three_hosted_providers() {
    let config = example("three_agents_default.yaml").config;
    let summary: Vec<(&str, &str, Option<&str>)> = config
        .agents
        .iter()
        .map(|a| {
            (
                a.id.as_str(),
                a.backend.provider.as_str(),
                a.backend.api_key_env.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("gpt-4o-mini", "openai", Some("OPENAI_API_KEY")),
            ("grok", "xai", Some("XAI_API_KEY")),
            ("llama-groq", "groq", Some("GROQ_API_KEY")),
        ]
    );
    assert_eq!(
        config.agents[2].backend.base_url,
        "https://api.groq.com/openai/v1"
    );
    assert_eq!(config.orchestrator.max_new_answers_per_agent, Some(2));
    // Written out (at their defaults) so users find the turn-worker restart limit.
    assert_eq!(config.orchestrator.max_turn_restarts, 3);
    assert_eq!(config.orchestrator.restart_window_seconds, 60);
    assert_eq!(config.timeouts.orchestrator_timeout_seconds, 600);
}

#[test]
fn sim_configs_take_their_url_from_the_environment_or_the_default() {
    let default = example("three_agents_sim.yaml").config;
    for agent in &default.agents {
        assert_eq!(agent.backend.provider, "sim");
        assert_eq!(agent.backend.wire, WireFormat::OpenAiChat);
        assert_eq!(agent.backend.base_url, "http://127.0.0.1:7399/v1");
    }

    let env = env_of(&[("CONCLAVE_SIM_URL", "http://10.1.2.3:9000/v1/")]);
    let path = configs_dir().join("late_answer_sim.yaml");
    let late = load_file(&path, &env).unwrap().config;
    for agent in &late.agents {
        assert_eq!(agent.backend.base_url, "http://10.1.2.3:9000/v1");
    }
    assert_eq!(
        late.agents[2].backend.model,
        "sim-gamma:first_byte_ms=1500,policy=answer"
    );
    assert_eq!(late.orchestrator.max_new_answers_per_agent, Some(1));
    assert_eq!(late.orchestrator.restart_policy, RestartPolicy::Cancel);
}

#[test]
fn local_servers_need_no_keys_and_pass_through_request_options() {
    let config = example("local_vllm_ollama.yaml").config;
    let vllm = &config.agents[0].backend;
    assert_eq!(vllm.provider, "vllm");
    assert_eq!(vllm.base_url, "http://localhost:8000/v1");
    let body: serde_json::Value =
        serde_json::from_str(vllm.extra_body.as_deref().expect("extra_body")).unwrap();
    assert_eq!(body["chat_template_kwargs"]["enable_thinking"], false);
    assert_eq!(config.agents[1].backend.provider, "ollama");
    assert_eq!(config.agents[1].backend.max_retries, 1);
    assert_eq!(config.timeouts.connect_timeout_seconds, 3);
    assert!(missing_api_keys(&config, &no_env).is_empty());
}

// ---------------------------------------------------------------------------------------
// MassGen compatibility

#[test]
fn massgen_style_config_resolves_to_the_expected_session() {
    let loaded = example("massgen_style.yaml");
    let config = &loaded.config;

    let ids: Vec<&str> = config.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["gpt-5-nano", "grok-3-mini", "cerebras-llama"]);

    let openai = &config.agents[0];
    assert_eq!(openai.backend.wire, WireFormat::OpenAiResponses);
    assert_eq!(openai.backend.provider, "openai");
    assert_eq!(openai.backend.base_url, "https://api.openai.com/v1");
    assert_eq!(
        openai.backend.api_key_env.as_deref(),
        Some("OPENAI_API_KEY")
    );
    assert_eq!(openai.backend.max_retries, 2);
    assert_eq!(
        openai.system_message.as_deref(),
        Some("You are a thorough researcher.")
    );
    assert_eq!(openai.backend.extra_body, None);
    assert_eq!(
        openai.backend.options,
        BackendOptions {
            reasoning_effort: Some("low".into()),
            reasoning_summary: Some("auto".into()),
            web_search: true,
            ..BackendOptions::default()
        }
    );

    let grok = &config.agents[1].backend;
    assert_eq!(
        (grok.provider.as_str(), grok.base_url.as_str()),
        ("xai", "https://api.x.ai/v1")
    );
    assert_eq!(grok.temperature, Some(0.5));

    let cerebras = &config.agents[2].backend;
    assert_eq!(cerebras.provider, "cerebras");
    assert_eq!(cerebras.api_key_env.as_deref(), Some("CEREBRAS_API_KEY"));

    assert_eq!(
        config.orchestrator,
        OrchestratorSettings {
            max_new_answers_per_agent: Some(2),
            // Read (answers' workspace snapshots are stored there), though no agent here has
            // a workspace.
            snapshot_storage: Some("snapshots".into()),
            ..OrchestratorSettings::default()
        }
    );
    assert_eq!(
        config.timeouts,
        TimeoutSettings {
            orchestrator_timeout_seconds: 1800,
            ..TimeoutSettings::default()
        }
    );
    assert_eq!(config.display, DisplayKind::Tui);

    let warnings = warning_texts(&loaded);
    for path in [
        "orchestrator.agent_temporary_workspace",
        "orchestrator.voting_sensitivity",
        "orchestrator.answer_novelty_requirement",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(path)),
            "no warning for {path}: {warnings:#?}"
        );
    }
    assert!(
        warnings.iter().all(|w| w.contains("not supported yet")),
        "{warnings:#?}"
    );
}

#[test]
fn single_agent_form_is_accepted() {
    let loaded = load(
        "agent:\n  id: solo\n  backend:\n    type: openai\n    model: gpt-4o-mini\n  \
         system_message: Be brief.\n",
    );
    let config = loaded.config;
    assert_eq!(config.agents.len(), 1);
    assert_eq!(config.agents[0].id, "solo");
    assert_eq!(
        config.agents[0].system_message.as_deref(),
        Some("Be brief.")
    );
    assert_eq!(config.agents[0].node, None);
    assert!(loaded.warnings.is_empty());
}

#[test]
fn defaults_fill_everything_the_config_leaves_out() {
    let config = load(
        "agents:\n  - backend: {model: gpt-4o-mini}\n  - backend: {type: grok, model: grok-4}\n",
    )
    .config;
    assert_eq!(
        config.agents[0].id, "agent1",
        "MassGen names id-less agents agent{{n}}"
    );
    assert_eq!(config.agents[1].id, "agent2");
    assert_eq!(
        config.agents[0].backend.provider, "openai",
        "type inferred from the model name"
    );
    assert_eq!(config.agents[0].backend.max_retries, 2);
    assert_eq!(config.agents[0].backend.temperature, None);
    assert_eq!(config.orchestrator, OrchestratorSettings::default());
    assert_eq!(config.timeouts, TimeoutSettings::default());
    assert_eq!(config.display, DisplayKind::Plain);
}

#[test]
fn conclave_extras_are_read() {
    let yaml = r#"
agents:
  - id: a
    node: gpu-1
    backend:
      type: chatcompletion
      model: m
      base_url: http://10.0.0.2:8000/v1
      api_key_env: MY_GATEWAY_KEY
      max_retries: 5
      top_p: 0.9
      extra_body: {guided_json: {type: object}}
orchestrator:
  max_total_answers: 6
  restart_policy: finish
  max_workflow_retries: 1
  skip_final_presentation: true
  max_turn_restarts: 5
  restart_window_seconds: 120
timeout_settings:
  turn_timeout_seconds: 90
  stall_timeout_seconds: 15
  connect_timeout_seconds: 2
ui:
  display_type: json
"#;
    let loaded = load(yaml);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let config = loaded.config;
    let agent = &config.agents[0];
    assert_eq!(agent.node.as_deref(), Some("gpu-1"));
    assert_eq!(agent.backend.provider, "chatcompletion");
    assert_eq!(agent.backend.api_key_env.as_deref(), Some("MY_GATEWAY_KEY"));
    assert_eq!(agent.backend.max_retries, 5);
    assert_eq!(agent.backend.top_p, Some(0.9));
    assert_eq!(
        agent.backend.extra_body.as_deref(),
        Some(r#"{"guided_json":{"type":"object"}}"#)
    );
    assert_eq!(
        config.orchestrator,
        OrchestratorSettings {
            max_new_answers_per_agent: None,
            max_total_answers: Some(6),
            restart_policy: RestartPolicy::Finish,
            max_workflow_retries: 1,
            skip_final_presentation: true,
            max_cost_usd: None,
            max_total_tokens: None,
            pricing: Vec::new(),
            node_join_timeout_seconds: 30,
            max_turn_restarts: 5,
            restart_window_seconds: 120,
            single_call: false,
            max_midstream_injections_per_round: 2,
            inject_fallback: RestartPolicy::Cancel,
            snapshot_storage: None,
        }
    );
    assert_eq!(
        config.timeouts,
        TimeoutSettings {
            orchestrator_timeout_seconds: 1800,
            turn_timeout_seconds: 90,
            stall_timeout_seconds: 15,
            connect_timeout_seconds: 2,
        }
    );
    assert_eq!(config.display, DisplayKind::Json);
}

#[test]
fn display_types_map_to_display_kinds() {
    for (value, expected) in [
        ("rich_terminal", DisplayKind::Tui),
        ("textual_terminal", DisplayKind::Tui),
        ("tui", DisplayKind::Tui),
        ("simple", DisplayKind::Plain),
        ("terminal", DisplayKind::Plain),
        ("json", DisplayKind::Json),
        ("silent", DisplayKind::Quiet),
        ("quiet", DisplayKind::Quiet),
        ("none", DisplayKind::Quiet),
    ] {
        let yaml =
            format!("agent: {{backend: {{model: gpt-4o}}}}\nui: {{display_type: {value}}}\n");
        assert_eq!(load(&yaml).config.display, expected, "{value}");
    }
    // Some MassGen examples write `ui.type`.
    let loaded = load("agent: {backend: {model: gpt-4o}}\nui: {type: quiet}\n");
    assert_eq!(loaded.config.display, DisplayKind::Quiet);
}

#[test]
fn chatcompletion_guesses_provider_and_key_from_the_base_url() {
    let config = load(
        r#"
agents:
  - id: groq
    backend: {type: chatcompletion, model: llama-3.1-8b-instant, base_url: "https://api.groq.com/openai/v1/"}
  - id: local
    backend: {type: chatcompletion, model: m, base_url: "http://localhost:9000/v1"}
  - id: named
    backend: {type: chatcompletion, model: m, base_url: "https://api.groq.com/openai/v1", api_key_env: OTHER_KEY}
  - id: inference
    backend: {type: inference, model: m, base_url: "http://localhost:30000/v1"}
  - id: openai
    backend: {type: chatcompletion, model: gpt-4o, base_url: "https://api.openai.com/v1"}
"#,
    )
    .config;
    let b = |i: usize| &config.agents[i].backend;
    assert_eq!(b(0).provider, "groq");
    assert_eq!(b(0).api_key_env.as_deref(), Some("GROQ_API_KEY"));
    assert_eq!(
        b(0).base_url,
        "https://api.groq.com/openai/v1",
        "trailing slash dropped"
    );
    assert_eq!(b(1).provider, "chatcompletion");
    assert_eq!(b(1).api_key_env, None);
    assert_eq!(b(2).provider, "groq");
    assert_eq!(b(2).api_key_env.as_deref(), Some("OTHER_KEY"));
    assert_eq!(b(3).provider, "chatcompletion");
    // OpenAI's host over Chat Completions is the `openai_chat` preset, not the Responses one.
    assert_eq!(b(4).wire, WireFormat::OpenAiChat);
    assert_eq!(b(4).provider, "openai_chat");
    assert_eq!(b(4).api_key_env.as_deref(), Some("OPENAI_API_KEY"));
}

#[test]
fn legacy_orchestrator_timeout_is_read_unless_timeout_settings_sets_it() {
    let base = "agent: {backend: {model: gpt-4o}}\norchestrator: {timeout: {orchestrator_timeout_seconds: 77}}\n";
    assert_eq!(load(base).config.timeouts.orchestrator_timeout_seconds, 77);

    let both = format!("{base}timeout_settings: {{orchestrator_timeout_seconds: 99}}\n");
    let loaded = load(&both);
    assert_eq!(loaded.config.timeouts.orchestrator_timeout_seconds, 99);
    assert!(
        warning_texts(&loaded)
            .iter()
            .any(|w| w.starts_with("orchestrator.timeout.orchestrator_timeout_seconds")),
        "{:#?}",
        loaded.warnings
    );
}

#[test]
fn massgen_request_parameters_become_extra_body() {
    let loaded = load(
        r#"
agent:
  backend:
    type: vllm
    model: m
    top_k: 20
    seed: 7
    stop: ["\n\n"]
    text: {verbosity: low}
    extra_body: {seed: 8}
"#,
    );
    let backend = &loaded.config.agents[0].backend;
    let body: serde_json::Value =
        serde_json::from_str(backend.extra_body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"top_k": 20, "seed": 8, "stop": ["\n\n"]})
    );
    assert_eq!(backend.options.verbosity.as_deref(), Some("low"));
    assert_eq!(
        warning_texts(&loaded),
        vec![
            "agent.backend.extra_body.seed: also set directly on the backend; the `extra_body` value is used"
        ]
    );
}

#[test]
fn keys_keep_their_case_and_dots() {
    let loaded = load(
        r#"
agents:
  - id: Agent_A
    system_message: "Mixed Case Stays"
    backend:
      type: openai
      model: GPT-4o-Mini
      extra_body: {"Some.Key": {"CamelCase": 1}}
My.Top.Key: 1
"#,
    );
    let agent = &loaded.config.agents[0];
    assert_eq!(agent.id, "Agent_A");
    assert_eq!(agent.system_message.as_deref(), Some("Mixed Case Stays"));
    assert_eq!(agent.backend.model, "GPT-4o-Mini");
    assert_eq!(
        agent.backend.extra_body.as_deref(),
        Some(r#"{"Some.Key":{"CamelCase":1}}"#)
    );
    assert_eq!(
        warning_texts(&loaded),
        vec!["My.Top.Key: unknown key, ignored"]
    );
}

#[test]
fn yaml_anchors_and_aliases_work() {
    let loaded = load(
        r#"
x-backend: &fast {type: openai, model: gpt-4o-mini, temperature: 0.2}
agents:
  - id: a
    backend: *fast
  - id: b
    backend: *fast
"#,
    );
    assert_eq!(
        warning_texts(&loaded),
        vec!["x-backend: unknown key, ignored"]
    );
    let config = loaded.config;
    assert_eq!(config.agents[1].backend.model, "gpt-4o-mini");
    assert_eq!(config.agents[1].backend.temperature, Some(0.2));
}

// ---------------------------------------------------------------------------------------
// Provider options and backend types

#[test]
fn provider_options_land_in_options_not_extra_body() {
    let loaded = load(
        r#"
agents:
  - id: gpt
    backend:
      type: openai
      model: gpt-5-mini
      reasoning: {effort: MEDIUM, summary: detailed}
      text: {verbosity: high}
      enable_web_search: true
      enable_code_interpreter: "${CODE:-true}"
      thinking_budget: 2048
      api_version: "2025-03-01-preview"
  - id: local
    backend:
      type: vllm
      model: m
      reasoning_effort: low
      verbosity: low
      enable_code_execution: false
"#,
    );
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let gpt = &loaded.config.agents[0].backend;
    assert_eq!(
        gpt.options,
        BackendOptions {
            reasoning_effort: Some("medium".into()),
            reasoning_summary: Some("detailed".into()),
            verbosity: Some("high".into()),
            thinking_budget: Some(2048),
            web_search: true,
            code_execution: true,
            api_version: Some("2025-03-01-preview".into()),
        }
    );
    assert_eq!(gpt.extra_body, None);
    let local = &loaded.config.agents[1].backend;
    assert_eq!(
        local.options,
        BackendOptions {
            reasoning_effort: Some("low".into()),
            verbosity: Some("low".into()),
            ..BackendOptions::default()
        }
    );
    assert_eq!(local.extra_body, None);

    // Values only a host knows still travel raw.
    let raw = load(
        "agent: {backend: {type: groq, model: qwen/qwen3-32b, extra_body: {reasoning_effort: none}}}\n",
    );
    let backend = &raw.config.agents[0].backend;
    assert_eq!(backend.options.reasoning_effort, None);
    assert_eq!(
        backend.extra_body.as_deref(),
        Some(r#"{"reasoning_effort":"none"}"#)
    );
}

/// Backend types of every wire format, each with what it needs to load: `(type, yaml, wire)`.
const WIRE_TYPES: &[(&str, &str, WireFormat)] = &[
    (
        "openai",
        "agents:\n  - id: a\n    backend: {type: openai, model: gpt-5-mini}\n",
        WireFormat::OpenAiResponses,
    ),
    (
        "openai (implied by the model)",
        "agents:\n  - id: a\n    backend: {model: gpt-4o-mini}\n",
        WireFormat::OpenAiResponses,
    ),
    (
        "openai_chat",
        "agents:\n  - id: a\n    backend: {type: openai_chat, model: gpt-4o-mini}\n",
        WireFormat::OpenAiChat,
    ),
    (
        "groq",
        "agents:\n  - id: a\n    backend: {type: groq, model: llama-3.3-70b-versatile}\n",
        WireFormat::OpenAiChat,
    ),
    (
        "claude",
        "agents:\n  - id: a\n    backend: {type: claude, model: claude-sonnet-4-5}\n",
        WireFormat::Anthropic,
    ),
    (
        "claude (implied by the model)",
        "agents:\n  - id: a\n    backend: {model: claude-sonnet-4-5}\n",
        WireFormat::Anthropic,
    ),
    (
        "gemini",
        "agents:\n  - id: a\n    backend: {type: gemini, model: gemini-2.5-flash}\n",
        WireFormat::Gemini,
    ),
    (
        "azure_openai",
        "agents:\n  - id: a\n    backend: {type: azure_openai, model: gpt-4o, base_url: \"https://r.openai.azure.com\"}\n",
        WireFormat::AzureOpenAi,
    ),
    (
        "claude_code",
        "agents:\n  - id: a\n    backend: {type: claude_code, model: sonnet}\n",
        WireFormat::ClaudeCode,
    ),
];

#[test]
fn every_backend_type_loads_on_its_wire_format() {
    for (what, yaml, wire) in WIRE_TYPES {
        let loaded = load_str(yaml, "test.yaml", &no_env)
            .unwrap_or_else(|err| panic!("{what}: refused: {err}"));
        assert!(loaded.warnings.is_empty(), "{what}: {:#?}", loaded.warnings);
        assert_eq!(loaded.config.agents[0].backend.wire, *wire, "{what}");
    }
}

#[test]
fn massgen_types_conclave_does_not_run_are_refused_with_what_works() {
    for (name, what) in [("ag2", "AG2 framework agents"), ("poe", "api.poe.com")] {
        let err = load_err(&format!(
            "agents:\n  - id: a\n    backend: {{type: {name}, model: m}}\n"
        ));
        let text = err.to_string();
        assert!(
            matches!(err, ConfigError::UnsupportedBackendType { .. }),
            "{name}: {err:?}"
        );
        assert_eq!(err.key_path(), Some("agents[0].backend.type"), "{text}");
        for needle in [
            "test.yaml",
            &format!("backend type `{name}`"),
            what,
            "not supported by conclave",
            &format!("supported: {}", supported_backend_types()),
        ] {
            assert!(text.contains(needle), "{name}: no {needle:?} in: {text}");
        }
    }
    for name in [
        "openai",
        "openai_chat",
        "claude",
        "gemini",
        "azure_openai",
        "claude_code",
    ] {
        assert!(
            supported_backend_types().contains(name),
            "{name}: {}",
            supported_backend_types()
        );
    }
}

#[test]
fn azure_openai_needs_a_base_url() {
    let err = load_err("agents:\n  - id: a\n    backend: {type: azure_openai, model: gpt-4o}\n");
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
    for needle in [
        "agents[0].backend.base_url",
        "openai.azure.com",
        "AZURE_OPENAI_ENDPOINT",
        "deployment",
    ] {
        assert!(text.contains(needle), "no {needle:?} in: {text}");
    }
}

#[test]
fn wire_specific_thinking_rules_apply() {
    let text = load_err(
        "agent: {backend: {type: claude, model: claude-sonnet-4-5, thinking: {type: enabled, budget_tokens: 1000}}}\n",
    )
    .to_string();
    assert!(
        text.contains("agent.backend.thinking.budget_tokens") && text.contains("at least 1024"),
        "{text}"
    );
    let ok = load(
        "agent: {backend: {type: claude, model: claude-sonnet-4-5, max_tokens: 2000, thinking: {type: enabled, budget_tokens: 4000}}}\n",
    );
    assert_eq!(
        ok.config.agents[0].backend.options.thinking_budget,
        Some(4000)
    );

    let dynamic = load(
        "agent: {backend: {type: gemini, model: gemini-2.5-pro, thinking_config: {thinking_budget: -1}}}\n",
    );
    assert_eq!(
        dynamic.config.agents[0].backend.options.thinking_budget,
        None
    );
    let text = load_err(
        "agent: {backend: {type: gemini, model: gemini-2.5-pro, thinking_budget: 50000}}\n",
    )
    .to_string();
    assert!(
        text.contains("agent.backend.thinking_budget") && text.contains("32768"),
        "{text}"
    );

    let code = load(
        "agent: {backend: {type: claude_code, model: sonnet, max_thinking_tokens: 0, base_url: ./bin/claude}}\n",
    );
    let backend = &code.config.agents[0].backend;
    assert_eq!(backend.options.thinking_budget, Some(0));
    assert_eq!(backend.base_url, "./bin/claude");
}

// ---------------------------------------------------------------------------------------
// Environment

#[test]
fn dotenv_is_loaded_and_the_real_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# test\nPATH=/from/dotenv\nexport CONCLAVE_TEST_ONLY_IN_DOTENV=\"http://10.9.8.7:7399/v1\"\n",
    )
    .unwrap();
    let env = EnvLookup::from_process_and_dotenv(dir.path()).unwrap();
    assert_eq!(env.dotenv_path(), Some(dir.path().join(".env").as_path()));
    assert_eq!(
        env.get("CONCLAVE_TEST_ONLY_IN_DOTENV").as_deref(),
        Some("http://10.9.8.7:7399/v1")
    );
    if let Ok(real_path) = std::env::var("PATH") {
        assert_eq!(env.get("PATH"), Some(real_path), "process env beats .env");
    }

    let yaml = "agent:\n  backend:\n    type: sim\n    model: sim\n    base_url: ${CONCLAVE_TEST_ONLY_IN_DOTENV}\n";
    let config = load_str(yaml, "dotenv.yaml", &env.as_fn()).unwrap().config;
    assert_eq!(config.agents[0].backend.base_url, "http://10.9.8.7:7399/v1");

    let empty = tempfile::tempdir().unwrap();
    let env = EnvLookup::from_process_and_dotenv(empty.path()).unwrap();
    assert_eq!(env.dotenv_path(), None);
    assert_eq!(env.get("CONCLAVE_TEST_ONLY_IN_DOTENV"), None);
}

#[test]
fn malformed_dotenv_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "A=1\nthis is not an assignment\n").unwrap();
    let err = EnvLookup::from_process_and_dotenv(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains(".env:2"), "{err}");
}

#[test]
fn variables_expand_in_strings_numbers_and_booleans() {
    let env = EnvLookup::from_map([("MODEL", "gpt-4o-mini"), ("TEMP", "0.25"), ("SKIP", "true")]);
    let yaml = r#"
agent:
  backend:
    type: openai
    model: ${MODEL}
    temperature: ${TEMP}
    max_tokens: ${MAX_TOKENS:-512}
  system_message: "Use $${PLACEHOLDER} literally; cost is $5."
orchestrator:
  skip_final_presentation: ${SKIP}
"#;
    let config = load_str(yaml, "vars.yaml", &env.as_fn()).unwrap().config;
    let agent = &config.agents[0];
    assert_eq!(agent.backend.model, "gpt-4o-mini");
    assert_eq!(agent.backend.temperature, Some(0.25));
    assert_eq!(agent.backend.max_tokens, Some(512));
    assert_eq!(
        agent.system_message.as_deref(),
        Some("Use ${PLACEHOLDER} literally; cost is $5.")
    );
    assert!(config.orchestrator.skip_final_presentation);
}

#[test]
fn unset_variable_is_an_error_naming_it_and_the_key() {
    let err =
        load_err("agent:\n  backend:\n    type: openai\n    model: ${CONCLAVE_NOT_SET_ANYWHERE}\n");
    let text = err.to_string();
    assert!(matches!(err, ConfigError::UnsetVariable { .. }), "{err:?}");
    for needle in [
        "CONCLAVE_NOT_SET_ANYWHERE",
        "agent.backend.model",
        "test.yaml",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in: {text}");
    }
}

#[test]
fn mcp_server_references_are_kept_for_the_agent_node() {
    // MassGen configs put `${TOKEN}` into MCP server env blocks: the loader keeps the
    // reference (the node that runs the agent expands it), so an unset variable is no error.
    let loaded = load(
        "agent:\n  backend:\n    type: openai\n    model: gpt-4o\n    mcp_servers:\n      - {name: s, type: stdio, command: x, env: {TOKEN: \"${UNSET_TOKEN}\"}}\n",
    );
    assert!(
        warning_texts(&loaded).is_empty(),
        "{:?}",
        warning_texts(&loaded)
    );
    assert_eq!(
        loaded.config.agents[0].tools.mcp_servers[0].transport,
        conclave_protocol::tools::McpTransport::Stdio {
            command: "x".into(),
            args: Vec::new(),
            env: vec![("TOKEN".into(), "${UNSET_TOKEN}".into())],
            cwd: None,
        }
    );
}

// ---------------------------------------------------------------------------------------
// Secrets

#[test]
fn api_key_reference_becomes_api_key_env_and_no_secret_is_kept() {
    let env = env_of(&[("MY_OPENAI_KEY", "sk-very-secret-value")]);
    let yaml = "agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o, api_key: \"${MY_OPENAI_KEY}\"}\n  \
                - id: b\n    backend: {type: openai, model: gpt-4o, api_key: \"\"}\n";
    let config = load_str(yaml, "keys.yaml", &env).unwrap().config;
    assert_eq!(
        config.agents[0].backend.api_key_env.as_deref(),
        Some("MY_OPENAI_KEY")
    );
    assert_eq!(
        config.agents[1].backend.api_key_env.as_deref(),
        Some("OPENAI_API_KEY"),
        "an empty api_key falls back to the provider's variable"
    );
    let journaled = serde_json::to_string(&config).unwrap();
    assert!(!journaled.contains("sk-very-secret-value"));
}

#[test]
fn literal_api_key_is_refused_without_echoing_it() {
    let err =
        load_err("agent:\n  backend: {type: openai, model: gpt-4o, api_key: sk-live-123456}\n");
    let text = err.to_string();
    assert!(matches!(err, ConfigError::LiteralApiKey { .. }), "{err:?}");
    assert!(
        text.contains("agent.backend.api_key") && text.contains("test.yaml"),
        "{text}"
    );
    assert!(
        !text.contains("sk-live-123456"),
        "the secret leaked: {text}"
    );
}

#[test]
fn missing_api_keys_reports_local_agents_only() {
    let config = example("three_agents_default.yaml").config;
    let env = env_of(&[("OPENAI_API_KEY", "sk-x"), ("XAI_API_KEY", "  ")]);
    assert_eq!(
        missing_api_keys(&config, &env),
        vec![
            ("grok".to_owned(), "XAI_API_KEY".to_owned()),
            ("llama-groq".to_owned(), "GROQ_API_KEY".to_owned()),
        ]
    );

    let mut remote = config.clone();
    for agent in &mut remote.agents {
        agent.node = Some("elsewhere".to_owned());
    }
    assert!(missing_api_keys(&remote, &no_env).is_empty());

    // Local servers need no key unless the config names one.
    let local = load(
        "agents:\n  - id: plain\n    backend: {type: vllm, model: m}\n  \
         - id: gated\n    backend: {type: vllm, model: m, api_key_env: GATEWAY_KEY}\n",
    )
    .config;
    assert_eq!(
        missing_api_keys(&local, &no_env),
        vec![("gated".to_owned(), "GATEWAY_KEY".to_owned())]
    );
}

// ---------------------------------------------------------------------------------------
// Warnings

#[test]
fn unknown_keys_warn_with_their_path() {
    let loaded = load(
        r#"
agents:
  - id: a
    backend: {type: openai, model: gpt-4o}
  - id: b
    backend: {type: openai, model: gpt-4o, foo: 1}
    colour: blue
orchestrator:
  max_new_answer_per_agent: 3
surprise: true
"#,
    );
    assert_eq!(
        warning_texts(&loaded),
        vec![
            "agents[1].backend.foo: unknown key, ignored",
            "agents[1].colour: unknown key, ignored",
            "orchestrator.max_new_answer_per_agent: unknown key, ignored",
            "surprise: unknown key, ignored",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Errors

/// `(what, yaml, key path the message must name, another fragment it must contain)`.
const BAD_CONFIGS: &[(&str, &str, &str, &str)] = &[
    (
        "agents is a mapping",
        "agents: {id: a, backend: {model: gpt-4o}}\n",
        "`agents`",
        "a list of agents",
    ),
    (
        "agent entry is a string",
        "agents:\n  - id: a\n    backend: {model: gpt-4o}\n  - just-a-name\n",
        "agents[1]",
        "mapping",
    ),
    (
        "backend is a string",
        "agents:\n  - id: a\n    backend: openai\n",
        "agents[0].backend",
        "mapping",
    ),
    (
        "temperature is text",
        "agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o, temperature: hot}\n",
        "agents[0].backend.temperature",
        "a number",
    ),
    (
        "temperature out of range",
        "agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o}\n  - id: b\n    backend: {type: openai, model: gpt-4o, temperature: 2.5}\n",
        "agents[1].backend.temperature",
        "from 0 to 2",
    ),
    (
        "top_p out of range",
        "agent: {backend: {model: gpt-4o, top_p: 1.5}}\n",
        "agent.backend.top_p",
        "from 0 to 1",
    ),
    (
        "max_tokens zero",
        "agent: {backend: {model: gpt-4o, max_tokens: 0}}\n",
        "agent.backend.max_tokens",
        "from 1",
    ),
    (
        "bad restart policy",
        "agent: {backend: {model: gpt-4o}}\norchestrator: {restart_policy: sometimes}\n",
        "orchestrator.restart_policy",
        "`cancel`",
    ),
    (
        "bad display type",
        "agent: {backend: {model: gpt-4o}}\nui: {display_type: fancy}\n",
        "ui.display_type",
        "rich_terminal",
    ),
    (
        "logging_enabled not a boolean",
        "agent: {backend: {model: gpt-4o}}\nui: {logging_enabled: sometimes}\n",
        "ui.logging_enabled",
        "true or false",
    ),
    (
        "unknown backend type",
        "agents:\n  - id: a\n    backend: {type: frobnicator, model: m}\n",
        "agents[0].backend.type",
        "supported: openai",
    ),
    (
        "unsupported backend type ag2",
        "agents:\n  - id: a\n    backend: {type: ag2}\n",
        "agents[0].backend.type",
        "AG2",
    ),
    (
        "type cannot be inferred",
        "agents:\n  - id: a\n    backend: {model: llama-3.1-8b}\n",
        "agents[0].backend.type",
        "cannot be guessed",
    ),
    (
        "duplicate agent ids",
        "agents:\n  - id: same\n    backend: {model: gpt-4o}\n  - id: same\n    backend: {model: gpt-4o}\n",
        "agents[1].id",
        "agents[0].id",
    ),
    (
        "duplicate id with a default id",
        "agents:\n  - backend: {model: gpt-4o}\n  - id: agent1\n    backend: {model: gpt-4o}\n",
        "agents[1].id",
        "duplicate agent id `agent1`",
    ),
    (
        "empty agents list",
        "agents: []\n",
        "`agents`",
        "at least one agent",
    ),
    (
        "no agents at all",
        "ui: {display_type: simple}\n",
        "`agents`",
        "agent:",
    ),
    (
        "both agents and agent",
        "agents:\n  - backend: {model: gpt-4o}\nagent: {backend: {model: gpt-4o}}\n",
        "`agent`",
        "not both",
    ),
    (
        "missing backend",
        "agents:\n  - id: a\n",
        "agents[0].backend",
        "type: ..., model: ...",
    ),
    (
        "missing model",
        "agents:\n  - id: a\n    backend: {type: openai}\n",
        "agents[0].backend.model",
        "needs a model",
    ),
    (
        "empty model",
        "agents:\n  - id: a\n    backend: {type: openai, model: \"  \"}\n",
        "agents[0].backend.model",
        "must not be empty",
    ),
    (
        "id is a number",
        "agents:\n  - id: 7\n    backend: {model: gpt-4o}\n",
        "agents[0].id",
        "a string",
    ),
    (
        "chatcompletion without base_url",
        "agents:\n  - id: a\n    backend: {type: chatcompletion, model: m}\n",
        "agents[0].backend.base_url",
        "no default URL",
    ),
    (
        "base_url not http",
        "agents:\n  - id: a\n    backend: {type: vllm, model: m, base_url: \"localhost:8000\"}\n",
        "agents[0].backend.base_url",
        "http(s) URL",
    ),
    (
        "literal api key",
        "agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o, api_key: sk-abc123}\n",
        "agents[0].backend.api_key",
        "api_key_env",
    ),
    (
        "api key with a default",
        "agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o, api_key: \"${K:-sk-abc}\"}\n",
        "agents[0].backend.api_key",
        "a default",
    ),
    (
        "api_key_env holding a key",
        "agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o, api_key_env: sk-abc-123}\n",
        "agents[0].backend.api_key_env",
        "NAME of an environment variable",
    ),
    (
        "api_key and api_key_env disagree",
        "agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o, api_key: \"${A}\", api_key_env: B}\n",
        "agents[0].backend.api_key",
        "keep one",
    ),
    (
        "negative timeout",
        "agent: {backend: {model: gpt-4o}}\ntimeout_settings: {orchestrator_timeout_seconds: -5}\n",
        "timeout_settings.orchestrator_timeout_seconds",
        "seconds from 1",
    ),
    (
        "zero timeout",
        "agent: {backend: {model: gpt-4o}}\ntimeout_settings: {turn_timeout_seconds: 0}\n",
        "timeout_settings.turn_timeout_seconds",
        "seconds from 1",
    ),
    (
        "fractional timeout",
        "agent: {backend: {model: gpt-4o}}\ntimeout_settings: {stall_timeout_seconds: 2.5}\n",
        "timeout_settings.stall_timeout_seconds",
        "whole number",
    ),
    (
        "huge timeout",
        "agent: {backend: {model: gpt-4o}}\ntimeout_settings: {connect_timeout_seconds: 99999999999}\n",
        "timeout_settings.connect_timeout_seconds",
        "30 days",
    ),
    (
        "timeout_settings is a list",
        "agent: {backend: {model: gpt-4o}}\ntimeout_settings: [1, 2]\n",
        "timeout_settings",
        "a mapping",
    ),
    (
        "max_new_answers_per_agent zero",
        "agent: {backend: {model: gpt-4o}}\norchestrator: {max_new_answers_per_agent: 0}\n",
        "orchestrator.max_new_answers_per_agent",
        "null",
    ),
    (
        "max_total_answers text",
        "agent: {backend: {model: gpt-4o}}\norchestrator: {max_total_answers: many}\n",
        "orchestrator.max_total_answers",
        "whole number",
    ),
    (
        "negative max_turn_restarts",
        "agent: {backend: {model: gpt-4o}}\norchestrator: {max_turn_restarts: -1}\n",
        "orchestrator.max_turn_restarts",
        "from 0 to 100",
    ),
    (
        "zero restart window",
        "agent: {backend: {model: gpt-4o}}\norchestrator: {restart_window_seconds: 0}\n",
        "orchestrator.restart_window_seconds",
        "seconds from 1",
    ),
    (
        "skip_final_presentation text",
        "agent: {backend: {model: gpt-4o}}\norchestrator: {skip_final_presentation: maybe}\n",
        "orchestrator.skip_final_presentation",
        "true or false",
    ),
    (
        "extra_body a list",
        "agent: {backend: {model: gpt-4o, extra_body: [1]}}\n",
        "agent.backend.extra_body",
        "a mapping",
    ),
    (
        "bad reasoning effort",
        "agents:\n  - id: a\n    backend: {type: openai, model: gpt-5, reasoning: {effort: extreme}}\n",
        "agents[0].backend.reasoning.effort",
        "allowed: minimal, low, medium, high",
    ),
    (
        "bad reasoning summary",
        "agent: {backend: {type: openai, model: gpt-5, reasoning: {summary: long}}}\n",
        "agent.backend.reasoning.summary",
        "allowed: auto, concise, detailed",
    ),
    (
        "bad verbosity",
        "agent: {backend: {type: openai, model: gpt-5, text: {verbosity: chatty}}}\n",
        "agent.backend.text.verbosity",
        "allowed: low, medium, high",
    ),
    (
        "reasoning effort given twice, differently",
        "agent: {backend: {type: openai, model: gpt-5, reasoning: {effort: low}, reasoning_effort: high}}\n",
        "agent.backend.reasoning_effort",
        "`agent.backend.reasoning.effort` sets it to `low`",
    ),
    (
        "web search not a boolean",
        "agent: {backend: {type: openai, model: gpt-5, enable_web_search: often}}\n",
        "agent.backend.enable_web_search",
        "true or false",
    ),
    (
        "negative thinking budget on OpenAI",
        "agent: {backend: {type: openai, model: gpt-5, thinking_budget: -5}}\n",
        "agent.backend.thinking_budget",
        "from 0",
    ),
    (
        "api_version with URL characters",
        "agent: {backend: {type: openai, model: gpt-5, api_version: \"v1?x=1\"}}\n",
        "agent.backend.api_version",
        "2024-10-21",
    ),
    (
        "MassGen v1 format",
        "models: [gpt-4o]\nnum_agents: 3\n",
        "`models`",
        "v1",
    ),
    (
        "bad variable reference",
        "agent: {backend: {model: \"${OOPS\"}}\n",
        "agent.backend.model",
        "unterminated",
    ),
];

#[test]
fn bad_configs_name_the_file_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    assert!(BAD_CONFIGS.len() >= 12);
    for (index, (what, yaml, key_path, fragment)) in BAD_CONFIGS.iter().enumerate() {
        let path = dir.path().join(format!("bad-{index:02}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let err = match load_file(&path, &no_env) {
            Ok(loaded) => panic!("{what}: expected an error, got {:#?}", loaded.config),
            Err(err) => err,
        };
        let text = err.to_string();
        let file_name = format!("bad-{index:02}.yaml");
        assert!(text.contains(&file_name), "{what}: no file name in: {text}");
        assert!(
            text.contains(key_path),
            "{what}: no `{key_path}` in: {text}"
        );
        assert!(
            text.contains(fragment),
            "{what}: no {fragment:?} in: {text}"
        );
    }
}

#[test]
fn malformed_yaml_reports_the_line() {
    let err = load_err("agents:\n  - id: a\n    backend: {type: openai\n  model: x\n");
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Yaml { .. }), "{err:?}");
    assert!(
        text.contains("test.yaml") && text.contains("line"),
        "{text}"
    );

    let err = load_err("- just\n- a list\n").to_string();
    assert!(
        err.contains("test.yaml") && err.contains("top level must be a mapping"),
        "{err}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let err = load_file(Path::new("/definitely/not/here.yaml"), &no_env).unwrap_err();
    assert!(
        err.to_string().contains("/definitely/not/here.yaml"),
        "{err}"
    );
}

#[test]
fn hostile_inputs_never_panic() {
    let deep_list = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_map = format!("a: {}1{}", "{b: ".repeat(10_000), "}".repeat(10_000));
    let deep_block: String = (0..3000)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    let inputs: Vec<String> = vec![
        deep_block,
        String::new(),
        "~".into(),
        "42".into(),
        "\"just text\"".into(),
        "agents: ~".into(),
        "agents: [~, 1, [], {}]".into(),
        "agent: {backend: {model: [1, 2], type: {a: b}}}".into(),
        "agent: {backend: {model: gpt-4o, temperature: .nan}}".into(),
        "agent: {backend: {model: gpt-4o, temperature: .inf}}".into(),
        "agent: {backend: {model: gpt-4o, max_tokens: 184467440737095516150}}".into(),
        "agent: {backend: {model: gpt-4o, extra_body: {a: .inf}}}".into(),
        "agent: {backend: {model: gpt-4o, extra_body: \"{not json\"}}".into(),
        "anchors: &a {x: 1}\nagent: {backend: *a}".into(),
        "---\na: 1\n---\nb: 2\n".into(),
        "\u{0}\u{1}\u{2}: \u{7f}".into(),
        "agent: {backend: {model: \"${A:-${B:-${C\"}}".into(),
        "agent: {backend: {model: \"$$$${{}}\"}}".into(),
        "? [complex, key]\n: value\n".into(),
        deep_list,
        deep_map,
    ];
    for input in &inputs {
        let _ = load_str(input, "hostile.yaml", &no_env);
    }

    let deep = load_err(
        &(0..100)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect::<String>(),
    );
    assert!(deep.to_string().contains("nested deeper than"), "{deep}");

    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..10 {
        let previous = format!("*a{}", level - 1);
        let items = [previous.as_str(); 10].join(", ");
        laughs.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    let bomb = load_err(&laughs);
    assert!(bomb.to_string().contains("aliases are expanded"), "{bomb}");
}

// ---------------------------------------------------------------------------------------
// --model

#[test]
fn single_agent_infers_the_backend_from_well_known_models() {
    let one = |model: &str| -> SessionConfig { single_agent(model, None, None, &no_env).unwrap() };

    let config = one("gpt-4o-mini");
    assert_eq!(config.agents.len(), 1);
    let agent = &config.agents[0];
    assert_eq!(agent.id, "gpt-4o-mini");
    assert_eq!(agent.backend.provider, "openai");
    assert_eq!(agent.backend.wire, WireFormat::OpenAiResponses);
    assert_eq!(agent.backend.base_url, "https://api.openai.com/v1");
    assert_eq!(agent.backend.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(agent.backend.max_retries, 2);
    assert_eq!(config.timeouts, TimeoutSettings::default());

    assert_eq!(one("grok-4").agents[0].backend.provider, "xai");
    assert_eq!(one("deepseek-chat").agents[0].backend.provider, "deepseek");
    let sim = one("sim:tokens=5");
    assert_eq!(sim.agents[0].backend.provider, "sim");
    assert_eq!(sim.agents[0].backend.base_url, "http://127.0.0.1:7399/v1");
}

#[test]
fn single_agent_takes_backend_and_base_url_flags() {
    let groq = single_agent("llama-3.1-8b-instant", Some("groq"), None, &no_env).unwrap();
    assert_eq!(
        groq.agents[0].backend.base_url,
        "https://api.groq.com/openai/v1"
    );
    assert_eq!(
        groq.agents[0].backend.api_key_env.as_deref(),
        Some("GROQ_API_KEY")
    );

    let generic = single_agent(
        "llama3.2:3b",
        Some("chatcompletion"),
        Some("http://localhost:11434/v1/"),
        &no_env,
    )
    .unwrap();
    assert_eq!(
        generic.agents[0].backend.base_url,
        "http://localhost:11434/v1"
    );
    assert_eq!(generic.agents[0].backend.api_key_env, None);

    let chat = single_agent("gpt-4o-mini", Some("openai_chat"), None, &no_env).unwrap();
    let backend = &chat.agents[0].backend;
    assert_eq!(
        (backend.provider.as_str(), backend.wire),
        ("openai_chat", WireFormat::OpenAiChat)
    );
    assert_eq!(backend.base_url, "https://api.openai.com/v1");
    assert_eq!(backend.api_key_env.as_deref(), Some("OPENAI_API_KEY"));

    let env = env_of(&[("SIM_URL", "http://127.0.0.1:9999/v1")]);
    let sim = single_agent("sim", Some("sim"), Some("${SIM_URL}"), &env).unwrap();
    assert_eq!(sim.agents[0].backend.base_url, "http://127.0.0.1:9999/v1");
}

#[test]
fn single_agent_errors_say_which_flag_to_fix() {
    let err = single_agent("llama-3.1-8b", None, None, &no_env).unwrap_err();
    assert!(matches!(err, ConfigError::UnknownModel { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("--backend") && text.contains("llama-3.1-8b") && text.contains("groq"),
        "{text}"
    );

    let text = single_agent("m", Some("chatcompletion"), None, &no_env)
        .unwrap_err()
        .to_string();
    assert!(text.contains("--base-url"), "{text}");

    let claude = single_agent("claude-sonnet-4-5", None, None, &no_env).unwrap();
    assert_eq!(claude.agents[0].backend.provider, "anthropic");
    assert_eq!(claude.agents[0].backend.wire, WireFormat::Anthropic);

    let text = single_agent("gpt-4o", Some("azure_openai"), None, &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("--base-url") && text.contains("openai.azure.com"),
        "{text}"
    );
    let code = single_agent("sonnet", Some("claude_code"), None, &no_env).unwrap();
    assert_eq!(
        code.agents[0].backend.base_url,
        conclave::config::DEFAULT_CLAUDE_CODE_CLI
    );
    let code = single_agent(
        "sonnet",
        Some("claude_code"),
        Some("/opt/bin/claude"),
        &no_env,
    )
    .unwrap();
    assert_eq!(code.agents[0].backend.base_url, "/opt/bin/claude");

    let text = single_agent("m", Some("ag2"), None, &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("--backend") && text.contains("not supported by conclave"),
        "{text}"
    );

    let text = single_agent("m", Some("nope"), None, &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("--backend") && text.contains("unknown backend type"),
        "{text}"
    );

    let text = single_agent("m", Some("vllm"), Some("ftp://x"), &no_env)
        .unwrap_err()
        .to_string();
    assert!(text.contains("--base-url"), "{text}");

    let text = single_agent(" ", None, None, &no_env)
        .unwrap_err()
        .to_string();
    assert!(text.contains("--model"), "{text}");
}

// ---------------------------------------------------------------------------------------
// MassGen's own example configs (optional; needs a MassGen checkout)

/// Set `MASSGEN_CONFIGS_DIR` to MassGen's `massgen/configs` to check that every one of its
/// configs either loads or fails only because its backend type is one conclave does not run.
#[test]
fn massgen_example_configs_load_or_fail_only_on_unsupported_backends() {
    let Some(dir) = std::env::var_os("MASSGEN_CONFIGS_DIR") else {
        return;
    };
    let mut stack = vec![PathBuf::from(dir)];
    let (mut loaded, mut unsupported) = (0, 0);
    let mut failures = Vec::new();
    let mut unknown_keys = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                continue;
            }
            // Not a session config (MassGen's rate-limit table).
            let not_a_session = path.ends_with("rate_limits/rate_limits.yaml");
            // A flow list whose `]` sits left of its items: PyYAML accepts it, yaml-rust2
            // (under the `config` crate) does not.
            let lenient_yaml = path.ends_with("multi_agent_playwright_automation.yaml");
            if not_a_session || lenient_yaml {
                continue;
            }
            // Every variable set; endpoints and URLs to something URL-shaped.
            let env = |key: &str| {
                Some(if key.ends_with("_ENDPOINT") || key.ends_with("_URL") {
                    "https://example.invalid".to_owned()
                } else {
                    "set".to_owned()
                })
            };
            match load_file(&path, &env) {
                Ok(config) => {
                    loaded += 1;
                    unknown_keys.extend(
                        config
                            .warnings
                            .iter()
                            .filter(|w| w.message.contains("unknown key"))
                            .map(|w| format!("{}: {w}", path.display())),
                    );
                }
                Err(ConfigError::UnsupportedBackendType { .. }) => unsupported += 1,
                Err(err) => failures.push(err.to_string()),
            }
        }
    }
    eprintln!("MassGen configs: {loaded} load, {unsupported} use unsupported backends");
    assert!(unknown_keys.is_empty(), "{unknown_keys:#?}");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn budget_caps_and_prices_load_and_bad_ones_name_their_key() {
    let env = |_: &str| None;
    let yaml = r#"
agents:
  - id: a
    backend: { type: vllm, model: my-model }
orchestrator:
  max_cost_usd: 2.5
  max_total_tokens: 100000
  pricing:
    my-model: { input_per_million: 0.5, output_per_million: 1.5 }
"#;
    let loaded = conclave::config::load_str(yaml, "budget.yaml", &env).unwrap();
    let orchestrator = &loaded.config.orchestrator;
    assert_eq!(orchestrator.max_cost_usd, Some(2.5));
    assert_eq!(orchestrator.max_total_tokens, Some(100_000));
    assert_eq!(orchestrator.pricing.len(), 1);
    assert_eq!(orchestrator.pricing[0].model, "my-model");
    assert_eq!(orchestrator.pricing[0].output_per_million, 1.5);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    for (bad, path) in [
        ("max_cost_usd: 0", "orchestrator.max_cost_usd"),
        ("max_cost_usd: cheap", "orchestrator.max_cost_usd"),
        ("max_total_tokens: 0", "orchestrator.max_total_tokens"),
        ("pricing: [1, 2]", "orchestrator.pricing"),
        (
            "pricing: { m: { input_per_million: 1 } }",
            "orchestrator.pricing.m.output_per_million",
        ),
        (
            "pricing: { m: { input_per_million: -1, output_per_million: 1 } }",
            "orchestrator.pricing.m.input_per_million",
        ),
    ] {
        let yaml = format!(
            "agents:\n  - id: a\n    backend: {{ type: vllm, model: m }}\norchestrator:\n  {bad}\n"
        );
        let err = conclave::config::load_str(&yaml, "budget.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(path) && err.contains("budget.yaml"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn node_join_timeout_is_read_from_timeout_settings() {
    let yaml = "agents:\n  - id: a\n    node: gpu-1\n    backend: {type: openai, model: gpt-4o-mini}\ntimeout_settings:\n  node_join_timeout_seconds: 7\n";
    let loaded = load(yaml);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    assert_eq!(loaded.config.orchestrator.node_join_timeout_seconds, 7);
    let default = load("agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o-mini}\n");
    assert_eq!(default.config.orchestrator.node_join_timeout_seconds, 30);
}

#[test]
fn turn_restart_limits_load_default_and_name_their_key_when_bad() {
    let agent = "agents:\n  - id: a\n    backend: {type: openai, model: gpt-4o-mini}\n";

    let loaded = load(&format!(
        "{agent}orchestrator:\n  max_turn_restarts: 1\n  restart_window_seconds: 5\n"
    ));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    assert_eq!(loaded.config.orchestrator.max_turn_restarts, 1);
    assert_eq!(loaded.config.orchestrator.restart_window_seconds, 5);

    // Left out (or null): 3 restarts within 60 s.
    for yaml in [
        agent.to_owned(),
        format!("{agent}orchestrator:\n  max_turn_restarts:\n  restart_window_seconds:\n"),
    ] {
        let orchestrator = load(&yaml).config.orchestrator;
        assert_eq!(
            (
                orchestrator.max_turn_restarts,
                orchestrator.restart_window_seconds
            ),
            (3, 60),
            "{yaml}"
        );
    }

    // 0 restarts (the first crash fails the turn) and the extremes are allowed; values
    // may come from the environment like any number.
    let env = env_of(&[("RESTARTS", "100")]);
    let yaml = format!(
        "{agent}orchestrator:\n  max_turn_restarts: \"${{RESTARTS}}\"\n  restart_window_seconds: 2592000\n"
    );
    let orchestrator = load_str(&yaml, "env.yaml", &env)
        .unwrap()
        .config
        .orchestrator;
    assert_eq!(orchestrator.max_turn_restarts, 100);
    assert_eq!(orchestrator.restart_window_seconds, 2_592_000);
    let orchestrator = load(&format!("{agent}orchestrator: {{max_turn_restarts: 0}}\n"))
        .config
        .orchestrator;
    assert_eq!(orchestrator.max_turn_restarts, 0);

    for (bad, path, allowed) in [
        (
            "max_turn_restarts: -1",
            "orchestrator.max_turn_restarts",
            "from 0 to 100",
        ),
        (
            "max_turn_restarts: 101",
            "orchestrator.max_turn_restarts",
            "from 0 to 100",
        ),
        (
            "max_turn_restarts: 1.5",
            "orchestrator.max_turn_restarts",
            "from 0 to 100",
        ),
        (
            "max_turn_restarts: often",
            "orchestrator.max_turn_restarts",
            "a whole number",
        ),
        (
            "max_turn_restarts: [1]",
            "orchestrator.max_turn_restarts",
            "a whole number",
        ),
        (
            "restart_window_seconds: 0",
            "orchestrator.restart_window_seconds",
            "seconds from 1",
        ),
        (
            "restart_window_seconds: -60",
            "orchestrator.restart_window_seconds",
            "seconds from 1",
        ),
        (
            "restart_window_seconds: 99999999999",
            "orchestrator.restart_window_seconds",
            "30 days",
        ),
        (
            "restart_window_seconds: 0.5",
            "orchestrator.restart_window_seconds",
            "seconds from 1",
        ),
        (
            "restart_window_seconds: soon",
            "orchestrator.restart_window_seconds",
            "a whole number",
        ),
    ] {
        let err = load_err(&format!("{agent}orchestrator:\n  {bad}\n")).to_string();
        assert!(
            err.contains("test.yaml") && err.contains(path) && err.contains(allowed),
            "{bad}: {err}"
        );
    }

    // The keys belong under `orchestrator:`; elsewhere, or misspelt, they are unknown keys
    // (a warning, the defaults stay).
    let loaded = load(&format!(
        "{agent}orchestrator:\n  max_turn_restart: 1\ntimeout_settings:\n  restart_window_seconds: 5\n"
    ));
    assert_eq!(
        warning_texts(&loaded),
        vec![
            "orchestrator.max_turn_restart: unknown key, ignored",
            "timeout_settings.restart_window_seconds: unknown key, ignored",
        ]
    );
    assert_eq!(loaded.config.orchestrator.max_turn_restarts, 3);
    assert_eq!(loaded.config.orchestrator.restart_window_seconds, 60);
}

/// A recognisable secret: no error and no loaded config may contain it.
const SECRET: &str = "sk-very-secret-value-4242";

fn secret_env(key: &str) -> Option<String> {
    match key {
        "SECRET" | "AZURE_OPENAI_ENDPOINT" | "AZURE_OPENAI_API_VERSION" => Some(SECRET.to_owned()),
        "NUMBER" => Some("12345".to_owned()),
        _ => None,
    }
}

#[test]
fn an_untrusted_config_expands_nothing_and_says_so() {
    for yaml in [
        "agent:\n  system_message: ${SECRET}\n  backend: {type: openai, model: gpt-4o}\n",
        "agent:\n  backend: {type: openai, model: '${SECRET}'}\n",
        "agent:\n  backend: {type: openai, model: gpt-4o, temperature: '${NUMBER:-1}'}\n",
        "agent:\n  backend: {type: openai, model: gpt-4o, extra_body: {x: 'a ${SECRET}'}}\n",
    ] {
        let err = load_str_untrusted(yaml, "config_yaml")
            .expect_err(yaml)
            .to_string();
        assert!(err.contains("expansion is off"), "{yaml}: {err}");
        assert!(!err.contains(SECRET), "{err}");
    }
    // `$${` is still a literal `${`.
    let loaded = load_str_untrusted(
        "agent:\n  system_message: cost $${x}\n  backend: {type: openai, model: gpt-4o}\n",
        "config_yaml",
    )
    .unwrap();
    assert_eq!(
        loaded.config.agents[0].system_message.as_deref(),
        Some("cost ${x}")
    );
}

#[test]
fn an_untrusted_config_still_names_key_variables() {
    for backend in [
        "{type: openai, model: gpt-4o, api_key: '${MY_KEY}'}",
        "{type: openai, model: gpt-4o, api_key_env: MY_KEY}",
    ] {
        let yaml = format!("agent:\n  backend: {backend}\n");
        let loaded = load_str_untrusted(&yaml, "config_yaml").unwrap();
        assert_eq!(
            loaded.config.agents[0].backend.api_key_env.as_deref(),
            Some("MY_KEY"),
            "{backend}"
        );
    }
}

#[test]
fn an_untrusted_config_reads_no_variable_the_loader_would_look_up() {
    // Trusted, `AZURE_OPENAI_ENDPOINT` fills a missing base_url; untrusted it is not read.
    let yaml = "agent:\n  backend: {type: azure_openai, model: dep}\n";
    let err = load_str_untrusted(yaml, "config_yaml").unwrap_err();
    assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
    assert!(!err.to_string().contains(SECRET));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team.yaml");
    std::fs::write(
        &file,
        "agent:\n  system_message: ${SECRET}\n  backend: {type: openai, model: gpt-4o}\n",
    )
    .unwrap();
    let err = load_file_untrusted(&file, "team.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("team.yaml:"),
        "named as the request named it: {err}"
    );
    assert!(err.contains("expansion is off"), "{err}");
}

#[test]
fn an_error_about_an_expanded_value_names_the_variable_not_the_value() {
    let cases = [
        // A bad number: once echoed as `found a string ("sk-...")`.
        "agent:\n  backend: {type: openai, model: gpt-4o, temperature: '${SECRET}'}\n",
        "agent:\n  backend: {type: openai, model: gpt-4o, temperature: '${NUMBER}'}\n",
        "agent:\n  backend: {type: openai, model: gpt-4o, max_tokens: 'x${SECRET}'}\n",
        "agent:\n  backend: {type: '${SECRET}', model: gpt-4o}\n",
        "agent:\n  backend: {type: chatcompletion, model: m, base_url: '${SECRET}'}\n",
        "agent:\n  backend: {type: openai, model: gpt-4o, reasoning: {effort: '${SECRET}'}}\n",
        // Read directly by the loader, not through `${}`.
        "agent:\n  backend: {type: azure_openai, model: dep}\n",
    ];
    for yaml in cases {
        let err = load_str(yaml, "team.yaml", &secret_env).expect_err(yaml);
        let text = err.to_string();
        assert!(!text.contains(SECRET), "{yaml}: {text}");
        assert!(!text.contains("12345"), "{yaml}: {text}");
        assert!(
            matches!(err, ConfigError::FromEnvironment { .. }),
            "{yaml}: {text}"
        );
        assert!(
            text.contains("`SECRET`")
                || text.contains("`NUMBER`")
                || text.contains("`AZURE_OPENAI_ENDPOINT`"),
            "names the variable: {text}"
        );
    }
    // What the key accepts is still said.
    let err = load_str(cases[1], "team.yaml", &secret_env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("temperature") && err.contains("from 0 to 2"),
        "{err}"
    );
    // A value written in the file itself is still shown: it is the user's own text.
    let err = load_str(
        "agent:\n  backend: {type: openai, model: gpt-4o, temperature: hot}\n",
        "team.yaml",
        &secret_env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("hot"), "{err}");
}

/// `restart_policy: inject`, and MassGen's midstream-injection keys mapped onto the policy;
/// a contradiction between them is refused with both named.
#[test]
fn midstream_injection_keys_map_onto_the_restart_policy() {
    let policy_of = |orchestrator: &str| {
        let yaml = format!("agent: {{backend: {{model: gpt-4o}}}}\norchestrator: {orchestrator}\n");
        let config = load(&yaml).config.orchestrator;
        (
            config.restart_policy,
            config.max_midstream_injections_per_round,
        )
    };
    assert_eq!(policy_of("{}"), (RestartPolicy::Inject, 2));
    assert_eq!(
        policy_of("{restart_policy: inject}"),
        (RestartPolicy::Inject, 2)
    );
    assert_eq!(
        policy_of("{max_midstream_injections_per_round: 3}"),
        (RestartPolicy::Inject, 3)
    );
    assert_eq!(
        policy_of("{defer_peer_updates_until_restart: false}"),
        (RestartPolicy::Inject, 2)
    );
    assert_eq!(
        policy_of("{defer_peer_updates_until_restart: true}"),
        (RestartPolicy::Finish, 2)
    );
    assert_eq!(
        policy_of("{max_midstream_injections_per_round: 0}"),
        (RestartPolicy::Finish, 2)
    );
    assert_eq!(
        policy_of("{restart_policy: inject, max_midstream_injections_per_round: 1}"),
        (RestartPolicy::Inject, 1)
    );
    let yaml = "agent: {backend: {model: gpt-4o}}\norchestrator: {restart_policy: inject, inject_fallback: finish}\n";
    assert_eq!(
        load(yaml).config.orchestrator.inject_fallback,
        RestartPolicy::Finish
    );
    let message =
        load_err("agent: {backend: {model: gpt-4o}}\norchestrator: {inject_fallback: sometimes}\n")
            .to_string();
    assert!(
        message.contains("orchestrator.inject_fallback"),
        "{message}"
    );
    let message = load_err(
        "agent: {backend: {model: gpt-4o}}\norchestrator: {restart_policy: cancel, defer_peer_updates_until_restart: true}\n",
    )
    .to_string();
    assert!(
        message.contains("orchestrator.restart_policy")
            && message.contains("defer_peer_updates_until_restart")
            && message.contains("finish"),
        "{message}"
    );
}
