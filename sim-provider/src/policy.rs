//! The deterministic policy: what the simulated model replies to a request.
//!
//! The decision reads only the offered tools (whatever the wire format offered them in), in
//! this order:
//!
//! 1. a `vote` tool whose `agent_id` parameter has a non-empty string `enum` → call `vote`
//!    for the **first** label, with a short reason;
//! 2. else a `new_answer` tool → call `new_answer` with a generated answer;
//! 3. else → plain text content (what a final presentation looks like).
//!
//! [`Policy::Answer`] swaps 1 and 2 (answer whenever allowed); [`Policy::Text`] always takes 3.
//!
//! The policies of other kinds of models:
//! - [`Policy::Marked`] never calls a tool and ends its text with a marked decision, as
//!   conclave's text protocol asks: `VOTE: {label} — ...` for the first answer label in the
//!   last user message (`<agent1.1>` tags or a label in a corrective message), otherwise
//!   `NEW ANSWER:` and a generated answer.
//! - [`Policy::WrongLabel`] votes for a label that is not offered, and [`Policy::BrokenJson`]
//!   sends workflow arguments that are not JSON; both behave once the last user message is a
//!   corrective one ("... was not accepted ..."), the way a real model usually does.
//! - [`Policy::Tools`] is a model that uses tools: while the conversation holds fewer tool
//!   results than its `tool_calls` option (default 1), it calls the offered non-workflow tool named by the `tool` option (exactly, or as
//!   the `{tool}` of MassGen's `mcp__{server}__{tool}`), with the `tool_args` option's
//!   arguments, or else its first required parameter set to the question; once enough results are there (Chat `tool` message, Responses
//!   `function_call_output`, Anthropic `tool_result`, Gemini `functionResponse`), it decides as
//!   the default policy does and quotes the result in the vote's reason, the answer or the
//!   text. Without a matching tool it is the default policy.
//!
//! Voting for the first label makes a session converge on the earliest answer in one round,
//! which is what the demo and the benches want to measure: the coordination overhead, not
//! the models' opinions.
//!
//! Generated text is a pure function of (model name, last user message, token count): the
//! same question to the same model always gives the same words, across requests, processes
//! and runs, so journals and test expectations are reproducible. No counter is involved.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::options::{ModelOptions, Policy};
use crate::request::{Fnv1a, SimRequest};

/// The workflow tool that offers an answer.
const NEW_ANSWER: &str = "new_answer";
/// The workflow tool that endorses an answer.
const VOTE: &str = "vote";

/// Which reply the policy chose; recorded in the request log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// A `vote` tool call.
    Vote,
    /// A `new_answer` tool call.
    NewAnswer,
    /// Plain assistant text.
    Text,
    /// A call of another offered tool (the `tools` policy).
    Tool,
}

/// A reply, fully generated before the first byte is sent, and cut into the pieces that
/// will be streamed one per tick.
#[derive(Debug)]
pub(crate) struct Reply {
    pub kind: DecisionKind,
    /// The tool called, when `kind` is `Tool`.
    pub tool: Option<String>,
    /// The label voted for, when `kind` is `Vote`.
    pub vote_target: Option<String>,
    /// What is streamed: the content for `Text`, the arguments JSON for a tool call.
    pub body: String,
    /// `pieces + 1` byte offsets into `body` (all on char boundaries): piece `i` is
    /// `body[bounds[i]..bounds[i + 1]]`. Offsets instead of owned pieces keep a streaming
    /// request to two allocations however many tokens it has.
    bounds: Vec<usize>,
}

