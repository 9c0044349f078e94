//! What the simulator reads from a request, whatever its wire format.
//!
//! Each wire module (`wire::chat`, `wire::anthropic`, `wire::responses`, `wire::gemini`)
//! parses its own request body and reduces it to a [`SimRequest`]: the model string, whether
//! to stream, the offered tool names with the `vote` enum, the last user text (the seed of
//! the generated answer) and a fingerprint. The policy and the request log only ever see a
//! `SimRequest`, so one deterministic policy serves every format.
//!
//! Messages, contents and tool schemas stay untyped [`Value`]s: the simulator must not reject
//! a request a real server would take just because a part or a schema has a shape it does
//! not model. Fields it does not read (`temperature`, `max_tokens`, `tool_choice`, ...) are
//! accepted and ignored, as a lenient server would.

use std::io;

use serde_json::Value;

/// The workflow tool whose `agent_id` enum the policy votes from.
const VOTE: &str = "vote";

/// A request reduced to what the policy, the pacing and the log need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SimRequest {
    /// The model string as sent (in the body, or for Gemini in the URL), options included.
    pub model: String,
    /// Whether the client asked for server-sent events.
    pub stream: bool,
    /// Whether a usage report belongs in the stream (Chat Completions only asks for it with
    /// `stream_options.include_usage`; the other formats always report usage).
    pub include_usage: bool,
    /// The text of the last user message; seeds the generated answer.
    pub last_user_text: String,
    /// The names of the offered function tools, in order.
    pub tool_names: Vec<String>,
    /// The first string of the `agent_id` enum of an offered `vote` tool.
    pub vote_label: Option<String>,
    /// For each offered tool (same order as `tool_names`), the name of its first required
    /// parameter (else its first declared one): what the `tools` policy fills in.
    pub tool_params: Vec<Option<String>>,
    /// The text of every tool result in the conversation, in order (Chat `tool` messages,
    /// Responses `function_call_output` items, Anthropic `tool_result` blocks, Gemini
    /// `functionResponse` parts).
    pub tool_results: Vec<String>,
    /// See [`fingerprint`].
    pub fingerprint: String,
}

impl SimRequest {
    /// Whether a tool called `name` is offered.
    pub fn offers(&self, name: &str) -> bool {
        self.tool_names.iter().any(|offered| offered == name)
    }

    /// The label a `vote` call would use. `None` when `vote` is not offered, has no such
    /// enum, the enum is empty or its first value is not a string: then voting is impossible.
    pub fn first_vote_label(&self) -> Option<&str> {
        self.vote_label.as_deref()
    }
}

/// The tools of a request: names, the vote label and each tool's first parameter.
pub(crate) type Offered = (Vec<String>, Option<String>, Vec<Option<String>>);

