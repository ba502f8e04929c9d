//! The soak: hundreds of uploads of mixed sizes, 16 at a time, through multipart and raw bodies,
//! against an emulator whose seeded fault plan hits every endpoint, plus clients that vanish or stall
//! mid-body. Then every upload is judged against what the emulator holds: a 201 is exactly those bytes,
//! once; a failure left no file and no open session. One summary line goes to stderr, past libtest's
//! capture, so it shows in `cargo test`'s output.
//!
//! Hostile clients run beside the faults: some small files come in HTTP chunks of 1 to 7 bytes (they
//! land like any other), and some clients trickle (16 bytes a second, never idle for long): they get
//! 408 `client_too_slow` within the short rate window set here, their sessions aborted, nothing landed.
//!
//! The gateway gets its tokens by client credentials, and every token the emulator issued expires every
//! 300 ms, so uploads keep meeting 401s and refreshing.
//!
//! A stranger runs beside the ordinary clients (which upload with the key `soak`): the holder of an
//! upload link of another key, running the attacks of issue 24 the whole time (slow senders of
//! direct-size files, uploads sent but for their last bytes then paused, unfinished parts stored,
//! PATCHes at a wrong offset). The ordinary clients' verdicts stay as they are: nothing lost, and no
//! 503 `busy` (the stranger holds only what it sends, within its share of the budget). The summary
//! line says what the stranger did and got.
//!
//! `SOAK_UPLOADS=5000` runs a longer soak, `SOAK_SEED=N` another fault plan and mix.
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{EmulatorConfig, EmulatorHandle, FaultPlan, Inspection, SessionState};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const CONCURRENCY: usize = 16;
/// The ordinary clients' share (one half) is the 4 MiB the soak ran with before the budget had
/// shares; the stranger's is as much.
const BUDGET: u64 = 8 * 1024 * 1024;
const IDLE_SECS: u64 = 2;
/// The soak's minimum-rate window (the default is 60 s): a trickler is refused after this much waiting.
const RATE_WINDOW_SECS: u64 = 3;
const EXPIRE_EVERY_MS: u64 = 300;
const CLIENT_ID: &str = "soak-client-id";
const ENTERPRISE: &str = "5150";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_random_faults() {
    let uploads = env_or("SOAK_UPLOADS", 200);
    let seed = env_or("SOAK_SEED", 20_261_122);
    count_server_panics();
    let app = spawn_app_with(Options {
        faults: fault_plan(seed),
        memory_budget_bytes: BUDGET,
        part_concurrency: 3,
        client_idle_timeout_secs: IDLE_SECS,
        box_request_timeout_secs: 10,
        commit_timeout_secs: 30,
        emulator: Some(Box::new(|c: &mut EmulatorConfig| {
            c.clients = vec![(CLIENT_ID.into(), secret("ccg_client_secret").into())];
            c.enterprise_id = Some(ENTERPRISE.into());
            // Only tokens it issued, so every call depends on the gateway's token refresh.
            c.tokens = vec!["no-static-token-accepted".into()];
        })),
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "client_credentials".into();
            s.box_developer_token = None;
            s.box_client_id = Some(CLIENT_ID.into());
            s.box_client_secret = Some(Secret::new(secret("ccg_client_secret")));
            s.box_subject_type = Some("enterprise".into());
            s.box_subject_id = Some(ENTERPRISE.into());
            s.client_rate_window_secs = RATE_WINDOW_SECS;
            s.allow_anonymous = false;
            s.api_keys = vec![
                folder_zero_key("soak", ORDINARY),
                folder_zero_key("partner", PARTNER),
            ];
            s.upload_link_secret = Some(Secret::new(secret("upload_link_secret")));
            s.public_base_url = Some("http://127.0.0.1".into());
        })),
        ..Options::default()
    })
    .await;
    let token = link(&app).await;
    // Every token Box issued expires, again and again, while the uploads run.
    let expiries = AtomicUsize::new(0);
    let expire = async {
        loop {
            tokio::time::sleep(Duration::from_millis(EXPIRE_EVERY_MS)).await;
            app.emulator.expire_issued_tokens();
            expiries.fetch_add(1, Ordering::Relaxed);
        }
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .default_headers(
            [("x-api-key", secret(ORDINARY).parse().unwrap())]
                .into_iter()
                .map(|(k, v)| (reqwest::header::HeaderName::from_static(k), v))
                .collect(),
        )
        .build()
        .unwrap();
    let started = Instant::now();

    let uploading = futures_util::stream::iter(0..uploads)
        .map(|i| run(&app, &http, Upload::new(i, seed)))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<Upload>>();
    let ordinary_done = tokio::sync::Notify::new();
    let (done, stranger) = tokio::join!(
        async {
            let done = tokio::select! {
                done = uploading => done,
                _ = expire => unreachable!("expires until the uploads are done"),
            };
            ordinary_done.notify_one();
            done
        },
        stranger(&app, &token, &ordinary_done),
    );

    let orphans = wait_for_sessions_to_close(&app).await;
    let seen = app.emulator.inspect();
    let verdicts: Vec<Verdict> = done.iter().map(|u| judge(&app, &seen, u)).collect();
    let count = |v: Verdict| verdicts.iter().filter(|x| **x == v).count();
    let peak = app.metric("gateway_buffered_bytes_peak").await as u64;
    let panics = SERVER_PANICS.load(Ordering::Relaxed);
    let failures: BTreeMap<String, usize> =
        done.iter()
            .filter_map(Upload::failure)
            .fold(BTreeMap::new(), |mut m, k| {
                *m.entry(k).or_default() += 1;
                m
            });
    let of = |c: Client| done.iter().filter(move |u| u.client == c);
    let tiny = (
        of(Client::TinyChunks).count(),
        of(Client::TinyChunks)
            .filter(|u| matches!(u.answer, Answer::Created { .. }))
            .count(),
    );
    let too_slow =
        |u: &&Upload| matches!(&u.answer, Answer::Refused { status: 408, code } if code == "client_too_slow");
    let tricklers = (
        of(Client::Trickles).count(),
        of(Client::Trickles).filter(too_slow).count(),
    );
    let busy = done
        .iter()
        .filter(|u| matches!(&u.answer, Answer::Refused { status: 503, code } if code == "busy"))
        .count();
    let summary = format!(
        "soak: {uploads} uploads ({CONCURRENCY} at a time, seed {seed}, {:.1} s); faults fired: {} ({}); \
         tokens expired {} times, {} issued; landed: {}, failed cleanly: {} ({}); lost: {}, corrupted: {}, \
         orphan sessions: {orphans}; buffered peak {peak} of {BUDGET} bytes; server panics: {panics}; \
         hostile clients: {} in 1-7 byte chunks ({} landed), {} tricklers ({} got 408 client_too_slow); \
         ordinary uploads refused 503 busy: {busy}; {stranger}",
        started.elapsed().as_secs_f64(),
        seen.faults_fired.len(),
        fault_kinds(&seen),
        expiries.load(Ordering::Relaxed),
        seen.counters.tokens_issued,
        count(Verdict::Landed),
        count(Verdict::FailedCleanly),
        describe(&failures),
        count(Verdict::Lost),
        count(Verdict::Corrupted),
        tiny.0,
        tiny.1,
        tricklers.0,
        tricklers.1,
    );
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "\n{summary}\n");

    for (u, v) in done.iter().zip(&verdicts) {
        assert!(
            matches!(v, Verdict::Landed | Verdict::FailedCleanly),
            "{v:?}: {u:?}\n{summary}"
        );
    }
    assert_eq!(orphans, 0, "{summary}");
    assert!(peak <= BUDGET, "{summary}");
    // The stranger holds what it sends, within its share: it never made an ordinary client wait
    // the whole budget_wait_secs.
    assert_eq!(busy, 0, "{summary}");
    assert!(stranger.attacked(), "{summary}");
    // A trickler is refused as too slow, unless a Box fault refused it first (before its body was read).
    for u in of(Client::Trickles) {
        let box_failure = matches!(
            &u.answer,
            Answer::Refused {
                status: 502..=504,
                ..
            }
        );
        assert!(too_slow(&u) || box_failure, "{u:?}\n{summary}");
    }
    assert!(tricklers.0 == 0 || tricklers.1 > 0, "{summary}");
    assert_eq!(panics, 0, "{summary}");
    assert_eq!(
        app.metric("gateway_sessions_aborted_total{reason=\"panic\"}")
            .await,
        0.0
    );
    // The soak must be a soak: most uploads get through, and faults did fire.
    assert!(count(Verdict::Landed) * 2 > uploads, "{summary}");
    assert!(seen.faults_fired.len() >= uploads / 2, "{summary}");
}