impl Reply {
    /// Applies the policy to `request`.
    pub fn decide(options: &ModelOptions, request: &SimRequest) -> Reply {
        let vote_label = request.first_vote_label();
        let may_answer = request.offers(NEW_ANSWER);
        let corrected = request.last_user_text.contains("was not accepted");
        let tokens = options.tokens.max(1) as usize;
        match options.policy {
            Policy::Marked => return Self::marked(options, request, tokens),
            Policy::Tools => {
                if let Some(reply) = Self::tool_use(options, request, tokens) {
                    return reply;
                }
            }
            Policy::WrongLabel if !corrected && vote_label.is_some() => {
                let label = "agent99.1";
                let reason = format!("{} finds {label} correct and complete.", options.name);
                let arguments = json!({ "agent_id": label, "reason": reason }).to_string();
                return Reply::call(
                    DecisionKind::Vote,
                    Some(label.to_owned()),
                    arguments,
                    tokens,
                );
            }
            Policy::BrokenJson if !corrected && (vote_label.is_some() || may_answer) => {
                let (kind, target, mut arguments) = match vote_label {
                    Some(label) => (
                        DecisionKind::Vote,
                        Some(label.to_owned()),
                        json!({ "agent_id": label, "reason": "it is right" }).to_string(),
                    ),
                    None => {
                        let (answer, _) = generate_answer(options, &request.last_user_text, tokens);
                        (
                            DecisionKind::NewAnswer,
                            None,
                            json!({ "content": answer }).to_string(),
                        )
                    }
                };
                // A cut-off object with a trailing comma: what a small model often sends.
                arguments.pop();
                arguments.push(',');
                return Reply::call(kind, target, arguments, tokens);
            }
            _ => {}
        }
        let kind = match (options.policy, vote_label) {
            (Policy::Text, _) => DecisionKind::Text,
            (Policy::Answer, _) if may_answer => DecisionKind::NewAnswer,
            (_, Some(_)) => DecisionKind::Vote,
            _ if may_answer => DecisionKind::NewAnswer,
            _ => DecisionKind::Text,
        };
        match (kind, vote_label) {
            (DecisionKind::Vote, Some(label)) => {
                let reason = format!("{} finds {label} correct and complete.", options.name);
                let arguments = json!({ "agent_id": label, "reason": reason }).to_string();
                let bounds = even_bounds(&arguments, tokens);
                Reply {
                    kind,
                    tool: None,
                    vote_target: Some(label.to_owned()),
                    body: arguments,
                    bounds,
                }
            }
            (DecisionKind::NewAnswer, _) => {
                let (answer, _) = generate_answer(options, &request.last_user_text, tokens);
                let arguments = json!({ "content": answer }).to_string();
                let bounds = even_bounds(&arguments, tokens);
                Reply {
                    kind,
                    tool: None,
                    vote_target: None,
                    body: arguments,
                    bounds,
                }
            }
            _ => {
                let (text, bounds) = generate_answer(options, &request.last_user_text, tokens);
                Reply {
                    kind: DecisionKind::Text,
                    tool: None,
                    vote_target: None,
                    body: text,
                    bounds,
                }
            }
        }
    }

    /// The `tools` policy: call the matching tool while the conversation holds fewer than
    /// `tool_calls` tool results;
    /// once it does, decide as `default` does with the result quoted. `None` when no offered
    /// tool matches and there is no result (then the default rules apply unchanged).
    fn tool_use(options: &ModelOptions, request: &SimRequest, tokens: usize) -> Option<Reply> {
        if request.tool_results.len() < options.tool_calls as usize {
            let suffix = format!("__{}", options.tool);
            let index = request.tool_names.iter().position(|name| {
                name != NEW_ANSWER
                    && name != VOTE
                    && (*name == options.tool || name.ends_with(&suffix))
            })?;
            let name = request.tool_names[index].clone();
            let call_number = (request.tool_results.len() + 1).to_string();
            let arguments = if options.tool_args.is_empty() {
                match request.tool_params.get(index).cloned().flatten() {
                    Some(param) => json!({ param: request.last_user_text }),
                    None => json!({}),
                }
            } else {
                options
                    .tool_args
                    .iter()
                    .map(|(key, value)| {
                        let value = match value {
                            serde_json::Value::String(text) => {
                                json!(text.replace("{n}", &call_number))
                            }
                            other => other.clone(),
                        };
                        (key.clone(), value)
                    })
                    .collect::<serde_json::Map<String, serde_json::Value>>()
                    .into()
            }
            .to_string();
            let mut reply = Reply::call(DecisionKind::Tool, None, arguments, tokens);
            reply.tool = Some(name);
            return Some(reply);
        }
        let quoted = request.tool_results.join("\n");
        let vote_label = request.first_vote_label();
        let (answer, _) = generate_answer(options, &request.last_user_text, tokens);
        let reply = match vote_label {
            Some(label) => {
                let reason = format!("{} checked with a tool: {quoted}", options.name);
                let arguments = json!({ "agent_id": label, "reason": reason }).to_string();
                Reply::call(
                    DecisionKind::Vote,
                    Some(label.to_owned()),
                    arguments,
                    tokens,
                )
            }
            None if request.offers(NEW_ANSWER) => {
                let content = format!("{answer}\nTool result: {quoted}");
                Reply::call(
                    DecisionKind::NewAnswer,
                    None,
                    json!({ "content": content }).to_string(),
                    tokens,
                )
            }
            None => {
                let body = format!("{answer}\nTool result: {quoted}");
                let bounds = even_bounds(&body, tokens);
                Reply {
                    kind: DecisionKind::Text,
                    tool: None,
                    vote_target: None,
                    body,
                    bounds,
                }
            }
        };
        Some(reply)
    }

