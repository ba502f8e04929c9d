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
//! time to live, so nothing stays for ever (the outbox's entries too: delivered, dead, or at the
//! latest when the time they were given is up).
//!
//! A tus upload's unfinished part (up to one Box part, or a direct upload's whole file) is kept apart
//! from its small record, written only by a fenced write (`put_fenced`: atomic with the check that
//! the writer still holds the upload's lock, and with the counts of unfinished parts' bytes, of all
//! and of each owner's accounts, so those counts stay right across crashes and replicas) and read
//! only by a PATCH (`get_pending`). The
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
    /// The accounts the part's bytes count under (`Owner::accounts`: its owner, and a link's key).
    /// Kept beside the part when it is stored, so whoever removes it later (the sweeper, with a
    /// record it cannot read) uncounts the same accounts.
    pub pending_accounts: Vec<String>,
    /// A part that grows may not take any of its accounts' unfinished parts past this many bytes.
    pub max_pending_bytes_per_account: u64,
}

/// What a fenced write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Saved,
    /// The lock was lost (expired, taken by another): nothing was written.
    LockLost,
    /// The unfinished part would pass `max_pending_bytes`: nothing was written.
    Full,
    /// The unfinished part would take one of its accounts past `max_pending_bytes_per_account`:
    /// nothing was written.
    AccountFull,
}

/// The lane of outbox entries written before the outbox had lanes (`StateStore::outbox_migrate`).
pub const OUTBOX_LEGACY_LANE: &str = "legacy";

/// A new outbox entry (`StateStore::outbox_add`).
#[derive(Debug)]
pub struct OutboxAdd<'a> {
    pub id: &'a str,
    /// Its delivery lane (its receiver's name): the worker takes due entries lane by lane.
    pub lane: &'a str,
    /// Whose event it is (a key's name): what `max_events_per_source` counts.
    pub source: &'a str,
    pub value: Vec<u8>,
    /// Orders entries by age (Unix ms).
    pub created_ms: u64,
    pub due_ms: u64,
    /// How long the store keeps it by itself.
    pub keep: Duration,
    pub max_events: u64,
    pub max_events_per_source: u64,
}

/// What `outbox_add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxAdded {
    Added,
    /// The source holds `max_events_per_source` entries: nothing was written.
    SourceFull,
    /// The outbox holds `max_events` entries: nothing was written.
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
    /// The bytes of the unfinished parts that count under `account` (see `FencedWrite`).
    fn pending_bytes_of<'a>(&'a self, account: &'a str) -> BoxFuture<'a, StoreResult<u64>>;
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
    /// Adds the outbox entry `add.id` (a completion event waiting for delivery) to its lane, unless
    /// its source already has `max_events_per_source` entries or the outbox `max_events` (checked and
    /// written together, atomic). The store keeps it at most `add.keep` by itself (a TTL in Redis,
    /// a purge in the embedded store); until then it stays until `outbox_remove`.
    fn outbox_add<'a>(&'a self, add: OutboxAdd<'a>) -> BoxFuture<'a, StoreResult<OutboxAdded>>;
    /// A retry: the entry's new value and due time (Unix ms), in the lane it was listed from; its age,
    /// source and time to live stay. An entry removed meanwhile stays removed.
    fn outbox_reschedule<'a>(
        &'a self,
        id: &'a str,
        lane: &'a str,
        value: Vec<u8>,
        due_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>>;
    /// The lanes that hold entries.
    fn outbox_lanes(&self) -> BoxFuture<'_, StoreResult<Vec<String>>>;
    /// Ids of `lane`'s entries due by `now_ms`, earliest first, at most `limit`. An id may name an
    /// entry the store has just let expire: `outbox_get` then finds nothing.
    fn outbox_due<'a>(
        &'a self,
        lane: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<String>>>;
    fn outbox_get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>>;
    /// Removes the entry `id` of `lane` (the lane it was listed from), and it from every count.
    fn outbox_remove<'a>(&'a self, id: &'a str, lane: &'a str) -> BoxFuture<'a, StoreResult<()>>;
    /// How many entries the outbox holds, and the `created_ms` of the oldest.
    fn outbox_stats(&self) -> BoxFuture<'_, StoreResult<(u64, Option<u64>)>>;
    /// Moves entries written by gateways before the outbox had lanes into the lane
    /// `OUTBOX_LEGACY_LANE` (their value unchanged, kept `keep`), at most a batch per call: how many
    /// it moved. With Redis, replicas not yet upgraded may still write them.
    fn outbox_migrate(&self, keep: Duration) -> BoxFuture<'_, StoreResult<u64>>;
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

