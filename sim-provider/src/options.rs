//! Server-wide defaults ([`SimConfig`]) and the per-request options a client puts in the
//! `model` string ([`ModelOptions`]).
//!
//! Options ride in the model name because that is the one field every OpenAI client lets a
//! user set per agent: a test makes one agent slow with `model: "beta:token_delay_ms=50"`
//! without any side channel. The grammar is
//!
//! ```text
//! model   = name [ ":" option *( "," option ) ]
//! option  = key "=" value
//! ```
//!
//! The split happens at the **last** `:` and only when what follows contains a `=`, so model
//! names that themselves contain colons (`qwen:7b`, `ollama:llama3:8b`) stay plain names.
//! Unknown keys are an error (a typo must not silently fall back to the default), reported as
//! an OpenAI `invalid_request_error`.
//!
//! `policy=tools,tool=NAME` makes a model that uses tools (see `policy`): it calls the offered
//! tool `NAME` (or `mcp__{server}__NAME`; default `lookup`) once, then answers quoting its
//! result. `tool_args=` gives the call's arguments, as `KEY~VALUE|KEY~VALUE` or as a
//! percent-encoded JSON object (default: the tool's first required parameter set to the
//! question).
//!
//! New options are added as one field on [`ModelOptions`] and one arm in
//! [`ModelOptions::apply`]; [`KNOWN_KEYS`] lists them for the error message.
//!
//! ## Fault injection
//!
//! `fault=KIND` makes requests of this model string fail the way real providers fail, so a
//! client's retry and error paths can be tested over real HTTP (see [`Fault`] for the kinds).
//! The companions only make sense with a `fault` and are refused without one:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `fault_times=N` | the first N requests of this model string fault, later ones behave | every request faults |
//! | `retry_after_ms=N` | `retry-after-ms: N` on a status fault | none |
//! | `retry_after=S` | `retry-after: S` (seconds) on a status fault | none |
//! | `retry_after_date=S` | `retry-after: <HTTP date S seconds from now, rounded up to a whole second>` on a status fault | none |
//! | `stall_after=N` | pieces delivered before a mid-stream fault strikes (0 to `tokens`) | `tokens / 2` |
//!
//! `record_body=true` keeps each request body of this model string in the request log
//! ([`crate::RequestRecord::body`], at most [`MAX_RECORDED_BODY`] bytes): a test reads what a
//! client really sent (a prompt's history, say) without a proxy. Off by default, so a long
//! bench does not hold every prompt in memory.
//!
//! `fault=slow_first_byte` holds the response headers for `first_byte_ms` (5 s when that is
//! 0) instead of delaying the first event.
//!
//! The count behind `fault_times` is per *model string* (options included) and shared by
//! every wire format and connection: a test can make `beta:fault=429,fault_times=2` fail
//! twice, whichever client retries it. `POST /__sim/reset` forgets the counts.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fault::Fault;

/// Server-wide defaults for every request that does not override them in its model string.
///
/// The defaults (40 tokens, 10 ms apart) make a turn take ~0.4 s: long enough that
/// concurrency, cancellation and restarts are observable, short enough for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Pieces streamed per reply (content words or tool-argument fragments); also the
    /// reported `completion_tokens`.
    pub tokens: u32,
    /// Gap between two pieces.
    pub token_delay: Duration,
    /// Wait before the first piece (time to first token).
    pub first_byte_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            tokens: 40,
            token_delay: Duration::from_millis(10),
            first_byte_delay: Duration::ZERO,
        }
    }
}

/// How the simulated model chooses its reply (see `policy` for the rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Vote for the first offered label if `vote` is offered, else `new_answer` if offered,
    /// else plain text. Converges as fast as possible.
    #[default]
    Default,
    /// Prefer `new_answer` whenever it is offered, even when `vote` is: an agent that keeps
    /// answering, to exercise answer limits and restarts.
    Answer,
    /// Always reply with plain text, ignoring tools: an agent that breaks the workflow
    /// protocol, to exercise the corrective retry.
    Text,
    /// Never call a tool; end the text with a marked decision (`VOTE: agent1.1 — ...` for
    /// the first label the prompt shows, else `NEW ANSWER:` and an answer): a model that
    /// follows conclave's text protocol.
    Marked,
    /// Call `vote` with a label that is not offered, until a corrective message names the
    /// valid labels; then vote properly: a model that hallucinates labels.
    WrongLabel,
    /// Make the workflow call with arguments that are not valid JSON, until a corrective
    /// message says so; then call properly: a model with broken tool-call JSON.
    BrokenJson,
    /// A model that uses tools: when a non-workflow tool matching the `tool` option is offered
    /// and the conversation holds no tool result yet, call it (its first parameter set to the
    /// question); once a result is there, decide as `default` does, quoting the result in the
    /// answer, the vote's reason or the text.
    Tools,
}

