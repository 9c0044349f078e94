//! The request log: one [`RequestRecord`] per accepted chat request, and the statistics
//! derived from it ([`SimStats`], [`critical_path`]).
//!
//! The log is what makes the simulator a measuring instrument: a test asserts which turns
//! were sent (by fingerprint), which were cancelled, and a bench compares the session's wall
//! time with the critical path, the time the provider turns alone needed end to end.
//!
//! Times are milliseconds since the server started, read from tokio's monotonic clock (so
//! tests on paused time see virtual milliseconds). Ids count from 1 for the server's whole
//! life and are not reused after a reset, so a response id (`chatcmpl-sim-N`) always names
//! one request. Requests refused before they are understood (bad JSON, unknown model
//! option) are not recorded; [`SimStats::rejected`] counts them.
//!
//! Requests that met an injected fault are recorded like any other, with the fault named in
//! [`RequestRecord::fault`]: a retry test counts the attempts a client made by counting
//! records. They never count as cancelled (the client did not leave, the server failed it),
//! and only a faulted request that still delivered its whole reply (`slow_first_byte`,
//! `malformed`) counts as completed and so enters the critical path.

use serde::{Deserialize, Serialize};

use crate::fault::Fault;
use crate::policy::DecisionKind;
use crate::wire::Wire;

/// One chat request as the simulator saw and served it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RequestRecord {
    /// 1-based arrival order; `N` in `chatcmpl-sim-N` and `call_sim_N`.
    pub id: u64,
    /// The wire format the request used.
    #[serde(default)]
    pub wire: Wire,
    /// The model string as sent, options included.
    pub model: String,
    /// The reply the policy chose.
    pub decision: DecisionKind,
    /// The label voted for, when `decision` is `vote`.
    pub vote_target: Option<String>,
    /// Hex FNV-1a of the request's messages and tools: equal turns have equal fingerprints.
    pub fingerprint: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// When the request body had been read.
    pub started_ms: f64,
    /// When the first piece was handed to the connection; `None` if it never was.
    pub first_byte_ms: Option<f64>,
    /// When the response ended, completed or not; `None` while it is in flight.
    pub ended_ms: Option<f64>,
    /// True only if the whole response (for a stream, up to and including `data: [DONE]`)
    /// was handed to the connection. False for a client that went away early.
    pub completed: bool,
    /// Size of the request body.
    pub request_bytes: u64,
    /// Reported prompt tokens: request bytes / 4, rounded up.
    pub prompt_tokens: u64,
    /// Pieces actually handed to the connection: `tokens` for a completed stream, fewer for
    /// a cancelled one (the tokens a cancellation saved are `tokens - output_tokens`).
    pub output_tokens: u64,
    /// The fault injected into this response (`fault=` in the model string, within its
    /// `fault_times`); `None` for a normal response.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// The request body as sent (UTF-8, cut at `MAX_RECORDED_BODY` bytes), kept only when the
    /// model string asks for it with `record_body=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl RequestRecord {
    /// `ended_ms - started_ms`, once ended.
    pub fn duration_ms(&self) -> Option<f64> {
        self.ended_ms.map(|ended| ended - self.started_ms)
    }
}

/// Totals over the log, served at `GET /__sim/stats`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SimStats {
    /// Recorded requests (accepted since the last reset).
    pub requests: u64,
    /// Requests whose whole response was delivered.
    pub completed: u64,
    /// Requests that ended without being delivered in full because the client disconnected
    /// (faulted requests are counted in `faulted` instead).
    pub cancelled: u64,
    /// Requests that met an injected fault, completed or not.
    #[serde(default)]
    pub faulted: u64,
    /// Requests still streaming.
    pub in_flight: u64,
    /// Requests refused with a 400 before being recorded.
    pub rejected: u64,
    /// Start of the earliest recorded request.
    pub first_request_ms: Option<f64>,
    /// End of the latest ended request.
    pub last_end_ms: Option<f64>,
    /// See [`critical_path`].
    pub critical_path_ms: f64,
    /// Number of requests in that chain.
    pub critical_path_requests: usize,
}

/// The longest chain of completed requests in which each starts at or after the previous
/// one ended, as (total duration in ms, number of requests).
///
/// This is the provider time a session could not have avoided even with infinitely fast
/// coordination: those turns were sequential. The session's wall time minus this is the
/// overhead to explain. Incomplete and in-flight requests are ignored (they were not needed
/// to finish). Solved as weighted interval scheduling: sort by end, then for each request
/// either skip it or append it to the best chain ending by its start (binary search), in
/// O(n log n).
pub fn critical_path(records: &[RequestRecord]) -> (f64, usize) {
    longest_chain(
        records
            .iter()
            .filter(|record| record.completed)
            .filter_map(|record| Some((record.started_ms, record.ended_ms?)))
            .collect(),
    )
}

/// [`critical_path`] over `(start, end)` intervals.
fn longest_chain(mut intervals: Vec<(f64, f64)>) -> (f64, usize) {
    // Malformed intervals (NaN, or ending before they start) cannot be part of a chain.
    intervals.retain(|&(start, end)| end >= start);
    intervals.sort_by(|a, b| a.1.total_cmp(&b.1));
    // best[k]: the best chain using only the first k intervals (by end).
    let mut best: Vec<(f64, usize)> = Vec::with_capacity(intervals.len() + 1);
    best.push((0.0, 0));
    for (index, &(start, end)) in intervals.iter().enumerate() {
        // Intervals before this one that end at or before its start. Searching only the
        // earlier ones keeps a zero-length interval from chaining onto itself.
        let fits = intervals[..index].partition_point(|&(_, earlier_end)| earlier_end <= start);
        let (before_ms, before_count) = best[fits];
        let with = (before_ms + (end - start), before_count + 1);
        let without = best[index];
        best.push(if with.0 > without.0 { with } else { without });
    }
    best.last().copied().unwrap_or((0.0, 0))
}

