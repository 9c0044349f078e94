//! The terminal UI's state: everything the screen shows, updated from the display channel
//! ([`App::apply`]) and from keys ([`App::key`]). Drawing only reads it (see
//! [`super::view`]), so a test can feed events, press keys and look at the state or at a
//! rendered buffer without a terminal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use conclave_protocol::config::SessionConfig;
use conclave_protocol::{Decision, DecisionHow, StreamChunk};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::display::{ArgumentText, Shown, describe_progress};
use crate::journal::JournalEvent;
use crate::pricing::{Price, PriceBook};

/// Lines kept per agent pane; older ones are dropped (the journal keeps everything).
pub const MAX_LINES_PER_AGENT: usize = 2000;

/// What a session looks like before any event: the question and the configured agents, in
/// config order (the order of the panes).
#[derive(Debug, Clone, Default)]
pub struct SessionHeader {
    pub question: String,
    pub agents: Vec<AgentHeader>,
}

#[derive(Debug, Clone)]
pub struct AgentHeader {
    pub id: String,
    pub model: String,
    pub node: Option<String>,
    /// The model's price, when known: the header's cost adds up usage at it.
    pub price: Option<Price>,
}

impl SessionHeader {
    pub fn new(config: &SessionConfig, question: &str) -> SessionHeader {
        let prices = PriceBook::new(config.orchestrator.pricing.clone());
        SessionHeader {
            question: question.to_owned(),
            agents: config
                .agents
                .iter()
                .map(|agent| AgentHeader {
                    id: agent.id.clone(),
                    model: agent.backend.model.clone(),
                    node: agent.node.clone(),
                    price: prices.price(&agent.backend.model),
                })
                .collect(),
        }
    }
}

/// What one agent is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// No turn yet, or its decision is in and it waits for others.
    Waiting,
    /// A turn runs; no decision is being written yet.
    Thinking,
    /// Writing a new answer.
    Answering,
    /// Casting a vote.
    Voting,
    /// Writing the final presentation.
    Presenting,
    /// Its turn was cancelled and starts again with newer answers.
    Restarting,
    /// Sits this revision out.
    Abstaining,
    Failed,
}

impl AgentState {
    pub fn word(&self) -> &'static str {
        match self {
            AgentState::Waiting => "waiting",
            AgentState::Thinking => "thinking",
            AgentState::Answering => "answering",
            AgentState::Voting => "voting",
            AgentState::Presenting => "presenting",
            AgentState::Restarting => "restarting",
            AgentState::Abstaining => "abstaining",
            AgentState::Failed => "failed",
        }
    }
}

/// The kind of a line in an agent's pane (it decides the style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Content,
    Reasoning,
    Tool,
    Note,
    Error,
}

#[derive(Debug, Clone)]
pub struct StreamLine {
    pub kind: LineKind,
    pub text: String,
}

/// One agent's pane.
#[derive(Debug)]
pub struct AgentView {
    pub id: String,
    pub model: String,
    pub node: Option<String>,
    pub price: Option<Price>,
    pub state: AgentState,
    pub turn: Option<u64>,
    pub lines: Vec<StreamLine>,
    /// Whether the last line is still being written (stream text goes on it).
    pub open_line: bool,
    pub decision: Option<String>,
    /// Lines scrolled up from the bottom; 0 follows the stream.
    pub scroll: usize,
    arguments: HashMap<(u64, u32), (Option<String>, ArgumentText)>,
}

impl AgentView {
    fn new(header: AgentHeader) -> AgentView {
        AgentView {
            id: header.id,
            model: header.model,
            node: header.node,
            price: header.price,
            state: AgentState::Waiting,
            turn: None,
            lines: Vec::new(),
            open_line: false,
            decision: None,
            scroll: 0,
            arguments: HashMap::new(),
        }
    }

