//! One fresh gateway and one fresh emulator per test, both on loopback port 0.
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{Emulator, EmulatorConfig, EmulatorHandle, FaultPlan, DEV_TOKEN};
use box_upload_gateway::metrics::GatewayMetrics;
use box_upload_gateway::startup::Application;
use serde_json::Value;
use sha1::{Digest, Sha1};

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

/// A knob of the longer runs (`SOAK_UPLOADS`, `FUZZ_HTTP_CASES`, ...): the variable, else `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A file of `size` pseudo-random bytes and its SHA-1 (hex).
pub fn make_file(size: u64) -> (tempfile::NamedTempFile, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut hasher = Sha1::new();
    let mut state = size.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for b in buf[..n].chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b.copy_from_slice(&state.to_le_bytes()[..b.len()]);
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
    (file, hex::encode(hasher.finalize()))
}

pub fn sha1_of_path(path: &Path) -> String {
    let mut hasher = Sha1::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// The status and JSON answer of a `curl` run (`-w` appends the status on the last line).
pub async fn curl(args: &[&str]) -> (u16, Value) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("the tests need curl on the PATH (Debian: apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status.trim().parse().unwrap_or(0), json)
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
        for _ in 0..100 {
            if open_sessions(&self.emulator) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "sessions left open: {:#?}",
            serde_json::to_value(self.emulator.inspect()).unwrap()["sessions"]
        );
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

/// A secret from tests/secrets.txt: the CI scan of the suite's debug log looks for every one of them.
pub fn secret(name: &str) -> &'static str {
    include_str!("../secrets.txt")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("tests/secrets.txt has no {name}"))
}

/// The hex SHA-256 of an API key, as the keys file stores it.
pub fn sha256_hex(key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// An API key named `name` for folder 0, with no limits of its own; its secret is `secret_name` in
/// tests/secrets.txt.
pub fn folder_zero_key(name: &str, secret_name: &str) -> box_upload_gateway::access::ApiKeyConfig {
    box_upload_gateway::access::ApiKeyConfig {
        name: name.into(),
        sha256: sha256_hex(secret(secret_name)),
        folders: vec!["0".into()],
        max_file_size_bytes: None,
        as_user: None,
        subject_type: None,
        subject_id: None,
        webhook_url: None,
        webhook_secret: None,
        webhook_secret_file: None,
        path_root: None,
        max_uploads_per_minute: None,
        max_bytes_per_day: None,
    }
}

/// An upload link for folder 0, made by the key whose secret is `secret_name`, for files up to
/// `max_file_size_bytes`: its token.
pub async fn upload_link(app: &TestApp, secret_name: &str, max_file_size_bytes: u64) -> String {
    let answer: Value = app
        .http
        .post(format!("{}/v1/upload-links", app.address))
        .header("X-API-Key", secret(secret_name))
        .json(&serde_json::json!({
            "folder_id": "0",
            "expires_in_secs": 3600,
            "max_file_size_bytes": max_file_size_bytes,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = answer["url"]
        .as_str()
        .unwrap_or_else(|| panic!("a link: {answer}"));
    url.rsplit('/').next().unwrap().to_owned()
}

/// What a `raw_request` got back.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub json: Value,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }
}

/// One HTTP chunk of a `Transfer-Encoding: chunked` body (an empty `data` ends the body).
pub fn http_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// A raw HTTP/1.1 request on a connection of its own, for clients no library would be: `head` is the
/// request line and headers (no blank line); the body goes as `pieces`, each written after `pause`.
/// The answer is read meanwhile: once it comes (the gateway may answer before the body is whole) the
/// sending stops. `None` when no answer came within `deadline`.
pub async fn raw_request(
    address: &str,
    head: &str,
    pieces: impl IntoIterator<Item = Vec<u8>>,
    pause: Duration,
    deadline: Duration,
) -> Option<RawAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let socket = tokio::net::TcpStream::connect(host).await.ok()?;
    let (mut reader, mut writer) = socket.into_split();
    let writing = async move {
        if writer
            .write_all(format!("{head}\r\n\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        for piece in pieces {
            tokio::time::sleep(pause).await;
            if writer.write_all(&piece).await.is_err() {
                return;
            }
        }
        // Keep the connection open (a half-close could read as the end of the request).
        std::future::pending::<()>().await;
    };
    let reading = async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let json = serde_json::from_slice(&buf[end + 4..end + 4 + length]).unwrap_or(Value::Null);
                    return Some(RawAnswer {
                        status,
                        headers,
                        json,
                    });
                }
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(deadline, async {
        tokio::select! {
            answer = reading => answer,
            () = writing => None,
        }
    })
    .await
    .ok()
    .flatten()
}

/// A client that declares `size` bytes and then sends `piece` bytes every `every`: far below any
/// minimum rate, yet never idle for long. Its answer, or `None` within `deadline`.
pub async fn trickle(
    address: &str,
    name: &str,
    size: u64,
    piece: usize,
    every: Duration,
    deadline: Duration,
) -> Option<RawAnswer> {
    let head = format!("PUT /v1/folders/0/files/{name} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {size}");
    let pieces = (0..size / piece as u64).map(move |_| vec![b't'; piece]);
    raw_request(address, &head, pieces, every, deadline).await
}
