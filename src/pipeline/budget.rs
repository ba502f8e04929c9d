//! The process-wide memory budget: a semaphore counted in bytes, shared by all uploads.
//!
//! A part takes its bytes from the budget *before* it is filled from the request body, so when the
//! budget is spent the upload stops polling the body and TCP slows the client down; nothing fails.
//! Bound: bytes of file content held by the pipeline <= `memory_budget_bytes`, whatever the number or
//! size of uploads (plus actix-http's own buffers per connection, capped by `max_connections`:
//! docs/operations.md, "Sizing the memory budget").
//!
//! The wait is bounded (`budget_wait_secs`): an upload that cannot get its bytes in that time is
//! refused (503 `busy`) instead of waiting behind slow clients for ever, and while it waits its own
//! body is not read, so nothing else would end the wait. Waiters are served in arrival order: tokio's
//! semaphore is FIFO, `acquire_many_owned` included, so a large part is never overtaken by small ones.
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    total: u64,
    gauge: IntGauge,
    held: Arc<AtomicI64>,
    peak: IntGauge,
    /// None: wait as long as it takes.
    max_wait: Option<Duration>,
}

/// Bytes taken from the budget, given back on drop.
pub struct BudgetPermit {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    budget: MemoryBudget,
}

#[derive(Debug, thiserror::Error)]
#[error("{wanted} bytes can never fit in the memory budget of {total} bytes")]
pub struct OverBudget {
    pub wanted: u64,
    pub total: u64,
}

/// Why the budget's bytes were not given.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error("no {wanted} bytes of the memory budget came free within {waited:?}")]
    Busy { wanted: u64, waited: Duration },
}

impl MemoryBudget {
    /// `total` is capped at what a semaphore can count (far beyond any real budget).
    pub fn new(total: u64, gauge: IntGauge, peak: IntGauge) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS as u64);
        Self {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            total,
            gauge,
            held: Arc::default(),
            peak,
            max_wait: None,
        }
    }

    /// The same budget, whose `acquire` gives up after `max_wait` (`budget_wait_secs`).
    pub fn with_max_wait(self, max_wait: Duration) -> Self {
        Self {
            max_wait: Some(max_wait),
            ..self
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Waits until `bytes` are free, in arrival order, at most `max_wait`. Fails at once when they
    /// could never be (`OverBudget`), or when the wait is over (`Busy`).
    pub async fn acquire(&self, bytes: u64) -> Result<BudgetPermit, BudgetError> {
        let over = || OverBudget {
            wanted: bytes,
            total: self.total,
        };
        if bytes > self.total || bytes > u32::MAX as u64 {
            return Err(over().into());
        }
        let permit = match bytes {
            0 => None,
            n => {
                let wait = self.semaphore.clone().acquire_many_owned(n as u32);
                let acquired = match self.max_wait {
                    // A timed-out waiter is dropped from the queue; those behind it move up.
                    Some(max_wait) => {
                        tokio::time::timeout(max_wait, wait)
                            .await
                            .map_err(|_| BudgetError::Busy {
                                wanted: bytes,
                                waited: max_wait,
                            })?
                    }
                    None => wait.await,
                };
                Some(acquired.map_err(|_| over())?)
            }
        };
        let now = self.held.fetch_add(bytes as i64, Ordering::SeqCst) + bytes as i64;
        self.gauge.add(bytes as i64);
        if now > self.peak.get() {
            self.peak.set(now);
        }
        Ok(BudgetPermit {
            _permit: permit,
            bytes,
            budget: self.clone(),
        })
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes as i64, Ordering::SeqCst);
        self.budget.gauge.sub(self.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(total: u64) -> MemoryBudget {
        MemoryBudget::new(
            total,
            IntGauge::new("g", "g").unwrap(),
            IntGauge::new("p", "p").unwrap(),
        )
    }

    #[tokio::test]
    async fn waits_until_bytes_are_given_back() {
        let b = budget(100);
        let first = b.acquire(80).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire(30).await.map(|p| p.bytes) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        assert_eq!(b.gauge.get(), 80);
        drop(first);
        assert_eq!(waiter.await.unwrap().unwrap(), 30);
        assert_eq!(b.gauge.get(), 0);
        assert_eq!(b.peak.get(), 80);
    }

    #[tokio::test]
    async fn refuses_what_can_never_fit() {
        assert!(matches!(
            budget(10).acquire(11).await,
            Err(BudgetError::OverBudget(_))
        ));
        assert!(budget(10).acquire(0).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_max_wait_is_busy_and_leaves_the_queue() {
        let b = budget(100).with_max_wait(Duration::from_secs(30));
        let held = b.acquire(90).await.unwrap();
        let started = tokio::time::Instant::now();
        match b.acquire(20).await {
            Err(BudgetError::Busy { wanted: 20, waited }) => assert_eq!(waited, Duration::from_secs(30)),
            other => panic!("expected Busy, got {:?}", other.map(|p| p.bytes)),
        }
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        // The timed-out waiter took nothing and holds no place: the next one gets the bytes once free.
        assert_eq!(b.gauge.get(), 90);
        drop(held);
        assert_eq!(b.acquire(100).await.unwrap().bytes, 100);
    }

    /// FIFO: a large waiter is served before small ones that came after it, even when the small ones
    /// would fit in what is free meanwhile.
    #[tokio::test]
    async fn waiters_are_served_in_arrival_order() {
        let b = budget(100);
        let first = b.acquire(60).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, bytes) in [("big", 80u64), ("small1", 10), ("small2", 10)] {
            let (b, order) = (b.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = b.acquire(bytes).await.unwrap();
                order.lock().unwrap().push(name);
                permit
            }));
            // Each is queued before the next one asks.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // 40 bytes are free: enough for both small ones, but the big one is first in line.
        assert!(
            order.lock().unwrap().is_empty(),
            "small waiters overtook the big one"
        );
        drop(first);
        for t in tasks {
            drop(t.await.unwrap());
        }
        assert_eq!(*order.lock().unwrap(), ["big", "small1", "small2"]);
    }
}
