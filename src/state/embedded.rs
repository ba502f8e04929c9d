//! The embedded store: one redb file (a well-kept embedded database: ACID, crash-safe, a file lock so
//! two processes cannot share it). Each value is stored behind its expiry time; expired values read as
//! absent and are purged by the sweeper's calls to `due`, found through an index by expiry time (so
//! a sweep touches only what expired, never the whole table). Locks live in this process only: one
//! replica is what the embedded store is for. Unfinished parts have their own table, and the sum of
//! their lengths is kept in the same transactions that write them.
// redb's own error type is large; it only crosses the blocking pool's boundary once per call.
#![allow(clippy::result_large_err)]
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    new_token, now_ms, Fenced, FencedWrite, Lock, OutboxAdd, OutboxAdded, StateStore, StoreError, StoreResult,
};

/// key -> expiry (Unix milliseconds, big-endian) followed by the value.
const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");
/// upload id -> when it expires (Unix seconds).
const EXPIRY: TableDefinition<&str, u64> = TableDefinition::new("expiry");
/// (expiry in Unix milliseconds, key) of every value: what the sweeper purges.
const VALUE_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("value_expiry");
/// key -> an upload's unfinished part (no expiry of its own: it goes with its record).
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending");
/// `pending_bytes` -> the sum of the lengths in `PENDING`; `pending_bytes:<account>` -> the sum of
/// those counted under the account.
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
/// An unfinished part's key -> the accounts it counts under, one a line.
const PENDING_ACCOUNTS: TableDefinition<&str, &str> = TableDefinition::new("pending_accounts");
/// `<owner>\0<upload id>` -> when that open upload expires (Unix seconds).
const OPEN: TableDefinition<&str, u64> = TableDefinition::new("open");
/// An outbox entry as stored: created, due, expires (Unix ms), lane, source, value.
type OutboxEntry<'a> = (u64, u64, u64, &'a str, &'a str, &'a [u8]);
/// Outbox entry id -> the entry.
const OUTBOX_ENTRIES: TableDefinition<&str, OutboxEntry> = TableDefinition::new("outbox_entries");
/// (lane, due in Unix ms, id) of every outbox entry: what the delivery worker takes next, per lane.
const OUTBOX_LANE_DUE: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("outbox_lane_due");
/// (created in Unix ms, id) of every outbox entry: the age of the oldest without a scan.
const OUTBOX_AGE: TableDefinition<(u64, &str), ()> = TableDefinition::new("outbox_age");
/// (expires in Unix ms, id) of every outbox entry: what the purge removes, oldest first.
const OUTBOX_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("outbox_expiry");
/// Lane -> its entries; source -> its entries (the per-source cap), kept in the same transactions.
const OUTBOX_LANES: TableDefinition<&str, u64> = TableDefinition::new("outbox_lanes");
const OUTBOX_SOURCES: TableDefinition<&str, u64> = TableDefinition::new("outbox_sources");
/// The outbox as gateways before lanes wrote it (id -> created, due, value; and by due time):
/// `outbox_migrate` empties them into the legacy lane.
const LEGACY_OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
const LEGACY_OUTBOX_DUE: TableDefinition<(u64, &str), ()> = TableDefinition::new("outbox_due");
/// Expired outbox entries purged per add, so one add's transaction stays short.
const OUTBOX_PURGE_BATCH: usize = 100;
const PENDING_BYTES: &str = "pending_bytes";
/// Expired values purged per call of `due`, so one sweep's transaction stays short.
const PURGE_BATCH: usize = 1000;

type Locks = Arc<Mutex<HashMap<String, (String, Instant)>>>;

pub struct EmbeddedStore {
    db: Arc<Database>,
    locks: Locks,
    /// Rate limits live in memory: one replica, and a restart forgetting them costs at most one
    /// burst (the pacer's 429 handling covers that).
    rates: Mutex<HashMap<String, (super::rate::RateState, u64)>>,
}

/// Rate states kept at most before the forgotten ones (kept long enough) are dropped.
const RATE_ENTRIES: usize = 10_000;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn stamp(stored: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(stored.get(..8)?.try_into().ok()?))
}

fn live(stored: &[u8]) -> Option<&[u8]> {
    let expires = stamp(stored)?;
    (expires > now_ms()).then(|| &stored[8..])
}