    /// Streamed text: appended to the open line of the same kind, split at newlines.
    fn stream(&mut self, kind: LineKind, text: &str) {
        for (i, piece) in text.split('\n').enumerate() {
            if i > 0 {
                self.open_line = false;
            }
            let continues = self.open_line && self.lines.last().is_some_and(|l| l.kind == kind);
            if continues {
                if let Some(last) = self.lines.last_mut() {
                    last.text.push_str(piece);
                }
            } else if !piece.is_empty() || i > 0 {
                self.push(kind, piece.to_owned());
                self.open_line = true;
            }
        }
    }

    /// A whole line (a note, a tool call).
    fn note(&mut self, kind: LineKind, text: String) {
        self.push(kind, text);
        self.open_line = false;
    }

    fn push(&mut self, kind: LineKind, text: String) {
        self.lines.push(StreamLine { kind, text });
        if self.lines.len() > MAX_LINES_PER_AGENT {
            let excess = self.lines.len() - MAX_LINES_PER_AGENT;
            self.lines.drain(..excess);
        }
        if self.scroll > 0 {
            // Keep the lines the reader is looking at in place.
            self.scroll += 1;
        }
    }
}

/// An accepted answer.
#[derive(Debug, Clone)]
pub struct AnswerEntry {
    pub label: String,
    pub agent: String,
    pub revision: u64,
    pub content: String,
}

/// The final answer.
#[derive(Debug, Clone)]
pub struct FinalView {
    pub content: String,
    pub winner: Option<String>,
    pub label: Option<String>,
    pub reason: String,
}

/// Which view fills the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// All agents' panes (paged or in a grid when they do not fit).
    Agents,
    /// The focused agent full-screen.
    Zoom,
    /// One answer, by index into [`App::answers`].
    Answer(usize),
    Final,
}

/// What a key asks of the loop that owns the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// End the session gracefully (the same as Ctrl-C outside the UI).
    Interrupt,
    /// Leave at once (a second Ctrl-C while the session still runs).
    Abort,
    /// Leave the UI (the session has ended).
    Quit,
}

/// Everything the screen shows.
#[derive(Debug)]
pub struct App {
    pub question: String,
    pub agents: Vec<AgentView>,
    index: HashMap<String, usize>,
    pub answers: Vec<AnswerEntry>,
    /// Each agent's latest accepted vote: (label, revision).
    pub votes: HashMap<String, (String, u64)>,
    pub revision: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    /// The session's last word (consensus, timeout, interrupt...).
    pub status: Option<String>,
    pub final_answer: Option<FinalView>,
    /// The display channel closed: the session is over.
    pub over: bool,
    /// The user (or a signal) asked the session to end.
    pub interrupted: bool,
    pub focus: usize,
    pub view: View,
    pub help: bool,
    pub show_reasoning: bool,
    /// Lines scrolled in the answer / final view.
    pub text_scroll: usize,
    pub elapsed: Duration,
    /// The latest log line (stderr while the UI runs) and when it came.
    pub notice: Option<(String, Duration)>,
}

impl App {
    pub fn new(header: SessionHeader) -> App {
        let mut app = App {
            question: header.question,
            agents: Vec::new(),
            index: HashMap::new(),
            answers: Vec::new(),
            votes: HashMap::new(),
            revision: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: None,
            status: None,
            final_answer: None,
            over: false,
            interrupted: false,
            focus: 0,
            view: View::Agents,
            help: false,
            show_reasoning: true,
            text_scroll: 0,
            elapsed: Duration::ZERO,
            notice: None,
        };
        for agent in header.agents {
            app.agent_or_add(agent);
        }
        app
    }

    fn agent_or_add(&mut self, header: AgentHeader) -> &mut AgentView {
        let at = match self.index.get(&header.id) {
            Some(at) => *at,
            None => {
                self.index.insert(header.id.clone(), self.agents.len());
                self.agents.push(AgentView::new(header));
                self.agents.len() - 1
            }
        };
        &mut self.agents[at]
    }

