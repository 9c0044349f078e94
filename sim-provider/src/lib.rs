//! `conclave-sim`: a simulated streaming LLM provider.
//!
//! conclave needs a model provider that costs nothing, needs no key, answers the same way
//! every time and can be measured: for `conclave demo`, for the end-to-end tests and for the
//! bench that runs a thousand agents. This crate is that provider. It speaks the real wire
//! formats over real HTTP — OpenAI Chat Completions, OpenAI Responses, Anthropic Messages
//! and Google Gemini, each with its own server-sent-event stream, usage report and error
//! envelope (`wire`) — so the agents' HTTP, SSE and tool-call handling run exactly as
//! against a hosted model, and one session can mix formats.
//!
//! * **Policy** (`policy`): a deterministic reply chosen from the offered tools — vote for
//!   the first label, else offer an answer, else plain text.
//! * **Options** ([`ModelOptions`]): per-request settings in the model string,
//!   `name:tokens=5,token_delay_ms=20,first_byte_ms=100,policy=answer`, so one agent can be
//!   made slow or stubborn without a side channel.
//! * **Faults** ([`Fault`]): `fault=429,fault_times=2,retry_after_ms=50` and friends make a
//!   model fail like real providers fail (status codes with retry hints, in-stream errors,
//!   truncated or malformed streams, connection resets, stalls), for retry tests over HTTP.
//! * **Pacing** (`stream`): `tokens` pieces, one every `token_delay`, on absolute deadlines.
//! * **Request log** ([`RequestRecord`], [`SimStats`], [`critical_path`]): every request
//!   with its wire format, decision, fault, fingerprint, timings and whether the client
//!   stayed to the end;
//!   served at `/__sim/requests` and `/__sim/stats`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), conclave_sim::SimError> {
//! use conclave_sim::{SimConfig, SimServer};
//! let server = SimServer::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap()).await?;
//! let base_url = server.base_url(); // http://127.0.0.1:PORT/v1, for any OpenAI client
//! # let _ = base_url;
//! // ... run agents ...
//! let stats = server.stats();
//! println!("{} requests, critical path {:.0} ms", stats.requests, stats.critical_path_ms);
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod error;
mod fault;
mod log;
mod options;
mod policy;
mod request;
mod routes;
mod server;
mod state;
mod stream;
mod wire;

pub use error::SimError;
pub use fault::{Fault, MAX_STALL, SLOW_FIRST_BYTE_DEFAULT};
pub use log::{RequestRecord, SimStats, critical_path};
pub use options::{
    KNOWN_KEYS, MAX_DELAY_MS, MAX_FAULT_TIMES, MAX_RECORDED_BODY, MAX_RETRY_AFTER_S, MAX_TOKENS,
    ModelOptions, OptionError, Policy, RetryHint, SimConfig,
};
pub use policy::DecisionKind;
pub use server::{SHUTDOWN_GRACE, SimServer};
pub use wire::Wire;
