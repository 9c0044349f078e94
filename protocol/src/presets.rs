//! Provider presets: OpenAI-compatible hosts and the other providers, as data. A preset names
//! the wire format, the default base URL and the environment variable that holds the API key.
//! Users override the URL with `base_url`; nothing here is code per provider.

use crate::config::WireFormat;

/// One named provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// Canonical name, used as `gen_ai.provider.name` and in logs.
    pub name: &'static str,
    /// Other names users write for it (MassGen type names included).
    pub aliases: &'static [&'static str],
    pub wire: WireFormat,
    /// Default base URL; `None` means the user must give `base_url`.
    pub base_url: Option<&'static str>,
    /// Environment variable read for the API key on the calling node.
    pub api_key_env: Option<&'static str>,
    /// Whether a call without a key is an error (hosted APIs) or allowed (local servers).
    pub key_required: bool,
}

const fn hosted(
    name: &'static str,
    aliases: &'static [&'static str],
    base_url: &'static str,
    env: &'static str,
) -> Preset {
    Preset {
        name,
        aliases,
        wire: WireFormat::OpenAiChat,
        base_url: Some(base_url),
        api_key_env: Some(env),
        key_required: true,
    }
}

const fn local(
    name: &'static str,
    aliases: &'static [&'static str],
    base_url: &'static str,
    env: &'static str,
) -> Preset {
    Preset {
        name,
        aliases,
        wire: WireFormat::OpenAiChat,
        base_url: Some(base_url),
        api_key_env: Some(env),
        key_required: false,
    }
}

const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Every preset conclave knows.
pub static PRESETS: &[Preset] = &[
    // OpenAI itself speaks the Responses API, as MassGen's `openai` backend does: it is the
    // API OpenAI recommends, and the one with reasoning summaries and built-in tools.
    Preset {
        name: "openai",
        aliases: &["openai_responses", "responses"],
        wire: WireFormat::OpenAiResponses,
        base_url: Some(OPENAI_BASE_URL),
        api_key_env: Some("OPENAI_API_KEY"),
        key_required: true,
    },
    // OpenAI over Chat Completions, for who wants the older API on purpose.
    hosted(
        "openai_chat",
        &["chatcompletion_openai", "openai_chatcompletions"],
        OPENAI_BASE_URL,
        "OPENAI_API_KEY",
    ),
    hosted("xai", &["grok"], "https://api.x.ai/v1", "XAI_API_KEY"),
    hosted(
        "groq",
        &[],
        "https://api.groq.com/openai/v1",
        "GROQ_API_KEY",
    ),
    hosted(
        "cerebras",
        &[],
        "https://api.cerebras.ai/v1",
        "CEREBRAS_API_KEY",
    ),
    hosted(
        "together",
        &["togetherai"],
        "https://api.together.xyz/v1",
        "TOGETHER_API_KEY",
    ),
    hosted(
        "fireworks",
        &["fireworksai"],
        "https://api.fireworks.ai/inference/v1",
        "FIREWORKS_API_KEY",
    ),
    hosted(
        "openrouter",
        &[],
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
    ),
    hosted(
        "zai",
        &["zhipu", "glm"],
        "https://api.z.ai/api/paas/v4",
        "ZAI_API_KEY",
    ),
    hosted(
        "moonshot",
        &["kimi"],
        "https://api.moonshot.ai/v1",
        "MOONSHOT_API_KEY",
    ),
    hosted(
        "qwen",
        &["dashscope"],
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        "DASHSCOPE_API_KEY",
    ),
    hosted(
        "deepseek",
        &[],
        "https://api.deepseek.com/v1",
        "DEEPSEEK_API_KEY",
    ),
    hosted(
        "nebius",
        &[],
        "https://api.studio.nebius.ai/v1",
        "NEBIUS_API_KEY",
    ),
    local("vllm", &[], "http://localhost:8000/v1", "VLLM_API_KEY"),
    local("sglang", &[], "http://localhost:30000/v1", "SGLANG_API_KEY"),
    local(
        "lmstudio",
        &["lm_studio"],
        "http://localhost:1234/v1",
        "LMSTUDIO_API_KEY",
    ),
    local("ollama", &[], "http://localhost:11434/v1", "OLLAMA_API_KEY"),
    // conclave's own simulated provider (`conclave-sim`, `conclave demo`).
    local(
        "sim",
        &["simulated"],
        "http://127.0.0.1:7399/v1",
        "CONCLAVE_SIM_API_KEY",
    ),
    // A generic OpenAI-compatible host: the user gives base_url (and api_key_env if needed).
    Preset {
        name: "chatcompletion",
        aliases: &["openai_compatible", "chat_completion", "chatcompletions"],
        wire: WireFormat::OpenAiChat,
        base_url: None,
        api_key_env: None,
        key_required: false,
    },
    Preset {
        name: "anthropic",
        aliases: &["claude"],
        wire: WireFormat::Anthropic,
        base_url: Some("https://api.anthropic.com/v1"),
        api_key_env: Some("ANTHROPIC_API_KEY"),
        key_required: true,
    },
    Preset {
        name: "gemini",
        aliases: &["google"],
        wire: WireFormat::Gemini,
        base_url: Some("https://generativelanguage.googleapis.com/v1beta"),
        api_key_env: Some("GEMINI_API_KEY"),
        key_required: true,
    },
    Preset {
        name: "azure_openai",
        aliases: &["azure"],
        wire: WireFormat::AzureOpenAi,
        base_url: None,
        api_key_env: Some("AZURE_OPENAI_API_KEY"),
        key_required: true,
    },
    Preset {
        name: "claude_code",
        aliases: &[],
        wire: WireFormat::ClaudeCode,
        base_url: None,
        api_key_env: Some("ANTHROPIC_API_KEY"),
        key_required: false,
    },
];