/// Sets (or, with None, removes) a value and keeps its expiry index right.
fn set_value(
    txn: &redb::WriteTransaction,
    key: &str,
    value: Option<&[u8]>,
    ttl: Duration,
) -> Result<(), redb::Error> {
    let mut values = txn.open_table(VALUES)?;
    let mut index = txn.open_table(VALUE_EXPIRY)?;
    let old = values.get(key)?.and_then(|v| stamp(v.value()));
    if let Some(at) = old {
        index.remove((at, key))?;
    }
    match value {
        Some(value) => {
            let stored = stamped(value, ttl);
            index.insert((stamp(&stored).unwrap_or_default(), key), ())?;
            values.insert(key, stored.as_slice())?;
        }
        None => {
            values.remove(key)?;
        }
    }
    Ok(())
}

fn held(locks: &HashMap<String, (String, Instant)>, lock: &Lock) -> bool {
    locks
        .get(&lock.key)
        .is_some_and(|(token, until)| *token == lock.token && *until > Instant::now())
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = Database::create(path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        {
            let values = txn.open_table(VALUES).map_err(err)?;
            txn.open_table(EXPIRY).map_err(err)?;
            txn.open_table(PENDING).map_err(err)?;
            txn.open_table(COUNTS).map_err(err)?;
            txn.open_table(PENDING_ACCOUNTS).map_err(err)?;
            txn.open_table(OPEN).map_err(err)?;
            txn.open_table(LEGACY_OUTBOX).map_err(err)?;
            txn.open_table(LEGACY_OUTBOX_DUE).map_err(err)?;
            txn.open_table(OUTBOX_ENTRIES).map_err(err)?;
            txn.open_table(OUTBOX_LANE_DUE).map_err(err)?;
            txn.open_table(OUTBOX_AGE).map_err(err)?;
            txn.open_table(OUTBOX_EXPIRY).map_err(err)?;
            txn.open_table(OUTBOX_LANES).map_err(err)?;
            txn.open_table(OUTBOX_SOURCES).map_err(err)?;
            let mut index = txn.open_table(VALUE_EXPIRY).map_err(err)?;
            // A file written before the index existed: index its values once.
            if index.is_empty().map_err(err)? {
                for entry in values.iter().map_err(err)? {
                    let (key, value) = entry.map_err(err)?;
                    if let Some(at) = stamp(value.value()) {
                        index.insert((at, key.value()), ()).map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)?;
        Ok(Self {
            db: Arc::new(db),
            locks: Locks::default(),
            rates: Mutex::default(),
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
        self.write(move |txn| set_value(txn, &key, Some(&value), ttl))
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
            let taken = txn
                .open_table(VALUES)?
                .get(key.as_str())?
                .is_some_and(|v| live(v.value()).is_some());
            if taken {
                return Ok(false);
            }
            set_value(txn, &key, Some(&value), ttl)?;
            Ok(true)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let key = key.to_owned();
        self.write(move |txn| set_value(txn, &key, None, Duration::ZERO))
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
            // Values whose time is up go too (idempotency answers nobody asked for again), found
            // through their index: only they are read and removed.
            let mut index = txn.open_table(VALUE_EXPIRY)?;
            let mut values = txn.open_table(VALUES)?;
            let mut purged = Vec::new();
            for entry in index.range::<(u64, &str)>(..(now_ms(), ""))?.take(PURGE_BATCH) {
                let (key, _) = entry?;
                let (at, key) = key.value();
                purged.push((at, key.to_owned()));
            }
            for (at, key) in &purged {
                index.remove((*at, key.as_str()))?;
                values.remove(key.as_str())?;
            }
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

    fn put_fenced<'a>(&'a self, lock: &'a Lock, write: FencedWrite) -> BoxFuture<'a, StoreResult<Fenced>> {
        let locks = self.locks.clone();
        let lock = lock.clone();
        self.blocking(move |db| {
            // The lock table stays locked until the transaction is committed: the lock cannot be
            // taken by another between the check and the write (a commit takes milliseconds).
            let locks = locks.lock().unwrap_or_else(|p| p.into_inner());
            if !held(&locks, &lock) {
                return Ok(Fenced::LockLost);
            }
            let txn = db.begin_write()?;
            if let Some(bytes) = &write.pending {
                let mut pending = txn.open_table(PENDING)?;
                let mut counts = txn.open_table(COUNTS)?;
                let mut accounts_of = txn.open_table(PENDING_ACCOUNTS)?;
                let key = write.pending_key.as_str();
                let old = pending.get(key)?.map_or(0, |v| v.value().len() as u64);
                let total = counts.get(PENDING_BYTES)?.map_or(0, |v| v.value());
                let new = bytes.len() as u64;
                if new > old && total.saturating_sub(old) + new > write.max_pending_bytes {
                    return Ok(Fenced::Full);
                }
                // Those stored with the part; else (a new part, or one an older gateway stored) the
                // writer's: a part is uncounted from the accounts it was counted under.
                let accounts = match accounts_of.get(key)? {
                    Some(stored) => stored.value().to_owned(),
                    None => write.pending_accounts.join("\n"),
                };
                let account_counts: Vec<String> = accounts
                    .lines()
                    .filter(|a| !a.is_empty())
                    .map(|a| format!("{PENDING_BYTES}:{a}"))
                    .collect();
                let mut counted = Vec::with_capacity(account_counts.len());
                for name in &account_counts {
                    let count = counts.get(name.as_str())?.map_or(0, |v| v.value());
                    if new > old && count.saturating_sub(old) + new > write.max_pending_bytes_per_account {
                        return Ok(Fenced::AccountFull);
                    }
                    counted.push(count);
                }
                if bytes.is_empty() {
                    pending.remove(key)?;
                    accounts_of.remove(key)?;
                } else {
                    pending.insert(key, bytes.as_ref())?;
                    accounts_of.insert(key, accounts.as_str())?;
                }
                counts.insert(PENDING_BYTES, total.saturating_sub(old) + new)?;
                for (name, count) in account_counts.iter().zip(counted) {
                    // A count back at zero is removed: an idle store keeps no row per account.
                    match count.saturating_sub(old) + new {
                        0 => counts.remove(name.as_str())?,
                        n => counts.insert(name.as_str(), n)?,
                    };
                }
            }
            set_value(&txn, &write.key, write.value.as_deref(), write.ttl)?;
            txn.commit()?;
            Ok(Fenced::Saved)
        })
    }

    fn get_pending<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(PENDING)?;
            Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
        })
    }

    fn pending_bytes(&self) -> BoxFuture<'_, StoreResult<u64>> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(COUNTS)?;
            Ok(table.get(PENDING_BYTES)?.map_or(0, |v| v.value()))
        })
    }

    fn pending_bytes_of<'a>(&'a self, account: &'a str) -> BoxFuture<'a, StoreResult<u64>> {
        let name = format!("{PENDING_BYTES}:{account}");
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(COUNTS)?;
            Ok(table.get(name.as_str())?.map_or(0, |v| v.value()))
        })
    }

    fn open_upload<'a>(
        &'a self,
        owner: &'a str,
        id: &'a str,
        expires_at: u64,
        now: u64,
        max: usize,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.write(move |txn| {
            let mut open = txn.open_table(OPEN)?;
            let mut live = 0;
            let mut lapsed = Vec::new();
            let prefix = format!("{owner}\0");
            for entry in open.range::<&str>(prefix.as_str()..)? {
                let (key, at) = entry?;
                let key = key.value();
                if !key.starts_with(&prefix) {
                    break;
                }
                match at.value() > now {
                    true => live += 1,
                    false => lapsed.push(key.to_owned()),
                }
            }
            for key in lapsed {
                open.remove(key.as_str())?;
            }
            if live >= max {
                return Ok(false);
            }
            open.insert(format!("{owner}\0{id}").as_str(), expires_at)?;
            Ok(true)
        })
    }

    fn close_upload<'a>(&'a self, owner: &'a str, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let key = format!("{owner}\0{id}");
        self.write(move |txn| {
            txn.open_table(OPEN)?.remove(key.as_str())?;
            Ok(())
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn outbox_add<'a>(&'a self, add: OutboxAdd<'a>) -> BoxFuture<'a, StoreResult<OutboxAdded>> {
        let (id, lane, source) = (add.id.to_owned(), add.lane.to_owned(), add.source.to_owned());
        let OutboxAdd {
            value,
            created_ms,
            due_ms,
            keep,
            max_events,
            max_events_per_source,
            ..
        } = add;
        self.write(move |txn| {
            let now = now_ms();
            purge_expired_outbox(txn, now)?;
            let entries = txn.open_table(OUTBOX_ENTRIES)?;
            let mut sources = txn.open_table(OUTBOX_SOURCES)?;
            let of_source = sources.get(source.as_str())?.map_or(0, |v| v.value());
            if of_source >= max_events_per_source {
                return Ok(OutboxAdded::SourceFull);
            }
            if entries.len()? >= max_events {
                return Ok(OutboxAdded::Full);
            }
            drop(entries);
            sources.insert(source.as_str(), of_source + 1)?;
            let expires = now + keep.as_millis() as u64;
            txn.open_table(OUTBOX_ENTRIES)?.insert(
                id.as_str(),
                (
                    created_ms,
                    due_ms,
                    expires,
                    lane.as_str(),
                    source.as_str(),
                    value.as_slice(),
                ),
            )?;
            txn.open_table(OUTBOX_LANE_DUE)?
                .insert((lane.as_str(), due_ms, id.as_str()), ())?;
            txn.open_table(OUTBOX_AGE)?
                .insert((created_ms, id.as_str()), ())?;
            txn.open_table(OUTBOX_EXPIRY)?
                .insert((expires, id.as_str()), ())?;
            count(&mut txn.open_table(OUTBOX_LANES)?, &lane, 1)?;
            Ok(OutboxAdded::Added)
        })
    }

    fn outbox_reschedule<'a>(
        &'a self,
        id: &'a str,
        _lane: &'a str,
        value: Vec<u8>,
        due_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut entries = txn.open_table(OUTBOX_ENTRIES)?;
            let Some((created, old_due, expires, lane, source)) = entries.get(id.as_str())?.map(|v| {
                let (c, d, e, l, s, _) = v.value();
                (c, d, e, l.to_owned(), s.to_owned())
            }) else {
                return Ok(());
            };
            let mut due = txn.open_table(OUTBOX_LANE_DUE)?;
            due.remove((lane.as_str(), old_due, id.as_str()))?;
            due.insert((lane.as_str(), due_ms, id.as_str()), ())?;
            entries.insert(
                id.as_str(),
                (
                    created,
                    due_ms,
                    expires,
                    lane.as_str(),
                    source.as_str(),
                    value.as_slice(),
                ),
            )?;
            Ok(())
        })
    }

    fn outbox_lanes(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let lanes = txn.open_table(OUTBOX_LANES)?;
            let mut names = Vec::new();
            for entry in lanes.iter()? {
                names.push(entry?.0.value().to_owned());
            }
            Ok(names)
        })
    }

    fn outbox_due<'a>(
        &'a self,
        lane: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        let lane = lane.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let due = txn.open_table(OUTBOX_LANE_DUE)?;
            let mut ids = Vec::new();
            let range = (lane.as_str(), 0, "")..=(lane.as_str(), now_ms, "\u{10FFFF}");
            for entry in due.range::<(&str, u64, &str)>(range)?.take(limit) {
                ids.push(entry?.0.value().2.to_owned());
            }
            Ok(ids)
        })
    }

    fn outbox_get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let entries = txn.open_table(OUTBOX_ENTRIES)?;
            let now = now_ms();
            Ok(entries.get(id.as_str())?.and_then(|v| {
                let (_, _, expires, _, _, value) = v.value();
                (expires > now).then(|| value.to_vec())
            }))
        })
    }

    fn outbox_remove<'a>(&'a self, id: &'a str, _lane: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let id = id.to_owned();
        self.write(move |txn| remove_outbox_entry(txn, &id))
    }

    fn outbox_stats(&self) -> BoxFuture<'_, StoreResult<(u64, Option<u64>)>> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let entries = txn.open_table(OUTBOX_ENTRIES)?;
            let age = txn.open_table(OUTBOX_AGE)?;
            let oldest = age.first()?.map(|(k, _)| k.value().0);
            Ok((entries.len()?, oldest))
        })
    }

    fn outbox_migrate(&self, keep: Duration) -> BoxFuture<'_, StoreResult<u64>> {
        self.blocking(move |db| {
            // A read first: once migrated (the usual case), no write transaction is taken.
            if db.begin_read()?.open_table(LEGACY_OUTBOX)?.is_empty()? {
                return Ok(0);
            }
            let txn = db.begin_write()?;
            let moved = migrate_legacy_outbox(&txn, keep)?;
            txn.commit()?;
            Ok(moved)
        })
    }

    fn rate_take<'a>(&'a self, key: &'a str, take: super::rate::RateTake) -> BoxFuture<'a, StoreResult<u64>> {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        if rates.len() >= RATE_ENTRIES {
            rates.retain(|_, (_, until)| *until > take.now_ms);
        }
        let (state, until) = rates.entry(key.to_owned()).or_default();
        let wait = super::rate::take(state, &take);
        *until = take.now_ms + super::rate::keep_ms(state, take.now_ms, take.recovery_ms);
        std::future::ready(Ok(wait)).boxed()
    }

    fn rate_give_back<'a>(
        &'a self,
        key: &'a str,
        take: super::rate::RateTake,
    ) -> BoxFuture<'a, StoreResult<()>> {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        // A state already forgotten was idle: nothing to give back.
        if let Some((state, until)) = rates.get_mut(key) {
            super::rate::give_back(state, &take);
            *until = take.now_ms + super::rate::keep_ms(state, take.now_ms, take.recovery_ms);
        }
        std::future::ready(Ok(())).boxed()
    }

    fn rate_throttle<'a>(
        &'a self,
        key: &'a str,
        throttle: super::rate::RateThrottle,
    ) -> BoxFuture<'a, StoreResult<()>> {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let (state, until) = rates.entry(key.to_owned()).or_default();
        super::rate::throttle(state, &throttle);
        *until = throttle.now_ms + super::rate::keep_ms(state, throttle.now_ms, throttle.recovery_ms);
        std::future::ready(Ok(())).boxed()
    }
}