impl FromStr for Policy {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "default" => Ok(Policy::Default),
            "answer" => Ok(Policy::Answer),
            "text" => Ok(Policy::Text),
            "marked" => Ok(Policy::Marked),
            "wrong_label" => Ok(Policy::WrongLabel),
            "broken_json" => Ok(Policy::BrokenJson),
            "tools" => Ok(Policy::Tools),
            _ => Err(()),
        }
    }
}

/// Option keys understood in a model string, in the order they are documented.
pub const KNOWN_KEYS: &[&str] = &[
    "tokens",
    "token_delay_ms",
    "first_byte_ms",
    "policy",
    "fault",
    "fault_times",
    "retry_after_ms",
    "retry_after",
    "retry_after_date",
    "stall_after",
    "tool",
    "tool_calls",
    "tool_args",
    "record_body",
];

/// Upper bound for `tokens`: a reply is held in memory while it streams, so a typo like
/// `tokens=4000000000` must be refused rather than allocated.
pub const MAX_TOKENS: u32 = 100_000;
/// Upper bound for the millisecond options (one hour): larger values are certainly typos.
pub const MAX_DELAY_MS: u64 = 3_600_000;
/// The most of a request body `record_body=true` keeps; the rest is cut off.
pub const MAX_RECORDED_BODY: usize = 256 * 1024;
/// Upper bound for `fault_times`: a fault meant to last longer than this is `fault` alone.
pub const MAX_FAULT_TIMES: u32 = 1_000_000;
/// Upper bound for the second-valued retry hints (one day).
pub const MAX_RETRY_AFTER_S: u64 = 86_400;

/// The effective settings of one request: server defaults overridden by the model string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    /// The model name without its options; seeds the generated text.
    pub name: String,
    /// See [`SimConfig::tokens`].
    pub tokens: u32,
    /// See [`SimConfig::token_delay`].
    pub token_delay: Duration,
    /// See [`SimConfig::first_byte_delay`].
    pub first_byte_delay: Duration,
    /// How the reply is chosen.
    pub policy: Policy,
    /// The fault to inject, if any (see the module docs).
    pub fault: Option<Fault>,
    /// How many requests of this model string fault; `None`: all of them.
    pub fault_times: Option<u32>,
    /// The retry headers sent with a status fault.
    pub retry_hint: RetryHint,
    /// Pieces delivered before a mid-stream fault; `None`: half of `tokens`.
    pub stall_after: Option<u32>,
    /// The tool the `tools` policy calls: an offered tool whose name is this or ends with
    /// `__` and this (MassGen's `mcp__{server}__{tool}`). Default `lookup`.
    pub tool: String,
    /// How many times the `tools` policy calls its tool in one turn (one call per reply,
    /// counted by the tool results in the conversation) before it decides. Default 1.
    pub tool_calls: u32,
    /// The arguments the `tools` policy calls its tool with, from `tool_args=`: either
    /// `KEY~VALUE|KEY~VALUE` (string values) or a percent-encoded JSON object
    /// (`%7B%22command%22%3A%22ls%22%7D` is `{"command":"ls"}`) for values of other types or
    /// with `,`/`|` in them. `{n}` in a string value becomes the call's number in the turn,
    /// from 1. Empty: the tool's first required parameter set to the question.
    pub tool_args: Vec<(String, serde_json::Value)>,
    /// Whether the request body is kept in the request log (`record_body=true`).
    pub record_body: bool,
}

/// The retry headers a status fault carries, in the forms real providers use: OpenAI's
/// `retry-after-ms`, and the standard `retry-after` as seconds or as an HTTP date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryHint {
    /// `retry-after-ms: N`.
    pub millis: Option<u64>,
    /// `retry-after: S`.
    pub seconds: Option<u64>,
    /// `retry-after: <HTTP date S seconds after the response>`.
    pub date_in_seconds: Option<u64>,
}

