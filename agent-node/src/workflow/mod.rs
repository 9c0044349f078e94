//! The coordination protocol as the model sees it: the prompt of a turn, the two workflow
//! tools, and the check that a turn ended in exactly one valid workflow call. For models that
//! do not call tools the same decision is written as a marked line ([`text`]).
//!
//! * `new_answer(content)` offers a complete answer. It is not offered when the agent has
//!   reached its answer limit (`may_answer: false`).
//! * `vote(agent_id, reason)` endorses an existing answer. `agent_id` is an enum of the current
//!   answer labels (`agent2.1`, ...). With no answers yet, only `new_answer` is offered.
//!
//! Answers are shown under their anonymous labels only; the model never learns which
//! configured agent (or provider) wrote what. A turn that does not end in exactly one valid
//! call is answered with a corrective message and tried again (see [`correction`]): the
//! assistant message with its tool calls is kept, and every call gets a tool result, so the
//! retried history is valid for servers that check tool-call pairing strictly.

pub mod text;

use std::fmt::Write as _;

use conclave_protocol::{AnswerLabel, Decision, TaskSpec, ToolCall, TurnSpec};
use serde_json::json;

use crate::accumulate::TurnOutput;
use crate::llm::{ChatMessage, ToolSpec};

/// Name of the tool that offers an answer.
pub const NEW_ANSWER: &str = "new_answer";
/// Name of the tool that endorses an answer.
pub const VOTE: &str = "vote";

const COORDINATION_RULES: &str = "You are one of several agents working on the same task. \
Each agent sees the others' answers anonymously, under labels like agent2.1. \
Study the task and the current answers. If one of them already answers the task \
correctly and completely, endorse it by calling `vote` with its label. If there is \
no answer yet, or you can give a clearly better one, call `new_answer` with your \
complete answer (it must stand on its own, not refer to other answers). \
End your turn with exactly one call to `vote` or `new_answer`.";

const VOTE_ONLY_RULES: &str = "You are one of several agents working on the same task. \
Each agent sees the others' answers anonymously, under labels like agent2.1. \
You may no longer submit answers. Study the task and the current answers and \
call `vote` with the label of the best one. End your turn with exactly one call to `vote`.";

const PRESENTATION_RULES: &str = "You are presenting the final answer of a group of agents. \
Their answers and votes are below; the answer that won the vote is marked. \
Write the final answer to the original message: complete, self-contained, and \
addressed to the user. Do not mention agents, labels or votes.";

/// Whether `name` is one of the workflow tools (`new_answer`, `vote`).
pub fn is_workflow_tool(name: &str) -> bool {
    name == NEW_ANSWER || name == VOTE
}

/// The tools a coordinating turn offers.
pub fn workflow_tools(spec: &TurnSpec) -> Vec<ToolSpec> {
    let mut tools = Vec::with_capacity(2);
    if spec.may_answer {
        tools.push(ToolSpec {
            name: NEW_ANSWER.to_owned(),
            description: "Submit a new, complete answer to the task.".to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "content": {"type": "string", "description": "Your complete answer."}
                },
                "required": ["content"],
                "additionalProperties": false
            }),
        });
    }
    if !spec.answers.is_empty() {
        let labels: Vec<String> = spec.answers.iter().map(|a| a.label.to_string()).collect();
        tools.push(ToolSpec {
            name: VOTE.to_owned(),
            description: "Vote for the best existing answer.".to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "agent_id": {
                        "type": "string",
                        "enum": labels,
                        "description": "The label of the answer you vote for."
                    },
                    "reason": {"type": "string", "description": "Why this answer is best."}
                },
                "required": ["agent_id", "reason"],
                "additionalProperties": false
            }),
        });
    }
    tools
}

fn history_messages(task: &TaskSpec, messages: &mut Vec<ChatMessage>) {
    for (user, assistant) in &task.history {
        messages.push(ChatMessage::User {
            content: user.clone(),
        });
        messages.push(ChatMessage::assistant(assistant.clone()));
    }
}