/// Every endpoint the gateway calls gets its share of trouble; each rule has its own seeded draw.
fn fault_plan(seed: u64) -> FaultPlan {
    let status = |s: u16| json!({"type": "status", "status": s});
    let status_ra = |s: u16, ra: u64| json!({"type": "status", "status": s, "retry_after": ra});
    let reserved = json!({"type": "status", "status": 409, "code": "name_temporarily_reserved"});
    let expired = json!({"type": "status", "status": 401, "code": "invalid_token"});
    let rules: Vec<(&str, f64, Value)> = vec![
        ("create_session", 0.05, status_ra(429, 0)),
        ("create_session", 0.05, status(503)),
        ("create_session", 0.03, status(500)),
        ("create_session", 0.03, reserved.clone()),
        ("create_session", 0.01, expired.clone()),
        ("preflight", 0.05, status(429)),
        ("preflight", 0.05, status_ra(503, 0)),
        ("preflight", 0.01, expired.clone()),
        ("upload_part", 0.01, status_ra(429, 1)),
        ("upload_part", 0.03, status_ra(429, 0)),
        ("upload_part", 0.03, status(500)),
        ("upload_part", 0.03, status(503)),
        ("upload_part", 0.04, json!({"type": "store_then_fail"})),
        ("upload_part", 0.03, json!({"type": "store_then_cut"})),
        (
            "upload_part",
            0.02,
            json!({"type": "cut_connection", "after_bytes": 1000}),
        ),
        (
            "upload_part",
            0.02,
            json!({"type": "cut_connection", "after_bytes": 100_000}),
        ),
        ("upload_part", 0.005, expired.clone()),
        (
            "commit",
            0.12,
            json!({"type": "commit_accepted", "retry_after": 0}),
        ),
        (
            "commit",
            0.02,
            json!({"type": "commit_accepted", "retry_after": 1}),
        ),
        ("commit", 0.08, json!({"type": "parts_mismatch"})),
        ("commit", 0.08, json!({"type": "store_then_fail"})),
        ("commit", 0.08, json!({"type": "store_then_cut"})),
        ("commit", 0.04, status(503)),
        ("commit", 0.04, status_ra(429, 0)),
        ("commit", 0.04, reserved.clone()),
        ("commit", 0.01, expired.clone()),
        ("direct_upload", 0.03, status(500)),
        ("direct_upload", 0.03, status_ra(503, 0)),
        ("direct_upload", 0.03, status(429)),
        ("direct_upload", 0.03, reserved),
        ("direct_upload", 0.05, json!({"type": "store_then_fail"})),
        ("direct_upload", 0.05, json!({"type": "store_then_cut"})),
        (
            "direct_upload",
            0.02,
            json!({"type": "cut_connection", "after_bytes": 0}),
        ),
        (
            "direct_upload",
            0.02,
            json!({"type": "cut_connection", "after_bytes": 10_000}),
        ),
        ("direct_upload", 0.01, expired),
        ("token", 0.10, status(503)),
        ("token", 0.05, status_ra(429, 0)),
        ("abort", 0.10, status(503)),
        ("abort", 0.05, status(500)),
        // Last, so it sees what the others let through: reads (list parts, folder items, files) too.
        ("any", 0.02, status(503)),
    ];
    let rules: Vec<Value> = rules
        .into_iter()
        .enumerate()
        .map(|(k, (endpoint, fraction, action))| {
            json!({"endpoint": endpoint, "fraction": fraction, "seed": seed.wrapping_add(k as u64), "action": action})
        })
        .collect();
    serde_json::from_value(json!({ "rules": rules })).expect("a valid fault plan")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    /// multipart, size derived from Content-Length (the file is the last part)
    Multipart,
    /// multipart with a `size` and a `sha1` field before the file
    MultipartDeclared,
    /// raw body with Content-Length
    Raw,
    /// raw body with a `Digest` header
    RawDigest,
    /// sends part of the body, then closes the connection
    Vanishes,
    /// sends part of the body, then nothing (until the gateway answers 408)
    Stalls,
    /// raw body with a `size`, in HTTP chunks of 1 to 7 bytes
    TinyChunks,
    /// sends 16 bytes a second: never idle, far too slow (408 `client_too_slow`)
    Trickles,
}

