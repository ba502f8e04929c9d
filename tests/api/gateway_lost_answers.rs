//! The lost answer: Box did the work (committed the file, stored the direct upload) but its answer
//! never arrived or was a 5xx. The gateway asks Box what it holds and answers 201 with the file when
//! it is the one sent; otherwise it retries, and fails cleanly when that does not help. Also the
//! transient 409 `name_temporarily_reserved`, retried, and what is never retried.
use box_upload_gateway::emulator::FaultPlan;
use serde_json::{json, Value};

use crate::support::*;

const SIZE: u64 = PART * 6 + 11;

async fn app_with(faults: Value) -> TestApp {
    spawn_app_with(Options {
        faults: serde_json::from_value::<FaultPlan>(faults).expect("a valid fault plan"),
        ..Options::default()
    })
    .await
}

async fn lost_answers(app: &TestApp, endpoint: &str, outcome: &str) -> f64 {
    let labels = [
        format!("endpoint=\"{endpoint}\""),
        format!("outcome=\"{outcome}\""),
    ];
    app.metric_with("gateway_box_lost_answers_total", &[&labels[0], &labels[1]])
        .await
}

fn files(app: &TestApp) -> Vec<Value> {
    inspect(&app.emulator)["files"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The commit is done, its connection reset before the answer: 201 with the file, committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_done_but_answer_cut_is_201_with_the_file() {
    let app =
        app_with(json!({"rules": [{"endpoint": "commit", "action": {"type": "store_then_cut"}}]})).await;
    let (file, sha1) = make_file(SIZE);

    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "cut.bin", &[])
        .await;

    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, SIZE);
    assert_eq!(answer["upload"]["method"], "chunked");
    let seen = inspect(&app.emulator);
    assert_eq!(seen["faults_fired"][0]["action"], "store_then_cut");
    assert_eq!(seen["counters"]["commits_created"], 1, "committed once: {seen}");
    assert_eq!(files(&app).len(), 1);
    assert_eq!(sessions(&app.emulator)[0]["state"], "committed");
    assert_eq!(lost_answers(&app, "commit", "landed").await, 1.0);
    assert!(
        app.metric("gateway_box_calls_total{endpoint=\"folder_items\"")
            .await
            >= 1.0
    );
    app.assert_no_open_session().await;
}

/// The commit is done, then answered 500: the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_done_but_answered_500_is_201_with_the_file() {
    let app =
        app_with(json!({"rules": [{"endpoint": "commit", "action": {"type": "store_then_fail"}}]})).await;
    let (file, sha1) = make_file(SIZE);

    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "failed.bin", &[])
        .await;

    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, SIZE);
    assert_eq!(inspect(&app.emulator)["counters"]["commits_created"], 1);
    assert_eq!(lost_answers(&app, "commit", "landed").await, 1.0);
}

/// A 503 that committed nothing: Box is asked, the file is not there, the commit is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_answered_503_without_committing_is_retried() {
    let app =
        app_with(json!({"rules": [{"endpoint": "commit", "action": {"type": "status", "status": 503}}]}))
            .await;
    let (file, sha1) = make_file(SIZE);

    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "retried.bin", &[])
        .await;

    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, SIZE);
    assert_eq!(lost_answers(&app, "commit", "not_landed").await, 1.0);
    assert_eq!(lost_answers(&app, "commit", "landed").await, 0.0);
}

/// Lost answers that never turn into a file: the upload fails, the session is aborted, nothing lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_that_never_lands_fails_cleanly() {
    let app = app_with(
        json!({"rules": [{"endpoint": "commit", "times": 100, "action": {"type": "status", "status": 500}}]}),
    )
    .await;
    let (file, _) = make_file(SIZE);

    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "never.bin", &[])
        .await;

    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "box_unavailable");
    assert!(files(&app).is_empty());
    assert_eq!(sessions(&app.emulator)[0]["state"], "aborted");
    assert_eq!(
        lost_answers(&app, "commit", "not_landed").await,
        6.0,
        "asked after every attempt"
    );
}

/// A new version whose commit answer is cut: 201, and one new version (not two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_commit_answer_cut_is_one_version() {
    let app = spawn_app().await;
    let (first, _) = make_file(1000);
    let (_, seed) = app
        .curl_upload(&app.folder_url("0"), first.path(), "v.bin", &[])
        .await;
    let id = seed["file"]["id"].as_str().unwrap().to_owned();
    app.emulator.set_faults(
        serde_json::from_value(
            json!({"rules": [{"endpoint": "commit", "action": {"type": "store_then_cut"}}]}),
        )
        .unwrap(),
    );
    let (file, sha1) = make_file(SIZE);

    let url = format!("{}/v1/files/{id}/versions", app.address);
    let (status, answer) = app.curl_upload(&url, file.path(), "v.bin", &[]).await;

    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, SIZE);
    assert_eq!(files(&app)[0]["version_count"], 2);
    assert_eq!(lost_answers(&app, "commit", "landed").await, 1.0);
    app.assert_no_open_session().await;
}