fn system_message(own: Option<&str>, rules: &str) -> ChatMessage {
    let content = match own {
        Some(own) if !own.trim().is_empty() => format!("{own}\n\n{rules}"),
        _ => rules.to_owned(),
    };
    ChatMessage::System { content }
}

fn render_answers(spec: &TurnSpec, out: &mut String) {
    if spec.answers.is_empty() {
        out.push_str("<CURRENT ANSWERS>\n(no answers yet)\n</CURRENT ANSWERS>\n");
        return;
    }
    out.push_str("<CURRENT ANSWERS>\n");
    for answer in spec.answers.iter() {
        let mine = if answer.label.agent == spec.self_number {
            " (your own)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<{label}{mine}>\n{}\n</{label}>",
            answer.content,
            label = answer.label
        );
    }
    out.push_str("</CURRENT ANSWERS>\n");
}

/// The messages of a coordination turn in which the model decides by calling a tool.
pub fn coordination_messages(spec: &TurnSpec, own_system: Option<&str>) -> Vec<ChatMessage> {
    let rules = if spec.may_answer {
        COORDINATION_RULES
    } else {
        VOTE_ONLY_RULES
    };
    let closing = if spec.answers.is_empty() {
        "There is no answer yet: call `new_answer` with your answer."
    } else if spec.may_answer {
        "Decide: `vote` for the best answer above, or `new_answer` if you can do clearly better."
    } else {
        "Call `vote` with the label of the best answer above."
    };
    coordination(spec, own_system, rules, closing)
}

/// The messages of a coordination turn in which the model decides by writing a marked line
/// ([`text`]): no tools are offered.
pub fn text_coordination_messages(spec: &TurnSpec, own_system: Option<&str>) -> Vec<ChatMessage> {
    let closing = format!(
        "End your reply with exactly one decision line: {}.",
        text::allowed_lines(spec)
    );
    coordination(spec, own_system, &text::rules(spec), &closing)
}

fn coordination(
    spec: &TurnSpec,
    own_system: Option<&str>,
    rules: &str,
    closing: &str,
) -> Vec<ChatMessage> {
    let mut messages = vec![system_message(own_system, rules)];
    history_messages(&spec.task, &mut messages);
    let mut user = String::with_capacity(spec.task.question.len() + 256);
    let _ = write!(
        user,
        "<ORIGINAL MESSAGE>\n{}\n</ORIGINAL MESSAGE>\n\n",
        spec.task.question
    );
    render_answers(spec, &mut user);
    user.push('\n');
    user.push_str(closing);
    messages.push(ChatMessage::User { content: user });
    messages
}

/// What the model reads, appended to a tool result, when newer answers reach its turn at a
/// tool boundary (restart policy `inject`): the answers it has not seen yet in full, the labels
/// that are current now, and what that means for its decision. `before` is the turn as the
/// model knew it, `now` the turn with the newer answers.
pub fn injection_text(before: &TurnSpec, now: &TurnSpec) -> String {
    let mut text = String::with_capacity(256);
    text.push_str("\n\n<UPDATE>\nWhile you worked, the current answers changed. ");
    let fresh: Vec<_> = now
        .answers
        .iter()
        .filter(|answer| !before.answers.iter().any(|old| old.label == answer.label))
        .collect();
    if !fresh.is_empty() {
        text.push_str("New answers:\n");
        for answer in fresh {
            let mine = if answer.label.agent == now.self_number {
                " (your own)"
            } else {
                ""
            };
            let _ = writeln!(
                text,
                "<{label}{mine}>\n{}\n</{label}>",
                answer.content,
                label = answer.label
            );
        }
    }
    let labels: Vec<String> = now.answers.iter().map(|a| a.label.to_string()).collect();
    let _ = write!(
        text,
        "The current answers are now: {}. Answers not listed are superseded. ",
        labels.join(", ")
    );
    if now.may_answer {
        text.push_str(
            "Take them into account: when you decide, `vote` for one of the current answers, \
             or `new_answer` if you can do clearly better.",
        );
    } else {
        text.push_str(
            "You may no longer submit answers: when you decide, `vote` for one of the current \
             answers.",
        );
    }
    text.push_str("\n</UPDATE>");
    text
}

