//! Bounded fuzzing of the orchestrator's untrusted inputs: the YAML config loader
//! ([`conclave::config::load_str`]), `.env` parsing ([`conclave::config::parse_dotenv`]), the
//! journal reader ([`conclave::journal::read_events`]) and the resume replay built on it
//! ([`conclave::resume::load`]).
//!
//! Inputs are structure aware, not only random bytes:
//! * YAML documents are generated from a grammar of the real config keys (agents, backends of
//!   every type, orchestrator, timeouts, ui, MassGen keys) with values of random types
//!   (huge and negative numbers, NaN and infinities, YAML 1.1 booleans, tags, anchors and
//!   aliases, block scalars, `${VAR}` references nested thousands deep), rendered in block or
//!   flow style, then mutated as text (cut, lines dropped, duplicated or re-indented, stray
//!   YAML punctuation, CRLF, BOM); the shipped `configs/*.yaml` are mutated the same way;
//!   plus raw garbage.
//! * `.env` files are generated from lines of every form the parser knows (quotes, escapes,
//!   `export`, comments, multi-line double quotes) plus garbage.
//! * Journals are valid journals (JSON lines of real event shapes, starting with a real
//!   `session_started`) with random tails, damaged lines, mutated values (extreme token counts,
//!   unknown agents, wrong types) and raw bytes; each is read and replayed by `resume::load`.
//!
//! Every case runs under a watchdog (a case that runs longer than `CONCLAVE_FUZZ_HANG_SECS`,
//! default 30, aborts the run and prints its input) and a per-thread allocation counter (the
//! peak heap growth of one parse is bounded). Loaded configs must satisfy the loader's own
//! documented rules (agents present with unique ids, timeouts in range, finite sampling
//! parameters) and must survive the cluster codec, since they are sent to agent nodes.
//!
//! Case counts keep the file under ~20 s in debug; `CONCLAVE_FUZZ_CASES=N` runs `N` cases per
//! property and `CONCLAVE_FUZZ_SEED=S` changes the fixed seed, e.g.
//! `CONCLAVE_FUZZ_CASES=20000 cargo test --release -p conclave --test fuzz_inputs -- --nocapture`.

use std::collections::HashSet;
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use std::time::{Duration, Instant};

use conclave::config::{MAX_TIMEOUT_SECONDS, load_str, parse_dotenv};
use conclave::journal::{EVENTS_FILE, read_events};
use conclave_fuzz::{Target, count_hit, count_input, peak_growth};
use conclave_protocol::config::SessionConfig;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestCaseResult};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Harness: case counts, fixed seed, watchdog, allocation accounting.
// ---------------------------------------------------------------------------------------------

/// This file's seed and summary words; the harness itself is `conclave_fuzz`'s.
const TARGET: Target = Target {
    file: "fuzz_inputs",
    seed: 0xC0C1_A7E0_F4A3_0002,
    verb: "parsed",
    hits: Some("accepted"),
};

#[global_allocator]
static ALLOC: conclave_fuzz::CountingAlloc = conclave_fuzz::CountingAlloc;

