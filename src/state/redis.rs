//! The Redis store: shared by every replica. Values are Redis strings with a `PX` time to live; the
//! expiry index is one sorted set. A lock is `SET key token NX PX ttl`, extended and released by Lua
//! scripts that first check the token, so a replica never releases a lock another one took after its
//! own expired (the pattern of Redis's documentation, "Distributed locks with Redis", single instance).
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::ConnectionManager;
use redis::{cmd, Script};

use super::{new_token, Lock, StateStore, StoreError, StoreResult};

const PREFIX: &str = "box-upload-gateway:";
const EXPIRY: &str = "box-upload-gateway:expiry";

const UNLOCK: &str =
    r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;
const EXTEND: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

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

fn ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl RedisStore {
    pub fn new(url: &str) -> StoreResult<Self> {
        let client =
            redis::Client::open(url).map_err(|_| StoreError("redis_url is not a valid Redis URL".into()))?;
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

    fn kind(&self) -> &'static str {
        "redis"
    }
}
