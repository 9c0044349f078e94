//! Bounded fuzzing of what the simulated provider reads from a client: the model-string
//! options ([`ModelOptions::parse`], pure) and the request bodies and URLs of every wire
//! format (over real HTTP, since the wire parsers are private).
//!
//! Inputs are structure aware: model strings are built from the real option keys
//! ([`KNOWN_KEYS`]) with values in and out of range, repeated, empty, non-numeric or huge;
//! request bodies start as valid requests of each wire (Chat Completions, Responses,
//! Anthropic Messages, Gemini) with tools, `vote` enums and messages, then are mutated at the
//! JSON level (values replaced by extreme numbers, wrong types, deep nesting and long
//! strings; keys dropped or renamed) or at the byte level, plus raw garbage; Gemini's model
//! and method ride in the URL path, which is fuzzed too.
//!
//! Checked: no panic (a handler panic shows as a dropped connection), no hang (each request
//! runs under `tokio::time::timeout`, and a watchdog aborts the run and prints the input when
//! one case runs longer than `CONCLAVE_FUZZ_HANG_SECS`, default 30), every request gets a
//! complete HTTP response, a 5xx only when the model string asked for a fault, error bodies
//! are JSON envelopes, successful bodies are JSON or SSE whose data lines are JSON, and the
//! server still answers `/health` and `/__sim/stats` afterwards. Memory: the peak heap growth
//! of one request (client and server run on the test thread) stays bounded.
//!
//! Case counts keep the file under ~20 s in debug; `CONCLAVE_FUZZ_CASES=N` runs `N` cases per
//! property and `CONCLAVE_FUZZ_SEED=S` changes the fixed seed, e.g.
//! `CONCLAVE_FUZZ_CASES=20000 cargo test --release -p conclave-sim --test fuzz_requests -- --nocapture`.

use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use conclave_fuzz::{Target, count_input, peak_growth};
use conclave_sim::{
    KNOWN_KEYS, MAX_DELAY_MS, MAX_FAULT_TIMES, MAX_RETRY_AFTER_S, MAX_TOKENS, ModelOptions,
    SimConfig, SimServer,
};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestCaseResult};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Harness: case counts, fixed seed, watchdog, allocation accounting.
// ---------------------------------------------------------------------------------------------

/// This file's seed and summary words; the harness itself is `conclave_fuzz`'s.
const TARGET: Target = Target {
    file: "fuzz_requests",
    seed: 0xC0C1_A7E0_F4A3_0004,
    verb: "run",
    hits: None,
};

#[global_allocator]
static ALLOC: conclave_fuzz::CountingAlloc = conclave_fuzz::CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Model strings.
// ---------------------------------------------------------------------------------------------

const FAULTS: &[&str] = &[
    "429",
    "500",
    "503",
    "529",
    "quota",
    "stream_error",
    "stall",
    "truncate",
    "malformed",
    "reset",
    "slow_first_byte",
];

/// Faults that still give a complete HTTP response quickly (no stall, reset or held headers).
const QUICK_FAULTS: &[&str] = &[
    "429",
    "500",
    "503",
    "529",
    "quota",
    "stream_error",
    "truncate",
    "malformed",
];

fn option_value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0u64..200).prop_map(|n| n.to_string()),
        2 => proptest::sample::select(FAULTS).prop_map(str::to_owned),
        1 => proptest::sample::select(vec!["default", "answer", "text", "vote", ""])
            .prop_map(str::to_owned),
        1 => proptest::sample::select(vec![
            "0", "1", "100000", "100001", "3600000", "3600001", "86400", "86401", "1000000",
            "1000001", "4294967295", "4294967296", "18446744073709551615",
            "18446744073709551616", "-1", "+1", " 1", "1.5", "1e3", "0x10", "١٢", "=", ",",
        ])
        .prop_map(str::to_owned),
        1 => "[ -~]{0,8}",
    ]
    .boxed()
}