/// Runs one parse, counting it and checking that its peak heap growth stays within
/// `factor × input + constant` bytes.
fn bounded<T>(
    what: &str,
    input_len: usize,
    factor: usize,
    f: impl FnOnce() -> T,
) -> Result<T, TestCaseError> {
    count_input();
    let (value, peak) = peak_growth(f);
    let bound = factor * input_len + 64 * 1024 * 1024;
    if peak > bound {
        return Err(TestCaseError::fail(format!(
            "{what}: a {input_len}-byte input made the heap grow by {peak} bytes (bound {bound})"
        )));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Text mutations shared by the YAML, .env and journal generators.
// ---------------------------------------------------------------------------------------------

/// Characters that mean something to YAML, `.env` files or JSON.
const PUNCTUATION: &[&str] = &[
    ":", "-", "- ", "? ", "&a ", "*a", "!", "!!str ", "!!int ", "{", "}", "[", "]", ",", "\"", "'",
    "#", "|", ">", "%", "@", "`", "\t", "\r", "\r\n", "\n", "\u{0}", "\u{feff}", "\\", "$", "${",
    "}", "=", "export ", "---\n", "...\n", "<<: ", "\u{85}", "\u{2028}", "é", "😀",
];

#[derive(Debug, Clone)]
enum TextMutation {
    Truncate(usize),
    DeleteLine(usize),
    DuplicateLine(usize, usize),
    SwapLines(usize, usize),
    Indent(usize, i8),
    Insert(usize, &'static str),
    DeleteChars(usize, usize),
    ReplaceChar(usize, char),
    Crlf,
    Bom,
}

fn text_mutation() -> impl Strategy<Value = TextMutation> {
    let at = any::<usize>();
    prop_oneof![
        1 => at.prop_map(TextMutation::Truncate),
        2 => at.prop_map(TextMutation::DeleteLine),
        1 => (at, any::<usize>()).prop_map(|(a, b)| TextMutation::DuplicateLine(a, b)),
        1 => (at, any::<usize>()).prop_map(|(a, b)| TextMutation::SwapLines(a, b)),
        2 => (at, -4i8..5).prop_map(|(a, d)| TextMutation::Indent(a, d)),
        3 => (at, proptest::sample::select(PUNCTUATION))
            .prop_map(|(a, s)| TextMutation::Insert(a, s)),
        1 => (at, 1usize..8).prop_map(|(a, n)| TextMutation::DeleteChars(a, n)),
        2 => (at, any::<char>()).prop_map(|(a, c)| TextMutation::ReplaceChar(a, c)),
        1 => Just(TextMutation::Crlf),
        1 => Just(TextMutation::Bom),
    ]
}

fn char_boundary(text: &str, at: usize) -> usize {
    if text.is_empty() {
        return 0;
    }
    let mut i = at % (text.len() + 1);
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate_text(text: &mut String, mutation: &TextMutation) {
    let lines = || -> Vec<String> { text.split('\n').map(str::to_owned).collect() };
    match *mutation {
        TextMutation::Truncate(at) => {
            let i = char_boundary(text, at);
            text.truncate(i);
        }
        TextMutation::DeleteLine(at) => {
            let mut l = lines();
            let i = at % l.len();
            l.remove(i);
            *text = l.join("\n");
        }
        TextMutation::DuplicateLine(a, b) => {
            let mut l = lines();
            let line = l[a % l.len()].clone();
            let to = b % (l.len() + 1);
            l.insert(to, line);
            *text = l.join("\n");
        }
        TextMutation::SwapLines(a, b) => {
            let mut l = lines();
            let n = l.len();
            l.swap(a % n, b % n);
            *text = l.join("\n");
        }
        TextMutation::Indent(at, delta) => {
            let mut l = lines();
            let n = l.len();
            let line = &mut l[at % n];
            if delta >= 0 {
                line.insert_str(0, &" ".repeat(delta as usize));
            } else {
                let strip = line
                    .chars()
                    .take((-delta) as usize)
                    .take_while(|c| *c == ' ')
                    .count();
                line.drain(..strip);
            }
            *text = l.join("\n");
        }
        TextMutation::Insert(at, piece) => {
            let i = char_boundary(text, at);
            text.insert_str(i, piece);
        }
        TextMutation::DeleteChars(at, n) => {
            let i = char_boundary(text, at);
            let end = text[i..]
                .char_indices()
                .nth(n)
                .map_or(text.len(), |(j, _)| i + j);
            text.replace_range(i..end, "");
        }
        TextMutation::ReplaceChar(at, c) => {
            let i = char_boundary(text, at);
            if let Some(old) = text[i..].chars().next() {
                text.replace_range(i..i + old.len_utf8(), c.encode_utf8(&mut [0; 4]));
            }
        }
        TextMutation::Crlf => *text = text.replace('\n', "\r\n"),
        TextMutation::Bom => text.insert(0, '\u{feff}'),
    }
}

/// Raw garbage as text: random bytes read lossily, biased towards printable ASCII.
fn garbage_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        proptest::collection::vec(
            prop_oneof![
                3 => proptest::char::range(' ', '~'),
                1 => Just('\n'),
                1 => any::<char>(),
            ],
            0..max
        )
        .prop_map(|c| c.into_iter().collect()),
        proptest::collection::vec(proptest::sample::select(PUNCTUATION), 0..max / 4)
            .prop_map(|p| p.concat()),
    ]
}

// ---------------------------------------------------------------------------------------------
// The YAML grammar.
// ---------------------------------------------------------------------------------------------

/// Keys the loader reads (or knows as MassGen's), at every level.
const KEYS: &[&str] = &[
    "agents",
    "agent",
    "id",
    "backend",
    "type",
    "model",
    "base_url",
    "api_key",
    "api_key_env",
    "temperature",
    "top_p",
    "max_tokens",
    "max_retries",
    "extra_body",
    "system_message",
    "node",
    "orchestrator",
    "timeout_settings",
    "ui",
    "display_type",
    "logging_enabled",
    "max_new_answers_per_agent",
    "max_total_answers",
    "restart_policy",
    "max_workflow_retries",
    "skip_final_presentation",
    "max_turn_restarts",
    "restart_window_seconds",
    "orchestrator_timeout_seconds",
    "turn_timeout_seconds",
    "stall_timeout_seconds",
    "connect_timeout_seconds",
    "timeout",
    "reasoning",
    "effort",
    "summary",
    "text",
    "verbosity",
    "thinking",
    "budget_tokens",
    "thinking_budget",
    "thinking_config",
    "include_thoughts",
    "enable_web_search",
    "enable_code_execution",
    "enable_code_interpreter",
    "api_version",
    "azure_endpoint",
    "cwd",
    "allowed_tools",
    "disallowed_tools",
    "permission_mode",
    "max_turns",
    "max_cost_usd",
    "max_total_tokens",
    "pricing",
    "input_per_million",
    "output_per_million",
    "mcp_servers",
    "models",
    "num_agents",
    "voting_sensitivity",
    "snapshot_storage",
    "reasoning_effort",
    "seed",
    "stop",
    "response_format",
    "custom_tools",
    "context_paths",
    "system_prompt",
    "coordination",
    "debug",
    "enabled",
    "disabled",
];

/// Values that mean something to the loader.
const WORDS: &[&str] = &[
    "openai",
    "chatcompletion",
    "claude",
    "anthropic",
    "gemini",
    "grok",
    "xai",
    "azure_openai",
    "claude_code",
    "sim",
    "lmstudio",
    "vllm",
    "ollama",
    "openrouter",
    "groq",
    "together",
    "cerebras",
    "deepseek",
    "zai",
    "poe",
    "unknown_backend",
    "gpt-4o-mini",
    "gpt-5",
    "claude-sonnet-4-5",
    "gemini-2.5-pro",
    "grok-4",
    "o3",
    "sim-alpha:tokens=3",
    "sim:policy=answer,fault=429",
    "low",
    "medium",
    "high",
    "minimal",
    "auto",
    "concise",
    "detailed",
    "cancel",
    "finish",
    "plain",
    "json",
    "quiet",
    "silent",
    "rich_terminal",
    "textual_terminal",
    "simple",
    "none",
    "enabled",
    "disabled",
    "default",
    "bypassPermissions",
    "http://127.0.0.1:7399/v1",
    "https://api.openai.com/v1",
    "http://[::1]:99999/",
    "ftp://x",
    "not a url",
    "http://",
    "https://example.org/openai/deployments/x",
    "{\"seed\": 1}",
    "{not json",
    "[]",
    "gpt-4o",
    "agent1",
    "agent2",
    "alpha",
    "beta",
];

/// A YAML scalar as written in the document.
fn scalar() -> BoxedStrategy<String> {
    let numbers = proptest::sample::select(vec![
        "0",
        "1",
        "2",
        "-1",
        "3",
        "60",
        "100",
        "101",
        "1024",
        "32768",
        "32769",
        "2592000",
        "2592001",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999999999",
        "0x1F",
        "0o17",
        "0b101",
        "1_000",
        "+5",
        "007",
        "0.5",
        "1.0",
        "2.0",
        "2.5",
        "-0.0",
        "1e308",
        "1e999",
        "-1e999",
        "5e-324",
        ".inf",
        "-.inf",
        ".nan",
        ".NaN",
        "1.5e3",
        "0.000001",
        "1000000.0",
        "1000000.01",
    ]);
    let specials = proptest::sample::select(vec![
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "True",
        "FALSE",
        "y",
        "n",
        "null",
        "~",
        "Null",
        "\"\"",
        "''",
        "\" \"",
        "[]",
        "{}",
        "[1, 2]",
        "{a: 1}",
        "!!str 5",
        "!!int x",
        "!!float nan",
        "!!bool yes",
        "!!binary aGVsbG8=",
        "!custom x",
        "!!null",
        "!!map {}",
        "*a",
        "*undefined",
        "&a x",
        "&a [1, 2, 3]",
        "\"\\u0000\"",
        "\"\\x41\\U0001F600\"",
        "\"\\q\"",
        "'it''s'",
        "|\n  block\n  text",
        ">-\n  folded\n  text",
        "|+\n\n",
        "\"${HOST}\"",
        "${HOST}",
        "${NOPE}",
        "${NOPE:-fallback}",
        "${EMPTY:-${HOST}}",
        "$${literal}",
        "${",
        "${}",
        "${A B}",
        "${1X}",
        "\"${NOPE:-}\"",
        "${LONG}",
        "${NESTED}",
        "$",
        "x$",
        "\"\\t\"",
        "\"a\\nb\"",
        "'\u{7}'",
        "\"\u{85}\"",
    ]);
    let deep_env = prop_oneof![
        Just(10usize),
        Just(200),
        Just(3000),
        Just(20_000),
        1usize..64
    ]
    .prop_map(|depth| {
        let mut s = "\"".to_owned();
        s.push_str(&"${NOPE:-".repeat(depth));
        s.push('x');
        s.push_str(&"}".repeat(depth));
        s.push('"');
        s
    });
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_map(str::to_owned),
        4 => numbers.prop_map(str::to_owned),
        4 => specials.prop_map(str::to_owned),
        2 => "[a-zA-Z0-9_.:/-]{0,20}",
        1 => "\"[ -~]{0,30}\"".prop_map(|s| s.replace('\\', "\\\\")),
        1 => "\\PC{1,12}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        1 => (1usize..20_000).prop_map(|n| format!("\"{}\"", "y".repeat(n))),
        1 => deep_env,
    ]
    .boxed()
}