#[derive(Debug)]
enum Answer {
    Pending,
    Created {
        file_id: String,
        sha1: String,
        size: u64,
    },
    Refused {
        status: u16,
        code: String,
    },
    /// The client left, or stalled and got its answer (or none).
    ClientGone(Option<u16>),
}

#[derive(Debug)]
struct Upload {
    name: String,
    client: Client,
    data: Vec<u8>,
    sha1: String,
    answer: Answer,
}

impl Upload {
    fn new(i: usize, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let size = match rng.u32(0..100) {
            0..5 => 0,
            5..30 => rng.u64(1..64 * 1024),
            30..50 => rng.u64(64 * 1024..THRESHOLD),
            50..55 => THRESHOLD - 1 + rng.u64(0..2),
            _ => rng.u64(THRESHOLD..=THRESHOLD + 2 * PART + 1),
        };
        let client = match rng.u32(0..100) {
            0..28 => Client::Multipart,
            28..42 => Client::MultipartDeclared,
            42..66 => Client::Raw,
            66..80 => Client::RawDigest,
            80..88 if size > 0 && size <= 64 * 1024 => Client::TinyChunks,
            // Big enough that 16 bytes a second cannot finish it within the window.
            88..92 if size >= 4096 => Client::Trickles,
            92..96 if size > 0 => Client::Vanishes,
            96..100 if size > 0 => Client::Stalls,
            _ => Client::Raw,
        };
        let mut data = vec![0u8; size as usize];
        rng.fill(&mut data);
        let sha1 = hex::encode(Sha1::digest(&data));
        Self {
            name: format!("soak-{i:05}.bin"),
            client,
            data,
            sha1,
            answer: Answer::Pending,
        }
    }

