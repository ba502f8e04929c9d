//! Where state that outlives one request lives: resumable (tus) uploads and `Idempotency-Key`
//! answers. One interface (tusd's store / locker split: values, plus locks with a token), two
//! implementations:
//! - `embedded` (the default): a redb file under `state_dir`; one replica, nothing to install, survives
//!   a restart. Locks are in-process.
//! - `redis` (with `redis_url`): shared by every replica, so any of them can take the next request of an
//!   upload; locks are `SET NX PX` with a random token, released only by their holder.
//!
//! Keys are plain strings (`tus:<id>`, `idem:<caller>:<digest>`); values are opaque bytes. Every value
//! has a time to live, so nothing stays for ever.
mod embedded;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

pub use self::embedded::EmbeddedStore;
pub use self::redis::RedisStore;

#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

pub type StoreResult<T> = Result<T, StoreError>;

/// A held lock: released by `StateStore::unlock` with the same token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub key: String,
    pub token: String,
}

/// The one interface both stores implement (object-safe: the gateway holds an `Arc<dyn StateStore>`).
pub trait StateStore: Send + Sync + 'static {
    /// The value under `key`, unless it is absent or its time is up.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>>;
    /// Sets `key` to `value` for `ttl`.
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> BoxFuture<'a, StoreResult<()>>;
    /// Sets `key` only if it holds nothing: whether it did (atomic).
    fn put_new<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration)
        -> BoxFuture<'a, StoreResult<bool>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<()>>;
    /// Takes the lock `key` for `ttl` unless someone holds it.
    fn lock<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, StoreResult<Option<Lock>>>;
    /// Extends a held lock; false when it was lost (expired, taken by another).
    fn extend<'a>(&'a self, lock: &'a Lock, ttl: Duration) -> BoxFuture<'a, StoreResult<bool>>;
    /// Releases the lock if this token still holds it.
    fn unlock<'a>(&'a self, lock: &'a Lock) -> BoxFuture<'a, StoreResult<()>>;
    /// Remembers that `id` expires at `at` (Unix seconds), for the sweeper.
    fn schedule<'a>(&'a self, id: &'a str, at: u64) -> BoxFuture<'a, StoreResult<()>>;
    fn unschedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>>;
    /// Ids whose time came by `now` (Unix seconds), at most `limit`.
    fn due<'a>(&'a self, now: u64, limit: usize) -> BoxFuture<'a, StoreResult<Vec<String>>>;
    /// `embedded` or `redis`, for the log.
    fn kind(&self) -> &'static str;
}

/// The store the settings ask for: Redis when `redis_url` is set, else the embedded file.
pub fn open(redis_url: Option<&str>, state_dir: &std::path::Path) -> StoreResult<Arc<dyn StateStore>> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisStore::new(url)?),
        None => {
            std::fs::create_dir_all(state_dir)
                .map_err(|e| StoreError(format!("state_dir {}: {e}", state_dir.display())))?;
            Arc::new(EmbeddedStore::open(&state_dir.join("gateway-state.redb"))?)
        }
    })
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What every store must do, run against each (the embedded one in its unit tests, Redis in
/// tests/api against a real `redis-server`). Keys are made unique, so a shared Redis is fine.
#[doc(hidden)]
pub async fn check_store(store: &dyn StateStore) {
    let run = new_token();
    let k = |name: &str| format!("check:{run}:{name}");
    let hour = Duration::from_secs(3600);
    assert!(store.put_new(&k("a"), b"1".to_vec(), hour).await.unwrap());
    assert!(!store.put_new(&k("a"), b"2".to_vec(), hour).await.unwrap());
    assert_eq!(store.get(&k("a")).await.unwrap().as_deref(), Some(&b"1"[..]));
    store
        .put(&k("b"), b"x".to_vec(), Duration::from_millis(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.get(&k("b")).await.unwrap(), None, "expired");
    assert!(store.put_new(&k("b"), b"y".to_vec(), hour).await.unwrap());
    store.delete(&k("a")).await.unwrap();
    assert_eq!(store.get(&k("a")).await.unwrap(), None);

    let lock = store.lock(&k("l"), hour).await.unwrap().expect("free");
    assert!(store.lock(&k("l"), hour).await.unwrap().is_none(), "held");
    let stranger = Lock {
        key: lock.key.clone(),
        token: "someone else".into(),
    };
    store.unlock(&stranger).await.unwrap();
    assert!(
        store.lock(&k("l"), hour).await.unwrap().is_none(),
        "a stranger cannot release it"
    );
    assert!(!store.extend(&stranger, hour).await.unwrap());
    assert!(store.extend(&lock, hour).await.unwrap());
    store.unlock(&lock).await.unwrap();
    let short = store
        .lock(&k("l"), Duration::from_millis(5))
        .await
        .unwrap()
        .expect("released");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        store.lock(&k("l"), hour).await.unwrap().is_some(),
        "an expired lock is free"
    );
    assert!(
        !store.extend(&short, hour).await.unwrap(),
        "an expired lock is lost"
    );

    store.schedule(&k("u1"), 10).await.unwrap();
    store.schedule(&k("u2"), 20).await.unwrap();
    let due = store.due(15, 1000).await.unwrap();
    assert!(due.contains(&k("u1")) && !due.contains(&k("u2")), "{due:?}");
    store.unschedule(&k("u1")).await.unwrap();
    store.unschedule(&k("u2")).await.unwrap();
    assert!(!store.due(15, 1000).await.unwrap().contains(&k("u1")));
}
