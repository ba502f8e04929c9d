//! The Redis store: shared by every replica. Values are Redis strings with a `PX` time to live; the
//! expiry index is one sorted set. A lock is `SET key token NX PX ttl`, extended and released by Lua
//! scripts that first check the token, so a replica never releases a lock another one took after its
//! own expired (the pattern of Redis's documentation, "Distributed locks with Redis", single instance).
//!
//! An upload's record and unfinished part are written by one script that first checks the lock's
//! token (the fencing token) and keeps the count of all unfinished parts' bytes (`pending-bytes`)
//! in the same step; unfinished parts have no TTL (they go with their record), so nothing Redis
//! drops by itself can make that count wrong. Run Redis with `maxmemory-policy noeviction`: an
//! evicted key is lost state. Each owner's open uploads are a sorted set scored by expiry, counted
//! only from now on, so uploads that expired or were never cleaned up stop counting by themselves.
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::ConnectionManager;
use redis::{cmd, Script};

use super::keys::pending_accounts;
use super::{
    new_token, Fenced, FencedWrite, Lock, OutboxAdd, OutboxAdded, StateStore, StoreError, StoreResult,
    OUTBOX_LEGACY_LANE,
};

const PREFIX: &str = "box-upload-gateway:";
const EXPIRY: &str = "box-upload-gateway:expiry";
const PENDING_BYTES: &str = "box-upload-gateway:pending-bytes";
/// Before an account's name: the bytes of the unfinished parts counted under it.
const PENDING_BYTES_OF: &str = "box-upload-gateway:pending-bytes:";
/// The outbox: each entry a hash (`outbox:e:<id>`: value, lane, source) with its own time to live;
/// the lanes that hold entries (a set); per lane, its ids by due time; all ids by creation time (the
/// oldest's age) and by expiry (the count); per source, its ids by expiry (its count). Ids whose
/// entry expired drop out of the counts at the next add (by their expiry score) and out of their
/// lane when the worker finds the entry gone. Every structure's time to live is pushed back to the
/// newest entry's by each add, so an outbox nobody adds to disappears whole when its last entry does.
const OUTBOX_ENTRY: &str = "box-upload-gateway:outbox:e:";
const OUTBOX_LANES: &str = "box-upload-gateway:outbox-lanes";
const OUTBOX_LANE_DUE: &str = "box-upload-gateway:outbox-due:";
const OUTBOX_CREATED: &str = "box-upload-gateway:outbox-created";
const OUTBOX_EXPIRY: &str = "box-upload-gateway:outbox-expiry";
const OUTBOX_SOURCE: &str = "box-upload-gateway:outbox-source:";
/// The outbox as gateways before lanes wrote it: a hash of entries, a sorted set by due time, one by
/// creation time, none with a time to live (`outbox_migrate` empties them).
const LEGACY_OUTBOX: &str = "box-upload-gateway:outbox";
const LEGACY_OUTBOX_DUE: &str = "box-upload-gateway:outbox-due";
const LEGACY_OUTBOX_AGE: &str = "box-upload-gateway:outbox-age";

/// Keeps an existing key at least `ms` more milliseconds (never shortens its time to live; gives one
/// to a key that has none, -1). Used by the outbox scripts.
const KEEP_AT_LEAST: &str = r#"
local function keep(key, ms)
  local left = redis.call("PTTL", key)
  if left == -1 or (left >= 0 and left < ms) then redis.call("PEXPIRE", key, ms) end
end
"#;

/// KEYS: entry, lanes, lane's due, created, expiry, source. ARGV: id, value, lane, source, created
/// ms, due ms, keep ms, now ms, max events, max per source. 0: added; 1: the source is full; 2:
/// the outbox is full.
const OUTBOX_ADD: &str = r#"
local now = tonumber(ARGV[8])
local gone = redis.call("ZRANGEBYSCORE", KEYS[5], "-inf", now, "LIMIT", 0, 1000)
for _, id in ipairs(gone) do
  redis.call("ZREM", KEYS[5], id)
  redis.call("ZREM", KEYS[4], id)
