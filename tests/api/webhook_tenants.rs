//! Completion events between tenants, written as the attacks of issue 24: each key's receiver holds
//! only its own secret, a receiver that never answers or a key that floods delays no other key's
//! events, the outbox stays bounded (and has a TTL in Redis), the URL and secret come from the
//! configuration at delivery, and no configured URL's credentials reach the log. Real receivers on
//! loopback (tests/python/webhook_receiver.py checks signatures with `standardwebhooks`), the real
//! gateway and emulator, a real Redis.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use serde_json::{json, Value};

use crate::support::process::{emulator_env, env_refs, Gateway, BIN};
use crate::support::redis_server::RedisServer;
use crate::support::webhook_receiver::{assert_verified, Receiver};
use crate::support::*;

/// The gateway's own secrets (a rotation: both sign), a key's, another key's.
const GLOBAL: &str = "webhook_secret";
const GLOBAL_NEXT: &str = "webhook_secret_next";
const TEAM: &str = "webhook_secret_team";
const OTHER: &str = "webhook_secret_other";

/// A `[[keys]]` entry for folder 0 whose key is the secret `api_key` (tests/secrets.txt), with its own
/// receiver at `url` signed with the secret `webhook_secret` (None: the key has no receiver).
fn key(name: &str, api_key: &str, receiver: Option<(String, &str)>) -> ApiKey {
    let key = ApiKey::new(name, secret(api_key));
    match receiver {
        Some((url, webhook_secret)) => key.webhook_url(&url).webhook_secret(secret(webhook_secret)),
        None => key,
    }
}

/// A gateway with `keys` (no anonymous callers), its own receiver at `global` (if any) signed with
/// both of its secrets, fast retries; `change` for the rest.
fn options(
    keys: Vec<ApiKey>,
    global: Option<String>,
    change: impl FnOnce(&mut Settings) + 'static,
) -> Options {
    Options {
        gateway: Some(Box::new(move |s, _| {
            s.allow_anonymous = false;
            s.api_keys = keys.iter().map(ApiKey::config).collect();
            if let Some(url) = global {
                s.webhook_url = Some(url);
                s.webhook_secret = Some(Secret::new(format!("{} {}", secret(GLOBAL), secret(GLOBAL_NEXT))));
            }
            s.webhook_min_backoff_ms = 100;
            s.webhook_max_backoff_secs = 1;
            change(s);
        })),
        ..Options::default()
    }
}

/// A small upload as the key `api_key`, answered 201 (the file is in Box whatever the events do).
async fn put_as(address: &str, api_key: &str, name: &str) -> Value {
    let answer = put_raw(
        address,
        name,
        name.as_bytes().to_vec(),
        &[("x-api-key", secret(api_key))],
    )
    .await;
    assert_eq!(answer.status, 201, "{name}");
    answer.json
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    eventually(what, within, || std::future::ready(done())).await
}

