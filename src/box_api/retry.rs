//! The one retry loop for Box calls: capped exponential backoff with full jitter, honouring
//! `Retry-After`, bounded by an attempt count and a wall-clock deadline (`deadline`, the setting
//! `box_call_deadline_secs`) that covers the attempts and the waits between them.
use std::future::Future;
use std::time::{Duration, Instant};

use super::error::{BoxError, BoxErrorKind};
use crate::metrics::GatewayMetrics;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Total time for one call, every attempt and wait included: an attempt still running at the
    /// deadline is dropped, and a wait that would end after it is not started (the last error is
    /// answered, with its `Retry-After` for the gateway's client).
    pub deadline: Duration,
    /// The longest wait taken from a `Retry-After` (`box_rate_max_pause_secs`), and the longest one
    /// a failed call's error carries on to the gateway's client.
    pub max_retry_after: Duration,
}

/// One attempt of a call: its number (from 1) and the call's deadline, which bounds its wait for
/// the pacer's room too.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub number: u32,
    pub deadline: tokio::time::Instant,
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1` (attempt counts from 1): full jitter over a capped
    /// exponential, but never shorter than what Box asked for with `Retry-After` (itself at most
    /// `max_retry_after`).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        let jittered = capped.mul_f64(fastrand::f64());
        retry_after.map_or(jittered, |asked| asked.min(self.max_retry_after).max(jittered))
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts are spent. The error answered
    /// carries a `Retry-After` of at most `max_retry_after`.
    pub async fn run<T, F, Fut>(&self, metrics: &GatewayMetrics, call: F) -> Result<T, BoxError>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, BoxError>>,
    {
        self.attempts(metrics, call)
            .await
            .map_err(|err| err.capped(self.max_retry_after))
    }

    async fn attempts<T, F, Fut>(&self, metrics: &GatewayMetrics, mut call: F) -> Result<T, BoxError>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, BoxError>>,
    {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.deadline;
        let mut attempt = 1;
        // The deadline's error is named after the endpoint that failed last, if any did.
        let mut endpoint = "call";
        loop {
            let this = Attempt {
                number: attempt,
                deadline,
            };
            let answer = match tokio::time::timeout_at(deadline, call(this)).await {
                Ok(answer) => answer,
                Err(_) => {
                    let err = BoxError::new(endpoint, BoxErrorKind::Deadline(self.deadline));
                    tracing::warn!(endpoint, attempt, deadline = ?self.deadline, "Box call passed its deadline");
                    return Err(err);
                }
            };
            match answer {
                Ok(value) => return Ok(value),
                Err(err) => {
                    endpoint = err.endpoint;
                    let Some(reason) = err.retry_reason() else {
                        return Err(err);
                    };
                    if attempt >= self.max_attempts {
                        return Err(err);
                    }
                    let delay = self.delay(attempt, err.retry_after());
                    if tokio::time::Instant::now() + delay > deadline {
                        tracing::warn!(
                            endpoint = err.endpoint,
                            attempt,
                            ?delay,
                            "Box asked for a wait past the call's deadline; giving up"
                        );
                        return Err(err);
                    }
                    metrics
                        .box_retries
                        .with_label_values(&[err.endpoint, reason])
                        .inc();
                    tracing::warn!(endpoint = err.endpoint, attempt, ?delay, elapsed = ?started.elapsed(), error = %err, "retrying Box call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(120),
        }
    }

    #[test]
    fn delay_is_capped_and_jittered() {
        for attempt in 1..40 {
            let d = policy().delay(attempt, None);
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
        assert!(policy().delay(1, None) <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_attempts_and_waits() {
        let metrics = GatewayMetrics::new(&prometheus::Registry::new()).unwrap();
        // An attempt that never ends is dropped at the deadline.
        let started = tokio::time::Instant::now();
        let err = policy()
            .run(&metrics, |_| std::future::pending::<Result<(), BoxError>>())
            .await
            .unwrap_err();
        assert!(matches!(err.kind, BoxErrorKind::Deadline(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        // A Retry-After past the deadline is not waited for: the 429 is answered at once.
        let started = tokio::time::Instant::now();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let err = policy()
            .run(&metrics, |_| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async {
                    Err::<(), _>(BoxError::new(
                        "upload_part",
                        BoxErrorKind::Status {
                            status: 429,
                            body: Box::default(),
                            retry_after: Some(Duration::from_secs(3600)),
                        },
                    ))
                }
            })
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(429));
        assert_eq!(calls.into_inner(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // The client hears the capped wait, not the hour Box (or a proxy) asked for.
        assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    }

    /// A `Retry-After` longer than `max_retry_after` is waited for only that long, within the
    /// deadline: the call lands after the capped wait, not after the hour asked for.
    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_is_waited_for_at_most_the_cap() {
        let metrics = GatewayMetrics::new(&prometheus::Registry::new()).unwrap();
        let policy = RetryPolicy {
            deadline: Duration::from_secs(900),
            ..policy()
        };
        let started = tokio::time::Instant::now();
        let answer = policy
            .run(&metrics, |attempt| async move {
                assert_eq!(attempt.deadline, started + Duration::from_secs(900));
                match attempt.number {
                    1 => Err(BoxError::new(
                        "upload_part",
                        BoxErrorKind::Status {
                            status: 429,
                            body: Box::default(),
                            retry_after: Some(Duration::from_secs(3600)),
                        },
                    )),
                    n => Ok(n),
                }
            })
            .await
            .unwrap();
        assert_eq!(answer, 2);
        assert_eq!(started.elapsed(), Duration::from_secs(120));
    }

    #[test]
    fn retry_after_is_honoured() {
        let d = policy().delay(1, Some(Duration::from_secs(7)));
        assert!(d >= Duration::from_secs(7), "{d:?}");
    }
}
