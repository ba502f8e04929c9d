//! Issue 24, part C: a link is write-only and revocable, and the smaller holes. Each test is the
//! attack it rules out, against the real gateway and emulator over loopback (Redis where the state
//! is the attacker's tool; the real binary where its log is the thing looked at).
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use box_upload_gateway::access::ApiKeyConfig;
use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{Emulator, EmulatorConfig, EmulatorHandle, DEV_TOKEN};
use serde_json::{json, Value};

use crate::support::process::{emulator_env, env_refs, Gateway};
use crate::support::redis_server::{redis_options, RedisServer};
use crate::support::tus_client::{metadata, TUS};
use crate::support::{
    inspect, raw_request, secret, sha256_hex, spawn_app_with, user_token, ApiKey, Options, TestApp, PART,
};

/// Where links point (`public_base_url`, required with links on); the tests reach the page through
/// their gateway's own address.
const PUBLIC_BASE: &str = "https://uploads.example.test";

fn key(name: &str, secret_name: &str, folder: &str) -> ApiKeyConfig {
    ApiKey::new(name, secret(secret_name)).folders(&[folder]).config()
}

/// Upload links on, for the keys `team` (folder 0) and `admin` (folder 4321); `change` for the rest.
fn links_options(change: impl FnOnce(&mut Settings) + 'static) -> Options {
    Options {
        gateway: Some(Box::new(move |s, _| {
            s.allow_anonymous = false;
            s.api_keys = vec![
                key("team", "api_key_team", "0"),
                key("admin", "api_key_admin", "4321"),
            ];
            s.upload_link_secret = Some(Secret::new(secret("upload_link_secret")));
            s.public_base_url = Some(PUBLIC_BASE.into());
            change(s);
        })),
        ..Options::default()
    }
}

/// `POST /v1/upload-links` to the gateway at `gw` with the key `secret_name`: status and answer.
async fn make_link(gw: &str, secret_name: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{gw}/v1/upload-links"))
        .header("X-API-Key", secret(secret_name))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The token of a 201 of `POST /v1/upload-links`: the last segment of its URL.
fn token_of(answer: &Value) -> String {
    let url = answer["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no link in {answer}"));
    url.rsplit('/').next().unwrap().to_owned()
}

/// A link of `secret_name`'s key for folder 0 living `secs`: its id and token.
async fn link(gw: &str, secret_name: &str, secs: u64) -> (String, String) {
    let (status, answer) = make_link(
        gw,
        secret_name,
        json!({"folder_id": "0", "expires_in_secs": secs}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let url = answer["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{PUBLIC_BASE}/upload/")), "{url}");
    (answer["id"].as_str().unwrap().to_owned(), token_of(&answer))
}

/// What an answer shows its caller: status, header names (their values carry ids and dates), body.
#[derive(Debug, PartialEq, Eq)]
struct Shown {
    status: u16,
    headers: BTreeSet<String>,
    body: String,
}

/// Everything a response carries, as text (to look for ids that must not be there).
struct Answer {
    shown: Shown,
    raw: String,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let mut raw = String::new();
    let mut headers = BTreeSet::new();
    for (name, value) in response.headers() {
        raw.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or_default()));
        if !matches!(name.as_str(), "date" | "x-request-id") {
            headers.insert(name.as_str().to_owned());
        }
    }
    let body = response.text().await.unwrap();
    raw.push_str(&body);
    Answer {
        shown: Shown {
            status,
            headers,
            body,
        },
        raw,
    }
}

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