    /// A tool call with these arguments, streamed in `tokens` pieces.
    fn call(kind: DecisionKind, target: Option<String>, arguments: String, tokens: usize) -> Reply {
        let bounds = even_bounds(&arguments, tokens);
        Reply {
            tool: None,
            kind,
            vote_target: target,
            body: arguments,
            bounds,
        }
    }

    /// Text ending in a marked decision (see [`Policy::Marked`]).
    fn marked(options: &ModelOptions, request: &SimRequest, tokens: usize) -> Reply {
        let (answer, _) = generate_answer(options, &request.last_user_text, tokens);
        let label = label_in(&request.last_user_text);
        let body = match &label {
            Some(label) => format!(
                "{answer}\n\nVOTE: {label} — {} finds it correct and complete.",
                options.name
            ),
            None => format!("Here is my answer.\n\nNEW ANSWER:\n{answer}"),
        };
        let bounds = even_bounds(&body, tokens);
        Reply {
            kind: DecisionKind::Text,
            tool: None,
            vote_target: label,
            body,
            bounds,
        }
    }

    /// The number of streamed pieces (the request's `tokens`).
    pub fn pieces(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }

    /// Piece `index`; empty past the end.
    pub fn piece(&self, index: usize) -> &str {
        match (self.bounds.get(index), self.bounds.get(index + 1)) {
            (Some(&start), Some(&end)) => self.body.get(start..end).unwrap_or(""),
            _ => "",
        }
    }

    /// The function called, or `None` for a text reply.
    pub fn tool_name(&self) -> Option<&str> {
        match self.kind {
            DecisionKind::Vote => Some(VOTE),
            DecisionKind::NewAnswer => Some(NEW_ANSWER),
            DecisionKind::Tool => self.tool.as_deref(),
            DecisionKind::Text => None,
        }
    }
}

/// The first answer label (`agent{k}.{m}`) in `text`.
fn label_in(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text[from..].find("agent") {
        let start = from + found;
        let mut at = start + "agent".len();
        from = at;
        let digits_from = at;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        if at == digits_from || bytes.get(at) != Some(&b'.') {
            continue;
        }
        let answer_from = at + 1;
        at = answer_from;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        if at > answer_from {
            return Some(text[start..at].to_owned());
        }
    }
    None
}

/// Words the generated answers are made of: neutral, so demo output reads like prose-ish
/// filler without pretending to answer anything.
const VOCABULARY: [&str; 32] = [
    "the",
    "answer",
    "is",
    "that",
    "we",
    "consider",
    "each",
    "step",
    "carefully",
    "and",
    "check",
    "result",
    "against",
    "known",
    "facts",
    "so",
    "final",
    "value",
    "follows",
    "from",
    "simple",
    "reasoning",
    "about",
    "problem",
    "with",
    "clear",
    "evidence",
    "in",
    "every",
    "case",
    "it",
    "holds",
];

/// `"{name} answers: w1 w2 … ."`, exactly `tokens` pieces: the first is `"{name} answers:"`,
/// each next one is a space and a word. Returns the text and its piece offsets.
fn generate_answer(options: &ModelOptions, question: &str, tokens: usize) -> (String, Vec<usize>) {
    let mut seed = Fnv1a::new();
    seed.update(options.name.as_bytes());
    seed.update(&[0]);
    seed.update(question.as_bytes());
    let mut rng = SplitMix64(seed.finish());

    let mut text = String::with_capacity(options.name.len() + 9 + tokens * 9);
    let mut bounds = Vec::with_capacity(tokens + 1);
    bounds.push(0);
    text.push_str(&options.name);
    text.push_str(" answers:");
    bounds.push(text.len());
    for index in 1..tokens {
        text.push(' ');
        // Reducing a 64-bit draw modulo 32 keeps it unbiased; the cast is lossless.
        text.push_str(VOCABULARY[(rng.next() % VOCABULARY.len() as u64) as usize]);
        if index + 1 == tokens {
            text.push('.');
        }
        bounds.push(text.len());
    }
    (text, bounds)
}

