//! What the state store keeps of a tus upload, and who may touch it: the unfinished part stored
//! apart (HEAD never reads it), the caps on it and on open uploads, ownership (another owner gets
//! 404), fencing (a PATCH that lost its lock saves nothing), and the sweeper's way with a record
//! that cannot be read.
use std::time::Duration;

use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{EmulatorConfig, EmulatorHandle, DEV_TOKEN};
use serde_json::Value;

use crate::support::redis_server::{redis_options, RedisServer};
use crate::support::tus_client::{create, creation, head, header, patch, TUS};
use crate::support::*;

const PREFIX: &str = "box-upload-gateway:";

fn id_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

async fn code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unfinished_part_is_stored_apart_and_head_never_reads_it() {
    // Arrange: an upload with 1.5 parts sent, its state in Redis.
    let server = RedisServer::start().await;
    let app = spawn_app_with(redis_options(&server.url)).await;
    let mut r = server.connection().await;
    let size = 4 * PART;
    let path = create(&app.http, &app.address, size, "apart.bin").await;
    let url = format!("{}{path}", app.address);
    let sent = (PART + PART / 2) as usize;
    assert_eq!(patch(&app.http, &url, 0, vec![7; sent], None).await.status(), 204);
    let record_key = format!("{PREFIX}tus:{}", id_of(&path));
    let pending_key = format!("{record_key}:pending");
    // Assert: the record stays small; the half part is under its own key, and counted.
    let record_len: usize = redis::cmd("STRLEN")
        .arg(&record_key)
        .query_async(&mut r)
        .await
        .unwrap();
    let pending_len: usize = redis::cmd("STRLEN")
        .arg(&pending_key)
        .query_async(&mut r)
        .await
        .unwrap();
    eprintln!("tus state in Redis: record {record_len} bytes, unfinished part {pending_len} bytes apart");
    assert!(record_len < 4096, "the record holds no file bytes: {record_len}");
    assert_eq!(pending_len as u64, PART / 2);
    let counted: u64 = redis::cmd("GET")
        .arg(format!("{PREFIX}pending-bytes"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(counted, PART / 2);
    // Act: the unfinished part goes missing.
    let _: () = redis::cmd("DEL")
        .arg(&pending_key)
        .query_async(&mut r)
        .await
        .unwrap();
    // Assert: HEAD does not notice (it never reads it); a PATCH, which needs it, refuses to go on.
    let after = head(&app.http, &url).await;
    assert_eq!(after.status(), 200);
    assert_eq!(header(&after, "upload-offset"), Some(sent.to_string()));
    let next = patch(&app.http, &url, sent as u64, vec![7; 10], None).await;
    assert_eq!(next.status(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caps_on_open_uploads_and_unfinished_bytes_are_refused_with_their_codes() {
    // Arrange: two open uploads per owner, 1000 unfinished bytes in the whole store.
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.tus_max_open_uploads_per_key = 2;
            s.tus_max_pending_bytes = 1000;
        })),
        ..Options::default()
    })
    .await;
    let size = 4 * PART;
    let first = create(&app.http, &app.address, size, "one.bin").await;
    let _second = create(&app.http, &app.address, size, "two.bin").await;
    // Act and assert: a third is refused before Box is asked for a session.
    let third = creation(&app.http, &app.address, size, &[("filename", "three.bin")])
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(code(third).await, "too_many_open_uploads");
    assert_eq!(sessions(&app.emulator).len(), 2);
    // A terminated upload frees its place.
    let url = format!("{}{first}", app.address);
    let deleted = app
        .http
        .delete(&url)
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let third = create(&app.http, &app.address, size, "three.bin").await;
    let url = format!("{}{third}", app.address);
    // An unfinished part past the store's cap: the whole parts go to Box, the rest is dropped,
    // and HEAD says where the upload really stands.
    let over = patch(&app.http, &url, 0, vec![1; PART as usize + 1500], None).await;
    assert_eq!(over.status(), 503);
    assert!(over.headers().contains_key("retry-after"));
    assert_eq!(code(over).await, "tus_storage_full");
    let now = head(&app.http, &url).await;
    assert_eq!(header(&now, "upload-offset"), Some(PART.to_string()));
    // Within the cap, it goes on.
    let fits = patch(&app.http, &url, PART, vec![1; 900], None).await;
    assert_eq!(fits.status(), 204);
    assert_eq!(header(&fits, "upload-offset"), Some((PART + 900).to_string()));
    assert_eq!(
        app.metric_with("gateway_tus_refused_total", &["too_many_open_uploads"])
            .await,
        1.0
    );
    assert_eq!(
        app.metric_with("gateway_tus_refused_total", &["storage_full"])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_callers_with_other_tokens_do_not_see_each_others_uploads() {
    // Arrange: pass-through; Box (the emulator) takes two callers' tokens.
    let mine = secret("caller_box_token");
    let app = spawn_app_with(Options {
        emulator: Some(Box::new(move |c: &mut EmulatorConfig| {
            c.tokens = vec![mine.into(), DEV_TOKEN.into()]
        })),
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "passthrough".into();
            s.box_developer_token = None::<Secret>;
            s.allow_anonymous = false;
        })),
        ..Options::default()
    })
    .await;
    let size = 5 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let created = creation(&app.http, &app.address, size, &[("filename", "mine.bin")])
        .bearer_auth(mine)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{}{}", app.address, header(&created, "location").unwrap());
    let as_caller = |method: reqwest::Method, token: &str, offset: u64, body: Vec<u8>| {
        app.http
            .request(method, &url)
            .bearer_auth(token)
            .header("Tus-Resumable", TUS)
            .header("Upload-Offset", offset)
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send()
    };
    // Act: the other token tries HEAD, PATCH and DELETE.
    let other_head = as_caller(reqwest::Method::HEAD, DEV_TOKEN, 0, vec![])
        .await
        .unwrap();
    let other_patch = as_caller(reqwest::Method::PATCH, DEV_TOKEN, 0, bytes.clone())
        .await
        .unwrap();
    let other_delete = as_caller(reqwest::Method::DELETE, DEV_TOKEN, 0, vec![])
        .await
        .unwrap();
    // Assert: 404 each time (the id's existence is not revealed), and the owner's upload lands whole.
    assert_eq!(other_head.status(), 404);
    assert_eq!(other_patch.status(), 404);
    assert_eq!(code(other_patch).await, "not_found");
    assert_eq!(other_delete.status(), 404);
    assert_eq!(sessions(&app.emulator)[0]["parts"].as_array().unwrap().len(), 0);
    let own = as_caller(reqwest::Method::PATCH, mine, 0, bytes).await.unwrap();
    assert_eq!(own.status(), 204);
    assert_file(&app, &header(&own, "upload-box-file-id").unwrap(), &sha1, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_upload_is_its_box_users_so_a_refreshed_token_resumes_it() {
    // Arrange: pass-through; the caller's tokens come from Box's token endpoint (the emulator's),
    // two for user 7 (the first, then a refreshed one) and one for user 8.
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "passthrough".into();
            s.box_developer_token = None::<Secret>;
            s.allow_anonymous = false;
        })),
        ..Options::default()
    })
    .await;
    let (first, refreshed, other_user) = (
        user_token(&app, "7").await,
        user_token(&app, "7").await,
        user_token(&app, "8").await,
    );
    assert_ne!(first, refreshed);
    let size = 3 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let created = creation(&app.http, &app.address, size, &[("filename", "refreshed.bin")])
        .bearer_auth(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{}{}", app.address, header(&created, "location").unwrap());
    let send = |token: &str, offset: u64, body: Vec<u8>| {
        app.http
            .patch(&url)
            .bearer_auth(token)
            .header("Tus-Resumable", TUS)
            .header("Upload-Offset", offset)
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send()
    };
    let half = (PART + 7) as usize;
    assert_eq!(
        send(&first, 0, bytes[..half].to_vec()).await.unwrap().status(),
        204
    );
    // Act: another user's token, then the refreshed token of the same user.
    let stranger = send(&other_user, half as u64, bytes[half..].to_vec())
        .await
        .unwrap();
    let resumed = send(&refreshed, half as u64, bytes[half..].to_vec())
        .await
        .unwrap();
    // Assert
    assert_eq!(stranger.status(), 404);
    assert_eq!(resumed.status(), 204);
    assert_file(
        &app,
        &header(&resumed, "upload-box-file-id").unwrap(),
        &sha1,
        size,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_api_key_gets_404_for_patch_and_delete_too() {
    let dir = tempfile::tempdir().unwrap();
    let (app, team_folder) = keyed_app(dir.path()).await;
    let pairs = [("filename", "k.bin"), ("folder_id", team_folder.as_str())];
    let created = creation(&app.http, &app.address, 1000, &pairs)
        .header("X-API-Key", secret("api_key_team"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{}{}", app.address, header(&created, "location").unwrap());
    let foreign = |method: reqwest::Method| {
        app.http
            .request(method, &url)
            .header("X-API-Key", secret("api_key_admin"))
            .header("Tus-Resumable", TUS)
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .body(vec![1u8; 1000])
            .send()
    };
    assert_eq!(foreign(reqwest::Method::PATCH).await.unwrap().status(), 404);
    assert_eq!(foreign(reqwest::Method::DELETE).await.unwrap().status(), 404);
    let own = app
        .http
        .head(&url)
        .header("X-API-Key", secret("api_key_team"))
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&own, "upload-offset").as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_whose_lock_was_taken_away_saves_nothing() {
    // Arrange: a PATCH whose body arrives slowly, its upload's state in Redis.
    let server = RedisServer::start().await;
    let app = spawn_app_with(redis_options(&server.url)).await;
    let mut r = server.connection().await;
    let size = 6 * PART;
    let (file, sha1) = make_file(size);
    let bytes = std::fs::read(file.path()).unwrap();
    let path = create(&app.http, &app.address, size, "fenced.bin").await;
    let url = format!("{}{path}", app.address);
    let slow_len = 2 * PART as usize + 100;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let slow = tokio::spawn(
        app.http
            .patch(&url)
            .header("Tus-Resumable", TUS)
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Content-Length", slow_len)
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    tx.send(Ok(bytes[..PART as usize].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Act: its lock vanishes (as when it expires during a stall), another PATCH takes the upload
    // and moves it on, then the slow body ends.
    let lock_key = format!("{PREFIX}lock:tus:{}", id_of(&path));
    let removed: i64 = redis::cmd("DEL")
        .arg(&lock_key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the PATCH held the lock");
    let other = patch(&app.http, &url, 0, bytes[..1000].to_vec(), None).await;
    assert_eq!(other.status(), 204);
    tx.send(Ok(bytes[PART as usize..slow_len].to_vec()))
        .await
        .unwrap();
    drop(tx);
    let slow = slow.await.unwrap().unwrap();
    // Assert: the stale PATCH is told it lost the lock, and did not move the offset.
    assert_eq!(slow.status(), 409);
    assert_eq!(code(slow).await, "upload_locked");
    let now = head(&app.http, &url).await;
    assert_eq!(header(&now, "upload-offset").as_deref(), Some("1000"));
    assert_eq!(
        app.metric_with("gateway_tus_refused_total", &["lock_lost"]).await,
        1.0
    );
    // The upload goes on from the true offset and lands whole (the part the stale PATCH sent is
    // found in Box and not sent twice).
    let rest = patch(&app.http, &url, 1000, bytes[1000..].to_vec(), None).await;
    assert_eq!(rest.status(), 204);
    assert_file(&app, &header(&rest, "upload-box-file-id").unwrap(), &sha1, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_a_record_it_cannot_read_and_aborts_its_session() {
    // Arrange: an upload that expires at once; its record damaged in Redis so it no longer decodes
    // (a field of the wrong type), its owner and session still readable.
    let server = RedisServer::start().await;
    let mut options = redis_options(&server.url);
    let with_redis = options.gateway.take().unwrap();
    options.gateway = Some(Box::new(move |s: &mut Settings, e: &EmulatorHandle| {
        with_redis(s, e);
        s.tus_expiration_secs = 2;
    }));
    let app = spawn_app_with(options).await;
    let mut r = server.connection().await;
    let path = create(&app.http, &app.address, 4 * PART, "damaged.bin").await;
    let key = format!("{PREFIX}tus:{}", id_of(&path));
    let stored: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut r).await.unwrap();
    let mut record: Value = serde_json::from_slice(&stored[4..]).unwrap();
    record["expires_at"] = "soon".into();
    let json = serde_json::to_vec(&record).unwrap();
    let mut damaged = (json.len() as u32).to_be_bytes().to_vec();
    damaged.extend_from_slice(&json);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(damaged)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        head(&app.http, &format!("{}{path}", app.address)).await.status(),
        500
    );
    // Act: the sweeper (every 250 ms here) comes by once the upload is due.
    let (key_ref, emulator) = (&key, &app.emulator);
    let gone = holds_within(Duration::from_secs(10), || {
        let mut r = r.clone();
        async move {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(key_ref)
                .query_async(&mut r)
                .await
                .unwrap();
            exists == 0 && sessions(emulator)[0]["state"] == "aborted"
        }
    })
    .await;
    // Assert: removed, its session aborted, and nothing left scheduled.
    assert!(gone, "the damaged record is removed and its session aborted");
    let due: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{PREFIX}expiry"))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(due.is_empty(), "{due:?}");
}
