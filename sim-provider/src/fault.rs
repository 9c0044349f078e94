//! Injected faults: the ways real providers fail, on demand, per model string.
//!
//! A client's retry policy and error handling are only trustworthy if they have met the
//! failures they claim to handle, over real HTTP: a 429 with a `retry-after`, an overloaded
//! 529, an error event in the middle of a stream, a body that stops without its terminal
//! event, a line that is not JSON, a connection reset, a server that goes quiet. Each is one
//! [`Fault`] kind, chosen with `fault=KIND` in the model string (see `options`).
//!
//! Three families, by where the fault strikes:
//! * **status** (`429`, `500`, `503`, `529`, `quota`): the response is an HTTP error in the
//!   wire format's error envelope, with the retry headers asked for, before any body;
//! * **mid-stream** (`stream_error`, `stall`, `truncate`, `malformed`, `reset`): the response
//!   starts with 200 and breaks after `stall_after` pieces (see `stream`); on a
//!   non-streaming request they map onto the whole body (see `routes`);
//! * **slow first byte** (`slow_first_byte`): the response headers themselves wait, which is
//!   what a client's connect-phase watchdog sees, then the reply is served normally.
//!
//! Which requests fault is decided by [`FaultCounter`]: a count per model string shared by
//! every connection and wire format, so `fault_times=N` means "the first N requests of this
//! model", whoever sends them.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long `slow_first_byte` holds the response headers when the model string gives no
/// `first_byte_ms`: long enough to trip any reasonable connect-phase watchdog in a test.
pub const SLOW_FIRST_BYTE_DEFAULT: Duration = Duration::from_secs(5);

/// The longest a `stall` lasts before the simulator ends the body itself (without a terminal
/// event): a bound, so a forgotten client cannot hold a connection forever.
pub const MAX_STALL: Duration = Duration::from_secs(3600);

/// One kind of injected failure. Serialized as written in the model string (`"429"`,
/// `"stream_error"`, ...), which is also how the request log shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fault {
    /// HTTP 429, a rate limit: retryable, usually with a retry hint.
    #[serde(rename = "429")]
    RateLimited,
    /// HTTP 500.
    #[serde(rename = "500")]
    ServerError,
    /// HTTP 503.
    #[serde(rename = "503")]
    Unavailable,
    /// HTTP 529, Anthropic's "overloaded".
    #[serde(rename = "529")]
    Overloaded,
    /// HTTP 429 whose body says the quota is exhausted (OpenAI `insufficient_quota`): a 429
    /// that a client must *not* retry, since waiting does not refill an account.
    #[serde(rename = "quota")]
    QuotaExhausted,
    /// An error event inside a stream that started with 200.
    #[serde(rename = "stream_error")]
    StreamError,
    /// The stream goes quiet (no bytes, connection open) until the client leaves.
    #[serde(rename = "stall")]
    Stall,
    /// The body ends cleanly at the HTTP level but without the terminal event.
    #[serde(rename = "truncate")]
    Truncate,
    /// One data line that is not JSON, then the stream continues.
    #[serde(rename = "malformed")]
    Malformed,
    /// The TCP connection is aborted (RST) in the middle of the body.
    #[serde(rename = "reset")]
    Reset,
    /// The response headers wait `first_byte_ms` (or [`SLOW_FIRST_BYTE_DEFAULT`]).
    #[serde(rename = "slow_first_byte")]
    SlowFirstByte,
}

impl Fault {
    /// The HTTP status of a status fault; `None` for the others.
    pub fn status(self) -> Option<u16> {
        match self {
            Fault::RateLimited | Fault::QuotaExhausted => Some(429),
            Fault::ServerError => Some(500),
            Fault::Unavailable => Some(503),
            Fault::Overloaded => Some(529),
            _ => None,
        }
    }

    /// Whether the fault strikes inside a 200 body.
    pub fn is_mid_stream(self) -> bool {
        matches!(
            self,
            Fault::StreamError | Fault::Stall | Fault::Truncate | Fault::Malformed | Fault::Reset
        )
    }

    /// The name used in model strings and in the request log.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::RateLimited => "429",
            Fault::ServerError => "500",
            Fault::Unavailable => "503",
            Fault::Overloaded => "529",
            Fault::QuotaExhausted => "quota",
            Fault::StreamError => "stream_error",
            Fault::Stall => "stall",
            Fault::Truncate => "truncate",
            Fault::Malformed => "malformed",
            Fault::Reset => "reset",
            Fault::SlowFirstByte => "slow_first_byte",
        }
    }
}

impl FromStr for Fault {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value {
            "429" => Fault::RateLimited,
            "500" => Fault::ServerError,
            "503" => Fault::Unavailable,
            "529" => Fault::Overloaded,
            "quota" => Fault::QuotaExhausted,
            "stream_error" => Fault::StreamError,
            "stall" => Fault::Stall,
            "truncate" => Fault::Truncate,
            "malformed" => Fault::Malformed,
            "reset" => Fault::Reset,
            "slow_first_byte" => Fault::SlowFirstByte,
            _ => return Err(()),
        })
    }
}

/// Requests seen per faulty model string, to apply `fault_times`. Only model strings with a
/// `fault` option are counted, so the map stays as small as the set of faults a test uses.
#[derive(Debug, Default)]
pub(crate) struct FaultCounter {
    seen: Mutex<HashMap<String, u32>>,
}

impl FaultCounter {
    /// Counts one more request of `model` and says whether it faults: always without a limit,
    /// else only the first `times` requests.
    pub fn strikes(&self, model: &str, times: Option<u32>) -> bool {
        // A panic while the lock was held cannot leave a counter half-written.
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = match seen.get_mut(model) {
            Some(count) => {
                *count = count.saturating_add(1);
                *count
            }
            None => {
                seen.insert(model.to_owned(), 1);
                1
            }
        };
        times.is_none_or(|limit| count <= limit)
    }

    /// Forgets every count (`POST /__sim/reset`).
    pub fn reset(&self) {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse_and_serde() {
        for name in [
            "429",
            "500",
            "503",
            "529",
            "quota",
            "stream_error",
            "stall",
            "truncate",
            "malformed",
            "reset",
            "slow_first_byte",
        ] {
            let fault: Fault = name.parse().expect("known fault");
            assert_eq!(fault.as_str(), name);
            assert_eq!(
                serde_json::to_value(fault).expect("serializes"),
                serde_json::Value::String(name.to_owned())
            );
        }
        assert!("418".parse::<Fault>().is_err());
    }

    #[test]
    fn counter_limits_per_model_string() {
        let counter = FaultCounter::default();
        assert!(counter.strikes("a:fault=429,fault_times=2", Some(2)));
        assert!(counter.strikes("a:fault=429,fault_times=2", Some(2)));
        assert!(counter.strikes("b:fault=429,fault_times=2", Some(2)));
        assert!(!counter.strikes("a:fault=429,fault_times=2", Some(2)));
        assert!(counter.strikes("c:fault=500", None));
        assert!(!counter.strikes("d:fault=500,fault_times=0", Some(0)));
        counter.reset();
        assert!(counter.strikes("a:fault=429,fault_times=2", Some(2)));
    }
}