end
redis.call("ZREMRANGEBYSCORE", KEYS[6], "-inf", now)
if redis.call("ZCARD", KEYS[6]) >= tonumber(ARGV[10]) then return 1 end
if redis.call("ZCARD", KEYS[5]) >= tonumber(ARGV[9]) then return 2 end
local ms = tonumber(ARGV[7])
local expires = now + ms
redis.call("HSET", KEYS[1], "value", ARGV[2], "lane", ARGV[3], "source", ARGV[4])
redis.call("PEXPIRE", KEYS[1], ms)
redis.call("SADD", KEYS[2], ARGV[3])
redis.call("ZADD", KEYS[3], ARGV[6], ARGV[1])
redis.call("ZADD", KEYS[4], ARGV[5], ARGV[1])
redis.call("ZADD", KEYS[5], expires, ARGV[1])
redis.call("ZADD", KEYS[6], expires, ARGV[1])
for i = 2, 6 do keep(KEYS[i], ms) end
return 0
"#;

/// KEYS: entry, lanes, lane's due. ARGV: id, value, due ms, lane. Only an entry that is still there.
const OUTBOX_RESCHEDULE: &str = r#"
local left = redis.call("PTTL", KEYS[1])
if left < 0 then return 0 end
redis.call("HSET", KEYS[1], "value", ARGV[2])
redis.call("ZADD", KEYS[3], ARGV[3], ARGV[1])
redis.call("SADD", KEYS[2], ARGV[4])
keep(KEYS[2], left)
keep(KEYS[3], left)
return 1
"#;

/// KEYS: entry, lanes, lane's due, created, expiry. ARGV: id, lane, the source keys' prefix. The
/// source is read from the entry (gone with an expired entry, whose source count dropped it already).
const OUTBOX_REMOVE: &str = r#"
local source = redis.call("HGET", KEYS[1], "source")
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[3], ARGV[1])
redis.call("ZREM", KEYS[4], ARGV[1])
redis.call("ZREM", KEYS[5], ARGV[1])
if source then redis.call("ZREM", ARGV[3] .. source, ARGV[1]) end
if redis.call("ZCARD", KEYS[3]) == 0 then redis.call("SREM", KEYS[2], ARGV[2]) end
return 1
"#;

/// KEYS: legacy entries, legacy due, legacy age, lanes, the legacy lane's due, created, expiry.
/// ARGV: keep ms, now ms, the entry keys' prefix, lane name, batch. Moves up to a batch of the
/// earliest-due legacy entries into the legacy lane (no source: they count toward no key's cap).
const OUTBOX_MIGRATE: &str = r#"
local ids = redis.call("ZRANGE", KEYS[2], 0, tonumber(ARGV[5]) - 1)
local ms = tonumber(ARGV[1])
for _, id in ipairs(ids) do
  local value = redis.call("HGET", KEYS[1], id)
  local due = redis.call("ZSCORE", KEYS[2], id)
  local created = redis.call("ZSCORE", KEYS[3], id) or due
  if value then
    local entry = ARGV[3] .. id
    redis.call("HSET", entry, "value", value, "lane", ARGV[4], "source", "")
    redis.call("PEXPIRE", entry, ms)
    redis.call("SADD", KEYS[4], ARGV[4])
    redis.call("ZADD", KEYS[5], due, id)
    redis.call("ZADD", KEYS[6], created, id)
    redis.call("ZADD", KEYS[7], tonumber(ARGV[2]) + ms, id)
  end
  redis.call("HDEL", KEYS[1], id)
  redis.call("ZREM", KEYS[2], id)
  redis.call("ZREM", KEYS[3], id)
end
if #ids > 0 then for i = 4, 7 do keep(KEYS[i], ms) end end
return #ids
"#;

/// Legacy entries moved per `outbox_migrate` call.
const MIGRATE_BATCH: usize = 100;

