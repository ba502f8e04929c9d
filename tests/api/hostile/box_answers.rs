//! Box (or a proxy in front of it) answering strangely: absurd `Retry-After`, garbage bodies, a
//! session that lies about its parts, a committed file that differs. Every upload gets a clear JSON
//! error (or lands, when a retry fixes it), never a 500 from a panic; its session is aborted; and the
//! gateway answers the next request.
use std::time::Duration;

use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{EmulatorConfig, EmulatorHandle, FaultPlan};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// A raw `PUT` of `size` seeded bytes named `name` into folder 0; returns the answer and the SHA-1.
async fn put(app: &TestApp, name: &str, size: u64, query: &str) -> (Answer, String) {
    let data = seeded_bytes(size, size);
    let sha1 = sha1_hex(&data);
    let answer = app.put_raw(&format!("{name}{query}"), data, &[]).await;
    let answer = Answer {
        status: answer.status,
        retry_after: answer.header("retry-after").map(str::to_owned),
        body: answer.json,
    };
    (answer, sha1)
}

/// What every hostile answer must leave: no 500, a JSON error with a code (or a landed file), no
/// session of `name` left open, and a gateway that takes the next upload.
async fn assert_clean(app: &TestApp, name: &str, a: &Answer) {
    assert_ne!(a.status, 500, "a 500 ({name}): {}", a.body);
    if a.status != 201 {
        let code = a.body["error"]["code"].as_str().unwrap_or_default();
        assert!(!code.is_empty() && code != "internal_error", "{name}: {}", a.body);
    }
    app.assert_no_open_session().await;
    for s in sessions(&app.emulator).iter().filter(|s| s["file_name"] == name) {
        // A file that differs was committed (and then deleted): its session is closed by that.
        let committed = a.status == 201 || a.body["error"]["code"] == "box_integrity_error";
        let want = if committed { "committed" } else { "aborted" };
        assert_eq!(s["state"], want, "{name}: {s}");
    }
    if a.status != 201 {
        let files = inspect(&app.emulator)["files"].clone();
        assert!(
            files.as_array().unwrap().iter().all(|f| f["name"] != name),
            "{name} failed but landed: {files}"
        );
    }
    // Parts of the failed upload that were on the wire when it gave up may still reach the emulator
    // and would spend the next case's `nth: 1`: let them drain first.
    let drained = || std::future::ready(app.emulator.inspect().counters.parts_in_flight == 0);
    holds_within(Duration::from_secs(2), drained).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // The gateway still takes uploads.
    app.emulator.set_faults(FaultPlan::default());
    let next = format!("next-after-{name}");
    let (after, sha1) = put(app, &next, 1000, "").await;
    assert_eq!(after.status, 201, "{}", after.body);
    assert_eq!(after.body["upload"]["sha1"], sha1.as_str());
}

const ABSURD: [&str; 7] = [
    "100000000000000000000",
    "1e400",
    "-5",
    "NaN",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "soon, maybe",
    "3.5e18",
];