/// A receiver that accepts connections and never answers (it reads and drops what comes): what it
/// saw is counted.
struct Blackhole {
    port: u16,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, open, most_open) = <(Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>)>::default();
        let counts = (accepted.clone(), open.clone(), most_open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (accepted, open, most_open) = (counts.0.clone(), counts.1.clone(), counts.2.clone());
                accepted.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most_open.fetch_max(now, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut socket, &mut tokio::io::sink()).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            accepted,
            open,
            most_open,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which of the receiver's secrets verified each request it got (one list per request).
fn verified_by(got: &[Value]) -> Vec<Value> {
    got.iter().map(|g| g["verified"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_receiver_verifies_only_its_own_keys_events() {
    // Arrange: "team" and "other" have their own receivers and secrets; "plain" has none, so its
    // events go to the gateway's receiver. Each receiver checks every request with every secret.
    let team_receiver = Receiver::started_checking(&[secret(TEAM), secret(OTHER), secret(GLOBAL)]).await;
    let other_receiver = Receiver::started_checking(&[secret(OTHER), secret(TEAM), secret(GLOBAL)]).await;
    let gateway_receiver = Receiver::started_checking(&[secret(GLOBAL), secret(TEAM), secret(OTHER)]).await;
    let keys = vec![
        key("team", "api_key_team", Some((team_receiver.url(), TEAM))),
        key("other", "api_key_admin", Some((other_receiver.url(), OTHER))),
        key("plain", "caller_box_token", None),
    ];
    let app = spawn_app_with(options(keys, Some(gateway_receiver.url()), |_| {})).await;

    // Act
    let team = put_as(&app.address, "api_key_team", "team.bin").await;
    let other = put_as(&app.address, "api_key_admin", "other.bin").await;
    let plain = put_as(&app.address, "caller_box_token", "plain.bin").await;
    let team_got = team_receiver.wait_for(1, Duration::from_secs(30)).await;
    let other_got = other_receiver.wait_for(1, Duration::from_secs(30)).await;
    let gateway_got = gateway_receiver.wait_for(1, Duration::from_secs(30)).await;
    // A second event would come within this.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Assert: each receiver got its key's one event, which only its own secret verifies.
    for (receiver, answer, key) in [
        (&team_receiver, &team, "team"),
        (&other_receiver, &other, "other"),
        (&gateway_receiver, &plain, "plain"),
    ] {
        let got = receiver.received();
        assert_eq!(got.len(), 1, "{key}: {got:?}");
        assert_eq!(verified_by(&got), [json!([true, false, false])], "{key}: {got:?}");
        let data = &got[0]["event"]["data"];
        assert_eq!(data["key"], key, "{data}");
        assert_eq!(data["file_id"], answer["file"]["id"], "{data}");
    }
    assert_eq!((team_got.len(), other_got.len(), gateway_got.len()), (1, 1, 1));
    assert_eq!(app.metrics.webhook_delivered.get(), 3);
}

/// The attack of issue 24: a key's receiver accepts connections and never answers while 40 of its
/// events are due; another key's 3 events arrive within 20 s all the same (the default timeout,
/// concurrency and per-receiver limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_holds_40_events_and_delays_no_other_receiver() {
    // Arrange
    let blackhole = Blackhole::start().await;
    let ok_receiver = Receiver::started_checking(&[secret(OTHER)]).await;
    let keys = vec![
        key("stalled", "api_key_team", Some((blackhole.url(), TEAM))),
        key("ok", "api_key_admin", Some((ok_receiver.url(), OTHER))),
    ];
    let app = spawn_app_with(options(keys, None, |s| {
        // The defaults, whatever `options` shortens.
        let d = Settings::default();
        s.webhook_min_backoff_ms = d.webhook_min_backoff_ms;
        s.webhook_max_backoff_secs = d.webhook_max_backoff_secs;
    }))
    .await;
    let d = Settings::default();
    assert_eq!(
        (
            d.webhook_timeout_secs,
            d.webhook_concurrency,
            d.webhook_receiver_concurrency
        ),
        (10, 8, 2)
    );

    // Act: 40 events for the receiver that never answers, then 3 for another.
    for i in 0..40 {
        put_as(&app.address, "api_key_team", &format!("stalled-{i}.bin")).await;
    }
    wait_until(
        "the stalled receiver to be tried",
        Duration::from_secs(10),
        || blackhole.accepted.load(Ordering::SeqCst) >= 1,
    )
    .await;
    let began = tokio::time::Instant::now();
    for i in 0..3 {
        put_as(&app.address, "api_key_admin", &format!("ok-{i}.bin")).await;
    }
    let got = ok_receiver.wait_for(3, Duration::from_secs(20)).await;
    let took = began.elapsed();

    // Assert
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_verified(&got);
    assert!(got.iter().all(|g| g["event"]["data"]["key"] == "ok"), "{got:?}");
    // The stalled receiver held at most its own share of the slots, and every one of its events is
    // still waiting (none delivered, none lost).
    let most = blackhole.most_open.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "connections open at once to it: {most}");
    assert_eq!(app.metrics.webhook_delivered.get(), 3);
    assert_eq!(
        app.metrics
            .webhook_events
            .with_label_values(&["upload.completed", "stored"])
            .get(),
        43
    );
    wait_until("the depth metric", Duration::from_secs(5), || {
        app.metrics.webhook_outbox_depth.get() == 40
    })
    .await;
    eprintln!(
        "webhook_tenants: 3 events of another key arrived in {} ms behind 40 events of a receiver that never answers ({} connections to it, at most {} at once, {} open now)",
        took.as_millis(),
        blackhole.accepted.load(Ordering::SeqCst),
        most,
        blackhole.open.load(Ordering::SeqCst)
    );
}

/// The caps: past a key's own, its new events are refused and counted while another key's still go;
/// past the whole outbox's, every key's are. The uploads themselves are answered 201 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_outbox_caps_new_events_are_refused_and_counted_and_other_keys_go_on() {
    // Arrange: "flood" and "third" have receivers that are down (their events stay in the outbox);
    // "ok" has one that takes its events. At most 5 events per key, 8 in all.
    let (flood_receiver, third_receiver) = (Receiver::planned_with(&[]), Receiver::planned_with(&[]));
    let ok_receiver = Receiver::started_checking(&[secret(OTHER)]).await;
    let keys = vec![
        key("flood", "api_key_team", Some((flood_receiver.url(), TEAM))),
        key("ok", "api_key_admin", Some((ok_receiver.url(), OTHER))),
        key("third", "caller_box_token", Some((third_receiver.url(), GLOBAL))),
    ];
    let app = spawn_app_with(options(keys, None, |s| {
        s.webhook_outbox_max_events_per_key = 5;
        s.webhook_outbox_max_events = 8;
    }))
    .await;
    let refused = |key: &str, cap: &str| {
        app.metrics
            .webhook_outbox_refused
            .with_label_values(&[key, cap])
            .get()
    };

    // Act 1: seven events of "flood", two of "ok".
    for i in 0..7 {
        put_as(&app.address, "api_key_team", &format!("flood-{i}.bin")).await;
    }
    for i in 0..2 {
        put_as(&app.address, "api_key_admin", &format!("ok-{i}.bin")).await;
    }
    let ok_got = ok_receiver.wait_for(2, Duration::from_secs(20)).await;

    // Assert 1: "flood" holds 5; its 2 more were refused; "ok"'s went.
    assert_eq!(refused("flood", "key"), 2);
    assert_eq!(ok_got.len(), 2, "{ok_got:?}");
    assert_verified(&ok_got);
    assert_eq!(refused("ok", "key") + refused("ok", "total"), 0);

    // Act 2: five events of "third" fill the outbox (5 + 3 = 8); then "ok" has one more.
    for i in 0..5 {
        put_as(&app.address, "caller_box_token", &format!("third-{i}.bin")).await;
    }
    put_as(&app.address, "api_key_admin", "ok-late.bin").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Assert 2: the whole outbox's cap refused "third"'s last 2 and "ok"'s; it holds 8.
    assert_eq!(refused("third", "total"), 2);
    assert_eq!(refused("ok", "total"), 1);
    assert_eq!(ok_receiver.received().len(), 2, "nothing more was sent");
    wait_until("the depth metric", Duration::from_secs(5), || {
        app.metrics.webhook_outbox_depth.get() == 8
    })
    .await;
    let stored = app
        .metrics
        .webhook_events
        .with_label_values(&["upload.completed", "stored"])
        .get();
    assert_eq!(stored, 5 + 2 + 3);
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"gateway_webhook_outbox_refused_total{cap="key",key="flood"} 2"#),
        "{text}"
    );
}

