//! The workflow as text, for models that do not call tools.
//!
//! Many local models (and some hosted ones) answer in prose and never call `new_answer` or
//! `vote`. In text mode the prompt asks the model to end its reply with one marked decision,
//! and this module reads it back:
//!
//! ```text
//! VOTE: agent2.1 — it covers every case
//! ```
//! or
//! ```text
//! NEW ANSWER:
//! the complete answer, on as many lines as it needs
//! ```
//!
//! Reading is lenient, because small models are sloppy about form: the marker may be in any
//! case, spaced or underscored (`New answer`, `NEW_ANSWER`), wrapped in Markdown emphasis or a
//! heading (`**VOTE:** agent2.1`, `### New Answer`), behind a list bullet or a quote sign, and
//! the colon is optional. A vote's label may be written `agent2.1`, `Agent 2.1`, `agent #2.1`,
//! or without the answer number (`agent2`: that agent's latest current answer); the label may
//! stand on the line after the marker. Only a label of a current answer counts.
//!
//! Choices, and why:
//! - A marker must begin a line (after Markdown decoration): prose such as "I will vote for
//!   agent2.1" or instructions the model repeats mid-sentence are not decisions.
//! - The **last** marked line decides: models often think aloud first ("VOTE: agent1.1? No —
//!   ...") and settle at the end, which is where the prompt asks for the decision. A
//!   `NEW ANSWER` block runs to the end of the reply, so an answer is always the reply's tail.

use conclave_protocol::{AnswerLabel, Decision, TurnSpec};

use super::DecisionProblem;

/// What a marked line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Vote,
    NewAnswer,
}

/// Characters that decorate the start of a line in Markdown (headings, bullets, quotes,
/// emphasis, code) and that are stripped before looking for a marker.
const LEADING_DECORATION: &[char] = &['#', '>', '*', '_', '-', '+', '`', '~', ' ', '\t'];

/// Reads the marked decision at the end of a text-mode reply.
pub fn parse_text_decision(spec: &TurnSpec, text: &str) -> Result<Decision, DecisionProblem> {
    let lines: Vec<&str> = text.lines().collect();
    // The first problem met, walking up from the end: what the model is told if no marked
    // line holds a decision.
    let mut problem = None;
    for (index, line) in lines.iter().enumerate().rev() {
        let Some((marker, rest)) = marker_of(line) else {
            continue;
        };
        let decided = match marker {
            Marker::NewAnswer => new_answer(spec, rest, &lines[index + 1..]),
            Marker::Vote => match vote(spec, rest, &lines[index + 1..]) {
                // A "vote" line with nothing label-shaped may be prose inside an answer
                // ("- Vote counting is..."): look further up before giving up.
                None => {
                    problem.get_or_insert(DecisionProblem::UnknownLabel {
                        given: first_word(rest),
                        labels: current_labels(spec),
                    });
                    continue;
                }
                Some(result) => result,
            },
        };
        return decided;
    }
    Err(
        problem.unwrap_or_else(|| DecisionProblem::NoMarkedDecision {
            allowed: allowed_lines(spec),
        }),
    )
}

/// A `NEW ANSWER` block: the rest of its line and every line after it.
fn new_answer(spec: &TurnSpec, rest: &str, after: &[&str]) -> Result<Decision, DecisionProblem> {
    if !spec.may_answer {
        return Err(DecisionProblem::AnswerNotAllowed);
    }
    let mut content = rest.to_owned();
    for line in after {
        content.push('\n');
        content.push_str(line);
    }
    let content = content.trim();
    if content.is_empty() {
        return Err(DecisionProblem::EmptyAnswer);
    }
    Ok(Decision::NewAnswer {
        content: content.to_owned(),
    })
}