/// Finds a preset by its name or an alias, ignoring ASCII case and `-`/`_` differences.
pub fn preset(name: &str) -> Option<&'static Preset> {
    let wanted = normalise(name);
    PRESETS.iter().find(|p| {
        normalise(p.name) == wanted || p.aliases.iter().any(|alias| normalise(alias) == wanted)
    })
}

/// Guesses the preset of a well-known model name (`gpt-4o-mini` → openai, which speaks the
/// Responses API; `claude-…` → anthropic, ...). Used when the user gives `--model` without
/// `--backend`, and for a config backend without `type`.
pub fn preset_for_model(model: &str) -> Option<&'static Preset> {
    let m = model.to_ascii_lowercase();
    let m = m.rsplit('/').next().unwrap_or(&m);
    let name = if m.starts_with("gpt-")
        || m.starts_with("chatgpt")
        || m.starts_with("o1")
        || m.starts_with("o3")
        || m.starts_with("o4")
        || m.starts_with("gpt5")
    {
        "openai"
    } else if m.starts_with("claude") {
        "anthropic"
    } else if m.starts_with("gemini") {
        "gemini"
    } else if m.starts_with("grok") {
        "xai"
    } else if m.starts_with("glm-") {
        "zai"
    } else if m.starts_with("kimi") || m.starts_with("moonshot") {
        "moonshot"
    } else if m.starts_with("qwen") {
        "qwen"
    } else if m.starts_with("deepseek") {
        "deepseek"
    } else if m.starts_with("sim") {
        "sim"
    } else {
        return None;
    };
    preset(name)
}

/// Guesses the preset of a base URL by its host (`api.groq.com` → groq), for generic
/// `chatcompletion` backends that name only a URL. When several presets share the host, the
/// Chat Completions one wins (`api.openai.com` → openai_chat, not the Responses preset
/// `openai`), since that is what such a backend speaks; a host with no Chat Completions
/// preset still names its provider (`api.anthropic.com` → anthropic, for its
/// OpenAI-compatible endpoint).
pub fn preset_for_base_url(base_url: &str) -> Option<&'static Preset> {
    let url = base_url.to_ascii_lowercase();
    let mut matching = PRESETS.iter().filter(|p| p.key_required).filter(|p| {
        p.base_url.is_some_and(|default| {
            let host = default
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default();
            !host.is_empty() && url.contains(host)
        })
    });
    let first = matching.next()?;
    if first.wire == WireFormat::OpenAiChat {
        return Some(first);
    }
    Some(
        matching
            .find(|p| p.wire == WireFormat::OpenAiChat)
            .unwrap_or(first),
    )
}