/// Direct uploads: stored then cut, stored then 500, for a new file and a new version: each lands
/// once and is answered 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_upload_done_but_answer_lost_lands_once() {
    let app = app_with(json!({"rules": [
        {"endpoint": "direct_upload", "nth": 1, "action": {"type": "store_then_cut"}},
        {"endpoint": "direct_upload", "nth": 2, "action": {"type": "store_then_fail"}}
    ]}))
    .await;
    let (file, sha1) = make_file(5000);

    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "small.bin", &[])
        .await;
    let id = answer["file"]["id"].as_str().unwrap_or_default().to_owned();
    let url = format!("{}/v1/files/{id}/versions", app.address);
    let (v_status, v_answer) = app.curl_upload(&url, file.path(), "small.bin", &[]).await;

    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, 5000);
    assert_eq!(v_status, 201, "{v_answer}");
    let seen = inspect(&app.emulator);
    assert_eq!(seen["counters"]["direct_uploads"], 2, "one upload each: {seen}");
    assert_eq!(files(&app).len(), 1);
    assert_eq!(files(&app)[0]["version_count"], 2);
    assert_eq!(lost_answers(&app, "direct_upload", "landed").await, 2.0);
}

/// 409 `name_temporarily_reserved` on the commit is retried within the commit budget, past the
/// attempt count; on session creation and direct uploads with the usual retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_temporarily_reserved_is_retried() {
    let reserved = json!({"type": "status", "status": 409, "code": "name_temporarily_reserved"});
    let app = spawn_app_with(Options {
        faults: serde_json::from_value(json!({"rules": [
            {"endpoint": "commit", "times": 4, "action": reserved},
            {"endpoint": "create_session", "action": reserved},
            {"endpoint": "direct_upload", "action": reserved}
        ]}))
        .unwrap(),
        box_retry_max_attempts: 2,
        ..Options::default()
    })
    .await;
    let (big, big_sha1) = make_file(SIZE);
    let (small, small_sha1) = make_file(700);

    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), big.path(), "busy.bin", &[])
        .await;
    let (s_status, s_answer) = app
        .curl_upload(&app.folder_url("0"), small.path(), "busy-small.bin", &[])
        .await;

    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &big_sha1, SIZE);
    assert_eq!(s_status, 201, "{s_answer}");
    app.assert_stored(&s_answer, &small_sha1, 700);
    let reason = "reason=\"name_reserved\"";
    let on = |e: &str| format!("endpoint=\"{e}\"");
    assert_eq!(
        app.metric_with("gateway_box_retries_total", &[reason, &on("commit")])
            .await,
        4.0
    );
    assert_eq!(
        app.metric_with("gateway_box_retries_total", &[reason, &on("create_session")])
            .await,
        1.0
    );
    assert_eq!(
        app.metric_with("gateway_box_retries_total", &[reason, &on("direct_upload")])
            .await,
        1.0
    );
    assert_eq!(
        lost_answers(&app, "commit", "not_landed").await,
        0.0,
        "a 409 changed nothing"
    );
}

/// What a retry cannot fix is not retried: one call, and the error passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_answers_are_not_retried() {
    let app = app_with(json!({"rules": [
        {"endpoint": "create_session", "action": {"type": "status", "status": 501}},
        {"endpoint": "preflight", "action": {"type": "status", "status": 400, "code": "bad_request"}}
    ]}))
    .await;
    let (big, _) = make_file(SIZE);
    let (small, _) = make_file(700);

    let (status, _) = app
        .curl_upload(&app.folder_url("0"), big.path(), "a.bin", &[])
        .await;
    let (s_status, s_answer) = app
        .curl_upload(&app.folder_url("0"), small.path(), "b.bin", &[])
        .await;

    assert_eq!(status, 503);
    assert_eq!(s_status, 502, "{s_answer}");
    assert_eq!(s_answer["error"]["code"], "box_rejected_request");
    assert_eq!(
        app.metric("gateway_box_calls_total{endpoint=\"create_session\"")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("gateway_box_calls_total{endpoint=\"preflight\"").await,
        1.0
    );
    assert_eq!(app.metric("gateway_box_retries_total").await, 0.0);
    assert!(files(&app).is_empty() && sessions(&app.emulator).is_empty());
}
