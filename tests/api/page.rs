//! Upload links and the page they open: links made with an API key, refused when forged, expired or
//! for another key's folder; the page driven in headless Chromium (tests/python/upload_page.py) lands
//! files byte-exact in the emulator and resumes an upload after a reload.
use std::path::{Path, PathBuf};
use std::time::Duration;

use box_upload_gateway::box_api::Secret;
use serde_json::{json, Value};

use crate::support::tus_client::{creation, TUS};
use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The team key's folder is the root; the admin key's is another.
const ADMIN_FOLDER: &str = "4321";
/// Links start with `public_base_url` (required with links on); the tests reach the page through the
/// test gateway's own address, with the link's token.
const PUBLIC_BASE: &str = "https://uploads.example.test";

fn key(name: &str, secret_name: &str, folder: &str) -> ApiKey {
    ApiKey::new(name, secret(secret_name))
        .folders(&[folder])
        .max_file_size_bytes(200_000_000)
}

/// A gateway with two keys and upload links on; the page sends PATCHes of `chunk` bytes.
async fn links_app(chunk: u64) -> TestApp {
    spawn_app_with(Options {
        part_size: 1024 * 1024,
        memory_budget_bytes: 64 * 1024 * 1024,
        gateway: Some(Box::new(move |s, _| {
            s.allow_anonymous = false;
            s.api_keys = vec![
                key("team", "api_key_team", "0").config(),
                key("admin", "api_key_admin", ADMIN_FOLDER).config(),
            ];
            s.upload_link_secret = Some(Secret::new(secret("upload_link_secret")));
            s.public_base_url = Some(PUBLIC_BASE.into());
            s.upload_page_chunk_bytes = chunk;
        })),
        ..Options::default()
    })
    .await
}

/// The page of the link `url` on the test's gateway.
fn page_url(app: &TestApp, url: &str) -> String {
    format!("{}/upload/{}", app.address, token_of(url))
}

