//! What tokens cost. A built-in table of list prices for well-known models (US dollars per
//! million tokens, as published by each provider in 2025; they change, so a user's own prices
//! always win), plus the user's prices from the config (`orchestrator.pricing`) or a file
//! (`--pricing FILE`).
//!
//! A model's price is found by prefix on its normalised name (lower case, without a
//! `provider/` or `models/` prefix), the longest prefix winning: `gpt-4o-mini-2024-07-18`
//! matches `gpt-4o-mini`, not `gpt-4o`. The user's prices are searched first, so a user
//! prefix covers every model it prefixes. A model with no price shows tokens only; it is never
//! guessed.
//!
//! A cost cap (`max_cost_usd`) can only count priced tokens, so a session with a cost cap and
//! an agent whose model has no price is refused before it starts ([`check_budget`]), naming
//! the model and how to price it, unless `max_total_tokens` caps every agent's tokens as well.
//! Silently not counting that agent would let it spend without limit under a cap that looks
//! like it holds.

use conclave_protocol::Usage;
use conclave_protocol::config::{ModelPrice, SessionConfig};

/// A budget that cannot hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "max_cost_usd is set, but agent `{agent}` uses model `{model}`, which has no known price, so its spending cannot be counted: add a price for it under `orchestrator.pricing` in the config (`{model}: {{input_per_million: USD, output_per_million: USD}}`) or in a file given with --pricing, or cap tokens as well with `orchestrator.max_total_tokens` / --max-tokens"
    )]
    UnpricedModel { agent: String, model: String },
}

/// Refuses a cost cap that cannot hold (see the module docs).
pub fn check_budget(config: &SessionConfig) -> Result<(), BudgetError> {
    let settings = &config.orchestrator;
    if settings.max_cost_usd.is_none() || settings.max_total_tokens.is_some() {
        return Ok(());
    }
    let book = PriceBook::new(settings.pricing.clone());
    match config
        .agents
        .iter()
        .find(|a| book.price(&a.backend.model).is_none())
    {
        Some(agent) => Err(BudgetError::UnpricedModel {
            agent: agent.id.clone(),
            model: agent.backend.model.clone(),
        }),
        None => Ok(()),
    }
}

/// A price in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// The cost of `usage` at this price.
    pub fn cost(&self, usage: Usage) -> f64 {
        (usage.input_tokens as f64 * self.input_per_million
            + usage.output_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

/// (model prefix, input, output) in US dollars per million tokens.
const BUILT_IN: &[(&str, f64, f64)] = &[
    // OpenAI
    ("gpt-5", 1.25, 10.0),
    ("gpt-5-mini", 0.25, 2.0),
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-4.1", 2.0, 8.0),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4o", 2.50, 10.0),
    ("gpt-4o-mini", 0.15, 0.60),
    ("o1", 15.0, 60.0),
    ("o1-mini", 1.10, 4.40),
    ("o3", 2.0, 8.0),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    // Anthropic
    ("claude-opus-4", 15.0, 75.0),
    ("claude-opus-4-5", 5.0, 25.0),
    ("claude-sonnet-4", 3.0, 15.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-haiku-4-5", 1.0, 5.0),
    ("claude-3-5-haiku", 0.80, 4.0),
    ("claude-3-haiku", 0.25, 1.25),
    // Google
    ("gemini-2.5-pro", 1.25, 10.0),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.5-flash-lite", 0.10, 0.40),
    ("gemini-2.0-flash", 0.10, 0.40),
    // xAI
    ("grok-4", 3.0, 15.0),
    ("grok-3", 3.0, 15.0),
    ("grok-3-mini", 0.30, 0.50),
    // Hosted open models (Groq list prices)
    ("llama-3.3-70b-versatile", 0.59, 0.79),
    ("llama-3.1-8b-instant", 0.05, 0.08),
];

/// Prices for a session: the user's first, then the built-in table.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    user: Vec<ModelPrice>,
}

fn normalise(model: &str) -> String {
    let lower = model.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("models/").unwrap_or(&lower);
    lower.rsplit('/').next().unwrap_or(lower).to_owned()
}

fn longest<'a, T>(name: &str, entries: impl Iterator<Item = (&'a str, T)>) -> Option<T> {
    entries
        .filter(|(prefix, _)| !prefix.is_empty() && name.starts_with(&normalise(prefix)))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, value)| value)
}