/// A `VOTE` line; `None` when nothing label-shaped follows the marker.
fn vote(spec: &TurnSpec, rest: &str, after: &[&str]) -> Option<Result<Decision, DecisionProblem>> {
    // The label is on the marker's line, or on the next line that has text.
    let (line_with_label, following) = if rest.trim().is_empty() {
        let offset = after.iter().position(|l| !l.trim().is_empty())?;
        (after[offset], &after[offset + 1..])
    } else {
        (rest, after)
    };
    let (written, label, tail) = find_label(spec, line_with_label)?;
    if spec.answers.is_empty() {
        return Some(Err(DecisionProblem::NothingToVoteFor));
    }
    let Some(label) = label else {
        return Some(Err(DecisionProblem::UnknownLabel {
            given: written,
            labels: current_labels(spec),
        }));
    };
    let mut reason = strip_separator(tail).trim().to_owned();
    if reason.is_empty() {
        reason = following
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
    }
    Some(Ok(Decision::Vote {
        label,
        reason: clip(&reason, 2000),
    }))
}

/// The marker a line starts with, and the rest of the line after it and its separator.
fn marker_of(line: &str) -> Option<(Marker, &str)> {
    let body = line.trim_start_matches(LEADING_DECORATION);
    let upper: String = body
        .chars()
        .take(16)
        .collect::<String>()
        .to_ascii_uppercase();
    let (marker, len) = if let Some(len) = starts_with_words(&upper, &["NEW", "ANSWER"]) {
        (Marker::NewAnswer, len)
    } else if let Some(len) = starts_with_words(&upper, &["FINAL", "VOTE"]) {
        (Marker::Vote, len)
    } else if let Some(len) = starts_with_words(&upper, &["VOTE"]) {
        (Marker::Vote, len)
    } else {
        return None;
    };
    // `len` counts ASCII bytes of the upper-cased prefix, which are the same bytes in `body`.
    let rest = &body[len..];
    // The marker is a whole word: `VOTES are...` or `Voter` is prose.
    if rest.starts_with(|c: char| c.is_alphanumeric()) {
        return None;
    }
    Some((marker, strip_separator(rest)))
}

/// Matches `words` at the start of `upper`, separated by nothing, spaces, `_` or `-`; returns
/// the length of the match.
fn starts_with_words(upper: &str, words: &[&str]) -> Option<usize> {
    let mut at = 0;
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            at += upper[at..]
                .chars()
                .take_while(|c| matches!(c, ' ' | '_' | '-'))
                .count();
        }
        if !upper[at..].starts_with(word) {
            return None;
        }
        at += word.len();
    }
    Some(at)
}

/// Drops the decoration between a marker (or a label) and what follows: emphasis, a colon,
/// a dash, an arrow, spaces.
fn strip_separator(rest: &str) -> &str {
    let rest = rest.trim_start_matches(['*', '_', '`', ' ', '\t']);
    let rest = rest
        .strip_prefix(':')
        .or_else(|| rest.strip_prefix("—"))
        .or_else(|| rest.strip_prefix("–"))
        .or_else(|| rest.strip_prefix("->"))
        .or_else(|| rest.strip_prefix("=>"))
        .or_else(|| rest.strip_prefix("- "))
        .or_else(|| rest.strip_prefix('='))
        .unwrap_or(rest);
    rest.trim_start_matches(['*', '_', '`', ' ', '\t'])
}

