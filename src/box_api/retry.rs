//! The one retry loop for Box calls: capped exponential backoff with full jitter, honouring
//! `Retry-After`, bounded by an attempt count and a wall-clock budget.
use std::future::Future;
use std::time::{Duration, Instant};

use super::error::BoxError;
use crate::metrics::GatewayMetrics;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1` (attempt counts from 1): full jitter over a capped
    /// exponential, but never shorter than what Box asked for with `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        let jittered = capped.mul_f64(fastrand::f64());
        retry_after.map_or(jittered, |asked| asked.max(jittered))
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts are spent.
    /// `on_retry` runs before each new attempt (e.g. to list parts after a 5xx on a part).
    pub async fn run<T, F, Fut>(&self, metrics: &GatewayMetrics, mut call: F) -> Result<T, BoxError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, BoxError>>,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match call(attempt).await {
                Ok(value) => return Ok(value),
                Err(err) => {
                    let Some(reason) = err.retry_reason() else {
                        return Err(err);
                    };
                    if attempt >= self.max_attempts {
                        return Err(err);
                    }
                    let delay = self.delay(attempt, err.retry_after());
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

    #[test]
    fn retry_after_is_honoured() {
        let d = policy().delay(1, Some(Duration::from_secs(7)));
        assert!(d >= Duration::from_secs(7), "{d:?}");
    }
}
