//! Liveness of a cluster link, and the reconnect backoff. Pure logic over tokio's clock, so
//! tests run it on paused time.
//!
//! ractor_cluster pings its peers, but only to measure latency: a peer that stops answering
//! (a half-open TCP link, a frozen process, a network partition) is never declared dead. So
//! both ends of a conclave link send an application heartbeat every `interval` and each end
//! declares the other lost once nothing arrived for `deadline`. The deadline is several
//! intervals (default 1 s / 5 s) so one late heartbeat on a busy node is not a loss.
//!
//! How the two ends use it, so that a live peer busy with a large transfer (a snapshot is tens
//! of 1 MiB frames) is never lost:
//! - any frame from the peer counts as a sign of life, not only a heartbeat (a heartbeat may
//!   wait behind the chunks on the same link);
//! - the check is judged as of the instant the timer fired, not when the actor got round to it:
//!   every frame that arrived before that instant has been handled by then;
//! - an agent node sends its heartbeats from a task of its own, so they never wait behind the
//!   host actor's work.

use std::time::Duration;

use tokio::time::Instant;

/// Heartbeat timing of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// How often each side sends a heartbeat.
    pub interval: Duration,
    /// Silence for this long means the peer is lost.
    pub deadline: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            deadline: Duration::from_secs(5),
        }
    }
}

impl HeartbeatConfig {
    /// Checks the values: a positive interval and a deadline of at least two intervals.
    pub fn new(interval: Duration, deadline: Duration) -> Result<Self, String> {
        if interval.is_zero() {
            return Err("the heartbeat interval must be positive".into());
        }
        if deadline < interval * 2 {
            return Err(format!(
                "the heartbeat deadline ({} ms) must be at least twice the interval ({} ms)",
                deadline.as_millis(),
                interval.as_millis()
            ));
        }
        Ok(Self { interval, deadline })
    }
}

/// When a peer was last heard from.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    last: Instant,
    deadline: Duration,
}

impl Liveness {
    /// A peer just heard from (at `now`).
    pub fn new(now: Instant, deadline: Duration) -> Self {
        Self {
            last: now,
            deadline,
        }
    }

    /// Something arrived from the peer.
    pub fn saw(&mut self, now: Instant) {
        if now > self.last {
            self.last = now;
        }
    }

    /// How long the peer has been silent.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last)
    }

    /// True once the peer has been silent past the deadline.
    pub fn expired(&self, now: Instant) -> bool {
        self.silent_for(now) > self.deadline
    }
}

/// Exponential reconnect backoff: `base`, `2·base`, `4·base`, ... capped at `max`, with up to
/// 20 % random jitter taken off so a fleet of nodes does not reconnect in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait before attempt `failures + 1`, without jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.min(16);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// [`Self::delay`] minus up to 20 % jitter.
    pub fn jittered(&self, failures: u32) -> Duration {
        let delay = self.delay(failures);
        let cut = rand::random::<f64>() * 0.2;
        delay.mul_f64(1.0 - cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_expires_only_past_the_deadline() {
        let config = HeartbeatConfig::default();
        let mut peer = Liveness::new(Instant::now(), config.deadline);
        // Heartbeats every interval keep it alive indefinitely.
        for _ in 0..20 {
            tokio::time::advance(config.interval).await;
            peer.saw(Instant::now());
            assert!(!peer.expired(Instant::now()));
        }
        // Then silence: alive at the deadline, lost just past it.
        tokio::time::advance(config.deadline).await;
        assert!(!peer.expired(Instant::now()));
        assert_eq!(peer.silent_for(Instant::now()), config.deadline);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(peer.expired(Instant::now()));
        // One heartbeat brings it back.
        peer.saw(Instant::now());
        assert!(!peer.expired(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_heartbeat_within_the_deadline_is_not_a_loss() {
        let config = HeartbeatConfig::new(Duration::from_millis(100), Duration::from_millis(500))
            .expect("valid config");
        let start = Instant::now();
        let mut peer = Liveness::new(start, config.deadline);
        tokio::time::advance(Duration::from_millis(450)).await;
        assert!(!peer.expired(Instant::now()));
        peer.saw(Instant::now());
        tokio::time::advance(Duration::from_millis(450)).await;
        assert!(!peer.expired(Instant::now()));
        // An out-of-order timestamp never moves the clock back.
        peer.saw(start);
        assert_eq!(peer.silent_for(Instant::now()), Duration::from_millis(450));
        tokio::time::advance(Duration::from_millis(51)).await;
        assert!(peer.expired(Instant::now()));
    }

    #[test]
    fn configs_must_leave_room_for_a_late_heartbeat() {
        assert!(HeartbeatConfig::new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(HeartbeatConfig::new(Duration::from_secs(1), Duration::from_secs(1)).is_err());
        assert!(HeartbeatConfig::new(Duration::from_secs(1), Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(0), Duration::from_millis(250));
        assert_eq!(backoff.delay(1), Duration::from_millis(500));
        assert_eq!(backoff.delay(3), Duration::from_secs(2));
        assert_eq!(backoff.delay(4), Duration::from_secs(4));
        assert_eq!(backoff.delay(5), Duration::from_secs(5));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(5));
        for failures in 0..10 {
            let jittered = backoff.jittered(failures);
            assert!(jittered <= backoff.delay(failures));
            assert!(jittered >= backoff.delay(failures).mul_f64(0.8));
        }
    }
}
