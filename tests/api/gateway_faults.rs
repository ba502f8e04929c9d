//! Every fault of the emulator's plan is survived or reported, and no session is left open.
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// Uploads a chunked file through a fresh app with `faults`; returns the app and the answer.
async fn chunked_upload_with(faults: Value) -> (TestApp, u16, Value, String) {
    let app = spawn_app_with(Options {
        faults: plan(faults),
        ..Options::default()
    })
    .await;
    let size = PART * 6 + 11;
    let (file, sha1) = make_file(size);
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "faulty.bin", &[])
        .await;
    (app, status, answer, sha1)
}

async fn survives(faults: Value, retry_reason: &str) -> TestApp {
    let (app, status, answer, sha1) = chunked_upload_with(faults).await;
    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, PART * 6 + 11);
    app.assert_no_open_session().await;
    let fired = inspect(&app.emulator)["faults_fired"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(fired > 0, "the fault fired: {}", inspect(&app.emulator));
    let reason = format!("reason=\"{retry_reason}\"");
    let retries = app.metric_with("gateway_box_retries_total", &[&reason]).await;
    assert!(retries >= 1.0, "a retry ({retry_reason}) was counted");
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_answered_429_with_retry_after() {
    survives(json!({"rules": [{"endpoint": "upload_part", "nth": 2, "action": {"type": "status", "status": 429, "retry_after": 1}}]}), "rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_answered_500_and_503() {
    survives(
        json!({"rules": [
            {"endpoint": "upload_part", "nth": 1, "action": {"type": "status", "status": 500}},
            {"endpoint": "upload_part", "nth": 3, "action": {"type": "status", "status": 503, "retry_after": 0}}
        ]}),
        "server_error",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraction_of_parts_fail() {
    survives(
        json!({"rules": [{"endpoint": "upload_part", "fraction": 0.3, "seed": 7, "times": 3, "action": {"type": "status", "status": 503}}]}),
        "server_error",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_stored_then_500_is_listed_not_resent() {
    let app = survives(
        json!({"rules": [{"endpoint": "upload_part", "nth": 2, "action": {"type": "store_then_fail"}}]}),
        "server_error",
    )
    .await;
    // The stored part was found by listing; re-sending it would have been refused as an overlap
    // (a second rejection besides the fault's own 500).
    let counters = &inspect(&app.emulator)["counters"];
    assert_eq!(counters["part_uploads_accepted"], 7, "{counters}");
    assert_eq!(counters["part_uploads_rejected"], 1, "{counters}");
    assert!(
        app.metric("gateway_box_calls_total{endpoint=\"list_parts\"")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_answered_202_many_times() {
    survives(json!({"rules": [{"endpoint": "commit", "nth": 1, "times": 4, "action": {"type": "commit_accepted", "retry_after": 0}}]}), "commit_pending").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_parts_mismatch_on_commit() {
    survives(json!({"rules": [{"endpoint": "commit", "nth": 1, "times": 2, "action": {"type": "parts_mismatch"}}]}), "parts_mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_part() {
    survives(json!({"rules": [{"endpoint": "upload_part", "nth": 2, "action": {"type": "cut_connection", "after_bytes": 1000}}]}), "connection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_creation_and_direct_upload_retried() {
    let app = survives(
        json!({"rules": [
            {"endpoint": "create_session", "nth": 1, "action": {"type": "status", "status": 503}},
            {"endpoint": "direct_upload", "nth": 1, "action": {"type": "status", "status": 500}},
            {"endpoint": "preflight", "nth": 1, "action": {"type": "status", "status": 429}}
        ]}),
        "server_error",
    )
    .await;
    let (file, sha1) = make_file(1000);
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "small.bin", &[])
        .await;
    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_bandwidth_cap_only_slow_things_down() {
    let (app, status, answer, sha1) =
        chunked_upload_with(json!({"delay_ms": 20, "bandwidth_bytes_per_sec": 8_000_000})).await;
    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, PART * 6 + 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_that_keep_failing_abort_the_session() {
    let (app, status, answer, _) =
        chunked_upload_with(json!({"rules": [{"endpoint": "upload_part", "nth": 2, "times": 100, "action": {"type": "status", "status": 503}}]})).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "box_unavailable");
    assert_eq!(answer["error"]["box"]["status"], 503);
    app.assert_no_open_session().await;
    assert_eq!(sessions(&app.emulator)[0]["state"], "aborted");
    assert!(inspect(&app.emulator)["files"].as_array().unwrap().is_empty());
    let text = app.metrics_text().await;
    assert!(
        text.contains("gateway_uploads_total{key=\"anonymous\",method=\"chunked\",outcome=\"box_error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_sessions_aborted_total{reason=\"error\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_parts_total{outcome=\"failed\"}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_pending_past_the_budget_is_504_and_aborted() {
    let app = spawn_app_with(Options {
        commit_timeout_secs: 2,
        faults: plan(json!({"rules": [{"endpoint": "commit", "nth": 1, "times": 1000, "action": {"type": "commit_accepted", "retry_after": 1}}]})),
        ..Options::default()
    })
    .await;
    let (file, _) = make_file(THRESHOLD);
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "slow.bin", &[])
        .await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["error"]["code"], "box_timeout");
    app.assert_no_open_session().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_502_and_nothing_is_opened() {
    let (app, status, answer, _) = chunked_upload_with(json!({"expire_tokens": true})).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "box_auth_failed");
    assert!(!answer
        .to_string()
        .contains(box_upload_gateway::emulator::DEV_TOKEN));
    assert!(sessions(&app.emulator).is_empty());
}

/// Every seed error of Box's create-session, injected, turned into the documented client error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn box_seed_errors_map_to_documented_errors() {
    let cases = [
        (400, "missing_destination", 502, "box_rejected_request"),
        (400, "invalid_folder_id", 404, "not_found"),
        (400, "item_name_invalid", 400, "invalid_name"),
        (400, "missing_file_size", 502, "box_rejected_request"),
        (400, "invalid_file_size", 502, "box_rejected_request"),
        (400, "missing_file_name", 502, "box_rejected_request"),
        (403, "storage_limit_exceeded", 507, "box_storage_full"),
        (404, "invalid_parameter", 404, "not_found"),
        (
            403,
            "access_denied_insufficient_permissions",
            403,
            "box_access_denied",
        ),
        (413, "request_entity_too_large", 413, "file_too_large"),
    ];
    let app = spawn_app().await;
    let (file, _) = make_file(THRESHOLD);
    for (box_status, box_code, status, code) in cases {
        app.emulator
            .set_faults(plan(json!({"rules": [{"endpoint": "create_session", "nth": 1,
            "action": {"type": "status", "status": box_status, "code": box_code}}]})));
        let (got, answer) = app
            .curl_upload(&app.folder_url("0"), file.path(), "seed.bin", &[])
            .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{box_code}: {answer}"
        );
        assert_eq!(answer["error"]["box"]["code"], box_code);
    }
    // file_size_too_small: Box's own minimum is above ours, so the file goes up directly instead.
    app.emulator
        .set_faults(plan(json!({"rules": [{"endpoint": "create_session", "nth": 1,
        "action": {"type": "status", "status": 400, "code": "file_size_too_small"}}]})));
    let (got, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "seed.bin", &[])
        .await;
    assert_eq!(got, 201, "{answer}");
    assert_eq!(answer["upload"]["method"], "direct");
    assert!(sessions(&app.emulator).is_empty());
}

/// A client that disconnects mid-upload: the gateway aborts the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_aborts_the_session() {
    let app = spawn_app().await;
    let port = app.address.rsplit(':').next().unwrap();
    let mut socket = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let size = THRESHOLD * 4;
    let head =
        format!("PUT /v1/folders/0/files/left.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
        .write_all(&vec![7u8; (PART * 3 + 100) as usize])
        .await
        .unwrap();
    // Wait (bounded) until Box has some parts, then vanish.
    let has_parts = || {
        let first = sessions(&app.emulator).first().cloned();
        std::future::ready(first.is_some_and(|s| !s["parts"].as_array().unwrap().is_empty()))
    };
    holds_within(Duration::from_secs(2), has_parts).await;
    drop(socket);
    app.assert_no_open_session().await;
    assert_eq!(sessions(&app.emulator)[0]["state"], "aborted");
    assert!(inspect(&app.emulator)["files"].as_array().unwrap().is_empty());
}

/// A client that stops sending (but keeps the connection) gets 408; its session is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_408_and_the_session_is_aborted() {
    let app = spawn_app_with(Options {
        client_idle_timeout_secs: 1,
        ..Options::default()
    })
    .await;
    let port = app.address.rsplit(':').next().unwrap();
    let mut socket = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/folders/0/files/stalled.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        THRESHOLD * 4
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
        .write_all(&vec![7u8; (PART * 2 + 100) as usize])
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut socket, &mut answer),
    )
    .await
    .expect("an answer within 10 s")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("client_timeout"), "{answer}");
    app.assert_no_open_session().await;
    assert_eq!(sessions(&app.emulator)[0]["state"], "aborted");
    assert_eq!(
        app.metric("gateway_buffered_bytes ").await,
        0.0,
        "the stalled part's budget is given back"
    );
}

/// Many uploads at once through a small budget: all land, and the bytes held never exceed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_uploads_within_a_small_budget() {
    // Room for 4 parts in the whole process; chunked files are whole multiples of the part size, so
    // every part takes a full PART of the budget and at most 4 can be in flight at once.
    let budget = THRESHOLD;
    let app = spawn_app_with(Options {
        memory_budget_bytes: budget,
        part_concurrency: 4,
        gateway: Some(Box::new(|s, _| {
            // One caller (anonymous) alone: the whole budget is its share.
            s.memory_budget_share_per_key = 1.0;
        })),
        ..Options::default()
    })
    .await;
    let files: Vec<_> = (0..10u64)
        .map(|i| {
            make_file(if i % 3 == 0 {
                5000 + i
            } else {
                THRESHOLD * 2 + i * PART
            })
        })
        .collect();
    let uploads = files.iter().enumerate().map(|(i, (file, _))| {
        let url = app.folder_url("0");
        let app = &app;
        async move {
            app.curl_upload(&url, file.path(), &format!("c{i}.bin"), &[])
                .await
        }
    });
    let answers = futures_util::future::join_all(uploads).await;
    for ((status, answer), (_, sha1)) in answers.iter().zip(&files) {
        assert_eq!(*status, 201, "{answer}");
        let size = answer["upload"]["size"].as_u64().unwrap();
        app.assert_stored(answer, sha1, size);
    }
    let peak = app.metric("gateway_buffered_bytes_peak").await;
    assert!(
        peak > 0.0 && peak <= budget as f64,
        "peak {peak} within budget {budget}"
    );
    let in_flight = inspect(&app.emulator)["counters"]["max_parts_in_flight"]
        .as_u64()
        .unwrap();
    assert!(
        in_flight <= budget / PART,
        "at most {} parts in flight, saw {in_flight}",
        budget / PART
    );
    assert_eq!(app.metric("gateway_buffered_bytes ").await, 0.0);
}
