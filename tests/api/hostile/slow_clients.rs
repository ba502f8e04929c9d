//! Clients that trickle, and uploads that wait for the budget or the spool.
use std::time::{Duration, Instant};

use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::EmulatorHandle;

use crate::support::tus_client;
use crate::support::*;

const MIB: u64 = 1024 * 1024;

/// 12 clients sending 1 KiB every 5 s: each holds only what it sent (the part it fills is promised
/// in its caller's share, 4 parts of 8 MiB of a 64 MiB budget, and the others wait for room there);
/// another caller's good upload then lands at once, and every trickler gets 408 `client_too_slow`
/// with its session aborted. Default settings but the budget, a rate window of 8 s instead of 60 s
/// (which keeps the test under half a minute: the default's arithmetic is unit-tested in
/// routes/client_body.rs) and a budget wait of 30 s, in which the third group of tricklers gets its
/// parts (every 8 s a group is cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricklers_cannot_hold_the_budget_from_a_good_upload() {
    let defaults = Settings::default();
    let app = spawn_app_with(Options {
        // Box's part size for files under 1 GiB, and its minimum for a chunked upload.
        part_size: 8 * MIB,
        threshold: defaults.chunked_threshold_bytes,
        part_concurrency: defaults.part_concurrency,
        memory_budget_bytes: 64 * MIB,
        client_idle_timeout_secs: defaults.client_idle_timeout_secs,
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.client_rate_window_secs = 8;
            s.budget_wait_secs = 30;
            // The tricklers come with one key, the good upload with another.
            s.api_keys = vec![
                folder_zero_key("admin", "api_key_admin"),
                folder_zero_key("team", "api_key_team"),
            ];
        })),
        ..Options::default()
    })
    .await;
    let tricklers: Vec<_> = (0..12)
        .map(|i| {
            let address = app.address.clone();
            tokio::spawn(async move {
                let head = format!(
                    "PUT /v1/folders/0/files/trickle-{i}.bin HTTP/1.1\r\nHost: gateway\r\n\
                     X-API-Key: {}\r\nContent-Length: 30000000",
                    secret("api_key_admin")
                );
                let pieces = (0..30_000_000 / 1024).map(|_| vec![b't'; 1024]);
                raw_request(
                    &address,
                    &head,
                    pieces,
                    Duration::from_secs(5),
                    Duration::from_secs(90),
                )
                .await
            })
        })
        .collect();
    // Until every trickler's session is open: the first four hold what they sent, the others wait.
    let emulator = &app.emulator;
    eventually(
        "every trickler's session to open",
        Duration::from_secs(20),
        || async move { sessions(emulator).len() >= 12 },
    )
    .await;
    let holding = app.metric("gateway_buffered_bytes ").await;
    assert!(
        holding < MIB as f64,
        "the tricklers hold {holding} bytes: more than they sent"
    );

    let (file, sha1) = make_file(24 * MIB);
    let started = Instant::now();
    let answer = app
        .http
        .put(format!("{}/v1/folders/0/files/good.bin", app.address))
        .header("X-API-Key", secret("api_key_team"))
        .body(std::fs::read(file.path()).unwrap())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = answer.status().as_u16();
    let retry_after = answer.headers().get("retry-after").cloned();
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(
        took < Duration::from_secs(30),
        "the good upload took {took:?}: {body}"
    );
    assert_eq!(status, 201, "{body} (Retry-After {retry_after:?})");
    app.assert_stored(&body, &sha1, 24 * MIB);

    for trickler in tricklers {
        let answer = trickler.await.unwrap().expect("every trickler gets an answer");
        assert_eq!(
            (answer.status, answer.code()),
            (408, "client_too_slow"),
            "{:?}",
            answer.json
        );
    }
    app.assert_no_open_session().await;
    let aborted = sessions(&app.emulator)
        .iter()
        .filter(|s| s["state"] == "aborted")
        .count();
    assert_eq!(aborted, 12, "every trickler's session is aborted");
    let files = inspect(&app.emulator)["files"].as_array().unwrap().len();
    assert_eq!(
        files,
        usize::from(status == 201),
        "nothing of the tricklers landed"
    );
    assert_eq!(app.metric("gateway_buffered_bytes ").await, 0.0);
    assert!(app.metric("gateway_buffered_bytes_peak").await <= (64 * MIB) as f64);
}

