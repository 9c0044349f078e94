//! # conclave-cluster
//!
//! conclave's cluster transport on top of ractor_cluster, shared by both binaries: the
//! orchestrator (`conclave`, its gateway) and the agent node (`conclave-agent`, its host).
//! Neither side's actors live here; this crate only knows how two conclave nodes find,
//! authenticate, watch and talk to each other.
//!
//! - [`node`]: starting a `NodeServer` the conclave way (own acceptor, handshake deadline,
//!   frame limit, unique node names) and turning its session events into messages.
//! - [`security`]: the cluster cookie and mutual TLS.
//! - [`heartbeat`]: the heartbeat both ways, the lost-link deadline and the redial backoff.
//! - [`wire`]: conclave's frames inside ractor_cluster messages, and sending them.
//! - [`inbox`]: the actor that receives frames for a node and hands them on.
//!
//! What ractor_cluster gives: TCP (or TLS) sessions between node servers, cookie
//! authentication, remote actor references and pg groups synchronised across nodes. What it
//! does not, and conclave adds:
//! - **Reconnection.** A dropped session is never re-established by ractor_cluster; the agent
//!   node dials again with bounded exponential backoff ([`heartbeat::Backoff`]).
//! - **Half-open links.** ractor_cluster's pings only measure latency; conclave sends its own
//!   heartbeat both ways and declares a silent peer lost at a deadline
//!   ([`heartbeat::Liveness`]), then tears the session down.
//! - **Discovery.** The named registry is not synchronised, so every conclave inbox is found
//!   through pg groups in the `conclave` scope (see `conclave_protocol::cluster`).
//! - **Message format.** Frames carry conclave's own bincode codec ([`wire::Frame`]), with
//!   ractor_cluster's inbound frame limit raised to match.
//!
//! Design choice: the transport is its own crate (it was a module of the agent crate) so the
//! orchestrator no longer reaches into the agent crate for it, and the crate graph says what
//! each side is made of: protocol ← cluster ← agent ← orchestrator, with the orchestrator
//! also using the cluster crate directly. The messages themselves stay in
//! `conclave_protocol::cluster`; trace export and propagation are the `conclave-telemetry`
//! crate's (the transport never touches them).

pub mod heartbeat;
pub mod inbox;
pub mod node;
pub mod security;
pub mod wire;
