//! Resumable uploads that never lie (issue 16): after a refused part, an overrunning body or a
//! commit that fails for good, HEAD says what Box holds, and the upload resumes from there and lands
//! whole. Real gateway, real emulator, its fault plan's `nth` rules on upload_part.
use std::time::{Duration, Instant};

use box_upload_gateway::emulator::{Endpoint, FaultAction, FaultPlan, FaultRule};
use serde_json::{json, Value};

use crate::support::tus_client::{create, head, header, patch, tuspy, TUS};
use crate::support::*;

/// A rule that answers the `nth` request of `endpoint` (once) with `status` and Box's `code`.
fn refuse(endpoint: Endpoint, nth: u64, status: u16, code: &str) -> FaultPlan {
    FaultPlan {
        rules: vec![FaultRule {
            endpoint,
            nth: Some(nth),
            fraction: None,
            seed: None,
            times: Some(1),
            action: FaultAction::Status {
                status,
                code: Some(code.into()),
                message: None,
                retry_after: None,
            },
        }],
        ..FaultPlan::default()
    }
}

/// The first byte of the upload Box lacks: walking the session's parts from 0 (its only session).
pub fn first_byte_box_lacks(app: &TestApp, size: u64) -> u64 {
    let all = sessions(&app.emulator);
    let parts = all[0]["parts"].as_array().cloned().unwrap_or_default();
    let mut at = 0;
    while at < size {
        match parts.iter().find(|p| p["offset"] == at) {
            Some(p) => at += p["size"].as_u64().unwrap(),
            None => break,
        }
    }
    at
}

/// A commit's `parts_mismatch` is taken for Box catching up for 1 s here (the default is 5 s): past
/// it, a part is missing. Far from `commit_timeout_secs`, which the window must not wait for.
fn short_mismatch_window() -> Options {
    Options {
        commit_timeout_secs: 120,
        gateway: Some(Box::new(|s, _| s.parts_mismatch_window_secs = 1)),
        ..Options::default()
    }
}

