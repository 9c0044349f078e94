//! # conclave
//!
//! The orchestrator of conclave: several LLM agents work on one task at once, read each
//! other's answers anonymously, and vote until they agree.
//!
//! * [`consensus`]: the pure state machine of the consensus rules (no I/O, no clock).
//! * [`coordinator`]: the actor that owns a session's state machine and journal; [`outcome`]:
//!   how a session ended (its exit code, the reason's name), as its callers read it.
//! * [`session`]: the SessionSupervisor and [`session::run_session`].
//! * [`cluster`]: the node server agent nodes join (`--listen`), and the gateway that places
//!   agents on them, heartbeats them and routes their traffic.
//! * [`journal`]: the append-only `events.jsonl` of every session; [`resume`]: replaying it
//!   after a crash.
//! * [`config`]: YAML configs (MassGen's keys included) resolved into the protocol schema.
//! * [`display`]: plain, JSON and quiet live output.
//! * [`server`]: `conclave server`, a long-lived orchestrator for agent nodes.
//! * [`batch`]: `conclave batch`, many questions with a crash-safe batch journal.
//! * [`cli`]: the `conclave` command line; [`demo`]: the no-keys demonstration; [`probe`]:
//!   one raw call to one backend, for checking a provider; [`console`]: what the command line
//!   writes to the terminal, and where each kind of output goes.
//! * [`telemetry`]: OTLP trace export and the session span (off unless
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set).

pub mod batch;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod console;
pub mod conversation;
pub mod coordinator;
pub mod demo;
pub mod display;
pub mod journal;
pub mod outcome;
pub mod pricing;
pub mod probe;
pub mod resume;
pub mod server;
pub mod session;
pub mod snapshots;
pub mod telemetry;
pub mod tui;
pub mod web;