/// The messages of the final presentation turn (no tools).
pub fn presentation_messages(spec: &TurnSpec, own_system: Option<&str>) -> Vec<ChatMessage> {
    if spec.answers.is_empty() {
        // A one-call session (no coordination before): the question, answered directly.
        let mut messages = Vec::new();
        if let Some(own) = own_system.filter(|s| !s.trim().is_empty()) {
            messages.push(ChatMessage::System {
                content: own.to_owned(),
            });
        }
        history_messages(&spec.task, &mut messages);
        messages.push(ChatMessage::User {
            content: spec.task.question.clone(),
        });
        return messages;
    }
    let mut messages = vec![system_message(own_system, PRESENTATION_RULES)];
    history_messages(&spec.task, &mut messages);
    let mut user = String::with_capacity(spec.task.question.len() + 512);
    let _ = write!(
        user,
        "<ORIGINAL MESSAGE>\n{}\n</ORIGINAL MESSAGE>\n\n",
        spec.task.question
    );
    render_answers(spec, &mut user);
    if !spec.votes.is_empty() {
        user.push_str("<VOTES>\n");
        for vote in spec.votes.iter() {
            let _ = writeln!(
                user,
                "agent{} voted for {}: {}",
                vote.voter, vote.label, vote.reason
            );
        }
        user.push_str("</VOTES>\n");
    }
    let _ = write!(
        user,
        "\nThe winning answer is your own ({}). Present the final answer now.",
        spec.answers
            .iter()
            .filter(|a| a.label.agent == spec.self_number)
            .map(|a| a.label.to_string())
            .next_back()
            .unwrap_or_else(|| format!("agent{}", spec.self_number))
    );
    messages.push(ChatMessage::User { content: user });
    messages
}

/// Why a turn's output is not a valid decision. The text is shown to the model in the
/// corrective message, so it says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionProblem {
    #[error("you did not call a tool; end your turn with exactly one call to {allowed}")]
    NoCall { allowed: String },
    #[error("you made {count} workflow calls; make exactly one call to {allowed}")]
    SeveralCalls { count: usize, allowed: String },
    #[error("`{name}` is not an available tool; call {allowed}")]
    UnknownTool { name: String, allowed: String },
    #[error("the arguments of `{name}` are not valid JSON ({detail}); send a JSON object")]
    BadArguments { name: String, detail: String },
    #[error("`new_answer` needs a non-empty string `content`")]
    EmptyAnswer,
    #[error("you may not submit new answers any more; call `vote`")]
    AnswerNotAllowed,
    #[error("there are no answers to vote for yet; call `new_answer`")]
    NothingToVoteFor,
    #[error("`{given}` is not one of the current answers ({labels}); vote for one of them")]
    UnknownLabel { given: String, labels: String },
    #[error("your reply did not end with a decision line; end it with {allowed}")]
    NoMarkedDecision { allowed: String },
    #[error(
        "the turn has used its {limit} tool rounds (`max_tool_rounds`); no more tool calls: decide now"
    )]
    ToolRoundsExhausted { limit: u32 },
    #[error("your `new_answer` was not accepted: {reason}")]
    SnapshotRefused { reason: String },
}