    /// A short description of how it failed, for the summary.
    fn failure(&self) -> Option<String> {
        match &self.answer {
            Answer::Refused { status, code } => Some(format!("{status} {code}")),
            Answer::ClientGone(status) => {
                let client = format!("{:?}", self.client).to_lowercase();
                Some(status.map_or(client.clone(), |s| format!("{client} {s}")))
            }
            _ => None,
        }
    }
}

async fn run(app: &TestApp, http: &reqwest::Client, mut u: Upload) -> Upload {
    let request = match u.client {
        Client::Multipart | Client::MultipartDeclared => {
            let boundary = format!("soak{}", u.sha1);
            let mut body = Vec::with_capacity(u.data.len() + 512);
            if u.client == Client::MultipartDeclared {
                for (k, v) in [("size", u.data.len().to_string()), ("sha1", u.sha1.clone())] {
                    body.extend(
                        format!(
                            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                        )
                        .bytes(),
                    );
                }
            }
            body.extend(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n",
                    u.name
                )
                .bytes(),
            );
            body.extend_from_slice(&u.data);
            body.extend(format!("\r\n--{boundary}--\r\n").bytes());
            http.post(app.folder_url("0"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body)
        }
        Client::Raw | Client::RawDigest => {
            let mut req = http
                .put(format!("{}/{}", app.folder_url("0"), u.name))
                .body(u.data.clone());
            if u.client == Client::RawDigest {
                let sha1 = Sha1::digest(&u.data);
                let b64 = base64::engine::general_purpose::STANDARD.encode(sha1);
                req = req.header("digest", format!("sha={b64}"));
            }
            req
        }
        Client::TinyChunks => {
            let mut pieces = Vec::new();
            let mut rest = bytes::Bytes::from(u.data.clone());
            let mut n = 0;
            while !rest.is_empty() {
                n = n % 7 + 1;
                pieces.push(Ok::<_, std::io::Error>(rest.split_to(n.min(rest.len()))));
            }
            http.put(format!(
                "{}/{}?size={}",
                app.folder_url("0"),
                u.name,
                u.data.len()
            ))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        }
        Client::Trickles => {
            let head = format!(
                "PUT /v1/folders/0/files/{} HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Length: {}",
                u.name,
                secret(ORDINARY),
                u.data.len()
            );
            let pieces: Vec<Vec<u8>> = u.data.chunks(16).map(<[u8]>::to_vec).collect();
            let deadline = Duration::from_secs(RATE_WINDOW_SECS * 5 + 20);
            u.answer = match raw_request(&app.address, &head, pieces, Duration::from_secs(1), deadline).await
            {
                Some(answer) => Answer::Refused {
                    status: answer.status,
                    code: answer.code().to_owned(),
                },
                None => Answer::ClientGone(None),
            };
            return u;
        }
        Client::Vanishes | Client::Stalls => {
            u.answer = Answer::ClientGone(half_sent(app, &u).await);
            return u;
        }
    };
    u.answer = match request.send().await {
        Err(e) => Answer::Refused {
            status: 0,
            code: format!("transport error: {e}"),
        },
        Ok(res) => {
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            if status == 201 {
                Answer::Created {
                    file_id: body["file"]["id"].as_str().unwrap_or_default().to_owned(),
                    sha1: body["upload"]["sha1"].as_str().unwrap_or_default().to_owned(),
                    size: body["upload"]["size"].as_u64().unwrap_or(u64::MAX),
                }
            } else {
                Answer::Refused {
                    status,
                    code: body["error"]["code"].as_str().unwrap_or("?").to_owned(),
                }
            }
        }
    };
    u
}