impl PriceBook {
    pub fn new(user: Vec<ModelPrice>) -> Self {
        Self { user }
    }

    /// The price of `model`, if known.
    pub fn price(&self, model: &str) -> Option<Price> {
        let name = normalise(model);
        let user = longest(
            &name,
            self.user.iter().map(|p| {
                (
                    p.model.as_str(),
                    Price {
                        input_per_million: p.input_per_million,
                        output_per_million: p.output_per_million,
                    },
                )
            }),
        );
        user.or_else(|| {
            longest(
                &name,
                BUILT_IN.iter().map(|&(prefix, input, output)| {
                    (
                        prefix,
                        Price {
                            input_per_million: input,
                            output_per_million: output,
                        },
                    )
                }),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins() {
        let book = PriceBook::default();
        assert_eq!(
            book.price("gpt-4o-mini-2024-07-18")
                .unwrap()
                .input_per_million,
            0.15
        );
        assert_eq!(
            book.price("gpt-4o-2024-08-06").unwrap().input_per_million,
            2.50
        );
        assert_eq!(
            book.price("openai/gpt-4o").unwrap().output_per_million,
            10.0
        );
        assert_eq!(
            book.price("models/gemini-2.5-flash")
                .unwrap()
                .output_per_million,
            2.50
        );
        assert_eq!(
            book.price("gemini-2.5-flash-lite")
                .unwrap()
                .output_per_million,
            0.40
        );
        assert_eq!(
            book.price("claude-opus-4-5-20251101")
                .unwrap()
                .input_per_million,
            5.0
        );
        assert_eq!(
            book.price("claude-opus-4-1").unwrap().input_per_million,
            15.0
        );
        assert!(book.price("my-local-llama").is_none());
    }

    #[test]
    fn user_prices_override_and_add() {
        let book = PriceBook::new(vec![
            ModelPrice {
                model: "gpt-4o".into(),
                input_per_million: 1.0,
                output_per_million: 2.0,
            },
            ModelPrice {
                model: "my-finetune".into(),
                input_per_million: 3.0,
                output_per_million: 4.0,
            },
        ]);
        assert_eq!(
            book.price("gpt-4o-2024-08-06").unwrap().input_per_million,
            1.0
        );
        // User prices are consulted first: a user prefix covers every model it prefixes.
        assert_eq!(book.price("gpt-4o-mini").unwrap().input_per_million, 1.0);
        assert_eq!(
            book.price("my-finetune-v2").unwrap().output_per_million,
            4.0
        );
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let price = Price {
            input_per_million: 2.0,
            output_per_million: 8.0,
        };
        let cost = price.cost(Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
        });
        assert!((cost - 6.0).abs() < 1e-9);
    }

    #[test]
    fn a_cost_cap_needs_a_price_for_every_model_unless_tokens_are_capped() {
        let yaml = "agents:\n  - id: known\n    backend: {type: openai, model: gpt-4o-mini}\n  \
                    - id: local\n    backend: {type: vllm, model: my-local-llama, base_url: \"http://127.0.0.1:8000/v1\"}\n";
        let mut config = crate::config::load_str(yaml, "budget.yaml", &|_| None)
            .expect("the config loads")
            .config;
        assert_eq!(check_budget(&config), Ok(()), "no cap, nothing to check");
        config.orchestrator.max_cost_usd = Some(1.0);
        let error = check_budget(&config).expect_err("an unpriced model under a cost cap");
        assert_eq!(
            error,
            BudgetError::UnpricedModel {
                agent: "local".into(),
                model: "my-local-llama".into()
            }
        );
        let text = error.to_string();
        assert!(text.contains("orchestrator.pricing") && text.contains("--pricing"));
        // A token cap bounds every agent: allowed.
        config.orchestrator.max_total_tokens = Some(10_000);
        assert_eq!(check_budget(&config), Ok(()));
        // So does a price for the model.
        config.orchestrator.max_total_tokens = None;
        config.orchestrator.pricing.push(ModelPrice {
            model: "my-local".into(),
            input_per_million: 0.0,
            output_per_million: 0.0,
        });
        assert_eq!(check_budget(&config), Ok(()));
    }
}
