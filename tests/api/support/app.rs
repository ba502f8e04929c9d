//! One fresh gateway and one fresh emulator per test, both on loopback port 0, and what a test asks
//! of them (the metrics, what Box holds).
use std::future::ready;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{Emulator, EmulatorConfig, EmulatorHandle, FaultPlan, DEV_TOKEN};
use box_upload_gateway::metrics::GatewayMetrics;
use box_upload_gateway::startup::Application;
use serde_json::Value;

use super::files::sha1_of_path;
use super::http::{curl, put_raw_with, RawAnswer};
use super::wait::holds_within;

/// Small sizes keep the tests fast while exercising every boundary.
pub const PART: u64 = 256 * 1024;
pub const THRESHOLD: u64 = 1024 * 1024;

pub struct TestApp {
    pub address: String,
    /// The embedded state store's directory, removed with the app.
    pub state_dir: Arc<tempfile::TempDir>,
    pub emulator: EmulatorHandle,
    pub metrics: Arc<GatewayMetrics>,
    pub http: reqwest::Client,
}

pub type EmulatorChange = Box<dyn FnOnce(&mut EmulatorConfig)>;
pub type GatewayChange = Box<dyn FnOnce(&mut Settings, &EmulatorHandle)>;

pub struct Options {
    pub part_size: u64,
    pub threshold: u64,
    pub part_concurrency: usize,
    pub memory_budget_bytes: u64,
    pub spool_max_bytes: u64,
    pub faults: FaultPlan,
    pub conflicts_as_array: bool,
    pub storage_limit_bytes: Option<u64>,
    pub commit_timeout_secs: u64,
    pub max_file_size_bytes: u64,
    pub box_request_timeout_secs: u64,
    pub box_retry_max_attempts: u32,
    pub client_idle_timeout_secs: u64,
    pub readiness_check_interval_secs: u64,
    /// Changes to the emulator's configuration after the options above are applied.
    pub emulator: Option<EmulatorChange>,
    /// Changes to the gateway's settings after the options above are applied (credentials, keys).
    pub gateway: Option<GatewayChange>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            part_size: PART,
            threshold: THRESHOLD,
            part_concurrency: 3,
            memory_budget_bytes: 16 * 1024 * 1024,
            spool_max_bytes: 64 * 1024 * 1024,
            faults: FaultPlan::default(),
            conflicts_as_array: false,
            storage_limit_bytes: None,
            commit_timeout_secs: 30,
            max_file_size_bytes: 0,
            box_request_timeout_secs: 30,
            box_retry_max_attempts: 6,
            client_idle_timeout_secs: 60,
            readiness_check_interval_secs: 10,
            emulator: None,
            gateway: None,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(mut o: Options) -> TestApp {
    // Logs go through the test harness's capture: shown only for failing tests.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
    box_upload_gateway::http_client::install_tls_provider();
    let mut config = EmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        part_size: Some(o.part_size),
        min_chunked_size: o.threshold,
        conflicts_as_array: o.conflicts_as_array,
        storage_limit_bytes: o.storage_limit_bytes,
        faults: std::mem::take(&mut o.faults),
        ..EmulatorConfig::default()
    };
    if let Some(change) = o.emulator.take() {
        change(&mut config);
    }
    let emulator = Emulator::spawn(config).await.expect("emulator starts");
    let gateway = start_gateway(&emulator, o).await;
    TestApp {
        address: gateway.address,
        state_dir: gateway.state_dir,
        emulator,
        metrics: gateway.metrics,
        http: reqwest::Client::new(),
    }
}

/// A gateway without its own emulator: another replica in front of a `TestApp`'s.
pub struct Replica {
    pub address: String,
    pub metrics: Arc<GatewayMetrics>,
    pub state_dir: Arc<tempfile::TempDir>,
}

/// Another gateway in front of `app`'s emulator (`o`'s emulator options are not used).
pub async fn spawn_replica(app: &TestApp, o: Options) -> Replica {
    start_gateway(&app.emulator, o).await
}

