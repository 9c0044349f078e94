//! # conclave-agent
//!
//! The agent side of conclave: the [`agent::AgentActor`] (one per agent per session), the
//! [`turn::TurnWorker`] that runs one LLM turn, the workflow tools and prompts
//! ([`workflow`]), the provider layer ([`providers`]: one folder per wire format over a shared
//! SSE reader, stream adapter and retry policy), and the stream accumulator.
//!
//! The orchestrator binary links this library so one process can host everything; an agent
//! node (the `conclave-agent` binary, [`cluster::host::AgentHost`]) runs the same actors on
//! another machine, joined to the orchestrator through the `conclave-cluster` transport.
//! Tracing (export, and trace context across nodes) is the `conclave-telemetry` crate's.

pub mod accumulate;
pub mod agent;
pub mod cluster;
pub mod llm;
pub mod outbox;
pub mod providers;
pub mod snapshot;
pub mod tools;
pub mod turn;
pub mod workflow;
