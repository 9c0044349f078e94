//! When a failed provider call is worth repeating, and after how long.
//!
//! The policy matches the official OpenAI and Anthropic SDKs, so conclave behaves the way
//! users of those SDKs expect:
//!
//! 1. `x-should-retry: true|false` from the server decides when present.
//! 2. Otherwise retryable are: HTTP 408, 409, 429 and every 5xx (529 "overloaded" included),
//!    and connection failures. A 429 whose body says the quota or spend limit is exhausted is
//!    not: waiting will not help. Errors after the stream started (in-stream error, malformed
//!    data, truncation) are retried too, by repeating the whole turn.
//! 3. Never retried: a missing API key, a configuration error, 401, 403 and other 4xx.
//! 4. The delay is the server's `retry-after-ms` / `retry-after` when it is between 0 and 60
//!    seconds; otherwise exponential backoff, 0.5 s × 2^attempt capped at 8 s, reduced by a
//!    random jitter of up to 25 % so that many agents failing together do not retry together.
//!
//! The policy is pure (the jitter sample is a parameter of [`RetryPolicy::delay_with_jitter`]).
//! [`call_with_retries`] is the one loop that applies it: it counts the failures, asks the
//! policy, reports each retry to its caller and sleeps. Every caller (the turn worker,
//! `conclave probe`, tests) retries the same way because they share that loop; the caller
//! only says what one attempt is and what to do when a retry is scheduled (log it, journal
//! it).

use std::future::Future;
use std::time::Duration;

use super::error::{ProviderError, quota_exhausted};

/// The first backoff delay.
pub const INITIAL_DELAY: Duration = Duration::from_millis(500);
/// The longest backoff delay.
pub const MAX_DELAY: Duration = Duration::from_secs(8);
/// A server-requested delay longer than this is ignored in favour of the backoff (SDK rule:
/// a very long `retry-after` usually means "come back tomorrow", not "wait a minute").
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(60);
/// The largest fraction the jitter takes off a backoff delay.
pub const MAX_JITTER: f64 = 0.25;

/// How many times one provider call is retried (from the backend's `max_retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    /// The SDK default: two retries.
    fn default() -> Self {
        Self { max_retries: 2 }
    }
}

impl RetryPolicy {
    /// The delay before the next try after `error`, or `None` to give up. `attempt` is the
    /// 0-based count of failures so far (0 after the first failure).
    pub fn delay_for(&self, attempt: u32, error: &ProviderError) -> Option<Duration> {
        self.delay_with_jitter(attempt, error, rand::random::<f64>())
    }

    /// [`Self::delay_for`] with the random sample given (`jitter_sample` in `[0, 1)`; the
    /// backoff is reduced by `MAX_JITTER × jitter_sample`), for deterministic tests.
    pub fn delay_with_jitter(
        &self,
        attempt: u32,
        error: &ProviderError,
        jitter_sample: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_retries || !is_retryable(error) {
            return None;
        }
        if let ProviderError::Http {
            retry_after: Some(delay),
            ..
        } = error
            && !delay.is_zero()
            && *delay <= MAX_SERVER_DELAY
        {
            return Some(*delay);
        }
        Some(backoff(attempt, jitter_sample))
    }
}

/// Runs `attempt` until it succeeds, fails with an error the `policy` does not retry, or the
/// retry budget is spent; returns the last outcome.
///
/// Before each retry, `on_retry(attempt_no, wait, &error)` is called (`attempt_no` counts the
/// retries from 1, so it is also the number of failures so far), then the loop sleeps `wait`
/// with [`tokio::time::sleep`]: tests on a paused clock run the backoff in virtual time, and
/// a caller that is cancelled (its future dropped) stops waiting at once. Every wait is
/// bounded by the policy ([`MAX_SERVER_DELAY`] for a server's hint, [`MAX_DELAY`] for the
/// backoff) and so is their number (`max_retries`).
///
/// A failure that must not be retried but is not a [`ProviderError`] (the turn worker's stall)
/// belongs in `T`: return it as `Ok` and the loop hands it back untouched.
pub async fn call_with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
    mut on_retry: impl FnMut(u32, Duration, &ProviderError),
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut failures = 0u32;
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(wait) = policy.delay_for(failures, &error) else {
            return Err(error);
        };
        failures += 1;
        on_retry(failures, wait, &error);
        tokio::time::sleep(wait).await;
    }
}

