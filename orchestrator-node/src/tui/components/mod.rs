//! One component per panel. Each draws from [`super::state::App`] alone and states the keys
//! it answers to (its help line), so a panel can be read, changed and tested on its own.

pub mod agents;
pub mod answers;
pub mod footer;
pub mod header;
pub mod help;
pub mod text_view;

use ratatui::style::{Color, Modifier, Style};

use super::state::AgentState;

/// The colour of an agent's state, shared by its pane and the header.
pub fn state_style(state: &AgentState) -> Style {
    let color = match state {
        AgentState::Waiting => Color::Gray,
        AgentState::Thinking => Color::Cyan,
        AgentState::Answering => Color::Green,
        AgentState::Voting => Color::Yellow,
        AgentState::Presenting => Color::Magenta,
        AgentState::Restarting => Color::LightBlue,
        AgentState::Abstaining => Color::DarkGray,
        AgentState::Failed => Color::Red,
    };
    Style::default().fg(color).add_modifier(Modifier::BOLD)
}

/// Cuts a text to a number of characters, marking the cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{cut}…")
}