/// Adds `by` (+1 or -1) to `name`'s count; a count back at zero is removed (a lane with no entry
/// is no lane).
fn count(table: &mut redb::Table<&str, u64>, name: &str, by: i64) -> Result<(), redb::Error> {
    let now = table.get(name)?.map_or(0, |v| v.value());
    match now.saturating_add_signed(by) {
        0 => table.remove(name)?,
        n => table.insert(name, n)?,
    };
    Ok(())
}

/// Removes an outbox entry and it from every index and count.
fn remove_outbox_entry(txn: &redb::WriteTransaction, id: &str) -> Result<(), redb::Error> {
    let mut entries = txn.open_table(OUTBOX_ENTRIES)?;
    let Some((created, due, expires, lane, source)) = entries.remove(id)?.map(|v| {
        let (c, d, e, l, s, _) = v.value();
        (c, d, e, l.to_owned(), s.to_owned())
    }) else {
        return Ok(());
    };
    txn.open_table(OUTBOX_LANE_DUE)?
        .remove((lane.as_str(), due, id))?;
    txn.open_table(OUTBOX_AGE)?.remove((created, id))?;
    txn.open_table(OUTBOX_EXPIRY)?.remove((expires, id))?;
    count(&mut txn.open_table(OUTBOX_LANES)?, &lane, -1)?;
    if !source.is_empty() {
        count(&mut txn.open_table(OUTBOX_SOURCES)?, &source, -1)?;
    }
    Ok(())
}