/// The page of a link on the gateway at `gw`.
async fn page(gw: &str, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("{gw}/upload/{token}"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `POST /v1/tus/` through the link `token`.
async fn tus_create(gw: &str, token: &str, size: u64, pairs: &[(&str, &str)]) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{gw}/v1/tus/"))
        .header("Tus-Resumable", TUS)
        .header("X-Upload-Link", token)
        .header("Upload-Length", size)
        .header("Upload-Metadata", metadata(pairs))
        .send()
        .await
        .unwrap()
}

async fn tus_patch(gw: &str, token: &str, location: &str, offset: u64, bytes: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .patch(format!("{gw}{location}"))
        .header("Tus-Resumable", TUS)
        .header("X-Upload-Link", token)
        .header("Upload-Offset", offset)
        .header("Content-Type", "application/offset+octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn code_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The files the emulator holds in folder 0: name -> (id, sha1).
fn files_in_root(app: &TestApp) -> std::collections::BTreeMap<String, (String, String)> {
    inspect(&app.emulator)["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["parent_id"] == "0")
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                (
                    f["id"].as_str().unwrap().to_owned(),
                    f["sha1"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_holder_gets_the_same_answers_for_a_name_that_exists_and_one_that_does_not() {
    // Arrange: the key's own file `taken.txt` in folder 0 (the secret the link holder probes for).
    let app = spawn_app_with(links_options(|_| {})).await;
    let taken = app
        .http
        .put(format!("{}/v1/folders/0/files/taken.txt", app.address))
        .header("X-API-Key", secret("api_key_team"))
        .body("the key's own file")
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 201);
    let taken: Value = taken.json().await.unwrap();
    let taken_id = taken["file"]["id"].as_str().unwrap().to_owned();
    let (_, token) = link(&app.address, "api_key_team", 600).await;

    // Act: the link holder uploads a file named like the existing one and one with a free name,
    // each with on_conflict=error (the probe of M5), none, and version.
    let mut transcripts = Vec::new();
    let mut raw = String::new();
    for name in ["taken.txt", "free.txt"] {
        let mut shown = Vec::new();
        for on_conflict in [Some("error"), None] {
            let bytes = format!("from the link: {name} {on_conflict:?}").into_bytes();
            let mut pairs = vec![("filename", name)];
            pairs.extend(on_conflict.map(|c| ("on_conflict", c)));
            let created = answer(tus_create(&app.address, &token, bytes.len() as u64, &pairs).await).await;
            let location = header(&created.raw, "location").expect("created").to_owned();
            let patched = answer(tus_patch(&app.address, &token, &location, 0, bytes.clone()).await).await;
            let file_id = header(&patched.raw, "upload-box-file-id")
                .expect("landed")
                .to_owned();
            let headed = answer(
                app.http
                    .head(format!("{}{location}", app.address))
                    .header("Tus-Resumable", TUS)
                    .header("X-Upload-Link", &token)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            // Its own file, holding its own bytes.
            assert_ne!(file_id, taken_id);
            let path = app
                .emulator
                .file_path(&file_id)
                .expect("the emulator holds the link's file");
            assert_eq!(crate::support::sha1_of_path(&path), sha1_hex(&bytes));
            for a in [&created, &patched, &headed] {
                raw.push_str(&a.raw);
            }
            shown.push([created.shown, patched.shown, headed.shown]);
        }
        let version = answer(
            tus_create(
                &app.address,
                &token,
                5,
                &[("filename", name), ("on_conflict", "version")],
            )
            .await,
        )
        .await;
        raw.push_str(&version.raw);
        transcripts.push((shown, version.shown));
    }

    // Assert: the same statuses, headers and bodies whether the name existed or not; the existing
    // file's id nowhere; the existing file untouched, the link's clashes renamed.
    assert_eq!(transcripts[0], transcripts[1]);
    let (shown, version) = &transcripts[0];
    assert_eq!(shown[0][0].status, 201);
    assert_eq!(shown[0][1].status, 204);
    assert_eq!(version.status, 403, "{version:?}");
    assert!(
        !raw.contains(&taken_id),
        "the existing file's id reached the link holder:\n{raw}"
    );
    let files = files_in_root(&app);
    assert_eq!(files["taken.txt"].0, taken_id);
    assert_eq!(files["taken.txt"].1, sha1_hex(b"the key's own file"));
    for name in ["taken (1).txt", "taken (2).txt", "free.txt", "free (1).txt"] {
        assert!(files.contains_key(name), "{name} missing: {files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_dies_when_its_keys_secret_is_rotated_under_the_same_name() {
    // Arrange: a link made by `team`; another replica where `team` kept its name but has a new
    // secret (its sha256 changed), with the same link secret.
    let app = spawn_app_with(links_options(|_| {})).await;
    let (_, token) = link(&app.address, "api_key_team", 600).await;
    let rotated = crate::support::spawn_replica(
        &app,
        links_options(|s| {
            s.api_keys = vec![key("team", "api_key_team_rotated", "0")];
        }),
    )
    .await;
    assert_eq!(
        page(&app.address, &token).await.0,
        200,
        "the link works before the rotation"
    );

    // Act
    let (page_status, page_html) = page(&rotated.address, &token).await;
    let refused = code_of(tus_create(&rotated.address, &token, 5, &[("filename", "after.txt")]).await).await;
    let (_, fresh) = link(&rotated.address, "api_key_team_rotated", 600).await;
    let fresh_created = tus_create(&rotated.address, &fresh, 0, &[("filename", "fresh.txt")]).await;

    // Assert: dead on the page and on tus; a link of the new secret works; nothing landed for the old.
    assert_eq!(page_status, 401);
    assert!(page_html.contains("not valid"), "{page_html}");
    assert_eq!(refused, (401, "link_invalid".to_owned()));
    assert_eq!(fresh_created.status(), 201);
    let files = files_in_root(&app);
    assert!(
        !files.contains_key("after.txt") && files.contains_key("fresh.txt"),
        "{files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_link_is_refused_on_the_page_and_on_tus_while_the_keys_other_links_work() {
    // Arrange: two links of `team`; an upload half sent through the first.
    let app = spawn_app_with(links_options(|_| {})).await;
    let (revoked_id, revoked) = link(&app.address, "api_key_team", 600).await;
    let (_, kept) = link(&app.address, "api_key_team", 600).await;
    let bytes = vec![3u8; 1000];
    let created = tus_create(&app.address, &revoked, 1000, &[("filename", "half.bin")]).await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        tus_patch(&app.address, &revoked, &location, 0, bytes[..400].to_vec())
            .await
            .status(),
        204
    );
    let revoke = |secret_name: &str, id: &str| {
        let request = app
            .http
            .delete(format!("{}/v1/upload-links/{id}", app.address))
            .header("X-API-Key", secret(secret_name));
        async move { request.send().await.unwrap() }
    };

    // Act: another key "revokes" the link's id (revocations are the key's own); a link holder tries
    // to revoke; then the key revokes it.
    let by_other_key = revoke("api_key_admin", &revoked_id).await.status().as_u16();
    let still_up = page(&app.address, &revoked).await.0;
    let by_link_holder = code_of(
        app.http
            .delete(format!("{}/v1/upload-links/{revoked_id}", app.address))
            .header("X-Upload-Link", &kept)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let by_its_key = revoke("api_key_team", &revoked_id).await.status().as_u16();

    // Assert: the page, a new upload and the rest of the half-sent one are refused; the key's other
    // link works and lands its file.
    assert_eq!(
        (by_other_key, still_up),
        (204, 200),
        "another key's revocation is its own"
    );
    assert_eq!(by_link_holder, (403, "link_not_allowed".to_owned()));
    assert_eq!(by_its_key, 204);
    let (status, html) = page(&app.address, &revoked).await;
    assert_eq!(status, 401);
    assert!(html.contains("revoked"), "{html}");
    assert_eq!(
        code_of(tus_create(&app.address, &revoked, 5, &[("filename", "more.bin")]).await).await,
        (401, "link_revoked".to_owned())
    );
    assert_eq!(
        code_of(tus_patch(&app.address, &revoked, &location, 400, bytes[400..].to_vec()).await).await,
        (401, "link_revoked".to_owned())
    );
    assert_eq!(page(&app.address, &kept).await.0, 200);
    let other = tus_create(&app.address, &kept, 4, &[("filename", "kept.bin")]).await;
    let other_location = other.headers()["location"].to_str().unwrap().to_owned();
    let landed = tus_patch(&app.address, &kept, &other_location, 0, b"kept".to_vec()).await;
    assert_eq!(landed.status(), 204);
    let files = files_in_root(&app);
    assert!(
        files.contains_key("kept.bin") && !files.contains_key("half.bin"),
        "{files:?}"
    );
    assert_eq!(
        app.metric_with("gateway_upload_links_revoked_total", &["key=\"team\""])
            .await,
        1.0
    );
    assert_eq!(
        app.metric_with("gateway_access_refused_total", &["key=\"team\"", "link_revoked"])
            .await,
        3.0,
        "the page, the creation and the PATCH"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn making_links_past_the_keys_rate_is_refused_with_429() {
    // Arrange: three links a minute per key.
    let app = spawn_app_with(links_options(|s| s.upload_links_per_minute_per_key = 3)).await;
    let body = json!({"folder_id": "0", "expires_in_secs": 600});

    // Act: a refused request (not counted), three links, a fourth; another key's link.
    let bad = make_link(
        &app.address,
        "api_key_team",
        json!({"folder_id": "0", "expires_in_secs": 0}),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(make_link(&app.address, "api_key_team", body.clone()).await.0);
    }
    let fourth = app
        .http
        .post(format!("{}/v1/upload-links", app.address))
        .header("X-API-Key", secret("api_key_team"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let retry_after: u64 = fourth.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let fourth = code_of(fourth).await;
    let other_key = make_link(
        &app.address,
        "api_key_admin",
        json!({"folder_id": "4321", "expires_in_secs": 600}),
    )
    .await;

    // Assert
    assert_eq!(bad.0, 400);
    assert_eq!(statuses, [201, 201, 201]);
    assert_eq!(fourth, (429, "rate_limited".to_owned()));
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(other_key.0, 201, "per key");
    assert_eq!(
        app.metric_with("gateway_upload_links_total", &["key=\"team\""])
            .await,
        3.0
    );
    assert_eq!(
        app.metric_with(
            "gateway_key_quota_refused_total",
            &["key=\"team\"", "upload_links_per_minute"]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_is_bounded_when_it_is_made_and_so_is_the_body_that_asks_for_it() {
    // Arrange: a 1 MB default size limit for links of keys without one; a 2 s idle timeout.
    let app = spawn_app_with(Options {
        client_idle_timeout_secs: 2,
        ..links_options(|s| s.upload_link_default_max_file_size_bytes = 1_000_000)
    })
    .await;

    // Act + assert: a note of control characters is refused (it made a token the page refused).
    let (status, answer) = make_link(
        &app.address,
        "api_key_team",
        json!({"folder_id": "0", "expires_in_secs": 60, "note": "\u{1}".repeat(500)}),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_link_request"))
    );
    // The longest note there can be (500 characters of 4 bytes): a 201, and its page opens.
    let (status, answer) = make_link(
        &app.address,
        "api_key_team",
        json!({"folder_id": "0", "expires_in_secs": 60, "note": "\u{1F4C4}".repeat(500)}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let token = token_of(&answer);
    assert_eq!(page(&app.address, &token).await.0, 200);
    // The key has no size limit: the link has the default one.
    let (_, token) = link(&app.address, "api_key_team", 60).await;
    assert_eq!(
        code_of(tus_create(&app.address, &token, 1_000_001, &[("filename", "big.bin")]).await).await,
        (413, "file_too_large".to_owned())
    );
    assert_eq!(
        tus_create(&app.address, &token, 1_000_000, &[("filename", "ok.bin")])
            .await
            .status(),
        201
    );
    // A link's URL never comes from the request's headers.
    let forwarded = app
        .http
        .post(format!("{}/v1/upload-links", app.address))
        .header("X-API-Key", secret("api_key_team"))
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "host=evil.example;proto=http")
        .json(&json!({"folder_id": "0", "expires_in_secs": 60}))
        .send()
        .await
        .unwrap();
    let forwarded: Value = forwarded.json().await.unwrap();
    assert!(
        forwarded["url"].as_str().unwrap().starts_with(PUBLIC_BASE),
        "{forwarded}"
    );
    // A body declared and never sent is cut by the idle timeout.
    let started = Instant::now();
    let stalled = raw_request(
        &app.address,
        &format!(
            "POST /v1/upload-links HTTP/1.1\r\nHost: gateway\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: 100",
            secret("api_key_team")
        ),
        [br#"{"folder_id": "0","#.to_vec()],
        Duration::from_millis(10),
        Duration::from_secs(15),
    )
    .await
    .expect("an answer");
    assert_eq!((stalled.status, stalled.code()), (408, "client_timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_patch_is_cut_when_its_link_expires() {
    // Arrange: a link living 3 s; a direct-size upload of 900 KB created through it.
    let app = spawn_app_with(links_options(|_| {})).await;
    let (_, token) = link(&app.address, "api_key_team", 3).await;
    let size = 900_000u64;
    let created = tus_create(&app.address, &token, size, &[("filename", "slow.bin")]).await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();

    // Act: one PATCH of the whole file at 160 KiB/s (well above client_min_bytes_per_sec): about
    // 5.5 s, past the link's expiry.
    let started = Instant::now();
    let cut = raw_request(
        &app.address,
        &format!(
            "PATCH {location} HTTP/1.1\r\nHost: gateway\r\nTus-Resumable: 1.0.0\r\nX-Upload-Link: {token}\r\n\
             Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {size}"
        ),
        (0..size / 9000).map(|_| vec![7u8; 9000]),
        Duration::from_millis(55),
        Duration::from_secs(20),
    )
    .await
    .expect("an answer");
    let elapsed = started.elapsed();

    // Assert: 410 link_expired at the link's expiry, in the middle of the body (some of it came,
    // not all); nothing landed.
    assert_eq!((cut.status, cut.code()), (410, "link_expired"), "{:?}", cut.json);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(!files_in_root(&app).contains_key("slow.bin"));
    let received = app
        .metric_with("gateway_tus_received_bytes_total", &["key=\"team\""])
        .await;
    assert!(
        received > 0.0 && received < size as f64,
        "cut in the middle: {received}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_link_path_puts_its_token_in_the_log() {
    // Arrange: the real binary at RUST_LOG=debug (its whole output is read), a key and links on.
    let emulator = Emulator::spawn(EmulatorConfig {
        part_size: Some(256 * 1024),
        min_chunked_size: 1024 * 1024,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.toml");
    std::fs::write(
        &keys_file,
        format!(
            "[[keys]]\nname = \"team\"\nsha256 = \"{}\"\nfolders = [\"0\"]\n",
            sha256_hex(secret("api_key_team"))
        ),
    )
    .unwrap();
    let mut env = emulator_env(&emulator);
    env.extend([
        ("BOX_DEVELOPER_TOKEN", DEV_TOKEN.to_owned()),
        ("GATEWAY_API_KEYS_FILE", keys_file.display().to_string()),
        (
            "GATEWAY_UPLOAD_LINK_SECRET",
            secret("upload_link_secret").to_owned(),
        ),
        ("GATEWAY_PUBLIC_BASE_URL", PUBLIC_BASE.to_owned()),
    ]);
    let gateway = Gateway::start(&env_refs(&env)).await;
    let address = gateway.url("");
    let (_, answer) = make_link(
        &address,
        "api_key_team",
        json!({"folder_id": "0", "expires_in_secs": 600}),
    )
    .await;
    let token = token_of(&answer);
    let (payload, tag) = token.split_once('.').unwrap();
    let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
    let altered = format!(
        "{}{}",
        &token[..token.len() - 1],
        if token.ends_with('A') { 'B' } else { 'A' }
    );

    // Act: the page in every spelling a client (or an attacker) may send, routed or not.
    let mut statuses = Vec::new();
    for (method, path) in [
        ("GET", format!("/upload/{token}")),
        ("GET", format!("/%75pload/{token}")),
        ("GET", format!("//upload/{token}")),
        ("GET", format!("/UPLOAD/{token}")),
        ("GET", format!("/%2575pload/{token}")),
        ("GET", format!("/upload/{token}/")),
        ("GET", format!("/upload/{altered}")),
        ("GET", format!("/upload/{token}x")),
        ("GET", format!("/v1/../upload/{token}")),
        ("GET", format!("/upload/{encoded}")),
        ("GET", format!("/somewhere/{token}")),
        ("GET", format!("/v1/tus/{token}")),
        ("POST", format!("/upload/{token}")),
        ("HEAD", format!("/upload/{token}")),
    ] {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: 0");
        let got = raw_request(&address, &head, [], Duration::ZERO, Duration::from_secs(10)).await;
        statuses.push((path.len(), got.map(|a| a.status)));
    }
    let logs = gateway.finish().await;

    // Assert: the page was served (so the token was in a routed request), and no spelling left the
    // token, its MAC or its claims in any line; the request lines name the route instead.
    assert_eq!(statuses[0].1, Some(200));
    assert_eq!(statuses[1].1, Some(200), "actix routes the percent-decoded path");
    assert_eq!(statuses[6].1, Some(401));
    for (secret_part, what) in [
        (tag, "the MAC"),
        (payload, "the claims"),
        (&altered[..], "the altered token"),
    ] {
        assert!(!logs.contains(secret_part), "{what} is in the log:\n{logs}");
    }
    assert!(logs.contains("/upload/[link]"), "{logs}");
    assert!(logs.contains("\"route\":\"/upload/{token}\""), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sharing_a_key_with_pass_through_do_not_share_their_tus_uploads() {
    // Arrange: pass-through with one API key shared by Box users 7 and 8; state in Redis.
    let redis = RedisServer::start().await;
    let mut options = redis_options(&redis.url);
    let with_redis = options.gateway.take().unwrap();
    options.gateway = Some(Box::new(move |s, e| {
        with_redis(s, e);
        s.box_auth = "passthrough".into();
        s.box_developer_token = None::<Secret>;
        s.allow_anonymous = false;
        s.api_keys = vec![key("team", "api_key_team", "0")];
    }));
    let app = spawn_app_with(options).await;
    let (seven, seven_again, eight) = (
        user_token(&app, "7").await,
        user_token(&app, "7").await,
        user_token(&app, "8").await,
    );
    let size = 3 * PART;
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let created = app
        .http
        .post(format!("{}/v1/tus/", app.address))
        .header("X-API-Key", secret("api_key_team"))
        .bearer_auth(&seven)
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", size)
        .header("Upload-Metadata", metadata(&[("filename", "sevens.bin")]))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    let as_user = |method: reqwest::Method, token: &str, offset: u64, body: Vec<u8>| {
        app.http
            .request(method, format!("{}{location}", app.address))
            .header("X-API-Key", secret("api_key_team"))
            .bearer_auth(token)
            .header("Tus-Resumable", TUS)
            .header("Upload-Offset", offset)
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send()
    };

    // Act: user 8, with the same key, tries HEAD, PATCH and DELETE; user 7 (a refreshed token) goes on.
    let other_head = as_user(reqwest::Method::HEAD, &eight, 0, vec![])
        .await
        .unwrap()
        .status();
    let other_patch = as_user(reqwest::Method::PATCH, &eight, 0, bytes.clone())
        .await
        .unwrap()
        .status();
    let other_delete = as_user(reqwest::Method::DELETE, &eight, 0, vec![])
        .await
        .unwrap()
        .status();
    let own = as_user(reqwest::Method::PATCH, &seven_again, 0, bytes.clone())
        .await
        .unwrap();

    // Assert: 404 for the other user; the owner is stored as the key and the Box user; it lands.
    assert_eq!(
        [other_head, other_patch, other_delete].map(|s| s.as_u16()),
        [404, 404, 404]
    );
    assert_eq!(own.status(), 204);
    let file_id = own.headers()["upload-box-file-id"].to_str().unwrap().to_owned();
    crate::support::assert_file(&app, &file_id, &sha1_hex(&bytes), size);
    let mut r = redis_conn(&redis).await;
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(format!("box-upload-gateway:tus:{id}"))
        .query_async(&mut r)
        .await
        .unwrap();
    let record: Value = serde_json::from_slice(&stored[4..]).unwrap();
    assert_eq!(record["owner"], "key:team:box-user:7");
}

/// A connection to the test's Redis, to read and change what the gateway stored.
async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis.connection().await
}

/// A Redis-backed gateway with tus uploads expiring after `expiration_secs` (the sweeper runs every
/// quarter of it).
async fn redis_app(redis: &RedisServer, expiration_secs: u64) -> TestApp {
    let mut options = redis_options(&redis.url);
    let with_redis = options.gateway.take().unwrap();
    options.gateway = Some(Box::new(move |s, e| {
        with_redis(s, e);
        s.tus_expiration_secs = expiration_secs;
        s.tus_max_open_uploads_per_key = 1000;
    }));
    spawn_app_with(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_expires_every_due_upload_in_one_round_and_looks_past_locked_ones() {
    // Arrange: 130 uploads, all due at once (their place in the sweeper's index moved to 0), three
    // of them locked as if a request were writing them. The sweeper runs every 5 s.
    let redis = RedisServer::start().await;
    let app = redis_app(&redis, 20).await;
    let mut ids = Vec::new();
    for batch in 0..13 {
        let names: Vec<String> = (0..10).map(|i| format!("due-{batch}-{i}.bin")).collect();
        let made = futures_util::future::join_all(
            names
                .iter()
                .map(|name| crate::support::tus_client::create(&app.http, &app.address, 10, name)),
        )
        .await;
        ids.extend(made.into_iter().map(|l| l.rsplit('/').next().unwrap().to_owned()));
    }
    let mut r = redis_conn(&redis).await;
    let mut sorted = ids.clone();
    sorted.sort();
    let locked = &sorted[..3];
    for id in locked {
        let _: () = redis::cmd("SET")
            .arg(format!("box-upload-gateway:lock:tus:{id}"))
            .arg("a request")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    // One command: a round sees all 130 due, or none.
    let mut due_now = redis::cmd("ZADD");
    due_now.arg("box-upload-gateway:expiry");
    for id in &ids {
        due_now.arg(0).arg(id);
    }
    let _: () = due_now.query_async(&mut r).await.unwrap();
    let expired = || {
        app.metrics
            .tus_uploads
            .with_label_values(&["expired", "anonymous"])
            .get()
    };

    // Act: wait for the sweeper's next round to begin.
    let swept = || std::future::ready(expired() > 0);
    crate::support::eventually("a sweep", Duration::from_secs(15), swept).await;
    let first = Instant::now();
    let round = || std::future::ready(expired() >= 127);
    crate::support::holds_within(Duration::from_secs(4), round).await;

    // Assert: 127 in that round, well before the next (5 s later); the locked three still due.
    eprintln!(
        "sweeper: 127 uploads expired within {:?} of the first",
        first.elapsed()
    );
    assert_eq!(expired(), 127, "after {:?}", first.elapsed());
    assert!(
        first.elapsed() < Duration::from_millis(2500),
        "{:?}",
        first.elapsed()
    );
    let due: Vec<String> = redis::cmd("ZRANGE")
        .arg("box-upload-gateway:expiry")
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    let mut due_sorted = due.clone();
    due_sorted.sort();
    assert_eq!(due_sorted, locked, "only the locked uploads are left due");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_record_pointing_its_session_elsewhere_never_gets_the_box_token() {
    // Arrange: a chunked upload; then its stored record is changed (as anyone with write access to
    // Redis could) so its session's endpoints point at another host, where a listener counts
    // connections.
    let redis = RedisServer::start().await;
    let app = spawn_app_with(redis_options(&redis.url)).await;
    let spy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spy_port = spy.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = spy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let size = 2 * 1024 * 1024;
    let location = crate::support::tus_client::create(&app.http, &app.address, size, "tampered.bin").await;
    let id = location.rsplit('/').next().unwrap();
    let record_key = format!("box-upload-gateway:tus:{id}");
    let mut r = redis_conn(&redis).await;
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(&record_key)
        .query_async(&mut r)
        .await
        .unwrap();
    let len = u32::from_be_bytes(stored[..4].try_into().unwrap()) as usize;
    let mut record: Value = serde_json::from_slice(&stored[4..4 + len]).unwrap();
    let emulator_base = app.emulator.base_url();
    let endpoints = record["upload"]["session"]["session_endpoints"]
        .as_object_mut()
        .expect("a chunked upload's session");
    for url in endpoints.values_mut().filter(|v| v.is_string()) {
        let moved = url
            .as_str()
            .unwrap()
            .replace(&emulator_base, &format!("http://localhost:{spy_port}"));
        assert_ne!(url.as_str().unwrap(), moved);
        *url = Value::String(moved);
    }
    let json = serde_json::to_vec(&record).unwrap();
    let mut tampered = (json.len() as u32).to_be_bytes().to_vec();
    tampered.extend_from_slice(&json);
    let _: () = redis::cmd("SET")
        .arg(&record_key)
        .arg(tampered)
        .arg("KEEPTTL")
        .query_async(&mut r)
        .await
        .unwrap();

    // Act: a PATCH of a whole part (the gateway would upload it), then DELETE (it would abort).
    let url = format!("{}{location}", app.address);
    let patched = crate::support::tus_client::patch(&app.http, &url, 0, vec![1u8; PART as usize], None).await;
    let patch_code = code_of(patched).await;
    let deleted = app
        .http
        .delete(&url)
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap()
        .status();

    // Assert: refused as Box's protocol broken; not one connection to the other host; the real
    // session received nothing.
    assert_eq!(patch_code, (502, "box_protocol_error".to_owned()));
    assert_eq!(deleted, 204);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the token went to the other host"
    );
    let session = &crate::support::sessions(&app.emulator)[0];
    assert_eq!(session["parts"].as_array().unwrap().len(), 0, "{session}");
}

/// A CA and a certificate for `localhost` and 127.0.0.1 signed by it (P-256), made with openssl.
fn make_certificates(dir: &std::path::Path) -> Option<()> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .ok()?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ok = run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test redis CA",
        ],
    ]
    .concat())
        && run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat())
        && run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
    ok.then_some(())
}

/// A TLS proxy (tests/python/tls_proxy.py) in front of `redis`: the proxy and its port.
async fn tls_proxy(
    redis: &RedisServer,
    dir: &std::path::Path,
) -> (
    tokio::process::Child,
    u16,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let redis_port = redis
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let mut child = tokio::process::Command::new(crate::support::python::python())
        .arg(crate::support::python::script("tls_proxy.py"))
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .arg(redis_port)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the proxy starts")
        .unwrap()
        .unwrap();
    let port = first.strip_prefix("listening ").unwrap().parse().unwrap();
    (child, port, lines)
}

/// A tus upload through the gateway at `gateway`: the creation's status.
async fn tus_status(http: &reqwest::Client, gateway: &Gateway) -> u16 {
    http.post(gateway.url("/v1/tus/"))
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", 4)
        .header("Upload-Metadata", metadata(&[("filename", "over-tls.bin")]))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_store_is_reached_over_tls_with_rediss_and_its_certificate_is_checked() {
    // Arrange: Redis behind TLS (the venv's redis-server has no TLS of its own: a proxy speaks it),
    // its certificate signed by a CA of the test's; two gateway processes at rediss://localhost,
    // one trusting that CA (redis_ca_file) and one trusting only the system's roots.
    let dir = tempfile::tempdir().unwrap();
    if make_certificates(dir.path()).is_none() {
        println!("SKIPPED rediss: openssl is missing or failed (Debian: apt-get install openssl)");
        eprintln!("SKIPPED rediss: openssl is missing or failed (Debian: apt-get install openssl)");
        return;
    }
    let redis = RedisServer::start().await;
    let (_proxy, port, mut proxy_out) = tls_proxy(&redis, dir.path()).await;
    let emulator: EmulatorHandle = Emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let env_with = |trust: Option<&std::path::Path>| {
        let mut env = emulator_env(&emulator);
        env.extend([
            ("BOX_DEVELOPER_TOKEN", DEV_TOKEN.to_owned()),
            ("GATEWAY_ALLOW_ANONYMOUS", "true".to_owned()),
            ("GATEWAY_REDIS_URL", format!("rediss://localhost:{port}/")),
        ]);
        env.extend(trust.map(|ca| ("GATEWAY_REDIS_CA_FILE", ca.display().to_string())));
        env
    };
    let trusting_env = env_with(Some(&dir.path().join("ca.pem")));
    let untrusting_env = env_with(None);
    // Before the first client: under nextest no earlier test in this process installed the provider
    // reqwest needs (`rustls-no-provider`).
    box_upload_gateway::http_client::install_tls_provider();
    let http = reqwest::Client::new();

    // Act
    let untrusting = Gateway::start(&env_refs(&untrusting_env)).await;
    let refused = tus_status(&http, &untrusting).await;
    untrusting.finish().await;
    let trusting = Gateway::start(&env_refs(&trusting_env)).await;
    let created = tus_status(&http, &trusting).await;
    trusting.finish().await;

    // Assert: the store is unreachable without trusting the certificate (no plaintext fallback);
    // with it, the upload's record is in Redis, reached through TLS handshakes.
    assert_eq!(refused, 503);
    assert_eq!(created, 201);
    let mut r = redis_conn(&redis).await;
    let records: Vec<String> = redis::cmd("KEYS")
        .arg("box-upload-gateway:tus:*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let mut handshakes = 0;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_millis(300), proxy_out.next_line()).await
    {
        handshakes += usize::from(line == "handshake ok");
    }
    assert!(handshakes >= 1, "the gateway spoke TLS to the proxy");
}
