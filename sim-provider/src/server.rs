//! [`SimServer`]: binding, the accept loop, and a shutdown that always ends.
//!
//! The accept loop is ours rather than `axum::serve` for one reason: `axum::serve`'s graceful
//! shutdown waits for every open connection with no bound, and a simulated stream may be
//! long. Here each connection is a task in a [`JoinSet`]; on shutdown the loop stops
//! accepting, asks every connection to finish its current response, waits at most the grace
//! period ([`SHUTDOWN_GRACE`] by default), then aborts the rest (their guards record them as
//! cancelled).
//! Dropping a [`SimServer`] without `shutdown` aborts everything at once.
//!
//! Each connection carries a [`ResetSwitch`] in its requests' extensions: the `reset` fault
//! trips it and fails the body, and when hyper then drops the socket, [`ResettableIo`] sets
//! `SO_LINGER` to zero first, so the close is a TCP RST (what a crashed proxy or a kernel
//! under pressure sends) rather than a clean FIN.
//!
//! Connections are HTTP/1.1 with `TCP_NODELAY` (without it, Nagle's algorithm and delayed
//! ACKs hold small SSE frames back for up to 40 ms and wreck the pacing), and without a
//! header-read timeout: a timer there would fire spuriously under tests that pause tokio's
//! clock.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::SimError;
use crate::log::{RequestRecord, SimStats, stats_from};
use crate::options::SimConfig;
use crate::routes;
use crate::state::{ResetSwitch, SimState};

/// How long a shutdown lets in-flight responses finish before cutting them off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (e.g. out of file descriptors under a large bench), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A running simulated provider: an OpenAI-compatible HTTP server on a local socket, served
/// by a task on the current tokio runtime.
///
/// `conclave demo`, the tests and the bench start one in-process and point their agents at
/// [`SimServer::base_url`]; the `conclave-sim` binary runs one standalone.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<SimState>,
    /// `None` while serving; the grace period once a shutdown is requested.
    stop: watch::Sender<Option<Duration>>,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving in a spawned task. Must be
    /// called inside a tokio runtime.
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimServer, SimError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
        let state = Arc::new(SimState::new(config));
        let (stop, stop_requested) = watch::channel(None);
        let app = routes::router(Arc::clone(&state));
        let task = tokio::spawn(accept_loop(listener, app, stop_requested));
        tracing::info!(
            %addr,
            tokens = state.config.tokens,
            token_delay_ms = state.config.token_delay.as_millis() as u64,
            first_byte_ms = state.config.first_byte_delay.as_millis() as u64,
            "simulated provider listening"
        );
        Ok(SimServer {
            addr,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give a client: `http://127.0.0.1:PORT/v1`. It serves every wire
    /// format: `{base}/chat/completions`, `{base}/responses`, `{base}/messages`, and Gemini's
    /// `{base}/models/{model}:streamGenerateContent` (also under [`Self::gemini_base_url`]).
    /// A wildcard bind address (`0.0.0.0`, `::`) is replaced by loopback, since it cannot be
    /// connected to.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.root_url())
    }

    /// Gemini's own base URL shape, `http://127.0.0.1:PORT/v1beta`, for clients that insist
    /// on the real path.
    pub fn gemini_base_url(&self) -> String {
        format!("{}/v1beta", self.root_url())
    }

    /// `http://127.0.0.1:PORT`: the server root (`/__sim/*`, `/health`).
    pub fn root_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Milliseconds since the server started, on the request log's clock: lets a caller put
    /// its own events (a session spawned, a process exited) on the same timeline as the
    /// records' `started_ms`/`ended_ms`.
    pub fn now_ms(&self) -> f64 {
        self.state.now_ms()
    }

    /// A copy of the request log (what `GET /__sim/requests` serves).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.log().records()
    }

    /// Totals over the request log (what `GET /__sim/stats` serves).
    pub fn stats(&self) -> SimStats {
        let summary = self.state.log().summary();
        stats_from(summary)
    }

    /// Clears the request log and the fault counts (what `POST /__sim/reset` does).
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting, lets in-flight responses finish for up to [`SHUTDOWN_GRACE`], then
    /// cuts off the rest and returns.
    pub async fn shutdown(self) {
        self.shutdown_within(SHUTDOWN_GRACE).await;
    }

    /// [`SimServer::shutdown`] with another grace period (zero cuts every response off).
    pub async fn shutdown_within(mut self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let Some(mut task) = self.task.take() else {
            return;
        };
        // The loop enforces the grace period itself; this bound only guards against a bug.
        if tokio::time::timeout(grace.saturating_add(Duration::from_secs(1)), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        tracing::info!(addr = %self.addr, "simulated provider stopped");
    }
}

impl Drop for SimServer {
    /// Without an explicit [`SimServer::shutdown`], stop at once: aborting the accept loop
    /// drops its `JoinSet`, which aborts every connection.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts connections until a stop is requested, then drains them (bounded).
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    mut stop_requested: watch::Receiver<Option<Duration>>,
) {
    let mut connections = JoinSet::new();
    let connection_stop = stop_requested.clone();
    let grace = loop {
        tokio::select! {
            grace = stop(&mut stop_requested) => break grace,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, app.clone(), connection_stop.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "simulated provider cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    };
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "cutting off connections still streaming after the shutdown grace period"
        );
        connections.shutdown().await;
    }
}

/// Serves one HTTP/1.1 connection; on stop, finishes the response in progress and closes.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    mut stop_requested: watch::Receiver<Option<Duration>>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY on a simulated provider connection");
    }
    let switch = ResetSwitch::default();
    let io = ResettableIo {
        stream,
        switch: switch.clone(),
    };
    let service = tower::ServiceExt::map_request(app, move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(switch.clone());
        request
    });
    let mut builder = http1::Builder::new();
    builder.header_read_timeout(None);
    let mut connection =
        pin!(builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop(&mut stop_requested) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Clients going away mid-response land here; the request log already says so.
        tracing::debug!(error = %err, "simulated provider connection ended with an error");
    }
}

/// Resolves with the grace period once a stop is requested, or with zero once the
/// [`SimServer`] is gone (sender dropped).
async fn stop(requested: &mut watch::Receiver<Option<Duration>>) -> Duration {
    // Copying out of the `Ref` here keeps the callers' futures `Send`.
    match requested.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// A connection's socket that closes with an RST once its [`ResetSwitch`] is tripped.
#[derive(Debug)]
struct ResettableIo {
    stream: TcpStream,
    switch: ResetSwitch,
}

impl Drop for ResettableIo {
    fn drop(&mut self) {
        if self.switch.tripped()
            && let Err(err) = self.stream.set_zero_linger()
        {
            tracing::debug!(error = %err, "cannot set SO_LINGER 0 for a simulated reset");
        }
    }
}

impl AsyncRead for ResettableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
