//! Config loading, the consensus properties and the probe command.
//!
//! One test binary instead of one per file: every integration-test binary links tokio, reqwest,
//! rustls and the rest, so separate binaries cost link time and gigabytes of disk. Each module
//! keeps its own docs; run one with `cargo test -p <crate> --test orchestrator <module>::`.

mod config_command_line;
mod config_loading;
mod config_tools;
mod config_workspace;
mod consensus_props;
mod massgen_configs;
mod probe;
mod session_tasks;
mod write_ahead;
