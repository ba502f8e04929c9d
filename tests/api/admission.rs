//! One way in (issue 23): every entry point admits its uploads in one order (cheap refusals before
//! anything that costs), gives back what a refused upload took, counts and tells every upload the
//! same way, scopes `Idempotency-Key`s by owner, and lets no stranger hold another's tus upload.
//! Each test is written as the attack or the drift it rules out, against the real emulator.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use box_upload_gateway::access::ApiKeyConfig;
use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{Endpoint, FaultAction, FaultPlan, FaultRule};
use serde_json::{json, Value};

use crate::support::tus_client::{creation, metadata, TUS};
use crate::support::*;

const TEAM: &str = "api_key_team";
const ADMIN: &str = "api_key_admin";

fn key(name: &str, secret_name: &str, max_uploads_per_minute: Option<u32>) -> ApiKeyConfig {
    let key = ApiKey::new(name, secret(secret_name));
    match max_uploads_per_minute {
        Some(uploads) => key.max_uploads_per_minute(uploads),
        None => key,
    }
    .config()
}

/// A URL where nothing listens: events for it stay in the outbox, where the test counts them.
fn dead_receiver() -> String {
    format!("http://127.0.0.1:{}/hooks", free_port())
}

/// A gateway with `keys`, upload links, the Box pacer on (so admissions are counted) and completion
/// events configured (so a refusal that wrote one would show in the outbox); `change` for the rest.
async fn gateway(keys: Vec<ApiKeyConfig>, change: impl FnOnce(&mut Settings) + 'static) -> TestApp {
    spawn_app_with(Options {
        gateway: Some(Box::new(move |s, _| {
            s.allow_anonymous = false;
            s.api_keys = keys;
            s.upload_link_secret = Some(Secret::new(secret("upload_link_secret")));
            s.public_base_url = Some("https://uploads.example.test".into());
            s.box_rate_calls_per_minute = 600;
            s.box_rate_uploads_per_minute = 120;
            s.webhook_url = Some(dead_receiver());
            s.webhook_secret = Some(Secret::new(secret("webhook_secret")));
            change(s);
        })),
        ..Options::default()
    })
    .await
}

/// A link made by the key `secret_name`, for folder 0: its token.
async fn link(app: &TestApp, secret_name: &str, extra: Value) -> String {
    let mut body = json!({"folder_id": "0", "expires_in_secs": 600});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    link_token(app, secret(secret_name), body).await
}

