//! `Idempotency-Key` on the plain upload endpoints: a retried request lands once.
use std::time::Duration;

use serde_json::Value;

use crate::support::redis_server::{redis_options, RedisServer};
use crate::support::*;

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
        async move { curl(&["-T", &path, "-H", &format!("Idempotency-Key: {key}"), &url]).await }
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
async fn a_key_used_for_another_request_is_422_and_another_method_405() {
    let app = spawn_app_with(Options::default()).await;
    let url = |name: &str| format!("{}/v1/folders/0/files/{name}", app.address);
    let send = |method: reqwest::Method, url: String, len: usize| {
        app.http
            .request(method, url)
            .header("Idempotency-Key", "same-key")
            .body(vec![7u8; len])
            .send()
    };

    let first = send(reqwest::Method::PUT, url("one.bin"), 100).await.unwrap();
    let trace = send(reqwest::Method::TRACE, url("one.bin"), 100).await.unwrap();
    // POST is an upload method, but not this route's (schemathesis found it answered 422).
    let post = send(reqwest::Method::POST, url("one.bin"), 100).await.unwrap();
    let elsewhere = send(reqwest::Method::PUT, url("two.bin"), 100).await.unwrap();
    let bigger = send(reqwest::Method::PUT, url("one.bin"), 101).await.unwrap();
    let same = send(reqwest::Method::PUT, url("one.bin"), 100).await.unwrap();

    assert_eq!(first.status(), 201);
    assert_eq!(trace.status(), 405, "another method is not a retry");
    assert_eq!(post.status(), 405, "another upload method is not a retry either");
    for reused in [elsewhere, bigger] {
        assert_eq!(reused.status(), 422);
        let body: Value = reused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "idempotency_key_reused");
    }
    assert_eq!(same.status(), 201);
    assert_eq!(same.headers()["idempotent-replayed"], "true");
    assert_eq!(app.emulator.inspect().files.len(), 1, "one upload only");
    assert_eq!(
        app.metrics
            .idempotent_requests
            .with_label_values(&["mismatch"])
            .get(),
        2
    );
}

fn short_claims(redis_url: &str, claim_secs: u64) -> Options {
    let mut options = redis_options(redis_url);
    let with_redis = options.gateway.take().unwrap();
    options.gateway = Some(Box::new(move |s, e| {
        with_redis(s, e);
        s.idempotency_claim_secs = claim_secs;
    }));
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_of_a_crashed_gateway_frees_itself_after_the_claim_time() {
    use crate::support::process::{anonymous_env, env_refs, Gateway};
    // Arrange: a gateway process and an in-process replica sharing Redis, claims of 5 s.
    let redis = RedisServer::start().await;
    let app = spawn_app_with(short_claims(&redis.url, 5)).await;
    let mut env = anonymous_env(&app.emulator);
    env.push(("GATEWAY_REDIS_URL", redis.url.clone()));
    env.push(("GATEWAY_IDEMPOTENCY_CLAIM_SECS", "5".into()));
    let doomed = Gateway::start(&env_refs(&env)).await;
    let (file, sha1) = make_file(3 * PART);
    let bytes = std::fs::read(file.path()).unwrap();
    let put = |base: String, body: reqwest::Body| {
        app.http
            .put(format!("{base}/v1/folders/0/files/crashed.bin"))
            .header("Idempotency-Key", "crash-1")
            .header("Content-Length", bytes.len())
            .body(body)
            .send()
    };
    // A request that claims the key, then the process dies under it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let cut = tokio::spawn(put(doomed.url(""), reqwest::Body::wrap_stream(body)));
    tx.send(Ok(bytes[..1000].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    doomed.finish().await;
    assert!(
        cut.await.unwrap().is_err(),
        "the connection died with the process"
    );
    // Act: the retry at once, then until it runs.
    let at_once = put(app.address.clone(), bytes.clone().into()).await.unwrap();
    let started = std::time::Instant::now();
    let retry = || async {
        let retry = put(app.address.clone(), bytes.clone().into()).await.unwrap();
        (retry.status() != 409).then_some(retry)
    };
    let every = Duration::from_millis(250);
    let landed = eventually_every("the claim to free itself", Duration::from_secs(30), every, retry).await;
    // Assert: 409 while the dead claim lasted, then the upload ran (not 24 hours later).
    assert_eq!(at_once.status(), 409);
    assert_eq!(landed.status(), 201);
    let answer: Value = landed.json().await.unwrap();
    app.assert_stored(&answer, &sha1, 3 * PART);
    eprintln!("a crashed claim of 5 s freed after {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_upload_lands_gets_that_upload_on_retry() {
    // Arrange: Box takes about 4 s to finish the commit (four 202s with Retry-After: 1), well
    // after the client (which gives up after 2 s, its body long sent) has left.
    let app = spawn_app_with(Options {
        faults: plan(serde_json::json!({"rules": [
            {"endpoint": "commit", "times": 4, "action": {"type": "commit_accepted", "retry_after": 1}}
        ]})),
        ..Options::default()
    })
    .await;
    let (file, sha1) = make_file(5 * PART + 3);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!("{}/v1/folders/0/files/left.bin", app.address);
    let put = |timeout: Duration| {
        app.http
            .put(&url)
            .header("Idempotency-Key", "leaving-1")
            .timeout(timeout)
            .body(bytes.clone())
            .send()
    };
    // Act: the client gives up while the commit waits, and retries.
    let gave_up = put(Duration::from_secs(2)).await;
    assert!(gave_up.is_err(), "the client left before the answer");
    let during = put(Duration::from_secs(30)).await.unwrap();
    let retry = || async {
        let retry = put(Duration::from_secs(30)).await.unwrap();
        (retry.status() != 409).then_some(retry)
    };
    let every = Duration::from_millis(100);
    let replayed = eventually_every("the first upload to end", Duration::from_secs(30), every, retry).await;
    // Assert: the retry waited for the first upload, then got its answer; one file, one session.
    assert_eq!(during.status(), 409);
    let during: Value = during.json().await.unwrap();
    assert_eq!(during["error"]["code"], "idempotency_key_in_use");
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    let answer: Value = replayed.json().await.unwrap();
    app.assert_stored(&answer, &sha1, 5 * PART + 3);
    assert_eq!(app.emulator.inspect().files.len(), 1);
    assert_eq!(app.emulator.inspect().sessions.len(), 1, "uploaded once");
}