/// A model string: a name, then maybe `:key=value,...` options.
fn model_string() -> BoxedStrategy<String> {
    let item = prop_oneof![
        8 => (proptest::sample::select(KNOWN_KEYS), option_value())
            .prop_map(|(k, v)| format!("{k}={v}")),
        1 => "[a-z_]{0,8}=[ -~]{0,4}",
        1 => "[ -~]{0,6}",
    ];
    (
        prop_oneof![
            6 => "[a-z][a-z0-9-]{0,10}",
            1 => Just(String::new()),
            1 => Just(" ".to_owned()),
            1 => "\\PC{0,8}",
            1 => Just("gpt:4o".to_owned()),
        ],
        proptest::option::weighted(0.8, proptest::collection::vec(item, 0..6)),
        proptest::sample::select(vec![",", ", ", ",,", " , "]),
    )
        .prop_map(|(name, options, separator)| match options {
            Some(items) => format!("{name}:{}", items.join(separator)),
            None => name,
        })
        .boxed()
}

#[test]
fn model_options() {
    let defaults = SimConfig::default();
    TARGET.fuzz(
        "model_options",
        6000,
        (model_string(), 0usize..300_000),
        |(model, pieces)| {
            count_input();
            let (result, peak) = peak_growth(|| ModelOptions::parse(&model, &defaults));
            prop_assert!(peak <= 64 * model.len() + 64 * 1024, "heap grew by {peak}");
            match result {
                Ok(options) => {
                    prop_assert!(!options.name.trim().is_empty());
                    prop_assert!((1..=MAX_TOKENS).contains(&options.tokens));
                    prop_assert!(options.token_delay <= Duration::from_millis(MAX_DELAY_MS));
                    prop_assert!(options.first_byte_delay <= Duration::from_millis(MAX_DELAY_MS));
                    prop_assert!(options.fault_times.is_none_or(|t| t <= MAX_FAULT_TIMES));
                    let hint = &options.retry_hint;
                    prop_assert!(hint.millis.is_none_or(|m| m <= MAX_DELAY_MS));
                    prop_assert!(hint.seconds.is_none_or(|s| s <= MAX_RETRY_AFTER_S));
                    prop_assert!(hint.date_in_seconds.is_none_or(|s| s <= MAX_RETRY_AFTER_S));
                    prop_assert!(options.fault_after(pieces) <= pieces);
                    if options.fault.is_none() {
                        prop_assert!(
                            options.fault_times.is_none() && options.stall_after.is_none()
                        );
                    }
                }
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Requests over HTTP.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Responses,
    Messages,
    Gemini,
}

/// A model string for HTTP cases: options that keep a reply short and fast, sometimes a
/// quick fault, sometimes an invalid option (a 400).
fn http_model() -> BoxedStrategy<String> {
    let item = prop_oneof![
        3 => (1u32..24).prop_map(|n| format!("tokens={n}")),
        1 => (0u32..2).prop_map(|n| format!("token_delay_ms={n}")),
        1 => (0u32..2).prop_map(|n| format!("first_byte_ms={n}")),
        2 => proptest::sample::select(vec!["default", "answer", "text", "marked", "wrong_label", "broken_json"]).prop_map(|p| format!("policy={p}")),
        2 => proptest::sample::select(QUICK_FAULTS).prop_map(|f| format!("fault={f}")),
        1 => (0u32..3).prop_map(|n| format!("fault_times={n}")),
        1 => (0u32..50).prop_map(|n| format!("retry_after_ms={n}")),
        1 => (0u32..3).prop_map(|n| format!("retry_after={n}")),
        1 => (0u32..3).prop_map(|n| format!("retry_after_date={n}")),
        1 => (0u32..30).prop_map(|n| format!("stall_after={n}")),
        1 => proptest::sample::select(vec!["tokens=0", "tokens=x", "bogus=1", "fault=nope", "x"])
            .prop_map(str::to_owned),
    ];
    (
        prop_oneof!["sim-[a-z]{1,6}", Just("gpt-4o".to_owned()), "\\PC{1,6}"],
        proptest::collection::vec(item, 0..4),
    )
        .prop_map(|(name, items)| {
            if items.is_empty() {
                name
            } else {
                format!("{name}:{}", items.join(","))
            }
        })
        .boxed()
}

fn text() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => "[ -~]{0,30}".prop_map(Value::String),
        1 => "\\PC{0,20}".prop_map(Value::String),
        1 => (1usize..200_000).prop_map(|n| Value::String("word ".repeat(n / 5 + 1))),
    ]
    .boxed()
}

fn labels() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => proptest::collection::vec("agent[0-9]\\.[0-9]", 0..4).prop_map(|l| json!(l)),
        1 => json_atom(),
        1 => Just(json!([1, null, "agent1.1"])),
        1 => "\\PC{0,10}".prop_map(|l| json!([l])),
    ]
    .boxed()
}

