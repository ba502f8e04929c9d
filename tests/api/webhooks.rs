//! Completion events: a real receiver on loopback (tests/python/webhook_receiver.py) checks every
//! signature with the `standardwebhooks` package, as an application would.
use std::collections::HashSet;
use std::time::Duration;

use std::future::ready;

use box_upload_gateway::box_api::Secret;
use serde_json::Value;

use crate::support::process::{anonymous_env, env_refs, small_parts, Gateway};
use crate::support::redis_server::{redis_options, RedisServer};
use crate::support::tus_client::{creation, patching, upload_whole};
use crate::support::webhook_receiver::{assert_verified, secrets, with_webhooks, Receiver};
use crate::support::*;

/// A raw upload that lands, its request id `req-{name}`: the answer.
async fn put(app_address: &str, name: &str, body: Vec<u8>) -> Value {
    let request_id = format!("req-{name}");
    let answer = put_raw(app_address, name, body, &[("x-request-id", &request_id)]).await;
    assert_eq!(answer.status, 201);
    answer.json
}

/// A tus upload in one PATCH (request id `req-tus`), `headers` on both requests (an upload link's
/// `X-Upload-Link`): the upload's id and the Box file's.
async fn tus_upload_as(
    app: &TestApp,
    name: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (String, String) {
    let pairs = [("filename", name), ("folder_id", "0"), ("note", "from tus")];
    let headers = [headers, &[("x-request-id", "req-tus")]].concat();
    upload_whole(app, &pairs, body, &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signed_completed_event_per_upload_direct_chunked_and_tus() {
    // Arrange
    let receiver = Receiver::started().await;
    let app = spawn_app_with(with_webhooks(receiver.url(), Options::default())).await;

    // Act
    let direct = put(&app.address, "direct.bin", vec![1u8; 1000]).await;
    let chunked = put(&app.address, "chunked.bin", vec![2u8; 2 * 1024 * 1024 + 5]).await;
    let (tus_id, tus_file) = tus_upload_as(&app, "tus.bin", vec![3u8; 3000], &[]).await;
    let got = receiver.wait_for(3, Duration::from_secs(60)).await;
    // Anything sent twice would come within this.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_later = receiver.received();

    // Assert
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got_later.len(), 3, "one event per upload: {got_later:?}");
    assert_verified(&got);
    let by_name = |name: &str| {
        got.iter()
            .find(|g| g["event"]["data"]["name"] == name)
            .unwrap_or_else(|| panic!("no event for {name}: {got:?}"))["event"]
            .clone()
    };
    for (answer, method) in [(&direct, "direct"), (&chunked, "chunked")] {
        let event = by_name(answer["file"]["name"].as_str().unwrap());
        let data = &event["data"];
        assert_eq!(event["type"], "upload.completed");
        assert_eq!(data["file_id"], answer["file"]["id"]);
        assert_eq!(data["file_version_id"], answer["file"]["file_version"]["id"]);
        assert_eq!(data["folder_id"], answer["file"]["parent"]["id"]);
        assert_eq!(data["size"], answer["upload"]["size"]);
        assert_eq!(data["sha1"], answer["upload"]["sha1"]);
        assert_eq!(data["method"], method);
        assert_eq!(answer["upload"]["method"], method);
        assert_eq!(data["key"], "anonymous");
        assert_eq!(
            data["request_id"],
            format!("req-{}", data["name"].as_str().unwrap())
        );
        assert!(data.get("tus_id").is_none());
    }
    let tus = by_name("tus.bin");
    assert_eq!(tus["type"], "upload.completed");
    assert_eq!(tus["data"]["file_id"], tus_file.as_str());
    assert_eq!(tus["data"]["tus_id"], tus_id.as_str());
    assert_eq!(tus["data"]["size"], 3000);
    assert_eq!(tus["data"]["folder_id"], "0");
    assert_eq!(tus["data"]["request_id"], "req-tus");
    assert_eq!(tus["data"]["upload_metadata"]["note"], "from tus");
    let ids: HashSet<_> = got.iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(app.metrics.webhook_delivered.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_gives_upload_failed() {
    // Arrange
    let receiver = Receiver::started().await;
    let app = spawn_app_with(with_webhooks(receiver.url(), Options::default())).await;

    // Act: a SHA-1 that the bytes do not have.
    let answer = app
        .http
        .put(format!(
            "{}/v1/folders/0/files/bad.bin?sha1={}",
            app.address,
            "0".repeat(40)
        ))
        .header("x-request-id", "req-bad")
        .body(vec![7u8; 500])
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let error: Value = answer.json().await.unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;

    // Assert
    assert!(status.is_client_error(), "{status} {error}");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_verified(&got);
    let event = &got[0]["event"];
    assert_eq!(event["type"], "upload.failed");
    assert_eq!(event["data"]["code"], error["error"]["code"]);
    assert_eq!(event["data"]["message"], error["error"]["message"]);
    assert_eq!(event["data"]["name"], "bad.bin");
    assert_eq!(event["data"]["folder_id"], "0");
    assert_eq!(event["data"]["bytes_received"], 500);
    assert_eq!(event["data"]["request_id"], "req-bad");
}

/// The receiver stays down until its events were retried 40 times in all (what the test asserts:
/// retried again and again), about 26 s since a receiver that keeps failing is paused and probed one
/// event at a time at the backoff's cap (1 s here); `WEBHOOK_OUTAGE_SECS=30` keeps it down at least
/// the 30 s as well. Then every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_after_the_receiver_was_down() {
    // Arrange: nothing listens at the receiver's address yet.
    let mut receiver = Receiver::planned();
    let app = spawn_app_with(with_webhooks(receiver.url(), Options::default())).await;
    let down_at_least = Duration::from_secs(env_or("WEBHOOK_OUTAGE_SECS", 0));

    // Act
    let down_since = tokio::time::Instant::now();
    let mut files = HashSet::new();
    for i in 0..4 {
        let answer = put(&app.address, &format!("down-{i}.bin"), vec![i as u8; 100]).await;
        files.insert(answer["file"]["id"].as_str().unwrap().to_owned());
    }
    // The outage: refused connections, retried all along (backoff capped at 1 s).
    let retries = app.metrics.webhook_retried.with_label_values(&["connection"]);
    eventually("40 retries of the events", Duration::from_secs(60), || {
        ready(retries.get() >= 4 * 10)
    })
    .await;
    tokio::time::sleep_until(down_since + down_at_least).await;
    let retried = retries.get();
    receiver.start().await;
    let got = receiver.wait_for(4, Duration::from_secs(30)).await;

    // Assert
    assert!(
        retried >= 4 * 10,
        "each event was retried again and again while down: {retried}"
    );
    assert_eq!(got.len(), 4, "{got:?}");
    assert_verified(&got);
    let delivered: HashSet<_> = got
        .iter()
        .map(|g| g["event"]["data"]["file_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, files);
    assert_eq!(app.metrics.webhook_dead.with_label_values(&["expired"]).get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_answered_with_201_survives_a_kill_and_no_secret_is_logged() {
    // Arrange: the receiver is down, so the event is still in the outbox when the process dies.
    let emulator = box_upload_gateway::emulator::Emulator::spawn(small_parts())
        .await
        .unwrap();
    let mut receiver = Receiver::planned();
    let state_dir = tempfile::tempdir().unwrap();
    let mut env = anonymous_env(&emulator);
    env.extend([
        ("GATEWAY_STATE_DIR", state_dir.path().display().to_string()),
        ("GATEWAY_WEBHOOK_URL", receiver.url()),
        ("GATEWAY_WEBHOOK_SECRET", secrets()),
        ("GATEWAY_WEBHOOK_MIN_BACKOFF_MS", "100".into()),
        ("GATEWAY_WEBHOOK_MAX_BACKOFF_SECS", "1".into()),
    ]);
    let gateway = Gateway::start(&env_refs(&env)).await;

    // Act: SIGKILL right after the 201.
    let answer = put(&gateway.url(""), "killed.bin", vec![9u8; 4096]).await;
    let first_logs = gateway.finish().await;
    receiver.start().await;
    let gateway = Gateway::start(&env_refs(&env)).await;
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    let logs = first_logs + &gateway.finish().await;

    // Assert
    assert_eq!(got.len(), 1, "{got:?}");
    assert_verified(&got);
    assert_eq!(got[0]["event"]["data"]["file_id"], answer["file"]["id"]);
    for name in ["webhook_secret", "webhook_secret_next"] {
        let whole = secret(name);
        let key = whole.trim_start_matches("whsec_");
        assert!(!logs.contains(key), "{name} leaked into the logs");
    }
    assert!(logs.contains("webhook delivered"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_redis_deliver_each_event_once() {
    // Arrange
    let redis = RedisServer::start().await;
    let receiver = Receiver::started().await;
    let app = spawn_app_with(with_webhooks(receiver.url(), redis_options(&redis.url))).await;
    let other = spawn_replica(&app, with_webhooks(receiver.url(), redis_options(&redis.url))).await;

    // Act
    let n = 12;
    let mut files = HashSet::new();
    for i in 0..n {
        let address = if i % 2 == 0 { &app.address } else { &other.address };
        let answer = put(address, &format!("replica-{i}.bin"), vec![i as u8; 200]).await;
        files.insert(answer["file"]["id"].as_str().unwrap().to_owned());
    }
    let got = receiver.wait_for(n, Duration::from_secs(60)).await;
    // Both workers poll every 100 ms: a second delivery would show within this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_later = receiver.received();

    // Assert
    assert_eq!(got.len(), n, "{got:?}");
    assert_eq!(got_later.len(), n, "each event delivered once: {got_later:?}");
    assert_verified(&got_later);
    let delivered: HashSet<_> = got_later
        .iter()
        .map(|g| g["event"]["data"]["file_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, files);
    assert_eq!(
        app.metrics.webhook_delivered.get() + other.metrics.webhook_delivered.get(),
        n as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_stops_the_urls_events() {
    // Arrange: a receiver that answers 410 Gone.
    let mut receiver = Receiver::planned();
    receiver.status = 410;
    receiver.start().await;
    let app = spawn_app_with(with_webhooks(receiver.url(), Options::default())).await;
    let gone = app.metrics.webhook_dead.with_label_values(&["gone"]);

    // Act
    put(&app.address, "gone-1.bin", vec![1u8; 10]).await;
    eventually("the 410", Duration::from_secs(30), || ready(gone.get() == 1)).await;
    put(&app.address, "gone-2.bin", vec![2u8; 10]).await;
    eventually("the second event dropped", Duration::from_secs(30), || {
        ready(gone.get() == 2)
    })
    .await;

    // Assert: the second event was never sent.
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["event"]["data"]["name"], "gone-1.bin");
    assert_eq!(app.metrics.webhook_delivered.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_is_retried_with_the_same_id_until_it_is_too_old() {
    // Arrange: a receiver that answers 500, and events that live 2 s.
    let mut receiver = Receiver::planned();
    receiver.status = 500;
    receiver.start().await;
    let mut o = with_webhooks(receiver.url(), Options::default());
    let change = o.gateway.take().unwrap();
    o.gateway = Some(Box::new(move |s, e| {
        change(s, e);
        s.webhook_max_age_secs = 2;
    }));
    let app = spawn_app_with(o).await;
    let expired = app.metrics.webhook_dead.with_label_values(&["expired"]);

    // Act
    put(&app.address, "refused.bin", vec![1u8; 10]).await;
    eventually("the event to die", Duration::from_secs(30), || {
        ready(expired.get() == 1)
    })
    .await;

    // Assert
    let got = receiver.received();
    assert!(got.len() >= 3, "retried: {got:?}");
    assert_verified(&got);
    let ids: HashSet<_> = got.iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "webhook-id is stable across attempts: {ids:?}");
    assert!(
        app.metrics
            .webhook_retried
            .with_label_values(&["status_500"])
            .get()
            >= 2
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        got.len(),
        "a dead event is not sent again"
    );
}

/// A gateway whose events go to `gateway_receiver`, with one API key, "team", whose own go to
/// `team_receiver`, signed with its own secret; `more` adds fields to the key, `links` turns upload
/// links on.
async fn team_app(
    gateway_receiver: &Receiver,
    team_receiver: &Receiver,
    more: Value,
    links: bool,
) -> TestApp {
    let key = ApiKey::new("team", secret("api_key_team"))
        .webhook_url(&team_receiver.url())
        .webhook_secret(secret("webhook_secret_team"))
        .merge(more);
    let mut o = with_webhooks(gateway_receiver.url(), Options::default());
    let change = o.gateway.take().unwrap();
    o.gateway = Some(Box::new(move |s, e| {
        change(s, e);
        s.allow_anonymous = false;
        s.api_keys = vec![key.config()];
        if links {
            s.upload_link_secret = Some(Secret::new(secret("upload_link_secret")));
            s.public_base_url = Some("https://uploads.example.test".into());
        }
    }));
    spawn_app_with(o).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_its_own_webhook_url_gets_its_uploads_events() {
    // Arrange: the gateway's receiver, and the key "team"'s own.
    let gateway_receiver = Receiver::started().await;
    let team_receiver = Receiver::started_checking(&[secret("webhook_secret_team")]).await;
    let key = secret("api_key_team");
    let app = team_app(&gateway_receiver, &team_receiver, serde_json::json!({}), false).await;

    // Act
    let answer = app
        .http
        .put(format!("{}/v1/folders/0/files/team.bin", app.address))
        .header("x-api-key", key)
        .body(vec![5u8; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let got = team_receiver.wait_for(1, Duration::from_secs(30)).await;

    // Assert
    assert_eq!(got.len(), 1, "{got:?}");
    assert_verified(&got);
    assert_eq!(got[0]["event"]["data"]["key"], "team");
    assert!(gateway_receiver.received().is_empty());
}

/// An upload through an upload link is the key's that made the link: its completion event names the
/// key and the link, and goes to the key's own receiver, and it counts against the key's quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_through_a_link_is_the_keys_event_and_quota() {
    // Arrange: the key "team" with its own receiver and a quota of one upload a minute; links on.
    let gateway_receiver = Receiver::started().await;
    let team_receiver = Receiver::started_checking(&[secret("webhook_secret_team")]).await;
    let key = secret("api_key_team");
    let quota = serde_json::json!({"max_uploads_per_minute": 1});
    let app = team_app(&gateway_receiver, &team_receiver, quota, true).await;
    let token = link_token(
        &app,
        key,
        serde_json::json!({"folder_id": "0", "expires_in_secs": 600}),
    )
    .await;
    let link_id = link_id_of(&token);

    // Act: one upload through the link, then a second one past the key's quota.
    let link_header = [("X-Upload-Link", token.as_str())];
    let (_, file_id) = tus_upload_as(&app, "via-link.bin", vec![7u8; 64], &link_header).await;
    let second = creation(&app.http, &app.address, 64, &[("filename", "second.bin")])
        .header("X-Upload-Link", &token)
        .send()
        .await
        .unwrap();
    let second_status = second.status().as_u16();
    let second_body: Value = second.json().await.unwrap();
    let got = team_receiver.wait_for(1, Duration::from_secs(30)).await;

    // Assert
    assert_eq!(got.len(), 1, "{got:?}");
    assert_verified(&got);
    let data = &got[0]["event"]["data"];
    assert_eq!(got[0]["event"]["type"], "upload.completed");
    assert_eq!(data["key"], "team", "{data}");
    assert_eq!(data["link_id"], link_id.as_str(), "{data}");
    assert_eq!(data["file_id"], file_id.as_str(), "{data}");
    assert!(data["tus_id"].is_string(), "{data}");
    assert!(gateway_receiver.received().is_empty());
    assert_eq!(second_status, 429, "{second_body}");
    assert_eq!(second_body["error"]["code"], "rate_limited", "{second_body}");
}

/// The id of the link whose token this is (its claims, the token's first part, say it).
fn link_id_of(token: &str) -> String {
    use base64::Engine as _;
    let claims = token.split('.').next().unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    let claims: Value = serde_json::from_slice(&claims).unwrap();
    claims["i"].as_str().unwrap().to_owned()
}

/// A key's events carry no link id; an upload through a link, failing, says which link it came
/// through in its `upload.failed` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_through_a_link_names_the_link() {
    // Arrange
    let gateway_receiver = Receiver::started().await;
    let team_receiver = Receiver::started_checking(&[secret("webhook_secret_team")]).await;
    let key = secret("api_key_team");
    let app = team_app(&gateway_receiver, &team_receiver, serde_json::json!({}), true).await;
    let token = link_token(
        &app,
        key,
        serde_json::json!({"folder_id": "0", "expires_in_secs": 600}),
    )
    .await;

    // Act: the key's own upload, then one through the link that Box refuses.
    let own = app
        .http
        .put(format!("{}/v1/folders/0/files/own.bin", app.address))
        .header("x-api-key", key)
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 201);
    let created = creation(&app.http, &app.address, 10, &[("filename", "refused.bin")])
        .header("X-Upload-Link", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    app.emulator.set_faults(plan(
        serde_json::json!({"rules": [{"endpoint": "direct_upload", "times": 1,
        "action": {"type": "status", "status": 400, "code": "bad_request"}}]}),
    ));
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let url = match location.starts_with("http") {
        true => location,
        false => format!("{}{location}", app.address),
    };
    let patched = patching(&app.http, &url, 0)
        .header("X-Upload-Link", &token)
        .body(vec![2u8; 10])
        .send()
        .await
        .unwrap();
    let got = team_receiver.wait_for(2, Duration::from_secs(30)).await;

    // Assert
    assert_eq!(patched.status(), 502, "Box refused it");
    assert_eq!(got.len(), 2, "{got:?}");
    assert_verified(&got);
    let of = |t: &str| {
        got.iter()
            .find(|g| g["event"]["type"] == t)
            .unwrap_or_else(|| panic!("no {t}: {got:?}"))["event"]["data"]
            .clone()
    };
    assert!(
        of("upload.completed").get("link_id").is_none(),
        "the key's own upload"
    );
    let failed = of("upload.failed");
    assert_eq!(failed["link_id"], link_id_of(&token).as_str(), "{failed}");
    assert_eq!(failed["key"], "team", "{failed}");
}
