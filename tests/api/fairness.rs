//! Strangers and tenants cannot take the gateway from one another (issue 24, items 1, 2 and 6): fair
//! memory, bounded tus stores per tenant, and client numbers that never wrap. Each test is written as
//! the attack, with the gateway's defaults and a 64 MiB memory budget (so one caller's share is 32 MiB),
//! against the real emulator: another caller's uploads land whole, in Box, in time.
//!
//! The attacker is the key `admin` or one of its upload links; the other caller is the key `team`.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{Emulator, EmulatorConfig};
use serde_json::Value;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::hostile::status_bytes;
use crate::support::process::{emulator_env, env_refs, Gateway};
use crate::support::tus_client::{metadata, TUS};
use crate::support::*;

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 64 * MIB;
/// The default `memory_budget_share_per_key` (one half) of `BUDGET`.
const SHARE: u64 = BUDGET / 2;
/// Box's usual part size.
const PART: u64 = 8 * MIB;
/// The largest direct-size file under the default `chunked_threshold_bytes` (20,000,000).
const DIRECT_MAX: u64 = 19_999_999;
/// How long another caller's upload may take beside an attack (the bound).
const IN_TIME: Duration = Duration::from_secs(30);
const VICTIM: &str = "api_key_team";
const ATTACKER: &str = "api_key_admin";

/// The gateway's defaults but a 64 MiB budget: keys `team` and `admin`, upload links on, Box's
/// usual part size; `change` for the rest.
async fn gateway(change: impl FnOnce(&mut Settings) + 'static) -> TestApp {
    let defaults = Settings::default();
    spawn_app_with(Options {
        part_size: PART,
        threshold: defaults.chunked_threshold_bytes,
        part_concurrency: defaults.part_concurrency,
        memory_budget_bytes: BUDGET,
        client_idle_timeout_secs: defaults.client_idle_timeout_secs,
        gateway: Some(Box::new(move |s, _| {
            s.allow_anonymous = false;
            s.api_keys = vec![
                folder_zero_key("team", VICTIM),
                folder_zero_key("admin", ATTACKER),
            ];
            s.upload_link_secret = Some(Secret::new(secret("upload_link_secret")));
            s.public_base_url = Some("http://127.0.0.1".into());
            change(s);
        })),
        ..Options::default()
    })
    .await
}

/// A link made by `admin` for folder 0: its token.
async fn link(app: &TestApp) -> String {
    upload_link(app, ATTACKER, 100_000_000).await
}

/// Who is attacking, and the header that says so.
#[derive(Clone)]
enum Attacker {
    Key,
    Link(String),
}

impl Attacker {
    fn header(&self) -> (&'static str, String) {
        match self {
            Self::Key => ("X-API-Key", secret(ATTACKER).to_owned()),
            Self::Link(token) => ("X-Upload-Link", token.clone()),
        }
    }
}

/// `POST /v1/tus/` as `who`: the upload's path, or the refusal's status and code.
async fn tus_create(
    app: &TestApp,
    who: (&str, String),
    size: u64,
    name: &str,
) -> Result<String, (u16, String)> {
    let answer = app
        .http
        .post(format!("{}/v1/tus/", app.address))
        .header(who.0, who.1)
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", size)
        .header("Upload-Metadata", metadata(&[("filename", name)]))
        .send()
        .await
        .unwrap();
    match answer.status().as_u16() {
        201 => Ok(answer.headers()["location"].to_str().unwrap().to_owned()),
        status => Err((status, code(answer).await)),
    }
}

