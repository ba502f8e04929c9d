//! The real binary as a process: configuration errors, and no secret in anything it prints.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use box_upload_gateway::emulator::{Emulator, EmulatorConfig, FaultPlan, SessionState};
use futures_util::StreamExt;
use tokio::process::Command;

use crate::support::process::{anonymous_env, emulator_env, env_refs, small_parts, Gateway, BIN};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_naming_every_key() {
    let out = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("GATEWAY_PART_CONCURRENCY", "0")
        .env("BOX_API_URL", "not a url")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["part_concurrency", "box_api_url", "box_developer_token"] {
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_box_token_never_appears_in_logs_or_answers() {
    // Arrange: an emulator that accepts only our secret token, and the gateway binary using it.
    let secret = secret("developer_token");
    let emulator = Emulator::spawn(EmulatorConfig {
        tokens: vec![secret.into()],
        ..small_parts()
    })
    .await
    .unwrap();
    let mut env = emulator_env(&emulator);
    env.push(("BOX_DEVELOPER_TOKEN", secret.into()));
    env.push(("GATEWAY_ALLOW_ANONYMOUS", "true".into()));
    let gateway = Gateway::start(&env_refs(&env)).await;
    let url = gateway.url("/v1/folders/0/files/secret-test.bin");
    let http = reqwest::Client::new();

    // Act: one upload that works, one chunked and one direct that Box refuses (expired token).
    let ok = http
        .put(&url)
        .body(vec![1u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    emulator.set_faults(FaultPlan {
        expire_tokens: true,
        ..FaultPlan::default()
    });
    let refused = http
        .put(format!("{url}.2"))
        .body(vec![2u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    let refused_small = http
        .put(format!("{url}.3"))
        .body(vec![3u8; 10])
        .send()
        .await
        .unwrap();
    let metrics = http.get(gateway.url("/metrics")).send().await.unwrap();

    // Assert
    assert_eq!(ok.status(), 201);
    assert_eq!(refused.status(), 502);
    assert_eq!(refused_small.status(), 502);
    let answers = format!(
        "{}{}{}",
        refused.text().await.unwrap(),
        refused_small.text().await.unwrap(),
        metrics.text().await.unwrap()
    );
    let logs = gateway.finish().await;
    assert!(logs.contains("box_auth_failed"), "the failure is logged: {logs}");
    assert!(
        logs.contains("[redacted]"),
        "settings are logged with the token redacted"
    );
    assert!(!logs.contains(secret), "the token leaked into the logs: {logs}");
    assert!(
        !answers.contains(secret),
        "the token leaked into an answer or a metric"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_secrets_and_keys_never_appear_in_debug_logs() {
    // Arrange: client credentials from a secret file, an API key, a Box that will revoke tokens
    let emulator = Emulator::spawn(EmulatorConfig {
        clients: vec![("process-client".into(), secret("ccg_client_secret").into())],
        tokens: vec!["no-static-token-accepted".into()],
        ..small_parts()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, secret("ccg_client_secret")).unwrap();
    let keys_file = dir.path().join("keys.toml");
    write_keys_file(&keys_file, &[ApiKey::new("ops", secret("api_key_team"))]);
    let mut env = emulator_env(&emulator);
    env.extend([
        ("BOX_AUTH", "client_credentials".to_owned()),
        ("BOX_CLIENT_ID", "process-client".into()),
        ("BOX_CLIENT_SECRET_FILE", secret_file.display().to_string()),
        ("BOX_SUBJECT_ID", "1".into()),
        ("GATEWAY_API_KEYS_FILE", keys_file.display().to_string()),
    ]);
    let gateway = Gateway::start(&env_refs(&env)).await;
    let http = reqwest::Client::new();
    let upload = |name: &str, size: usize| {
        http.put(gateway.url(&format!("/v1/folders/0/files/{name}")))
            .header("X-API-Key", secret("api_key_team"))
            .body(vec![9u8; size])
            .send()
    };

    // Act: a chunked upload, revoked tokens, another upload (a refresh), a refused key
    let first = upload("one.bin", 1536 * 1024).await.unwrap();
    emulator.expire_issued_tokens();
    let second = upload("two.bin", 100).await.unwrap();
    let refused = http
        .put(gateway.url("/v1/folders/0/files/x.bin"))
        .header("X-API-Key", "not-the-key")
        .body("x")
        .send()
        .await
        .unwrap();
    let metrics = http
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // Assert
    assert_eq!(
        (
            first.status().as_u16(),
            second.status().as_u16(),
            refused.status().as_u16()
        ),
        (201, 201, 401)
    );
    let tokens = emulator.issued_tokens();
    assert_eq!(tokens.len(), 2);
    let logs = gateway.finish().await;
    assert!(
        logs.contains("\"key\":\"ops\""),
        "the key's name is logged: {logs}"
    );
    assert!(metrics.contains("key=\"ops\""), "{metrics}");
    for leak in [secret("ccg_client_secret"), secret("api_key_team")]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(!logs.contains(leak), "a secret leaked into the logs: {logs}");
        assert!(!metrics.contains(leak), "a secret leaked into the metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_named_at_start() {
    let emulator = Emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let mut env = emulator_env(&emulator);
    env.extend([
        ("BOX_AUTH", "client_credentials".to_owned()),
        (
            "BOX_CLIENT_ID",
            box_upload_gateway::emulator::DEV_CLIENT_ID.into(),
        ),
        ("BOX_CLIENT_SECRET", secret("ccg_wrong_secret").into()),
        ("BOX_SUBJECT_ID", "1".into()),
        ("GATEWAY_ALLOW_ANONYMOUS", "true".into()),
    ]);
    let mut gateway = Gateway::start(&env_refs(&env)).await;

    // The start-up check's verdict, within a bounded wait. The check runs beside the server's start,
    // so its line may come before the one that says where the gateway listens.
    let refusal = |line: &str| line.contains("credentials") && line.contains("\"level\":\"ERROR\"");
    let early = gateway.logs.lines().find(|l| refusal(l)).map(str::to_owned);
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        if let Some(line) = early {
            return line;
        }
        loop {
            let line = gateway.next_line().await.expect("the gateway is running");
            if refusal(&line) {
                return line;
            }
        }
    })
    .await
    .expect("the refusal is logged at start");
    let logs = gateway.finish().await;

    assert!(
        line.contains("client_credentials") && line.contains("invalid_client"),
        "{line}"
    );
    assert!(!logs.contains(secret("ccg_wrong_secret")), "{logs}");
}

/// A body sent in `chunks` pieces of 64 KiB, `pause` before each: a client on a slow link. Its bytes
/// depend on `seed`; returns the body and the SHA-1 of its bytes.
fn paced_body(chunks: usize, pause: Duration, seed: u8) -> (reqwest::Body, String) {
    use sha1::{Digest, Sha1};
    let piece = move |i: usize| bytes::Bytes::from(vec![seed.wrapping_add(i as u8); 64 * 1024]);
    let mut sha1 = Sha1::new();
    (0..chunks).for_each(|i| sha1.update(piece(i)));
    let stream = futures_util::stream::iter(0..chunks).then(move |i| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(piece(i))
    });
    (reqwest::Body::wrap_stream(stream), hex::encode(sha1.finalize()))
}

/// Starts a raw upload of `chunks` × 64 KiB named `name`, its size declared in `Upload-Length`.
fn start_paced_upload(
    http: &reqwest::Client,
    gateway: &Gateway,
    name: &str,
    chunks: usize,
    pause: Duration,
    seed: u8,
) -> (
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    String,
) {
    let (body, sha1) = paced_body(chunks, pause, seed);
    let request = http
        .put(gateway.url(&format!("/v1/folders/0/files/{name}")))
        .header("Upload-Length", (chunks * 64 * 1024).to_string())
        .body(body)
        .send();
    (tokio::spawn(request), sha1)
}

/// SIGTERM during uploads: the one that can finish within the grace period lands whole; the one that
/// cannot is stopped, answered 503 `draining` and its session aborted; a new upload gets 503
/// `draining` with `Retry-After` and `/readyz` says draining; the emulator holds no open session; the
/// process exits 0 within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_uploads_in_flight_then_exits_0() {
    let emulator = Emulator::spawn(small_parts()).await.unwrap();
    let mut env = anonymous_env(&emulator);
    env.extend([
        ("GATEWAY_SHUTDOWN_GRACE_SECS", "3".into()),
        ("GATEWAY_READINESS_CHECK_INTERVAL_SECS", "1".into()),
        ("RUST_LOG", "info".into()),
    ]);
    let mut gateway = Gateway::start(&env_refs(&env)).await;
    let http = reqwest::Client::new();
    gateway.wait_ready(&http).await;

    // Two uploads of 2 MiB (8 parts): one done in about 1.3 s, one that would take 8 s.
    let (quick, quick_sha1) =
        start_paced_upload(&http, &gateway, "quick.bin", 32, Duration::from_millis(40), 1);
    let (slow, _) = start_paced_upload(&http, &gateway, "slow.bin", 32, Duration::from_millis(250), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = http
        .put(gateway.url("/v1/folders/0/files/late.bin"))
        .body(vec![3u8; 100])
        .send()
        .await
        .unwrap();
    let readyz = http.get(gateway.url("/readyz")).send().await.unwrap();
    let healthz = http.get(gateway.url("/healthz")).send().await.unwrap();
    let (status, after_sigterm) = gateway.wait_exit(Duration::from_secs(10)).await;
    let quick = quick.await.unwrap().expect("the quick upload is answered");
    let slow = slow.await.unwrap().expect("the stopped upload is answered");

    // New work is refused while draining; the process is still alive for probes.
    assert_eq!(late.status(), 503);
    assert_eq!(late.headers()["retry-after"], "5");
    let late: serde_json::Value = late.json().await.unwrap();
    assert_eq!(late["error"]["code"], "draining", "{late}");
    assert_eq!(readyz.status(), 503);
    let readyz: serde_json::Value = readyz.json().await.unwrap();
    assert_eq!(readyz["reason"], "draining", "{readyz}");
    assert_eq!(healthz.status(), 200, "liveness holds while draining");

    // The quick upload landed whole; the slow one was stopped with a clear error.
    assert_eq!(quick.status(), 201);
    let quick: serde_json::Value = quick.json().await.unwrap();
    assert_eq!(quick["file"]["sha1"], quick_sha1.as_str(), "{quick}");
    assert_eq!(slow.status(), 503);
    let slow: serde_json::Value = slow.json().await.unwrap();
    assert_eq!(slow["error"]["code"], "draining", "{slow}");

    // Box holds the quick file and nothing of the slow one; no session is left open.
    let state = emulator.inspect();
    let names: Vec<_> = state
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.sha1.as_str()))
        .collect();
    assert_eq!(names, [("quick.bin", quick_sha1.as_str())]);
    let sessions: Vec<_> = state
        .sessions
        .iter()
        .map(|s| (s.file_name.as_str(), s.state))
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(
        sessions.contains(&("quick.bin", SessionState::Committed)),
        "{sessions:?}"
    );
    assert!(
        sessions.contains(&("slow.bin", SessionState::Aborted)),
        "{sessions:?}"
    );

    // Exit 0 within the grace period (3 s), counted from SIGTERM.
    assert!(status.success(), "exit status {status}: {}", gateway.logs);
    assert!(
        after_sigterm < Duration::from_secs(3),
        "exited {after_sigterm:?} after SIGTERM"
    );
    assert!(gateway.logs.contains("drained"), "{}", gateway.logs);
}

/// `serve --emulator`: the embedded emulator stays up until the gateway has drained, so an upload in
/// flight at SIGTERM still lands, and the emulator stops after the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_emulator_keeps_the_emulator_up_until_drained() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let mut gateway = Gateway::start_with(
        &["--emulator", "--emulator-data-dir", data_dir],
        &[
            ("GATEWAY_SHUTDOWN_GRACE_SECS", "5"),
            ("GATEWAY_READINESS_CHECK_INTERVAL_SECS", "1"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    gateway.wait_ready(&http).await;

    let (upload, sha1) =
        start_paced_upload(&http, &gateway, "in-flight.bin", 24, Duration::from_millis(60), 7);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.sigterm();
    let (status, _) = gateway.wait_exit(Duration::from_secs(10)).await;
    let upload = upload.await.unwrap().unwrap();

    assert_eq!(upload.status(), 201, "the emulator was still there after SIGTERM");
    let upload: serde_json::Value = upload.json().await.unwrap();
    assert_eq!(upload["file"]["sha1"], sha1.as_str());
    assert!(status.success(), "{}", gateway.logs);
    let drained = gateway.logs.find("\"drained\"").expect("drain logged");
    let stopped = gateway
        .logs
        .find("Box emulator stopped")
        .expect("emulator stop logged");
    assert!(
        drained < stopped,
        "the emulator stops after the drain: {}",
        gateway.logs
    );
}

/// A loopback OTLP/HTTP collector: keeps every `POST /v1/traces` body.
async fn start_collector() -> (
    String,
    Arc<Mutex<Vec<bytes::Bytes>>>,
    actix_web::dev::ServerHandle,
) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = web::Data::new(bodies.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new().app_data(kept.clone()).route(
            "/v1/traces",
            web::post().to(
                |body: bytes::Bytes, kept: web::Data<Arc<Mutex<Vec<bytes::Bytes>>>>| async move {
                    kept.lock().unwrap().push(body);
                    HttpResponse::Ok().content_type("application/x-protobuf").finish()
                },
            ),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, bodies, handle)
}

/// One exported span: name, trace id, span id, parent span id (hex).
#[derive(Debug)]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

fn decode_spans(bodies: &[bytes::Bytes]) -> Vec<Exported> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let mut spans = Vec::new();
    for body in bodies {
        let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("an OTLP protobuf body");
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| Exported {
                    name: s.name,
                    trace_id: hex::encode(s.trace_id),
                    span_id: hex::encode(s.span_id),
                    parent: hex::encode(s.parent_span_id),
                }));
            }
        }
    }
    spans
}

/// Traces over OTLP/HTTP to a loopback collector: the request's span joins the caller's
/// `traceparent`; the upload's span is its child; the session, every part and the commit are the
/// upload's children; log lines carry the trace id. Spans are flushed when the process stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_a_collector_joined_to_the_callers_traceparent() {
    let (collector, bodies, collector_handle) = start_collector().await;
    let emulator = Emulator::spawn(small_parts()).await.unwrap();
    let mut env = anonymous_env(&emulator);
    env.extend([("GATEWAY_OTLP_ENDPOINT", collector), ("RUST_LOG", "info".into())]);
    let mut gateway = Gateway::start(&env_refs(&env)).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";

    let answer = reqwest::Client::new()
        .put(gateway.url("/v1/folders/0/files/traced.bin"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body(vec![5u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    gateway.sigterm();
    let (status, _) = gateway.wait_exit(Duration::from_secs(10)).await;
    collector_handle.stop(false).await;

    assert!(status.success(), "{}", gateway.logs);
    let spans = decode_spans(&bodies.lock().unwrap());
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let request = named("request");
    assert_eq!(request.len(), 1, "{spans:#?}");
    assert_eq!(request[0].trace_id, trace_id);
    assert_eq!(request[0].parent, caller_span, "joined to the caller's span");
    let upload = named("upload");
    assert_eq!(upload.len(), 1, "{spans:#?}");
    assert_eq!(upload[0].parent, request[0].span_id);
    for (name, count) in [
        ("box.create_session", 1),
        ("box.upload_part", 8),
        ("box.commit", 1),
    ] {
        let children = named(name);
        assert_eq!(children.len(), count, "{name}: {spans:#?}");
        for child in children {
            assert_eq!(child.trace_id, trace_id, "{name}");
            assert_eq!(child.parent, upload[0].span_id, "{name} is a child of the upload");
        }
    }
    let logged = format!("\"trace_id\":\"{trace_id}\"");
    assert!(
        gateway.logs.contains(&logged),
        "log lines carry the trace id: {}",
        gateway.logs
    );
}
