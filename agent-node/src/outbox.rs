//! How an agent talks back to its coordinator: every report is wrapped in an [`Envelope`]
//! with the agent's name and the next per-sender sequence number.
//!
//! The outbox is shared by the agent actor and its turn worker, which both report. Numbering
//! and sending happen under one lock so reports leave in sequence order; the receiver drops
//! anything at or below the highest number it has seen, so an out-of-order send would lose a
//! message. The sink itself never blocks (actor mailboxes are unbounded), so the lock is only
//! held for a push.
//!
//! Everything a worker reports (chunks, retries, its final report) goes straight into the
//! outbox: one route. Which report *ends* a turn is still the agent's to decide, since the
//! agent also ends turns itself (a deadline, too many crashes, a cancel): both ends go through
//! the turn's [`TurnEnd`], which lets exactly one of them through. A turn that timed out never
//! also reports a result, and a cancelled turn reports nothing after the agent took the cancel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use conclave_protocol::{AgentReport, Envelope, SessionId, TraceContext};

/// Delivers one report to the coordinator. Returns false when the coordinator is gone (the
/// session ended), so senders can stop early. In one process this pushes into the
/// coordinator's mailbox; across nodes it sends a cluster frame.
pub type ReportSink = Arc<dyn Fn(Envelope<AgentReport>) -> bool + Send + Sync>;

/// The numbered, ordered report channel of one agent in one session.
pub struct Outbox {
    session: SessionId,
    sender: String,
    next_seq: Mutex<u64>,
    sink: ReportSink,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("session", &self.session)
            .field("sender", &self.sender)
            .finish()
    }
}

impl Outbox {
    pub fn new(session: SessionId, sender: String, sink: ReportSink) -> Self {
        Self {
            session,
            sender,
            next_seq: Mutex::new(1),
            sink,
        }
    }

    /// Sends a report with the given trace context. Returns false if the coordinator is gone.
    pub fn send_traced(&self, body: AgentReport, trace: TraceContext) -> bool {
        // A poisoned lock only means another sender panicked mid-push; the counter is intact.
        let mut seq = self
            .next_seq
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let envelope = Envelope {
            session: self.session.clone(),
            sender: self.sender.clone(),
            seq: *seq,
            trace,
            body,
        };
        *seq += 1;
        (self.sink)(envelope)
    }

    /// Sends a report without trace context.
    pub fn send(&self, body: AgentReport) -> bool {
        self.send_traced(body, TraceContext::default())
    }
}

/// The end of one turn, shared by the agent and the turn's workers (a restarted worker gets the
/// same one). The first to end the turn wins: [`TurnEnd::report`] with its final report, or
/// [`TurnEnd::close`] without one; everything after that is dropped.
#[derive(Debug, Default)]
pub struct TurnEnd {
    ended: AtomicBool,
}

impl TurnEnd {
    /// Sends `report` as the turn's final report and returns true, unless the turn has already
    /// ended: then nothing is sent and it returns false.
    pub fn report(&self, outbox: &Outbox, report: AgentReport) -> bool {
        if self.ended.swap(true, Ordering::AcqRel) {
            return false;
        }
        outbox.send(report);
        true
    }

    /// Ends the turn without a report (cancelled, replaced, the agent stopping); a final
    /// report sent after this is dropped.
    pub fn close(&self) {
        self.ended.store(true, Ordering::Release);
    }

    /// Whether the turn has ended (reported or closed).
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_protocol::{StreamChunk, TurnError, TurnErrorKind, TurnId};

    /// An outbox that records every envelope it sends.
    fn recording_outbox() -> (Outbox, Arc<Mutex<Vec<Envelope<AgentReport>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let outbox = Outbox::new(
            SessionId::parse("s").unwrap(),
            "a".into(),
            Arc::new(move |e: Envelope<AgentReport>| {
                sink_seen.lock().unwrap().push(e);
                true
            }),
        );
        (outbox, seen)
    }

    #[test]
    fn reports_are_numbered_in_order() {
        let (outbox, seen) = recording_outbox();
        for _ in 0..3 {
            outbox.send(AgentReport::Chunk {
                turn: TurnId(1),
                chunk: StreamChunk::Content { text: "x".into() },
            });
        }
        let seqs: Vec<u64> = seen.lock().unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[test]
    fn a_turn_ends_once() {
        let (outbox, seen) = recording_outbox();
        let failed = |message: &str| AgentReport::TurnFailed {
            turn: TurnId(1),
            error: TurnError {
                kind: TurnErrorKind::Timeout,
                message: message.into(),
            },
        };
        let end = TurnEnd::default();
        assert!(!end.has_ended());
        assert!(end.report(&outbox, failed("first")));
        assert!(end.has_ended());
        assert!(
            !end.report(&outbox, failed("second")),
            "a second end is dropped"
        );
        let closed = TurnEnd::default();
        closed.close();
        assert!(!closed.report(&outbox, failed("after close")));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].body, failed("first"));
    }
}
