//! The real binary as a process (its own memory, its signals, its logs), in front of an emulator the
//! test runs.
use std::process::Stdio;
use std::time::Duration;

use box_upload_gateway::emulator::{EmulatorConfig, EmulatorHandle, DEV_TOKEN};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::app::{PART, THRESHOLD};

pub const BIN: &str = env!("CARGO_BIN_EXE_box-upload-gateway");

/// The real binary, started with `env` only, its port read from its first JSON log lines.
pub struct Gateway {
    _state_dir: tempfile::TempDir,
    child: tokio::process::Child,
    stdout: BufReader<tokio::process::ChildStdout>,
    /// What it printed so far.
    pub logs: String,
    port: u16,
}

impl Gateway {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], env).await
    }

    /// `serve` with more arguments (`--emulator`).
    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let state_dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env_clear()
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_CHUNKED_THRESHOLD_BYTES", "1048576")
            .env("GATEWAY_MEMORY_BUDGET_BYTES", "8388608")
            .env("GATEWAY_LOG_FORMAT", "json")
            // Each process its own embedded state store (redb allows one process per file), unless
            // `env` names one.
            .env("GATEWAY_STATE_DIR", state_dir.path())
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
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
                        return port as u16;
                    }
                }
            }
        })
        .await
        .expect("the gateway says where it listens");
        box_upload_gateway::http_client::install_tls_provider();
        Self {
            _state_dir: state_dir,
            child,
            stdout,
            logs,
            port,
        }
    }

    /// The process's id, to read its memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the gateway is running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next line it prints (kept in `logs` too); `None` once its output is closed.
    pub async fn next_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line).await.unwrap() {
            0 => None,
            _ => {
                self.logs.push_str(&line);
                Some(line)
            }
        }
    }

    /// Stops the process and returns everything it printed.
    pub async fn finish(mut self) -> String {
        self.child.start_kill().unwrap();
        self.stdout.read_to_string(&mut self.logs).await.unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        self.logs + &stderr
    }

    /// Polls `/readyz` until it answers 200 (the first Box check is done), within a bounded wait.
    pub async fn wait_ready(&self, http: &reqwest::Client) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let ready = http.get(self.url("/readyz")).send().await.unwrap();
                if ready.status() == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the gateway becomes ready");
    }

    pub fn sigterm(&self) {
        let pid = self.pid().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Reads the rest of its output while waiting for it to exit, within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        let mut rest = String::new();
        let status = tokio::time::timeout(limit, async {
            self.stdout.read_to_string(&mut rest).await.unwrap();
            self.child.wait().await.unwrap()
        })
        .await
        .unwrap_or_else(|_| panic!("the gateway did not exit within {limit:?}: {}", self.logs));
        self.logs.push_str(&rest);
        (status, started.elapsed())
    }
}

/// Where the gateway finds `emulator`.
pub fn emulator_env(emulator: &EmulatorHandle) -> Vec<(&'static str, String)> {
    vec![
        ("BOX_API_URL", emulator.api_url()),
        ("BOX_UPLOAD_URL", emulator.upload_url()),
        ("BOX_TOKEN_URL", emulator.token_url()),
    ]
}

/// `emulator_env`, the emulator's development token, and no API keys: the usual test gateway.
pub fn anonymous_env(emulator: &EmulatorHandle) -> Vec<(&'static str, String)> {
    let mut env = emulator_env(emulator);
    env.extend([
        ("BOX_DEVELOPER_TOKEN", DEV_TOKEN.to_owned()),
        ("GATEWAY_ALLOW_ANONYMOUS", "true".to_owned()),
    ]);
    env
}

pub fn env_refs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An emulator with the in-process tests' small sizes (parts of `PART`, chunked from `THRESHOLD`),
/// matching `Gateway`'s chunked threshold.
pub fn small_parts() -> EmulatorConfig {
    EmulatorConfig {
        part_size: Some(PART),
        min_chunked_size: THRESHOLD,
        ..EmulatorConfig::default()
    }
}
