//! Errors of the simulator's library API.
//!
//! Errors a *client* causes (bad JSON, unknown model option) are not here: they are HTTP
//! responses in the OpenAI error envelope (see `routes`), because that is what the client
//! under test has to handle.

use std::io;
use std::net::SocketAddr;

/// Why the simulated provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address is taken, not local, or not permitted. Pick another address, or
    /// port 0 for any free port.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The socket was bound but its address could not be read back.
    #[error("cannot read the address the simulator is bound to: {0}")]
    LocalAddr(#[source] io::Error),
}
