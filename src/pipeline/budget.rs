//! The process-wide memory budget: a semaphore counted in bytes, shared by all uploads.
//!
//! A part takes its bytes from the budget *before* it is filled from the request body, so when the
//! budget is spent the upload stops polling the body and TCP slows the client down; nothing fails.
//! Bound: bytes of file content held by the pipeline <= `memory_budget_bytes`, whatever the number or
//! size of uploads (plus actix-http's own read buffer of about 32 KiB per connection).
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    total: u64,
    gauge: IntGauge,
    held: Arc<AtomicI64>,
    peak: IntGauge,
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
        }
    }

    /// Waits until `bytes` are free. Fails only when they could never be.
    pub async fn acquire(&self, bytes: u64) -> Result<BudgetPermit, OverBudget> {
        let over = || OverBudget {
            wanted: bytes,
            total: self.total,
        };
        if bytes > self.total || bytes > u32::MAX as u64 {
            return Err(over());
        }
        let permit = match bytes {
            0 => None,
            n => Some(
                self.semaphore
                    .clone()
                    .acquire_many_owned(n as u32)
                    .await
                    .map_err(|_| over())?,
            ),
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
        assert!(budget(10).acquire(11).await.is_err());
        assert!(budget(10).acquire(0).await.is_ok());
    }
}