/// Sends the head and part of the body over a raw socket; then closes it (`Vanishes`) or waits,
/// bounded, for the gateway's answer (`Stalls`). Returns the answer's status, if any.
async fn half_sent(app: &TestApp, u: &Upload) -> Option<u16> {
    let port = app.address.rsplit(':').next().unwrap();
    let mut socket = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .ok()?;
    let head = format!(
        "PUT /v1/folders/0/files/{} HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Length: {}\r\n\r\n",
        u.name,
        secret(ORDINARY),
        u.data.len()
    );
    let sent = u.data.len() * (u.sha1.as_bytes()[0] as usize % 9 + 1) / 10;
    socket.write_all(head.as_bytes()).await.ok()?;
    socket.write_all(&u.data[..sent]).await.ok()?;
    if u.client == Client::Vanishes {
        tokio::time::sleep(Duration::from_millis(30)).await;
        return None;
    }
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(IDLE_SECS * 5 + 10), socket.read(&mut answer)).await;
    let n = read.ok()?.ok()?;
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split(' ').nth(1)?.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// 201, and Box holds exactly those bytes, once.
    Landed,
    /// Not 201, no file from it in Box, every session of it aborted.
    FailedCleanly,
    /// A 201 whose file Box does not hold, or a failure whose file Box holds all the same.
    Lost,
    /// Box holds other bytes under its name, or the file more than once.
    Corrupted,
    /// A failure whose session was left open or committed without a file.
    Unclean,
}