fn offset_of(response: &reqwest::Response) -> u64 {
    header(response, "upload-offset")
        .expect("Upload-Offset")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_refused_anywhere_in_a_long_patch_leaves_head_at_the_first_byte_box_lacks() {
    // 10.5 parts, all in one PATCH (so the last part is the file's, sent only once the body ended).
    let size = 10 * PART + PART / 2;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let total = size.div_ceil(PART);
    let mut cases = 0;
    for concurrency in [1, 4, 8] {
        // The first part, the second (collected at the concurrency limit: the case of issue 16),
        // one in the middle, the last.
        for nth in [1, 2, total / 2 + 1, total] {
            // Arrange
            let app = spawn_app_with(Options {
                part_concurrency: concurrency,
                ..Options::default()
            })
            .await;
            let url = format!(
                "{}{}",
                app.address,
                create(&app.http, &app.address, size, "refused.bin").await
            );
            app.emulator
                .set_faults(refuse(Endpoint::UploadPart, nth, 501, "not_implemented"));
            let case = format!("part_concurrency {concurrency}, request {nth} of {total} refused");
            // Act
            let failed = patch(&app.http, &url, 0, bytes.clone(), None).await;
            // Assert: the PATCH fails; HEAD is exactly the first byte Box lacks (never past it).
            assert!(failed.status().is_server_error(), "{case}: {}", failed.status());
            let lacks = first_byte_box_lacks(&app, size);
            assert!(lacks < size, "{case}: Box lacks a part");
            let at = offset_of(&head(&app.http, &url).await);
            assert_eq!(at, lacks, "{case}: HEAD at the first byte Box lacks");
            // The client resumes from there: the upload lands whole, fast, each part sent once.
            let started = Instant::now();
            let rest = patch(&app.http, &url, at, bytes[at as usize..].to_vec(), None).await;
            assert_eq!(rest.status(), 204, "{case}: {:?}", rest.text().await);
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{case}: took {:?}",
                started.elapsed()
            );
            let id = header(&rest, "upload-box-file-id").expect("landed");
            assert_file(&app, &id, &sha1, size);
            assert_exact_parts(&app, size, PART);
            let seen = app.emulator.inspect();
            assert_eq!(seen.counters.faults_fired, 1, "{case}");
            assert_eq!(
                seen.counters.part_uploads_accepted, total,
                "{case}: each part stored once, none sent twice"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overrunning_chunked_patch_changes_nothing_and_sends_no_last_part() {
    // Arrange: 5.5 parts; 1000 bytes in, then a chunked PATCH (no Content-Length) with 10 bytes
    // too many.
    let app = spawn_app_with(Options::default()).await;
    let size = 5 * PART + PART / 2;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!(
        "{}{}",
        app.address,
        create(&app.http, &app.address, size, "over.bin").await
    );
    assert_eq!(
        patch(&app.http, &url, 0, bytes[..1000].to_vec(), None)
            .await
            .status(),
        204
    );
    let mut too_much = bytes[1000..].to_vec();
    too_much.extend_from_slice(&[0; 10]);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        too_much.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    // Act
    let over = app
        .http
        .patch(&url)
        .header("Tus-Resumable", TUS)
        .header("Upload-Offset", 1000)
        .header("Content-Type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    // Assert: refused; the offset is where it was; the last part never went to Box.
    assert_eq!(over.status(), 400);
    assert_eq!(
        over.json::<Value>().await.unwrap()["error"]["code"],
        "size_mismatch"
    );
    assert_eq!(offset_of(&head(&app.http, &url).await), 1000);
    let parts = sessions(&app.emulator)[0]["parts"].as_array().unwrap().clone();
    assert!(
        parts.iter().all(|p| p["offset"].as_u64().unwrap() < 5 * PART),
        "no last part: {parts:?}"
    );
    // The right bytes then land, the parts Box got are not sent again.
    let rest = patch(&app.http, &url, 1000, bytes[1000..].to_vec(), None).await;
    assert_eq!(rest.status(), 204);
    assert_file(&app, &header(&rest, "upload-box-file-id").unwrap(), &sha1, size);
    assert_exact_parts(&app, size, PART);
    assert_eq!(
        app.emulator.inspect().counters.part_uploads_accepted,
        size.div_ceil(PART),
        "no part sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_for_good_is_what_head_answers() {
    // Arrange: Box refuses the commit with a final error.
    let app = spawn_app_with(Options::default()).await;
    let size = 4 * PART;
    let (file, _) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!(
        "{}{}",
        app.address,
        create(&app.http, &app.address, size, "doomed.bin").await
    );
    app.emulator
        .set_faults(refuse(Endpoint::Commit, 1, 400, "digest_mismatch"));
    // Act
    let last = patch(&app.http, &url, 0, bytes.clone(), None).await;
    // Assert: the PATCH says why; HEAD answers 410 with the cause, never a full offset; a PATCH too.
    assert_eq!(last.status(), 502);
    assert_eq!(
        last.json::<Value>().await.unwrap()["error"]["code"],
        "box_integrity_error"
    );
    let after = head(&app.http, &url).await;
    assert_eq!(after.status(), 410);
    assert_eq!(header(&after, "upload-offset"), None);
    assert_eq!(
        header(&after, "upload-failure-code").as_deref(),
        Some("box_integrity_error")
    );
    assert_eq!(header(&after, "tus-resumable").as_deref(), Some(TUS));
    let again = patch(&app.http, &url, size, Vec::new(), None).await;
    assert_eq!(again.status(), 410);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upload_failed", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("box_integrity_error"));
    assert_eq!(sessions(&app.emulator)[0]["state"], "aborted");
    assert!(app.emulator.inspect().files.is_empty());
    // DELETE cleans it up.
    let gone = app
        .http
        .delete(&url)
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    assert_eq!(head(&app.http, &url).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuspy_resumes_across_a_refused_part_with_its_own_retries() {
    // Arrange: 10.5 parts in chunks of 6 parts, 2 in flight; Box refuses the second part, which the
    // PATCH collects while it waits at the concurrency limit (the case of issue 16).
    let app = spawn_app_with(Options {
        part_concurrency: 2,
        ..Options::default()
    })
    .await;
    let size = 10 * PART + PART / 2;
    let (file, sha1) = make_file(size);
    app.emulator
        .set_faults(refuse(Endpoint::UploadPart, 2, 501, "not_implemented"));
    // Act: tuspy, unmodified, with its retry logic (wait, HEAD, send again from HEAD's offset).
    let out = tuspy(
        &[&app.address],
        file.path(),
        6 * PART,
        &[
            "--metadata",
            &json!({"filename": "retried.bin"}).to_string(),
            "--retries",
            "3",
            "--retry-delay",
            "0.2",
        ],
    )
    .await;
    // Assert
    assert_eq!(app.emulator.inspect().counters.faults_fired, 1);
    assert_file(&app, out["file_id"].as_str().unwrap(), &sha1, size);
    assert_exact_parts(&app, size, PART);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_at_the_drains_stop_keeps_what_box_holds_and_resumes_on_the_next_process() {
    use crate::support::process::{anonymous_env, env_refs, small_parts, Gateway};
    use box_upload_gateway::emulator::Emulator;
    use futures_util::StreamExt;
    // Arrange: the real binary (grace 3 s), its state in a directory that outlives it; a PATCH whose
    // body would take 8 s.
    let emulator = Emulator::spawn(small_parts()).await.unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let mut env = anonymous_env(&emulator);
    env.extend([
        ("GATEWAY_SHUTDOWN_GRACE_SECS", "3".into()),
        ("GATEWAY_READINESS_CHECK_INTERVAL_SECS", "1".into()),
        ("GATEWAY_STATE_DIR", state_dir.path().display().to_string()),
        ("RUST_LOG", "info".into()),
    ]);
    let mut first = Gateway::start(&env_refs(&env)).await;
    let http = reqwest::Client::new();
    first.wait_ready(&http).await;
    let size = 8 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let path = create(&http, &first.url(""), size, "drained.bin").await;
    let pieces: Vec<bytes::Bytes> = bytes
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let body = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok::<_, std::io::Error>(piece)
    });
    let slow = http
        .patch(first.url(&path))
        .header("Tus-Resumable", TUS)
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Content-Length", size)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let slow = tokio::spawn(async move { (slow.await, Instant::now()) });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Act
    let signalled = Instant::now();
    first.sigterm();
    let (status, _) = first.wait_exit(Duration::from_secs(10)).await;
    let (slow, answered) = slow.await.unwrap();
    let slow = slow.expect("the PATCH is answered");
    // Assert: 503 draining with Retry-After, at the drain's stop (2.4 s), before the hard stop (3 s);
    // the session stays open.
    assert!(status.success());
    let after = answered - signalled;
    assert!(
        after < Duration::from_secs(3),
        "answered {after:?} after SIGTERM: {}",
        first.logs
    );
    assert_eq!(slow.status(), 503);
    assert!(slow.headers().contains_key("retry-after"));
    let answer: Value = slow.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "draining", "{answer}");
    let all = sessions(&emulator);
    assert_eq!(all[0]["state"], "open", "the session is kept for the resume");
    // The next process answers HEAD with no more than Box holds, and the upload lands from there.
    let second = Gateway::start(&env_refs(&env)).await;
    let at = offset_of(&head(&http, &second.url(&path)).await);
    let parts = all[0]["parts"].as_array().unwrap();
    let mut lacks = 0;
    while let Some(p) = parts.iter().find(|p| p["offset"] == lacks) {
        lacks += p["size"].as_u64().unwrap();
    }
    assert!(at <= lacks && at > 0, "HEAD {at}, Box holds up to {lacks}");
    let rest = patch(&http, &second.url(&path), at, bytes[at as usize..].to_vec(), None).await;
    assert_eq!(rest.status(), 204);
    let id = header(&rest, "upload-box-file-id").unwrap();
    second.finish().await;
    let stored = emulator.file_path(&id).unwrap();
    assert_eq!(sha1_of_path(&stored), sha1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_part_keeps_the_stored_unfinished_part() {
    // Arrange: 1000 bytes stored (the unfinished first part); then Box refuses the first part the
    // next PATCH completes.
    let app = spawn_app_with(Options::default()).await;
    let size = 5 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!(
        "{}{}",
        app.address,
        create(&app.http, &app.address, size, "kept.bin").await
    );
    assert_eq!(
        patch(&app.http, &url, 0, bytes[..1000].to_vec(), None)
            .await
            .status(),
        204
    );
    app.emulator
        .set_faults(refuse(Endpoint::UploadPart, 1, 501, "not_implemented"));
    // Act
    let failed = patch(&app.http, &url, 1000, bytes[1000..].to_vec(), None).await;
    // Assert: Box holds nothing, the stored 1000 bytes still count; the rest goes in from there.
    assert!(failed.status().is_server_error());
    assert_eq!(first_byte_box_lacks(&app, size), 0);
    assert_eq!(offset_of(&head(&app.http, &url).await), 1000);
    let rest = patch(&app.http, &url, 1000, bytes[1000..].to_vec(), None).await;
    assert_eq!(rest.status(), 204);
    assert_file(&app, &header(&rest, "upload-box-file-id").unwrap(), &sha1, size);
    assert_exact_parts(&app, size, PART);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_box_lost_moves_the_upload_back_to_it_and_the_resume_lands_whole() {
    // Arrange: at the commit, Box has lost the part at 2 * PART (acknowledged earlier).
    let app = spawn_app_with(short_mismatch_window()).await;
    let size = 4 * PART + 10;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!(
        "{}{}",
        app.address,
        create(&app.http, &app.address, size, "lost-part.bin").await
    );
    app.emulator.set_faults(FaultPlan {
        rules: vec![FaultRule {
            endpoint: Endpoint::Commit,
            nth: Some(1),
            fraction: None,
            seed: None,
            times: Some(1),
            action: FaultAction::LosePart { offset: 2 * PART },
        }],
        ..FaultPlan::default()
    });
    // Act: the whole file in one PATCH; its commit finds the hole.
    let started = Instant::now();
    let first = patch(&app.http, &url, 0, bytes.clone(), None).await;
    let took = started.elapsed();
    let rewound = first.json::<Value>().await.unwrap()["error"]["code"].clone();
    let offset = offset_of(&head(&app.http, &url).await);
    let resumed = patch(&app.http, &url, offset, bytes[offset as usize..].to_vec(), None).await;
    // Assert: 409 upload_rewound after the short window, HEAD at the lost part's first byte, and
    // the resume (only the lost part sent again) lands the file whole.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(rewound, "upload_rewound");
    assert_eq!(offset, 2 * PART);
    assert_eq!(resumed.status(), 204);
    let file_id = header(&resumed, "upload-box-file-id").unwrap();
    assert_file(&app, &file_id, &sha1, size);
    let parts = sessions(&app.emulator)[0]["parts"].as_array().unwrap().len();
    assert_eq!(parts as u64, size.div_ceil(PART));
    assert_eq!(
        app.emulator.inspect().counters.part_uploads_accepted,
        size.div_ceil(PART) + 1,
        "only the lost part went up again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parts_mismatch_past_its_short_window_ends_the_commit_in_seconds_not_minutes() {
    // Arrange: every commit answers parts_mismatch, although Box holds every part.
    let app = spawn_app_with(short_mismatch_window()).await;
    let size = 4 * PART + 10;
    let (file, _) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!(
        "{}{}",
        app.address,
        create(&app.http, &app.address, size, "mismatch.bin").await
    );
    app.emulator.set_faults(FaultPlan {
        rules: vec![FaultRule {
            endpoint: Endpoint::Commit,
            nth: None,
            fraction: Some(1.0),
            seed: None,
            times: None,
            action: FaultAction::PartsMismatch,
        }],
        ..FaultPlan::default()
    });
    // Act
    let started = Instant::now();
    let last = patch(&app.http, &url, 0, bytes, None).await;
    // Assert: answered after the short window (the parts were listed: none missing, so the upload
    // failed for good), far from commit_timeout_secs; HEAD says so.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(last.status(), 502, "Box's contradiction is Box's failure");
    let after = head(&app.http, &url).await;
    assert_eq!(after.status(), 410);
    assert_eq!(
        header(&after, "upload-failure-code").as_deref(),
        Some("box_protocol_error")
    );
    assert_eq!(sessions(&app.emulator)[0]["state"], "aborted");
}