fn outbox_script(body: &str) -> Script {
    Script::new(&format!("{KEEP_AT_LEAST}{body}"))
}

const UNLOCK: &str =
    r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;
const EXTEND: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

/// KEYS: lock, record, pending, pending-bytes, the pending part's accounts. ARGV: token, record (or
/// "" with ARGV[3] = "del"), ttl ms, record op, pending op (keep | set), pending bytes, max pending
/// bytes, max pending bytes per account, the prefix of an account's count, the writer's accounts
/// (one a line). 0: the lock is lost; 1: saved; 2: the unfinished parts would pass the cap; 3: one
/// of the part's accounts would.
///
/// An account's count key is made here from the accounts stored with the part (a single Redis, as
/// the locks assume): the part is uncounted from the accounts it was counted under, whoever removes it.
const PUT_FENCED: &str = r#"
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[5] == "set" then
  local old = redis.call("STRLEN", KEYS[3])
  local new = string.len(ARGV[6])
  local total = tonumber(redis.call("GET", KEYS[4]) or "0")
  -- Those stored with the part; else (a new part, or one an older gateway stored) the writer's.
  local accounts = redis.call("GET", KEYS[5]) or ARGV[10]
  local counts = {}
  for account in string.gmatch(accounts, "[^\n]+") do
    table.insert(counts, ARGV[9] .. account)
  end
  if new > old then
    if total - old + new > tonumber(ARGV[7]) then return 2 end
    for _, count in ipairs(counts) do
      if tonumber(redis.call("GET", count) or "0") - old + new > tonumber(ARGV[8]) then return 3 end
    end
  end
  if new == 0 then
    redis.call("DEL", KEYS[3], KEYS[5])
  else
    redis.call("SET", KEYS[3], ARGV[6])
    redis.call("SET", KEYS[5], accounts)
  end
  -- A count back at zero is removed, so an idle store holds no key at all.
  if new ~= old then
    if redis.call("INCRBY", KEYS[4], new - old) <= 0 then redis.call("DEL", KEYS[4]) end
    for _, count in ipairs(counts) do
      if redis.call("INCRBY", count, new - old) <= 0 then redis.call("DEL", count) end
    end
  end
end
if ARGV[4] == "del" then
  redis.call("DEL", KEYS[2])
else
  redis.call("SET", KEYS[2], ARGV[2], "PX", ARGV[3])
end
return 1
"#;