/// A YAML node before rendering.
#[derive(Debug, Clone)]
enum Yaml {
    Scalar(String),
    Map(Vec<(String, Yaml)>),
    List(Vec<Yaml>),
    /// A flow-style rendering of the inner node.
    Flow(Box<Yaml>),
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        8 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
        1 => proptest::sample::select(vec![
            "1", "true", "null", "~", "\"quoted key\"", "? [a, b]", "<<", "''", "\"\"",
            "&k key", "*k", "!!int 3", "[1]", "{a: b}", "\"\\u0000\"",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Any YAML tree, keys from the grammar.
fn yaml_tree() -> BoxedStrategy<Yaml> {
    scalar()
        .prop_map(Yaml::Scalar)
        .prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                3 => proptest::collection::vec((key(), inner.clone()), 0..6).prop_map(Yaml::Map),
                2 => proptest::collection::vec(inner.clone(), 0..5).prop_map(Yaml::List),
                1 => inner.prop_map(|node| Yaml::Flow(Box::new(node))),
            ]
        })
        .boxed()
}

/// A value for `key`: usually a scalar, sometimes any tree (the wrong type).
fn value() -> BoxedStrategy<Yaml> {
    prop_oneof![
        6 => scalar().prop_map(Yaml::Scalar),
        1 => yaml_tree(),
    ]
    .boxed()
}

/// Drops repeated keys (keeping the first), unless `keep` (duplicate keys are a YAML error,
/// worth hitting only some of the time).
fn dedupe(mut entries: Vec<(String, Yaml)>, keep: bool) -> Vec<(String, Yaml)> {
    if !keep {
        let mut seen = HashSet::new();
        entries.retain(|(k, _)| seen.insert(k.clone()));
    }
    entries
}

fn one_of(values: &'static [&'static str]) -> BoxedStrategy<Yaml> {
    proptest::sample::select(values)
        .prop_map(|v| Yaml::Scalar(v.to_owned()))
        .boxed()
}

fn int_in(range: std::ops::RangeInclusive<u64>) -> BoxedStrategy<Yaml> {
    range.prop_map(|n| Yaml::Scalar(n.to_string())).boxed()
}

fn map_of(entries: Vec<(&'static str, BoxedStrategy<Yaml>)>) -> BoxedStrategy<Yaml> {
    entries
        .into_iter()
        .map(|(k, v)| v.prop_map(move |v| (k.to_owned(), v)).boxed())
        .collect::<Vec<_>>()
        .prop_map(Yaml::Map)
        .boxed()
}

/// A value of the right type and range for `key`, as the loader documents it.
fn good_value(key: &str) -> BoxedStrategy<Yaml> {
    let boolean = || one_of(&["true", "false"]);
    match key {
        "type" => one_of(&[
            "openai",
            "chatcompletion",
            "claude",
            "gemini",
            "grok",
            "azure_openai",
            "claude_code",
            "sim",
            "lmstudio",
            "vllm",
            "openrouter",
            "groq",
            "zai",
        ]),
        "model" => one_of(&[
            "gpt-4o-mini",
            "gpt-5",
            "claude-sonnet-4-5",
            "gemini-2.5-pro",
            "grok-4",
            "o3",
            "\"sim-a:tokens=3\"",
            "llama-3.3-70b",
            "default",
        ]),
        "base_url" => one_of(&[
            "http://127.0.0.1:7399/v1",
            "https://api.openai.com/v1",
            "${CONCLAVE_SIM_URL}",
            "https://example.openai.azure.com",
            "${NOPE:-http://localhost:1234/v1}",
        ]),
        "api_key_env" => one_of(&["OPENAI_API_KEY", "MY_KEY", "GEMINI_API_KEY"]),
        "api_key" => one_of(&["${OPENAI_API_KEY}", "${MY_KEY}", "sk-literal"]),
        "temperature" => one_of(&["0", "0.2", "1", "1.5", "2", "2.0"]),
        "top_p" => one_of(&["0", "0.9", "1", "1.0"]),
        "max_tokens" | "max_total_tokens" => int_in(1..=200_000),
        "max_retries" | "max_turns" => int_in(0..=12),
        "extra_body" => one_of(&["{seed: 1}", "{top_k: 5, stop: [x]}", "{}"]),
        "reasoning" => map_of(vec![
            ("effort", one_of(&["minimal", "low", "medium", "high"])),
            ("summary", one_of(&["auto", "concise", "detailed"])),
        ]),
        "reasoning_effort" | "effort" => one_of(&["minimal", "low", "medium", "high"]),
        "summary" => one_of(&["auto", "concise", "detailed"]),
        "text" => map_of(vec![("verbosity", one_of(&["low", "medium", "high"]))]),
        "verbosity" => one_of(&["low", "medium", "high"]),
        "thinking" => map_of(vec![
            ("type", one_of(&["enabled", "disabled"])),
            ("budget_tokens", int_in(0..=40_000)),
        ]),
        "thinking_budget" | "budget_tokens" => int_in(0..=40_000),
        "thinking_config" => map_of(vec![
            ("thinking_budget", int_in(0..=40_000)),
            ("include_thoughts", boolean()),
        ]),
        "enable_web_search"
        | "enable_code_execution"
        | "enable_code_interpreter"
        | "skip_final_presentation"
        | "logging_enabled"
        | "include_thoughts" => boolean(),
        "api_version" => one_of(&["2024-10-21", "2025-04-01-preview", "2023-06-01"]),
        "azure_endpoint" => one_of(&["https://example.openai.azure.com"]),
        "max_new_answers_per_agent" | "max_total_answers" => prop_oneof![
            4 => int_in(1..=6),
            1 => Just(Yaml::Scalar("null".into())),
        ]
        .boxed(),
        "restart_policy" => one_of(&["cancel", "finish"]),
        "max_workflow_retries" | "max_turn_restarts" => int_in(0..=100),
        "restart_window_seconds" => int_in(1..=MAX_TIMEOUT_SECONDS),
        "max_cost_usd" => one_of(&["0.5", "1", "25", "100.0"]),
        "orchestrator_timeout_seconds"
        | "turn_timeout_seconds"
        | "stall_timeout_seconds"
        | "connect_timeout_seconds" => int_in(1..=MAX_TIMEOUT_SECONDS),
        "display_type" => one_of(&["rich_terminal", "simple", "json", "quiet", "plain"]),
        "system_message" => one_of(&["You are terse.", "\"Be careful: ${HOST}\"", "''"]),
        "node" => one_of(&["gpu-1", "local"]),
        "input_per_million" | "output_per_million" => one_of(&["0", "0.15", "2.5", "60"]),
        _ => value(),
    }
}

/// A mapping of some of `keys` (and, rarely, a stray key) to values, mostly of the right
/// type (so documents get past the first check and into the deeper code).
fn section(keys: &'static [&'static str], max: usize) -> BoxedStrategy<Yaml> {
    proptest::collection::vec(
        prop_oneof![
            16 => proptest::sample::select(keys).prop_flat_map(|k| {
                (
                    Just(k.to_owned()),
                    prop_oneof![8 => good_value(k), 1 => value()],
                )
            }),
            1 => (key(), value()),
        ],
        0..max,
    )
    .prop_flat_map(|entries| (Just(entries), proptest::bool::weighted(0.05)))
    .prop_map(|(entries, duplicates)| Yaml::Map(dedupe(entries, duplicates)))
    .boxed()
}