/// A tiny budget whose whole share a stalled upload holds (the part it is filling): the same caller's
/// next upload waits `budget_wait_secs`, then gets 503 `busy` with `Retry-After`, and its session is
/// aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_the_budget_ends_in_503_busy() {
    let app = spawn_app_with(Options {
        part_size: MIB,
        threshold: MIB,
        memory_budget_bytes: MIB,
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.budget_wait_secs = 2;
            // One caller (anonymous) alone: the whole budget is its share.
            s.memory_budget_share_per_key = 1.0;
            // The stalled upload must keep the budget for the whole test.
            s.client_min_bytes_per_sec = 0;
        })),
        ..Options::default()
    })
    .await;
    let address = app.address.clone();
    let stalled = tokio::spawn(async move {
        let head = "PUT /v1/folders/0/files/stalled.bin HTTP/1.1\r\nHost: gateway\r\nContent-Length: 4194304";
        raw_request(
            &address,
            head,
            [vec![1u8; 64 * 1024]],
            Duration::ZERO,
            Duration::from_secs(120),
        )
        .await
    });
    // It holds the 64 KiB it sent, and the rest of its part is promised within the caller's share.
    let app_ref = &app;
    eventually(
        "the stalled upload to hold the budget",
        Duration::from_secs(10),
        || async move { app_ref.metric("gateway_buffered_bytes ").await >= (64 * 1024) as f64 },
    )
    .await;

    let started = Instant::now();
    let answer = app
        .http
        .put(format!("{}/v1/folders/0/files/waiting.bin", app.address))
        .body(vec![2u8; 2 * MIB as usize])
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(answer.status().as_u16(), 503);
    let retry_after: u64 = answer.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "busy", "{body}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "answered after {took:?}, budget_wait_secs is 2"
    );
    // The waiting upload's session is aborted at once; the stalled one's stays open while it holds on.
    let waiting_aborted = || {
        sessions(&app.emulator)
            .iter()
            .any(|s| s["state"] == "aborted" && s["file_name"] == "waiting.bin")
    };
    let aborted = holds_within(Duration::from_secs(5), || std::future::ready(waiting_aborted())).await;
    assert!(aborted, "{:#?}", sessions(&app.emulator));
    stalled.abort();
    app.assert_no_open_session().await;
}

/// Two bodies of unknown size (chunked transfer, no size) that pass `spool_max_total_bytes` together:
/// one is refused with 507 `insufficient_storage`, the other lands, and the spool never holds more
/// than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_of_all_uploads_stays_under_its_cap() {
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_owned();
    let cap = 8 * MIB;
    let app = spawn_app_with(Options {
        spool_max_bytes: 6 * MIB,
        gateway: Some(Box::new(move |s: &mut Settings, _: &EmulatorHandle| {
            s.spool_dir = spool_dir.display().to_string();
            s.spool_max_total_bytes = cap;
        })),
        ..Options::default()
    })
    .await;
    let (file, sha1) = make_file(5 * MIB);
    let data = std::fs::read(file.path()).unwrap();
    let send = |name: &'static str| {
        let (address, data) = (app.address.clone(), data.clone());
        tokio::spawn(async move {
            let head = format!(
                "PUT /v1/folders/0/files/{name} HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked"
            );
            let pieces: Vec<Vec<u8>> = data
                .chunks(64 * 1024)
                .map(http_chunk)
                .chain([http_chunk(&[])])
                .collect();
            raw_request(
                &address,
                &head,
                pieces,
                Duration::from_millis(10),
                Duration::from_secs(60),
            )
            .await
        })
    };
    let (a, b) = (send("spooled-a.bin"), send("spooled-b.bin"));
    // Samples the spool's size on disk while both run.
    let mut peak = 0u64;
    while !(a.is_finished() && b.is_finished()) {
        let size: u64 = std::fs::read_dir(spool.path())
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        peak = peak.max(size);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answers = [a.await.unwrap().unwrap(), b.await.unwrap().unwrap()];
    answers.sort_by_key(|a| a.status);
    let [landed, refused] = answers;
    assert_eq!(landed.status, 201, "{:?}", landed.json);
    app.assert_stored(&landed.json, &sha1, 5 * MIB);
    assert_eq!(
        (refused.status, refused.code()),
        (507, "insufficient_storage"),
        "{:?}",
        refused.json
    );
    assert!(refused.header("retry-after").is_some());
    assert!(peak <= cap, "the spool held {peak} bytes, past its cap of {cap}");
    assert!(peak > 4 * MIB, "the sampler saw the spool ({peak} bytes)");
    // Both spool files are gone, and their bytes given back.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
    assert_eq!(app.metric("gateway_spool_bytes").await, 0.0);
    app.assert_no_open_session().await;
}

