//! `Idempotency-Key` on the plain upload endpoints: a retried request lands once.
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{make_file, spawn_app_with, spawn_replica, Options, PART};
use crate::tus::{redis_options, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_key_gets_the_first_answer_even_from_another_replica() {
    // Arrange: two replicas sharing Redis; a chunked upload.
    let redis = RedisServer::start().await;
    let app = spawn_app_with(redis_options(&redis.url)).await;
    let other = spawn_replica(&app, redis_options(&redis.url)).await;
    let (file, sha1) = make_file(5 * PART + 17);
    let put = |base: &str, key: &str| {
        let url = format!("{base}/v1/folders/0/files/retried.bin");
        let (path, key) = (file.path().display().to_string(), key.to_owned());
        async move { crate::helpers::curl(&["-T", &path, "-H", &format!("Idempotency-Key: {key}"), &url]).await }
    };
    // Act: the request, then its retry through the other replica, then another key.
    let (first_status, first) = put(&app.address, "order-42").await;
    let (retry_status, retry) = put(&other.address, "order-42").await;
    let (fresh_status, fresh) = put(&other.address, "order-43").await;
    // Assert: one file; the retry got the same answer; a new key is a new upload (here: a conflict).
    assert_eq!(first_status, 201, "{first}");
    app.assert_stored(&first, &sha1, 5 * PART + 17);
    assert_eq!(retry_status, 201, "{retry}");
    assert_eq!(retry, first);
    assert_eq!(app.emulator.inspect().files.len(), 1);
    assert_eq!(
        app.emulator.inspect().sessions.len(),
        1,
        "the retry never reached Box"
    );
    assert_eq!(fresh_status, 409, "{fresh}");
    assert_eq!(fresh["error"]["code"], "name_conflict");
    assert_eq!(
        other
            .metrics
            .idempotent_requests
            .with_label_values(&["replayed"])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_runs_gets_409_and_a_bad_key_400() {
    let app = spawn_app_with(Options::default()).await;
    let (file, sha1) = make_file(3 * PART);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!("{}/v1/folders/0/files/slow.bin", app.address);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let slow = tokio::spawn(
        app.http
            .put(&url)
            .header("Idempotency-Key", "k1")
            .header("Content-Length", bytes.len())
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    tx.send(Ok(bytes[..1000].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = app
        .http
        .put(&url)
        .header("Idempotency-Key", "k1")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(during.status(), 409);
    assert_eq!(
        during.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_key_in_use"
    );
    tx.send(Ok(bytes[1000..].to_vec())).await.unwrap();
    drop(tx);
    let first = slow.await.unwrap().unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    app.assert_stored(&first, &sha1, 3 * PART);
    let after = app
        .http
        .put(&url)
        .header("Idempotency-Key", "k1")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 201);
    assert_eq!(after.headers()["idempotent-replayed"], "true");
    assert_eq!(after.json::<Value>().await.unwrap(), first);
    let bad = app
        .http
        .put(&url)
        .header("Idempotency-Key", "")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_idempotency_key"
    );
    assert_eq!(app.emulator.inspect().files.len(), 1);
}

#[tokio::test]
async fn a_key_replays_only_the_same_method_on_the_same_endpoint() {
    let app = spawn_app_with(Options::default()).await;
    let url = |name: &str| format!("{}/v1/folders/0/files/{name}", app.address);
    let send = |method: reqwest::Method, url: String| {
        app.http
            .request(method, url)
            .header("Idempotency-Key", "same-key")
            .body(vec![7u8; 100])
            .send()
    };

    let first = send(reqwest::Method::PUT, url("one.bin")).await.unwrap();
    let trace = send(reqwest::Method::TRACE, url("one.bin")).await.unwrap();
    let elsewhere = send(reqwest::Method::PUT, url("two.bin")).await.unwrap();

    assert_eq!(first.status(), 201);
    assert_eq!(trace.status(), 405, "another method is not a retry");
    assert_eq!(elsewhere.status(), 201, "another endpoint is another upload");
    let names: Vec<_> = app.emulator.inspect().files.into_iter().map(|f| f.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
