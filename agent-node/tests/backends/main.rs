//! The provider backends over real HTTP, the recorded fixtures, retries and agent supervision.
//!
//! One test binary instead of one per file: every integration-test binary links tokio, reqwest,
//! rustls and the rest, so separate binaries cost link time and gigabytes of disk. Each module
//! keeps its own docs; run one with `cargo test -p <crate> --test backends <module>::`.

#[path = "../common/mod.rs"]
mod common;

mod anthropic_fixtures;
mod anthropic_http;
mod azure_openai_http;
mod claude_code;
mod gemini_fixtures;
mod gemini_http;
mod openai_chat_fixtures;
mod openai_chat_http;
mod openai_responses_fixtures;
mod openai_responses_http;
mod retry_faults;
mod supervision;
mod tool_results;
