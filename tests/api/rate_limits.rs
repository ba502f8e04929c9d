//! Box's rate limits (issue 17): the emulator enforces 40 uploads and 240 calls a minute per user, and
//! the gateway, paced a little under them, keeps Box's 429s to a handful, answers every client 201 or
//! 429/503 with `Retry-After` (never a failure half-way), and lands close to what the limit allows,
//! through one replica and through two sharing Redis. Per-key quotas and fairness between keys too.
//!
//! The hammering tests count Box's limits in a shorter window than Box's minute (`RATE_WINDOW_SECS`,
//! 15 by default): the same 40 uploads and 240 calls a window, the gateway paced to the same 36 and
//! 216 a window (4 times its per-minute settings), so every count per window, and every assertion,
//! is the minute's. Each phase lasts three quarters of the window, as the 45 s do of a
//! minute (`RATE_PHASE_SECS` sets another length): the uploads expected are the limit's rate times
//! the phase, so the ratio holds for any length. `RATE_WINDOW_SECS=60 RATE_PHASE_SECS=45` is the
//! issue's run. The fairness test keeps Box's minute: it measures waits against fixed seconds.
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::redis_server::RedisServer;
use crate::support::*;

const BOX_UPLOADS_PER_WINDOW: u32 = 40;
const BOX_CALLS_PER_WINDOW: u32 = 240;
/// The gateway's pace: 10 % under Box's, as the defaults are (900 and 220 against 1,000 and 240).
const GATEWAY_UPLOADS_PER_WINDOW: u32 = 36;
const GATEWAY_CALLS_PER_WINDOW: u32 = 216;
const CLIENTS: usize = 24;
/// Box's window: a minute.
const BOX_WINDOW: Duration = Duration::from_secs(60);

/// The window the hammering tests count Box's limits in.
fn window() -> Duration {
    Duration::from_secs(env_or("RATE_WINDOW_SECS", 15u64).clamp(1, 60))
}

/// How long clients hammer: `RATE_PHASE_SECS`, else three quarters of `window`.
fn phase_in(window: Duration) -> Duration {
    Duration::from_secs_f64(env_or("RATE_PHASE_SECS", window.as_secs_f64() * 0.75))
}

/// A gateway (and its emulator) with Box's limits counted over `window`, and the gateway paced to
/// match: its settings count a minute, so `per window` times the windows in a minute. `wait_secs`,
/// how long an admission may wait, is given for Box's minute and scaled the same way (whole seconds).
fn limited(redis_url: Option<String>, wait_secs: u64, keys: Vec<ApiKey>, window: Duration) -> Options {
    let scale = window.as_secs_f64() / BOX_WINDOW.as_secs_f64();
    let per_minute = |per_window: u32| (per_window as f64 / scale).round() as u32;
    let wait_secs = ((wait_secs as f64 * scale).round() as u64).max(1);
    let mut o = Options::default();
    o.faults.rate_calls_per_minute = Some(BOX_CALLS_PER_WINDOW);
    o.faults.rate_uploads_per_minute = Some(BOX_UPLOADS_PER_WINDOW);
    o.faults.rate_window_secs = Some(window.as_secs());
    let (calls, uploads) = (
        per_minute(GATEWAY_CALLS_PER_WINDOW),
        per_minute(GATEWAY_UPLOADS_PER_WINDOW),
    );
    o.gateway = Some(Box::new(move |s, _| {
        s.box_rate_calls_per_minute = calls;
        s.box_rate_uploads_per_minute = uploads;
        s.box_rate_wait_secs = wait_secs;
        s.redis_url = redis_url.map(box_upload_gateway::box_api::Secret::new);
        s.api_keys = keys.iter().map(ApiKey::config).collect();
    }));
    o
}

/// A key named `name`, its secret `secret-{name}`.
fn key(name: &str) -> ApiKey {
    ApiKey::new(name, &format!("secret-{name}"))
}

#[derive(Default, Debug)]
struct Tally {
    landed: u64,
    refused: u64,
    /// Answers that are neither 201 nor 429/503 with Retry-After.
    bad: Vec<String>,
    /// Time to a 201.
    latencies: Vec<Duration>,
}

/// One client: uploads small files (direct uploads: a preflight and an upload call each) until
/// `until`, honouring every Retry-After.
async fn client(
    address: String,
    api_key: Option<String>,
    until: Instant,
    pause: Duration,
    id: usize,
) -> Tally {
    let http = reqwest::Client::new();
    let mut tally = Tally::default();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let who = api_key.as_deref().unwrap_or("anonymous");
        let url = format!("{address}/v1/folders/0/files/{who}-{id}-{n}.bin");
        let mut request = http.put(url).body(vec![id as u8; 1024]);
        if let Some(k) = &api_key {
            request = request.header("X-API-Key", k);
        }
        let started = Instant::now();
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) => {
                tally.bad.push(format!("transport: {e}"));
                continue;
            }
        };
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match (status, retry_after) {
            (201, _) => {
                tally.landed += 1;
                tally.latencies.push(started.elapsed());
                tokio::time::sleep(pause).await;
            }
            (429 | 503, Some(secs)) if secs >= 1 => {
                tally.refused += 1;
                let wait = Duration::from_secs(secs).min(until.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
            }
            _ => tally.bad.push(format!("{status} {:?}", answer.text().await)),
        }
    }
    tally
}

