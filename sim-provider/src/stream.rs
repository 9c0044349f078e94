//! Pacing a reply onto the wire, and noticing when the client leaves.
//!
//! [`ReplyStream`] is the body of a streaming response. Piece `i` is due at
//! `first_piece_at + i * token_delay`, an absolute deadline: a late poll (a busy runtime
//! with a thousand streams) shortens the next wait instead of shifting every later piece, so
//! a stream's duration does not drift with load. The stream is a hand-written state machine
//! over one re-armed timer, so a stream in flight costs one small heap object, not a task.
//!
//! [`RecordGuard`] ties the request log to the response's lifetime. hyper drops the body
//! when the connection goes away, so the guard's `Drop` is where a client disconnect
//! becomes `completed: false` — no polling of the socket needed. The same guard serves the
//! non-streaming path, where the handler future itself is what hyper drops.
//!
//! Mid-stream faults ([`MidStreamFault`]) strike in [`ReplyStream::poll_next`], the one place
//! that decides what the next frame is and when it is due: at the deadline of piece `after`
//! (right after the last piece when `after` is the piece count, in place of the closing
//! events), the stream writes the format's error event and ends (`stream_error`), ends
//! without its terminal event (`truncate`), writes one non-JSON line and goes on
//! (`malformed`), trips the connection's [`ResetSwitch`] and fails the body so the socket is
//! closed with a TCP RST (`reset`), or goes quiet until the client leaves, at most
//! [`MAX_STALL`] (`stall`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::fault::{Fault, MAX_STALL};
use crate::policy::Reply;
use crate::state::{ResetSwitch, SimState};
use crate::wire::StreamWriter;

/// Keeps one request's log record up to date, and closes it as cancelled if dropped before
/// [`RecordGuard::complete`].
#[derive(Debug)]
pub(crate) struct RecordGuard {
    state: Arc<SimState>,
    id: u64,
    delivered_pieces: u64,
    ended: bool,
}

impl RecordGuard {
    pub fn new(state: Arc<SimState>, id: u64) -> Self {
        RecordGuard {
            state,
            id,
            delivered_pieces: 0,
            ended: false,
        }
    }

    /// The first piece is being handed to the connection.
    pub fn first_byte(&self) {
        let now = self.state.now_ms();
        self.state.log().first_byte(self.id, now);
    }

    /// `pieces` more pieces were handed to the connection.
    pub fn delivered(&mut self, pieces: u64) {
        self.delivered_pieces += pieces;
    }

    /// The whole response was handed to the connection.
    pub fn complete(&mut self) {
        self.end(true);
    }

    /// The response ended without the whole reply, by the server's doing (an injected
    /// fault); recorded at once rather than when the connection lets go of the body.
    pub fn fail(&mut self) {
        self.end(false);
    }

    fn end(&mut self, completed: bool) {
        if self.ended {
            return;
        }
        self.ended = true;
        let now = self.state.now_ms();
        self.state
            .log()
            .end(self.id, now, completed, self.delivered_pieces);
        tracing::debug!(
            request_id = self.id,
            completed,
            output_tokens = self.delivered_pieces,
            "simulated response ended"
        );
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// A fault that strikes inside a 200 body, after `after` pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MidStreamFault {
    pub fault: Fault,
    /// Pieces delivered before the fault, at most the reply's piece count.
    pub after: usize,
}

/// The paced server-sent-event body of one streamed reply.
#[derive(Debug)]
pub(crate) struct ReplyStream {
    reply: Reply,
    writer: StreamWriter,
    first_piece_at: Instant,
    token_delay: Duration,
    next_piece: usize,
    /// Armed for the deadline of `next_piece` (or the end of a stall).
    timer: Pin<Box<Sleep>>,
    guard: RecordGuard,
    /// Whether any byte of the body was produced yet (for the log's `first_byte_ms`).
    started: bool,
    done: bool,
    /// The fault still to strike, if any.
    fault: Option<MidStreamFault>,
    /// A `stall` is under way: the timer is armed for its end.
    stalled: bool,
    /// Aborts the connection for a `reset` fault.
    reset: Option<ResetSwitch>,
}

/// What a striking fault does to the stream.
enum Strike {
    /// Hand this item to the connection.
    Yield(Result<Bytes, io::Error>),
    /// End the body here.
    End,
    /// Nothing to send now; wait for the timer.
    Wait,
}

impl ReplyStream {
    pub fn new(
        reply: Reply,
        writer: StreamWriter,
        first_piece_at: Instant,
        token_delay: Duration,
        guard: RecordGuard,
    ) -> Self {
        ReplyStream {
            reply,
            writer,
            first_piece_at,
            token_delay,
            next_piece: 0,
            timer: Box::pin(tokio::time::sleep_until(first_piece_at)),
            guard,
            started: false,
            done: false,
            fault: None,
            stalled: false,
            reset: None,
        }
    }

