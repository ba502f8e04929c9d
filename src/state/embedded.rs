//! The embedded store: one redb file (a well-kept embedded database: ACID, crash-safe, a file lock so
//! two processes cannot share it). Each value is stored behind its expiry time; expired values read as
//! absent and are purged by the sweeper's calls to `due`. Locks live in this process only: one replica
//! is what the embedded store is for.
// redb's own error type is large; it only crosses the blocking pool's boundary once per call.
#![allow(clippy::result_large_err)]
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redb::{Database, ReadableTable, TableDefinition};

use super::{new_token, Lock, StateStore, StoreError, StoreResult};

/// key -> expiry (Unix milliseconds, big-endian) followed by the value.
const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");
/// upload id -> when it expires (Unix seconds).
const EXPIRY: TableDefinition<&str, u64> = TableDefinition::new("expiry");

pub struct EmbeddedStore {
    db: Arc<Database>,
    locks: Mutex<HashMap<String, (String, Instant)>>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn live(stored: &[u8]) -> Option<&[u8]> {
    let (head, value) = stored.split_at_checked(8)?;
    let expires = u64::from_be_bytes(head.try_into().ok()?);
    (expires > now_ms()).then_some(value)
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = Database::create(path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(VALUES).map_err(err)?;
        txn.open_table(EXPIRY).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self {
            db: Arc::new(db),
            locks: Mutex::default(),
        })
    }

    /// redb is synchronous: its calls run on tokio's blocking pool.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let db = self.db.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(err)?
                .map_err(err)
        }
        .boxed()
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> BoxFuture<'static, StoreResult<T>> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let out = f(&txn)?;
            txn.commit()?;
            Ok(out)
        })
    }
}

fn stamped(value: &[u8], ttl: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&(now_ms() + ttl.as_millis() as u64).to_be_bytes());
    out.extend_from_slice(value);
    out
}

impl StateStore for EmbeddedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(VALUES)?;
            Ok(table
                .get(key.as_str())?
                .and_then(|v| live(v.value()).map(<[u8]>::to_vec)))
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> BoxFuture<'a, StoreResult<()>> {
        let key = key.to_owned();
        self.write(move |txn| {
            txn.open_table(VALUES)?
                .insert(key.as_str(), stamped(&value, ttl).as_slice())?;
            Ok(())
        })
    }

    fn put_new<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let key = key.to_owned();
        // redb runs one write transaction at a time: the read and the insert are atomic.
        self.write(move |txn| {
            let mut table = txn.open_table(VALUES)?;
            if table
                .get(key.as_str())?
                .is_some_and(|v| live(v.value()).is_some())
            {
                return Ok(false);
            }
            table.insert(key.as_str(), stamped(&value, ttl).as_slice())?;
            Ok(true)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let key = key.to_owned();
        self.write(move |txn| {
            txn.open_table(VALUES)?.remove(key.as_str())?;
            Ok(())
        })
    }

    fn lock<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, StoreResult<Option<Lock>>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let taken = locks.get(key).is_some_and(|(_, until)| *until > now);
        let lock = (!taken).then(|| {
            let token = new_token();
            locks.insert(key.to_owned(), (token.clone(), now + ttl));
            Lock {
                key: key.to_owned(),
                token,
            }
        });
        async move { Ok(lock) }.boxed()
    }

    fn extend<'a>(&'a self, lock: &'a Lock, ttl: Duration) -> BoxFuture<'a, StoreResult<bool>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let held = match locks.get_mut(&lock.key) {
            Some((token, until)) if *token == lock.token => {
                *until = Instant::now() + ttl;
                true
            }
            _ => false,
        };
        async move { Ok(held) }.boxed()
    }

    fn unlock<'a>(&'a self, lock: &'a Lock) -> BoxFuture<'a, StoreResult<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks
            .get(&lock.key)
            .is_some_and(|(token, _)| *token == lock.token)
        {
            locks.remove(&lock.key);
        }
        async { Ok(()) }.boxed()
    }

    fn schedule<'a>(&'a self, id: &'a str, at: u64) -> BoxFuture<'a, StoreResult<()>> {
        let id = id.to_owned();
        self.write(move |txn| {
            txn.open_table(EXPIRY)?.insert(id.as_str(), at)?;
            Ok(())
        })
    }

    fn unschedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let id = id.to_owned();
        self.write(move |txn| {
            txn.open_table(EXPIRY)?.remove(id.as_str())?;
            Ok(())
        })
    }

    fn due<'a>(&'a self, now: u64, limit: usize) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        self.write(move |txn| {
            // Values whose time is up go too (idempotency answers nobody asked for again).
            let mut values = txn.open_table(VALUES)?;
            values.retain(|_, v| live(v).is_some())?;
            let expiry = txn.open_table(EXPIRY)?;
            let mut due = Vec::new();
            for entry in expiry.iter()? {
                let (id, at) = entry?;
                if at.value() <= now && due.len() < limit {
                    due.push(id.value().to_owned());
                }
            }
            Ok(due)
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn behaves_as_a_state_store_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        super::super::check_store(&store).await;
        store
            .put("kept", b"y".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
        drop(store);
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(store.get("kept").await.unwrap().as_deref(), Some(&b"y"[..]));
    }
}