fn schema(labels: Value) -> Value {
    json!({"type": "object", "properties": {
        "agent_id": {"type": "string", "enum": labels},
        "reason": {"type": "string"}}, "required": ["agent_id"]})
}

/// Tool names: the workflow tools mostly.
fn tool_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(vec!["vote", "new_answer", "search"]).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
    .boxed()
}

/// A valid request body for `route` with random content.
fn request_body(route: Route) -> BoxedStrategy<(Value, bool)> {
    let messages = proptest::collection::vec(
        (
            proptest::sample::select(vec!["user", "assistant", "system", "tool", "model"]),
            prop_oneof![
                3 => text(),
                1 => proptest::collection::vec(text(), 0..3)
                    .prop_map(|parts| json!(parts.into_iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>())),
                1 => json_atom(),
            ],
        ),
        0..5,
    );
    let tools = proptest::collection::vec((tool_name(), labels()), 0..4);
    (messages, tools, any::<bool>(), text())
        .prop_map(move |(messages, tools, stream, system)| {
            let body = match route {
                Route::Chat => json!({
                    "model": "", "stream": stream,
                    "stream_options": {"include_usage": true},
                    "messages": messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect::<Vec<_>>(),
                    "tools": tools.iter().map(|(name, labels)| json!({"type": "function", "function": {"name": name, "parameters": schema(labels.clone())}})).collect::<Vec<_>>(),
                }),
                Route::Responses => json!({
                    "model": "", "stream": stream, "instructions": system,
                    "input": messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect::<Vec<_>>(),
                    "tools": tools.iter().map(|(name, labels)| json!({"type": "function", "name": name, "parameters": schema(labels.clone())})).collect::<Vec<_>>(),
                }),
                Route::Messages => json!({
                    "model": "", "stream": stream, "max_tokens": 100, "system": system,
                    "messages": messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect::<Vec<_>>(),
                    "tools": tools.iter().map(|(name, labels)| json!({"name": name, "input_schema": schema(labels.clone())})).collect::<Vec<_>>(),
                }),
                Route::Gemini => json!({
                    "systemInstruction": {"parts": [{"text": system}]},
                    "contents": messages.iter().map(|(role, content)| json!({"role": role, "parts": [{"text": content}]})).collect::<Vec<_>>(),
                    "tools": [{"functionDeclarations": tools.iter().map(|(name, labels)| json!({"name": name, "parameters": schema(labels.clone())})).collect::<Vec<_>>()}],
                }),
            };
            (body, stream)
        })
        .boxed()
}

fn json_atom() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e308)),
        Just(json!("")),
        Just(json!({})),
        Just(json!([])),
        Just(json!([{}])),
        Just(json!({"text": 5})),
        (1usize..126).prop_map(|depth| {
            let mut v = json!("x");
            for _ in 0..depth {
                v = json!({"a": [v]});
            }
            v
        }),
        (1usize..50_000).prop_map(|n| json!("z".repeat(n))),
        "\\PC{0,10}".prop_map(Value::String),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
enum JsonMutation {
    Replace { node: usize, with: Value },
    Remove { node: usize },
    Rename { node: usize, to: &'static str },
}

const KEYS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "stream",
    "stream_options",
    "include_usage",
    "input",
    "instructions",
    "system",
    "contents",
    "parts",
    "text",
    "role",
    "content",
    "function",
    "name",
    "parameters",
    "properties",
    "agent_id",
    "enum",
    "functionDeclarations",
    "function_declarations",
    "systemInstruction",
    "input_schema",
    "parametersJsonSchema",
];

fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    prop_oneof![
        4 => (any::<usize>(), json_atom()).prop_map(|(node, with)| JsonMutation::Replace { node, with }),
        2 => any::<usize>().prop_map(|node| JsonMutation::Remove { node }),
        1 => (any::<usize>(), proptest::sample::select(KEYS)).prop_map(|(node, to)| JsonMutation::Rename { node, to }),
    ]
}

fn node_count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(node_count).sum(),
        Value::Object(map) => map.values().map(node_count).sum(),
        _ => 0,
    }
}

/// Calls `f` on the `n`-th node of `value` in pre-order.
fn with_node(value: &mut Value, n: usize, f: &mut dyn FnMut(&mut Value)) -> Option<usize> {
    if n == 0 {
        f(value);
        return None;
    }
    let mut n = n - 1;
    let children: Vec<&mut Value> = match value {
        Value::Array(items) => items.iter_mut().collect(),
        Value::Object(map) => map.values_mut().collect(),
        _ => return Some(n),
    };
    for child in children {
        match with_node(child, n, f) {
            None => return None,
            Some(rest) => n = rest,
        }
    }
    Some(n)
}

fn apply_json_mutation(value: &mut Value, mutation: &JsonMutation) {
    let count = node_count(value);
    match mutation {
        JsonMutation::Replace { node, with } => {
            with_node(value, node % count, &mut |v| *v = with.clone());
        }
        JsonMutation::Remove { node } => {
            with_node(value, node % count, &mut |v| match v {
                Value::Object(map) if !map.is_empty() => {
                    let key = map
                        .keys()
                        .nth(node % map.len())
                        .cloned()
                        .unwrap_or_default();
                    map.remove(&key);
                }
                Value::Array(items) if !items.is_empty() => {
                    let i = node % items.len();
                    items.remove(i);
                }
                _ => {}
            });
        }
        JsonMutation::Rename { node, to } => {
            with_node(value, node % count, &mut |v| {
                if let Value::Object(map) = v
                    && !map.is_empty()
                {
                    let key = map
                        .keys()
                        .nth(node % map.len())
                        .cloned()
                        .unwrap_or_default();
                    if let Some(moved) = map.remove(&key) {
                        map.insert((*to).to_owned(), moved);
                    }
                }
            });
        }
    }
}

/// How the body bytes are damaged after serialisation.
#[derive(Debug, Clone)]
enum BodyDamage {
    None,
    Truncate(usize),
    Flip(usize, u8),
    Garbage(Vec<u8>),
}

fn body_damage() -> impl Strategy<Value = BodyDamage> {
    prop_oneof![
        8 => Just(BodyDamage::None),
        1 => any::<usize>().prop_map(BodyDamage::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| BodyDamage::Flip(at, b)),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(BodyDamage::Garbage),
    ]
}

/// One HTTP case.
#[derive(Debug, Clone)]
struct Case {
    route: Route,
    model: String,
    body: Value,
    mutations: Vec<JsonMutation>,
    damage: BodyDamage,
    /// Gemini only: the method after the model in the URL.
    method: String,
    content_type: &'static str,
}

fn case() -> impl Strategy<Value = Case> {
    proptest::sample::select(vec![
        Route::Chat,
        Route::Responses,
        Route::Messages,
        Route::Gemini,
    ])
    .prop_flat_map(|route| {
        (
            Just(route),
            http_model(),
            request_body(route),
            prop_oneof![
                3 => Just(Vec::new()),
                2 => proptest::collection::vec(json_mutation(), 1..4),
            ],
            body_damage(),
            prop_oneof![
                4 => Just("streamGenerateContent?alt=sse".to_owned()),
                2 => Just("generateContent".to_owned()),
                1 => Just("streamGenerateContent".to_owned()),
                1 => "[a-zA-Z?=&%]{0,12}",
            ],
            proptest::sample::select(vec![
                "application/json",
                "application/json",
                "text/plain",
                "",
            ]),
        )
    })
    .prop_map(
        |(route, model, (body, _stream), mutations, damage, method, content_type)| Case {
            route,
            model,
            body,
            mutations,
            damage,
            method,
            content_type,
        },
    )
}