const BACKEND_KEYS: &[&str] = &[
    "type",
    "type",
    "type",
    "model",
    "model",
    "model",
    "base_url",
    "api_key",
    "api_key_env",
    "temperature",
    "top_p",
    "max_tokens",
    "max_retries",
    "extra_body",
    "reasoning",
    "reasoning_effort",
    "text",
    "verbosity",
    "thinking",
    "thinking_budget",
    "thinking_config",
    "enable_web_search",
    "enable_code_execution",
    "enable_code_interpreter",
    "api_version",
    "azure_endpoint",
    "cwd",
    "allowed_tools",
    "disallowed_tools",
    "permission_mode",
    "max_turns",
    "mcp_servers",
    "seed",
    "stop",
];

const ORCHESTRATOR_KEYS: &[&str] = &[
    "max_new_answers_per_agent",
    "max_total_answers",
    "restart_policy",
    "max_workflow_retries",
    "skip_final_presentation",
    "max_turn_restarts",
    "restart_window_seconds",
    "max_cost_usd",
    "max_total_tokens",
    "pricing",
    "timeout",
    "snapshot_storage",
    "voting_sensitivity",
    "coordination",
    "debug",
];

const TIMEOUT_KEYS: &[&str] = &[
    "orchestrator_timeout_seconds",
    "turn_timeout_seconds",
    "stall_timeout_seconds",
    "connect_timeout_seconds",
];

const UI_KEYS: &[&str] = &["display_type", "type", "logging_enabled"];

/// A backend close to a real one: a known type and model most of the time.
fn backend() -> BoxedStrategy<Yaml> {
    (
        proptest::sample::select(vec![
            "openai",
            "chatcompletion",
            "claude",
            "gemini",
            "grok",
            "azure_openai",
            "claude_code",
            "sim",
            "lmstudio",
            "vllm",
            "openrouter",
            "groq",
            "zai",
        ]),
        proptest::sample::select(WORDS),
        section(BACKEND_KEYS, 4),
        proptest::bool::weighted(0.9),
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(kind, model, extra, keep, duplicates)| {
            let mut entries = Vec::new();
            if keep {
                entries.push(("type".to_owned(), Yaml::Scalar(kind.to_owned())));
                entries.push(("model".to_owned(), Yaml::Scalar(format!("\"{model}\""))));
            }
            if let Yaml::Map(more) = extra {
                entries.extend(more);
            }
            Yaml::Map(dedupe(entries, duplicates))
        })
        .boxed()
}

fn agent_node() -> BoxedStrategy<Yaml> {
    (
        proptest::option::of(prop_oneof![
            6 => "[a-z]{1,3}[0-9]?",
            1 => scalar(),
        ]),
        prop_oneof![12 => backend(), 1 => value()],
        section(&["system_message", "node", "id", "backend"], 2),
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(id, backend, extra, duplicates)| {
            let mut entries = Vec::new();
            if let Some(id) = id {
                entries.push(("id".to_owned(), Yaml::Scalar(id)));
            }
            entries.push(("backend".to_owned(), backend));
            if let Yaml::Map(more) = extra {
                entries.extend(more);
            }
            Yaml::Map(dedupe(entries, duplicates))
        })
        .boxed()
}

fn pricing() -> BoxedStrategy<Yaml> {
    proptest::collection::vec(
        (
            proptest::sample::select(WORDS).prop_map(str::to_owned),
            section(&["input_per_million", "output_per_million"], 3),
        ),
        0..3,
    )
    .prop_map(Yaml::Map)
    .boxed()
}

/// A whole config document, shaped like the real ones.
fn config_document() -> BoxedStrategy<Yaml> {
    (
        prop_oneof![
            6 => proptest::collection::vec(agent_node(), 1..5).prop_map(|a| ("agents", Yaml::List(a))),
            1 => Just(("agents", Yaml::List(Vec::new()))),
            2 => agent_node().prop_map(|a| ("agent", a)),
            1 => value().prop_map(|v| ("agents", v)),
        ],
        proptest::option::of((section(ORCHESTRATOR_KEYS, 5), proptest::option::of(pricing()))),
        proptest::option::of(section(TIMEOUT_KEYS, 4)),
        proptest::option::of(section(UI_KEYS, 2)),
        proptest::collection::vec((key(), value()), 0..2),
        proptest::bool::weighted(0.05),
    )
        .prop_map(|((agents_key, agents), orchestrator, timeouts, ui, extra, duplicates)| {
            let mut top = vec![(agents_key.to_owned(), agents)];
            if let Some((Yaml::Map(mut entries), pricing)) = orchestrator {
                if let Some(pricing) = pricing {
                    entries.push(("pricing".to_owned(), pricing));
                }
                top.push(("orchestrator".to_owned(), Yaml::Map(dedupe(entries, duplicates))));
            }
            if let Some(timeouts) = timeouts {
                top.push(("timeout_settings".to_owned(), timeouts));
            }
            if let Some(ui) = ui {
                top.push(("ui".to_owned(), ui));
            }
            top.extend(extra);
            Yaml::Map(dedupe(top, duplicates))
        })
        .boxed()
}