/// `PATCH` of `bytes` at `offset` as `who`: the status, the error code (or `-`) and `Upload-Offset`.
async fn tus_patch(
    app: &TestApp,
    who: (&str, String),
    path: &str,
    offset: u64,
    bytes: Vec<u8>,
) -> (u16, String, u64) {
    let answer = app
        .http
        .patch(format!("{}{path}", app.address))
        .header(who.0, who.1)
        .header("Tus-Resumable", TUS)
        .header("Upload-Offset", offset)
        .header("Content-Type", "application/offset+octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let at = answer
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(u64::MAX);
    (
        status,
        if status < 300 {
            "-".into()
        } else {
            code(answer).await
        },
        at,
    )
}

async fn code(answer: reqwest::Response) -> String {
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    body["error"]["code"].as_str().unwrap_or("?").to_owned()
}

/// A client on a raw connection: sends `head`, then `burst` bytes at once, then `rate` bytes a second
/// (none: it pauses) until its answer comes; returns the answer's status and code.
async fn sender(address: String, head: String, burst: u64, rate: u64) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    let writing = async move {
        let block = vec![b'a'; 256 * 1024];
        let mut left = burst;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            if writer.write_all(&block[..n]).await.is_err() {
                return;
            }
            left -= n as u64;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if rate > 0 && writer.write_all(&block[..rate as usize]).await.is_err() {
                return;
            }
        }
    };
    let reading = async move {
        let mut answer = vec![0u8; 4096];
        let n = reader.read(&mut answer).await.unwrap_or(0);
        let text = String::from_utf8_lossy(&answer[..n]).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let code = text
            .split("\"code\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("-")
            .to_owned();
        (status, code)
    };
    tokio::select! {
        answer = reading => answer,
        () = writing => (0, "gone".into()),
    }
}

/// Six senders as `attacker`, each of a file of `size` bytes: raw PUTs as the key, tus PATCHes (of
/// uploads created first) through its link. Each sends `burst` bytes, then `rate` bytes a second.
async fn six_senders(
    app: &TestApp,
    attacker: &Attacker,
    size: u64,
    burst: u64,
    rate: u64,
) -> Vec<tokio::task::JoinHandle<(u16, String)>> {
    let (name, value) = attacker.header();
    let mut heads = Vec::new();
    for i in 0..6 {
        let head = match attacker {
            Attacker::Key => format!(
                "PUT /v1/folders/0/files/attack-{i}.bin HTTP/1.1\r\nHost: gateway\r\n{name}: {value}\r\n\
                 Content-Length: {size}\r\n\r\n"
            ),
            Attacker::Link(_) => {
                let path = tus_create(app, attacker.header(), size, &format!("attack-{i}.bin"))
                    .await
                    .expect("the link creates its uploads");
                format!(
                    "PATCH {path} HTTP/1.1\r\nHost: gateway\r\n{name}: {value}\r\nTus-Resumable: {TUS}\r\n\
                     Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n\
                     Content-Length: {size}\r\n\r\n"
                )
            }
        };
        heads.push(head);
    }
    heads
        .into_iter()
        .map(|head| tokio::spawn(sender(app.address.clone(), head, burst, rate)))
        .collect()
}

async fn held_by(app: &TestApp, key: &str) -> u64 {
    app.metric_with("gateway_buffered_bytes_by_key", &[&format!("key=\"{key}\"")])
        .await as u64
}