/// The exponential backoff for a failure count, with jitter.
pub fn backoff(attempt: u32, jitter_sample: f64) -> Duration {
    let base = INITIAL_DELAY.saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let capped = base.min(MAX_DELAY);
    let sample = if jitter_sample.is_finite() {
        jitter_sample.clamp(0.0, 1.0)
    } else {
        0.0
    };
    capped.mul_f64(1.0 - MAX_JITTER * sample)
}

/// Whether repeating the call may succeed (ignoring the retry budget).
pub fn is_retryable(error: &ProviderError) -> bool {
    match error {
        ProviderError::MissingApiKey { .. } | ProviderError::Config(_) => false,
        ProviderError::Http {
            status,
            body,
            should_retry,
            ..
        } => match should_retry {
            Some(decision) => *decision,
            None => match status {
                408 | 409 => true,
                429 => !quota_exhausted(body),
                s => *s >= 500,
            },
        },
        ProviderError::Connect(_) | ProviderError::Malformed(_) | ProviderError::Truncated => true,
        ProviderError::InStream { message, code, .. } => {
            !quota_exhausted(message) && !code.as_deref().is_some_and(quota_exhausted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> ProviderError {
        ProviderError::Http {
            provider: "openai".into(),
            status,
            body: String::new(),
            retry_after: None,
            should_retry: None,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy { max_retries: 10 };

    #[test]
    fn status_classification() {
        for status in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(is_retryable(&http(status)), "{status}");
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(!is_retryable(&http(status)), "{status}");
        }
        assert!(is_retryable(&ProviderError::Connect("refused".into())));
        assert!(is_retryable(&ProviderError::Truncated));
        assert!(is_retryable(&ProviderError::Malformed("x".into())));
        assert!(is_retryable(&ProviderError::InStream {
            kind: "server_error".into(),
            message: "overloaded".into(),
            code: None,
        }));
        assert!(!is_retryable(&ProviderError::MissingApiKey {
            provider: "openai".into(),
            env_var: "OPENAI_API_KEY".into(),
        }));
        assert!(!is_retryable(&ProviderError::Config("x".into())));
    }

    #[test]
    fn should_retry_header_overrides() {
        let mut forced = http(400);
        if let ProviderError::Http { should_retry, .. } = &mut forced {
            *should_retry = Some(true);
        }
        assert!(POLICY.delay_with_jitter(0, &forced, 0.0).is_some());
        let mut refused = http(503);
        if let ProviderError::Http { should_retry, .. } = &mut refused {
            *should_retry = Some(false);
        }
        assert_eq!(POLICY.delay_with_jitter(0, &refused, 0.0), None);
    }

    #[test]
    fn quota_429_is_not_retried() {
        let mut quota = http(429);
        if let ProviderError::Http { body, .. } = &mut quota {
            *body = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#.into();
        }
        assert_eq!(POLICY.delay_for(0, &quota), None);
        let mut spend = http(429);
        if let ProviderError::Http { body, .. } = &mut spend {
            *body = "Your monthly spend limit has been reached".into();
        }
        assert_eq!(POLICY.delay_for(0, &spend), None);
        assert!(POLICY.delay_for(0, &http(429)).is_some());
    }

    #[test]
    fn server_delay_is_honoured_within_a_minute() {
        let with_delay = |d: Duration| ProviderError::Http {
            provider: "openai".into(),
            status: 429,
            body: String::new(),
            retry_after: Some(d),
            should_retry: None,
        };
        assert_eq!(
            POLICY.delay_with_jitter(0, &with_delay(Duration::from_millis(1500)), 0.9),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            POLICY.delay_with_jitter(3, &with_delay(Duration::from_secs(60)), 0.9),
            Some(Duration::from_secs(60))
        );
        // Too long or zero: fall back to the backoff.
        assert_eq!(
            POLICY.delay_with_jitter(1, &with_delay(Duration::from_secs(3600)), 0.0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            POLICY.delay_with_jitter(0, &with_delay(Duration::ZERO), 0.0),
            Some(Duration::from_millis(500))
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let error = http(500);
        let delays: Vec<_> = (0..7)
            .map(|attempt| POLICY.delay_with_jitter(attempt, &error, 0.0))
            .collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(
            delays,
            vec![
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(8000),
                ms(8000)
            ]
        );
        assert_eq!(backoff(u32::MAX, 0.0), MAX_DELAY);
    }

    #[test]
    fn jitter_takes_off_at_most_a_quarter() {
        assert_eq!(backoff(4, 0.999_999).as_millis(), 6000);
        assert_eq!(backoff(0, 1.0), Duration::from_millis(375));
        assert_eq!(backoff(0, f64::NAN), INITIAL_DELAY);
        assert_eq!(backoff(0, -3.0), INITIAL_DELAY);
        for attempt in 0..6 {
            for _ in 0..200 {
                let Some(delay) = POLICY.delay_for(attempt, &http(503)) else {
                    panic!("503 must be retried");
                };
                let full = backoff(attempt, 0.0);
                assert!(delay <= full, "{delay:?} > {full:?}");
                assert!(delay >= full.mul_f64(0.75), "{delay:?} too short");
            }
        }
    }

    /// Runs [`call_with_retries`] over scripted outcomes; returns the result, the number of
    /// attempts and the waits reported.
    async fn scripted(
        policy: RetryPolicy,
        outcomes: Vec<Result<&'static str, ProviderError>>,
    ) -> (
        Result<&'static str, ProviderError>,
        usize,
        Vec<(u32, Duration)>,
    ) {
        let mut outcomes = outcomes.into_iter();
        let mut attempts = 0;
        let mut waits = Vec::new();
        let result = call_with_retries(
            &policy,
            || {
                attempts += 1;
                let next = outcomes.next().unwrap_or(Ok("default"));
                async move { next }
            },
            |attempt, wait, _error| waits.push((attempt, wait)),
        )
        .await;
        (result, attempts, waits)
    }

    fn http_after(status: u16, delay: Duration) -> ProviderError {
        ProviderError::Http {
            provider: "openai".into(),
            status,
            body: String::new(),
            retry_after: Some(delay),
            should_retry: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_sleeps_the_waits() {
        let started = tokio::time::Instant::now();
        let (result, attempts, waits) = scripted(
            RetryPolicy { max_retries: 3 },
            vec![
                Err(http_after(429, Duration::from_millis(700))),
                Err(http_after(503, Duration::from_secs(2))),
                Ok("done"),
            ],
        )
        .await;
        assert_eq!(result.ok(), Some("done"));
        assert_eq!(attempts, 3);
        assert_eq!(
            waits,
            [(1, Duration::from_millis(700)), (2, Duration::from_secs(2))]
        );
        assert_eq!(started.elapsed(), Duration::from_millis(2700));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_a_non_retryable_error_and_at_the_budget() {
        let (result, attempts, waits) = scripted(
            RetryPolicy { max_retries: 5 },
            vec![Err(http(500)), Err(http(401)), Ok("never")],
        )
        .await;
        assert_eq!(result.err().and_then(|e| e.http_status()), Some(401));
        assert_eq!((attempts, waits.len()), (2, 1));

        let (result, attempts, waits) = scripted(
            RetryPolicy { max_retries: 2 },
            vec![Err(http(500)), Err(http(502)), Err(http(503)), Ok("never")],
        )
        .await;
        assert_eq!(result.err().and_then(|e| e.http_status()), Some(503));
        assert_eq!(attempts, 3);
        assert_eq!(waits.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);

        let (result, attempts, _) =
            scripted(RetryPolicy { max_retries: 0 }, vec![Err(http(500))]).await;
        assert!(result.is_err());
        assert_eq!(attempts, 1);
    }

    #[test]
    fn gives_up_after_max_retries() {
        let policy = RetryPolicy { max_retries: 2 };
        assert!(policy.delay_for(0, &http(500)).is_some());
        assert!(policy.delay_for(1, &http(500)).is_some());
        assert_eq!(policy.delay_for(2, &http(500)), None);
        assert_eq!(
            RetryPolicy { max_retries: 0 }.delay_for(0, &http(500)),
            None
        );
    }
}
