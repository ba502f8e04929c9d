//! Where state that outlives one request, or is shared by the replicas, lives: resumable (tus)
//! uploads, `Idempotency-Key` answers, API keys' quotas, the Box pacer's rates, the completion events'
//! outbox, upload links' file slots and each owner's open uploads. One interface (tusd's store / locker
//! split: values, plus locks with a token), two implementations:
//! - `embedded` (the default): a redb file under `state_dir`; one replica, nothing to install, survives
//!   a restart. Locks are in-process.
//! - `redis` (with `redis_url`): shared by every replica, so any of them can take the next request of an
//!   upload; locks are `SET NX PX` with a random token, released only by their holder.
//!
//! Keys are plain strings, every one made in `keys.rs`; values are opaque bytes. Every value has a
//! time to live, so nothing stays for ever (the outbox's entries stay until delivered or dead).
//!
//! A tus upload's unfinished part (up to one Box part, or a direct upload's whole file) is kept apart
//! from its small record, written only by a fenced write (`put_fenced`: atomic with the check that
//! the writer still holds the upload's lock, and with the count of all unfinished parts' bytes, so
//! that count stays right across crashes and replicas) and read only by a PATCH (`get_pending`). The
//! open uploads of each owner are a set of ids with their expiry (`open_upload`): expired ids drop
//! out of the count by themselves, so a crash or a missed cleanup never leaves it too high.
pub mod clock;
mod embedded;
pub mod keys;
mod lease;
pub mod rate;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub use self::clock::{now_ms, now_secs};
pub use self::embedded::EmbeddedStore;
pub use self::lease::{Lease, LeaseLost};
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

/// A write that is made only while `lock` is still held (its token is the fencing token), checked
/// atomically with the write: a Lua script in Redis, one transaction in redb.
#[derive(Debug, Clone)]
pub struct FencedWrite {
    /// The record's key and its new value (None: the record is deleted).
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub ttl: Duration,
    /// The unfinished part's key and its new bytes (None: left as it is; empty: deleted). Unfinished
    /// parts have no time to live of their own: they go with their record (`forget`, the sweeper),
    /// so the count of their bytes never keeps bytes that were dropped behind its back.
    pub pending_key: String,
    pub pending: Option<Bytes>,
    /// A part that grows may not take all unfinished parts together past this many bytes.
    pub max_pending_bytes: u64,
}

/// What a fenced write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Saved,
    /// The lock was lost (expired, taken by another): nothing was written.
    LockLost,
    /// The unfinished part would pass `max_pending_bytes`: nothing was written.
    Full,
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
    /// Writes an upload's record and unfinished part, atomically, only while `lock` is held.
    fn put_fenced<'a>(&'a self, lock: &'a Lock, write: FencedWrite) -> BoxFuture<'a, StoreResult<Fenced>>;
    /// An upload's unfinished part, as written by `put_fenced`.
    fn get_pending<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>>;
    /// The bytes of every unfinished part in the store, together.
    fn pending_bytes(&self) -> BoxFuture<'_, StoreResult<u64>>;
    /// Counts `id` among `owner`'s open uploads until `expires_at` (Unix seconds), unless the owner
    /// already has `max` open at `now`: whether it was counted (atomic).
    fn open_upload<'a>(
        &'a self,
        owner: &'a str,
        id: &'a str,
        expires_at: u64,
        now: u64,
        max: usize,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// `id` is no longer open (landed, terminated, expired, failed).
    fn close_upload<'a>(&'a self, owner: &'a str, id: &'a str) -> BoxFuture<'a, StoreResult<()>>;
    /// `embedded` or `redis`, for the log.
    fn kind(&self) -> &'static str;
    /// Stores the outbox entry `id` (a completion event waiting for delivery) with `value`, due at
    /// `due_ms` (Unix milliseconds); `created_ms` orders the entries by age (kept from the first put
    /// of `id`). The entry and its place in the queue are written together (atomic), and stay until
    /// `outbox_remove`: the outbox has no time to live, the delivery worker decides when an entry
    /// is dead.
    fn outbox_put<'a>(
        &'a self,
        id: &'a str,
        value: Vec<u8>,
        created_ms: u64,
        due_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>>;
    /// Ids of outbox entries due by `now_ms`, earliest first, at most `limit`.
    fn outbox_due<'a>(&'a self, now_ms: u64, limit: usize) -> BoxFuture<'a, StoreResult<Vec<String>>>;
    fn outbox_get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>>;
    fn outbox_remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>>;
    /// How many entries the outbox holds, and the `created_ms` of the oldest.
    fn outbox_stats(&self) -> BoxFuture<'_, StoreResult<(u64, Option<u64>)>>;
    /// Box rate limits and per-key quotas: takes `take`'s lanes from the rate state under `key`,
    /// all or none (atomic): 0 when taken, else the milliseconds to wait before asking again.
    fn rate_take<'a>(&'a self, key: &'a str, take: rate::RateTake) -> BoxFuture<'a, StoreResult<u64>>;
    /// Gives back a take made under `key` with the same lanes (`rate::give_back`, atomic): an
    /// admission refused before its upload reached Box returns what it took.
    fn rate_give_back<'a>(&'a self, key: &'a str, take: rate::RateTake) -> BoxFuture<'a, StoreResult<()>>;
    /// Box answered 429 for the principal under `key`: pauses it and lowers its rate (atomic).
    fn rate_throttle<'a>(
        &'a self,
        key: &'a str,
        throttle: rate::RateThrottle,
    ) -> BoxFuture<'a, StoreResult<()>>;
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

    check_fenced_writes(store, &k).await;
    check_open_uploads(store, &k).await;
    check_outbox(store, &k).await;
    check_rates(store, &k).await;
}