/// The store the settings ask for: Redis when `redis_url` is set (over TLS with `rediss://`, its
/// certificate checked against `redis_ca_file`'s CAs when given), else the embedded file.
pub fn open(
    redis_url: Option<&str>,
    redis_ca_file: Option<&std::path::Path>,
    state_dir: &std::path::Path,
) -> StoreResult<Arc<dyn StateStore>> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisStore::new(url, redis_ca_file)?),
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

fn outbox_entry<'a>(
    id: &'a str,
    lane: &'a str,
    source: &'a str,
    created_ms: u64,
    due_ms: u64,
) -> OutboxAdd<'a> {
    OutboxAdd {
        id,
        lane,
        source,
        value: b"one".to_vec(),
        created_ms,
        due_ms,
        keep: Duration::from_secs(3600),
        max_events: u64::MAX,
        max_events_per_source: 2,
    }
}

async fn add(store: &dyn StateStore, entry: OutboxAdd<'_>) -> OutboxAdded {
    store.outbox_add(entry).await.unwrap()
}

async fn check_outbox(store: &dyn StateStore, k: &dyn Fn(&str) -> String) {
    let (depth, _) = store.outbox_stats().await.unwrap();
    let t = now_ms();
    let (lane, other_lane, src, src2, src3) = (k("lane"), k("lane2"), k("src"), k("src2"), k("src3"));
    let [e1, e2, e3, e4, e5, e6, e7] = ["e1", "e2", "e3", "e4", "e5", "e6", "e7"].map(k);
    assert_eq!(
        add(store, outbox_entry(&e1, &lane, &src, t + 5, t + 100)).await,
        OutboxAdded::Added
    );
    assert_eq!(
        add(store, outbox_entry(&e2, &lane, &src, t + 7, t + 50)).await,
        OutboxAdded::Added
    );
    assert_eq!(
        add(store, outbox_entry(&e3, &other_lane, &src2, t + 8, t + 60)).await,
        OutboxAdded::Added
    );
    let lanes = store.outbox_lanes().await.unwrap();
    assert!(lanes.contains(&lane) && lanes.contains(&other_lane), "{lanes:?}");
    assert_eq!(
        store.outbox_due(&lane, t + 120, 1000).await.unwrap(),
        [e2.as_str(), e1.as_str()],
        "earliest first"
    );
    assert_eq!(
        store.outbox_due(&other_lane, t + 120, 1000).await.unwrap(),
        [e3.as_str()],
        "per lane"
    );
    assert_eq!(
        store.outbox_due(&lane, t + 60, 1000).await.unwrap(),
        [e2.as_str()]
    );
    assert_eq!(
        store.outbox_due(&lane, t + 120, 1).await.unwrap(),
        [e2.as_str()],
        "at most the limit"
    );
    // A source at its cap is refused whole, another source is not; then the whole outbox's cap.
    assert_eq!(
        add(store, outbox_entry(&e4, &lane, &src, t + 9, t)).await,
        OutboxAdded::SourceFull
    );
    assert_eq!(store.outbox_get(&e4).await.unwrap(), None);
    let full = OutboxAdd {
        max_events: depth + 3,
        ..outbox_entry(&e5, &other_lane, &src3, t + 9, t)
    };
    assert_eq!(add(store, full).await, OutboxAdded::Full);
    assert_eq!(store.outbox_get(&e5).await.unwrap(), None);
    // A retry moves the entry's due time and value, never its age or its place in the counts.
    store
        .outbox_reschedule(&e2, &lane, b"two'".to_vec(), t + 500)
        .await
        .unwrap();
    assert_eq!(
        store.outbox_due(&lane, t + 120, 1000).await.unwrap(),
        [e1.as_str()]
    );
    assert_eq!(
        store.outbox_get(&e2).await.unwrap().as_deref(),
        Some(&b"two'"[..])
    );
    let (n, oldest) = store.outbox_stats().await.unwrap();
    assert_eq!(n, depth + 3);
    assert!(oldest.is_some_and(|o| o <= t + 5), "{oldest:?}");
    assert_eq!(
        add(store, outbox_entry(&e4, &lane, &src, t + 9, t)).await,
        OutboxAdded::SourceFull
    );
    // Removed: gone from its lane, its source's count and the outbox's; an empty lane is no lane.
    for (id, l) in [(&e1, &lane), (&e2, &lane), (&e3, &other_lane)] {
        store.outbox_remove(id, l).await.unwrap();
    }
    assert_eq!(store.outbox_get(&e1).await.unwrap(), None);
    assert!(store.outbox_due(&lane, t + 1000, 1000).await.unwrap().is_empty());
    let lanes = store.outbox_lanes().await.unwrap();
    assert!(
        !lanes.contains(&lane) && !lanes.contains(&other_lane),
        "{lanes:?}"
    );
    assert_eq!(store.outbox_stats().await.unwrap().0, depth);
    // A retry of an entry removed meanwhile (by another replica) does not bring it back.
    store
        .outbox_reschedule(&e1, &lane, b"x".to_vec(), t)
        .await
        .unwrap();
    assert_eq!(store.outbox_get(&e1).await.unwrap(), None);
    assert!(store.outbox_due(&lane, t + 1000, 1000).await.unwrap().is_empty());
    assert_eq!(
        add(store, outbox_entry(&e4, &lane, &src, t + 9, t)).await,
        OutboxAdded::Added
    );
    store.outbox_remove(&e4, &lane).await.unwrap();
    // The store keeps an entry no longer than it was asked to, whether or not anyone removes it,
    // and an entry it let go no longer counts.
    let brief = |id| OutboxAdd {
        keep: Duration::from_millis(30),
        max_events_per_source: 1,
        ..outbox_entry(id, &lane, &src, now_ms(), now_ms())
    };
    assert_eq!(add(store, brief(&e6)).await, OutboxAdded::Added);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.outbox_get(&e6).await.unwrap(), None, "expired");
    assert_eq!(
        add(store, brief(&e7)).await,
        OutboxAdded::Added,
        "the expired one no longer counts"
    );
    for id in [e6.as_str(), e7.as_str()] {
        store.outbox_remove(id, &lane).await.unwrap();
    }
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
        pending_accounts: Vec::new(),
        max_pending_bytes_per_account: u64::MAX,
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
    check_pending_accounts(store, k).await;
}