    /// The agent's pane; one is added for an agent the header did not name.
    fn agent(&mut self, id: &str) -> &mut AgentView {
        if let Some(at) = self.index.get(id) {
            return &mut self.agents[*at];
        }
        self.agent_or_add(AgentHeader {
            id: id.to_owned(),
            model: String::new(),
            node: None,
            price: None,
        })
    }

    /// Votes per answer label at the current revision, in answer order.
    pub fn tally(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (label, revision) in self.votes.values() {
            if *revision == self.revision {
                *counts.entry(label.as_str()).or_default() += 1;
            }
        }
        self.answers
            .iter()
            .map(|a| {
                (
                    a.label.clone(),
                    counts.get(a.label.as_str()).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Takes one thing the display was told.
    pub fn apply(&mut self, shown: Shown) {
        match shown {
            Shown::Chunk { agent, turn, chunk } => self.chunk(&agent, turn, chunk),
            Shown::Event(event) => self.event(event),
            Shown::Final {
                content,
                winner,
                label,
                reason,
            } => {
                self.final_answer = Some(FinalView {
                    content,
                    winner,
                    label,
                    reason,
                });
                self.view = View::Final;
                self.text_scroll = 0;
            }
        }
    }

    fn chunk(&mut self, agent: &Arc<str>, turn: u64, chunk: StreamChunk) {
        let view = self.agent(agent);
        match chunk {
            StreamChunk::Content { text } | StreamChunk::Refusal { text } => {
                view.stream(LineKind::Content, &text)
            }
            StreamChunk::Reasoning { text } => view.stream(LineKind::Reasoning, &text),
            StreamChunk::ToolCallDelta {
                index,
                name,
                arguments,
                ..
            } => {
                let (known, text) = view.arguments.entry((turn, index)).or_default();
                if known.is_none() {
                    *known = name;
                }
                match known.as_deref() {
                    Some("new_answer") => {
                        let fresh = text.push(&arguments);
                        if view.state != AgentState::Presenting {
                            view.state = AgentState::Answering;
                        }
                        view.stream(LineKind::Content, &fresh);
                    }
                    Some("vote") => view.state = AgentState::Voting,
                    _ => {}
                }
            }
            StreamChunk::ToolCall(call) => {
                if call.name != "new_answer" {
                    let line = format!("⚙ {}({})", call.name, compact(&call.arguments, 60));
                    view.note(LineKind::Tool, line);
                }
            }
            StreamChunk::ToolResult { name, content, .. } => {
                let line = format!("↳ {name}: {}", compact(&content, 60));
                view.note(LineKind::Tool, line);
            }
            StreamChunk::Error { message, .. } => {
                view.note(LineKind::Error, format!("✗ {message}"));
            }
            StreamChunk::Usage(usage) => {
                let price = view.price;
                self.input_tokens += usage.input_tokens;
                self.output_tokens += usage.output_tokens;
                if let Some(price) = price {
                    *self.cost_usd.get_or_insert(0.0) += price.cost(usage);
                }
            }
            StreamChunk::ReasoningSignature { .. } | StreamChunk::Finish { .. } => {}
        }
    }

    fn event(&mut self, event: JournalEvent) {
        match event {
            JournalEvent::TurnStarted {
                agent,
                turn,
                mode,
                revision,
                answers,
                ..
            } => {
                self.revision = self.revision.max(revision);
                let view = self.agent(&agent);
                view.arguments.clear();
                view.turn = Some(turn);
                view.state = if mode == "present" {
                    AgentState::Presenting
                } else {
                    AgentState::Thinking
                };
                let what = if mode == "present" {
                    "presenting the final answer".to_owned()
                } else if answers.is_empty() {
                    "working".to_owned()
                } else {
                    format!("reviewing {} answer(s)", answers.len())
                };
                view.note(LineKind::Note, format!("▶ turn {turn}: {what}"));
            }
            JournalEvent::AnswerAccepted {
                agent,
                label,
                revision,
                content,
                ..
            } => {
                self.revision = self.revision.max(revision);
                let view = self.agent(&agent);
                view.state = AgentState::Waiting;
                view.decision = Some(format!("answered {label}"));
                view.note(LineKind::Note, format!("✚ new answer {label}"));
                self.answers.push(AnswerEntry {
                    label,
                    agent,
                    revision,
                    content,
                });
            }
            JournalEvent::AnswerRejected { agent, reason } => {
                let view = self.agent(&agent);
                view.decision = Some("answer rejected".into());
                view.note(LineKind::Error, format!("✗ answer rejected: {reason}"));
            }
            JournalEvent::VoteAccepted {
                agent,
                label,
                revision,
                reason,
            } => {
                let view = self.agent(&agent);
                view.state = AgentState::Waiting;
                view.decision = Some(format!("voted {label}"));
                view.note(LineKind::Note, format!("✔ votes for {label}: {reason}"));
                self.votes.insert(agent, (label, revision));
            }
            JournalEvent::VoteDiscarded {
                agent, label, why, ..
            }
            | JournalEvent::VoteRejected {
                agent, label, why, ..
            } => {
                self.votes.remove(&agent);
                let view = self.agent(&agent);
                view.decision = None;
                view.note(
                    LineKind::Note,
                    format!("↺ vote for {label} discarded: {why}"),
                );
            }
            JournalEvent::Abstained { agent, reason, .. } => {
                let view = self.agent(&agent);
                view.state = AgentState::Abstaining;
                view.decision = Some("abstained".into());
                view.note(LineKind::Note, format!("○ abstains: {reason}"));
            }
            JournalEvent::TurnRestarted { agent, .. } => {
                self.agent(&agent).state = AgentState::Restarting;
            }
            JournalEvent::TurnProgress { agent, event, .. } => {
                let line = format!("… {}", describe_progress(&event));
                self.agent(&agent).note(LineKind::Note, line);
            }
            JournalEvent::DecisionReceived {
                agent,
                decision,
                how,
                ..
            } => {
                let note = match (how, &decision) {
                    (DecisionHow::Text, _) => Some("decided with a text line"),
                    (DecisionHow::Implicit, Decision::NewAnswer { .. }) => {
                        Some("made no decision; its text is kept as its answer")
                    }
                    _ => None,
                };
                if let Some(note) = note {
                    self.agent(&agent).note(LineKind::Note, note.to_owned());
                }
            }
            JournalEvent::TurnFailed {
                agent,
                kind,
                message,
                ..
            } => {
                let line = format!("✗ turn failed ({kind}): {message}");
                self.agent(&agent).note(LineKind::Error, line);
            }
            JournalEvent::AgentFailed { agent, reason } => {
                let view = self.agent(&agent);
                view.state = AgentState::Failed;
                view.note(LineKind::Error, format!("✗ agent failed: {reason}"));
            }
            JournalEvent::ToolServerStarted { .. } => {
                if let Some((agent, line)) = crate::display::describe_tool_server(&event) {
                    let kind = if line.starts_with('✗') {
                        LineKind::Error
                    } else {
                        LineKind::Note
                    };
                    self.agent(agent).note(kind, line);
                }
            }
            JournalEvent::AgentLost { agent, reason } => {
                let view = self.agent(&agent);
                view.state = AgentState::Failed;
                view.note(LineKind::Error, format!("✗ agent lost: {reason}"));
            }
            JournalEvent::AgentRejoined { agent } => {
                let view = self.agent(&agent);
                view.state = AgentState::Waiting;
                view.note(LineKind::Note, "rejoined".into());
            }
            JournalEvent::ConsensusReached {
                winner,
                label,
                votes,
            } => {
                self.status = Some(format!(
                    "consensus: {label} by {winner} with {votes} vote(s)"
                ));
            }
            JournalEvent::TimedOut { after_ms } => {
                self.status = Some(format!("timed out after {:.0} s", after_ms as f64 / 1e3));
            }
            JournalEvent::Interrupted => self.status = Some("interrupted".into()),
            JournalEvent::SessionPaused { .. } => self.status = Some("paused".into()),
            JournalEvent::AllAgentsFailed => self.status = Some("every agent failed".into()),
            JournalEvent::BudgetExhausted { reason, .. } => {
                self.status = Some(format!("budget reached: {reason}"));
            }
            JournalEvent::SessionEnded { reason, .. } => {
                self.status.get_or_insert(reason);
            }
            _ => {}
        }
    }

    /// The session is over (the display channel closed).
    pub fn end(&mut self) {
        self.over = true;
    }

    /// Handles one key and says what the loop must do.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
            && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C'));
        if ctrl_c || key.code == KeyCode::Char('q') {
            if self.over {
                return Action::Quit;
            }
            if self.interrupted {
                return if ctrl_c { Action::Abort } else { Action::None };
            }
            self.interrupted = true;
            return Action::Interrupt;
        }
        if self.help {
            // Any key closes the help.
            self.help = false;
            return Action::None;
        }
        let count = self.agents.len();
        match key.code {
            KeyCode::Char('?') => self.help = true,
            KeyCode::Esc => {
                self.view = View::Agents;
                self.text_scroll = 0;
            }
            KeyCode::Tab | KeyCode::Right | KeyCode::Char('l') if count > 0 => {
                if let View::Answer(at) = self.view {
                    self.view = View::Answer((at + 1).min(self.answers.len().saturating_sub(1)));
                    self.text_scroll = 0;
                } else {
                    self.focus = (self.focus + 1) % count;
                }
            }
            KeyCode::BackTab | KeyCode::Left | KeyCode::Char('h') if count > 0 => {
                if let View::Answer(at) = self.view {
                    self.view = View::Answer(at.saturating_sub(1));
                    self.text_scroll = 0;
                } else {
                    self.focus = (self.focus + count - 1) % count;
                }
            }
            KeyCode::Char(digit @ '1'..='9') => {
                let at = (digit as usize) - ('1' as usize);
                if at < count {
                    self.focus = at;
                }
            }
            KeyCode::Up | KeyCode::Char('k') => self.scroll_by(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll_by(-1),
            KeyCode::PageUp => self.scroll_by(10),
            KeyCode::PageDown => self.scroll_by(-10),
            KeyCode::End | KeyCode::Char('G') => self.scroll_by(isize::MIN),
            KeyCode::Enter | KeyCode::Char('z') => {
                self.view = match self.view {
                    View::Zoom => View::Agents,
                    _ => View::Zoom,
                };
            }
            KeyCode::Char('r') => self.show_reasoning = !self.show_reasoning,
            KeyCode::Char('a') if !self.answers.is_empty() => {
                self.view = View::Answer(self.answers.len() - 1);
                self.text_scroll = 0;
            }
            KeyCode::Char('f') if self.final_answer.is_some() => {
                self.view = View::Final;
                self.text_scroll = 0;
            }
            _ => {}
        }
        Action::None
    }

    /// Scrolls the view's text by lines: positive is up (back), `isize::MIN` goes to the
    /// end (agent panes follow the stream again; text views go back to the top).
    fn scroll_by(&mut self, lines: isize) {
        match self.view {
            View::Agents | View::Zoom => {
                if let Some(agent) = self.agents.get_mut(self.focus) {
                    agent.scroll = if lines == isize::MIN {
                        0
                    } else {
                        agent.scroll.saturating_add_signed(lines)
                    };
                }
            }
            // Text views count from the top: up is towards 0.
            View::Answer(_) | View::Final => {
                self.text_scroll = if lines == isize::MIN {
                    0
                } else {
                    self.text_scroll.saturating_add_signed(-lines)
                };
            }
        }
    }
}

/// A one-line preview of a tool's arguments or result.
fn compact(text: &str, max_chars: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max_chars {
        flat
    } else {
        let cut: String = flat.chars().take(max_chars.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