/// With Redis and two replicas, a key flooding events (its receiver never answers) is held to its
/// cap across both, every entry has a time to live, and another key's events still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_key_is_bounded_across_replicas_and_another_keys_events_arrive() {
    // Arrange
    let redis = RedisServer::start().await;
    let blackhole = Blackhole::start().await;
    let ok_receiver = Receiver::started_checking(&[secret(OTHER)]).await;
    let keys = || {
        vec![
            key("flood", "api_key_team", Some((blackhole.url(), TEAM))),
            key("ok", "api_key_admin", Some((ok_receiver.url(), OTHER))),
        ]
    };
    let with_redis = |keys| {
        let url = redis.url.clone();
        options(keys, None, move |s| {
            s.webhook_outbox_max_events_per_key = 20;
            s.redis_url = Some(Secret::new(url));
        })
    };
    let app = spawn_app_with(with_redis(keys())).await;
    let other = spawn_replica(&app, with_redis(keys())).await;

    // Act: 60 events of "flood", half through each replica, then 3 of "ok".
    let replicas = [app.address.clone(), other.address.clone()];
    for i in 0..60 {
        put_as(&replicas[i % 2], "api_key_team", &format!("flood-{i}.bin")).await;
    }
    let began = tokio::time::Instant::now();
    for i in 0..3 {
        put_as(&replicas[i % 2], "api_key_admin", &format!("ok-{i}.bin")).await;
    }
    let got = ok_receiver.wait_for(3, Duration::from_secs(20)).await;
    let took = began.elapsed();

    // Assert: "ok"'s arrived; "flood" holds 20 events in Redis, whichever replica took them.
    assert_eq!(got.len(), 3, "{got:?}");
    assert_verified(&got);
    let refused = |m: &box_upload_gateway::metrics::GatewayMetrics| {
        m.webhook_outbox_refused
            .with_label_values(&["flood", "key"])
            .get()
    };
    assert_eq!(refused(&app.metrics) + refused(&other.metrics), 40);
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = "box-upload-gateway:";
    let held: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}outbox-source:flood"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(held, 20);
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}outbox-due:key:flood"))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ids.len(), 20, "{ids:?}");
    // Each entry lives at most webhook_max_age_secs and an hour, whether or not a worker comes.
    let most = (Settings::default().webhook_max_age_secs + 3600) * 1000;
    for id in &ids {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}outbox:e:{id}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl as u64 <= most, "{id}: {ttl}");
    }
    for shared in [
        "outbox-lanes",
        "outbox-created",
        "outbox-expiry",
        "outbox-due:key:flood",
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}{shared}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl as u64 <= most, "{shared}: {ttl}");
    }
    eprintln!(
        "webhook_tenants: with Redis, 3 events of another key arrived in {} ms beside a key flooding 60 (20 kept, 40 refused)",
        took.as_millis()
    );
}