/// Percent-encodes everything but unreserved characters, for a path segment.
fn path_segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'=' | b',')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn runtime() -> &'static tokio::runtime::Runtime {
    thread_local! {
        static RT: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
        ));
    }
    RT.with(|rt| *rt)
}

/// How many responses had each status, for the summary.
static STATUSES: Mutex<std::collections::BTreeMap<u16, u64>> =
    Mutex::new(std::collections::BTreeMap::new());

/// Sends one case and checks the answer.
async fn send(client: &reqwest::Client, server: &SimServer, case: &Case) -> TestCaseResult {
    let mut body = case.body.clone();
    if case.route != Route::Gemini
        && let Value::Object(map) = &mut body
    {
        map.insert("model".into(), json!(case.model));
    }
    for m in &case.mutations {
        apply_json_mutation(&mut body, m);
    }
    let mut bytes = serde_json::to_vec(&body).expect("JSON");
    match &case.damage {
        BodyDamage::None => {}
        BodyDamage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        BodyDamage::Flip(at, b) => {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = *b;
            }
        }
        BodyDamage::Garbage(garbage) => bytes = garbage.clone(),
    }
    let url = match case.route {
        Route::Chat => format!("{}/chat/completions", server.base_url()),
        Route::Responses => format!("{}/responses", server.base_url()),
        Route::Messages => format!("{}/messages", server.base_url()),
        Route::Gemini => format!(
            "{}/models/{}:{}",
            server.gemini_base_url(),
            path_segment(&case.model),
            case.method
        ),
    };
    let mut request = client.post(&url).body(bytes.clone());
    if !case.content_type.is_empty() {
        request = request.header("content-type", case.content_type);
    }
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no response from {url}: {e}")))?;
    let status = response.status().as_u16();
    *STATUSES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(status)
        .or_default() += 1;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response
        .bytes()
        .await
        .map_err(|e| TestCaseError::fail(format!("the body from {url} broke off: {e}")))?;
    // Faults are only those of a model the request managed to carry.
    let asked_for_fault = case.model.contains("fault=")
        || String::from_utf8_lossy(&bytes).contains("fault=")
        || url.contains("fault=");
    prop_assert!(
        status < 500 || asked_for_fault,
        "status {status} without a fault; body: {}",
        String::from_utf8_lossy(&text)
    );
    if asked_for_fault {
        return Ok(());
    }
    let text = String::from_utf8(text.to_vec())
        .map_err(|e| TestCaseError::fail(format!("the body is not UTF-8: {e}")))?;
    if status != 200 {
        // Known gap, reported: a Gemini path that is not UTF-8 once percent-decoded is
        // refused by axum's `Path` extractor (plain-text 400), not with Gemini's envelope.
        let axum_path_rejection = case.route == Route::Gemini && text.starts_with("Invalid URL");
        if status != 404 && status != 405 && !axum_path_rejection {
            let parsed: Result<Value, _> = serde_json::from_str(&text);
            prop_assert!(
                parsed.is_ok(),
                "status {status} with a non-JSON body: {text}"
            );
        }
        return Ok(());
    }
    if content_type.starts_with("text/event-stream") {
        for line in text.lines() {
            if let Some(data) = line.strip_prefix("data:") {
                let data = data.trim();
                if data != "[DONE]" {
                    let parsed: Result<Value, _> = serde_json::from_str(data);
                    prop_assert!(parsed.is_ok(), "an SSE data line is not JSON: {data}");
                }
            }
        }
    } else {
        let parsed: Result<Value, _> = serde_json::from_str(&text);
        prop_assert!(parsed.is_ok(), "a 200 body is not JSON: {text}");
    }
    Ok(())
}

