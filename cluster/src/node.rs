//! Starting a ractor_cluster `NodeServer` the way every conclave node does, and turning its
//! session events into messages for a conclave actor.
//!
//! Every node: listens on its `--listen` address through conclave's own acceptor (see
//! [`start_node`]; agent nodes default to `127.0.0.1:0`: they dial out and need no reachable
//! port), gives every inbound handshake a deadline, authenticates with the cookie, speaks TLS when
//! configured, accepts inbound frames up to [`MAX_CLUSTER_FRAME_BYTES`], and does *not* make
//! transitive connections (agent nodes talk only to their orchestrator). ractor_cluster
//! identifies peers by `name@host`, so each process gets a unique node name: the configured
//! name plus a random instance suffix. Two processes started with the same `--name` must not
//! evict each other's connections.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_protocol::cluster::MAX_CLUSTER_FRAME_BYTES;
use ractor::{ActorId, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::security::{Cookie, Tls, describe_tls_error};

/// How long a connection attempt (TCP connect, TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an inbound connection may take for its TLS handshake, and then again for
/// ractor_cluster's cookie handshake, before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Inbound connections whose TLS handshake is still running; more are closed at once (a
/// flood of silent connections cannot exhaust the node, and each one ends at its deadline).
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// The `stop` reason of a node session dropped at [`HANDSHAKE_TIMEOUT`] before authenticating.
pub const AUTH_TIMEOUT_REASON: &str = "conclave_auth_timeout";

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

/// The verified client certificates of inbound TLS connections, by peer address (as
/// ractor_cluster's session information spells it). Filled by conclave's acceptor before the
/// stream reaches ractor_cluster; the gateway reads the certificate when the node says hello
/// and forgets it when the session closes.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(Arc<Mutex<HashMap<String, CertificateDer<'static>>>>);

impl PeerCertificates {
    fn insert(&self, peer: String, cert: CertificateDer<'static>) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(peer, cert);
        }
    }

    /// The end-entity certificate the peer at `peer` presented (verified against the CA).
    pub fn get(&self, peer: &str) -> Option<CertificateDer<'static>> {
        self.0.lock().ok()?.get(peer).cloned()
    }

    pub fn remove(&self, peer: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(peer);
        }
    }
}

