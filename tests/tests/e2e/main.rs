//! End-to-end tests that drive the real binaries against the simulated provider.
//!
//! One test binary instead of one per file: every integration-test binary links tokio, reqwest,
//! rustls and the rest, so separate binaries cost link time and gigabytes of disk. Each module
//! keeps its own docs; run one with `cargo test -p <crate> --test e2e <module>::`.

mod any_model;
mod batch;
mod batch_cluster;
mod budget;
mod cluster;
mod cluster_hardening;
mod commands;
mod continue_conversation;
mod faults;
mod inject;
mod interactive;
mod interrupt;
mod journal;
mod mixed;
mod node_commands;
mod openai;
mod quick;
mod resume;
mod server;
mod server_conversations;
mod server_trust;
mod session;
mod snapshot_loss;
mod snapshots;
mod tools;
mod tui;
mod web;
mod web_conversations;
mod workspace;