impl DecisionProblem {
    /// A short bounded-cardinality code for logs and telemetry.
    pub fn code(&self) -> &'static str {
        match self {
            DecisionProblem::NoCall { .. } => "no_call",
            DecisionProblem::SeveralCalls { .. } => "several_calls",
            DecisionProblem::UnknownTool { .. } => "unknown_tool",
            DecisionProblem::BadArguments { .. } => "bad_arguments",
            DecisionProblem::EmptyAnswer => "empty_answer",
            DecisionProblem::AnswerNotAllowed => "answer_not_allowed",
            DecisionProblem::NothingToVoteFor => "nothing_to_vote_for",
            DecisionProblem::UnknownLabel { .. } => "unknown_label",
            DecisionProblem::NoMarkedDecision { .. } => "no_marked_decision",
            DecisionProblem::ToolRoundsExhausted { .. } => "tool_rounds_exhausted",
            DecisionProblem::SnapshotRefused { .. } => "snapshot_refused",
        }
    }
}

fn allowed_tools(spec: &TurnSpec) -> String {
    match (spec.may_answer, spec.answers.is_empty()) {
        (true, true) => "`new_answer`".to_owned(),
        (true, false) => "`vote` or `new_answer`".to_owned(),
        (false, _) => "`vote`".to_owned(),
    }
}

fn parse_arguments(
    call: &ToolCall,
) -> Result<serde_json::Map<String, serde_json::Value>, DecisionProblem> {
    let raw = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        call.arguments.as_str()
    };
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(DecisionProblem::BadArguments {
            name: call.name.clone(),
            detail: format!("expected an object, got {}", json_kind(&other)),
        }),
        Err(e) => Err(DecisionProblem::BadArguments {
            name: call.name.clone(),
            detail: e.to_string(),
        }),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Checks that the turn made exactly one valid workflow call and turns it into a decision.