/// A running node server.
pub struct NodeHandle {
    pub server: ActorRef<NodeServerMessage>,
    pub join: ractor::concurrency::JoinHandle<()>,
    /// The address conclave's own acceptor listens on.
    pub listen: SocketAddr,
    pub peer_certificates: PeerCertificates,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Starts the node server, and conclave's acceptor in front of it.
///
/// ractor_cluster's own listener awaits each TLS handshake inside its accept loop, so one
/// connection that never sends a ClientHello would block every later one. conclave therefore
/// owns the acceptor: it binds `options.listen`, accepts in a loop, runs each TLS handshake in
/// its own task under [`HANDSHAKE_TIMEOUT`] (at most [`MAX_PENDING_HANDSHAKES`] at once), and
/// hands the established stream to the node server (`NodeServerMessage::ConnectionOpened`).
/// ractor_cluster always starts a listener of its own too; conclave binds it to an ephemeral
/// loopback port with the same TLS setting, where it serves nobody. A session that has not
/// passed the cookie handshake [`HANDSHAKE_TIMEOUT`] after it opened is stopped (reason
/// [`AUTH_TIMEOUT_REASON`]): ractor_cluster sets no deadline of its own there.
pub async fn start_node(options: &NodeOptions) -> Result<NodeHandle, NodeError> {
    let listen_error = |e: &dyn std::fmt::Display| NodeError::Listen {
        addr: options.listen,
        message: e.to_string(),
    };
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| listen_error(&e))?;
    let listen = listener.local_addr().map_err(|e| listen_error(&e))?;
    let encryption = options
        .tls
        .as_ref()
        .map(|tls| IncomingEncryptionMode::Tls(tls.acceptor.clone()));
    let hostname = match listen.ip() {
        ip if ip.is_unspecified() => "0.0.0.0".to_owned(),
        ip => ip.to_string(),
    };
    let server = NodeServer::new(
        0,
        options.cookie.expose().to_owned(),
        options.node_name.clone(),
        hostname,
        encryption,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
    .with_max_inbound_frame_size(MAX_CLUSTER_FRAME_BYTES);
    let (server, join) = ractor::Actor::spawn(None, server, ())
        .await
        .map_err(|e| listen_error(&e))?;
    watch_authentication(&server)?;
    let peer_certificates = PeerCertificates::default();
    let acceptor = tokio::spawn(accept_loop(
        listener,
        server.clone(),
        options.tls.clone(),
        peer_certificates.clone(),
    ));
    Ok(NodeHandle {
        server,
        join,
        listen,
        peer_certificates,
        acceptor,
    })
}

async fn accept_loop(
    listener: TcpListener,
    server: ActorRef<NodeServerMessage>,
    tls: Option<Tls>,
    certificates: PeerCertificates,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, usually: wait a moment rather than spin.
                warn!(%error, "cannot accept a cluster connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            warn!(
                %peer,
                "refused a node connection: {MAX_PENDING_HANDSHAKES} handshakes are already pending"
            );
            continue;
        };
        let server = server.clone();
        let tls = tls.clone();
        let certificates = certificates.clone();
        tokio::spawn(async move {
            let opened = open(stream, peer, tls.as_ref(), &certificates).await;
            drop(permit);
            if let Some(stream) = opened
                && let Err(error) = server.send_message(NodeServerMessage::ConnectionOpened {
                    stream: Box::new(stream),
                    is_server: true,
                })
            {
                debug!(%peer, %error, "the node server is gone; connection dropped");
            }
        });
    }
}

/// The handshake of one inbound connection, under [`HANDSHAKE_TIMEOUT`].
async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&Tls>,
    certificates: &PeerCertificates,
) -> Option<NetworkStream> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok()?;
    let Some(tls) = tls else {
        return Some(NetworkStream::Raw {
            peer_addr: peer,
            local_addr: local,
            stream,
        });
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            if let Some(cert) = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                certificates.insert(peer.to_string(), cert.clone().into_owned());
            }
            Some(NetworkStream::TlsServer {
                peer_addr: peer,
                local_addr: local,
                stream,
            })
        }
        Ok(Err(error)) => {
            warn!(
                %peer,
                reason = %describe_tls_error(&error),
                "refused a node connection: TLS handshake failed"
            );
            None
        }
        Err(_) => {
            warn!(
                %peer,
                "refused a node connection: no TLS handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            );
            None
        }
    }
}

/// Stops every inbound session that has not authenticated [`HANDSHAKE_TIMEOUT`] after it
/// opened (a peer that connects and stays silent, or sends garbage that is not a frame).
fn watch_authentication(server: &ActorRef<NodeServerMessage>) -> Result<(), NodeError> {
    let pending: Arc<Mutex<HashSet<ActorId>>> = Arc::default();
    subscribe(server, "conclave-auth-deadline", move |event| match event {
        NodeEvent::Opened(info) if info.is_server => {
            let id = info.actor.get_id();
            if let Ok(mut set) = pending.lock() {
                set.insert(id);
            }
            let pending = pending.clone();
            tokio::spawn(async move {
                tokio::time::sleep(HANDSHAKE_TIMEOUT).await;
                let expired = pending
                    .lock()
                    .map(|mut set| set.remove(&id))
                    .unwrap_or(false);
                if expired {
                    warn!(
                        peer = %info.peer_addr,
                        "refused a node connection: no cookie handshake within {} s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    );
                    info.actor.stop(Some(AUTH_TIMEOUT_REASON.to_owned()));
                }
            });
        }
        NodeEvent::Authenticated(info) | NodeEvent::Disconnected(info) => {
            if let Ok(mut set) = pending.lock() {
                set.remove(&info.actor.get_id());
            }
        }
        _ => {}
    })
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