/// Why a model string was refused. Shown to the client verbatim in a 400 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The model string has an empty name part.
    #[error("model `{model}` has an empty name")]
    EmptyName {
        /// The whole model string.
        model: String,
    },
    /// An option is not written as `key=value`.
    #[error("model option `{item}` in model `{model}` is not of the form key=value")]
    NotKeyValue {
        /// The offending option text.
        item: String,
        /// The whole model string.
        model: String,
    },
    /// An option key the simulator does not know.
    #[error(
        "unknown model option `{key}` in model `{model}`; known options: tokens, token_delay_ms, \
         first_byte_ms, policy, fault, fault_times, retry_after_ms, retry_after, retry_after_date, \
         stall_after, tool, tool_calls, tool_args, record_body"
    )]
    UnknownKey {
        /// The unknown key.
        key: String,
        /// The whole model string.
        model: String,
    },
    /// A known key with a value it cannot take.
    #[error("model option `{key}={value}` is invalid: expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The refused value.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A fault companion option (`fault_times`, `retry_after*`, `stall_after`) without
    /// `fault`: it would do nothing, which is almost certainly not what was meant.
    #[error("model option `{key}` in model `{model}` needs a `fault=...` option to have an effect")]
    NeedsFault {
        /// The companion key.
        key: &'static str,
        /// The whole model string.
        model: String,
    },
    /// `retry_after` and `retry_after_date` both set the `retry-after` header.
    #[error(
        "model `{model}` sets both retry_after and retry_after_date; both are the `retry-after` header, choose one"
    )]
    RetryAfterTwice {
        /// The whole model string.
        model: String,
    },
}

