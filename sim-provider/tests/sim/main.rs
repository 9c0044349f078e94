//! The simulated provider: wires, policy, faults, inspection, pacing and shutdown.
//!
//! One test binary instead of one per file: every integration-test binary links tokio, reqwest,
//! rustls and the rest, so separate binaries cost link time and gigabytes of disk. Each module
//! keeps its own docs; run one with `cargo test -p <crate> --test sim <module>::`.

#[path = "../common/mod.rs"]
mod common;

mod binary;
mod critical_path;
mod faults;
mod inspection;
mod policy;
mod shutdown;
mod streaming;
mod wires;