async fn run(
    addresses: &[String],
    clients: usize,
    api_key: Option<&str>,
    pause: Duration,
    until: Instant,
) -> Tally {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let address = addresses[i % addresses.len()].clone();
            tokio::spawn(client(address, api_key.map(str::to_owned), until, pause, i))
        })
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        all.landed += t.landed;
        all.refused += t.refused;
        all.bad.extend(t.bad);
        all.latencies.extend(t.latencies);
    }
    all
}

/// What Box's upload limit allows in `phase`, and the floor the issue sets: 80 % of it.
fn floor_of(phase: Duration, window: Duration) -> u64 {
    (BOX_UPLOADS_PER_WINDOW as f64 * phase.as_secs_f64() / window.as_secs_f64() * 0.8).floor() as u64
}

async fn hammer_through(replicas: usize) {
    let redis = match replicas {
        1 => None,
        _ => Some(RedisServer::start().await),
    };
    let url = redis.as_ref().map(|r| r.url.clone());
    let window = window();
    let app = spawn_app_with(limited(url.clone(), 5, vec![], window)).await;
    let mut addresses = vec![app.address.clone()];
    let mut others = Vec::new();
    for _ in 1..replicas {
        let other = spawn_replica(&app, limited(url.clone(), 5, vec![], window)).await;
        addresses.push(other.address.clone());
        others.push(other);
    }
    let phase = phase_in(window);
    let tally = run(&addresses, CLIENTS, None, Duration::ZERO, Instant::now() + phase).await;
    let counters = app.emulator.inspect().counters;
    eprintln!(
        "{replicas} replica(s), {:.2}s in a window of {}s: landed {}, refused {}, Box 429s {}, direct uploads at Box {}",
        phase.as_secs_f64(),
        window.as_secs(),
        tally.landed,
        tally.refused,
        counters.rate_limited,
        counters.direct_uploads
    );
    assert!(
        tally.bad.is_empty(),
        "answers other than 201 or 429/503 with Retry-After: {:?}",
        tally.bad
    );
    assert!(
        counters.rate_limited <= 3,
        "Box answered 429 {} times",
        counters.rate_limited
    );
    assert!(
        tally.landed >= floor_of(phase, window),
        "landed {} in {:.2}s; the limit allows {} in {}s",
        tally.landed,
        phase.as_secs_f64(),
        BOX_UPLOADS_PER_WINDOW,
        window.as_secs()
    );
    // Every 201 is a file in Box: nothing landed twice, nothing answered that is not there.
    assert_eq!(counters.direct_uploads, tally.landed);
    assert!(
        tally.refused > 0,
        "24 clients against 36 a window: some must have been told to wait"
    );
    drop(others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_keeps_under_box_limits() {
    hammer_through(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_box_limits_through_redis() {
    hammer_through(2).await;
}

/// A key that hammers and a key that uploads now and then, through the same Box principal: the
/// occasional one waits its turn in the round (one of the other key's uploads at most), never behind
/// the other key's whole queue, so none of its uploads is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occasional_key_is_not_starved_by_a_hammering_one() {
    let keys = vec![key("hammer"), key("occasional")];
    let app = spawn_app_with(limited(None, 10, keys, BOX_WINDOW)).await;
    let until = Instant::now() + phase_in(BOX_WINDOW).min(Duration::from_secs(20));
    let hammer = {
        let address = app.address.clone();
        tokio::spawn(async move { run(&[address], 20, Some("secret-hammer"), Duration::ZERO, until).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let occasional = run(
        std::slice::from_ref(&app.address),
        1,
        Some("secret-occasional"),
        Duration::from_secs(3),
        until,
    )
    .await;
    let hammer = hammer.await.unwrap();
    eprintln!(
        "hammer: landed {} refused {}; occasional: landed {} refused {} latencies {:?}",
        hammer.landed, hammer.refused, occasional.landed, occasional.refused, occasional.latencies
    );
    assert!(
        hammer.bad.is_empty() && occasional.bad.is_empty(),
        "{hammer:?} {occasional:?}"
    );
    assert!(hammer.refused > 0, "the hammering key was held back");
    assert!(occasional.landed >= 2, "{occasional:?}");
    assert_eq!(
        occasional.refused, 0,
        "the occasional key was never refused: {occasional:?}"
    );
    // Its turn comes within about two upload intervals (1.7 s each at 36 a minute), not after the
    // 20 uploads of the other key waiting with it (34 s, past the 10 s wait: it would be refused).
    let slowest = occasional.latencies.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(8), "{:?}", occasional.latencies);
    assert!(app.emulator.inspect().counters.rate_limited <= 3);
}

/// A key's own quotas: 429 `rate_limited` with Retry-After before anything goes to Box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_quotas_refuse_before_box_is_called() {
    let keys = vec![
        key("few").max_uploads_per_minute(2),
        key("small").max_bytes_per_day(3000),
    ];
    let mut o = limited(None, 5, keys, BOX_WINDOW);
    // Box's limits are not what this test is about.
    o.faults.rate_calls_per_minute = None;
    o.faults.rate_uploads_per_minute = None;
    let app = spawn_app_with(o).await;
    let app = &app;
    let put = |key: &'static str, name: &str, size: usize| {
        let name = name.to_owned();
        async move { app.put_raw(&name, vec![7u8; size], &[("X-API-Key", key)]).await }
    };
    for i in 0..2 {
        assert_eq!(put("secret-few", &format!("f{i}"), 10).await.status, 201);
    }
    let refused = put("secret-few", "f2", 10).await;
    assert_eq!(refused.status, 429);
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.code(), "rate_limited");
    // Another key is not affected.
    assert_eq!(put("secret-small", "s1", 2000).await.status, 201);
    let over = put("secret-small", "s2", 2000).await;
    assert_eq!(over.status, 429);
    let retry_after: u64 = over.header("retry-after").unwrap().parse().unwrap();
    // 1,000 more bytes of a 3,000-byte day come back in 8 hours.
    assert!(retry_after > 3600, "{retry_after}");
    let counters = app.emulator.inspect().counters;
    assert_eq!(
        counters.direct_uploads, 3,
        "the refused uploads never reached Box"
    );
    let refusals = app
        .metrics
        .key_quota_refused
        .with_label_values(&["few", "uploads_per_minute"])
        .get();
    assert_eq!(refusals, 1);
}

/// The emulator answers as Box does past its limits, and counts it.
#[tokio::test]
async fn the_emulator_enforces_box_limits_per_user() {
    let mut o = Options::default();
    o.faults.rate_uploads_per_minute = Some(2);
    let app = spawn_app_with(o).await;
    let http = reqwest::Client::new();
    // A new upload session is an upload call (the gateway's direct uploads are too).
    let upload = |user: Option<&'static str>, name: String| {
        let mut r = http
            .post(format!("{}/files/upload_sessions", app.emulator.upload_url()))
            .bearer_auth(box_upload_gateway::emulator::DEV_TOKEN)
            .json(&json!({"folder_id": "0", "file_size": 2 * THRESHOLD, "file_name": name}));
        if let Some(u) = user {
            r = r.header("As-User", u);
        }
        r.send()
    };
    for i in 0..2 {
        assert_eq!(upload(None, format!("a{i}")).await.unwrap().status(), 201);
    }
    let refused = upload(None, "a2".into()).await.unwrap();
    assert_eq!(refused.status(), 429);
    let secs: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "rate_limit_exceeded");
    // Another user (As-User) has a limit of its own.
    assert_eq!(upload(Some("42"), "b0".into()).await.unwrap().status(), 201);
    assert_eq!(app.emulator.inspect().counters.rate_limited, 1);
}