fn judge(app: &TestApp, seen: &Inspection, u: &Upload) -> Verdict {
    let files: Vec<_> = seen
        .files
        .iter()
        .filter(|f| f.name == u.name && f.parent_id == "0")
        .collect();
    let size = u.data.len() as u64;
    let exact = |f: &&box_upload_gateway::emulator::FileView| {
        f.size == size
            && f.sha1 == u.sha1
            && f.version_count == 1
            && app
                .emulator
                .file_path(&f.id)
                .is_some_and(|p| sha1_of_path(&p) == u.sha1)
    };
    let sessions = seen.sessions.iter().filter(|s| s.file_name == u.name);
    match &u.answer {
        Answer::Created {
            file_id,
            sha1,
            size: answered,
        } => match files.as_slice() {
            [] => Verdict::Lost,
            [f] if f.id == *file_id && *sha1 == u.sha1 && *answered == size && exact(f) => Verdict::Landed,
            _ => Verdict::Corrupted,
        },
        Answer::Pending => Verdict::Unclean,
        Answer::Refused { .. } | Answer::ClientGone(_) if !files.is_empty() => Verdict::Lost,
        Answer::Refused { .. } | Answer::ClientGone(_) => {
            if sessions.into_iter().all(|s| s.state == SessionState::Aborted) {
                Verdict::FailedCleanly
            } else {
                Verdict::Unclean
            }
        }
    }
}

/// Aborts after failures run in the background (and meet faults too): waits for them, bounded.
/// Returns how many sessions are still open.
async fn wait_for_sessions_to_close(app: &TestApp) -> usize {
    holds_within(Duration::from_secs(30), || {
        std::future::ready(open_sessions(&app.emulator) == 0)
    })
    .await;
    open_sessions(&app.emulator)
}

fn fault_kinds(seen: &Inspection) -> String {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in &seen.faults_fired {
        let endpoint = serde_json::to_value(f.endpoint).unwrap();
        let action = match f.status {
            Some(status) => status.to_string(),
            None => f.action.clone(),
        };
        *kinds
            .entry(format!("{} {action}", endpoint.as_str().unwrap_or("?")))
            .or_default() += 1;
    }
    describe(&kinds)
}

fn describe(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ordinary clients' key, and the key whose upload link the stranger holds.
const ORDINARY: &str = "api_key_team";
const PARTNER: &str = "api_key_admin";

/// An upload link of the key `partner`, for folder 0 and files up to the chunked threshold.
async fn link(app: &TestApp) -> String {
    upload_link(app, PARTNER, THRESHOLD).await
}

/// What the stranger did, and what it got: answers by status and code.
#[derive(Default)]
struct Stranger {
    /// Slow senders of direct-size files (8 KiB, then 4 KiB a second).
    slow: BTreeMap<String, usize>,
    /// Uploads sent but for their last 1,000 bytes, then paused (again and again).
    paused: BTreeMap<String, usize>,
    /// Unfinished parts stored, and their bytes.
    stored: (usize, u64),
    /// PATCHes at a wrong offset.
    wrong_offsets: BTreeMap<String, usize>,
}

impl Stranger {
    fn attacked(&self) -> bool {
        !self.slow.is_empty() && self.stored.0 > 0 && !self.wrong_offsets.is_empty()
    }
}

impl std::fmt::Display for Stranger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stranger (one upload link): {} slow senders ({}), {} pauses near the end (answers: {}), {} unfinished parts stored ({} bytes), {} PATCHes at a wrong offset ({})",
            self.slow.values().sum::<usize>(),
            describe(&self.slow),
            self.paused.get("sent").copied().unwrap_or(0),
            describe(
                &self
                    .paused
                    .iter()
                    .filter(|(k, _)| *k != "sent")
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            ),
            self.stored.0,
            self.stored.1,
            self.wrong_offsets.values().sum::<usize>(),
            describe(&self.wrong_offsets),
        )
    }
}