/// A call deadline (60 s) below `box_rate_max_pause_secs` (120 s by default): a huge `Retry-After`,
/// read as the cap, cannot be waited for and is answered at once (with a deadline above the cap,
/// the gateway would wait the cap out and retry; `pacer_deadline.rs`).
fn deadline_below_the_cap() -> Options {
    Options {
        gateway: Some(Box::new(|s, _| s.box_call_deadline_secs = 60)),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_on_parts_and_sessions_never_panics() {
    let app = spawn_app_with(deadline_below_the_cap()).await;
    for (endpoint, status) in [("upload_part", 429), ("create_session", 503), ("commit", 503)] {
        for (k, value) in ABSURD.iter().enumerate() {
            let name = format!("ra-{endpoint}-{k}.bin");
            let before = inspect(&app.emulator)["faults_fired"].as_array().unwrap().len();
            app.emulator.set_faults(plan(json!({"rules": [{
                "endpoint": endpoint, "nth": 1, "times": 1,
                "action": {"type": "retry_after_raw", "status": status, "value": value}
            }]})));
            let (a, sha1) = put(&app, &name, THRESHOLD + PART * 2 + 5, "").await;
            match a.status {
                // Unreadable values are ignored (the usual backoff), so the retry lands.
                201 => assert_eq!(a.body["upload"]["sha1"], sha1.as_str()),
                // A wait past the call's deadline is not taken: the client hears when to come back.
                503 | 504 => {
                    let secs: u64 = a
                        .retry_after
                        .as_deref()
                        .map_or(0, |v| v.parse().expect("a number of seconds"));
                    // At most box_rate_max_pause_secs (120 by default), whatever was asked.
                    assert!(secs <= 120, "{value}: Retry-After {secs}");
                }
                other => panic!("{endpoint} {value}: {other} {}", a.body),
            }
            let fired = inspect(&app.emulator)["faults_fired"].as_array().unwrap().len();
            assert_eq!(fired, before + 1, "{endpoint} {value}: the fault fired");
            assert_clean(&app, &name, &a).await;
        }
    }
    // Huge values are capped at box_rate_max_pause_secs (120 s by default), and a cap past the
    // deadline is given up at once, not slept on.
    let (huge, _) = {
        app.emulator.set_faults(plan(json!({"rules": [{
            "endpoint": "upload_part", "nth": 1, "times": 1,
            "action": {"type": "retry_after_raw", "status": 429, "value": ABSURD[0]}
        }]})));
        put(&app, "ra-huge.bin", THRESHOLD + PART * 2, "").await
    };
    assert_eq!(huge.status, 503, "{}", huge.body);
    assert_eq!(huge.body["error"]["code"], "box_rate_limited");
    assert_eq!(huge.retry_after.as_deref(), Some("120"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_on_direct_uploads_and_preflight_never_panics() {
    let app = spawn_app_with(deadline_below_the_cap()).await;
    for endpoint in ["preflight", "direct_upload"] {
        for (k, value) in ABSURD.iter().enumerate() {
            let name = format!("ra-{endpoint}-{k}.bin");
            app.emulator.set_faults(plan(json!({"rules": [{
                "endpoint": endpoint, "nth": 1, "times": 1,
                "action": {"type": "retry_after_raw", "status": 429, "value": value}
            }]})));
            let (a, _) = put(&app, &name, 5000, "").await;
            assert!(matches!(a.status, 201 | 503), "{endpoint} {value}: {}", a.body);
            assert_clean(&app, &name, &a).await;
        }
    }
}

const GARBAGE: [&str; 4] = ["not_json", "truncated_json", "wrong_shape", "html"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bodies_from_any_endpoint_are_clear_errors() {
    let app = spawn_app().await;
    let cases = [
        ("create_session", THRESHOLD + PART * 2 + 1),
        ("upload_part", THRESHOLD + PART * 2 + 1),
        ("commit", THRESHOLD + PART * 2 + 1),
        ("preflight", 4000),
        ("direct_upload", 4000),
    ];
    for (endpoint, size) in cases {
        for kind in GARBAGE {
            let name = format!("garbage-{endpoint}-{kind}.bin");
            app.emulator.set_faults(plan(json!({"rules": [{
                "endpoint": endpoint, "nth": 1, "times": 1,
                "action": {"type": "garbage_body", "kind": kind}
            }]})));
            let (a, _) = put(&app, &name, size, "").await;
            // A 200 that is not Box's answer cannot be retried blindly: it is a protocol error.
            // (A preflight's body is not read: any 2xx is a yes, and the upload lands.)
            match (endpoint, a.status) {
                ("preflight", 201) => {}
                (_, 502) => assert_eq!(a.body["error"]["code"], "box_protocol_error", "{}", a.body),
                _ => panic!("{endpoint} {kind}: {} {}", a.status, a.body),
            }
            assert_clean(&app, &name, &a).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_error_page_is_retried_like_boxs_own_error() {
    let app = spawn_app().await;
    for kind in GARBAGE {
        let name = format!("page-{kind}.bin");
        app.emulator.set_faults(plan(json!({"rules": [
            {"endpoint": "upload_part", "nth": 2, "times": 1, "action": {"type": "garbage_body", "kind": kind, "status": 503}},
            {"endpoint": "commit", "nth": 1, "times": 1, "action": {"type": "garbage_body", "kind": kind, "status": 502}}
        ]})));
        let (a, sha1) = put(&app, &name, THRESHOLD + PART * 3, "").await;
        assert_eq!(a.status, 201, "{kind}: {}", a.body);
        assert_eq!(a.body["upload"]["sha1"], sha1.as_str());
        assert_clean(&app, &name, &a).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_token_endpoint_is_a_clear_error() {
    let app = spawn_app_with(client_credentials()).await;
    for kind in GARBAGE {
        let name = format!("token-{kind}.bin");
        app.emulator.expire_issued_tokens();
        // Every token answer is garbage while the upload runs: the gateway's background checks
        // may ask for a token too, and a single bad answer could go to them instead.
        app.emulator.set_faults(plan(json!({"rules": [{
            "endpoint": "token", "nth": 1, "times": 1000,
            "action": {"type": "garbage_body", "kind": kind}
        }]})));
        let (a, _) = put(&app, &name, THRESHOLD + PART * 2, "").await;
        assert_eq!(a.status, 502, "{kind}: {}", a.body);
        assert_eq!(a.body["error"]["code"], "box_protocol_error", "{}", a.body);
        assert_clean(&app, &name, &a).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_part_count_disagrees_is_aborted() {
    let app = spawn_app_with(Options {
        faults: plan(
            json!({"rules": [{"endpoint": "create_session", "action": {"type": "wrong_total_parts"}}]}),
        ),
        ..Options::default()
    })
    .await;
    let (a, _) = put(&app, "liar.bin", THRESHOLD + PART * 3 + 7, "").await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "box_protocol_error");
    let all = sessions(&app.emulator);
    assert_eq!(all.len(), 1, "Box made the session");
    assert_eq!(all[0]["state"], "aborted", "and the gateway aborted it");
    assert_eq!(inspect(&app.emulator)["counters"]["part_uploads_accepted"], 0);
    assert_clean(&app, "liar.bin", &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_file_that_differs_is_deleted_and_the_answer_says_so() {
    let app = spawn_app_with(Options {
        faults: plan(json!({"rules": [{"endpoint": "commit", "action": {"type": "commit_differs"}}]})),
        ..Options::default()
    })
    .await;
    let (a, _) = put(&app, "differs.bin", THRESHOLD + PART * 2 + 3, "").await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "box_integrity_error");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("was deleted"), "{message}");
    let seen = inspect(&app.emulator);
    assert_eq!(seen["counters"]["files_deleted"], 1, "{seen}");
    assert!(seen["files"].as_array().unwrap().is_empty(), "{seen}");
    assert_eq!(
        app.metric_with("gateway_box_integrity_cleanups_total", &["file", "deleted"])
            .await,
        1.0
    );
    assert_clean(&app, "differs.bin", &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_upload_that_differs_is_deleted_too() {
    let app = spawn_app_with(Options {
        faults: plan(json!({"rules": [{"endpoint": "direct_upload", "action": {"type": "commit_differs"}}]})),
        ..Options::default()
    })
    .await;
    let (a, _) = put(&app, "small-differs.bin", 5000, "").await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "box_integrity_error");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("was deleted"));
    let seen = inspect(&app.emulator);
    assert_eq!(seen["counters"]["files_deleted"], 1, "{seen}");
    assert!(seen["files"].as_array().unwrap().is_empty(), "{seen}");
    assert_clean(&app, "small-differs.bin", &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_version_that_differs_is_deleted_and_the_file_keeps_its_bytes() {
    let app = spawn_app().await;
    let (first, sha1) = put(&app, "kept.bin", THRESHOLD + PART * 2 + 9, "").await;
    assert_eq!(first.status, 201, "{}", first.body);
    app.emulator.set_faults(plan(
        json!({"rules": [{"endpoint": "commit", "action": {"type": "commit_differs"}}]}),
    ));
    let (a, _) = put(&app, "kept.bin", THRESHOLD + PART * 3, "?on_conflict=version").await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "box_integrity_error");
    assert!(a.body["error"]["message"].as_str().unwrap().contains("version"));
    let seen = app.emulator.inspect();
    let file = seen.files.iter().find(|f| f.name == "kept.bin").unwrap();
    assert_eq!(file.version_count, 1, "the bad version is gone");
    assert_eq!(file.sha1, sha1, "the first version is current again");
    assert_eq!(seen.counters.versions_deleted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_202s_do_not_spend_the_error_retries() {
    // Five 202s then one 503: with the polls counted as attempts, six attempts were spent.
    let app = spawn_app_with(Options {
        faults: plan(json!({"rules": [
            {"endpoint": "commit", "nth": 1, "times": 5, "action": {"type": "commit_accepted", "retry_after": 0}},
            {"endpoint": "commit", "nth": 6, "times": 1, "action": {"type": "status", "status": 503}}
        ]})),
        box_retry_max_attempts: 2,
        ..Options::default()
    })
    .await;
    let (a, sha1) = put(&app, "patient.bin", THRESHOLD + PART * 2, "").await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["upload"]["sha1"], sha1.as_str());
    assert_eq!(inspect(&app.emulator)["counters"]["commits_accepted_202"], 5);
}

/// A commit under way when the client leaves is let finish: the guard does not abort a session whose
/// commit may be creating the file, so the commit lands and the session is committed, not aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_the_commit_does_not_race_it_with_an_abort() {
    let app = spawn_app_with(Options {
        faults: plan(json!({"rules": [
            {"endpoint": "commit", "nth": 1, "times": 3, "action": {"type": "commit_accepted", "retry_after": 1}}
        ]})),
        ..Options::default()
    })
    .await;
    let port = app.address.rsplit(':').next().unwrap();
    let mut socket = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let size = THRESHOLD + PART * 2 + 1;
    let head =
        format!("PUT /v1/folders/0/files/gone.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&vec![3u8; size as usize]).await.unwrap();
    // Wait (bounded) until the commit is being polled, then vanish.
    let polled = || std::future::ready(inspect(&app.emulator)["counters"]["commits_accepted_202"] == 1);
    holds_within(Duration::from_secs(2), polled).await;
    drop(socket);
    app.assert_no_open_session().await;
    let seen = app.emulator.inspect();
    assert_eq!(seen.sessions.len(), 1);
    assert_eq!(
        serde_json::to_value(seen.sessions[0].state).unwrap(),
        "committed",
        "{:?}",
        seen.sessions
    );
    assert_eq!(seen.counters.aborts, 0, "no abort raced the commit");
    let file = seen.files.iter().find(|f| f.name == "gone.bin").expect("landed");
    assert_eq!(file.size, size);
}

/// A session Box creates after the client went away is aborted, not left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_after_the_client_left_is_aborted() {
    let app = spawn_app().await;
    // Every Box answer comes 600 ms late, so the client is gone before the session exists.
    app.emulator.set_faults(FaultPlan {
        delay_ms: 600,
        ..FaultPlan::default()
    });
    let port = app.address.rsplit(':').next().unwrap();
    let mut socket = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/folders/0/files/early.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        THRESHOLD * 2
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&[1u8; 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(socket);
    // The session comes, and goes.
    holds_within(Duration::from_secs(5), || {
        std::future::ready(!sessions(&app.emulator).is_empty())
    })
    .await;
    assert_eq!(sessions(&app.emulator).len(), 1, "Box made the session");
    app.assert_no_open_session().await;
    assert_eq!(sessions(&app.emulator)[0]["state"], "aborted");
}

const CLIENT_ID: &str = "hostile-client-id";

fn client_credentials() -> Options {
    Options {
        emulator: Some(Box::new(|c: &mut EmulatorConfig| {
            c.clients = vec![(CLIENT_ID.into(), secret("ccg_client_secret").into())];
            c.tokens = vec!["no-static-token-accepted".into()];
        })),
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "client_credentials".into();
            s.box_developer_token = None;
            s.box_client_id = Some(CLIENT_ID.into());
            s.box_client_secret = Some(Secret::new(secret("ccg_client_secret")));
            s.box_subject_type = Some("enterprise".into());
            s.box_subject_id = Some("1".into());
        })),
        ..Options::default()
    }
}

/// The token endpoint fails for longer than one refresh's retries: the uploads queued behind that
/// refresh share its failure (one round of token requests, not one per upload), then their own
/// retries meet the next refresh, which succeeds. None of them is failed as `box_auth_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_fails_for_a_while_is_waited_out_and_its_failure_shared() {
    let app = spawn_app_with(Options {
        box_retry_max_attempts: 4,
        ..client_credentials()
    })
    .await;
    // The first refresh's four attempts all fail, and the next one's first.
    app.emulator.expire_issued_tokens();
    app.emulator.set_faults(plan(json!({"rules": [
        {"endpoint": "token", "nth": 1, "times": 5, "action": {"type": "status", "status": 503}}
    ]})));
    let uploads = (0..8).map(|i| {
        let app = &app;
        async move { put(app, &format!("tok-{i}.bin"), 3000 + i * 100, "").await }
    });
    let answers = futures_util::future::join_all(uploads).await;
    for (a, sha1) in &answers {
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.body["upload"]["sha1"], sha1.as_str());
    }
    let token_calls = app.metric_with("gateway_box_calls_total", &["\"token\""]).await;
    // One refresh's four failed attempts and a few more, not four per upload.
    assert!(token_calls <= 10.0, "{token_calls} token requests");
    let shared = app
        .metric_with("gateway_box_token_requests_total", &["shared_failure"])
        .await;
    assert!(shared >= 1.0, "waiters shared the failed refresh");
}

/// Garbage in a raw socket's answer is not ours to test; but the gateway's own answer to a client
/// must stay JSON whatever Box said: read one raw, to see the content type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_error_is_json_even_when_box_answered_html() {
    let app = spawn_app_with(Options {
        faults: plan(json!({"rules": [{"endpoint": "upload_part", "action": {"type": "garbage_body", "kind": "html"}}]})),
        ..Options::default()
    })
    .await;
    let port = app.address.rsplit(':').next().unwrap();
    let mut socket = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let size = THRESHOLD + 1;
    let head = format!(
        "PUT /v1/folders/0/files/html.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&vec![9u8; size as usize]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(text.starts_with("http/1.1 502"), "{text}");
    assert!(text.contains("content-type: application/json"), "{text}");
    assert!(!text.contains("<html"), "{text}");
    app.assert_no_open_session().await;
}

fn passthrough() -> Options {
    Options {
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "passthrough".into();
            s.box_developer_token = None;
        })),
        ..Options::default()
    }
}

/// Sends only the head of an upload (its body announced, never sent) and reads the answer.
async fn head_only(app: &TestApp, head: &str) -> String {
    let port = app.address.rsplit(':').next().unwrap();
    let mut socket = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// Pass-through: a token Box refuses is 401 before any byte of the body is read, whether the body's
/// size is declared (buffered) or not (spooled); nothing reaches Box's upload API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_token_box_refuses_is_401_before_the_body() {
    let app = spawn_app_with(passthrough()).await;
    for head in [
        "PUT /v1/folders/0/files/x.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nContent-Length: 10485760\r\n\r\n",
        "PUT /v1/folders/0/files/y.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let answer = head_only(&app, head).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("\"unauthenticated\""), "{answer}");
    }
    let seen = inspect(&app.emulator);
    assert_eq!(seen["counters"]["sessions_created"], 0, "{seen}");
    assert_eq!(seen["counters"]["direct_uploads"], 0, "{seen}");
    // The verdict is cached: the second refusal did not ask Box again.
    let checks = app
        .metric_with("gateway_box_calls_total", &["\"users_me\"", "\"401\""])
        .await;
    assert_eq!(checks, 1.0, "one token, two requests, one check");
}

/// Pass-through with a token Box accepts: the upload lands; the check is made once per token while
/// its verdict is cached, and the token shows nowhere in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_token_box_accepts_is_checked_once_and_cached() {
    let app = spawn_app_with(passthrough()).await;
    for name in ["a.bin", "b.bin"] {
        let response = app
            .http
            .put(format!("{}/{name}", app.folder_url("0")))
            .bearer_auth(box_upload_gateway::emulator::DEV_TOKEN)
            .body(vec![5u8; 3000])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let checks = app
        .metric_with("gateway_box_calls_total", &["\"users_me\"", "\"200\""])
        .await;
    assert_eq!(checks, 1.0);
    assert!(!app
        .metrics_text()
        .await
        .contains(box_upload_gateway::emulator::DEV_TOKEN));
}
