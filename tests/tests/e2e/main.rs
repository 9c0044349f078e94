//! End-to-end tests that drive the real binaries against the simulated provider.
//!
//! One test binary instead of one per file: every integration-test binary links tokio, reqwest,
//! rustls and the rest, so separate binaries cost link time and gigabytes of disk. Each module
//! keeps its own docs; run one with `cargo test -p <crate> --test e2e <module>::`.

mod e2e_any_model;
mod e2e_batch;
mod e2e_budget;
mod e2e_cluster;
mod e2e_cluster_hardening;
mod e2e_continue;
mod e2e_faults;
mod e2e_inject;
mod e2e_interactive;
mod e2e_interrupt;
mod e2e_journal;
mod e2e_mixed;
mod e2e_openai;
mod e2e_quick;
mod e2e_resume;
mod e2e_server;
mod e2e_server_trust;
mod e2e_session;
mod e2e_snapshots;
mod e2e_tools;
mod e2e_tui;
mod e2e_web;
