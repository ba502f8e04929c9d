//! A lock held while work runs (tusd's locker; the tus upload's lock, an `Idempotency-Key`'s claim):
//! extended every third of its time to live for as long as the work runs, released when it ends, and
//! released in the background when the request holding it is dropped (a client that left), so a lock
//! is never held longer than its work, or than its time to live after a crash.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{Lock, StateStore, StoreResult};

/// The lock was lost while the work ran: it expired (the store did not hear from us in time) or
/// another request took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLost;

pub struct Lease {
    store: Arc<dyn StateStore>,
    lock: Lock,
    ttl: Duration,
    /// Released by `release`; otherwise by `Drop`, in the background.
    released: bool,
}

impl Lease {
    /// Takes the lock `key` for `ttl`; None when someone holds it.
    pub async fn take(store: &Arc<dyn StateStore>, key: &str, ttl: Duration) -> StoreResult<Option<Self>> {
        Ok(store.lock(key, ttl).await?.map(|lock| Self {
            store: store.clone(),
            lock,
            ttl,
            released: false,
        }))
    }

    /// The lock: the fencing token of the writes made while it is held.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Runs `work` while keeping the lock alive; when the lock is lost, `work` is stopped where it
    /// is (dropped: it saves nothing more) and the answer is `LeaseLost`.
    pub async fn while_held<T>(&self, work: impl Future<Output = T>) -> Result<T, LeaseLost> {
        tokio::select! {
            out = work => Ok(out),
            lost = self.keep_alive() => Err(lost),
        }
    }

    /// Runs `work` while keeping the lock alive; when the lock is lost, `on_lost` is called once and
    /// `work` goes on (it may be landing a file: stopping it would not undo that).
    pub async fn during<T>(&self, work: impl Future<Output = T>, on_lost: impl FnOnce()) -> T {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => return out,
            LeaseLost = self.keep_alive() => on_lost(),
        }
        work.await
    }

    /// Extends the lock every third of its time to live; returns once it is lost. A store that does
    /// not answer is no loss: the lock may still be held, and the fenced writes decide.
    async fn keep_alive(&self) -> LeaseLost {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self.store.extend(&self.lock, self.ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(lock = %self.lock.key, "lost a lock while its work ran");
                    return LeaseLost;
                }
                Err(err) => tracing::warn!(lock = %self.lock.key, error = %err, "could not extend a lock"),
            }
        }
    }

    /// Releases the lock now (if this token still holds it).
    pub async fn release(mut self) {
        self.released = true;
        if let Err(err) = self.store.unlock(&self.lock).await {
            tracing::warn!(lock = %self.lock.key, error = %err, "could not release a lock; it expires by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            let (store, lock) = (self.store.clone(), self.lock.clone());
            tokio::spawn(async move {
                let _ = store.unlock(&lock).await;
            });
        }
    }
}
