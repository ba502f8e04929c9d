//! A completion-event receiver on loopback (tests/python/webhook_receiver.py), which checks every
//! signature with the `standardwebhooks` package as an application would, and a gateway set to send
//! to it.
use std::future::ready;
use std::time::Duration;

use box_upload_gateway::box_api::Secret;
use serde_json::Value;

use super::app::Options;
use super::http::free_port;
use super::keys::secret;
use super::python::{python, script};
use super::wait::holds_within;

/// Both secrets of a rotation sign; the receiver checks each on its own.
pub fn secrets() -> String {
    format!("{} {}", secret("webhook_secret"), secret("webhook_secret_next"))
}

/// The receiver process; what it got is in its log file, one JSON line per request.
pub struct Receiver {
    port: u16,
    log: std::path::PathBuf,
    _dir: std::sync::Arc<tempfile::TempDir>,
    child: Option<tokio::process::Child>,
    /// What it answers a verified event (set before `start`).
    pub status: u16,
    /// The secrets it checks each request with, each on its own (`verified` has one entry each).
    secrets: Vec<&'static str>,
    /// Accepts a request that one secret verifies (not only one that all do).
    accept_any: bool,
}

impl Receiver {
    /// Where it will listen, not started yet (a receiver that is down); it checks the gateway's
    /// secrets.
    pub fn planned() -> Self {
        Self::planned_with(&[secret("webhook_secret"), secret("webhook_secret_next")])
    }

    /// `planned`, checking with `secrets`.
    pub fn planned_with(secrets: &[&'static str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            port: free_port(),
            log: dir.path().join("events.jsonl"),
            _dir: std::sync::Arc::new(dir),
            child: None,
            status: 204,
            secrets: secrets.to_vec(),
            accept_any: false,
        }
    }

    pub async fn started() -> Self {
        let mut r = Self::planned();
        r.start().await;
        r
    }

    /// A receiver that checks each request with every one of `secrets` and takes it when one of
    /// them verifies (its log says which).
    pub async fn started_checking(secrets: &[&'static str]) -> Self {
        let mut r = Self::planned_with(secrets);
        r.accept_any = true;
        r.start().await;
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    pub async fn start(&mut self) {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(python());
        command
            .arg(script("webhook_receiver.py"))
            .arg(self.port.to_string())
            .arg(&self.log);
        for s in &self.secrets {
            command.args(["--secret", s]);
        }
        if self.accept_any {
            command.args(["--accept", "any"]);
        }
        let mut child = command
            .args(["--status", &self.status.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), out.read_line(&mut line))
            .await
            .expect("the receiver starts")
            .unwrap();
        assert_eq!(line.trim(), "listening");
        self.child = Some(child);
    }

    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// What came in once `n` requests did, or by `within` (generous: a bound, not a wait).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        holds_within(within, || ready(self.received().len() >= n)).await;
        self.received()
    }
}

pub fn with_webhooks(url: String, o: Options) -> Options {
    let previous = o.gateway;
    Options {
        gateway: Some(Box::new(move |s, e| {
            if let Some(change) = previous {
                change(s, e);
            }
            s.webhook_url = Some(url);
            s.webhook_secret = Some(Secret::new(secrets()));
            // Fast retries: the schedule is the same, only shorter.
            s.webhook_min_backoff_ms = 100;
            s.webhook_max_backoff_secs = 1;
        })),
        ..o
    }
}

/// Every request the receiver got was signed by every secret it checks with, and is an event.
pub fn assert_verified(got: &[Value]) {
    for g in got {
        let verified = g["verified"].as_array().unwrap();
        assert!(verified.iter().all(|v| v == true), "{g}");
        assert!(g["id"].as_str().unwrap().starts_with("msg_"), "{g}");
        assert!(g["event"]["timestamp"].is_string(), "{g}");
    }
}