/// Offsets cutting `body` into `pieces` runs of (nearly) equal character count; some runs are
/// empty when `body` has fewer characters than `pieces`, which keeps the stream's duration a
/// function of `tokens` alone.
fn even_bounds(body: &str, pieces: usize) -> Vec<usize> {
    let offsets: Vec<usize> = body
        .char_indices()
        .map(|(offset, _)| offset)
        .chain(std::iter::once(body.len()))
        .collect();
    let chars = offsets.len() - 1;
    (0..=pieces)
        .map(|index| offsets[index * chars / pieces])
        .collect()
}

/// SplitMix64: a seeded generator with good statistical quality in four lines, so the words
/// depend on the seed only (no `rand` version can change them).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::SimConfig;
    use serde_json::Value;

    fn options(model: &str) -> ModelOptions {
        ModelOptions::parse(model, &SimConfig::default()).expect("valid model")
    }

    fn request(tools: Value) -> SimRequest {
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "tools": tools,
        });
        crate::wire::Wire::OpenAiChat
            .parse(body.to_string().as_bytes(), None)
            .expect("valid request")
    }

    fn vote_tool(labels: &[&str]) -> Value {
        json!({"type": "function", "function": {"name": "vote", "parameters": {
            "type": "object",
            "properties": {"agent_id": {"type": "string", "enum": labels}, "reason": {"type": "string"}}
        }}})
    }

    fn answer_tool() -> Value {
        json!({"type": "function", "function": {"name": "new_answer", "parameters": {
            "type": "object", "properties": {"content": {"type": "string"}}
        }}})
    }

    fn joined(reply: &Reply) -> String {
        (0..reply.pieces())
            .map(|index| reply.piece(index))
            .collect()
    }

    #[test]
    fn votes_for_the_first_label() {
        let reply = Reply::decide(
            &options("alpha:tokens=7"),
            &request(json!([answer_tool(), vote_tool(&["agent3.1", "agent1.1"])])),
        );
        assert_eq!(reply.kind, DecisionKind::Vote);
        assert_eq!(reply.vote_target.as_deref(), Some("agent3.1"));
        assert_eq!(reply.pieces(), 7);
        let arguments: Value = serde_json::from_str(&joined(&reply)).expect("arguments JSON");
        assert_eq!(arguments["agent_id"], "agent3.1");
    }

    #[test]
    fn empty_enum_means_no_vote() {
        let reply = Reply::decide(
            &options("alpha"),
            &request(json!([answer_tool(), vote_tool(&[])])),
        );
        assert_eq!(reply.kind, DecisionKind::NewAnswer);
    }

    #[test]
    fn answer_policy_prefers_new_answer_and_text_policy_ignores_tools() {
        let tools = json!([answer_tool(), vote_tool(&["agent1.1"])]);
        let answer = Reply::decide(&options("a:policy=answer"), &request(tools.clone()));
        assert_eq!(answer.kind, DecisionKind::NewAnswer);
        let text = Reply::decide(&options("a:policy=text"), &request(tools));
        assert_eq!(text.kind, DecisionKind::Text);
        let only_vote = Reply::decide(
            &options("a:policy=answer"),
            &request(json!([vote_tool(&["agent1.1"])])),
        );
        assert_eq!(only_vote.kind, DecisionKind::Vote);
    }

    #[test]
    fn text_is_deterministic_and_has_exactly_tokens_pieces() {
        let first = Reply::decide(&options("beta:tokens=12"), &request(Value::Null));
        let second = Reply::decide(&options("beta:tokens=12"), &request(Value::Null));
        assert_eq!(first.kind, DecisionKind::Text);
        assert_eq!(first.body, second.body);
        assert_eq!(first.pieces(), 12);
        assert_eq!(joined(&first), first.body);
        assert!(first.body.starts_with("beta answers:"));
        assert_eq!(first.body.split_whitespace().count(), 13);
        let other = Reply::decide(&options("gamma:tokens=12"), &request(Value::Null));
        assert_ne!(first.body, other.body);
    }

    #[test]
    fn even_bounds_cover_the_body_on_char_boundaries() {
        let body = "héllo wörld";
        for pieces in [1, 3, 11, 40] {
            let bounds = even_bounds(body, pieces);
            assert_eq!(bounds.len(), pieces + 1);
            assert_eq!(bounds.first(), Some(&0));
            assert_eq!(bounds.last(), Some(&body.len()));
            assert!(bounds.iter().all(|&offset| body.is_char_boundary(offset)));
        }
    }

    /// The `tools` policy over every wire format: call the matching tool first, then decide
    /// quoting the result, which each format carries in its own shape.
    #[test]
    fn tools_policy_calls_the_tool_then_answers_with_its_result() {
        use crate::wire::Wire;
        let options = ModelOptions::parse(
            "m:policy=tools,tool=lookup",
            &crate::options::SimConfig::default(),
        )
        .expect("options");
        let lookup_schema = json!({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]});
        let vote_schema = json!({"type": "object", "properties": {"agent_id": {"type": "string", "enum": ["agent1.1"]}}});
        let question = "capital of france?";
        let result = "The capital of France is Paris.";
        // (wire, body without a result, body with one)
        let cases: Vec<(Wire, Value, Value)> = vec![
            (
                Wire::OpenAiChat,
                json!({"model": "m", "messages": [{"role": "user", "content": question}],
                    "tools": [{"type": "function", "function": {"name": "mcp__demo__lookup", "parameters": lookup_schema}},
                              {"type": "function", "function": {"name": "vote", "parameters": vote_schema}}]}),
                json!({"model": "m", "messages": [{"role": "user", "content": question},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "mcp__demo__lookup", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": result}],
                    "tools": [{"type": "function", "function": {"name": "mcp__demo__lookup", "parameters": lookup_schema}},
                              {"type": "function", "function": {"name": "vote", "parameters": vote_schema}}]}),
            ),
            (
                Wire::OpenAiResponses,
                json!({"model": "m", "input": [{"role": "user", "content": question}],
                    "tools": [{"type": "function", "name": "mcp__demo__lookup", "parameters": lookup_schema},
                              {"type": "function", "name": "vote", "parameters": vote_schema}]}),
                json!({"model": "m", "input": [{"role": "user", "content": question},
                    {"type": "function_call", "call_id": "c1", "name": "mcp__demo__lookup", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c1", "output": result}],
                    "tools": [{"type": "function", "name": "mcp__demo__lookup", "parameters": lookup_schema},
                              {"type": "function", "name": "vote", "parameters": vote_schema}]}),
            ),
            (
                Wire::Anthropic,
                json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": question}],
                    "tools": [{"name": "mcp__demo__lookup", "input_schema": lookup_schema},
                              {"name": "vote", "input_schema": vote_schema}]}),
                json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": question},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "mcp__demo__lookup", "input": {}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": result}]}],
                    "tools": [{"name": "mcp__demo__lookup", "input_schema": lookup_schema},
                              {"name": "vote", "input_schema": vote_schema}]}),
            ),
            (
                Wire::Gemini,
                json!({"contents": [{"role": "user", "parts": [{"text": question}]}],
                    "tools": [{"functionDeclarations": [{"name": "mcp__demo__lookup", "parameters": lookup_schema},
                                                        {"name": "vote", "parameters": vote_schema}]}]}),
                json!({"contents": [{"role": "user", "parts": [{"text": question}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "mcp__demo__lookup", "args": {}}}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "mcp__demo__lookup", "response": {"content": result}}}]}],
                    "tools": [{"functionDeclarations": [{"name": "mcp__demo__lookup", "parameters": lookup_schema},
                                                        {"name": "vote", "parameters": vote_schema}]}]}),
            ),
        ];
        for (wire, first, second) in cases {
            let parse = |body: &Value| {
                wire.parse(body.to_string().as_bytes(), Some("m"))
                    .expect("parses")
            };
            let call = Reply::decide(&options, &parse(&first));
            assert_eq!(call.kind, DecisionKind::Tool, "{wire:?}");
            assert_eq!(call.tool_name(), Some("mcp__demo__lookup"));
            assert_eq!(call.body, json!({"key": question}).to_string());
            let request = parse(&second);
            assert_eq!(request.tool_results, [result], "{wire:?}");
            let answer = Reply::decide(&options, &request);
            assert_eq!(answer.kind, DecisionKind::Vote, "{wire:?}");
            assert!(answer.body.contains(result), "{wire:?}: {}", answer.body);
        }
        // Without a matching tool the policy is the default one.
        let plain = request(json!([vote_tool(&["agent1.1"])]));
        assert_eq!(Reply::decide(&options, &plain).kind, DecisionKind::Vote);
        // A final presentation (no workflow tools) quotes the result in its text.
        let final_turn = json!({"model": "m", "messages": [{"role": "user", "content": question},
            {"role": "tool", "tool_call_id": "c1", "content": result}]});
        let text = Reply::decide(
            &options,
            &crate::wire::Wire::OpenAiChat
                .parse(final_turn.to_string().as_bytes(), None)
                .expect("parses"),
        );
        assert_eq!(text.kind, DecisionKind::Text);
        assert!(
            text.body.ends_with(&format!("Tool result: {result}")),
            "{}",
            text.body
        );
    }
}
