//! The real binary as a process: configuration errors, and no secret in anything it prints.
use std::process::Stdio;
use std::time::Duration;

use box_upload_gateway::emulator::{Emulator, EmulatorConfig, FaultPlan};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_box-upload-gateway");

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
    let secret = "s3cr3t-box-token-4f9a1c";
    let emulator = Emulator::spawn(EmulatorConfig {
        tokens: vec![secret.into()],
        part_size: Some(256 * 1024),
        min_chunked_size: 1024 * 1024,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("BOX_API_URL", emulator.api_url())
        .env("BOX_UPLOAD_URL", emulator.upload_url())
        .env("BOX_TOKEN_URL", emulator.token_url())
        .env("BOX_DEVELOPER_TOKEN", secret)
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_CHUNKED_THRESHOLD_BYTES", "1048576")
        .env("GATEWAY_MEMORY_BUDGET_BYTES", "8388608")
        .env("GATEWAY_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut logs = String::new();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).await.unwrap() > 0,
                "the gateway exited: {logs}"
            );
            logs.push_str(&line);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(port) = v["port"].as_u64() {
                    return port;
                }
            }
        }
    })
    .await
    .expect("the gateway says where it listens");
    let url = format!("http://127.0.0.1:{port}/v1/folders/0/files/secret-test.bin");
    box_upload_gateway::startup::install_tls_provider();
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
    let metrics = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();

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
    child.start_kill().unwrap();
    stdout.read_to_string(&mut logs).await.unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
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
