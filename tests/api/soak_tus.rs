//! The tus soak: uploads in random chunks through two gateway processes sharing one Redis, against an
//! emulator that refuses random parts (501: final; 500: retried), while one gateway is restarted
//! (SIGTERM, drain, a new process) and Redis is restarted (its AOF keeps the records) mid-upload.
//! Each client resumes from HEAD after any failure. After every PATCH answer, HEAD must not pass what
//! Box holds plus the stored unfinished part; at the end every upload landed byte-exact, no session
//! is left open, and once the clients terminated their landed uploads the store is empty.
//!
//! `SOAK_TUS_UPLOADS=N` runs more uploads, `SOAK_SEED=N` another fault plan and mix.
use std::future::ready;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use box_upload_gateway::emulator::{
    Emulator, EmulatorConfig, EmulatorHandle, Endpoint, FaultAction, FaultPlan, FaultRule, SessionState,
};

use crate::support::process::{anonymous_env, env_refs, small_parts, Gateway};
use crate::support::redis_server::RedisServer;
use crate::support::tus_client::{creation, TUS};
use crate::support::*;

/// The upload lock's time to live here (the default is 30 s): a lock whose release Redis's restart
/// swallowed holds its upload this long.
const LOCK_TTL_SECS: u64 = 3;
/// Uploads expire this long after their creation here (the default is a day).
const EXPIRATION_SECS: u64 = 20;
/// What the state store keeps past an upload's expiry at most: the sweep after it (every 5 s here),
/// or an owner's set of open uploads, 5 s past its latest member's expiry (`OPEN_UPLOAD` in
/// src/state/redis.rs), when Redis was down as a slot was to be closed (a creation refused during its
/// restart closes the slot in the background once it is back: `close_later` in routes/admission.rs).
const SWEEP_SLACK_SECS: u64 = 20;

/// The first byte of `name`'s session that Box lacks (its parts, walked from 0).
fn box_holds(emulator: &EmulatorHandle, name: &str) -> u64 {
    let seen = emulator.inspect();
    // A creation whose record could not be saved (Redis down) aborted its session: not this one.
    let Some(session) = seen
        .sessions
        .iter()
        .find(|s| s.file_name == name && s.state != SessionState::Aborted)
    else {
        return 0;
    };
    let mut at = 0;
    while let Some(p) = session.parts.iter().find(|p| p.offset == at) {
        at += p.size;
    }
    at
}

#[derive(Default)]
struct Tally {
    landed: usize,
    lost: usize,
    corrupted: usize,
    patches: usize,
    failed_patches: usize,
    head_checks: usize,
    violations: Vec<String>,
    /// Failed PATCHes by status (0: no answer).
    failures: std::collections::BTreeMap<u16, usize>,
    /// The slowest PATCH answer (or its absence), and its status.
    slowest_patch: (Duration, u16),
}