/// Removes (a batch of) the outbox entries whose time is up: the embedded store's time to live.
fn purge_expired_outbox(txn: &redb::WriteTransaction, now: u64) -> Result<(), redb::Error> {
    let mut expired = Vec::new();
    for entry in txn
        .open_table(OUTBOX_EXPIRY)?
        .range::<(u64, &str)>(..=(now, "\u{10FFFF}"))?
        .take(OUTBOX_PURGE_BATCH)
    {
        expired.push(entry?.0.value().1.to_owned());
    }
    for id in expired {
        remove_outbox_entry(txn, &id)?;
    }
    Ok(())
}

/// Moves the entries of the outbox as gateways before lanes wrote it (created and due, big-endian
/// Unix ms, then the value) into the legacy lane, with no source (they count toward no key's cap).
fn migrate_legacy_outbox(txn: &redb::WriteTransaction, keep: Duration) -> Result<u64, redb::Error> {
    let mut legacy = txn.open_table(LEGACY_OUTBOX)?;
    let mut old: Vec<(String, u64, u64, Vec<u8>)> = Vec::new();
    for entry in legacy.iter()? {
        let (id, stored) = entry?;
        let stored = stored.value();
        let time = |at: usize| {
            stored
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        if let (Some(created), Some(due)) = (time(0), time(8)) {
            old.push((id.value().to_owned(), created, due, stored[16..].to_vec()));
        }
    }
    let expires = now_ms() + keep.as_millis() as u64;
    let lane = super::OUTBOX_LEGACY_LANE;
    for (id, created, due, value) in &old {
        txn.open_table(OUTBOX_ENTRIES)?
            .insert(id.as_str(), (*created, *due, expires, lane, "", value.as_slice()))?;
        txn.open_table(OUTBOX_LANE_DUE)?
            .insert((lane, *due, id.as_str()), ())?;
        // The age index is the same table as before: the entry is there already.
        txn.open_table(OUTBOX_AGE)?.insert((*created, id.as_str()), ())?;
        txn.open_table(OUTBOX_EXPIRY)?
            .insert((expires, id.as_str()), ())?;
        count(&mut txn.open_table(OUTBOX_LANES)?, lane, 1)?;
    }
    legacy.retain(|_, _| false)?;
    txn.open_table(LEGACY_OUTBOX_DUE)?.retain(|_, _| false)?;
    Ok(old.len() as u64)
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

    #[tokio::test]
    async fn the_sweep_removes_only_what_expired_through_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let hour = Duration::from_secs(3600);
        for i in 0..50 {
            store.put(&format!("live{i}"), vec![1; 10], hour).await.unwrap();
        }
        store
            .put("brief", b"x".to_vec(), Duration::from_millis(5))
            .await
            .unwrap();
        // Replaced values leave no stale index entry behind.
        store.put("live0", vec![2; 10], hour).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.due(super::super::now_secs(), 10).await.unwrap();
        let (values, index) = store
            .blocking(|db| {
                let txn = db.begin_read()?;
                Ok((
                    txn.open_table(VALUES)?.len()?,
                    txn.open_table(VALUE_EXPIRY)?.len()?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(
            (values, index),
            (50, 50),
            "the expired value went, the others stay"
        );
    }

    #[tokio::test]
    async fn events_stored_by_an_older_gateway_move_into_the_legacy_lane() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        // As the gateway before lanes wrote them: created and due (big-endian), then the value.
        store
            .write(|txn| {
                let mut stored = 7u64.to_be_bytes().to_vec();
                stored.extend_from_slice(&9u64.to_be_bytes());
                stored.extend_from_slice(b"{old}");
                txn.open_table(LEGACY_OUTBOX)?
                    .insert("msg_old", stored.as_slice())?;
                txn.open_table(LEGACY_OUTBOX_DUE)?.insert((9, "msg_old"), ())?;
                txn.open_table(OUTBOX_AGE)?.insert((7, "msg_old"), ())?;
                Ok(())
            })
            .await
            .unwrap();
        let keep = Duration::from_secs(3600);

        assert_eq!(store.outbox_migrate(keep).await.unwrap(), 1);
        assert_eq!(store.outbox_migrate(keep).await.unwrap(), 0, "once");

        let lane = super::super::OUTBOX_LEGACY_LANE;
        assert_eq!(store.outbox_lanes().await.unwrap(), [lane]);
        assert_eq!(store.outbox_due(lane, 10, 10).await.unwrap(), ["msg_old"]);
        assert_eq!(
            store.outbox_get("msg_old").await.unwrap().as_deref(),
            Some(&b"{old}"[..])
        );
        assert_eq!(store.outbox_stats().await.unwrap(), (1, Some(7)));
        store.outbox_remove("msg_old", lane).await.unwrap();
        assert_eq!(store.outbox_stats().await.unwrap(), (0, None));
        assert!(store.outbox_lanes().await.unwrap().is_empty());
    }
}