fn fast() -> SimConfig {
    SimConfig {
        tokens: 6,
        token_delay: Duration::ZERO,
        first_byte_delay: Duration::ZERO,
    }
}

#[test]
fn requests_of_every_wire() {
    let rt = runtime();
    let server = rt.block_on(async {
        SimServer::start(fast(), "127.0.0.1:0".parse().expect("address"))
            .await
            .expect("the simulator starts")
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    TARGET.fuzz("requests_of_every_wire", 2500, case(), |case| {
        count_input();
        let body_len = serde_json::to_vec(&case.body).map_or(0, |b| b.len());
        let (result, peak) = peak_growth(|| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), send(&client, &server, &case)).await
            })
        });
        result.map_err(|_| TestCaseError::fail("no complete answer within 20 s"))??;
        let bound = 64 * body_len + 32 * 1024 * 1024;
        prop_assert!(
            peak <= bound,
            "a {body_len}-byte request grew the heap by {peak} bytes"
        );
        Ok(())
    });
    eprintln!(
        "fuzz_requests::requests_of_every_wire: statuses {:?}",
        STATUSES.lock().unwrap_or_else(|e| e.into_inner())
    );
    // The server still works, and its inspection endpoints serve JSON.
    rt.block_on(async {
        let root = server.root_url();
        let health = client
            .get(format!("{root}/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), 200);
        for path in ["/__sim/stats", "/__sim/requests"] {
            let response = client
                .get(format!("{root}{path}"))
                .send()
                .await
                .expect(path);
            assert_eq!(response.status(), 200, "{path}");
            let text = response.text().await.expect(path);
            serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        server.shutdown().await;
    });
}

/// Raw bytes and odd paths at every route, including unknown ones.
#[test]
fn raw_requests() {
    let rt = runtime();
    let server = rt.block_on(async {
        SimServer::start(fast(), "127.0.0.1:0".parse().expect("address"))
            .await
            .expect("the simulator starts")
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let path = prop_oneof![
        proptest::sample::select(vec![
            "/v1/chat/completions",
            "/chat/completions",
            "/v1/responses",
            "/responses",
            "/v1/messages",
            "/messages",
            "/v1beta/models/",
            "/v1/models/",
            "/models/",
            "/v1beta/models/a:b:c",
            "/v1beta/models/:streamGenerateContent",
            "/v1beta/models/%FF%FE:generateContent",
            "/v1/models",
            "/health",
            "/__sim/reset",
            "/__sim/requests",
            "/nope",
            "/v1beta/models/m:streamGenerateContent?alt=sse",
        ])
        .prop_map(str::to_owned),
        "/[a-zA-Z0-9/:%._-]{0,30}",
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        Just(b"{\"model\": \"m\", \"messages\": []}".to_vec()),
        Just(b"{\"contents\": []}".to_vec()),
        Just(b"{\"model\": \"m:tokens=1\", \"input\": \"hi\", \"stream\": true}".to_vec()),
        (1usize..100)
            .prop_map(|d| format!("{}{}", "[".repeat(d * 10), "]".repeat(d * 10)).into_bytes()),
    ];
    TARGET.fuzz(
        "raw_requests",
        600,
        (
            path,
            body,
            proptest::sample::select(vec!["POST", "GET", "PUT", "DELETE"]),
        ),
        |(path, body, method)| {
            count_input();
            let url = format!("{}{}", server.root_url(), path);
            let result = rt.block_on(async {
                let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
                tokio::time::timeout(Duration::from_secs(20), async {
                    let response = client
                        .request(method, &url)
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = response.status().as_u16();
                    response.bytes().await.map(|_| status)
                })
                .await
            });
            let status = result
                .map_err(|_| TestCaseError::fail("no complete answer within 20 s"))?
                .map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
            // No option string can carry a fault here except through the path or the body.
            let fault = path.contains("fault") || String::from_utf8_lossy(&body).contains("fault");
            prop_assert!(status < 500 || fault, "{url}: status {status}");
            Ok(())
        },
    );
    rt.block_on(server.shutdown());
}
