//! Showing a session as it runs.
//!
//! * `plain`: each agent's stream live, every line prefixed with the agent's configured id,
//!   one line per event (answers, votes, restarts, failures), then the final answer. An
//!   answer that a model writes inside the `new_answer` tool call is decoded from the
//!   streamed JSON as it arrives, so it shows live like ordinary text.
//! * `json`: one JSON object per line: `{"type":"chunk",...}` for stream pieces, the journal
//!   events (same shape as `events.jsonl`), and `{"type":"final",...}` last.
//! * `quiet`: only the final answer.
//! * `tui`: a full-screen terminal UI fed by the same messages (see [`crate::tui`]); without
//!   a terminal it falls back to `plain`.
//!
//! Everything goes to stdout through a dedicated thread, so a slow terminal never slows the
//! coordinator. The display is for people; the journal is the record, and it is written
//! first: the coordinator hands a decision to the display only once the journal line that
//! records it is synced (see [`crate::coordinator`]), so stdout never shows what a crash could
//! take back.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use conclave_protocol::config::DisplayKind;
use conclave_protocol::{Decision, DecisionHow, StreamChunk, TurnEvent};
use serde_json::json;

use crate::journal::JournalEvent;

/// What the display is told.
pub enum Shown {
    Chunk {
        agent: Arc<str>,
        turn: u64,
        chunk: StreamChunk,
    },
    Event(JournalEvent),
    Final {
        content: String,
        winner: Option<String>,
        label: Option<String>,
        reason: String,
    },
}

/// The sending side of a display.
#[derive(Clone)]
pub struct Display {
    kind: DisplayKind,
    tx: Option<mpsc::Sender<Shown>>,
}

/// Joins the display thread when the session is over.
pub struct DisplayGuard {
    thread: Option<JoinHandle<()>>,
}

impl DisplayGuard {
    /// Waits until everything sent has been written. Call after the last `Display` clone is
    /// dropped.
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Display {
    /// Starts a display writing to stdout.
    pub fn stdout(kind: DisplayKind) -> (Display, DisplayGuard) {
        Self::to_writer(kind, Box::new(io::stdout()))
    }

    /// Starts the display of one session: the terminal UI for [`DisplayKind::Tui`] (which
    /// needs the question and the agents before any event, and ends the session through
    /// `interrupt` on `q` or Ctrl-C), any other kind on stdout.
    pub fn for_session(
        kind: DisplayKind,
        header: crate::tui::state::SessionHeader,
        interrupt: tokio_util::sync::CancellationToken,
    ) -> (Display, DisplayGuard) {
        if kind != DisplayKind::Tui {
            return Self::stdout(kind);
        }
        if !io::IsTerminal::is_terminal(&io::stdout()) {
            // A session resumed or configured for the UI, with stdout now a file or a pipe.
            return Self::stdout(DisplayKind::Plain);
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("conclave-tui".into())
            .spawn(move || crate::tui::run(rx, header, interrupt))
            .ok();
        let tx = thread.as_ref().map(|_| tx);
        (Display { kind, tx }, DisplayGuard { thread })
    }

    /// Starts a display writing to any writer (tests).
    pub fn to_writer(kind: DisplayKind, out: Box<dyn Write + Send>) -> (Display, DisplayGuard) {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("conclave-display".into())
            .spawn(move || render_loop(kind, out, rx))
            .ok();
        let tx = thread.as_ref().map(|_| tx);
        (Display { kind, tx }, DisplayGuard { thread })
    }

    /// A display that shows nothing.
    pub fn none() -> Display {
        Display {
            kind: DisplayKind::Quiet,
            tx: None,
        }
    }

    /// Whether stream chunks are worth sending at all.
    pub fn wants_chunks(&self) -> bool {
        self.tx.is_some() && self.kind != DisplayKind::Quiet
    }

    pub fn show(&self, shown: Shown) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(shown);
        }
    }
}