pub fn parse_decision(spec: &TurnSpec, calls: &[ToolCall]) -> Result<Decision, DecisionProblem> {
    let allowed = allowed_tools(spec);
    let mut workflow = calls
        .iter()
        .filter(|c| c.name == NEW_ANSWER || c.name == VOTE);
    if let Some(other) = calls
        .iter()
        .find(|c| c.name != NEW_ANSWER && c.name != VOTE)
    {
        return Err(DecisionProblem::UnknownTool {
            name: other.name.clone(),
            allowed,
        });
    }
    let call = match (workflow.next(), workflow.next()) {
        (None, _) => return Err(DecisionProblem::NoCall { allowed }),
        (Some(call), None) => call,
        (Some(_), Some(_)) => {
            return Err(DecisionProblem::SeveralCalls {
                count: calls.len(),
                allowed,
            });
        }
    };
    let args = parse_arguments(call)?;
    if call.name == NEW_ANSWER {
        if !spec.may_answer {
            return Err(DecisionProblem::AnswerNotAllowed);
        }
        let content = args
            .get("content")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if content.trim().is_empty() {
            return Err(DecisionProblem::EmptyAnswer);
        }
        return Ok(Decision::NewAnswer {
            content: content.to_owned(),
        });
    }
    if spec.answers.is_empty() {
        return Err(DecisionProblem::NothingToVoteFor);
    }
    let given = args
        .get("agent_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let label = given
        .parse::<AnswerLabel>()
        .ok()
        .filter(|label| spec.answers.iter().any(|a| a.label == *label));
    let Some(label) = label else {
        let labels = spec
            .answers
            .iter()
            .map(|a| a.label.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DecisionProblem::UnknownLabel {
            given: given.to_owned(),
            labels,
        });
    };
    let reason = args
        .get("reason")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    Ok(Decision::Vote { label, reason })
}

/// Extends the conversation after an invalid turn so the model can try again: the assistant's
/// own message (text and tool calls) is kept, every tool call gets a result (an error for the
/// wrong ones), and a user message explains what to do. The reasoning blocks go back with
/// their signatures, which providers with signed reasoning require.
pub fn correction(
    messages: &mut Vec<ChatMessage>,
    spec: &TurnSpec,
    output: &TurnOutput,
    problem: &DecisionProblem,
) {
    let content = if output.text.is_empty() {
        None
    } else {
        Some(output.text.clone())
    };
    messages.push(ChatMessage::Assistant {
        content,
        tool_calls: output.tool_calls.clone(),
        reasoning: output.reasoning_blocks.clone(),
    });
    for call in &output.tool_calls {
        messages.push(ChatMessage::tool_error(
            call.id.clone(),
            format!("error: this call was not accepted: {problem}"),
        ));
    }
    messages.push(ChatMessage::User {
        content: format!(
            "Your turn was not accepted: {problem}. Try again. {}",
            valid_calls(spec)
        ),
    });
}

/// What a valid end of turn looks like, with this turn's real labels.
fn valid_calls(spec: &TurnSpec) -> String {
    let vote = spec.answers.first().map(|a| {
        format!(
            "`vote` with {{\"agent_id\": \"{}\", \"reason\": \"why it is best\"}} (agent_id is one of: {})",
            a.label,
            text::current_labels(spec)
        )
    });
    let answer = spec
        .may_answer
        .then(|| "`new_answer` with {\"content\": \"your complete answer\"}".to_owned());
    match (vote, answer) {
        (Some(vote), Some(answer)) => {
            format!("A valid turn ends with exactly one tool call: {vote}, or {answer}.")
        }
        (Some(only), None) | (None, Some(only)) => {
            format!("A valid turn ends with exactly one tool call: {only}.")
        }
        (None, None) => String::new(),
    }
}

/// Extends the conversation after a text-mode reply without a valid decision line: the reply
/// is kept and a user message says what went wrong and which lines are accepted.
pub fn text_correction(
    messages: &mut Vec<ChatMessage>,
    spec: &TurnSpec,
    output: &TurnOutput,
    problem: &DecisionProblem,
) {
    messages.push(ChatMessage::Assistant {
        content: (!output.text.is_empty()).then(|| output.text.clone()),
        tool_calls: Vec::new(),
        reasoning: output.reasoning_blocks.clone(),
    });
    messages.push(ChatMessage::User {
        content: format!(
            "Your reply was not accepted: {problem}. Reply again and end with exactly one \
             decision line: {}.",
            text::allowed_lines(spec)
        ),
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use conclave_protocol::{LabeledAnswer, TurnId, TurnMode};

    use super::*;

    /// A coordination turn of agent 2 over `answers` (`(agent, answer)` labels).
    pub(crate) fn spec(answers: &[(u32, u32)], may_answer: bool) -> TurnSpec {
        TurnSpec {
            turn: TurnId(1),
            mode: TurnMode::Coordinate,
            task: Arc::new(TaskSpec {
                question: "q?".into(),
                history: vec![],
            }),
            answers: answers
                .iter()
                .map(|&(a, m)| LabeledAnswer {
                    label: AnswerLabel::new(a, m),
                    content: format!("answer {a}.{m}").into(),
                })
                .collect::<Vec<_>>()
                .into(),
            revision: 1,
            may_answer,
            votes: Vec::new().into(),
            self_number: 2,
            snapshots: Vec::new().into(),
        }
    }

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: format!("call_{name}"),
            name: name.into(),
            arguments: arguments.into(),
            signature: None,
        }
    }

    fn tool_names(spec: &TurnSpec) -> Vec<String> {
        workflow_tools(spec).into_iter().map(|t| t.name).collect()
    }

    #[test]
    fn tools_follow_the_state() {
        assert_eq!(tool_names(&spec(&[], true)), vec!["new_answer"]);
        assert_eq!(
            tool_names(&spec(&[(1, 1)], true)),
            vec!["new_answer", "vote"]
        );
        assert_eq!(tool_names(&spec(&[(1, 1)], false)), vec!["vote"]);
        let tools = workflow_tools(&spec(&[(1, 1), (3, 2)], true));
        assert_eq!(
            tools[1].parameters["properties"]["agent_id"]["enum"],
            json!(["agent1.1", "agent3.2"])
        );
    }

    #[test]
    fn valid_calls_become_decisions() {
        let s = spec(&[(1, 1)], true);
        assert_eq!(
            parse_decision(
                &s,
                &[call("vote", r#"{"agent_id":"agent1.1","reason":"good"}"#)]
            ),
            Ok(Decision::Vote {
                label: AnswerLabel::new(1, 1),
                reason: "good".into()
            })
        );
        assert_eq!(
            parse_decision(&s, &[call("new_answer", r#"{"content":"42"}"#)]),
            Ok(Decision::NewAnswer {
                content: "42".into()
            })
        );
    }

    #[test]
    fn invalid_turns_are_explained() {
        let s = spec(&[(1, 1)], true);
        assert_eq!(parse_decision(&s, &[]).unwrap_err().code(), "no_call");
        let two = [
            call("vote", r#"{"agent_id":"agent1.1"}"#),
            call("new_answer", r#"{"content":"x"}"#),
        ];
        assert_eq!(
            parse_decision(&s, &two).unwrap_err().code(),
            "several_calls"
        );
        assert_eq!(
            parse_decision(&s, &[call("search", "{}")])
                .unwrap_err()
                .code(),
            "unknown_tool"
        );
        assert_eq!(
            parse_decision(&s, &[call("vote", "{nope")])
                .unwrap_err()
                .code(),
            "bad_arguments"
        );
        assert_eq!(
            parse_decision(&s, &[call("vote", "[1]")])
                .unwrap_err()
                .code(),
            "bad_arguments"
        );
        assert_eq!(
            parse_decision(&s, &[call("new_answer", r#"{"content":"  "}"#)])
                .unwrap_err()
                .code(),
            "empty_answer"
        );
        assert_eq!(
            parse_decision(&s, &[call("vote", r#"{"agent_id":"agent9.1"}"#)])
                .unwrap_err()
                .code(),
            "unknown_label"
        );
        let vote_only = spec(&[(1, 1)], false);
        assert_eq!(
            parse_decision(&vote_only, &[call("new_answer", r#"{"content":"x"}"#)])
                .unwrap_err()
                .code(),
            "answer_not_allowed"
        );
        let empty = spec(&[], true);
        assert_eq!(
            parse_decision(&empty, &[call("vote", r#"{"agent_id":"agent1.1"}"#)])
                .unwrap_err()
                .code(),
            "nothing_to_vote_for"
        );
    }

    #[test]
    fn correction_keeps_tool_call_pairing_valid() {
        let s = spec(&[(1, 1)], true);
        let mut messages = coordination_messages(&s, Some("be brief"));
        let calls = [
            call("vote", r#"{"agent_id":"agent7.1"}"#),
            call("vote", r#"{"agent_id":"agent1.1"}"#),
        ];
        let problem = parse_decision(&s, &calls).unwrap_err();
        let output = TurnOutput {
            text: "thinking".into(),
            tool_calls: calls.to_vec(),
            ..TurnOutput::default()
        };
        correction(&mut messages, &s, &output, &problem);
        let n = messages.len();
        assert!(
            matches!(&messages[n - 4], ChatMessage::Assistant { tool_calls, .. } if tool_calls.len() == 2)
        );
        assert!(
            matches!(&messages[n - 3], ChatMessage::Tool { call_id, .. } if call_id == "call_vote")
        );
        assert!(matches!(&messages[n - 2], ChatMessage::Tool { .. }));
        assert!(matches!(&messages[n - 1], ChatMessage::User { .. }));
    }

    #[test]
    fn prompts_are_anonymous_and_mark_own_answers() {
        let s = spec(&[(1, 1), (2, 1)], true);
        let messages = coordination_messages(&s, None);
        let ChatMessage::User { content } = &messages[1] else {
            panic!("expected a user message")
        };
        assert!(content.contains("<agent1.1>"));
        assert!(content.contains("<agent2.1 (your own)>"));
        assert!(content.contains("q?"));
    }
}