/// What is stored names a receiver; only the configuration says where it is. An event stored by the
/// gateway before receivers were named (with its URL) goes to the configured receiver with that URL,
/// after retries too; one whose URL is configured nowhere is dropped, never sent; one whose key is
/// gone is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_go_only_where_the_configuration_says() {
    // Arrange: in Redis, two entries as the older gateway wrote them: one for the gateway's receiver
    // (and its URL), one for a URL nobody configured, one for the key "later", whose receiver is
    // down at first.
    let redis = RedisServer::start().await;
    let gateway_receiver = Receiver::started().await;
    let elsewhere = Blackhole::start().await;
    let mut later_receiver = Receiver::planned_with(&[secret(OTHER)]);
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let now = box_upload_gateway::state::now_ms();
    for (id, url) in [
        ("msg_older", gateway_receiver.url()),
        ("msg_elsewhere", elsewhere.url()),
        ("msg_later", later_receiver.url()),
    ] {
        let body = json!({"type": "upload.completed", "timestamp": "2026-12-01T00:00:00.000Z",
            "data": {"file_id": id, "key": "team"}})
        .to_string();
        let entry = json!({"url": url, "body": body, "created_ms": now, "due_ms": now, "attempts": 0});
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg("box-upload-gateway:outbox")
            .arg(id)
            .arg(entry.to_string())
            .cmd("ZADD")
            .arg("box-upload-gateway:outbox-due")
            .arg(now)
            .arg(id)
            .cmd("ZADD")
            .arg("box-upload-gateway:outbox-age")
            .arg(now)
            .arg(id)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // The key "gone" has a receiver that is down: its event waits in the outbox.
    let gone_receiver = Receiver::planned_with(&[]);
    let keys = |with_gone: bool| {
        let mut keys = vec![
            key("team", "api_key_team", None),
            key("later", "caller_box_token", Some((later_receiver.url(), OTHER))),
        ];
        if with_gone {
            keys.push(key("gone", "api_key_admin", Some((gone_receiver.url(), TEAM))));
        }
        keys
    };
    let redis_change = |url: String| move |s: &mut Settings| s.redis_url = Some(Secret::new(url));
    let app = spawn_app_with(options(
        keys(true),
        Some(gateway_receiver.url()),
        redis_change(redis.url.clone()),
    ))
    .await;
    put_as(&app.address, "api_key_admin", "gone.bin").await;

    // Act: a replica configured without the key "gone" takes part in delivery.
    let without = spawn_replica(
        &app,
        options(
            keys(false),
            Some(gateway_receiver.url()),
            redis_change(redis.url.clone()),
        ),
    )
    .await;
    let got = gateway_receiver.wait_for(1, Duration::from_secs(20)).await;
    let dead = |reason: &str| {
        app.metrics.webhook_dead.with_label_values(&[reason]).get()
            + without.metrics.webhook_dead.with_label_values(&[reason]).get()
    };
    wait_until("both entries dropped", Duration::from_secs(20), || {
        dead("no_receiver") == 2
    })
    .await;
    // msg_later is tried, and written back for its retries, while its receiver is down; then it
    // comes up.
    let entry = eventually("msg_later retried twice", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let stored: Option<String> = redis::cmd("HGET")
                .arg("box-upload-gateway:outbox:e:msg_later")
                .arg("value")
                .query_async(&mut c)
                .await
                .unwrap();
            let entry: Value = serde_json::from_str(&stored.expect("msg_later waits")).unwrap();
            (entry["attempts"].as_u64().unwrap() >= 2).then_some(entry)
        }
    })
    .await;
    assert_eq!(entry["receiver"], "key:later", "{entry}");
    assert!(entry.get("url").is_none(), "{entry}");
    later_receiver.start().await;
    let later = later_receiver.wait_for(1, Duration::from_secs(20)).await;

    // Assert: the older entry went to the configured receiver, signed with its secret; the other
    // never left the gateway; the key that is gone had its event dropped by the replica without it.
    assert_eq!(got.len(), 1, "{got:?}");
    assert_verified(&got);
    assert_eq!(got[0]["id"], "msg_older");
    assert_eq!(later.len(), 1, "{later:?}");
    assert_verified(&later);
    assert_eq!(
        later[0]["id"], "msg_later",
        "still for its receiver after its retries"
    );
    assert_eq!(
        elsewhere.accepted.load(Ordering::SeqCst),
        0,
        "nothing is sent to a stored URL"
    );
    assert!(
        without
            .metrics
            .webhook_dead
            .with_label_values(&["no_receiver"])
            .get()
            >= 1,
        "the replica without the key dropped its event"
    );
    let legacy: u64 = redis::cmd("HLEN")
        .arg("box-upload-gateway:outbox")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(legacy, 0, "the older layout is emptied");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway_receiver.received().len(), 1);
}