fn render(node: &Yaml, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match node {
        Yaml::Scalar(s) => {
            // Block scalars need their lines indented under the key.
            let s = s.replace('\n', &format!("\n{pad}  "));
            out.push_str(&s);
            out.push('\n');
        }
        Yaml::Flow(inner) => {
            render_flow(inner, out);
            out.push('\n');
        }
        Yaml::Map(entries) if entries.is_empty() => out.push_str("{}\n"),
        Yaml::List(items) if items.is_empty() => out.push_str("[]\n"),
        Yaml::Map(entries) => {
            out.push('\n');
            for (k, v) in entries {
                out.push_str(&pad);
                out.push_str(k);
                out.push_str(": ");
                render(v, indent + 2, out);
            }
        }
        Yaml::List(items) => {
            out.push('\n');
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                render(item, indent + 2, out);
            }
        }
    }
}

fn render_flow(node: &Yaml, out: &mut String) {
    match node {
        Yaml::Scalar(s) => out.push_str(&s.replace('\n', " ")),
        Yaml::Flow(inner) => render_flow(inner, out),
        Yaml::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                render_flow(v, out);
            }
            out.push('}');
        }
        Yaml::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_flow(item, out);
            }
            out.push(']');
        }
    }
}

/// A rendered document: the top-level mapping's entries start at column 0.
fn render_document(doc: &Yaml) -> String {
    let mut out = String::new();
    match doc {
        Yaml::Map(entries) => {
            for (k, v) in entries {
                out.push_str(k);
                out.push_str(": ");
                render(v, 2, &mut out);
            }
        }
        other => render(other, 0, &mut out),
    }
    out
}

/// The shipped example configs, read at test time.
fn shipped_configs() -> &'static [String] {
    static CONFIGS: OnceLock<Vec<String>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"));
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no configs in {}", dir.display());
        paths
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect()
    })
}

/// The lookup `${VAR}` resolves through.
fn env(name: &str) -> Option<String> {
    match name {
        "HOST" => Some("example.org".into()),
        "EMPTY" => Some(String::new()),
        "LONG" => Some("z".repeat(4096)),
        // Values are not expanded again: this must come out literally.
        "NESTED" => Some("${HOST}".into()),
        "CONCLAVE_SIM_URL" => Some("http://127.0.0.1:1/v1".into()),
        "OPENAI_API_KEY" | "ANTHROPIC_API_KEY" | "GEMINI_API_KEY" => Some("sk-test".into()),
        _ => None,
    }
}

/// Loads `yaml` and checks every outcome: errors must display, a loaded config must obey the
/// loader's documented rules and travel through the cluster codec.
fn check_load(yaml: &str) -> TestCaseResult {
    let result = bounded("load_str", yaml.len(), 512, || {
        load_str(yaml, "fuzz.yaml", &env)
    })?;
    match result {
        Err(error) => {
            let text = error.to_string();
            prop_assert!(!text.is_empty());
            let _ = error.key_path();
        }
        Ok(loaded) => {
            count_hit();
            for warning in &loaded.warnings {
                let _ = warning.to_string();
            }
            check_config(&loaded.config)?;
        }
    }
    Ok(())
}