/// Polls `held_by(key)` every 50 ms into `most` until dropped.
fn watch(app: &TestApp, key: &'static str) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let most = Arc::new(AtomicU64::new(0));
    let (address, seen) = (app.address.clone(), most.clone());
    let task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            if let Ok(answer) = http.get(format!("{address}/metrics")).send().await {
                let text = answer.text().await.unwrap_or_default();
                let held = text
                    .lines()
                    .find(|l| {
                        l.starts_with("gateway_buffered_bytes_by_key")
                            && l.contains(&format!("key=\"{key}\""))
                    })
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0);
                seen.fetch_max(held as u64, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (most, task)
}

/// Waits (at most 30 s) until what `key` holds passes `enough`.
async fn until_held(app: &TestApp, key: &str, enough: impl Fn(u64) -> bool, what: &str) {
    let started = Instant::now();
    while !enough(held_by(app, key).await) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{key} never held {what} (holds {})",
            held_by(app, key).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The other caller's uploads of 2 MiB (a direct upload) and 25 MiB (chunked), one after the other:
/// each lands whole within `IN_TIME`. Returns how long each took.
async fn victim_lands(app: &TestApp) -> Vec<Duration> {
    let mut took = Vec::new();
    for (i, size) in [2 * MIB, 25 * MIB].into_iter().enumerate() {
        let (file, sha1) = make_file(size);
        let started = Instant::now();
        let answer = app
            .http
            .put(format!("{}/v1/folders/0/files/team-{i}.bin", app.address))
            .header("X-API-Key", secret(VICTIM))
            .body(std::fs::read(file.path()).unwrap())
            .timeout(IN_TIME)
            .send()
            .await
            .unwrap_or_else(|e| panic!("team's {size}-byte upload got no answer within {IN_TIME:?}: {e}"));
        let elapsed = started.elapsed();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(status, 201, "team's {size}-byte upload beside the attack: {body}");
        assert!(elapsed < IN_TIME, "team's {size}-byte upload took {elapsed:?}");
        app.assert_stored(&body, &sha1, size);
        took.push(elapsed);
    }
    took
}

/// Six slow senders of direct-size files, as one key or through one link: promised bytes take
/// nothing from the budget, and what the attacker holds stays within its share. Another key's 2 MiB
/// and 25 MiB uploads land whole within 30 s each.
async fn six_slow_direct_senders(through_a_link: bool) {
    let app = gateway(|_| {}).await;
    let attacker = match through_a_link {
        true => Attacker::Link(link(&app).await),
        false => Attacker::Key,
    };
    // Each declares 19,999,999 bytes (held whole by a direct upload), sends 1 MiB, then 8 KiB a
    // second: above client_min_bytes_per_sec, so no deadline cuts it during the test.
    let senders = six_senders(&app, &attacker, DIRECT_MAX, MIB, 8 * 1024).await;
    let (most, watching) = watch(&app, "admin");
    until_held(&app, "admin", |held| held >= MIB, "the 1 MiB it sent").await;

    let took = victim_lands(&app).await;

    watching.abort();
    let most = most.load(Ordering::Relaxed);
    let finished = senders.iter().filter(|s| s.is_finished()).count();
    for s in &senders {
        s.abort();
    }
    eprintln!(
        "six slow direct senders ({}): admin held at most {} KiB of its {} MiB share ({finished} of 6 answered meanwhile); team's uploads took {took:?}",
        if through_a_link { "one link" } else { "one key" },
        most / 1024,
        SHARE / MIB
    );
    assert!(most <= SHARE, "admin held {most} bytes, past its share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_slow_direct_puts_of_one_key_leave_another_keys_uploads_landing() {
    six_slow_direct_senders(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_slow_direct_patches_through_one_link_leave_another_keys_uploads_landing() {
    six_slow_direct_senders(true).await;
}

/// A key sends almost all of six 20 MB files (chunked: two 8 MiB parts go to Box, the last one is
/// filled but for 100,000 bytes), then pauses: it holds the last parts' bytes, within its share, and
/// another key's uploads land within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pausing_near_the_end_of_six_20_mb_files_leaves_another_keys_uploads_landing() {
    let app = gateway(|_| {}).await;
    let size = 20_000_000;
    let short = 100_000;
    let senders = six_senders(&app, &Attacker::Key, size, size - short, 0).await;
    let (most, watching) = watch(&app, "admin");
    // Each holds its last part but for the bytes it did not send: 20,000,000 - 2 x 8 MiB - 100,000
    // (and nothing else, once its first two parts are in Box), plus what was charged ahead of the
    // bytes in its part (less than a 64 KiB step).
    let last_part = size - 2 * PART - short;
    let holds_last_parts = |held: u64| (6 * last_part..6 * (last_part + 64 * 1024)).contains(&held);
    until_held(&app, "admin", holds_last_parts, "its six last parts").await;

    let took = victim_lands(&app).await;

    watching.abort();
    let most = most.load(Ordering::Relaxed);
    let held_now = held_by(&app, "admin").await;
    for s in &senders {
        assert!(!s.is_finished(), "a paused sender was answered");
        s.abort();
    }
    eprintln!(
        "six paused 20 MB senders: admin held {} KiB (at most {} KiB) of its {} MiB share; team's uploads took {took:?}",
        held_now / 1024,
        most / 1024,
        SHARE / MIB
    );
    assert!(most <= SHARE, "admin held {most} bytes, past its share");
    assert!(
        holds_last_parts(held_now),
        "the paused senders still hold their last parts: {held_now}"
    );
}

/// One stranger (a link) fills the whole 64 MiB of unfinished tus parts; another key's 1,000-byte
/// tus upload still lands (its last byte comes in the PATCH that completes it, so nothing of it is
/// stored), while an unfinished part of it would not fit (the cap holds for everyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_filling_the_pending_store_leaves_another_owners_small_tus_upload_landing() {
    let app = gateway(|s| s.tus_max_pending_bytes = BUDGET).await;
    let stranger = Attacker::Link(link(&app).await);
    // 16 MiB unfinished in each of four direct-size uploads: the store is full.
    let mut filled = 0;
    for i in 0..5 {
        let path = tus_create(&app, stranger.header(), DIRECT_MAX, &format!("fill-{i}.bin"))
            .await
            .unwrap();
        let (status, code, at) =
            tus_patch(&app, stranger.header(), &path, 0, vec![7; 16 * MIB as usize]).await;
        match (i, status) {
            (0..4, 204) => filled += at,
            (4, 503) => assert_eq!(code, "tus_storage_full"),
            _ => panic!("fill {i}: {status} {code}"),
        }
    }
    assert_eq!(filled, BUDGET);

    let team = ("X-API-Key", secret(VICTIM).to_owned());
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let path = tus_create(&app, team.clone(), 1000, "small.bin").await.unwrap();
    let (status, code, at) = tus_patch(&app, team.clone(), &path, 0, data.clone()).await;
    assert_eq!((status, code.as_str(), at), (204, "-", 1000));
    // Ground truth: the file is in Box, byte for byte.
    let files = inspect(&app.emulator)["files"].as_array().unwrap().clone();
    let landed = files
        .iter()
        .find(|f| f["name"] == "small.bin")
        .expect("small.bin in Box");
    assert_eq!(landed["sha1"], hex::encode(Sha1::digest(&data)));
    // Half of another one would have to be stored: the full store says so.
    let half = tus_create(&app, team.clone(), 1000, "half.bin").await.unwrap();
    let (status, code, at) = tus_patch(&app, team, &half, 0, data[..500].to_vec()).await;
    assert_eq!((status, code.as_str()), (503, "tus_storage_full"), "offset {at}");
}

/// A key and all its links keep at most `tus_max_pending_bytes_per_key` of unfinished parts, and one
/// link at most as much; another key keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_and_its_links_keep_at_most_their_share_of_unfinished_parts() {
    let app = gateway(|s| s.tus_max_pending_bytes_per_key = 16 * MIB).await;
    let (one, two) = (Attacker::Link(link(&app).await), Attacker::Link(link(&app).await));
    let first = tus_create(&app, one.header(), DIRECT_MAX, "one.bin")
        .await
        .unwrap();
    let (status, _, at) = tus_patch(&app, one.header(), &first, 0, vec![1; 12 * MIB as usize]).await;
    assert_eq!((status, at), (204, 12 * MIB));
    // Another link of the same key: its own account has room, the key's has 4 MiB left.
    let second = tus_create(&app, two.header(), DIRECT_MAX, "two.bin")
        .await
        .unwrap();
    let (status, code, _) = tus_patch(&app, two.header(), &second, 0, vec![2; 8 * MIB as usize]).await;
    assert_eq!((status, code.as_str()), (429, "too_many_pending_bytes"));
    let head = app
        .http
        .head(format!("{}{second}", app.address))
        .header(two.header().0, two.header().1)
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-offset"], "0", "nothing of it was kept");
    // Another key keeps its own 8 MiB.
    let team = ("X-API-Key", secret(VICTIM).to_owned());
    let own = tus_create(&app, team.clone(), DIRECT_MAX, "team.bin")
        .await
        .unwrap();
    let (status, _, at) = tus_patch(&app, team, &own, 0, vec![3; 8 * MIB as usize]).await;
    assert_eq!((status, at), (204, 8 * MIB));
    // The first link's upload terminated: its bytes are uncounted, and the second link's fit.
    let deleted = app
        .http
        .delete(format!("{}{first}", app.address))
        .header(one.header().0, one.header().1)
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, _, at) = tus_patch(&app, two.header(), &second, 0, vec![2; 8 * MIB as usize]).await;
    assert_eq!((status, at), (204, 8 * MIB));
}

/// Twelve tus uploads hold 12 MiB of unfinished part each in the store; PATCHes at a wrong offset
/// hammer them for 8 s, twelve at a time. Each is refused before its upload's part is read: the
/// gateway process's peak RSS stays within 64 MiB of where it stood before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_offset_patches_never_read_the_stored_parts() {
    let emulator = Emulator::spawn(EmulatorConfig {
        part_size: Some(PART),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let mut env = emulator_env(&emulator);
    env.extend([
        (
            "BOX_DEVELOPER_TOKEN",
            box_upload_gateway::emulator::DEV_TOKEN.into(),
        ),
        ("GATEWAY_ALLOW_ANONYMOUS", "true".into()),
        ("GATEWAY_MEMORY_BUDGET_BYTES", BUDGET.to_string()),
        ("GATEWAY_CHUNKED_THRESHOLD_BYTES", "20000000".into()),
        // Its stdout is read only at the end: the port line, and nothing per request.
        (
            "RUST_LOG",
            "warn,box_upload_gateway=info,box_upload_gateway::routes=warn".into(),
        ),
    ]);
    let gateway = Gateway::start(&env_refs(&env)).await;
    let pid = gateway.pid();
    let http = reqwest::Client::new();
    let held = 12 * MIB;
    let mut paths = Vec::new();
    for i in 0..12 {
        let created = http
            .post(gateway.url("/v1/tus/"))
            .header("Tus-Resumable", TUS)
            .header("Upload-Length", DIRECT_MAX)
            .header(
                "Upload-Metadata",
                metadata(&[("filename", &format!("held-{i}.bin"))]),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let path = created.headers()["location"].to_str().unwrap().to_owned();
        let patched = http
            .patch(gateway.url(&path))
            .header("Tus-Resumable", TUS)
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .body(vec![i as u8; held as usize])
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 204);
        paths.push(path);
    }
    // From here: the peak since now (Linux resets VmHWM on "5"), and samples in case it cannot.
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let start = status_bytes(pid, "VmRSS");
    let sampled = Arc::new(AtomicU64::new(start));
    let sampling = {
        let sampled = sampled.clone();
        tokio::spawn(async move {
            loop {
                sampled.fetch_max(status_bytes(pid, "VmRSS"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let until = Instant::now() + Duration::from_secs(8);
    let hammers = paths.iter().map(|path| {
        let (http, url) = (http.clone(), gateway.url(path));
        async move {
            let mut refused = 0u64;
            while Instant::now() < until {
                // Bodiless, and with a body the gateway need not read.
                let body = if refused % 2 == 0 {
                    Vec::new()
                } else {
                    vec![9; 64 * 1024]
                };
                let answer = http
                    .patch(&url)
                    .header("Tus-Resumable", TUS)
                    .header("Upload-Offset", 0)
                    .header("Content-Type", "application/offset+octet-stream")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 409);
                refused += 1;
            }
            refused
        }
    });
    let refused: u64 = futures_util::future::join_all(hammers).await.into_iter().sum();
    sampling.abort();
    let peak = match reset {
        true => status_bytes(pid, "VmHWM").max(sampled.load(Ordering::Relaxed)),
        false => sampled.load(Ordering::Relaxed),
    };
    // Every stored part is still there, untouched.
    for path in &paths {
        let head = http
            .head(gateway.url(path))
            .header("Tus-Resumable", TUS)
            .send()
            .await
            .unwrap();
        assert_eq!(head.headers()["upload-offset"], held.to_string().as_str());
    }
    let logs = gateway.finish().await;
    eprintln!(
        "{refused} PATCHes at a wrong offset on 12 uploads holding {} MiB each, in 8 s: RSS {} MiB, peak {} MiB (+{} MiB; VmHWM reset: {reset}); {} bytes of logs",
        held / MIB,
        start / MIB,
        peak / MIB,
        peak.saturating_sub(start) / MIB,
        logs.len()
    );
    assert!(refused >= 12, "the hammer ran");
    assert!(
        peak <= start + 64 * MIB,
        "peak RSS {} MiB is more than 64 MiB above {} MiB",
        peak / MIB,
        start / MIB
    );
}

/// 2^64 - 1 in each number a client sends: a clean 400 with its code, before anything reaches Box
/// (never a panic, never a sum that wraps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_numbers_of_2_pow_64_minus_1_are_refused_with_400() {
    let app = gateway(|_| {}).await;
    let max = u64::MAX;
    let team = format!("X-API-Key: {}", secret(VICTIM));
    // A tus upload to send PATCHes to, 1 byte in.
    let path = tus_create(&app, ("X-API-Key", secret(VICTIM).to_owned()), 10, "ten.bin")
        .await
        .unwrap();
    let (status, _, _) = tus_patch(&app, ("X-API-Key", secret(VICTIM).to_owned()), &path, 0, vec![1]).await;
    assert_eq!(status, 204);
    let form =
        "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\r\nabc\r\n--b--\r\n";
    let patch = format!(
        "PATCH {path} HTTP/1.1\r\nHost: gateway\r\n{team}\r\nTus-Resumable: {TUS}\r\nContent-Type: application/offset+octet-stream"
    );
    let create = format!(
        "POST /v1/tus/ HTTP/1.1\r\nHost: gateway\r\n{team}\r\nTus-Resumable: {TUS}\r\nUpload-Metadata: {}",
        metadata(&[("filename", "huge.bin")])
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "raw PUT Content-Length",
            format!("PUT /v1/folders/0/files/a.bin HTTP/1.1\r\nHost: gateway\r\n{team}\r\nContent-Length: {max}"),
            "invalid_request",
        ),
        (
            "raw PUT size",
            format!("PUT /v1/folders/0/files/b.bin?size={max} HTTP/1.1\r\nHost: gateway\r\n{team}\r\nContent-Length: 3"),
            "invalid_size",
        ),
        (
            "raw PUT Upload-Length",
            format!(
                "PUT /v1/folders/0/files/c.bin HTTP/1.1\r\nHost: gateway\r\n{team}\r\nUpload-Length: {max}\r\nContent-Length: 3"
            ),
            "invalid_size",
        ),
        (
            "multipart size",
            format!(
                "POST /v1/folders/0/files?size={max} HTTP/1.1\r\nHost: gateway\r\n{team}\r\n\
                 Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {}",
                form.len()
            ),
            "invalid_size",
        ),
        (
            "multipart Content-Length",
            format!(
                "POST /v1/folders/0/files HTTP/1.1\r\nHost: gateway\r\n{team}\r\n\
                 Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {max}"
            ),
            "invalid_request",
        ),
        (
            "tus Upload-Length",
            format!("{create}\r\nUpload-Length: {max}\r\nContent-Length: 0"),
            "invalid_size",
        ),
        (
            "tus creation-with-upload Content-Length",
            format!(
                "{create}\r\nUpload-Length: 10\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {max}"
            ),
            "invalid_request",
        ),
        (
            "tus creation-with-upload past Upload-Length",
            format!(
                "{create}\r\nUpload-Length: 10\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}",
                i64::MAX
            ),
            "size_mismatch",
        ),
        (
            "tus PATCH Upload-Offset",
            format!("{patch}\r\nUpload-Offset: {max}\r\nContent-Length: 1"),
            "invalid_offset",
        ),
        (
            "tus PATCH Content-Length",
            format!("{patch}\r\nUpload-Offset: 1\r\nContent-Length: {max}"),
            "invalid_request",
        ),
        (
            // The largest count accepted: offset + length would pass 2^63, and is not wrapped.
            "tus PATCH offset + Content-Length",
            format!("{patch}\r\nUpload-Offset: 1\r\nContent-Length: {}", i64::MAX),
            "size_mismatch",
        ),
    ];
    for (what, head, want) in cases {
        let body = if what.starts_with("multipart size") {
            form.as_bytes().to_vec()
        } else {
            b"abc".to_vec()
        };
        let answer = raw_request(
            &app.address,
            &head,
            [body],
            Duration::ZERO,
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(
            (answer.status, answer.code()),
            (400, want),
            "{what}: {:?}",
            answer.json
        );
    }
    // Nothing reached Box: no file, no session, no direct upload.
    let seen = inspect(&app.emulator);
    assert_eq!(seen["files"].as_array().unwrap().len(), 0, "{seen}");
    assert_eq!(seen["sessions"].as_array().unwrap().len(), 0, "{seen}");
    assert_eq!(seen["counters"]["direct_uploads"], 0, "{seen}");
}