async fn check_outbox(store: &dyn StateStore, k: &dyn Fn(&str) -> String) {
    let (depth, _) = store.outbox_stats().await.unwrap();
    store.outbox_put(&k("e1"), b"one".to_vec(), 5, 100).await.unwrap();
    store.outbox_put(&k("e2"), b"two".to_vec(), 7, 50).await.unwrap();
    let due = store.outbox_due(120, 1000).await.unwrap();
    let mine: Vec<_> = due.iter().filter(|id| id.starts_with(&k(""))).collect();
    assert_eq!(mine, [&k("e2"), &k("e1")], "earliest first");
    assert!(!store.outbox_due(60, 1000).await.unwrap().contains(&k("e1")));
    // A retry moves the entry's due time and value, never its age.
    store
        .outbox_put(&k("e2"), b"two'".to_vec(), 9, 500)
        .await
        .unwrap();
    assert!(!store.outbox_due(120, 1000).await.unwrap().contains(&k("e2")));
    assert_eq!(
        store.outbox_get(&k("e2")).await.unwrap().as_deref(),
        Some(&b"two'"[..])
    );
    let (n, oldest) = store.outbox_stats().await.unwrap();
    assert_eq!(n, depth + 2);
    assert!(oldest.is_some_and(|o| o <= 5), "{oldest:?}");
    store.outbox_remove(&k("e1")).await.unwrap();
    store.outbox_remove(&k("e2")).await.unwrap();
    assert_eq!(store.outbox_get(&k("e1")).await.unwrap(), None);
    assert!(!store.outbox_due(1000, 1000).await.unwrap().contains(&k("e2")));
    assert_eq!(store.outbox_stats().await.unwrap().0, depth);
}

async fn check_rates(store: &dyn StateStore, k: &dyn Fn(&str) -> String) {
    use rate::{Lane, RateTake, RateThrottle};
    let now = now_secs() * 1000;
    let lane = |burst: f64| Lane {
        interval_ms: 1000.0,
        burst,
        cost: 1.0,
    };
    let take = |now_ms: u64, second: bool| RateTake {
        now_ms,
        lanes: [Some(lane(2.0)), second.then(|| lane(1.0))],
        recovery_ms: 60_000,
    };
    let key = k("rate");
    assert_eq!(store.rate_take(&key, take(now, true)).await.unwrap(), 0);
    // Lane 1 is spent, so lane 0 is left as it was: one more call still goes, then none.
    assert_eq!(store.rate_take(&key, take(now, true)).await.unwrap(), 1000);
    assert_eq!(store.rate_take(&key, take(now, false)).await.unwrap(), 0);
    assert_eq!(store.rate_take(&key, take(now, false)).await.unwrap(), 1000);
    assert_eq!(
        store.rate_take(&k("other"), take(now, true)).await.unwrap(),
        0,
        "per key"
    );
    assert_eq!(store.rate_take(&key, take(now + 1000, false)).await.unwrap(), 0);
    let throttle = RateThrottle {
        now_ms: now + 1000,
        until_ms: now + 6000,
        recovery_ms: 60_000,
        grace_ms: 5000,
        floor: 0.1,
    };
    store.rate_throttle(&key, throttle).await.unwrap();
    assert_eq!(
        store.rate_take(&key, take(now + 2000, false)).await.unwrap(),
        4000,
        "paused"
    );
    // After the pause, at about half the rate: the burst, then an interval of about 2 s.
    assert_eq!(store.rate_take(&key, take(now + 6000, false)).await.unwrap(), 0);
    assert_eq!(store.rate_take(&key, take(now + 6000, false)).await.unwrap(), 0);
    let wait = store.rate_take(&key, take(now + 6000, false)).await.unwrap();
    assert!((1500..=2000).contains(&wait), "{wait}");
    // A take given back is there again, once; an unknown key gives back nothing.
    let back = k("give-back");
    assert_eq!(store.rate_take(&back, take(now, true)).await.unwrap(), 0);
    assert_eq!(store.rate_take(&back, take(now, true)).await.unwrap(), 1000);
    store.rate_give_back(&back, take(now, true)).await.unwrap();
    assert_eq!(store.rate_take(&back, take(now, true)).await.unwrap(), 0);
    assert_eq!(store.rate_take(&back, take(now, true)).await.unwrap(), 1000);
    store
        .rate_give_back(&k("never-taken"), take(now, true))
        .await
        .unwrap();
    assert_eq!(
        store.rate_take(&k("never-taken"), take(now, true)).await.unwrap(),
        0
    );
}