/// The link holder's attacks, until the ordinary clients are `done` (each bounded by it).
async fn stranger(app: &TestApp, token: &str, done: &tokio::sync::Notify) -> Stranger {
    let size = THRESHOLD - 1;
    let address = app.address.clone();
    let tus_head = |path: &str, offset: u64, length: u64| {
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: x\r\nX-Upload-Link: {token}\r\nTus-Resumable: 1.0.0\r\n\
             Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\nContent-Length: {length}"
        )
    };
    // Box faults refuse some creations (its preflight): a few tries each.
    let create = |name: String| async move {
        for _ in 0..5 {
            let answer = app
                .http
                .post(format!("{}/v1/tus/", app.address))
                .header("X-Upload-Link", token)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Length", size)
                .header(
                    "Upload-Metadata",
                    crate::support::tus_client::metadata(&[("filename", &name)]),
                )
                .send()
                .await;
            if let Some(location) = answer.ok().and_then(|a| a.headers().get("location").cloned()) {
                return location.to_str().ok().map(str::to_owned);
            }
        }
        None
    };
    let answer_of =
        |a: Option<RawAnswer>| a.map_or("none".to_owned(), |a| format!("{} {}", a.status, a.code()));
    let mut report = Stranger::default();
    // Unfinished parts, stored (one after the other: each holds its part in the link's share while
    // it is read).
    let mut stored = Vec::new();
    for i in 0..6 {
        let Some(path) = create(format!("stranger-stored-{i}.bin")).await else {
            continue;
        };
        let head = tus_head(&path, 0, size / 2);
        let body = [vec![b'u'; (size / 2) as usize]];
        let answer = raw_request(&address, &head, body, Duration::ZERO, Duration::from_secs(60)).await;
        if answer.is_some_and(|a| a.status == 204) {
            report.stored.0 += 1;
            report.stored.1 += size / 2;
            stored.push(path);
        }
    }
    // Slow senders: each holds what it sent; the files they promise fill the link's share but for
    // one (the paused upload's), and the ordinary clients' share is their own.
    let mut slow = Vec::new();
    for i in 0..3 {
        if let Some(path) = create(format!("stranger-slow-{i}.bin")).await {
            let pieces =
                std::iter::once(vec![b's'; 8 * 1024]).chain(std::iter::repeat_n(vec![b's'; 4096], 4096));
            let head = tus_head(&path, 0, size);
            let address = address.clone();
            slow.push(tokio::spawn(async move {
                raw_request(
                    &address,
                    &head,
                    pieces,
                    Duration::from_secs(1),
                    Duration::from_secs(600),
                )
                .await
            }));
        }
    }
    let (paused, wrong_offsets) = (Mutex::new(BTreeMap::new()), Mutex::new(BTreeMap::new()));
    let count = |map: &Mutex<BTreeMap<String, usize>>, answer: String| {
        *map.lock().unwrap().entry(answer).or_insert(0) += 1;
    };
    let pausing = async {
        let Some(path) = create("stranger-paused.bin".into()).await else {
            return std::future::pending().await;
        };
        loop {
            // All but the last 1,000 bytes, then nothing: cut by client_idle_timeout_secs. Counted
            // as it starts (one still under way when the soak ends has no answer yet).
            count(&paused, "sent".into());
            let head = tus_head(&path, 0, size);
            let answer = raw_request(
                &address,
                &head,
                [vec![b'p'; (size - 1000) as usize]],
                Duration::ZERO,
                Duration::from_secs(60),
            )
            .await;
            count(&paused, answer_of(answer));
        }
    };
    let hammering = async {
        if stored.is_empty() {
            return std::future::pending().await;
        }
        for path in stored.iter().cycle() {
            let head = tus_head(path, 0, 0);
            let answer = raw_request(&address, &head, [], Duration::ZERO, Duration::from_secs(60)).await;
            count(&wrong_offsets, answer_of(answer));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        () = done.notified() => {}
        () = pausing => {}
        () = hammering => {}
    }
    report.paused = paused.into_inner().unwrap();
    report.wrong_offsets = wrong_offsets.into_inner().unwrap();
    for sender in slow {
        let answer = match sender.is_finished() {
            true => answer_of(sender.await.unwrap()),
            false => {
                sender.abort();
                "still sending".to_owned()
            }
        };
        *report.slow.entry(answer).or_insert(0) += 1;
    }
    report
}

static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on threads that are not libtest's (named after their test, `module::name`): the
/// gateway's and the emulator's workers. Other tests' servers share the process, so a panic there
/// counts too, and is a bug all the same.
fn count_server_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if !name.contains("::") && name != "main" {
                SERVER_PANICS.fetch_add(1, Ordering::Relaxed);
            }
            previous(info);
        }));
    });
}
