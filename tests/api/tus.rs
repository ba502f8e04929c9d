//! Resumable uploads (tus 1.0.0) at /v1/tus/, driven by the tus Python client (tuspy) and curl, with
//! the emulator behind: what lands, what the emulator's session received, and what is left behind.
use std::future::ready;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::process::{anonymous_env, env_refs, small_parts, Gateway};
use crate::support::redis_server::{redis_options, RedisServer};
use crate::support::tus_client::{create, creation, head, header, metadata, patch, tuspy, TUS};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuspy_uploads_in_chunks_onto_one_box_session_with_checksums() {
    // Arrange: a file of 12.5 parts, sent in chunks that never fall on a part boundary.
    let app = spawn_app_with(Options::default()).await;
    let size = 12 * PART + PART / 2;
    let (file, sha1) = make_file(size);
    // Act
    let out = tuspy(
        &[&app.address],
        file.path(),
        700 * 1024,
        &[
            "--checksum",
            "--metadata",
            &json!({"filename": "tus.bin"}).to_string(),
        ],
    )
    .await;
    // Assert: one session, exact parts, the whole file, and the id in the last PATCH's answer.
    let id = out["file_id"]
        .as_str()
        .expect("Upload-Box-File-Id on the last PATCH");
    assert_file(&app, id, &sha1, size);
    assert_exact_parts(&app, size, PART);
    let url = format!("{}{}", app.address, out["url"].as_str().unwrap());
    let after = head(&app.http, &url).await;
    assert_eq!(header(&after, "upload-offset").unwrap(), size.to_string());
    assert_eq!(header(&after, "upload-box-file-id").as_deref(), Some(id));
    assert_eq!(
        app.metric_with("gateway_tus_uploads_total", &["completed"]).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_goes_up_in_one_direct_upload() {
    let app = spawn_app_with(Options::default()).await;
    let size = 300 * 1000;
    let (file, sha1) = make_file(size);
    let out = tuspy(
        &[&app.address],
        file.path(),
        100 * 1000,
        &[
            "--metadata",
            &json!({"filename": "small.bin", "folder_id": "0"}).to_string(),
        ],
    )
    .await;
    assert_file(&app, out["file_id"].as_str().unwrap(), &sha1, size);
    assert!(
        sessions(&app.emulator).is_empty(),
        "no session for a direct upload"
    );
    assert_eq!(out["chunks"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_is_advertised_and_bad_requests_are_refused_clearly() {
    let app = spawn_app_with(Options::default()).await;
    let base = format!("{}/v1/tus/", app.address);
    // OPTIONS
    let options = app
        .http
        .request(reqwest::Method::OPTIONS, &base)
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(header(&options, "tus-version").as_deref(), Some(TUS));
    assert_eq!(
        header(&options, "tus-checksum-algorithm").as_deref(),
        Some("sha1")
    );
    let extensions = header(&options, "tus-extension").unwrap();
    for ext in [
        "creation",
        "creation-with-upload",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(extensions.split(',').any(|e| e == ext), "{ext} in {extensions}");
    }
    // No Tus-Resumable: 412, naming the version.
    let old = app
        .http
        .post(&base)
        .header("Upload-Length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 412);
    assert_eq!(header(&old, "tus-version").as_deref(), Some(TUS));
    // A deferred length: Box needs the size first.
    let deferred = app
        .http
        .post(&base)
        .header("Tus-Resumable", TUS)
        .header("Upload-Defer-Length", 1)
        .header("Upload-Metadata", metadata(&[("filename", "d.bin")]))
        .send()
        .await
        .unwrap();
    assert_eq!(deferred.status(), 400);
    assert_eq!(header(&deferred, "tus-resumable").as_deref(), Some(TUS));
    let body: Value = deferred.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deferred_length_unsupported");
    // No filename.
    let nameless = app
        .http
        .post(&base)
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(nameless.status(), 400);
    assert_eq!(
        nameless.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_upload_metadata"
    );
    // Unknown upload.
    let unknown = head(&app.http, &format!("{base}nosuchupload")).await;
    assert_eq!(unknown.status(), 404);
    assert!(sessions(&app.emulator).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_offsets_and_bad_checksums_are_refused_and_the_upload_still_completes() {
    // Arrange: a chunked upload of 5 parts and a half.
    let app = spawn_app_with(Options::default()).await;
    let size = 5 * PART + PART / 2;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!(
        "{}{}",
        app.address,
        create(&app.http, &app.address, size, "c.bin").await
    );
    let half = (size / 2) as usize;
    // Act and assert: a wrong offset is 409.
    let wrong = patch(&app.http, &url, 5, bytes[5..half].to_vec(), None).await;
    assert_eq!(wrong.status(), 409);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"]["code"],
        "offset_mismatch"
    );
    // A bad checksum is 460 and the chunk is dropped: nothing reached Box or the state.
    let mut damaged = bytes[..half].to_vec();
    damaged[1000] ^= 1;
    let bad = patch(
        &app.http,
        &url,
        0,
        damaged,
        Some(&format!("sha1 {}", sha1_b64(&bytes[..half]))),
    )
    .await;
    assert_eq!(bad.status(), 460);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["code"],
        "checksum_mismatch"
    );
    assert_eq!(
        header(&head(&app.http, &url).await, "upload-offset").as_deref(),
        Some("0")
    );
    assert!(sessions(&app.emulator)[0]["parts"].as_array().unwrap().is_empty());
    // An algorithm other than sha1 is refused.
    let md5 = patch(&app.http, &url, 0, bytes[..half].to_vec(), Some("md5 AAAA")).await;
    assert_eq!(md5.status(), 400);
    // The right chunks go in; the last one lands the file.
    let first = patch(
        &app.http,
        &url,
        0,
        bytes[..half].to_vec(),
        Some(&format!("sha1 {}", sha1_b64(&bytes[..half]))),
    )
    .await;
    assert_eq!(first.status(), 204);
    assert_eq!(header(&first, "upload-offset"), Some(half.to_string()));
    assert_eq!(header(&first, "upload-box-file-id"), None);
    let last = patch(&app.http, &url, half as u64, bytes[half..].to_vec(), None).await;
    assert_eq!(last.status(), 204);
    let id = header(&last, "upload-box-file-id").expect("the Box file id on the last PATCH");
    assert_file(&app, &id, &sha1, size);
    assert_exact_parts(&app, size, PART);
    // A PATCH after the end changes nothing and says where the file is.
    let again = patch(&app.http, &url, size, Vec::new(), None).await;
    assert_eq!(again.status(), 204);
    assert_eq!(header(&again, "upload-box-file-id"), Some(id));
}

/// `curl` with `args`: the final answer's status and headers (names in lower case).
async fn curl_headers(args: &[&str]) -> (u16, std::collections::HashMap<String, String>) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "-H", "Tus-Resumable: 1.0.0"])
        .args(args)
        .output()
        .await
        .expect("the tests need curl on the PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    // After a `100 Continue`, the last block is the answer.
    let last = text.trim_end().rsplit("\r\n\r\n").next().unwrap_or_default();
    let mut lines = last.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_aborts_the_box_session() {
    // Arrange, with curl: an upload of 5 parts, one part and a bit of it sent.
    let app = spawn_app_with(Options::default()).await;
    let (chunk, _) = make_file(PART + 10);
    let (status, created) = curl_headers(&[
        "-X",
        "POST",
        "-H",
        &format!("Upload-Length: {}", 5 * PART),
        "-H",
        &format!("Upload-Metadata: {}", metadata(&[("filename", "t.bin")])),
        &format!("{}/v1/tus/", app.address),
    ])
    .await;
    assert_eq!(status, 201);
    let url = format!("{}{}", app.address, created["location"]);
    let (status, patched) = curl_headers(&[
        "-X",
        "PATCH",
        "-H",
        "Upload-Offset: 0",
        "-H",
        "Content-Type: application/offset+octet-stream",
        "--data-binary",
        &format!("@{}", chunk.path().display()),
        &url,
    ])
    .await;
    assert_eq!(
        (status, patched["upload-offset"].as_str()),
        (204, &*(PART + 10).to_string())
    );
    // Act
    let (status, _) = curl_headers(&["-X", "DELETE", &url]).await;
    // Assert: the session is aborted, with the one part it got; the upload is gone; no file.
    assert_eq!(status, 204);
    let all = sessions(&app.emulator);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["state"], "aborted");
    assert_eq!(all[0]["parts"].as_array().unwrap().len(), 1);
    assert_eq!(curl_headers(&["-I", &url]).await.0, 404);
    assert!(app.emulator.inspect().files.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_upload_has_its_session_aborted() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s, _| s.tus_expiration_secs = 1)),
        ..Options::default()
    })
    .await;
    let url = format!(
        "{}{}",
        app.address,
        create(&app.http, &app.address, 5 * PART, "e.bin").await
    );
    assert_eq!(
        patch(&app.http, &url, 0, vec![1; PART as usize], None)
            .await
            .status(),
        204
    );
    // The sweeper runs every 250 ms here.
    eventually(
        "the expired upload's session aborted",
        Duration::from_secs(6),
        || ready(sessions(&app.emulator)[0]["state"] == "aborted"),
    )
    .await;
    assert_eq!(head(&app.http, &url).await.status(), 404);
    // The sweeper counts the expiry after it aborted the session: a moment later.
    eventually("the expiry counted", Duration::from_secs(5), || async {
        app.metric_with("gateway_tus_uploads_total", &["expired"]).await == 1.0
    })
    .await;
}

/// Sends a PATCH's headers for `declared` bytes, only `sent` of them, and cuts the connection.
async fn cut_patch(base: &str, path: &str, offset: u64, bytes: &[u8], declared: usize) {
    use tokio::io::AsyncWriteExt;
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: {TUS}\r\nUpload-Offset: {offset}\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp.flush().await.unwrap();
    // Long enough for the full parts to reach Box before the cut.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(tcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_mid_chunk_resumes_from_heads_offset() {
    // Arrange: 8 parts; the first PATCH declares them all but sends 3.5 parts, then the connection dies.
    let app = spawn_app_with(Options::default()).await;
    let size = 8 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let path = create(&app.http, &app.address, size, "cut.bin").await;
    let sent = (3 * PART + PART / 2) as usize;
    cut_patch(&app.address, &path, 0, &bytes[..sent], size as usize).await;
    // Act: HEAD says what is durable (the whole parts that reached Box); tuspy resumes from there.
    let url = format!("{}{path}", app.address);
    let (http, url_ref) = (&app.http, &url);
    let offset = eventually("HEAD past 0", Duration::from_secs(5), || async move {
        Some(header(&head(http, url_ref).await, "upload-offset").unwrap()).filter(|o| o != "0")
    })
    .await;
    assert_eq!(offset, (3 * PART).to_string(), "the parts that reached Box count");
    let out = tuspy(&[&app.address], file.path(), 512 * 1024, &["--url", &path]).await;
    // Assert
    assert_file(&app, out["file_id"].as_str().unwrap(), &sha1, size);
    assert_exact_parts(&app, size, PART);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_patches_one_wins_and_the_other_gets_409() {
    // Arrange: a PATCH whose body arrives slowly, holding the upload.
    let app = spawn_app_with(Options::default()).await;
    let size = 6 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let url = format!(
        "{}{}",
        app.address,
        create(&app.http, &app.address, size, "race.bin").await
    );
    let first_len = 3 * PART as usize + 100;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let slow = app
        .http
        .patch(&url)
        .header("Tus-Resumable", TUS)
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Content-Length", first_len)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let slow = tokio::spawn(slow);
    tx.send(Ok(bytes[..PART as usize].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Act: a second PATCH at the same offset while the first is under way.
    let second = patch(&app.http, &url, 0, bytes[..2 * PART as usize].to_vec(), None).await;
    tx.send(Ok(bytes[PART as usize..first_len].to_vec()))
        .await
        .unwrap();
    drop(tx);
    let first = slow.await.unwrap().unwrap();
    // Assert: one won, the other was turned away, and the upload goes on from the winner's offset.
    assert_eq!(second.status(), 409);
    assert_eq!(
        second.json::<Value>().await.unwrap()["error"]["code"],
        "upload_locked"
    );
    assert_eq!(first.status(), 204);
    assert_eq!(header(&first, "upload-offset"), Some(first_len.to_string()));
    let rest = patch(
        &app.http,
        &url,
        first_len as u64,
        bytes[first_len..].to_vec(),
        None,
    )
    .await;
    assert_eq!(rest.status(), 204);
    assert_file(&app, &header(&rest, "upload-box-file-id").unwrap(), &sha1, size);
    assert_exact_parts(&app, size, PART);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_mid_upload_resumes_it_from_its_embedded_store() {
    use box_upload_gateway::emulator::Emulator;
    // Arrange: the real binary with its state under a directory that outlives it.
    let emulator = Emulator::spawn(small_parts()).await.unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let mut env = anonymous_env(&emulator);
    env.push(("GATEWAY_STATE_DIR", state_dir.path().display().to_string()));
    let size = 10 * PART + 1234;
    let (file, sha1) = make_file(size);
    let first = Gateway::start(&env_refs(&env)).await;
    let base = first.url("");
    let meta = json!({"filename": "restart.bin"}).to_string();
    let half = tuspy(
        &[&base],
        file.path(),
        300 * 1024,
        &["--metadata", &meta, "--stop-at", &(size / 2).to_string()],
    )
    .await;
    let logs = first.finish().await;
    assert!(half["offset"].as_u64().unwrap() >= size / 2, "{half}");
    assert!(!logs.contains("landed"), "not finished before the restart");
    // Act: a new process on the same state directory takes the upload up.
    let second = Gateway::start(&env_refs(&env)).await;
    let out = tuspy(
        &[&second.url("")],
        file.path(),
        300 * 1024,
        &["--url", half["url"].as_str().unwrap()],
    )
    .await;
    second.finish().await;
    // Assert
    let id = out["file_id"].as_str().unwrap();
    let path = emulator.file_path(id).unwrap();
    assert_eq!(sha1_of_path(&path), sha1);
    let all = sessions(&emulator);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["state"], "committed");
    assert_eq!(
        all[0]["parts"].as_array().unwrap().len() as u64,
        size.div_ceil(PART)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_behaves_as_the_embedded_one() {
    let redis = RedisServer::start().await;
    let store = box_upload_gateway::state::RedisStore::new(&redis.url, None).unwrap();
    box_upload_gateway::state::check_store(&store).await;
}

fn big_parts_with_redis(url: &str) -> Options {
    Options {
        // Box's common part size: a 7 MB chunk never fills a part alone, so the part's first bytes
        // wait in Redis for the next chunk, which the other replica takes.
        part_size: 8 * 1024 * 1024,
        memory_budget_bytes: 64 * 1024 * 1024,
        ..redis_options(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_in_7_mb_chunks_alternating_between_two_replicas_lands_whole() {
    // Arrange: two gateways sharing one Redis, in front of one emulator.
    let redis = RedisServer::start().await;
    let app = spawn_app_with(big_parts_with_redis(&redis.url)).await;
    let other = spawn_replica(&app, big_parts_with_redis(&redis.url)).await;
    let size = 100_000_000;
    let (file, sha1) = make_file(size);
    let started = std::time::Instant::now();
    // Act: tuspy sends chunk 1 to the first replica, chunk 2 to the second, and so on.
    let out = tuspy(
        &[&app.address, &other.address],
        file.path(),
        7_000_000,
        &[
            "--checksum",
            "--metadata",
            &json!({"filename": "big.bin"}).to_string(),
        ],
    )
    .await;
    let elapsed = started.elapsed();
    // Assert: whole, in exact 8 MiB parts of one session; both replicas took PATCHes.
    assert_eq!(out["chunks"], 15);
    assert_file(&app, out["file_id"].as_str().unwrap(), &sha1, size);
    assert_exact_parts(&app, size, 8 * 1024 * 1024);
    for metrics in [&app.metrics, &other.metrics] {
        assert!(
            metrics.parts.with_label_values(&["uploaded"]).get() > 0,
            "each replica uploaded parts"
        );
        // The memory budget still bounds what each replica holds.
        assert!(metrics.buffered_bytes_peak.get() <= 64 * 1024 * 1024);
    }
    eprintln!("tus: 100 MB in 7 MB chunks over two replicas and Redis: {elapsed:.1?} (debug build)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_lock_and_the_offset() {
    // Arrange: an upload created on one replica.
    let redis = RedisServer::start().await;
    let app = spawn_app_with(redis_options(&redis.url)).await;
    let other = spawn_replica(&app, redis_options(&redis.url)).await;
    let size = 6 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let path = create(&app.http, &app.address, size, "shared.bin").await;
    // Act and assert: the other replica sees the upload, refuses a stale offset, and finishes it.
    let one = patch(
        &app.http,
        &format!("{}{path}", app.address),
        0,
        bytes[..1000].to_vec(),
        None,
    )
    .await;
    assert_eq!(one.status(), 204);
    let stale = patch(
        &app.http,
        &format!("{}{path}", other.address),
        0,
        bytes[..1000].to_vec(),
        None,
    )
    .await;
    assert_eq!(stale.status(), 409);
    let head_other = head(&app.http, &format!("{}{path}", other.address)).await;
    assert_eq!(header(&head_other, "upload-offset").as_deref(), Some("1000"));
    let rest = patch(
        &app.http,
        &format!("{}{path}", other.address),
        1000,
        bytes[1000..].to_vec(),
        None,
    )
    .await;
    assert_eq!(rest.status(), 204);
    assert_file(&app, &header(&rest, "upload-box-file-id").unwrap(), &sha1, size);
    assert_exact_parts(&app, size, PART);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_tus_endpoints_as_they_guard_the_plain_ones() {
    // Arrange: `team` may write only into its folder, up to 1 MiB, as user 777; `admin` into 0.
    let dir = tempfile::tempdir().unwrap();
    let (app, team_folder) = keyed_app(dir.path()).await;
    let create_as = |key: Option<&str>, folder: &str, size: u64| {
        let pairs = [("filename", "k.bin"), ("folder_id", folder)];
        let mut request = creation(&app.http, &app.address, size, &pairs);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        request.send()
    };
    // Act and assert: no key, a folder outside the key's, a file above its limit.
    let anonymous = create_as(None, &team_folder, 10).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(header(&anonymous, "tus-resumable").as_deref(), Some(TUS));
    let elsewhere = create_as(Some(secret("api_key_team")), "0", 10).await.unwrap();
    assert_eq!(
        elsewhere.json::<Value>().await.unwrap()["error"]["code"],
        "forbidden_folder"
    );
    let big = create_as(Some(secret("api_key_team")), &team_folder, 2 << 20)
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert!(sessions(&app.emulator).is_empty());
    // Within its rights, the key's upload lands where it may, as its user.
    let (file, sha1) = make_file(600 * 1000);
    let meta = json!({"filename": "team.bin", "folder_id": team_folder}).to_string();
    let out = tuspy(
        &[&app.address],
        file.path(),
        250 * 1000,
        &[
            "--key",
            secret("api_key_team"),
            "--metadata",
            &meta,
            "--stop-at",
            "250000",
        ],
    )
    .await;
    // Another key does not see the upload.
    let url = format!("{}{}", app.address, out["url"].as_str().unwrap());
    let foreign = app
        .http
        .head(&url)
        .header("Tus-Resumable", TUS)
        .header("X-API-Key", secret("api_key_admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
    let out = tuspy(
        &[&app.address],
        file.path(),
        250 * 1000,
        &[
            "--key",
            secret("api_key_team"),
            "--url",
            out["url"].as_str().unwrap(),
        ],
    )
    .await;
    let id = out["file_id"].as_str().unwrap();
    assert_file(&app, id, &sha1, 600 * 1000);
    let stored = app
        .emulator
        .inspect()
        .files
        .into_iter()
        .find(|f| f.id == id)
        .unwrap();
    assert_eq!(stored.parent_id, team_folder);
    assert!(app.emulator.inspect().as_user.iter().any(|u| u == "777"));
}