async fn start_gateway(emulator: &EmulatorHandle, o: Options) -> Replica {
    let state_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        state_dir: state_dir.path().display().to_string(),
        workers: 1,
        box_api_url: emulator.api_url(),
        box_upload_url: emulator.upload_url(),
        box_token_url: emulator.token_url(),
        box_developer_token: Some(Secret::new(DEV_TOKEN)),
        part_concurrency: o.part_concurrency,
        memory_budget_bytes: o.memory_budget_bytes,
        chunked_threshold_bytes: o.threshold,
        spool_max_bytes: o.spool_max_bytes,
        box_retry_base_delay_ms: 10,
        box_retry_max_delay_ms: 200,
        commit_timeout_secs: o.commit_timeout_secs,
        max_file_size_bytes: o.max_file_size_bytes,
        box_request_timeout_secs: o.box_request_timeout_secs,
        box_retry_max_attempts: o.box_retry_max_attempts,
        client_idle_timeout_secs: o.client_idle_timeout_secs,
        readiness_check_interval_secs: o.readiness_check_interval_secs,
        // The tests' gateways are reached only from the test itself.
        allow_anonymous: true,
        // The emulator enforces no rate limit unless a test asks (tests/api/rate_limits.rs), so
        // neither does the gateway: tests that send hundreds of uploads are not paced to Box's.
        box_rate_calls_per_minute: 0,
        box_rate_uploads_per_minute: 0,
        ..Settings::default()
    };
    if let Some(change) = o.gateway {
        change(&mut settings, emulator);
    }
    let valid = settings.validate().expect("test settings are valid");
    let app = Application::build(&valid).expect("gateway starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let metrics = app.metrics();
    // Stopped with the test (no signal handlers in the test process).
    tokio::spawn(app.run_until(std::future::pending()));
    Replica {
        address,
        metrics,
        state_dir,
    }
}

impl TestApp {
    pub fn folder_url(&self, folder_id: &str) -> String {
        format!("{}/v1/folders/{folder_id}/files", self.address)
    }

    /// `curl -F file=@path;filename=name` plus extra fields, to folder 0 unless `url` says otherwise.
    pub async fn curl_upload(
        &self,
        url: &str,
        path: &Path,
        filename: &str,
        fields: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut args: Vec<String> = Vec::new();
        for (k, v) in fields {
            args.push("-F".into());
            args.push(format!("{k}={v}"));
        }
        args.push("-F".into());
        args.push(format!("file=@{};filename={filename}", path.display()));
        args.push(url.into());
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
    }

    /// Asserts what Box holds for the answered upload: the bytes, byte for byte, by SHA-1.
    pub fn assert_stored(&self, answer: &Value, sha1: &str, size: u64) {
        let id = answer["file"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no file id in {answer}"));
        assert_eq!(answer["upload"]["sha1"], sha1, "{answer}");
        assert_eq!(answer["upload"]["size"], size, "{answer}");
        assert_eq!(answer["file"]["sha1"], sha1, "{answer}");
        let path = self.emulator.file_path(id).expect("the emulator has the file");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert_eq!(sha1_of_path(&path), sha1);
    }

    /// `GET /metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }

    /// The sum of the samples whose line starts with `name`.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_with(name, &[]).await
    }

    /// The sum of the samples whose line starts with `name` and holds every one of `labels`.
    pub async fn metric_with(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (bounded) until no session is left open in the emulator.
    pub async fn assert_no_open_session(&self) {
        let closed = holds_within(Duration::from_secs(5), || {
            ready(open_sessions(&self.emulator) == 0)
        });
        assert!(
            closed.await,
            "sessions left open: {:#?}",
            serde_json::to_value(self.emulator.inspect()).unwrap()["sessions"]
        );
    }

    /// `PUT /v1/folders/0/files/{name}` (`name` may carry a query) with `body` and `headers`.
    pub async fn put_raw(&self, name: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> RawAnswer {
        put_raw_with(&self.http, &self.address, name, body, headers).await
    }
}

pub fn inspect(emulator: &EmulatorHandle) -> Value {
    serde_json::to_value(emulator.inspect()).unwrap()
}

pub fn sessions(emulator: &EmulatorHandle) -> Vec<Value> {
    inspect(emulator)["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn open_sessions(emulator: &EmulatorHandle) -> usize {
    sessions(emulator).iter().filter(|s| s["state"] == "open").count()
}

/// The file Box holds under `id`: its size and SHA-1.
pub fn assert_file(app: &TestApp, id: &str, sha1: &str, size: u64) {
    let path = app.emulator.file_path(id).expect("the emulator has the file");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    assert_eq!(sha1_of_path(&path), sha1);
}

/// The one session of the emulator: committed, in exact parts of `part_size` (the last shorter).
pub fn assert_exact_parts(app: &TestApp, size: u64, part_size: u64) {
    let all = sessions(&app.emulator);
    assert_eq!(all.len(), 1, "one Box session for the whole upload: {all:#?}");
    let session = &all[0];
    assert_eq!(session["state"], "committed", "{session}");
    let parts = session["parts"].as_array().unwrap();
    assert_eq!(parts.len() as u64, size.div_ceil(part_size));
    for (i, part) in parts.iter().enumerate() {
        let offset = i as u64 * part_size;
        assert_eq!(part["offset"], offset);
        assert_eq!(part["size"], part_size.min(size - offset), "{part}");
    }
}