/// A multipart form with one file part: its Content-Type and body.
fn form(filename: &str, bytes: &[u8], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "admission-boundary-7Qx";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Status and error code (or the 201's body) of a request.
async fn sent(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or("-")
}

/// `PUT /v1/folders/0/files/{name}` with the team key.
async fn put_as_team(app: &TestApp, name: &str, body: Vec<u8>) -> (u16, Value) {
    sent(
        app.http
            .put(format!("{}/v1/folders/0/files/{name}", app.address))
            .header("X-API-Key", secret(TEAM))
            .body(body),
    )
    .await
}

/// `POST /v1/tus/` with the team key: the upload's URL.
async fn create_as_team(app: &TestApp, size: u64, name: &str) -> String {
    let created = creation(&app.http, &app.address, size, &[("filename", name)])
        .header("X-API-Key", secret(TEAM))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    format!(
        "{}{}",
        app.address,
        created.headers()["location"].to_str().unwrap()
    )
}

async fn admissions(app: &TestApp) -> f64 {
    app.metric_with("gateway_box_rate_wait_seconds_count", &["kind=\"admission\""])
        .await
}

async fn events_stored(app: &TestApp, kind: &str) -> f64 {
    app.metric_with(
        "gateway_webhook_events_total",
        &[&format!("type=\"{kind}\""), "outcome=\"stored\""],
    )
    .await
}

/// Waits (bounded) until the delivery worker has read an outbox of exactly `depth` events.
async fn assert_outbox_depth(app: &TestApp, depth: f64) {
    let what = format!("an outbox of {depth} events");
    eventually(&what, Duration::from_secs(10), || async move {
        app.metric("gateway_webhook_outbox_depth").await == depth
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_token_on_each_plain_endpoint_is_403_and_spends_nothing() {
    // Arrange: a key allowed 3 uploads a minute, and a link it made.
    let app = gateway(vec![key("team", TEAM, Some(3))], |_| {}).await;
    let token = link(&app, TEAM, json!({})).await;
    let (form_type, form_body) = form("link.bin", &[7u8; 1000], &[]);
    let with_link = |r: reqwest::RequestBuilder| r.header("X-Upload-Link", &token);
    let base = &app.address;

    // Act: the link's token on the four plain endpoints, each with a valid upload.
    let answers = [
        sent(
            with_link(app.http.post(format!("{base}/v1/folders/0/files")))
                .header("Content-Type", &form_type)
                .body(form_body.clone()),
        )
        .await,
        sent(with_link(app.http.put(format!("{base}/v1/folders/0/files/link.bin"))).body(vec![7u8; 1000]))
            .await,
        sent(
            with_link(app.http.post(format!("{base}/v1/files/12345/versions")))
                .header("Content-Type", &form_type)
                .body(form_body.clone()),
        )
        .await,
        sent(with_link(app.http.put(format!("{base}/v1/files/12345/content"))).body(vec![7u8; 1000])).await,
    ];

    // Assert: each refused, and nothing spent: no pacer admission, no quota, no Box call, no event.
    for (status, answer) in &answers {
        assert_eq!((*status, code(answer)), (403, "link_not_allowed"), "{answer}");
    }
    assert_eq!(admissions(&app).await, 0.0);
    assert_eq!(app.metric("gateway_key_quota_refused_total").await, 0.0);
    assert_eq!(app.metric("gateway_webhook_events_total").await, 0.0);
    let counters = &inspect(&app.emulator)["counters"];
    assert_eq!(
        (
            counters["sessions_created"].as_u64(),
            counters["direct_uploads"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(
        app.metric_with(
            "gateway_access_refused_total",
            &["code=\"link_not_allowed\"", "key=\"team\""]
        )
        .await,
        4.0
    );
    // The key's own 3 uploads a minute are all there, and no more.
    for i in 0..3 {
        let (file, sha1) = make_file(1000 + i);
        let (status, answer) =
            put_as_team(&app, &format!("own-{i}.bin"), std::fs::read(file.path()).unwrap()).await;
        assert_eq!(status, 201, "{answer}");
        app.assert_stored(&answer, &sha1, 1000 + i);
    }
    let (status, answer) = put_as_team(&app, "one-too-many.bin", vec![1; 10]).await;
    assert_eq!((status, code(&answer)), (429, "rate_limited"));
    assert_eq!(admissions(&app).await, 3.0);
    assert_eq!(events_stored(&app, "upload.completed").await, 3.0);
    assert_eq!(app.metric("gateway_webhook_events_total").await, 3.0);
    assert_eq!(inspect(&app.emulator)["files"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_with_400_write_no_event_and_leave_the_outbox_empty() {
    // Arrange
    let app = gateway(vec![key("team", TEAM, None)], |_| {}).await;
    let base = &app.address;
    let team = |r: reqwest::RequestBuilder| r.header("X-API-Key", secret(TEAM));
    let (form_type, bad_name_form) = form("x.bin", &[1u8; 100], &[("name", "..")]);

    // Act: no multipart boundary (twice), a bad name (path, form field), a bad size (query, tus).
    let answers = [
        sent(
            team(app.http.post(format!("{base}/v1/folders/0/files")))
                .header("Content-Type", "application/octet-stream")
                .body(vec![1u8; 100]),
        )
        .await,
        sent(
            team(app.http.post(format!("{base}/v1/folders/0/files")))
                .header("Content-Type", "multipart/form-data")
                .body(vec![1u8; 100]),
        )
        .await,
        sent(team(app.http.put(format!("{base}/v1/folders/0/files/trailing%20"))).body(vec![1u8; 100])).await,
        sent(
            team(app.http.post(format!("{base}/v1/folders/0/files")))
                .header("Content-Type", &form_type)
                .body(bad_name_form),
        )
        .await,
        sent(
            team(
                app.http
                    .put(format!("{base}/v1/folders/0/files/ok.bin?size=many")),
            )
            .body(vec![1u8; 100]),
        )
        .await,
        sent(
            team(app.http.post(format!("{base}/v1/tus/")))
                .header("Tus-Resumable", TUS)
                .header("Upload-Length", "many")
                .header("Upload-Metadata", metadata(&[("filename", "ok.bin")])),
        )
        .await,
    ];

    // Assert: each a 400 with its code; counted as uploads that ended so (method unknown), but no
    // event: the outbox holds only the one upload that landed afterwards.
    let codes: Vec<_> = answers.iter().map(|(s, a)| (*s, code(a).to_owned())).collect();
    let want = [
        "invalid_multipart",
        "invalid_multipart",
        "invalid_name",
        "invalid_name",
        "invalid_size",
        "invalid_size",
    ];
    assert_eq!(codes, want.map(|c| (400, c.to_owned())).to_vec());
    assert_eq!(app.metric("gateway_webhook_events_total").await, 0.0);
    assert_eq!(
        app.metric_with(
            "gateway_uploads_total",
            &["method=\"unknown\"", "outcome=\"client_error\"", "key=\"team\""]
        )
        .await,
        6.0
    );
    assert_eq!(inspect(&app.emulator)["counters"]["sessions_created"], 0);
    let (status, answer) = put_as_team(&app, "lands.bin", vec![2u8; 100]).await;
    assert_eq!(status, 201, "{answer}");
    assert_outbox_depth(&app, 1.0).await;
    assert_eq!(events_stored(&app, "upload.completed").await, 1.0);
    assert_eq!(app.metric("gateway_uploads_in_flight").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_upload_that_box_fails_counts_in_uploads_total_with_its_outcome() {
    // Arrange: a tus upload whose commit Box refuses for good.
    let app = gateway(vec![key("team", TEAM, None)], |_| {}).await;
    let size = 4 * PART;
    let url = create_as_team(&app, size, "doomed.bin").await;
    app.emulator.set_faults(FaultPlan {
        rules: vec![FaultRule {
            endpoint: Endpoint::Commit,
            nth: Some(1),
            fraction: None,
            seed: None,
            times: Some(1),
            action: FaultAction::Status {
                status: 400,
                code: Some("digest_mismatch".into()),
                message: None,
                retry_after: None,
            },
        }],
        ..FaultPlan::default()
    });

    // Act
    let (status, answer) = sent(
        app.http
            .patch(&url)
            .header("X-API-Key", secret(TEAM))
            .header("Tus-Resumable", TUS)
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .body(vec![3u8; size as usize]),
    )
    .await;

    // Assert: the failure is counted where the error-ratio alert looks, once, with its outcome; the
    // tus counter keeps its detail; the failure is told; nothing is left in Box.
    assert_eq!((status, code(&answer)), (502, "box_integrity_error"));
    assert_eq!(
        app.metric_with(
            "gateway_uploads_total",
            &["method=\"chunked\"", "outcome=\"box_error\"", "key=\"team\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric_with("gateway_uploads_total", &["key=\"team\""]).await,
        1.0
    );
    assert_eq!(
        app.metric_with("gateway_tus_uploads_total", &["event=\"failed\""])
            .await,
        1.0
    );
    assert_eq!(events_stored(&app, "upload.failed").await, 1.0);
    let emulator = inspect(&app.emulator);
    assert!(emulator["files"].as_array().unwrap().is_empty());
    assert_eq!(emulator["sessions"][0]["state"], "aborted");
    assert_eq!(app.metric("gateway_uploads_in_flight").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_idempotency_key_never_gets_the_keys_answer_nor_blocks_it() {
    // Arrange: the key lands an upload under an Idempotency-Key; a link of the key learns the key.
    let app = gateway(vec![key("team", TEAM, None)], |_| {}).await;
    let token = link(&app, TEAM, json!({})).await;
    let url = format!("{}/v1/folders/0/files/report.csv", app.address);
    let body = vec![5u8; 1234];
    let (status, first) = sent(
        app.http
            .put(&url)
            .header("X-API-Key", secret(TEAM))
            .header("Idempotency-Key", "report-2026-12-01")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{first}");

    // Act 1: the link sends the same request with the same key.
    let replay = app
        .http
        .put(&url)
        .header("X-Upload-Link", &token)
        .header("Idempotency-Key", "report-2026-12-01")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    // Assert 1: refused, and not with the key's answer.
    assert_eq!(replay.status(), 403);
    assert!(replay.headers().get("idempotent-replayed").is_none());
    let refused: Value = replay.json().await.unwrap();
    assert_eq!(code(&refused), "link_not_allowed");
    assert!(refused.get("file").is_none(), "{refused}");

    // Act 2: the link claims the key's next Idempotency-Key first, with a form it never finishes
    // (under the old order this held the claim until the body's deadline).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(
        b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n".to_vec(),
    ))
    .await
    .unwrap();
    let stalled = tokio::spawn(
        app.http
            .post(format!("{}/v1/folders/0/files", app.address))
            .header("X-Upload-Link", &token)
            .header("Idempotency-Key", "report-2026-12-02")
            .header("Content-Type", "multipart/form-data; boundary=b")
            .header("Content-Length", "100000")
            .body(reqwest::Body::wrap_stream(futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            )))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, second) = sent(
        app.http
            .put(format!("{url}?on_conflict=rename"))
            .header("X-API-Key", secret(TEAM))
            .header("Idempotency-Key", "report-2026-12-02")
            .body(body.clone()),
    )
    .await;
    drop(tx);
    let stalled = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("the link's request is answered")
        .unwrap();

    // Assert 2: the key's request ran as the first of its key (not 409 in use, not 422 reused).
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["file"]["id"], first["file"]["id"]);
    if let Ok(stalled) = stalled {
        assert_eq!(stalled.status(), 403);
    }
    assert_eq!(
        app.metric_with("gateway_idempotent_requests_total", &["outcome=\"first\""])
            .await,
        2.0
    );
    assert_eq!(
        app.metric_with("gateway_idempotent_requests_total", &["outcome=\"replayed\""])
            .await,
        0.0
    );
    assert_eq!(inspect(&app.emulator)["files"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_hammering_an_uploads_patch_gets_404_while_its_owner_lands_it() {
    // Arrange: the team key's tus upload; another key and a link of that other key as strangers.
    let app = gateway(vec![key("team", TEAM, None), key("admin", ADMIN, None)], |_| {}).await;
    let stranger_link = link(&app, ADMIN, json!({})).await;
    let size = 8 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = create_as_team(&app, size, "owned.bin").await;
    let stop = Arc::new(AtomicBool::new(false));
    let strangers: Vec<_> = [
        ("X-API-Key", secret(ADMIN).to_owned()),
        ("X-Upload-Link", stranger_link),
    ]
    .into_iter()
    .flat_map(|who| [who.clone(), who])
    .map(|(header, value)| {
        let (http, url, stop) = (app.http.clone(), url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            // Bounded: it stops when the owner is done, or after 2,000 tries.
            while !stop.load(Ordering::Relaxed) && statuses.len() < 2000 {
                let answer = http
                    .patch(&url)
                    .header(header, &value)
                    .header("Tus-Resumable", TUS)
                    .header("Upload-Offset", 0)
                    .header("Content-Type", "application/offset+octet-stream")
                    .body(vec![0u8; 16])
                    .send()
                    .await
                    .unwrap();
                statuses.push(answer.status().as_u16());
            }
            statuses
        })
    })
    .collect();

    // Act: the owner sends its upload in 8 PATCHes while the strangers hammer.
    let mut owner = Vec::new();
    for (i, chunk) in bytes.chunks(PART as usize).enumerate() {
        let answer = app
            .http
            .patch(&url)
            .header("X-API-Key", secret(TEAM))
            .header("Tus-Resumable", TUS)
            .header("Upload-Offset", i as u64 * PART)
            .header("Content-Type", "application/offset+octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        owner.push((
            answer.status().as_u16(),
            answer.headers().get("upload-box-file-id").cloned(),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let mut tried = 0;
    for stranger in strangers {
        let statuses = stranger.await.unwrap();
        tried += statuses.len();
        assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    }
    let as_admin =
        |r: reqwest::RequestBuilder| r.header("X-API-Key", secret(ADMIN)).header("Tus-Resumable", TUS);
    let stranger_head = as_admin(app.http.head(&url)).send().await.unwrap();
    let stranger_delete = as_admin(app.http.delete(&url)).send().await.unwrap();

    // Assert: every owner's PATCH went in; the strangers got 404 every time, took no lock, and
    // their HEAD and DELETE are 404 too; the file landed whole.
    assert!(tried > 0);
    assert!(owner.iter().all(|(s, _)| *s == 204), "{owner:?}");
    assert_eq!(
        (stranger_head.status().as_u16(), stranger_delete.status().as_u16()),
        (404, 404)
    );
    assert_eq!(
        app.metric_with("gateway_tus_refused_total", &["lock_lost"]).await,
        0.0
    );
    let file_id = owner.last().unwrap().1.clone().expect("landed");
    let path = app.emulator.file_path(file_id.to_str().unwrap()).unwrap();
    assert_eq!(sha1_of_path(&path), sha1);
    let head = app
        .http
        .head(&url)
        .header("X-API-Key", secret(TEAM))
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200, "the owner's upload is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_refused_after_its_admission_gives_back_what_it_took() {
    // Arrange: a key allowed 2 uploads a minute of at most 1,000 bytes; bodies of unknown size are
    // spooled after the admission (their size is known only then).
    let mut team = key("team", TEAM, Some(2));
    team.max_file_size_bytes = Some(1000);
    let app = gateway(vec![team], |_| {}).await;

    // Act: three bodies of unknown size (chunked), each too large for the key: refused as they
    // arrive, after their quota and Box admission were taken.
    for _ in 0..3 {
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(vec![9u8; 5000])]);
        let (status, answer) = sent(
            app.http
                .put(format!("{}/v1/folders/0/files/big.bin", app.address))
                .header("X-API-Key", secret(TEAM))
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await;
        assert_eq!((status, code(&answer)), (413, "file_too_large"));
    }

    // Assert: each gave back its quota and its Box admission, before its answer: the key's 2 uploads
    // a minute are whole.
    let given_back = |what: &str| {
        let app = &app;
        let label = format!("what=\"{what}\"");
        async move {
            app.metric_with("gateway_admission_given_back_total", &[&label])
                .await
        }
    };
    assert_eq!(given_back("uploads_per_minute").await, 3.0);
    assert_eq!(given_back("box_admission").await, 3.0);
    assert_eq!(admissions(&app).await, 3.0);
    for name in ["a.bin", "b.bin"] {
        let (status, answer) = put_as_team(&app, name, vec![4u8; 500]).await;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, answer) = put_as_team(&app, "c.bin", vec![4u8; 500]).await;
    assert_eq!((status, code(&answer)), (429, "rate_limited"));
    assert_eq!(inspect(&app.emulator)["files"].as_array().unwrap().len(), 2);
    // Their bodies had begun to come: those uploads had started, and are told as failed.
    assert_eq!(events_stored(&app, "upload.failed").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_creation_refuses_for_cheap_reasons_before_it_spends_a_quota() {
    // Arrange: a key allowed 2 uploads a minute, and its link for one file.
    let app = gateway(vec![key("team", TEAM, Some(2))], |_| {}).await;
    let token = link(&app, TEAM, json!({"max_files": 1})).await;
    let create = |header: &'static str, value: String, name: &'static str| {
        sent(
            app.http
                .post(format!("{}/v1/tus/", app.address))
                .header(header, value)
                .header("Tus-Resumable", TUS)
                .header("Upload-Length", 100)
                .header(
                    "Upload-Metadata",
                    metadata(&[("filename", name), ("on_conflict", "rename")]),
                ),
        )
    };

    // Act: the link's one file, then a second (no slot left), then the key's own two.
    let (first, _) = create("X-Upload-Link", token.clone(), "one.bin").await;
    let (second, refused) = create("X-Upload-Link", token.clone(), "two.bin").await;
    let (own, _) = create("X-API-Key", secret(TEAM).to_owned(), "own.bin").await;
    let (over, over_quota) = create("X-API-Key", secret(TEAM).to_owned(), "over.bin").await;

    // Assert: the link's second file was refused before the key's quota or the pacer saw it, so the
    // key still had its second upload; both refusals gave back the open-upload slot they had taken.
    assert_eq!((first, second, own), (201, 403, 201));
    assert_eq!(code(&refused), "link_files_exhausted");
    assert_eq!((over, code(&over_quota)), (429, "rate_limited"));
    assert_eq!(admissions(&app).await, 2.0);
    assert_eq!(
        app.metric_with("gateway_admission_given_back_total", &["what=\"open_upload\""])
            .await,
        2.0
    );
    assert_eq!(
        inspect(&app.emulator)["counters"]["sessions_created"],
        0,
        "small files: direct uploads"
    );
    // Neither refusal had started an upload: no event.
    assert_eq!(app.metric("gateway_webhook_events_total").await, 0.0);
}
