//! The pacer never holds an upload past its deadline (issue 23, item 7): Box (or a proxy) answers a
//! part 429 with an absurd `Retry-After`; the client hears a clear 503 with `Retry-After` within
//! `box_call_deadline_secs`, the session is aborted at once (cleanup does not wait for the pacer),
//! the principal-wide pause lasts `box_rate_max_pause_secs` and not an hour, and a SIGTERM drain
//! during such a pause ends on time with the upload's session aborted.
use std::time::{Duration, Instant};

use box_upload_gateway::emulator::{Emulator, SessionState};
use serde_json::{json, Value};

use crate::support::process::{anonymous_env, env_refs, small_parts, Gateway};
use crate::support::*;

/// `size` seeded bytes and their SHA-1 (hex).
fn data(size: u64, seed: u64) -> (Vec<u8>, String) {
    let data = seeded_bytes(size, seed);
    let sha1 = sha1_hex(&data);
    (data, sha1)
}

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

async fn put(http: &reqwest::Client, url: String, body: Vec<u8>) -> Answer {
    let response = http
        .put(url)
        .body(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

const DEADLINE_SECS: u64 = 3;
const MAX_PAUSE_SECS: u64 = 4;

/// The case, in seconds: paced like production (Box's limits, 10 % under), a call deadline
/// of 3 s and a pause cap of 4 s. Box answers the second part 429 `Retry-After:
/// 100000000000000000000`: the part cannot wait 4 s within 3 s, the upload's other calls find no
/// room before their deadline, and the client is answered at once; the abort goes past the pause.
/// Another upload of the same Box user is held (503 with `Retry-After`) during the pause and lands
/// once it is over: after about 4 s, not an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_fails_the_upload_in_time_and_the_user_uploads_after_the_capped_pause() {
    let o = Options {
        box_request_timeout_secs: DEADLINE_SECS,
        faults: plan(json!({"rules": [{
            "endpoint": "upload_part", "nth": 2, "times": 1,
            "action": {"type": "retry_after_raw", "status": 429, "value": "100000000000000000000"}
        }]})),
        gateway: Some(Box::new(|s, _| {
            s.box_rate_calls_per_minute = 900;
            s.box_rate_uploads_per_minute = 220;
            s.box_rate_wait_secs = 1;
            s.box_call_deadline_secs = DEADLINE_SECS;
            s.box_rate_max_pause_secs = MAX_PAUSE_SECS;
        })),
        ..Options::default()
    };
    let app = spawn_app_with(o).await;
    let size = THRESHOLD + PART * 3;

    // Act: the upload that meets the 429.
    let (body, _) = data(size, 1);
    let sent = Instant::now();
    let failed = put(&app.http, format!("{}/hit.bin", app.folder_url("0")), body).await;
    let answered_in = sent.elapsed();

    // A clear 5xx with the capped Retry-After, well within the call's deadline.
    assert_eq!(failed.status, 503, "{}", failed.body);
    assert_eq!(
        failed.body["error"]["code"], "box_rate_limited",
        "{}",
        failed.body
    );
    let retry_after = failed.retry_after.expect("a Retry-After");
    assert!(
        (1..=MAX_PAUSE_SECS).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert!(
        answered_in < Duration::from_secs(DEADLINE_SECS),
        "answered after {answered_in:?}"
    );
    // Box holds the session aborted, and no file.
    let state = app.emulator.inspect();
    let hit: Vec<_> = state
        .sessions
        .iter()
        .filter(|s| s.file_name == "hit.bin")
        .collect();
    assert_eq!(hit.len(), 1, "{:?}", state.sessions);
    assert_eq!(hit[0].state, SessionState::Aborted);
    assert!(state.files.is_empty(), "{:?}", state.files);
    assert_eq!(state.counters.faults_fired, 1);
    // One 429 from Box in all: the abort went at once, past the pause, and Box took it.
    assert_eq!(app.metric_with("gateway_box_rate_limited_total", &[]).await, 1.0);
    assert_eq!(
        app.metric_with("gateway_box_rate_cleanups_unpaced_total", &["endpoint=\"abort\""])
            .await,
        1.0
    );

    // The same Box user is paused for everyone: a new upload is told to come back ...
    let (small, _) = data(1000, 2);
    let held = put(&app.http, format!("{}/held.bin", app.folder_url("0")), small).await;
    assert_eq!(held.status, 503, "{}", held.body);
    assert_eq!(held.body["error"]["code"], "box_rate_limited", "{}", held.body);
    // ... when the pause ends (about 4 s after the 429), not after a one-second guess.
    assert!(
        held.retry_after
            .is_some_and(|s| (2..=MAX_PAUSE_SECS).contains(&s)),
        "{:?}",
        held.retry_after
    );

    // ... and lands once the capped pause is over, honouring Retry-After (a bounded loop).
    let (again, again_sha1) = data(size, 3);
    let give_up = sent + Duration::from_secs(MAX_PAUSE_SECS + DEADLINE_SECS + 4);
    let landed = loop {
        let answer = put(
            &app.http,
            format!("{}/after.bin", app.folder_url("0")),
            again.clone(),
        )
        .await;
        match (answer.status, answer.retry_after) {
            (201, _) => break answer,
            (503, Some(secs)) if answer.body["error"]["code"] == "box_rate_limited" => {
                let back = Instant::now() + Duration::from_secs(secs);
                assert!(
                    back < give_up,
                    "still paused: Retry-After {secs}; the pause was not capped"
                );
                tokio::time::sleep_until(back.into()).await
            }
            _ => panic!("{} {}", answer.status, answer.body),
        }
    };
    assert_eq!(
        landed.body["upload"]["sha1"],
        again_sha1.as_str(),
        "{}",
        landed.body
    );
    let file = app
        .emulator
        .inspect()
        .files
        .into_iter()
        .find(|f| f.name == "after.bin")
        .expect("Box holds the file");
    assert_eq!((file.sha1.as_str(), file.size), (again_sha1.as_str(), size));
    let names: Vec<_> = app.emulator.inspect().files.into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["after.bin"], "only the upload after the pause landed");
    app.assert_no_open_session().await;
}

/// SIGTERM while the principal is paused (Box's 429 asked for 60 s, within the cap and the call's
/// deadline, so the upload's calls wait for it): the drain ends within `shutdown_grace_secs`, the
/// client hears 503 `draining`, and the upload's session is aborted at once, not after the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_during_a_pause_ends_on_time_and_aborts_the_session() {
    let emulator = Emulator::spawn(small_parts()).await.unwrap();
    emulator.set_faults(plan(json!({"rules": [{
        "endpoint": "upload_part", "nth": 2, "times": 1,
        "action": {"type": "status", "status": 429, "retry_after": 60}
    }]})));
    let mut env = anonymous_env(&emulator);
    env.extend([
        ("GATEWAY_PART_CONCURRENCY", "8".into()),
        ("GATEWAY_SHUTDOWN_GRACE_SECS", "3".into()),
        ("GATEWAY_READINESS_CHECK_INTERVAL_SECS", "1".into()),
        ("BOX_REQUEST_TIMEOUT_SECS", "60".into()),
        ("BOX_CALL_DEADLINE_SECS", "120".into()),
        ("BOX_RATE_MAX_PAUSE_SECS", "90".into()),
        ("RUST_LOG", "info".into()),
    ]);
    let mut gateway = Gateway::start(&env_refs(&env)).await;
    let http = reqwest::Client::new();
    gateway.wait_ready(&http).await;

    // Five parts, all in flight at once: the whole body is read (the parts wait for the pause, not
    // the client), so the 503 leaves an idle connection the server's stop closes at once.
    let (body, _) = data(THRESHOLD + PART, 4);
    let upload = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url("/v1/folders/0/files/paused.bin"));
        async move { put(&http, url, body).await }
    });
    // The part met its 429: the principal is paused for 60 s, the upload's calls wait.
    let fired = || std::future::ready(emulator.inspect().counters.faults_fired == 1);
    eventually("the part's 429", Duration::from_secs(4), fired).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!upload.is_finished(), "the upload waits out the pause");

    gateway.sigterm();
    let (status, after_sigterm) = gateway.wait_exit(Duration::from_secs(20)).await;
    let answer = upload.await.unwrap();

    assert!(status.success(), "exit status {status}: {}", gateway.logs);
    assert!(
        after_sigterm < Duration::from_secs(3),
        "exited {after_sigterm:?} after SIGTERM (grace 3 s): {}",
        gateway.logs
    );
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], "draining", "{}", answer.body);
    let state = emulator.inspect();
    let sessions: Vec<_> = state
        .sessions
        .iter()
        .map(|s| (s.file_name.as_str(), s.state))
        .collect();
    assert_eq!(sessions, [("paused.bin", SessionState::Aborted)]);
    assert!(state.files.is_empty(), "{:?}", state.files);
    // The upload stopped at the drain's stop, its abort done at once: nothing ran to the end.
    assert!(gateway.logs.contains("drained"), "{}", gateway.logs);
    assert!(
        !gateway
            .logs
            .contains("uploads still running at the end of the grace period"),
        "{}",
        gateway.logs
    );
}