fn check_config(config: &SessionConfig) -> TestCaseResult {
    prop_assert!(!config.agents.is_empty(), "a config without agents loaded");
    let mut ids = HashSet::new();
    for agent in &config.agents {
        prop_assert!(
            ids.insert(agent.id.as_str()),
            "duplicate agent id {:?}",
            agent.id
        );
        prop_assert!(!agent.id.trim().is_empty(), "empty agent id");
        let b = &agent.backend;
        if let Some(t) = b.temperature {
            prop_assert!((0.0..=2.0).contains(&t), "temperature {t} loaded");
        }
        if let Some(p) = b.top_p {
            prop_assert!(p.is_finite(), "top_p {p} loaded");
        }
        prop_assert!(!b.model.trim().is_empty() || b.wire.as_str() == "claude_code");
    }
    let t = &config.timeouts;
    for (name, seconds) in [
        (
            "orchestrator_timeout_seconds",
            t.orchestrator_timeout_seconds,
        ),
        ("turn_timeout_seconds", t.turn_timeout_seconds),
        ("stall_timeout_seconds", t.stall_timeout_seconds),
        ("connect_timeout_seconds", t.connect_timeout_seconds),
    ] {
        prop_assert!(
            (1..=MAX_TIMEOUT_SECONDS).contains(&seconds),
            "{name} = {seconds} loaded"
        );
    }
    let o = &config.orchestrator;
    prop_assert!(o.max_new_answers_per_agent != Some(0));
    prop_assert!(o.max_workflow_retries <= 100);
    prop_assert!(o.max_turn_restarts <= 100);
    prop_assert!(
        (1..=MAX_TIMEOUT_SECONDS).contains(&o.restart_window_seconds),
        "restart_window_seconds = {} loaded",
        o.restart_window_seconds
    );
    if let Some(cost) = o.max_cost_usd {
        prop_assert!(
            cost.is_finite() && cost >= 0.0,
            "max_cost_usd {cost} loaded"
        );
    }
    for price in &o.pricing {
        prop_assert!(
            price.input_per_million.is_finite() && price.output_per_million.is_finite(),
            "price {:?} loaded",
            price
        );
    }
    // The resolved config is sent to agent nodes: it must cross the codec unchanged.
    let frame = conclave_protocol::encode(config)
        .map_err(|e| TestCaseError::fail(format!("a loaded config does not encode: {e}")))?;
    let back: SessionConfig = conclave_protocol::decode(&frame)
        .map_err(|e| TestCaseError::fail(format!("a loaded config does not decode: {e}")))?;
    prop_assert_eq!(&back, config);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Config properties.
// ---------------------------------------------------------------------------------------------

/// Documents from the grammar, lightly mutated as text.
#[test]
fn config_documents_from_the_grammar() {
    TARGET.fuzz(
        "config_documents_from_the_grammar",
        1500,
        (
            config_document(),
            proptest::collection::vec(text_mutation(), 0..3),
        ),
        |(doc, mutations)| {
            let mut yaml = render_document(&doc);
            check_load(&yaml)?;
            if !mutations.is_empty() {
                for m in &mutations {
                    mutate_text(&mut yaml, m);
                }
                check_load(&yaml)?;
            }
            Ok(())
        },
    );
}

/// Arbitrary YAML trees of the config keys (no config shape imposed), block or flow style.
#[test]
fn arbitrary_yaml_trees() {
    TARGET.fuzz(
        "arbitrary_yaml_trees",
        500,
        (yaml_tree(), any::<bool>()),
        |(tree, flow)| {
            let yaml = if flow {
                let mut out = String::new();
                render_flow(&tree, &mut out);
                out
            } else {
                render_document(&tree)
            };
            check_load(&yaml)
        },
    );
}

/// The shipped configs with one to six text mutations.
#[test]
fn shipped_configs_mutated() {
    let configs = shipped_configs();
    TARGET.fuzz(
        "shipped_configs_mutated",
        800,
        (
            0..configs.len(),
            proptest::collection::vec(text_mutation(), 1..7),
        ),
        |(index, mutations)| {
            let mut yaml = configs[index].clone();
            for m in &mutations {
                mutate_text(&mut yaml, m);
            }
            check_load(&yaml)
        },
    );
}

/// Raw garbage as a config.
#[test]
fn garbage_configs() {
    TARGET.fuzz("garbage_configs", 700, garbage_text(400), |text| {
        check_load(&text)
    });
}

/// Every shipped config loads, and every prefix of it (cut at each line) loads or fails
/// cleanly; every byte-boundary cut of the first config too.
#[test]
fn shipped_config_prefixes() {
    let _guard = TARGET.watchdog_arm("shipped_config_prefixes", Arc::new("configs/*.yaml"));
    for yaml in shipped_configs() {
        check_load(yaml).unwrap();
        for (i, _) in yaml.match_indices('\n') {
            check_load(&yaml[..i]).unwrap();
        }
    }
    let first = &shipped_configs()[0];
    for i in (0..=first.len()).filter(|i| first.is_char_boundary(*i)) {
        check_load(&first[..i]).unwrap();
    }
}

/// Inputs known to be expensive for a naive loader: deep nesting, alias bombs, huge
/// scalars, deeply nested `${...:-...}` defaults.
#[test]
fn hostile_config_shapes() {
    let _guard = TARGET.watchdog_arm("hostile_config_shapes", Arc::new("hostile shapes"));
    let agent = "agents:\n  - id: a\n    backend: {type: sim, model: m}\n";
    let mut docs = vec![
        format!("{agent}x: {}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("{agent}x: {}", "{a: ".repeat(50_000)),
        format!(
            "{agent}x:\n{}",
            (0..20_000)
                .map(|i| format!("{}- \n", " ".repeat(i % 200)))
                .collect::<String>()
        ),
        format!(
            "{agent}a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
             c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
             e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
             g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
        ),
        format!("{agent}x: \"{}\"", "a".repeat(4 * 1024 * 1024)),
        format!(
            "{agent}{}",
            (0..100_000)
                .map(|i| format!("k{i}: {i}\n"))
                .collect::<String>()
        ),
        format!(
            "agents:\n{}",
            (0..5_000)
                .map(|i| format!("  - {{id: a{i}, backend: {{type: sim, model: m}}}}\n"))
                .collect::<String>()
        ),
        format!(
            "agents:\n{}",
            (0..2_000)
                .map(|_| "  - {id: same, backend: {type: sim, model: m}}\n")
                .collect::<String>()
        ),
    ];
    for depth in [100usize, 1_000, 10_000, 100_000] {
        docs.push(format!(
            "agents:\n  - id: a\n    backend:\n      type: sim\n      model: \"{}m{}\"\n",
            "${NOPE:-".repeat(depth),
            "}".repeat(depth)
        ));
        docs.push(format!(
            "agents:\n  - id: a\n    backend:\n      type: sim\n      model: \"{}\"\n",
            "${".repeat(depth)
        ));
    }
    for doc in &docs {
        let started = Instant::now();
        check_load(doc).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a {}-byte document took {:?}",
            doc.len(),
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// .env files.
// ---------------------------------------------------------------------------------------------

fn dotenv_line() -> BoxedStrategy<String> {
    let name = prop_oneof![
        40 => "[A-Z_][A-Z0-9_]{0,12}",
        1 => "[a-z0-9 .-]{0,6}",
        1 => Just(String::new()),
    ];
    let raw_value = prop_oneof![
        "[ -~]{0,24}",
        "\\PC{0,8}",
        Just("value # comment".to_owned()),
        Just("a#b".to_owned()),
    ];
    prop_oneof![
        6 => (name.clone(), raw_value.clone()).prop_map(|(k, v)| format!("{k}={v}")),
        2 => (name.clone(), raw_value.clone()).prop_map(|(k, v)| format!("export {k} = {v}")),
        2 => (name.clone(), "[^']{0,16}", any::<bool>())
            .prop_map(|(k, v, close)| format!("{k}='{v}{}", if close { "'" } else { "" })),
        3 => (name.clone(), "([ -~]|\\\\[ntr\"\\\\]|\\n){0,24}", any::<bool>())
            .prop_map(|(k, v, close)| format!("{k}=\"{v}{}", if close { "\"" } else { "" })),
        1 => name.clone(),
        1 => "#[ -~]{0,20}",
        1 => Just(String::new()),
        1 => "[ -~]{0,20}",
        1 => (name, 0usize..3000).prop_map(|(k, n)| format!("{k}={}", "v".repeat(n))),
    ]
    .boxed()
}

#[test]
fn dotenv_files() {
    TARGET.fuzz(
        "dotenv_files",
        1500,
        (
            prop_oneof![
                4 => proptest::collection::vec(dotenv_line(), 0..24).prop_map(|l| l.join("\n")),
                1 => garbage_text(300),
            ],
            proptest::collection::vec(text_mutation(), 0..3),
        ),
        |(mut text, mutations)| {
            for m in &mutations {
                mutate_text(&mut text, m);
            }
            let result = bounded("parse_dotenv", text.len(), 64, || {
                parse_dotenv(&text, Path::new("fuzz.env"))
            })?;
            match result {
                Ok(pairs) => {
                    count_hit();
                    for (key, value) in &pairs {
                        prop_assert!(
                            !key.is_empty()
                                && !key.starts_with(|c: char| c.is_ascii_digit())
                                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                            "bad key {:?}",
                            key
                        );
                        prop_assert!(value.len() <= text.len(), "value longer than the file");
                    }
                }
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
            Ok(())
        },
    );
}

/// `.env` shapes that are expensive for a naive parser: an unterminated double quote
/// followed by many lines, very long lines, many escapes.
#[test]
fn hostile_dotenv_shapes() {
    let _guard = TARGET.watchdog_arm("hostile_dotenv_shapes", Arc::new("hostile .env"));
    let docs = [
        format!("A=\"{}", "x\n".repeat(200_000)),
        format!("A=\"{}", "\\\"\n".repeat(200_000)),
        format!("A=\"{}\"", "\\".repeat(1_000_001)),
        format!("A={}", "v".repeat(8 * 1024 * 1024)),
        "A=1\n".repeat(200_000),
        format!("A='{}", "x".repeat(1_000_000)),
    ];
    for text in &docs {
        let started = Instant::now();
        let result = bounded("parse_dotenv", text.len(), 64, || {
            parse_dotenv(text, Path::new("big.env"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = result.map(|p| p.len()).map_err(|e| e.to_string());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a {}-byte .env took {:?}",
            text.len(),
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Journals.
// ---------------------------------------------------------------------------------------------

/// A loaded config for the journals' `session_started` line.
fn journal_config() -> &'static Value {
    static CONFIG: OnceLock<Value> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let yaml = shipped_configs()
            .iter()
            .find(|c| c.contains("id: alpha") && c.contains("type: sim"))
            .expect("configs/three_agents_sim.yaml");
        let loaded = load_str(yaml, "three_agents_sim.yaml", &env).expect("the sim config loads");
        serde_json::to_value(&loaded.config).expect("config to JSON")
    })
}

const AGENTS: &[&str] = &["alpha", "beta", "gamma"];
const MODES: [&str; 3] = ["coordinate", "present", "??"];

fn jagent() -> BoxedStrategy<String> {
    prop_oneof![
        60 => proptest::sample::select(AGENTS).prop_map(str::to_owned),
        1 => Just("nobody".to_owned()),
        1 => "\\PC{0,6}",
    ]
    .boxed()
}

fn jnum() -> BoxedStrategy<u64> {
    prop_oneof![
        6 => 0u64..8,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 2 + 1),
        1 => any::<u64>(),
    ]
    .boxed()
}

fn decision() -> BoxedStrategy<Value> {
    prop_oneof![
        "\\PC{0,20}".prop_map(|content| json!({"NewAnswer": {"content": content}})),
        (0u32..5, 0u32..4, "\\PC{0,10}").prop_map(|(agent, answer, reason)| {
            json!({"Vote": {"label": {"agent": agent, "answer": answer}, "reason": reason}})
        }),
    ]
    .boxed()
}

/// One journal event (without the timing fields), in the journal's JSON shape.
fn journal_event() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (jagent(), jnum(), jnum(), decision()).prop_map(|(agent, turn, seen, decision)| json!({
            "type": "decision_received", "agent": agent, "turn": turn,
            "seen_revision": seen, "decision": decision})),
        2 => (jagent(), jnum(), "\\PC{0,20}").prop_map(|(agent, turn, content)| json!({
            "type": "presentation_received", "agent": agent, "turn": turn, "content": content})),
        2 => (jagent(), jnum(), "[a-z_]{0,10}", "\\PC{0,10}").prop_map(|(agent, turn, kind, message)| json!({
            "type": "turn_failed", "agent": agent, "turn": turn, "kind": kind, "message": message})),
        1 => (jagent(), "\\PC{0,10}").prop_map(|(agent, reason)| json!({
            "type": "agent_lost", "agent": agent, "reason": reason})),
        3 => (jagent(), jnum(), jnum(), jnum(), proptest::option::of(prop_oneof![any::<f64>(), Just(1e308)]))
            .prop_map(|(agent, turn, input, output, cost)| json!({
                "type": "usage", "agent": agent, "turn": turn, "input_tokens": input,
                "output_tokens": output, "cost_usd": cost})),
        2 => (jagent(), jnum(), 0usize..3, jnum(), any::<bool>()).prop_map(|(agent, turn, mode, revision, may)| json!({
            "type": "turn_started", "agent": agent, "turn": turn,
            "mode": MODES[mode], "revision": revision,
            "may_answer": may, "answers": ["agent1.1"]})),
        1 => (jagent(), jnum()).prop_map(|(agent, turn)| json!({
            "type": "turn_cancelled", "agent": agent, "turn": turn})),
        1 => jnum().prop_map(|after| json!({"type": "timed_out", "after_ms": after})),
        1 => Just(json!({"type": "interrupted"})),
        1 => "\\PC{0,10}".prop_map(|reason| json!({"type": "budget_exhausted", "reason": reason})),
        1 => (proptest::option::of(jagent()), "\\PC{0,10}").prop_map(|(winner, content)| json!({
            "type": "final_answer", "winner": winner, "label": "agent1.1",
            "presented_by": winner, "content": content})),
        1 => (any::<i32>(), jnum()).prop_map(|(code, n)| json!({
            "type": "session_ended", "reason": "consensus", "exit_code": code, "wall_ms": n,
            "input_tokens": n, "output_tokens": n, "answers": 1, "turns": n})),
        1 => Just(json!({"type": "all_agents_failed"})),
        1 => "[a-z_]{1,12}".prop_map(|kind| json!({"type": kind})),
    ]
    .boxed()
}

fn session_started(question: &str) -> Value {
    json!({
        "type": "session_started", "session": "fuzz-1", "question": question,
        "history": [["q0", "a0"]], "conclave_version": "0.1.0",
        "agents": AGENTS.iter().enumerate().map(|(i, id)| json!({
            "id": id, "number": i + 1, "provider": "sim", "model": "m", "node": null
        })).collect::<Vec<_>>(),
        "config": journal_config(),
    })
}

fn line_text(t_ms: u64, event: &Value) -> String {
    let mut line = event.clone();
    if let Value::Object(map) = &mut line {
        map.insert("t_ms".into(), json!(t_ms));
        map.insert("unix_ms".into(), json!(1_700_000_000_000u64 + t_ms));
    }
    let mut text = serde_json::to_string(&line).expect("JSON");
    text.push('\n');
    text
}

#[derive(Debug, Clone)]
enum JournalDamage {
    /// Bytes appended with no newline (a torn last write).
    TornTail(Vec<u8>),
    /// A line cut short (and newline-terminated) somewhere in the middle.
    CutLine { line: usize, at: usize },
    /// Random bytes flipped anywhere.
    Flip { at: usize, byte: u8 },
    /// Text mutations of the whole file.
    Text(Vec<TextMutation>),
    /// A raw garbage line inserted.
    Garbage { line: usize, bytes: Vec<u8> },
    /// Nothing.
    None,
}

fn journal_damage() -> impl Strategy<Value = JournalDamage> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(JournalDamage::TornTail),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(line, at)| JournalDamage::CutLine { line, at }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| JournalDamage::Flip { at, byte }),
        2 => proptest::collection::vec(text_mutation(), 1..4).prop_map(JournalDamage::Text),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(line, bytes)| JournalDamage::Garbage { line, bytes }),
        2 => Just(JournalDamage::None),
    ]
}

/// Writes `bytes` as a session's journal and checks the reader and the resume replay.
fn check_journal(dir: &Path, bytes: &[u8], intact_lines: Option<usize>) -> TestCaseResult {
    let path = dir.join(EVENTS_FILE);
    std::fs::write(&path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let read = bounded("read_events", bytes.len(), 64, || read_events(&path))?;
    match &read {
        Ok(journal) => {
            prop_assert!(journal.valid_len <= bytes.len() as u64);
            let newlines = bytes.iter().filter(|b| **b == b'\n').count();
            prop_assert!(journal.lines.len() <= newlines);
            if let Some(n) = intact_lines {
                prop_assert_eq!(journal.lines.len(), n);
            }
            // The intact prefix reads back as the same lines, with nothing torn.
            let cut = &bytes[..journal.valid_len as usize];
            std::fs::write(&path, cut).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again =
                bounded("read_events", cut.len(), 64, || read_events(&path))?.map_err(|e| {
                    TestCaseError::fail(format!("the intact prefix does not read: {e}"))
                })?;
            prop_assert_eq!(again.lines.len(), journal.lines.len());
            prop_assert_eq!(again.torn_lines_skipped, 0);
            prop_assert_eq!(again.valid_len, journal.valid_len);
            std::fs::write(&path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Err(error) => {
            prop_assert!(intact_lines.is_none(), "an intact journal failed: {error}");
            prop_assert!(!error.to_string().is_empty());
        }
    }
    let plan = bounded("resume::load", bytes.len(), 64, || {
        conclave::resume::load(dir)
    })?;
    match plan {
        Ok(plan) => {
            count_hit();
            prop_assert!(plan.valid_len <= bytes.len() as u64);
            prop_assert_eq!(plan.usage.len(), plan.config.agents.len());
        }
        Err(error) => prop_assert!(!error.to_string().is_empty()),
    }
    Ok(())
}

#[test]
fn journals_with_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The seed journal must still match the journal's schema, or this test fuzzes nothing.
    {
        let mut text = line_text(0, &session_started("q"));
        text.push_str(&line_text(
            1,
            &json!({"type": "usage", "agent": "alpha", "turn": 1,
            "input_tokens": 1, "output_tokens": 2}),
        ));
        std::fs::write(dir.path().join(EVENTS_FILE), &text).expect("write");
        let read = read_events(&dir.path().join(EVENTS_FILE)).unwrap_or_else(|e| {
            panic!("the seed journal of fuzz_inputs.rs no longer parses ({e}); update it")
        });
        assert_eq!(
            read.lines.len(),
            2,
            "the seed journal no longer parses; update it"
        );
        conclave::resume::load(dir.path()).unwrap_or_else(|e| {
            panic!("the seed journal of fuzz_inputs.rs no longer resumes ({e}); update it")
        });
    }
    TARGET.fuzz(
        "journals_with_damage",
        700,
        (
            "\\PC{0,20}",
            proptest::collection::vec(journal_event(), 0..24),
            journal_damage(),
        ),
        |(question, events, damage)| {
            let mut lines: Vec<String> = vec![line_text(0, &session_started(&question))];
            for (i, event) in events.iter().enumerate() {
                lines.push(line_text(i as u64 + 1, event));
            }
            // A bare `{"type": ...}` of a variant with fields makes its line unreadable.
            let known = events.iter().all(|e| {
                e.as_object().is_some_and(|o| o.len() > 1)
                    || matches!(
                        e["type"].as_str(),
                        Some("interrupted" | "all_agents_failed")
                    )
            });
            let mut bytes = lines.concat().into_bytes();
            let mut intact = known.then_some(lines.len());
            match &damage {
                JournalDamage::TornTail(tail) => {
                    let tail: Vec<u8> = tail.iter().copied().filter(|b| *b != b'\n').collect();
                    bytes.extend_from_slice(&tail);
                }
                JournalDamage::CutLine { line, at } => {
                    let i = line % lines.len();
                    let l = &mut lines[i];
                    let cut = at % l.len();
                    l.truncate(l.floor_char_boundary(cut));
                    l.push('\n');
                    bytes = lines.concat().into_bytes();
                    intact = None;
                }
                JournalDamage::Flip { at, byte } => {
                    let i = at % bytes.len();
                    bytes[i] = *byte;
                    intact = None;
                }
                JournalDamage::Text(mutations) => {
                    let mut text = lines.concat();
                    for m in mutations {
                        mutate_text(&mut text, m);
                    }
                    bytes = text.into_bytes();
                    intact = None;
                }
                JournalDamage::Garbage {
                    line,
                    bytes: garbage,
                } => {
                    let i = line % (lines.len() + 1);
                    let mut g: Vec<u8> = garbage.iter().copied().filter(|b| *b != b'\n').collect();
                    g.push(b'\n');
                    lines.insert(i, String::from_utf8_lossy(&g).into_owned());
                    bytes = lines.concat().into_bytes();
                    intact = None;
                }
                JournalDamage::None => {}
            }
            check_journal(dir.path(), &bytes, intact)
        },
    );
}

#[test]
fn garbage_journals() {
    let dir = tempfile::tempdir().expect("temp dir");
    TARGET.fuzz(
        "garbage_journals",
        600,
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            garbage_text(300).prop_map(String::into_bytes),
            proptest::collection::vec(
                prop_oneof![
                    Just(b"{}\n".to_vec()),
                    Just(b"\n".to_vec()),
                    Just(b"{\"t_ms\":0,\"unix_ms\":0,\"type\":\"interrupted\"}\n".to_vec()),
                    Just(b"{\"t_ms\":0,\"unix_ms\":0,\"type\":\"usage\"}\n".to_vec()),
                    Just(b"\xff\xfe\n".to_vec()),
                    Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n".to_vec()),
                    Just(b"{\"t_ms\":1e999}\n".to_vec()),
                    Just(b"\r\n".to_vec()),
                ],
                0..20
            )
            .prop_map(|l| l.concat()),
        ],
        |bytes| check_journal(dir.path(), &bytes, None),
    );
}

/// Deeply nested JSON, very long lines and many lines.
#[test]
fn hostile_journal_shapes() {
    let _guard = TARGET.watchdog_arm("hostile_journal_shapes", Arc::new("hostile journals"));
    let dir = tempfile::tempdir().expect("temp dir");
    let start = line_text(0, &session_started("q"));
    let docs: Vec<Vec<u8>> = vec![
        format!("{start}{}\n", "[".repeat(1_000_000)).into_bytes(),
        format!("{start}{{\"t_ms\":0,\"unix_ms\":0,\"type\":\"presentation_received\",\"agent\":\"alpha\",\"turn\":1,\"content\":{}}}\n", "[".repeat(100_000)).into_bytes(),
        format!("{start}{}", "x".repeat(8 * 1024 * 1024)).into_bytes(),
        format!(
            "{start}{}",
            (0..100_000u64)
                .map(|i| line_text(i, &json!({"type": "usage", "agent": "alpha", "turn": 1,
                    "input_tokens": u64::MAX, "output_tokens": u64::MAX})))
                .collect::<String>()
        )
        .into_bytes(),
        format!("{start}{}", "\n".repeat(1_000_000)).into_bytes(),
    ];
    for bytes in &docs {
        let started = Instant::now();
        check_journal(dir.path(), bytes, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a {}-byte journal took {:?}",
            bytes.len(),
            started.elapsed()
        );
    }
}