    /// Injects `fault`; `reset` is the connection's switch, needed for a `reset` fault (without
    /// it the body just fails, which closes the connection without an RST).
    pub fn with_fault(mut self, fault: MidStreamFault, reset: Option<ResetSwitch>) -> Self {
        self.fault = Some(MidStreamFault {
            after: fault.after.min(self.reply.pieces()),
            ..fault
        });
        self.reset = reset;
        self
    }

    /// When piece `index` is due.
    fn deadline(&self, index: usize) -> Instant {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        self.first_piece_at + self.token_delay.saturating_mul(index)
    }

    /// Hands `frame` over, noting the first byte.
    fn emit(&mut self, frame: Vec<u8>) -> Bytes {
        if !self.started {
            self.started = true;
            self.guard.first_byte();
        }
        Bytes::from(frame)
    }

    /// The frame for the piece that is due, plus the closing events after the last piece
    /// (unless a fault is still to strike there). Empty when the format sends nothing for
    /// this piece.
    fn next_frame(&mut self) -> Vec<u8> {
        let pieces = self.reply.pieces();
        let mut frame = Vec::with_capacity(512);
        if self.next_piece < pieces {
            self.writer.piece(&mut frame, &self.reply, self.next_piece);
            self.guard.delivered(1);
            self.next_piece += 1;
        }
        if self.next_piece < pieces {
            let deadline = self.deadline(self.next_piece);
            self.timer.as_mut().reset(deadline);
        } else if self.fault.is_none() {
            // The last piece and the closing events leave together: one write instead of
            // several, and the reply is complete once this frame is handed over.
            self.writer.finish(&mut frame, &self.reply);
            self.guard.complete();
            self.done = true;
        }
        // Otherwise a fault strikes after the last piece: the timer stays elapsed, so it
        // strikes on the next poll, at this same deadline.
        frame
    }

    /// Applies the pending fault.
    fn strike(&mut self, fault: Fault) -> Strike {
        self.fault = None;
        match fault {
            Fault::StreamError => {
                let mut frame = Vec::with_capacity(256);
                self.writer.error_event(&mut frame);
                let frame = self.emit(frame);
                self.guard.fail();
                self.done = true;
                Strike::Yield(Ok(frame))
            }
            Fault::Truncate => {
                self.guard.fail();
                self.done = true;
                Strike::End
            }
            Fault::Malformed => {
                let mut frame = Vec::with_capacity(64);
                self.writer.malformed(&mut frame);
                Strike::Yield(Ok(self.emit(frame)))
            }
            Fault::Reset => {
                if let Some(reset) = &self.reset {
                    reset.trip();
                }
                self.guard.fail();
                self.done = true;
                Strike::Yield(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                )))
            }
            Fault::Stall => {
                self.stalled = true;
                let until = Instant::now() + MAX_STALL;
                self.timer.as_mut().reset(until);
                Strike::Wait
            }
            // Status faults and slow_first_byte act before the body exists.
            _ => Strike::Wait,
        }
    }
}

impl Stream for ReplyStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            ready!(this.timer.as_mut().poll(cx));
            if this.stalled {
                // The stall outlasted its bound: end without the terminal event.
                this.guard.fail();
                this.done = true;
                return Poll::Ready(None);
            }
            if let Some(fault) = this.fault.filter(|fault| fault.after == this.next_piece) {
                match this.strike(fault.fault) {
                    Strike::Yield(item) => return Poll::Ready(Some(item)),
                    Strike::End => return Poll::Ready(None),
                    Strike::Wait => continue,
                }
            }
            let frame = this.next_frame();
            if !frame.is_empty() {
                return Poll::Ready(Some(Ok(this.emit(frame))));
            }
        }
    }
}