/// Offered tools as `(name, parameters schema)` pairs → the names, the vote label and each
/// tool's first parameter (see [`SimRequest::tool_params`]).
pub(crate) fn offered_tools<'a>(
    tools: impl IntoIterator<Item = (&'a str, Option<&'a Value>)>,
) -> Offered {
    let mut names = Vec::new();
    let mut vote_label = None;
    let mut params = Vec::new();
    for (name, parameters) in tools {
        let first_required = parameters
            .and_then(|schema| schema.get("required"))
            .and_then(Value::as_array)
            .and_then(|required| required.first())
            .and_then(Value::as_str);
        let first_declared = parameters
            .and_then(|schema| schema.get("properties"))
            .and_then(Value::as_object)
            .and_then(|properties| properties.keys().next())
            .map(String::as_str);
        params.push(first_required.or(first_declared).map(str::to_owned));
        if name == VOTE && vote_label.is_none() {
            vote_label = parameters
                .and_then(|schema| schema.pointer("/properties/agent_id/enum"))
                .and_then(Value::as_array)
                .and_then(|labels| labels.first())
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        names.push(name.to_owned());
    }
    (names, vote_label, params)
}

/// The text of a tool result's payload: a string as is, an array of text parts joined, an
/// object's `content` / `result` / `output` (recursively), anything else as JSON.
pub(crate) fn result_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("text").and_then(Value::as_str) {
                Some(text) => text.to_owned(),
                None => result_text(part),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(map) => ["content", "result", "output"]
            .iter()
            .find_map(|key| map.get(*key))
            .map(result_text)
            .unwrap_or_else(|| value.to_string()),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The text of a message content: a string, or the `text` of every part of an array joined
/// with newlines (parts without text, like images or tool results, are skipped).
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The text of the last message whose `role` is `user` and whose `content_key` holds some
/// text. Messages with only non-text parts (Anthropic `tool_result` blocks, Gemini
/// `functionResponse` parts, both sent with the user role) are skipped, so a tool round trip
/// does not change the answer's seed.
pub(crate) fn last_user_text(messages: &[Value], content_key: &str) -> String {
    messages
        .iter()
        .rev()
        .filter(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        .filter_map(|message| message.get(content_key))
        .map(content_text)
        .find(|text| !text.is_empty())
        .unwrap_or_default()
}

/// A stable hex fingerprint of a conversation: FNV-1a (64 bit) over the JSON serialization
/// of `parts` (for Chat Completions the messages and the tools; for the other formats the
/// system prompt, the messages and the tools), separated by a zero byte. Equal conversations
/// give equal fingerprints in any process and on any run, so a test can tell "the same turn
/// sent twice" (a resume that re-sent a finished turn) from a new one.
pub(crate) fn fingerprint(parts: &[&dyn erased::Json]) -> String {
    let mut hasher = Fnv1a::new();
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            hasher.update(&[0]);
        }
        part.write_json(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// A tiny object-safe stand-in for `Serialize`, so [`fingerprint`] can take a list of
/// differently typed parts.
pub(crate) mod erased {
    use serde::Serialize;

    /// Something that can write itself as JSON into a hasher.
    pub trait Json {
        fn write_json(&self, out: &mut super::Fnv1a);
    }

    impl<T: Serialize> Json for T {
        fn write_json(&self, out: &mut super::Fnv1a) {
            // Writing into the hasher cannot fail, and the parts are plain JSON values.
            let _ = serde_json::to_writer(out, self);
        }
    }
}

/// 64-bit FNV-1a: tiny, dependency-free, and defined by its constants, so its output never
/// changes between Rust versions or processes (unlike `std`'s `DefaultHasher`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Self {
        Fnv1a(Self::OFFSET_BASIS)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

impl io::Write for Fnv1a {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let hash = |text: &str| {
            let mut hasher = Fnv1a::new();
            hasher.update(text.as_bytes());
            hasher.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn vote_label_is_the_first_enum_string_of_the_vote_tool() {
        let vote = json!({"type": "object", "properties": {
            "agent_id": {"type": "string", "enum": ["agent2.1", "agent1.1"]}}});
        let answer = json!({"type": "object"});
        let (names, label, _) =
            offered_tools([("new_answer", Some(&answer)), ("vote", Some(&vote))]);
        assert_eq!(names, ["new_answer", "vote"]);
        assert_eq!(label.as_deref(), Some("agent2.1"));
        let empty = json!({"properties": {"agent_id": {"enum": []}}});
        assert_eq!(offered_tools([("vote", Some(&empty))]).1, None);
        assert_eq!(offered_tools([("vote", None)]).1, None);
    }

    #[test]
    fn last_user_text_skips_messages_without_text() {
        let messages = [
            json!({"role": "user", "content": "question"}),
            json!({"role": "assistant", "content": "x"}),
            json!({"role": "user", "content": [{"type": "tool_result", "content": "r"}]}),
        ];
        assert_eq!(last_user_text(&messages, "content"), "question");
        let parts = [json!({"role": "user", "parts": [{"text": "a"}, {"text": "b"}]})];
        assert_eq!(last_user_text(&parts, "parts"), "a\nb");
        assert_eq!(last_user_text(&[], "content"), "");
    }
}