/// Finds the first `agent N[.M]` in `text`: (what was written, the current answer it names if
/// any, the text after it).
fn find_label<'a>(
    spec: &TurnSpec,
    text: &'a str,
) -> Option<(String, Option<AnswerLabel>, &'a str)> {
    let lower = text.to_ascii_lowercase();
    let mut search = 0;
    while let Some(found) = lower[search..].find("agent") {
        let start = search + found;
        search = start + "agent".len();
        // `reagent` or `agents` are words, not labels.
        if lower[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        {
            continue;
        }
        let bytes = lower.as_bytes();
        let mut at = search;
        while at < bytes.len() && matches!(bytes[at], b' ' | b'_' | b'-' | b'#') {
            at += 1;
        }
        let digits = |from: usize| {
            let mut to = from;
            while to < bytes.len() && bytes[to].is_ascii_digit() {
                to += 1;
            }
            to
        };
        let agent_end = digits(at);
        if agent_end == at {
            continue;
        }
        let Ok(agent) = lower[at..agent_end].parse::<u32>() else {
            continue;
        };
        let mut end = agent_end;
        let mut answer = None;
        if bytes.get(agent_end) == Some(&b'.') {
            let answer_end = digits(agent_end + 1);
            if answer_end > agent_end + 1 {
                answer = lower[agent_end + 1..answer_end].parse::<u32>().ok();
                end = answer_end;
            }
        }
        let written = text[start..end].to_owned();
        let label = match answer {
            Some(answer) => Some(AnswerLabel::new(agent, answer))
                .filter(|l| spec.answers.iter().any(|a| a.label == *l)),
            None => spec
                .answers
                .iter()
                .filter(|a| a.label.agent == agent)
                .map(|a| a.label)
                .max_by_key(|l| l.answer),
        };
        return Some((written, label, &text[end..]));
    }
    None
}

fn first_word(text: &str) -> String {
    let word = text.split_whitespace().next().unwrap_or("");
    if word.is_empty() {
        "(nothing)".to_owned()
    } else {
        clip(word, 60)
    }
}

fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The current labels, comma-separated.
pub(crate) fn current_labels(spec: &TurnSpec) -> String {
    spec.answers
        .iter()
        .map(|a| a.label.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The decision lines this turn accepts, as the model should write them.
pub(crate) fn allowed_lines(spec: &TurnSpec) -> String {
    let vote = spec
        .answers
        .first()
        .map(|a| format!("`VOTE: {} — your reason`", a.label));
    let answer = spec
        .may_answer
        .then(|| "`NEW ANSWER:` followed by your complete answer".to_owned());
    match (vote, answer) {
        (Some(vote), Some(answer)) => {
            format!("{vote} (labels: {}) or {answer}", current_labels(spec))
        }
        (Some(vote), None) => format!("{vote} (labels: {})", current_labels(spec)),
        (None, Some(answer)) => answer,
        (None, None) => "nothing (no decision is possible)".to_owned(),
    }
}

/// The rules of a text-mode coordination turn (in place of the tool rules).
pub(crate) fn rules(spec: &TurnSpec) -> String {
    let common = "You are one of several agents working on the same task. Each agent sees the \
        others' answers anonymously, under labels like agent2.1. You cannot call tools: you \
        decide by writing one marked line at the very end of your reply.";
    match (spec.may_answer, spec.answers.is_empty()) {
        (true, true) => format!(
            "{common} There is no answer yet. Write your complete answer after a line \
             `NEW ANSWER:` (the answer must stand on its own)."
        ),
        (true, false) => format!(
            "{common} If one of the current answers already answers the task correctly and \
             completely, end with the line `VOTE: <label> — <reason>`, for example \
             `VOTE: {} — it is correct and complete`. If you can give a clearly better answer, \
             end instead with a line `NEW ANSWER:` followed by your complete answer (it must \
             stand on its own, not refer to other answers). Write exactly one of the two.",
            spec.answers[0].label
        ),
        (false, _) => format!(
            "{common} You may no longer submit answers. End with the line \
             `VOTE: <label> — <reason>` naming the best current answer, for example `VOTE: {} — \
             it is correct and complete`.",
            spec.answers
                .first()
                .map(|a| a.label.to_string())
                .unwrap_or_else(|| "agent1.1".to_owned())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::workflow::tests::spec;

    fn vote(agent: u32, answer: u32, reason: &str) -> Decision {
        Decision::Vote {
            label: AnswerLabel::new(agent, answer),
            reason: reason.into(),
        }
    }

    #[test]
    fn votes_are_read_leniently() {
        let s = spec(&[(1, 1), (3, 1), (3, 2)], true);
        let cases = [
            (
                "Looks fine.\nVOTE: agent1.1 — it is right",
                vote(1, 1, "it is right"),
            ),
            ("vote: Agent 3.2 - clearer", vote(3, 2, "clearer")),
            (
                "**VOTE:** agent1.1 because it is short",
                vote(1, 1, "because it is short"),
            ),
            ("### Vote\nagent #3.1: covers it", vote(3, 1, "covers it")),
            ("> Final vote: agent3 -> newest", vote(3, 2, "newest")),
            (
                "- VOTE agent1.1\nIt is complete.\nNothing to add.",
                vote(1, 1, "It is complete. Nothing to add."),
            ),
            ("__vote__ = agent1.1", vote(1, 1, "")),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_text_decision(&s, text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn new_answers_run_to_the_end() {
        let s = spec(&[(1, 1)], true);
        assert_eq!(
            parse_text_decision(&s, "Thinking...\n**NEW ANSWER:**\nLine one.\n\nLine two.\n"),
            Ok(Decision::NewAnswer {
                content: "Line one.\n\nLine two.".into()
            })
        );
        assert_eq!(
            parse_text_decision(&spec(&[], true), "new_answer: 42 is the answer"),
            Ok(Decision::NewAnswer {
                content: "42 is the answer".into()
            })
        );
        // A bullet in the answer that starts with "vote" is part of the answer.
        assert_eq!(
            parse_text_decision(
                &s,
                "NEW ANSWER:\n- Vote counting matters.\n- So does turnout."
            ),
            Ok(Decision::NewAnswer {
                content: "- Vote counting matters.\n- So does turnout.".into()
            })
        );
        // The last marker decides: a vote considered, then an answer given.
        assert_eq!(
            parse_text_decision(&s, "VOTE: agent1.1?\nNo.\nNew Answer - better: 7"),
            Ok(Decision::NewAnswer {
                content: "better: 7".into()
            })
        );
    }

    #[test]
    fn what_is_not_a_decision_is_explained() {
        let s = spec(&[(1, 1)], true);
        let no_marker = parse_text_decision(&s, "I would vote for agent1.1.").unwrap_err();
        assert_eq!(no_marker.code(), "no_marked_decision");
        assert!(no_marker.to_string().contains("VOTE: agent1.1"));
        let wrong = parse_text_decision(&s, "VOTE: agent7.1 — best").unwrap_err();
        assert_eq!(
            wrong,
            DecisionProblem::UnknownLabel {
                given: "agent7.1".into(),
                labels: "agent1.1".into()
            }
        );
        assert_eq!(
            parse_text_decision(&s, "VOTE: the first one")
                .unwrap_err()
                .code(),
            "unknown_label"
        );
        assert_eq!(
            parse_text_decision(&s, "NEW ANSWER:\n   \n")
                .unwrap_err()
                .code(),
            "empty_answer"
        );
        assert_eq!(
            parse_text_decision(&spec(&[(1, 1)], false), "NEW ANSWER: x")
                .unwrap_err()
                .code(),
            "answer_not_allowed"
        );
        assert_eq!(
            parse_text_decision(&spec(&[], true), "VOTE: agent1.1")
                .unwrap_err()
                .code(),
            "nothing_to_vote_for"
        );
        // Words that merely begin like a marker are prose.
        assert_eq!(
            parse_text_decision(&s, "Voters prefer agent1.1")
                .unwrap_err()
                .code(),
            "no_marked_decision"
        );
        assert_eq!(
            parse_text_decision(&s, "VOTE: reagent1.1")
                .unwrap_err()
                .code(),
            "unknown_label"
        );
    }

    #[test]
    fn rules_show_a_valid_line_with_real_labels() {
        let s = spec(&[(1, 1), (3, 2)], true);
        let text = rules(&s);
        assert!(text.contains("VOTE: agent1.1"));
        assert!(text.contains("NEW ANSWER:"));
        assert!(!rules(&spec(&[(1, 1)], false)).contains("NEW ANSWER"));
        assert!(!rules(&spec(&[], true)).contains("VOTE"));
        assert_eq!(
            allowed_lines(&s),
            "`VOTE: agent1.1 — your reason` (labels: agent1.1, agent3.2) or `NEW ANSWER:` followed by your complete answer"
        );
    }
}