/// POST /v1/tus/ with a link's token: the status and the answer's error code.
async fn tus_create(
    app: &TestApp,
    token: &str,
    size: u64,
    pairs: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let response = creation(&app.http, &app.address, size, pairs)
        .header("X-Upload-Link", token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
    (status, code, location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_links_are_signed_scoped_limited_and_expire() {
    // Arrange
    let app = links_app(1024 * 1024).await;
    let team = secret("api_key_team");

    // Act + assert: no key, another key's folder, bad bounds
    let body = json!({"folder_id": "0", "expires_in_secs": 600});
    assert_eq!(make_link(&app, None, body.clone()).await.0, 401);
    let (status, answer) = make_link(
        &app,
        Some(team),
        json!({"folder_id": ADMIN_FOLDER, "expires_in_secs": 600}),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden_folder")),
        "{answer}"
    );
    for bad in [
        json!({"folder_id": "0", "expires_in_secs": 0}),
        json!({"folder_id": "0", "expires_in_secs": 31 * 24 * 3600}),
        json!({"folder_id": "0", "expires_in_secs": 60, "max_file_size_bytes": 300_000_000u64}),
        json!({"folder_id": "0", "expires_in_secs": 60, "max_files": 0}),
        json!({"folder_id": "x", "expires_in_secs": 60}),
        json!({"folder_id": "0", "expires_in_secs": 60, "note": "n".repeat(501)}),
        json!({"folder": "0"}),
    ] {
        let (status, answer) = make_link(&app, Some(team), bad.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_link_request")),
            "{bad}: {answer}"
        );
    }

    // A link for two files of at most 2 MB, its note and expiry in the answer and the page
    let (status, answer) = make_link(
        &app,
        Some(team),
        json!({"folder_id": "0", "expires_in_secs": 600, "max_file_size_bytes": 2_000_000, "max_files": 2, "note": "Scans <please>"}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let url = answer["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{PUBLIC_BASE}/upload/")), "{url}");
    assert_eq!(answer["id"].as_str().map(str::len), Some(16), "{answer}");
    let expires = chrono::DateTime::parse_from_rfc3339(answer["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((590..=601).contains(&left), "{left}");
    let token = token_of(url).to_owned();
    let page = app.http.get(page_url(&app, url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("Scans &lt;please&gt;") && !html.contains("<please>"));
    let js = app
        .http
        .get(format!("{}/assets/upload-page.js", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);

    // A link's upload lands in its folder as the key (its metrics say team), within its limits
    let (status, code, _) = tus_create(&app, &token, 2_000_001, &[("filename", "big.bin")]).await;
    assert_eq!((status, code.as_str()), (413, "file_too_large"));
    let (status, code, _) = tus_create(
        &app,
        &token,
        10,
        &[("filename", "v.bin"), ("on_conflict", "version")],
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "link_not_allowed"));
    let (status, code, _) = tus_create(
        &app,
        &token,
        10,
        &[("filename", "a.bin"), ("folder_id", ADMIN_FOLDER)],
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "forbidden_folder"));
    let (status, _, location) = tus_create(&app, &token, 0, &[("filename", "empty.txt")]).await;
    assert_eq!(status, 201);
    let (status, _, second) = tus_create(&app, &token, 5, &[("filename", "five.txt")]).await;
    assert_eq!(status, 201);
    assert!(location.is_some());
    // Two files made: the third is refused; terminating an unfinished one gives its slot back
    let (status, code, _) = tus_create(&app, &token, 5, &[("filename", "third.txt")]).await;
    assert_eq!((status, code.as_str()), (403, "link_files_exhausted"));
    let deleted = app
        .http
        .delete(format!("{}{}", app.address, second.unwrap()))
        .header("Tus-Resumable", TUS)
        .header("X-Upload-Link", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, _, _) = tus_create(&app, &token, 5, &[("filename", "third.txt")]).await;
    assert_eq!(status, 201);
    let files = inspect(&app.emulator)["files"].clone();
    assert!(
        files
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "empty.txt" && f["parent_id"] == "0"),
        "{files}"
    );
    assert_eq!(
        app.metric_with("gateway_tus_uploads_total", &["created", "key=\"team\""])
            .await,
        3.0
    );
    assert_eq!(
        app.metric_with("gateway_upload_links_total", &["key=\"team\""])
            .await,
        1.0
    );
    // A link uploads only through tus (where max_files is counted), and cannot make links
    let plain = app
        .http
        .put(format!("{}/v1/folders/0/files/plain.txt", app.address))
        .header("X-Upload-Link", &token)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 403);
    let made = app
        .http
        .post(format!("{}/v1/upload-links", app.address))
        .header("X-Upload-Link", &token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 403);

    // Altered: 401 on the API (JSON) and on the page (HTML)
    let altered = format!("{}A{}", &token[..10], &token[11..]);
    let altered = if altered == token {
        format!("{}B{}", &token[..10], &token[11..])
    } else {
        altered
    };
    let (status, code, _) = tus_create(&app, &altered, 5, &[("filename", "x.txt")]).await;
    assert_eq!((status, code.as_str()), (401, "link_invalid"));
    let page = app
        .http
        .get(format!("{}/upload/{altered}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 401);
    assert!(page.text().await.unwrap().contains("not valid"));

    // Expired: 410 on both
    let (_, answer) = make_link(&app, Some(team), json!({"folder_id": "0", "expires_in_secs": 1})).await;
    let expired = page_url(&app, answer["url"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, code, _) = tus_create(&app, token_of(&expired), 5, &[("filename", "late.txt")]).await;
    assert_eq!((status, code.as_str()), (410, "link_expired"));
    let page = app.http.get(&expired).send().await.unwrap();
    assert_eq!(page.status(), 410);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("expired"));
}

/// A file of `size` pseudo-random bytes named `name` in `dir`, and its SHA-1.
fn named_file(dir: &Path, name: &str, size: u64) -> (PathBuf, String) {
    let (file, sha1) = make_file(size);
    let path = dir.join(name);
    std::fs::copy(file.path(), &path).unwrap();
    (path, sha1)
}

async fn drive_page(config: Value) -> Value {
    let (config, env) = (config.to_string(), [("SE_OFFLINE", "true")]);
    crate::support::python::run_script("upload_page.py", &[&config], &env, Duration::from_secs(400)).await
}

fn landed(app: &TestApp, page_file: &Value, sha1: &str, size: u64) {
    assert_eq!(page_file["state"], "done", "{page_file}");
    let id = page_file["file_id"].as_str().unwrap();
    assert!(page_file["result"].as_str().unwrap().contains(id), "{page_file}");
    assert_file(app, id, sha1, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_uploads_dropped_files_resumes_after_a_reload_and_refuses_expired_links() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!("SKIPPED the upload page's browser test: {CHROMIUM} or {CHROMEDRIVER} is missing (Debian: apt-get install chromium chromium-driver)");
        eprintln!("SKIPPED the upload page's browser test: {CHROMIUM} or {CHROMEDRIVER} is missing (Debian: apt-get install chromium chromium-driver)");
        return;
    }
    // Arrange: small PATCHes, so a 60 MB upload has a middle to reload in
    let app = links_app(256 * 1024).await;
    let team = secret("api_key_team");
    let dir = tempfile::tempdir().unwrap();
    let (big, big_sha1) = named_file(dir.path(), "report-30mb.bin", 30_000_000);
    let (small, small_sha1) = named_file(dir.path(), "notes-1mb.bin", 1_000_000);
    let (video, video_sha1) = named_file(dir.path(), "video-60mb.bin", 60_000_000);
    let (status, link) = make_link(
        &app,
        Some(team),
        json!({"folder_id": "0", "expires_in_secs": 3600, "note": "Please send the scans from the field office."}),
    )
    .await;
    assert_eq!(status, 201, "{link}");
    let (_, expired) = make_link(&app, Some(team), json!({"folder_id": "0", "expires_in_secs": 1})).await;
    // Another key's folder: no link
    let (status, refused) = make_link(
        &app,
        Some(team),
        json!({"folder_id": ADMIN_FOLDER, "expires_in_secs": 60}),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("forbidden_folder"))
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The picture in docs/api.md: refreshed with `UPDATE_SCREENSHOT=1 cargo test --test api page::`; an
    // ordinary run leaves the work tree alone and keeps its screenshot under target/.
    let screenshot = match std::env::var_os("UPDATE_SCREENSHOT") {
        Some(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/upload-page.png"),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join("upload-page.png"),
    };
    let base = json!({"chromium": CHROMIUM, "chromedriver": CHROMEDRIVER,
        "url": page_url(&app, link["url"].as_str().unwrap())});

    // Act 1: one file picked, one dropped
    let mut config = base.clone();
    config["scenario"] = "upload".into();
    config["picked"] = big.display().to_string().into();
    config["dropped"] = small.display().to_string().into();
    config["expired_url"] = page_url(&app, expired["url"].as_str().unwrap()).into();
    config["screenshot"] = screenshot.display().to_string().into();
    let shown = drive_page(config).await;

    // Assert 1: both landed byte-exact, the page says 100 % and the ids; the note shown; expired refused
    println!("page: {}", shown["overall_text"]);
    let by_name = |name: &str| {
        shown["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not on the page: {shown}"))
    };
    landed(&app, &by_name("report-30mb.bin"), &big_sha1, 30_000_000);
    landed(&app, &by_name("notes-1mb.bin"), &small_sha1, 1_000_000);
    assert_eq!(shown["overall"], 100, "{shown}");
    assert_eq!(shown["note"], "Please send the scans from the field office.");
    assert_eq!(shown["stored"], 0, "finished uploads are forgotten: {shown}");
    assert!(shown["live"].as_str().unwrap().contains("uploaded"), "{shown}");
    assert_eq!(shown["expired"]["code"], "link_expired", "{shown}");
    assert!(
        shown["expired"]["heading"].as_str().unwrap().contains("expired"),
        "{shown}"
    );
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    let a11y = &shown["a11y"];
    assert_eq!(a11y["unnamed"], json!([]), "controls without a name: {a11y}");
    assert_eq!(a11y["live"], "polite");
    assert_eq!(a11y["lang"], "en");
    assert_eq!(a11y["input_tabbable"], true);
    assert!(a11y["viewport"].as_str().unwrap().contains("width=device-width"));
    assert_eq!(
        shown["phone_overflow"], 0,
        "the page is wider than a phone's screen"
    );

    // Act 2: a reload in the middle of a 60 MB upload, the file chosen again
    let before = app
        .metric_with("gateway_tus_received_bytes_total", &["key=\"team\""])
        .await;
    let mut config = base.clone();
    config["scenario"] = "reload".into();
    config["file"] = video.display().to_string().into();
    config["size"] = 60_000_000.into();
    config["reload_from"] = 0.2.into();
    let resumed = drive_page(config).await;
    let received = app
        .metric_with("gateway_tus_received_bytes_total", &["key=\"team\""])
        .await
        - before;

    // Assert 2: it resumed from where the gateway was (one Box session), fewer than half its bytes again
    println!(
        "reload: at {} of 60000000, resumed at {:?}; the gateway received {received} bytes for it",
        resumed["offset_before_reload"], resumed["first_offset_after_reload"]
    );
    landed(&app, &resumed["files"][0], &video_sha1, 60_000_000);
    let before_reload = resumed["offset_before_reload"].as_u64().unwrap();
    assert!((1..60_000_000).contains(&before_reload), "{resumed}");
    assert_eq!(resumed["stored_before"], resumed["stored_after"], "{resumed}");
    assert!(
        resumed["unfinished"].as_str().unwrap().contains("video-60mb.bin"),
        "{resumed}"
    );
    assert!(
        resumed["first_offset_after_reload"].as_u64().unwrap() >= before_reload,
        "{resumed}"
    );
    assert!(
        received < 90_000_000.0,
        "sent again: {} bytes",
        received - 60_000_000.0
    );
    assert!(received >= 60_000_000.0);
    let sessions: Vec<Value> = sessions(&app.emulator)
        .into_iter()
        .filter(|s| s["file_name"] == "video-60mb.bin")
        .collect();
    assert_eq!(sessions.len(), 1, "resumed, not started again: {sessions:#?}");
    assert_eq!(resumed["stored_at_end"], 0);
    // Paused, it stood still; offline, it retried (and then landed, above)
    assert_eq!(resumed["paused"]["state"], "paused", "{resumed}");
    assert_eq!(
        resumed["paused"]["offset"], resumed["paused_later"]["offset"],
        "{resumed}"
    );
    let retrying = &resumed["retrying"];
    println!("offline: {}", retrying["result"]);
    assert_eq!(retrying["state"], "retrying", "{resumed}");
    assert!(
        retrying["result"].as_str().unwrap().contains("Trying again in"),
        "{retrying}"
    );
}