/// Box chose parts larger than the whole memory budget: a clear 503 `budget_too_small` (not a 500),
/// before any byte of the file is read, and the session aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_below_boxs_part_size_is_503_budget_too_small() {
    let app = spawn_app_with(Options {
        part_size: 2 * MIB,
        threshold: MIB,
        memory_budget_bytes: MIB,
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            // One caller (anonymous) alone: the whole budget is its share.
            s.memory_budget_share_per_key = 1.0;
        })),
        ..Options::default()
    })
    .await;
    let head = format!(
        "PUT /v1/folders/0/files/big-parts.bin HTTP/1.1\r\nHost: gateway\r\nContent-Length: {}",
        3 * MIB
    );
    // Only the head is sent: the answer must come without the body.
    let answer = raw_request(&app.address, &head, [], Duration::ZERO, Duration::from_secs(30))
        .await
        .expect("an answer before any byte of the body");
    assert_eq!(
        (answer.status, answer.code()),
        (503, "budget_too_small"),
        "{:?}",
        answer.json
    );
    assert!(
        answer.header("retry-after").is_none(),
        "a setting, not a passing state"
    );
    assert!(answer.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("memory_budget_bytes"));
    app.assert_no_open_session().await;
    assert_eq!(sessions(&app.emulator)[0]["state"], "aborted");
    assert_eq!(app.metric("gateway_buffered_bytes_peak").await, 0.0);
}

/// A tus chunk sent with `Upload-Checksum` is spooled to be checked: it is bounded by
/// `spool_max_bytes` (not by the rest of the file) and counted in the spool of all uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_chunk_with_a_checksum_is_bounded_by_spool_max_bytes() {
    let app = spawn_app_with(Options {
        spool_max_bytes: MIB,
        ..Options::default()
    })
    .await;
    let size = 3 * MIB;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let path = tus_client::create(&app.http, &app.address, size, "checked.bin").await;
    let checksum = |b: &[u8]| format!("sha1 {}", sha1_b64(b));
    let patch_head = |offset: u64, len: usize, sum: &str| {
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: gateway\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n\
             Content-Type: application/offset+octet-stream\r\nUpload-Checksum: {sum}\r\nContent-Length: {len}"
        )
    };
    // 2 MiB in one checked chunk: past spool_max_bytes (1 MiB), though within the file's length.
    let chunk = &bytes[..2 * MIB as usize];
    let pieces: Vec<Vec<u8>> = chunk.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let answer = raw_request(
        &app.address,
        &patch_head(0, chunk.len(), &checksum(chunk)),
        pieces,
        Duration::ZERO,
        Duration::from_secs(30),
    )
    .await
    .expect("an answer");
    assert_eq!(
        (answer.status, answer.code()),
        (413, "file_too_large"),
        "{:?}",
        answer.json
    );
    assert!(answer.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("spool_max_bytes"));
    assert_eq!(
        app.metric("gateway_spool_bytes").await,
        0.0,
        "the refused chunk's spool is given back"
    );
    // Chunks of spool_max_bytes go through, checked, and the upload lands whole.
    let url = format!("{}{path}", app.address);
    for offset in (0..size).step_by(MIB as usize) {
        let chunk = bytes[offset as usize..(offset + MIB) as usize].to_vec();
        let sum = checksum(&chunk);
        let answer = tus_client::patch(&app.http, &url, offset, chunk, Some(&sum)).await;
        assert_eq!(answer.status(), 204, "{:?}", answer.text().await);
    }
    let files = inspect(&app.emulator)["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["sha1"], sha1);
    assert_eq!(app.metric("gateway_spool_bytes").await, 0.0);
}