/// The mutable log behind a mutex in the server state. Every method is short: requests
/// touch it at start, first byte and end only.
#[derive(Debug)]
pub(crate) struct RequestLog {
    records: Vec<RequestRecord>,
    /// The id of `records[0]`; requests from before a reset have smaller ids and their late
    /// updates are ignored.
    first_id: u64,
    next_id: u64,
    rejected: u64,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            records: Vec::new(),
            first_id: 1,
            next_id: 1,
            rejected: 0,
        }
    }
}

impl RequestLog {
    /// Records a new request, assigning its id (the given `record.id` is overwritten).
    pub fn begin(&mut self, mut record: RequestRecord) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        record.id = id;
        self.records.push(record);
        id
    }

    pub fn first_byte(&mut self, id: u64, at_ms: f64) {
        if let Some(record) = self.get_mut(id) {
            record.first_byte_ms.get_or_insert(at_ms);
        }
    }

    pub fn end(&mut self, id: u64, at_ms: f64, completed: bool, output_tokens: u64) {
        if let Some(record) = self.get_mut(id) {
            record.ended_ms = Some(at_ms);
            record.completed = completed;
            record.output_tokens = output_tokens;
        }
    }

    pub fn reject(&mut self) {
        self.rejected += 1;
    }

    /// Forgets every record and the rejected count; ids keep counting.
    pub fn reset(&mut self) {
        self.records.clear();
        self.first_id = self.next_id;
        self.rejected = 0;
    }

    pub fn records(&self) -> Vec<RequestRecord> {
        self.records.clone()
    }

    /// Counts, and the intervals of completed requests for [`longest_chain`] (run by the
    /// caller outside the lock).
    pub fn summary(&self) -> (SimStats, Vec<(f64, f64)>) {
        let mut stats = SimStats {
            requests: self.records.len() as u64,
            completed: 0,
            cancelled: 0,
            faulted: 0,
            in_flight: 0,
            rejected: self.rejected,
            first_request_ms: None,
            last_end_ms: None,
            critical_path_ms: 0.0,
            critical_path_requests: 0,
        };
        let mut intervals = Vec::new();
        for record in &self.records {
            if record.fault.is_some() {
                stats.faulted += 1;
            }
            stats.first_request_ms = Some(
                stats
                    .first_request_ms
                    .map_or(record.started_ms, |first| first.min(record.started_ms)),
            );
            match record.ended_ms {
                None => stats.in_flight += 1,
                Some(ended) => {
                    stats.last_end_ms =
                        Some(stats.last_end_ms.map_or(ended, |last| last.max(ended)));
                    if record.completed {
                        stats.completed += 1;
                        intervals.push((record.started_ms, ended));
                    } else if record.fault.is_none() {
                        stats.cancelled += 1;
                    }
                }
            }
        }
        (stats, intervals)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut RequestRecord> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        self.records.get_mut(index)
    }
}

/// Completes a [`SimStats`] from [`RequestLog::summary`].
pub(crate) fn stats_from(summary: (SimStats, Vec<(f64, f64)>)) -> SimStats {
    let (mut stats, intervals) = summary;
    let (critical_path_ms, critical_path_requests) = longest_chain(intervals);
    stats.critical_path_ms = critical_path_ms;
    stats.critical_path_requests = critical_path_requests;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(started_ms: f64) -> RequestRecord {
        RequestRecord {
            id: 0,
            wire: Wire::OpenAiChat,
            model: "m".to_owned(),
            decision: DecisionKind::Text,
            vote_target: None,
            fingerprint: String::new(),
            stream: true,
            started_ms,
            first_byte_ms: None,
            ended_ms: None,
            completed: false,
            request_bytes: 0,
            prompt_tokens: 0,
            output_tokens: 0,
            fault: None,
            body: None,
        }
    }

    #[test]
    fn ids_keep_counting_across_a_reset_and_stale_updates_are_ignored() {
        let mut log = RequestLog::default();
        let first = log.begin(record(0.0));
        let second = log.begin(record(1.0));
        assert_eq!((first, second), (1, 2));
        log.end(first, 5.0, true, 3);
        log.reset();
        log.end(second, 6.0, true, 3);
        let third = log.begin(record(7.0));
        assert_eq!(third, 3);
        log.end(third, 9.0, false, 1);
        let records = log.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].id, 3);
        assert!(!records[0].completed);
        let stats = stats_from(log.summary());
        assert_eq!(
            (stats.requests, stats.cancelled, stats.completed),
            (1, 1, 0)
        );
    }

    #[test]
    fn faulted_requests_are_not_cancellations() {
        let mut log = RequestLog::default();
        let failed = log.begin(RequestRecord {
            fault: Some(Fault::RateLimited),
            ..record(0.0)
        });
        log.end(failed, 1.0, false, 0);
        let slow = log.begin(RequestRecord {
            fault: Some(Fault::SlowFirstByte),
            ..record(2.0)
        });
        log.end(slow, 9.0, true, 5);
        let stats = stats_from(log.summary());
        assert_eq!((stats.faulted, stats.cancelled, stats.completed), (2, 0, 1));
        assert_eq!(stats.critical_path_requests, 1);
    }
}