impl ModelOptions {
    /// The settings of a request for `model`, starting from the server `defaults`.
    pub fn parse(model: &str, defaults: &SimConfig) -> Result<Self, OptionError> {
        let (name, options) = match model.rsplit_once(':') {
            Some((name, options)) if options.contains('=') => (name, Some(options)),
            _ => (model, None),
        };
        if name.trim().is_empty() {
            return Err(OptionError::EmptyName {
                model: model.to_owned(),
            });
        }
        let mut parsed = ModelOptions {
            name: name.to_owned(),
            tokens: defaults.tokens.clamp(1, MAX_TOKENS),
            token_delay: defaults.token_delay,
            first_byte_delay: defaults.first_byte_delay,
            policy: Policy::Default,
            fault: None,
            fault_times: None,
            retry_hint: RetryHint::default(),
            stall_after: None,
            tool: "lookup".to_owned(),
            tool_calls: 1,
            tool_args: Vec::new(),
            record_body: false,
        };
        for item in options.unwrap_or("").split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(OptionError::NotKeyValue {
                    item: item.to_owned(),
                    model: model.to_owned(),
                });
            };
            parsed.apply(key.trim(), value.trim(), model)?;
        }
        parsed.check_fault_companions(model)?;
        Ok(parsed)
    }

    /// Refuses fault companions without a fault, and two `retry-after` forms at once.
    fn check_fault_companions(&self, model: &str) -> Result<(), OptionError> {
        if self.fault.is_none() {
            let companions = [
                ("fault_times", self.fault_times.is_some()),
                ("retry_after_ms", self.retry_hint.millis.is_some()),
                ("retry_after", self.retry_hint.seconds.is_some()),
                (
                    "retry_after_date",
                    self.retry_hint.date_in_seconds.is_some(),
                ),
                ("stall_after", self.stall_after.is_some()),
            ];
            if let Some((key, _)) = companions.iter().find(|(_, set)| *set) {
                return Err(OptionError::NeedsFault {
                    key,
                    model: model.to_owned(),
                });
            }
        }
        if self.retry_hint.seconds.is_some() && self.retry_hint.date_in_seconds.is_some() {
            return Err(OptionError::RetryAfterTwice {
                model: model.to_owned(),
            });
        }
        Ok(())
    }

    /// The piece index a mid-stream fault strikes at, for a reply of `pieces` pieces: after
    /// `stall_after` pieces (at most all of them), by default half way.
    pub fn fault_after(&self, pieces: usize) -> usize {
        self.stall_after
            .map_or(pieces / 2, |after| {
                usize::try_from(after).unwrap_or(usize::MAX)
            })
            .min(pieces)
    }

    /// Applies one `key=value` option. The single place to add a new option.
    fn apply(&mut self, key: &str, value: &str, model: &str) -> Result<(), OptionError> {
        match key {
            "tokens" => {
                let tokens = parse_number(key, value, 1, u64::from(MAX_TOKENS), TOKENS_RANGE)?;
                // In range by the check above, so the conversion cannot fail.
                self.tokens = u32::try_from(tokens).unwrap_or(MAX_TOKENS);
            }
            "token_delay_ms" => self.token_delay = parse_millis(key, value)?,
            "first_byte_ms" => self.first_byte_delay = parse_millis(key, value)?,
            "policy" => {
                self.policy = value.parse().map_err(|()| OptionError::BadValue {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    expected: "one of default, answer, text, marked, wrong_label, broken_json, tools",
                })?;
            }
            "fault" => {
                self.fault = Some(value.parse().map_err(|()| OptionError::BadValue {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    expected: FAULT_KINDS,
                })?);
            }
            "fault_times" => {
                let times =
                    parse_number(key, value, 0, u64::from(MAX_FAULT_TIMES), FAULT_TIMES_RANGE)?;
                self.fault_times = Some(u32::try_from(times).unwrap_or(MAX_FAULT_TIMES));
            }
            "retry_after_ms" => {
                self.retry_hint.millis =
                    Some(parse_number(key, value, 0, MAX_DELAY_MS, MILLIS_RANGE)?);
            }
            "retry_after" => {
                self.retry_hint.seconds = Some(parse_number(
                    key,
                    value,
                    0,
                    MAX_RETRY_AFTER_S,
                    SECONDS_RANGE,
                )?);
            }
            "retry_after_date" => {
                self.retry_hint.date_in_seconds = Some(parse_number(
                    key,
                    value,
                    0,
                    MAX_RETRY_AFTER_S,
                    SECONDS_RANGE,
                )?);
            }
            "stall_after" => {
                let after = parse_number(key, value, 0, u64::from(MAX_TOKENS), STALL_AFTER_RANGE)?;
                self.stall_after = Some(u32::try_from(after).unwrap_or(MAX_TOKENS));
            }
            "tool" => {
                let valid = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !valid {
                    return Err(OptionError::BadValue {
                        key: key.to_owned(),
                        value: value.to_owned(),
                        expected: "a tool name (letters, digits, `_`, `-`), e.g. lookup",
                    });
                }
                self.tool = value.to_owned();
            }
            "tool_calls" => {
                let calls = parse_number(key, value, 1, MAX_TOOL_CALLS, TOOL_CALLS_RANGE)?;
                self.tool_calls = u32::try_from(calls).unwrap_or(1);
            }
            "tool_args" => {
                self.tool_args = if value.starts_with('%') {
                    percent_decode(value)
                        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                        .and_then(|json| match json {
                            serde_json::Value::Object(map) => Some(map.into_iter().collect()),
                            _ => None,
                        })
                } else {
                    value
                        .split('|')
                        .map(|pair| {
                            pair.split_once('~')
                                .filter(|(k, _)| !k.trim().is_empty())
                                .map(|(k, v)| (k.trim().to_owned(), serde_json::json!(v)))
                        })
                        .collect::<Option<Vec<_>>>()
                }
                .ok_or_else(|| OptionError::BadValue {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    expected: "KEY~VALUE pairs separated by `|` (path~notes.md|content~hi), or a \
                               percent-encoded JSON object (%7B%22command%22%3A%22ls%22%7D)",
                })?;
            }
            "record_body" => {
                self.record_body = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(OptionError::BadValue {
                            key: key.to_owned(),
                            value: value.to_owned(),
                            expected: "true or false",
                        });
                    }
                };
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    key: key.to_owned(),
                    model: model.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Decodes `%XX` escapes; `None` for a bad escape, a raw `,`, `:` or `=` (which the model
/// string grammar would have split on) or text that is not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b',' | b':' | b'=' => return None,
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

const TOKENS_RANGE: &str = "an integer from 1 to 100000";
const MILLIS_RANGE: &str = "an integer from 0 to 3600000 (milliseconds)";
const SECONDS_RANGE: &str = "an integer from 0 to 86400 (seconds)";
const FAULT_TIMES_RANGE: &str = "an integer from 0 to 1000000";
const TOOL_CALLS_RANGE: &str = "an integer from 1 to 1000";
/// Upper bound for `tool_calls`: a turn is bounded by conclave's own tool rounds long before.
const MAX_TOOL_CALLS: u64 = 1000;
const STALL_AFTER_RANGE: &str = "an integer from 0 to 100000 (pieces)";
const FAULT_KINDS: &str = "one of 429, 500, 503, 529, quota, stream_error, stall, truncate, \
     malformed, reset, slow_first_byte";

fn parse_millis(key: &str, value: &str) -> Result<Duration, OptionError> {
    parse_number(key, value, 0, MAX_DELAY_MS, MILLIS_RANGE).map(Duration::from_millis)
}

fn parse_number(
    key: &str,
    value: &str,
    min: u64,
    max: u64,
    expected: &'static str,
) -> Result<u64, OptionError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| OptionError::BadValue {
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(model: &str) -> Result<ModelOptions, OptionError> {
        ModelOptions::parse(model, &SimConfig::default())
    }

    #[test]
    fn plain_name_takes_the_defaults() {
        let options = parse("alpha").expect("plain name");
        assert_eq!(options.name, "alpha");
        assert_eq!(options.tokens, 40);
        assert_eq!(options.token_delay, Duration::from_millis(10));
        assert_eq!(options.first_byte_delay, Duration::ZERO);
        assert_eq!(options.policy, Policy::Default);
    }

    #[test]
    fn options_override_the_defaults() {
        let options = parse("beta:tokens=5, token_delay_ms=20,first_byte_ms=7,policy=answer,")
            .expect("valid options");
        assert_eq!(options.name, "beta");
        assert_eq!(options.tokens, 5);
        assert_eq!(options.token_delay, Duration::from_millis(20));
        assert_eq!(options.first_byte_delay, Duration::from_millis(7));
        assert_eq!(options.policy, Policy::Answer);
    }

    #[test]
    fn tool_args_are_a_percent_encoded_json_object() {
        let options = parse("m:policy=tools,tool=execute_command,tool_args=%7B%22command%22%3A%22echo%20a%2Cb%22%7D")
            .expect("valid options");
        assert_eq!(
            options.tool_args,
            vec![("command".to_owned(), serde_json::json!("echo a,b"))]
        );
        let pairs = parse("m:tool_args=path~notes-{n}.md|content~hi").expect("pairs");
        assert_eq!(
            pairs.tool_args,
            vec![
                ("path".to_owned(), serde_json::json!("notes-{n}.md")),
                ("content".to_owned(), serde_json::json!("hi")),
            ]
        );
        for bad in ["%5B1%5D", "%7Bnot", "%ZZ", "no-tilde"] {
            let error = parse(&format!("m:tool_args={bad}")).expect_err(bad);
            assert!(
                error.to_string().contains("percent-encoded JSON object"),
                "{error}"
            );
        }
    }

    #[test]
    fn colons_without_options_stay_in_the_name() {
        assert_eq!(parse("qwen:7b").expect("name").name, "qwen:7b");
        let options = parse("qwen:7b:tokens=3").expect("options after the last colon");
        assert_eq!((options.name.as_str(), options.tokens), ("qwen:7b", 3));
    }

    #[test]
    fn fault_options_parse_and_need_a_fault() {
        let options = parse("m:fault=429,fault_times=2,retry_after_ms=50,stall_after=3")
            .expect("fault options");
        assert_eq!(options.fault, Some(Fault::RateLimited));
        assert_eq!(options.fault_times, Some(2));
        assert_eq!(options.retry_hint.millis, Some(50));
        assert_eq!(options.fault_after(40), 3);
        assert_eq!(parse("m:fault=reset").expect("reset").fault_after(40), 20);
        assert_eq!(
            parse("m:fault=stall,stall_after=99")
                .expect("stall")
                .fault_after(8),
            8
        );
        assert_eq!(
            parse("m:fault=slow_first_byte").expect("slow").fault,
            Some(Fault::SlowFirstByte)
        );
        assert!(matches!(
            parse("m:fault_times=2"),
            Err(OptionError::NeedsFault {
                key: "fault_times",
                ..
            })
        ));
        assert!(matches!(
            parse("m:fault=503,retry_after=1,retry_after_date=2"),
            Err(OptionError::RetryAfterTwice { .. })
        ));
        assert!(matches!(
            parse("m:fault=418"),
            Err(OptionError::BadValue { .. })
        ));
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        assert!(matches!(
            parse("m:tokenz=3"),
            Err(OptionError::UnknownKey { key, .. }) if key == "tokenz"
        ));
        assert!(matches!(
            parse("m:tokens=0"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse("m:policy=random"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse("m:tokens=3,fast"),
            Err(OptionError::NotKeyValue { .. })
        ));
        assert!(matches!(
            parse(":tokens=3"),
            Err(OptionError::EmptyName { .. })
        ));
    }
}
