//! The state that the server, the routes and the reply streams share: [`SimState`] (one per
//! server: config, request log, fault counts) and [`ResetSwitch`] (one per connection).
//!
//! Design choice: these live apart from `server` so the modules form a tree. `server` builds
//! the state and serves `routes`; `routes` and `stream` only read and update it; none of them
//! imports another to reach it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use crate::fault::FaultCounter;
use crate::log::RequestLog;
use crate::options::SimConfig;

/// State shared by every request of one server.
#[derive(Debug)]
pub(crate) struct SimState {
    pub config: SimConfig,
    /// Time zero of the request log.
    started: Instant,
    log: Mutex<RequestLog>,
    /// Requests seen per faulty model string (`fault_times`).
    pub faults: FaultCounter,
}

impl SimState {
    pub fn new(config: SimConfig) -> Self {
        SimState {
            config,
            started: Instant::now(),
            log: Mutex::new(RequestLog::default()),
            faults: FaultCounter::default(),
        }
    }

    /// Clears the request log and the fault counts: after a reset, a `fault_times=N` model
    /// faults N times again.
    pub fn reset(&self) {
        self.log().reset();
        self.faults.reset();
    }

    /// The request log. A panic while it was held cannot leave it inconsistent (every update
    /// is a few field writes), so a poisoned lock is used as is.
    pub fn log(&self) -> MutexGuard<'_, RequestLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds from server start to `at`, rounded to the microsecond: finer digits are
    /// noise, and short decimals keep `/__sim/requests` readable.
    pub fn ms_at(&self, at: Instant) -> f64 {
        let micros = at.saturating_duration_since(self.started).as_micros();
        micros as f64 / 1000.0
    }

    /// Milliseconds since server start.
    pub fn now_ms(&self) -> f64 {
        self.ms_at(Instant::now())
    }
}

/// Asks for the connection a request came on to be closed with a TCP RST (the `reset`
/// fault). Cheap to clone; one per connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ResetSwitch(Arc<AtomicBool>);

impl ResetSwitch {
    /// Marks the connection: when it is dropped, it is reset instead of closed.
    pub fn trip(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn tripped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