/// One client: creates the upload, sends random chunks from HEAD's offset, resumes after any failure,
/// checks the offset rule after every PATCH answer, and terminates the upload once it landed.
#[allow(clippy::too_many_arguments)]
async fn client(
    i: usize,
    seed: u64,
    bases: Arc<Mutex<Vec<String>>>,
    emulator: &EmulatorHandle,
    tally: Arc<Mutex<Tally>>,
) {
    let mut rng = fastrand::Rng::with_seed(seed ^ (i as u64 * 7919));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let size = 1024 * 1024 + rng.u64(0..3 * PART * 4);
    let (file, sha1) = make_file(size + i as u64);
    let size = size + i as u64;
    let bytes = std::fs::read(file.path()).unwrap();
    let name = format!("soak-tus-{i}.bin");
    let base = || {
        let b = bases.lock().unwrap();
        b[fastrand::usize(..b.len())].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    // Create (retried: a replica may be restarting, Redis may be down).
    let path = loop {
        assert!(Instant::now() < deadline, "{name}: never created");
        let answer = creation(&http, &base(), size, &[("filename", &name)])
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 201 => break r.headers()["location"].to_str().unwrap().to_owned(),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let head = |http: reqwest::Client, url: String| async move {
        let r = http.head(url).header("Tus-Resumable", TUS).send().await.ok()?;
        Some((
            r.status().as_u16(),
            r.headers()
                .get("upload-offset")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok()),
            r.headers()
                .get("upload-box-file-id")
                .map(|v| v.to_str().unwrap().to_owned()),
        ))
    };
    let file_id = loop {
        if Instant::now() > deadline {
            tally.lock().unwrap().lost += 1;
            return;
        }
        let Some((status, offset, id)) = head(http.clone(), format!("{}{path}", base())).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match (status, offset, id) {
            (200, _, Some(id)) => break id,
            (200, Some(offset), None) => {
                // Up to 6 parts: past the concurrency limit (2), where a refused part is collected
                // while the PATCH waits.
                let len = rng.u64(1..=6 * PART).min(size - offset);
                let chunk = bytes[offset as usize..(offset + len) as usize].to_vec();
                let sent = Instant::now();
                let answer = http
                    .patch(format!("{}{path}", base()))
                    .header("Tus-Resumable", TUS)
                    .header("Upload-Offset", offset)
                    .header("Content-Type", "application/offset+octet-stream")
                    .body(chunk)
                    .send()
                    .await;
                let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
                let ok = status == 204;
                {
                    let mut t = tally.lock().unwrap();
                    t.patches += 1;
                    t.failed_patches += usize::from(!ok);
                    t.slowest_patch = t.slowest_patch.max((sent.elapsed(), status));
                    if !ok {
                        *t.failures.entry(status).or_default() += 1;
                    }
                }
                // The offset rule: the part HEAD's offset falls in starts no later than the first
                // byte Box lacks (the bytes past it are the stored unfinished part).
                if let Some((200, Some(h), _)) = head(http.clone(), format!("{}{path}", base())).await {
                    let lacks = box_holds(emulator, &name);
                    let mut t = tally.lock().unwrap();
                    t.head_checks += 1;
                    if h - h % PART > lacks && h < size {
                        t.violations
                            .push(format!("{name}: HEAD {h} but Box holds up to {lacks}"));
                    }
                }
                if !ok {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (410, ..) => {
                tally.lock().unwrap().lost += 1;
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // Landed: check the bytes, then terminate the upload so the store empties.
    let path_of = emulator.file_path(&file_id);
    let exact = path_of.is_some_and(|p| sha1_of_path(&p) == sha1);
    {
        let mut t = tally.lock().unwrap();
        t.landed += 1;
        t.corrupted += usize::from(!exact);
    }
    while Instant::now() < deadline {
        let gone = http
            .delete(format!("{}{path}", base()))
            .header("Tus-Resumable", TUS)
            .send()
            .await;
        // 404: an earlier DELETE did it, its answer lost.
        if matches!(gone, Ok(r) if r.status() == 204 || r.status() == 404) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_tus() {
    let uploads = env_or("SOAK_TUS_UPLOADS", 16usize);
    let seed = env_or("SOAK_SEED", 20_261_201u64);
    let started = Instant::now();
    // Arrange: the emulator refuses random parts; Redis with its AOF; two gateway processes.
    let refuse = |status: u16, fraction: f64, seed: u64| FaultRule {
        endpoint: Endpoint::UploadPart,
        nth: None,
        fraction: Some(fraction),
        seed: Some(seed),
        times: None,
        action: FaultAction::Status {
            status,
            code: None,
            message: None,
            retry_after: None,
        },
    };
    let emulator = Emulator::spawn(EmulatorConfig {
        faults: FaultPlan {
            rules: vec![refuse(501, 0.04, seed), refuse(500, 0.04, seed + 1)],
            ..FaultPlan::default()
        },
        ..small_parts()
    })
    .await
    .unwrap();
    let mut redis = RedisServer::start_append_only().await;
    let mut env = anonymous_env(&emulator);
    env.extend([
        ("GATEWAY_SHUTDOWN_GRACE_SECS", "2".into()),
        ("GATEWAY_PART_CONCURRENCY", "2".into()),
        ("GATEWAY_TUS_LOCK_TTL_SECS", LOCK_TTL_SECS.to_string()),
        // Short, so the records of creations whose answer the client never got (Redis went down
        // between the record and its schedule, a gateway stopped) are swept within the soak.
        // Far longer than a lock that Redis's restart kept from being released, and than an
        // upload takes.
        ("GATEWAY_TUS_EXPIRATION_SECS", EXPIRATION_SECS.to_string()),
        ("GATEWAY_REDIS_URL", redis.url.clone()),
        ("GATEWAY_BOX_RETRY_BASE_DELAY_MS", "10".into()),
        ("GATEWAY_BOX_RETRY_MAX_DELAY_MS", "200".into()),
        // Only the start line (the port) and the drain: the logs are read at the start and the end
        // only, and a full pipe would block the gateway.
        (
            "RUST_LOG",
            "off,box_upload_gateway=info,box_upload_gateway::routes=off,box_upload_gateway::pipeline=off,\
             box_upload_gateway::box_api=off,box_upload_gateway::state=off,box_upload_gateway::telemetry=off,\
             box_upload_gateway::access=off,box_upload_gateway::error=off"
                .into(),
        ),
    ]);
    let mut one = Gateway::start(&env_refs(&env)).await;
    let two = Gateway::start(&env_refs(&env)).await;
    let bases = Arc::new(Mutex::new(vec![one.url(""), two.url("")]));
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Act: the clients, 4 at a time; meanwhile a gateway restart, then a Redis restart.
    let clients = futures_util::StreamExt::collect::<Vec<_>>(futures_util::StreamExt::buffer_unordered(
        futures_util::stream::iter(
            (0..uploads).map(|i| client(i, seed, bases.clone(), &emulator, tally.clone())),
        ),
        4,
    ));
    let landed = || tally.lock().unwrap().landed;
    // The restarts follow the uploads' progress, not a clock: on a fast machine every upload could
    // land before a timer fires, and the restarts would test nothing.
    let progress = |n: usize| async move {
        eventually("uploads to land", Duration::from_secs(150), || {
            ready(landed() >= n)
        })
        .await
    };
    let restarts = async {
        progress(uploads / 4).await;
        let before_gateway = landed();
        bases.lock().unwrap().retain(|b| *b != one.url(""));
        one.sigterm();
        one.wait_exit(Duration::from_secs(10)).await;
        let one_again = Gateway::start(&env_refs(&env)).await;
        bases.lock().unwrap().push(one_again.url(""));
        progress(uploads / 2).await;
        let before_redis = landed();
        redis.restart(Duration::from_millis(300)).await;
        (one_again, before_gateway, before_redis)
    };
    let (finished, (one_again, before_gateway, before_redis)) =
        tokio::join!(tokio::time::timeout(Duration::from_secs(150), clients), restarts);
    finished.expect("the clients finish within 150 s");
    // Assert
    let seen = emulator.inspect();
    let open = seen
        .sessions
        .iter()
        .filter(|s| s.state == SessionState::Open)
        .count();
    let clients_done = started.elapsed();
    let left_at_end = redis.keys().await.len();
    // The records whose creation answer was lost go at their expiry and the sweep after it.
    let redis_ref = &redis;
    let bound = Duration::from_secs(EXPIRATION_SECS + SWEEP_SLACK_SECS);
    holds_within(bound, || async move { redis_ref.keys().await.is_empty() }).await;
    let keys = redis.describe().await;
    let left = keys.len();
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let fired = seen.counters.faults_fired;
    eprintln!(
        "soak: tus {} uploads (2 replicas, a gateway and a Redis restart, seed {seed}, {:.1?}, the clients \
         done after {clients_done:.1?}): \
         {} landed, {} lost, {} corrupted, {} orphan sessions, {} keys left in the store \
         ({left_at_end} when the clients were done, the rest swept at expiry); \
         {} PATCHes ({} failed: {:?} by status), {} HEAD checks, slowest PATCH {:?}, {} offset violations, {fired} part faults",
        uploads,
        started.elapsed(),
        t.landed,
        t.lost,
        t.corrupted,
        open,
        left,
        t.patches,
        t.failed_patches,
        t.failures,
        t.head_checks,
        t.slowest_patch,
        t.violations.len()
    );
    assert!(t.violations.is_empty(), "{:#?}", t.violations);
    assert_eq!((t.landed, t.lost, t.corrupted), (uploads, 0, 0));
    assert_eq!(open, 0, "orphan sessions");
    assert_eq!(
        left, 0,
        "the state store is empty once the uploads are terminated: {keys:#?}"
    );
    assert!(fired > 0, "the fault plan fired");
    assert!(
        before_gateway < uploads && before_redis < uploads,
        "both restarts came mid-upload ({before_gateway} and {before_redis} landed before)"
    );
    two.finish().await;
    one_again.finish().await;
}