fn normalise(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_resolve() {
        assert_eq!(preset("grok").unwrap().name, "xai");
        assert_eq!(preset("Kimi").unwrap().name, "moonshot");
        assert_eq!(preset("claude").unwrap().wire, WireFormat::Anthropic);
        assert_eq!(preset("lm-studio").unwrap().name, "lmstudio");
        assert!(preset("nonsense").is_none());
    }

    #[test]
    fn openai_speaks_responses_and_openai_chat_chat_completions() {
        for name in ["openai", "OpenAI", "openai_responses", "responses"] {
            let p = preset(name).unwrap();
            assert_eq!(p.name, "openai", "{name}");
            assert_eq!(p.wire, WireFormat::OpenAiResponses, "{name}");
        }
        for name in [
            "openai_chat",
            "openai-chat",
            "chatcompletion_openai",
            "openai_chatcompletions",
        ] {
            let p = preset(name).unwrap();
            assert_eq!(p.name, "openai_chat", "{name}");
            assert_eq!(p.wire, WireFormat::OpenAiChat, "{name}");
        }
        let (responses, chat) = (preset("openai").unwrap(), preset("openai_chat").unwrap());
        for p in [responses, chat] {
            assert_eq!(p.base_url, Some("https://api.openai.com/v1"));
            assert_eq!(p.api_key_env, Some("OPENAI_API_KEY"));
            assert!(p.key_required);
        }
    }

    #[test]
    fn models_imply_providers() {
        let gpt = preset_for_model("gpt-4o-mini").unwrap();
        assert_eq!(gpt.name, "openai");
        assert_eq!(gpt.wire, WireFormat::OpenAiResponses);
        assert_eq!(preset_for_model("o3-mini").unwrap().name, "openai");
        assert_eq!(preset_for_model("openai/gpt-5").unwrap().name, "openai");
        assert_eq!(
            preset_for_model("claude-sonnet-4-5").unwrap().name,
            "anthropic"
        );
        assert_eq!(preset_for_model("gemini-2.5-flash").unwrap().name, "gemini");
        assert_eq!(preset_for_model("grok-4").unwrap().name, "xai");
        assert!(preset_for_model("llama-3.1-8b").is_none());
    }

    #[test]
    fn base_urls_imply_providers() {
        assert_eq!(
            preset_for_base_url("https://api.groq.com/openai/v1")
                .unwrap()
                .name,
            "groq"
        );
        assert_eq!(
            preset_for_base_url("https://api.cerebras.ai/v1")
                .unwrap()
                .name,
            "cerebras"
        );
        assert!(preset_for_base_url("http://localhost:8000/v1").is_none());
        // Two presets share OpenAI's host; a generic Chat Completions backend means the chat one.
        let openai = preset_for_base_url("https://api.openai.com/v1").unwrap();
        assert_eq!(openai.name, "openai_chat");
        assert_eq!(openai.wire, WireFormat::OpenAiChat);
        assert_eq!(openai.api_key_env, Some("OPENAI_API_KEY"));
        // A host with no Chat Completions preset still names its provider and key.
        assert_eq!(
            preset_for_base_url("https://api.anthropic.com/v1/")
                .unwrap()
                .name,
            "anthropic"
        );
    }

    #[test]
    fn every_preset_name_is_unique() {
        let mut names: Vec<String> = PRESETS
            .iter()
            .flat_map(|p| std::iter::once(p.name).chain(p.aliases.iter().copied()))
            .map(normalise)
            .collect();
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