/// A keys file with `keys` (TOML), in `dir`.
fn keys_file(dir: &tempfile::TempDir, keys: &str) -> String {
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, keys).unwrap();
    path.display().to_string()
}

/// A URL carrying credentials in its user info and its query (tests/secrets.txt has both values).
fn credentialed(port: u16, path: &str) -> String {
    format!(
        "http://hook-user:{}@127.0.0.1:{port}{path}?token={}",
        secret("webhook_url_password"),
        secret("webhook_url_token")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_without_its_own_secret_or_with_a_short_one_is_refused_at_start() {
    // Arrange: "team" has a URL and no secret; "weak" a 1-byte secret; the gateway's too.
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(
        &dir,
        &format!(
            r#"
[[keys]]
name = "team"
sha256 = "{}"
folders = ["0"]
webhook_url = "{}"

[[keys]]
name = "weak"
sha256 = "{}"
folders = ["0"]
webhook_url = "http://127.0.0.1:9/weak"
webhook_secret = "whsec_YQ=="
"#,
            sha256_hex(secret("api_key_team")),
            credentialed(9, "/team"),
            sha256_hex(secret("api_key_admin")),
        ),
    );

    // Act
    let out = tokio::process::Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("BOX_DEVELOPER_TOKEN", secret("developer_token"))
        .env("GATEWAY_API_KEYS_FILE", &file)
        .env("GATEWAY_WEBHOOK_URL", credentialed(9, "/gateway"))
        .env("GATEWAY_WEBHOOK_SECRET", "whsec_YQ==")
        .output()
        .await
        .unwrap();

    // Assert
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for problem in [
        r#"api key "team": webhook_url needs the key's own webhook_secret or webhook_secret_file"#,
        r#"api key "weak": webhook_secret: secret 1 is 1 bytes; at least 24 are needed"#,
        "webhook_secret: secret 1 is 1 bytes; at least 24 are needed",
    ] {
        assert!(stderr.contains(problem), "{problem:?} not in: {stderr}");
    }
    for hidden in [
        secret("webhook_url_password"),
        secret("webhook_url_token"),
        "YQ==",
    ] {
        assert!(!stderr.contains(hidden), "{hidden} in: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_log_shows_no_credentials_of_any_configured_url() {
    // Arrange: the gateway's webhook URL, a key's, and the OTLP collector's, each with user info
    // and a query token; nothing listens at any of them.
    let emulator = box_upload_gateway::emulator::Emulator::spawn(Default::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (hooks, key_hooks, collector) = (free_port(), free_port(), free_port());
    // The key in the settings file (not a keys file): the startup line shows the settings.
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[api_keys]]\nname = \"team\"\nsha256 = \"{}\"\nfolders = [\"0\"]\nwebhook_url = \"{}\"\nwebhook_secret = \"{}\"\n",
            sha256_hex(secret("api_key_team")),
            credentialed(key_hooks, "/team-hooks"),
            secret(TEAM),
        ),
    )
    .unwrap();
    let mut env = emulator_env(&emulator);
    env.extend([
        (
            "BOX_DEVELOPER_TOKEN",
            box_upload_gateway::emulator::DEV_TOKEN.to_owned(),
        ),
        ("GATEWAY_CONFIG", config.display().to_string()),
        ("GATEWAY_WEBHOOK_URL", credentialed(hooks, "/hooks")),
        ("GATEWAY_WEBHOOK_SECRET", secret(GLOBAL).to_owned()),
        ("GATEWAY_OTLP_ENDPOINT", credentialed(collector, "")),
    ]);

    // Act
    let gateway = Gateway::start(&env_refs(&env)).await;
    let startup = gateway
        .logs
        .lines()
        .find(|l| l.contains("gateway listening"))
        .expect("the startup line")
        .to_owned();
    let logs = gateway.finish().await;

    // Assert: the URLs are there, as scheme, host, port and path only.
    for shown in [
        format!("http://127.0.0.1:{hooks}/hooks"),
        format!("http://127.0.0.1:{key_hooks}/team-hooks"),
        format!("http://127.0.0.1:{collector}/"),
    ] {
        assert!(startup.contains(&shown), "{shown} not in: {startup}");
    }
    for hidden in [
        secret("webhook_url_password"),
        secret("webhook_url_token"),
        "hook-user",
        "token=",
        secret(TEAM),
        secret(GLOBAL),
    ] {
        assert!(!startup.contains(hidden), "{hidden} in: {startup}");
        assert!(!logs.contains(hidden), "{hidden} in the logs: {logs}");
    }
}