/// A 429 from Box pauses its user for every upload (not only the one that met it) until its
/// Retry-After: an upload sent during the pause waits for it instead of meeting Box's 429 too, and
/// the one that met the 429 lands after its retry, never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_from_box_pauses_the_principal_for_every_upload() {
    use box_upload_gateway::emulator::{Endpoint, FaultAction, FaultRule};
    let mut o = limited(None, 10, vec![], BOX_WINDOW);
    o.faults.rate_calls_per_minute = None;
    o.faults.rate_uploads_per_minute = None;
    o.faults.rules = vec![FaultRule {
        endpoint: Endpoint::DirectUpload,
        nth: Some(1),
        fraction: None,
        seed: None,
        times: Some(1),
        action: FaultAction::Status {
            status: 429,
            code: None,
            message: None,
            retry_after: Some(3),
        },
    }];
    let app = spawn_app_with(o).await;
    let put = |name: &'static str| {
        app.http
            .put(format!("{}/v1/folders/0/files/{name}", app.address))
            .body(vec![1u8; 100])
            .send()
    };
    let first = tokio::spawn(put("first"));
    // The first upload has met its 429 (the pause runs for 3 s from then).
    let met = app.metrics.box_rate_limited.with_label_values(&["direct_upload"]);
    eventually("the first upload's 429", Duration::from_secs(10), || {
        std::future::ready(met.get() == 1)
    })
    .await;
    let sent = Instant::now();
    let second = put("second").await.unwrap();
    let waited = sent.elapsed();
    assert_eq!(second.status(), 201);
    assert_eq!(
        first.await.unwrap().unwrap().status(),
        201,
        "the upload that met the 429 landed"
    );
    // Without the pause it would have landed in milliseconds; with it, not before the pause ends.
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert_eq!(
        app.metrics
            .box_rate_limited
            .with_label_values(&["direct_upload"])
            .get(),
        1
    );
    assert_eq!(app.emulator.inspect().counters.faults_fired, 1, "one 429 in all");
}