async fn check_fenced_writes(store: &dyn StateStore, k: &dyn Fn(&str) -> String) {
    let hour = Duration::from_secs(3600);
    let base = store.pending_bytes().await.unwrap();
    let write = |value: &[u8], pending: Option<&'static [u8]>, max: u64| FencedWrite {
        key: k("rec"),
        value: Some(value.to_vec()),
        ttl: hour,
        pending_key: k("rec:pending"),
        pending: pending.map(Bytes::from_static),
        max_pending_bytes: base + max,
    };
    let lock = store.lock(&k("rec"), hour).await.unwrap().expect("free");
    let saved = store.put_fenced(&lock, write(b"r1", Some(b"abcd"), 10)).await;
    assert_eq!(saved.unwrap(), Fenced::Saved);
    assert_eq!(store.get(&k("rec")).await.unwrap().as_deref(), Some(&b"r1"[..]));
    let pending = store.get_pending(&k("rec:pending")).await.unwrap();
    assert_eq!(pending.as_deref(), Some(&b"abcd"[..]));
    assert_eq!(store.pending_bytes().await.unwrap(), base + 4);
    // A part that would pass the cap is refused whole; one that shrinks always fits.
    let full = store
        .put_fenced(&lock, write(b"r2", Some(b"0123456789x"), 10))
        .await;
    assert_eq!(full.unwrap(), Fenced::Full);
    assert_eq!(store.get(&k("rec")).await.unwrap().as_deref(), Some(&b"r1"[..]));
    let shrunk = store.put_fenced(&lock, write(b"r2", Some(b"ab"), 1)).await;
    assert_eq!(shrunk.unwrap(), Fenced::Saved);
    assert_eq!(store.pending_bytes().await.unwrap(), base + 2);
    // Left as it is.
    let kept = store.put_fenced(&lock, write(b"r3", None, 0)).await;
    assert_eq!(kept.unwrap(), Fenced::Saved);
    let pending = store.get_pending(&k("rec:pending")).await.unwrap();
    assert_eq!(pending.as_deref(), Some(&b"ab"[..]));
    // Once the lock is gone (released, expired or taken by another), nothing is written.
    store.unlock(&lock).await.unwrap();
    let thief = store.lock(&k("rec"), hour).await.unwrap().expect("released");
    let stale = store.put_fenced(&lock, write(b"old", Some(b"zz"), 10)).await;
    assert_eq!(stale.unwrap(), Fenced::LockLost);
    assert_eq!(store.get(&k("rec")).await.unwrap().as_deref(), Some(&b"r3"[..]));
    store.unlock(&thief).await.unwrap();
    let short = store
        .lock(&k("rec"), Duration::from_millis(5))
        .await
        .unwrap()
        .expect("free");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let expired = store.put_fenced(&short, write(b"old", Some(b"zz"), 10)).await;
    assert_eq!(expired.unwrap(), Fenced::LockLost);
    // The record and its part go together, and the count with them.
    let lock = store.lock(&k("rec"), hour).await.unwrap().expect("free");
    let gone = FencedWrite {
        value: None,
        pending: Some(Bytes::new()),
        ..write(b"", None, 0)
    };
    assert_eq!(store.put_fenced(&lock, gone).await.unwrap(), Fenced::Saved);
    assert_eq!(store.get(&k("rec")).await.unwrap(), None);
    assert_eq!(store.get_pending(&k("rec:pending")).await.unwrap(), None);
    assert_eq!(store.pending_bytes().await.unwrap(), base);
    store.unlock(&lock).await.unwrap();
}

async fn check_open_uploads(store: &dyn StateStore, k: &dyn Fn(&str) -> String) {
    let owner = k("owner");
    let now = now_secs();
    let open = |id: &'static str, expires_at: u64| store.open_upload(&owner, id, expires_at, now, 2);
    assert!(open("a", now + 60).await.unwrap());
    assert!(open("b", now + 60).await.unwrap());
    assert!(!open("c", now + 60).await.unwrap(), "the cap");
    assert!(
        store
            .open_upload(&k("other"), "c", now + 60, now, 2)
            .await
            .unwrap(),
        "per owner"
    );
    store.close_upload(&owner, "a").await.unwrap();
    assert!(
        open("c", now + 60).await.unwrap(),
        "a closed upload frees its place"
    );
    // An upload past its expiry no longer counts, whether or not the sweeper came by.
    store.close_upload(&owner, "b").await.unwrap();
    assert!(open("old", now - 1).await.unwrap());
    assert!(open("d", now + 60).await.unwrap());
    assert!(!open("e", now + 60).await.unwrap());
}