/// Each owner's accounts (a link and its key) are capped on their own, and uncounted by whoever
/// removes the part, even without knowing its owner.
async fn check_pending_accounts(store: &dyn StateStore, k: &dyn Fn(&str) -> String) {
    let hour = Duration::from_secs(3600);
    let (link, key, other) = (k("link:key:l1"), k("key"), k("link:key:l2"));
    let write = |rec: &str, pending: &'static [u8], accounts: &[&String]| FencedWrite {
        key: k(rec),
        value: Some(b"r".to_vec()),
        ttl: hour,
        pending_key: k(&format!("{rec}:pending")),
        pending: Some(Bytes::from_static(pending)),
        max_pending_bytes: u64::MAX,
        pending_accounts: accounts.iter().map(|a| a.to_string()).collect(),
        max_pending_bytes_per_account: 6,
    };
    let one = store.lock(&k("a1"), hour).await.unwrap().expect("free");
    let two = store.lock(&k("a2"), hour).await.unwrap().expect("free");
    let saved = store.put_fenced(&one, write("a1", b"abcd", &[&link, &key])).await;
    assert_eq!(saved.unwrap(), Fenced::Saved);
    assert_eq!(store.pending_bytes_of(&link).await.unwrap(), 4);
    assert_eq!(store.pending_bytes_of(&key).await.unwrap(), 4);
    // Another link of the same key: its own account has room, the key's has not.
    let full = store.put_fenced(&two, write("a2", b"xyz", &[&other, &key])).await;
    assert_eq!(full.unwrap(), Fenced::AccountFull);
    assert_eq!(store.get_pending(&k("a2:pending")).await.unwrap(), None);
    let fits = store.put_fenced(&two, write("a2", b"xy", &[&other, &key])).await;
    assert_eq!(fits.unwrap(), Fenced::Saved);
    assert_eq!(store.pending_bytes_of(&key).await.unwrap(), 6);
    // Removed by a writer that does not know the owner: the stored accounts are uncounted.
    let gone = store.put_fenced(&one, write("a1", b"", &[])).await;
    assert_eq!(gone.unwrap(), Fenced::Saved);
    assert_eq!(store.pending_bytes_of(&link).await.unwrap(), 0);
    assert_eq!(store.pending_bytes_of(&key).await.unwrap(), 2);
    let gone = store.put_fenced(&two, write("a2", b"", &[&other, &key])).await;
    assert_eq!(gone.unwrap(), Fenced::Saved);
    assert_eq!(store.pending_bytes_of(&key).await.unwrap(), 0);
    for lock in [one, two] {
        store.unlock(&lock).await.unwrap();
    }
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