/// KEYS: the owner's set. ARGV: id, expires_at, now, max. 1: counted; 0: the owner is at the cap.
/// The set outlives its latest member's expiry by 5 s (the replicas' clocks differ by less): a member
/// no close could remove (the store was down when its upload ended) is gone with its upload.
const OPEN_UPLOAD: &str = r#"
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", ARGV[3])
if redis.call("ZCARD", KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call("ZADD", KEYS[1], ARGV[2], ARGV[1])
local ttl = (tonumber(ARGV[2]) - tonumber(ARGV[3]) + 5) * 1000
if redis.call("PTTL", KEYS[1]) < ttl then redis.call("PEXPIRE", KEYS[1], ttl) end
return 1
"#;

/// `rate::take` in one step. KEYS: the rate hash. ARGV: now, recovery, then per lane interval
/// (0: no such lane), burst, cost. Answers 0 (taken) or the milliseconds to wait.
const RATE_TAKE: &str = r#"
local now = tonumber(ARGV[1])
local recovery = tonumber(ARGV[2])
local s = redis.call("HMGET", KEYS[1], "t0", "t1", "p", "sa", "st")
local tat = {tonumber(s[1]) or 0, tonumber(s[2]) or 0}
local paused = tonumber(s[3]) or 0
local sa = tonumber(s[4]) or 0
local st = tonumber(s[5]) or 0
if paused > now then return math.max(1, math.ceil(paused - now)) end
local f = 1
if st > 0 and recovery > 0 then f = math.min(1, st + math.max(0, now - sa) / recovery) end
local nxt = {tat[1], tat[2]}
local wait = 0
for i = 1, 2 do
  local interval = tonumber(ARGV[3 * i])
  if interval > 0 then
    local burst = tonumber(ARGV[3 * i + 1])
    local cost = math.min(tonumber(ARGV[3 * i + 2]), burst)
    interval = interval / f
    local t = math.max(tat[i], now) + cost * interval
    local over = t - now - burst * interval
    if over > 1e-3 and over > wait then wait = over end
    nxt[i] = t
  end
end
if wait > 0 then return math.max(1, math.ceil(wait)) end
redis.call("HSET", KEYS[1], "t0", nxt[1], "t1", nxt[2])
local keep = math.max(nxt[1], nxt[2], paused, sa + recovery) - now
redis.call("PEXPIRE", KEYS[1], math.ceil(math.max(keep, 0)) + 1000)
return 0
"#;

/// `rate::give_back` in one step. KEYS: the rate hash. ARGV: now, recovery, then per lane interval
/// (0: no such lane), burst, cost. A hash that is gone (expired: the lanes were idle) stays gone.
const RATE_GIVE_BACK: &str = r#"
if redis.call("EXISTS", KEYS[1]) == 0 then return 0 end
local now = tonumber(ARGV[1])
local recovery = tonumber(ARGV[2])
local s = redis.call("HMGET", KEYS[1], "t0", "t1", "p", "sa", "st")
local tat = {tonumber(s[1]) or 0, tonumber(s[2]) or 0}
local sa = tonumber(s[4]) or 0
local st = tonumber(s[5]) or 0
local f = 1
if st > 0 and recovery > 0 then f = math.min(1, st + math.max(0, now - sa) / recovery) end
for i = 1, 2 do
  local interval = tonumber(ARGV[3 * i])
  if interval > 0 and tat[i] > now then
    local cost = math.min(tonumber(ARGV[3 * i + 2]), tonumber(ARGV[3 * i + 1]))
    tat[i] = math.max(tat[i] - cost * interval / f, now)
  end
end
redis.call("HSET", KEYS[1], "t0", tat[1], "t1", tat[2])
return 1
"#;

/// `rate::throttle` in one step. KEYS: the rate hash. ARGV: now, until, recovery, grace, floor.
const RATE_THROTTLE: &str = r#"
local now = tonumber(ARGV[1])
local recovery = tonumber(ARGV[3])
local s = redis.call("HMGET", KEYS[1], "t0", "t1", "p", "sa", "st")
local t0 = tonumber(s[1]) or 0
local t1 = tonumber(s[2]) or 0
local paused = math.max(tonumber(s[3]) or 0, tonumber(ARGV[2]))
local sa = tonumber(s[4]) or 0
local st = tonumber(s[5]) or 0
if not (st > 0 and now - sa < tonumber(ARGV[4])) then
  local f = 1
  if st > 0 and recovery > 0 then f = math.min(1, st + math.max(0, now - sa) / recovery) end
  st = math.max(f / 2, tonumber(ARGV[5]))
  sa = now
end
redis.call("HSET", KEYS[1], "p", paused, "sa", sa, "st", st)
local keep = math.max(t0, t1, paused, sa + recovery) - now
redis.call("PEXPIRE", KEYS[1], math.ceil(math.max(keep, 0)) + 1000)
return 1
"#;

fn open_key(owner: &str) -> String {
    key(&format!("open:{owner}"))
}

pub struct RedisStore {
    client: redis::Client,
    /// Connected at the first call (so the gateway starts, and says so, while Redis is still coming
    /// up); the manager then reconnects by itself.
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

/// Redis's own error; the URL (which may hold a password) is never part of it.
fn err(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

fn key(k: &str) -> String {
    format!("{PREFIX}{k}")
}

/// `RATE_TAKE` or `RATE_GIVE_BACK` on `k`, with a take's arguments: now, recovery, then per lane
/// interval (0: no such lane), burst, cost.
fn rate_invocation<'a>(
    script: &'a Script,
    k: &str,
    take: &super::rate::RateTake,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation.key(key(k)).arg(take.now_ms).arg(take.recovery_ms);
    for lane in take.lanes {
        match lane {
            Some(l) => invocation.arg(l.interval_ms).arg(l.burst).arg(l.cost),
            None => invocation.arg(0).arg(0).arg(0),
        };
    }
    invocation
}

fn ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl RedisStore {
    /// `url`: `redis://`, `rediss://` (TLS through rustls, the server's certificate checked against
    /// the system's roots, or against `ca_file`'s CAs alone when given) or `redis+unix://`.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> StoreResult<Self> {
        // rustls's process-wide provider (ring), which `rediss://` connections are made with.
        crate::http_client::install_tls_provider();
        let invalid = |_| StoreError("redis_url is not a valid Redis URL".into());
        let client = match ca_file {
            None => redis::Client::open(url).map_err(invalid)?,
            Some(file) => {
                let root_cert = std::fs::read(file)
                    .map_err(|e| StoreError(format!("redis_ca_file {}: {e}", file.display())))?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                // The URL is never part of the error: it may carry a password.
                redis::Client::build_with_tls(url, certificates)
                    .map_err(|e| StoreError(format!("redis_url with redis_ca_file: {}", e.category())))?
            }
        };
        Ok(Self {
            client,
            conn: tokio::sync::OnceCell::new(),
        })
    }

    async fn conn(&self) -> StoreResult<ConnectionManager> {
        self.conn
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await
            .cloned()
            .map_err(err)
    }
}

impl StateStore for RedisStore {
    fn get<'a>(&'a self, k: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>> {
        async move {
            let mut c = self.conn().await?;
            cmd("GET").arg(key(k)).query_async(&mut c).await.map_err(err)
        }
        .boxed()
    }

    fn put<'a>(&'a self, k: &'a str, value: Vec<u8>, ttl: Duration) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            cmd("SET")
                .arg(key(k))
                .arg(value)
                .arg("PX")
                .arg(ms(ttl))
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn put_new<'a>(&'a self, k: &'a str, value: Vec<u8>, ttl: Duration) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let mut c = self.conn().await?;
            let set: Option<String> = cmd("SET")
                .arg(key(k))
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ms(ttl))
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok(set.is_some())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, k: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            cmd("DEL").arg(key(k)).query_async(&mut c).await.map_err(err)
        }
        .boxed()
    }

    fn lock<'a>(&'a self, k: &'a str, ttl: Duration) -> BoxFuture<'a, StoreResult<Option<Lock>>> {
        async move {
            let lock = Lock {
                key: format!("lock:{k}"),
                token: new_token(),
            };
            let taken = self
                .put_new(&lock.key, lock.token.clone().into_bytes(), ttl)
                .await?;
            Ok(taken.then_some(lock))
        }
        .boxed()
    }

    fn extend<'a>(&'a self, lock: &'a Lock, ttl: Duration) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let mut c = self.conn().await?;
            let n: i64 = Script::new(EXTEND)
                .key(key(&lock.key))
                .arg(&lock.token)
                .arg(ms(ttl))
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(n == 1)
        }
        .boxed()
    }

    fn unlock<'a>(&'a self, lock: &'a Lock) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            let _: i64 = Script::new(UNLOCK)
                .key(key(&lock.key))
                .arg(&lock.token)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn schedule<'a>(&'a self, id: &'a str, at: u64) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            cmd("ZADD")
                .arg(EXPIRY)
                .arg(at)
                .arg(id)
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn unschedule<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            cmd("ZREM")
                .arg(EXPIRY)
                .arg(id)
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn due<'a>(&'a self, now: u64, limit: usize) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        async move {
            let mut c = self.conn().await?;
            cmd("ZRANGEBYSCORE")
                .arg(EXPIRY)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn put_fenced<'a>(&'a self, lock: &'a Lock, write: FencedWrite) -> BoxFuture<'a, StoreResult<Fenced>> {
        async move {
            let mut c = self.conn().await?;
            let (record_op, record) = match &write.value {
                Some(v) => ("set", v.as_slice()),
                None => ("del", &[][..]),
            };
            let (pending_op, pending) = match &write.pending {
                Some(p) => ("set", p.clone()),
                None => ("keep", Bytes::new()),
            };
            let n: i64 = Script::new(PUT_FENCED)
                .key(key(&lock.key))
                .key(key(&write.key))
                .key(key(&write.pending_key))
                .key(PENDING_BYTES)
                .key(key(&pending_accounts(&write.pending_key)))
                .arg(&lock.token)
                .arg(record)
                .arg(ms(write.ttl))
                .arg(record_op)
                .arg(pending_op)
                .arg(pending.as_ref())
                .arg(write.max_pending_bytes)
                .arg(write.max_pending_bytes_per_account)
                .arg(PENDING_BYTES_OF)
                .arg(write.pending_accounts.join("\n"))
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(match n {
                1 => Fenced::Saved,
                2 => Fenced::Full,
                3 => Fenced::AccountFull,
                _ => Fenced::LockLost,
            })
        }
        .boxed()
    }

    fn get_pending<'a>(&'a self, k: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>> {
        self.get(k)
    }

    fn pending_bytes(&self) -> BoxFuture<'_, StoreResult<u64>> {
        async move {
            let mut c = self.conn().await?;
            let n: Option<i64> = cmd("GET")
                .arg(PENDING_BYTES)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok(n.unwrap_or(0).max(0) as u64)
        }
        .boxed()
    }

    fn pending_bytes_of<'a>(&'a self, account: &'a str) -> BoxFuture<'a, StoreResult<u64>> {
        async move {
            let mut c = self.conn().await?;
            let n: Option<i64> = cmd("GET")
                .arg(format!("{PENDING_BYTES_OF}{account}"))
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok(n.unwrap_or(0).max(0) as u64)
        }
        .boxed()
    }

    fn open_upload<'a>(
        &'a self,
        owner: &'a str,
        id: &'a str,
        expires_at: u64,
        now: u64,
        max: usize,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let mut c = self.conn().await?;
            let n: i64 = Script::new(OPEN_UPLOAD)
                .key(open_key(owner))
                .arg(id)
                .arg(expires_at)
                .arg(now)
                .arg(max)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(n == 1)
        }
        .boxed()
    }

    fn close_upload<'a>(&'a self, owner: &'a str, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            cmd("ZREM")
                .arg(open_key(owner))
                .arg(id)
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn outbox_add<'a>(&'a self, add: OutboxAdd<'a>) -> BoxFuture<'a, StoreResult<OutboxAdded>> {
        async move {
            let mut c = self.conn().await?;
            let n: i64 = outbox_script(OUTBOX_ADD)
                .key(format!("{OUTBOX_ENTRY}{}", add.id))
                .key(OUTBOX_LANES)
                .key(format!("{OUTBOX_LANE_DUE}{}", add.lane))
                .key(OUTBOX_CREATED)
                .key(OUTBOX_EXPIRY)
                .key(format!("{OUTBOX_SOURCE}{}", add.source))
                .arg(add.id)
                .arg(add.value)
                .arg(add.lane)
                .arg(add.source)
                .arg(add.created_ms)
                .arg(add.due_ms)
                .arg(ms(add.keep))
                .arg(super::now_ms())
                .arg(add.max_events)
                .arg(add.max_events_per_source)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(match n {
                0 => OutboxAdded::Added,
                1 => OutboxAdded::SourceFull,
                _ => OutboxAdded::Full,
            })
        }
        .boxed()
    }

    fn outbox_reschedule<'a>(
        &'a self,
        id: &'a str,
        lane: &'a str,
        value: Vec<u8>,
        due_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            let _: i64 = outbox_script(OUTBOX_RESCHEDULE)
                .key(format!("{OUTBOX_ENTRY}{id}"))
                .key(OUTBOX_LANES)
                .key(format!("{OUTBOX_LANE_DUE}{lane}"))
                .arg(id)
                .arg(value)
                .arg(due_ms)
                .arg(lane)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn outbox_lanes(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        async move {
            let mut c = self.conn().await?;
            cmd("SMEMBERS")
                .arg(OUTBOX_LANES)
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn outbox_due<'a>(
        &'a self,
        lane: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        async move {
            let mut c = self.conn().await?;
            cmd("ZRANGEBYSCORE")
                .arg(format!("{OUTBOX_LANE_DUE}{lane}"))
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn outbox_get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<u8>>>> {
        async move {
            let mut c = self.conn().await?;
            cmd("HGET")
                .arg(format!("{OUTBOX_ENTRY}{id}"))
                .arg("value")
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn outbox_remove<'a>(&'a self, id: &'a str, lane: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            let _: i64 = outbox_script(OUTBOX_REMOVE)
                .key(format!("{OUTBOX_ENTRY}{id}"))
                .key(OUTBOX_LANES)
                .key(format!("{OUTBOX_LANE_DUE}{lane}"))
                .key(OUTBOX_CREATED)
                .key(OUTBOX_EXPIRY)
                .arg(id)
                .arg(lane)
                .arg(OUTBOX_SOURCE)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn outbox_stats(&self) -> BoxFuture<'_, StoreResult<(u64, Option<u64>)>> {
        async move {
            let mut c = self.conn().await?;
            let depth: u64 = cmd("ZCARD")
                .arg(OUTBOX_CREATED)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            let oldest: Vec<(String, f64)> = cmd("ZRANGE")
                .arg(OUTBOX_CREATED)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok((depth, oldest.first().map(|(_, score)| *score as u64)))
        }
        .boxed()
    }

    fn outbox_migrate(&self, keep: Duration) -> BoxFuture<'_, StoreResult<u64>> {
        async move {
            let mut c = self.conn().await?;
            let moved: u64 = outbox_script(OUTBOX_MIGRATE)
                .key(LEGACY_OUTBOX)
                .key(LEGACY_OUTBOX_DUE)
                .key(LEGACY_OUTBOX_AGE)
                .key(OUTBOX_LANES)
                .key(format!("{OUTBOX_LANE_DUE}{OUTBOX_LEGACY_LANE}"))
                .key(OUTBOX_CREATED)
                .key(OUTBOX_EXPIRY)
                .arg(ms(keep))
                .arg(super::now_ms())
                .arg(OUTBOX_ENTRY)
                .arg(OUTBOX_LEGACY_LANE)
                .arg(MIGRATE_BATCH)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(moved)
        }
        .boxed()
    }

    fn rate_take<'a>(&'a self, k: &'a str, take: super::rate::RateTake) -> BoxFuture<'a, StoreResult<u64>> {
        async move {
            let mut c = self.conn().await?;
            let script = Script::new(RATE_TAKE);
            let wait: i64 = rate_invocation(&script, k, &take)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(wait.max(0) as u64)
        }
        .boxed()
    }

    fn rate_give_back<'a>(
        &'a self,
        k: &'a str,
        take: super::rate::RateTake,
    ) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            let script = Script::new(RATE_GIVE_BACK);
            // The hash keeps its time to live: giving back only ever shortens what it must remember.
            let _: i64 = rate_invocation(&script, k, &take)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn rate_throttle<'a>(
        &'a self,
        k: &'a str,
        t: super::rate::RateThrottle,
    ) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let mut c = self.conn().await?;
            let _: i64 = Script::new(RATE_THROTTLE)
                .key(key(k))
                .arg(t.now_ms)
                .arg(t.until_ms)
                .arg(t.recovery_ms)
                .arg(t.grace_ms)
                .arg(t.floor)
                .invoke_async(&mut c)
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }
}