/// Writes what arrives until the session closes the channel. The terminal UI is only
/// started by [`Display::for_session`]; here `tui` (no terminal, or a writer) is `plain`.
pub(crate) fn render_loop(
    kind: DisplayKind,
    out: Box<dyn Write + Send>,
    rx: mpsc::Receiver<Shown>,
) {
    let mut out = io::BufWriter::new(out);
    let mut plain = PlainState::default();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(shown) = next {
            let result = match kind {
                DisplayKind::Plain | DisplayKind::Tui => plain.render(&mut out, shown),
                DisplayKind::Json => render_json(&mut out, shown),
                DisplayKind::Quiet => render_quiet(&mut out, shown),
            };
            if result.is_err() {
                // stdout is gone (closed pipe): nothing more can be shown.
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
    let _ = out.flush();
}

fn render_quiet(out: &mut impl Write, shown: Shown) -> io::Result<()> {
    if let Shown::Final { content, .. } = shown {
        writeln!(out, "{content}")?;
    }
    Ok(())
}

fn render_json(out: &mut impl Write, shown: Shown) -> io::Result<()> {
    let value = match shown {
        Shown::Chunk { agent, turn, chunk } => {
            let (kind, text) = match &chunk {
                StreamChunk::Content { text } => ("content", json!(text)),
                StreamChunk::Reasoning { text } => ("reasoning", json!(text)),
                StreamChunk::ReasoningSignature { .. } => ("reasoning_signature", json!(null)),
                StreamChunk::Refusal { text } => ("refusal", json!(text)),
                StreamChunk::ToolCallDelta {
                    index,
                    id,
                    name,
                    arguments,
                } => (
                    "tool_call_delta",
                    json!({"index": index, "id": id, "name": name, "arguments": arguments}),
                ),
                StreamChunk::Usage(usage) => (
                    "usage",
                    json!({"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}),
                ),
                StreamChunk::ToolCall(call) => (
                    "tool_call",
                    json!({"id": call.id, "name": call.name, "arguments": call.arguments}),
                ),
                StreamChunk::ToolResult { id, name, content } => (
                    "tool_result",
                    json!({"id": id, "name": name, "content": content}),
                ),
                StreamChunk::Finish { reason } => ("finish", json!(reason)),
                StreamChunk::Error {
                    kind,
                    message,
                    code,
                } => (
                    "error",
                    json!({"kind": kind, "message": message, "code": code}),
                ),
            };
            json!({"type": "chunk", "agent": &*agent, "turn": turn, "kind": kind, "data": text})
        }
        Shown::Event(event) => serde_json::to_value(&event)
            .unwrap_or_else(|e| json!({"type": "display_error", "message": e.to_string()})),
        Shown::Final {
            content,
            winner,
            label,
            reason,
        } => {
            json!({"type": "final", "winner": winner, "label": label, "reason": reason, "content": content})
        }
    };
    writeln!(out, "{value}")
}

/// Decodes the string value of `"content"` from a JSON object that is still arriving.
#[derive(Default, Debug)]
pub(crate) struct ArgumentText {
    raw: String,
    shown_chars: usize,
}

impl ArgumentText {
    /// Appends a fragment and returns the newly decodable part of the content string.
    pub(crate) fn push(&mut self, fragment: &str) -> String {
        self.raw.push_str(fragment);
        let decoded = decode_partial_string_field(&self.raw, "content");
        let fresh: String = decoded.chars().skip(self.shown_chars).collect();
        self.shown_chars += fresh.chars().count();
        fresh
    }
}

/// Finds `"field": "` in a partial JSON text and decodes the string after it as far as it is
/// complete (stopping before an unfinished escape).
fn decode_partial_string_field(raw: &str, field: &str) -> String {
    let key = format!("\"{field}\"");
    let Some(at) = raw.find(&key) else {
        return String::new();
    };
    let rest = raw[at + key.len()..].trim_start();
    let Some(rest) = rest.strip_prefix(':') else {
        return String::new();
    };
    let Some(body) = rest.trim_start().strip_prefix('"') else {
        return String::new();
    };
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => {
                let escaped = match chars.next() {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some('b') => '\u{8}',
                    Some('f') => '\u{c}',
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        if hex.len() < 4 {
                            break;
                        }
                        u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .unwrap_or('\u{fffd}')
                    }
                    Some(other) => other,
                    None => break,
                };
                out.push(escaped);
            }
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct PlainState {
    /// The agent whose text is on the current line, if the line is open.
    open_line: Option<Arc<str>>,
    arguments: HashMap<(Arc<str>, u64, u32), ArgumentText>,
}

impl PlainState {
    fn close_line(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.open_line.take().is_some() {
            writeln!(out)?;
        }
        Ok(())
    }

    fn stream_text(
        &mut self,
        out: &mut impl Write,
        agent: &Arc<str>,
        text: &str,
    ) -> io::Result<()> {
        for (i, piece) in text.split('\n').enumerate() {
            if i > 0 {
                self.close_line(out)?;
            }
            if piece.is_empty() {
                continue;
            }
            if self.open_line.as_ref() != Some(agent) {
                self.close_line(out)?;
                write!(out, "[{agent}] ")?;
                self.open_line = Some(agent.clone());
            }
            out.write_all(piece.as_bytes())?;
        }
        Ok(())
    }

    fn note(
        &mut self,
        out: &mut impl Write,
        agent: &str,
        text: std::fmt::Arguments<'_>,
    ) -> io::Result<()> {
        self.close_line(out)?;
        writeln!(out, "[{agent}] {text}")
    }

    fn render(&mut self, out: &mut impl Write, shown: Shown) -> io::Result<()> {
        match shown {
            Shown::Chunk { agent, turn, chunk } => match chunk {
                StreamChunk::Content { text } | StreamChunk::Refusal { text } => {
                    self.stream_text(out, &agent, &text)
                }
                StreamChunk::Reasoning { text } => self.stream_text(out, &agent, &text),
                StreamChunk::ToolCallDelta {
                    index, arguments, ..
                } => {
                    let fresh = self
                        .arguments
                        .entry((agent.clone(), turn, index))
                        .or_default()
                        .push(&arguments);
                    self.stream_text(out, &agent, &fresh)
                }
                _ => Ok(()),
            },
            Shown::Event(event) => self.render_event(out, event),
            Shown::Final {
                content,
                winner,
                label,
                reason,
            } => {
                self.close_line(out)?;
                let by = match (winner, label) {
                    (Some(w), Some(l)) => format!(" — {l} by {w}"),
                    _ => String::new(),
                };
                writeln!(out, "\n===== final answer ({reason}{by}) =====\n{content}")
            }
        }
    }

    fn render_event(&mut self, out: &mut impl Write, event: JournalEvent) -> io::Result<()> {
        match event {
            JournalEvent::TurnStarted {
                agent,
                turn,
                mode,
                revision,
                answers,
                ..
            } => {
                self.arguments.retain(|(a, _, _), _| **a != *agent);
                let what = if mode == "present" {
                    "presenting the final answer".to_owned()
                } else if answers.is_empty() {
                    "working".to_owned()
                } else {
                    format!(
                        "reviewing {} answer(s) at revision {revision}",
                        answers.len()
                    )
                };
                self.note(out, &agent, format_args!("▶ turn {turn}: {what}"))
            }
            JournalEvent::AnswerAccepted {
                agent,
                label,
                revision,
                stale,
                ..
            } => {
                let stale = if stale {
                    " (made before the latest answers)"
                } else {
                    ""
                };
                self.note(
                    out,
                    &agent,
                    format_args!("✚ new answer {label}, revision {revision}{stale}"),
                )
            }
            JournalEvent::AnswerRejected { agent, reason } => {
                self.note(out, &agent, format_args!("✗ answer rejected: {reason}"))
            }
            JournalEvent::VoteAccepted {
                agent,
                label,
                reason,
                ..
            } => self.note(out, &agent, format_args!("✔ votes for {label}: {reason}")),
            JournalEvent::VoteDiscarded {
                agent, label, why, ..
            } => self.note(
                out,
                &agent,
                format_args!("↺ vote for {label} discarded: {why}"),
            ),
            // The "▶ turn" line of the new turn already says what changed; the journal keeps
            // the reason.
            JournalEvent::TurnRestarted { .. } => Ok(()),
            JournalEvent::TurnProgress { agent, event, .. } => {
                self.note(out, &agent, format_args!("… {}", describe_progress(&event)))
            }
            JournalEvent::DecisionReceived {
                agent,
                decision,
                how,
                ..
            } => match (how, &decision) {
                (DecisionHow::Text, _) => self.note(
                    out,
                    &agent,
                    format_args!("decided with a text line instead of a tool call"),
                ),
                (DecisionHow::Implicit, Decision::NewAnswer { .. }) => self.note(
                    out,
                    &agent,
                    format_args!("made no decision; its text is kept as its answer"),
                ),
                _ => Ok(()),
            },
            JournalEvent::Abstained { agent, reason, .. } => {
                self.note(out, &agent, format_args!("○ abstains this round: {reason}"))
            }
            JournalEvent::TurnFailed {
                agent,
                kind,
                message,
                ..
            } => self.note(
                out,
                &agent,
                format_args!("✗ turn failed ({kind}): {message}"),
            ),
            JournalEvent::AgentFailed { agent, reason } => {
                self.note(out, &agent, format_args!("✗ agent failed: {reason}"))
            }
            JournalEvent::AgentRejoined { agent } => {
                self.note(out, &agent, format_args!("rejoined"))
            }
            JournalEvent::ConsensusReached {
                winner,
                label,
                votes,
            } => self.note(
                out,
                "conclave",
                format_args!("consensus: {label} by {winner} with {votes} vote(s)"),
            ),
            JournalEvent::TimedOut { after_ms } => self.note(
                out,
                "conclave",
                format_args!("timed out after {after_ms} ms"),
            ),
            JournalEvent::Interrupted => self.note(out, "conclave", format_args!("interrupted")),
            JournalEvent::ToolServerStarted { .. } => match describe_tool_server(&event) {
                Some((agent, line)) => self.note(out, agent, format_args!("{line}")),
                None => Ok(()),
            },
            JournalEvent::SessionPaused { agents_waiting } => self.note(
                out,
                "conclave",
                format_args!(
                    "paused after the provider calls in flight finished; {} turn(s) wait for the resume",
                    agents_waiting.len()
                ),
            ),
            _ => Ok(()),
        }
    }
}

/// How an agent's MCP server started, as a sentence for people (`tool_server_started`):
/// the agent and the sentence.
pub(crate) fn describe_tool_server(event: &JournalEvent) -> Option<(&str, String)> {
    let JournalEvent::ToolServerStarted {
        agent,
        node,
        server,
        transport,
        duration_ms,
        tools,
        optional,
        error,
    } = event
    else {
        return None;
    };
    let place = node
        .as_deref()
        .map(|node| format!(" on node {node}"))
        .unwrap_or_default();
    let line = match error {
        Some(error) => format!(
            "✗ {}MCP server {server} ({transport}){place} did not start after {duration_ms} ms: {error}; the agent goes on without its tools",
            if *optional { "optional " } else { "" }
        ),
        None => format!(
            "MCP server {server} ({transport}){place} started in {duration_ms} ms with {tools} tool(s)"
        ),
    };
    Some((agent, line))
}

/// A turn's progress as a sentence for people.
pub(crate) fn describe_progress(event: &TurnEvent) -> String {
    match event {
        TurnEvent::ProviderRetry {
            attempt,
            wait_ms,
            reason,
        } => format!(
            "the provider call failed ({reason}); retry {attempt} in {:.1} s",
            *wait_ms as f64 / 1000.0
        ),
        TurnEvent::CorrectiveRetry { attempt, problem } => {
            format!("no valid decision, asking again (retry {attempt}): {problem}")
        }
        TurnEvent::WorkerRestart { attempt, reason } => {
            format!("the turn crashed and is restarted (restart {attempt}): {reason}")
        }
        TurnEvent::WorkflowSwitched { to, reason } => format!(
            "switches to the {} protocol for the rest of the session: {reason}",
            to.as_str()
        ),
        TurnEvent::ToolCalled { report, .. } => {
            let outcome = match &report.error {
                Some(error) => format!("failed: {error}"),
                None if report.truncated => {
                    format!("{} bytes, cut to fit the limit", report.result_bytes)
                }
                None => format!("{} bytes", report.result_bytes),
            };
            format!(
                "called {} ({} ms): {outcome}",
                report.tool, report.duration_ms
            )
        }
        TurnEvent::PeerSnapshotsUnavailable { reason } => {
            format!("could not be shown its peers' workspace snapshots: {reason}")
        }
        TurnEvent::InjectionDeclined { revision } => format!(
            "had no tool call in flight when revision {revision} arrived; the injection fallback applies"
        ),
        TurnEvent::AnswersInjected {
            revision, labels, ..
        } if labels.is_empty() => {
            format!("took the current answers (revision {revision}) at a tool boundary")
        }
        TurnEvent::AnswersInjected {
            revision, labels, ..
        } => format!(
            "read the new answers {} at a tool boundary and decides on revision {revision}",
            labels.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_content_is_decoded_as_it_arrives() {
        let mut text = ArgumentText::default();
        let mut shown = String::new();
        for piece in [
            "{\"con",
            "tent\": \"Hel",
            "lo\\",
            "nwor",
            "ld \\u00e9",
            "\\\"x\\\"\"}",
        ] {
            shown.push_str(&text.push(piece));
        }
        assert_eq!(shown, "Hello\nworld é\"x\"");
    }

    #[test]
    fn plain_prefixes_each_agent_line() {
        let mut state = PlainState::default();
        let mut out = Vec::new();
        let a: Arc<str> = "alpha".into();
        let b: Arc<str> = "beta".into();
        for (agent, text) in [(&a, "one "), (&b, "two"), (&a, "three\nfour")] {
            state
                .render(
                    &mut out,
                    Shown::Chunk {
                        agent: agent.clone(),
                        turn: 1,
                        chunk: StreamChunk::Content { text: text.into() },
                    },
                )
                .unwrap();
        }
        state.close_line(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[alpha] one \n[beta] two\n[alpha] three\n[alpha] four\n"
        );
    }

    #[test]
    fn progress_reads_as_sentences_not_debug_text() {
        let events = [
            TurnEvent::CorrectiveRetry {
                attempt: 1,
                problem: "you did not call a tool".into(),
            },
            TurnEvent::ProviderRetry {
                attempt: 2,
                wait_ms: 1500,
                reason: "HTTP 429".into(),
            },
            TurnEvent::WorkerRestart {
                attempt: 1,
                reason: "stalled".into(),
            },
            TurnEvent::WorkflowSwitched {
                to: conclave_protocol::config::WorkflowMode::Text,
                reason: "the model answered without calling a workflow tool".into(),
            },
        ];
        let lines: Vec<String> = events.iter().map(describe_progress).collect();
        assert_eq!(
            lines[0],
            "no valid decision, asking again (retry 1): you did not call a tool"
        );
        assert_eq!(
            lines[1],
            "the provider call failed (HTTP 429); retry 2 in 1.5 s"
        );
        assert!(lines[3].starts_with("switches to the text protocol"));
        for line in &lines {
            assert!(!line.contains('{') && !line.contains("Retry {"), "{line}");
        }
    }
}
