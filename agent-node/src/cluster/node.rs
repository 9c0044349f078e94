//! Starting a ractor_cluster `NodeServer` the way every conclave node does, and turning its
//! session events into messages for a conclave actor.
//!
//! Every node: listens on its `--listen` address (agent nodes default to `127.0.0.1:0`: they
//! dial out and need no reachable port), authenticates with the cookie, speaks TLS when
//! configured, accepts inbound frames up to [`MAX_CLUSTER_FRAME_BYTES`], and does *not* make
//! transitive connections (agent nodes talk only to their orchestrator). ractor_cluster
//! identifies peers by `name@host`, so each process gets a unique node name: the configured
//! name plus a random instance suffix. Two processes started with the same `--name` must not
//! evict each other's connections.

use std::net::SocketAddr;
use std::time::Duration;

use conclave_protocol::cluster::MAX_CLUSTER_FRAME_BYTES;
use ractor::ActorRef;
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};

use super::security::{Cookie, Tls};

/// How long a connection attempt (TCP connect, TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot start the cluster listener on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
}

/// What a node needs to join a cluster.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// A name unique to this process (see the module docs).
    pub node_name: String,
    pub listen: SocketAddr,
    pub cookie: Cookie,
    pub tls: Option<Tls>,
}

/// A running node server.
pub struct NodeHandle {
    pub server: ActorRef<NodeServerMessage>,
    pub join: ractor::concurrency::JoinHandle<()>,
}

/// Starts the node server.
pub async fn start_node(options: &NodeOptions) -> Result<NodeHandle, NodeError> {
    let encryption = options
        .tls
        .as_ref()
        .map(|tls| IncomingEncryptionMode::Tls(tls.acceptor.clone()));
    let hostname = match options.listen.ip() {
        ip if ip.is_unspecified() => "0.0.0.0".to_owned(),
        ip => ip.to_string(),
    };
    let server = NodeServer::new(
        options.listen.port(),
        options.cookie.expose().to_owned(),
        options.node_name.clone(),
        hostname,
        encryption,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(options.listen.ip())
    .with_max_inbound_frame_size(MAX_CLUSTER_FRAME_BYTES);
    let (server, join) =
        ractor::Actor::spawn(None, server, ())
            .await
            .map_err(|e| NodeError::Listen {
                addr: options.listen,
                message: e.to_string(),
            })?;
    Ok(NodeHandle { server, join })
}

/// Dials `addr` (TLS when configured), bounded by [`CONNECT_TIMEOUT`]. Success means the TCP
/// (and TLS) connection is up and ractor_cluster's handshake has started; whether the peer
/// accepts the cookie shows in the session events.
pub async fn connect(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    tls: Option<(&Tls, rustls::pki_types::ServerName<'static>)>,
) -> Result<(), NodeError> {
    let error = |message: String| NodeError::Connect {
        addr: addr.to_owned(),
        message,
    };
    let attempt = async {
        match tls {
            None => ractor_cluster::client_connect(server, addr).await,
            Some((tls, name)) => {
                ractor_cluster::client_connect_enc(server, addr, tls.connector.clone(), name).await
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(error(match e {
            ractor_cluster::ClientConnectErr::Socket(e) => e.to_string(),
            ractor_cluster::ClientConnectErr::Encryption(e) => format!("TLS handshake: {e}"),
            other => other.to_string(),
        })),
        Err(_) => Err(error(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// A node session event, as a conclave actor receives it.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Opened(NodeServerSessionInformation),
    Authenticated(NodeServerSessionInformation),
    Ready(NodeServerSessionInformation),
    Disconnected(NodeServerSessionInformation),
}

struct Forward<F>(F);

impl<F: Fn(NodeEvent) + Send + 'static> NodeEventSubscription for Forward<F> {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        (self.0)(NodeEvent::Opened(ses));
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        (self.0)(NodeEvent::Disconnected(ses));
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        (self.0)(NodeEvent::Authenticated(ses));
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        (self.0)(NodeEvent::Ready(ses));
    }
}

/// Calls `forward` (which must not block: it runs inside the node server) for every session
/// event of `server`.
pub fn subscribe(
    server: &ActorRef<NodeServerMessage>,
    id: &str,
    forward: impl Fn(NodeEvent) + Send + 'static,
) -> Result<(), NodeError> {
    server
        .send_message(NodeServerMessage::SubscribeToEvents {
            id: id.to_owned(),
            subscription: Box::new(Forward(forward)),
        })
        .map_err(|e| NodeError::Connect {
            addr: "(local node server)".into(),
            message: e.to_string(),
        })
}

/// A node name unique to this process: `name-xxxxxxxx` from the instance number.
pub fn unique_node_name(name: &str, instance: u64) -> String {
    format!("{name}-{:08x}", instance & 0xffff_ffff)
}

/// A fresh random instance number (never 0).
pub fn new_instance() -> u64 {
    loop {
        let n: u64 = rand::random();
        if n != 0 {
            return n;
        }
    }
}
