//! # conclave-protocol
//!
//! Every type that crosses a process boundary in conclave lives here, so the orchestrator and
//! the agent nodes agree on one definition: identifiers and anonymous answer labels, the turn
//! and task specs, streamed chunks, decisions, the coordinator/agent messages with their
//! envelope (session, sender, per-sender sequence number, W3C trace context), the resolved
//! configuration schema, the cluster link's own messages ([`cluster`]), and the one codec used
//! for cluster frames.
//!
//! Types here are plain data. They derive `serde` so they can travel as bincode frames
//! ([`codec`]) and be written to the JSON-lines journal. Because bincode is not
//! self-describing, nothing in this crate uses `#[serde(flatten)]`, `skip_serializing_if`,
//! untagged enums or `serde_json::Value`: free-form JSON travels as a string.

pub mod chunk;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod decision;
pub mod ids;
pub mod message;
pub mod presets;
pub mod report;
pub mod snapshot;
pub mod tools;
pub mod trace;
pub mod trust;

pub use chunk::{StreamChunk, ToolCall, Usage};
pub use codec::{CodecError, MAX_FRAME_BYTES, decode, encode};
pub use decision::{Decision, DecisionHow};
pub use ids::{AnswerLabel, LabelParseError, SessionId, TurnId};
pub use message::{
    AgentReport, CastVote, CoordinatorCommand, Envelope, LabeledAnswer, SequenceTracker, TaskSpec,
    TurnError, TurnErrorKind, TurnEvent, TurnMode, TurnSpec,
};
pub use report::error_text;
pub use trace::TraceContext;
pub use trust::{ProviderAllowList, TrustError};
