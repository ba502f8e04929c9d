//! Settings: built-in defaults < TOML file < environment, validated once at start into typed values.
//!
//! Environment names: `BOX_*` for the Box side (`BOX_API_URL` sets `box_api_url`), `GATEWAY_*` for
//! the rest (`GATEWAY_PART_CONCURRENCY` sets `part_concurrency`). Every key is listed, with its default,
//! in the README's configuration table.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::access::ApiKeyConfig;
use crate::box_api::{Grant, JwtApp, Secret, SecretSource, Subject, SubjectType};

/// The most a direct upload may carry: Box advises direct uploads only up to about 50 MB.
pub const MAX_CHUNKED_THRESHOLD: u64 = 50_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the gateway listens on (`GATEWAY_LISTEN`).
    pub listen: String,
    /// Worker threads for HTTP (0 = one per core).
    pub workers: usize,
    /// Open client connections at most, over all workers; more wait in the kernel's accept queue.
    /// Each costs memory outside the budget (actix-http's buffers), so this caps that too.
    pub max_connections: usize,
    pub box_api_url: String,
    pub box_upload_url: String,
    pub box_token_url: String,
    /// How the gateway authenticates to Box: developer_token | client_credentials | jwt | passthrough.
    pub box_auth: String,
    /// `developer_token`: a Box developer token (or any access token) used for every call.
    #[serde(serialize_with = "redacted")]
    pub box_developer_token: Option<Secret>,
    #[serde(deserialize_with = "string_like")]
    pub box_developer_token_file: Option<String>,
    /// `client_credentials`: the app's client id and secret.
    #[serde(deserialize_with = "string_like")]
    pub box_client_id: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub box_client_secret: Option<Secret>,
    #[serde(deserialize_with = "string_like")]
    pub box_client_secret_file: Option<String>,
    /// `client_credentials` and `jwt`: `enterprise` or `user`, and its id (`jwt` defaults to the
    /// enterprise in the config file).
    #[serde(deserialize_with = "string_like")]
    pub box_subject_type: Option<String>,
    #[serde(deserialize_with = "string_like")]
    pub box_subject_id: Option<String>,
    /// `jwt`: the Box app config JSON file, as the Box console downloads it.
    #[serde(deserialize_with = "string_like")]
    pub box_jwt_config_file: Option<String>,
    /// A managed user every Box call acts as (`As-User`), unless an API key names its own.
    #[serde(deserialize_with = "string_like")]
    pub box_as_user: Option<String>,
    /// A TOML file of `[[keys]]` (name, sha256, folders, max_file_size_bytes, as_user).
    #[serde(deserialize_with = "string_like")]
    pub api_keys_file: Option<String>,
    /// API keys given in the settings file itself, in the same form as the keys file's `[[keys]]`.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Accept uploads with no API key and no pass-through token (a private network only).
    pub allow_anonymous: bool,
    /// Parts of one upload in flight at once (Box advises 3 to 5).
    pub part_concurrency: usize,
    /// File bytes the whole process may hold in memory, shared by all uploads.
    pub memory_budget_bytes: u64,
    /// Files at least this big use a chunked session (Box's minimum is 20,000,000).
    pub chunked_threshold_bytes: u64,
    /// Refuse files above this size with 413 (0 = no limit of the gateway's own).
    pub max_file_size_bytes: u64,
    /// Where bodies of unknown size are spooled (empty = the system's temp dir).
    pub spool_dir: String,
    /// Largest body of unknown size the gateway spools; 0 turns spooling off (411 instead).
    pub spool_max_bytes: u64,
    /// A client whose body stalls this long gets 408 and its upload is aborted.
    pub client_idle_timeout_secs: u64,
    /// A body slower than this, over `client_rate_window_secs` of the gateway waiting for it, gets 408
    /// `client_too_slow` (0 = no minimum). Only time spent waiting for the client's bytes counts.
    pub client_min_bytes_per_sec: u64,
    pub client_rate_window_secs: u64,
    /// How long an upload may wait for room in the memory budget before 503 `busy`.
    pub budget_wait_secs: u64,
    /// Bytes all spooled bodies together may take on disk (0 = 4 x `spool_max_bytes`).
    pub spool_max_total_bytes: u64,
    /// After SIGTERM or SIGINT, how long uploads in flight may take to finish before they are aborted.
    pub shutdown_grace_secs: u64,
    /// How often the background check behind `/readyz` asks Box whether it answers and accepts the
    /// gateway's credentials.
    pub readiness_check_interval_secs: u64,
    pub box_connect_timeout_secs: u64,
    /// Bound on one Box call, a whole part upload included.
    pub box_request_timeout_secs: u64,
    pub box_retry_max_attempts: u32,
    pub box_retry_base_delay_ms: u64,
    pub box_retry_max_delay_ms: u64,
    /// Total time one Box call may take, every attempt and the waits between them included (a
    /// commit's 202 polls are bounded by `commit_timeout_secs` instead). At least
    /// `box_request_timeout_secs`, so one attempt always gets its full time.
    pub box_call_deadline_secs: u64,
    /// How long a commit may keep answering 202 / a transient parts_mismatch.
    pub commit_timeout_secs: u64,
    /// `json`, `pretty`, or `auto` (pretty on a terminal, JSON otherwise).
    pub log_format: String,
    /// OpenTelemetry: the OTLP/HTTP collector's base URL (spans go to `<url>/v1/traces`). Unset: the
    /// standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; neither: no traces.
    pub otlp_endpoint: Option<String>,
    /// Where the embedded state store keeps its file (tus uploads, idempotency answers).
    pub state_dir: String,
    /// A Redis shared by every replica for that state (`GATEWAY_REDIS_URL`); empty: the embedded store.
    /// A Secret: the URL may carry a password.
    #[serde(serialize_with = "redacted")]
    pub redis_url: Option<Secret>,
    /// A tus upload not finished this long after its creation is aborted (its Box session too).
    pub tus_expiration_secs: u64,
    /// How long an `Idempotency-Key`'s answer is kept for retries.
    pub idempotency_window_secs: u64,
    /// How long a claim on an `Idempotency-Key` lives unless the upload holding it extends it (it
    /// does, every third of this, for as long as it runs): after a crash the key is free this soon.
    pub idempotency_claim_secs: u64,
    /// The bytes of every tus upload's unfinished part, together, that the state store may hold.
    pub tus_max_pending_bytes: u64,
    /// Open (not landed, not expired) tus uploads per API key (or per token, without a key).
    pub tus_max_open_uploads_per_key: usize,
    /// Where completion events are POSTed (`GATEWAY_WEBHOOK_URL`); an API key's own `webhook_url`
    /// takes its uploads' events instead. Empty: no events (except those keys').
    pub webhook_url: Option<String>,
    /// Standard Webhooks secrets `whsec_<base64>`, whitespace-separated during a rotation (each
    /// signs) (`GATEWAY_WEBHOOK_SECRET`).
    #[serde(serialize_with = "redacted")]
    pub webhook_secret: Option<Secret>,
    /// A file holding them instead (read at each delivery: a rotated Secret needs no restart).
    #[serde(deserialize_with = "string_like")]
    pub webhook_secret_file: Option<String>,
    /// An event not delivered this long after the upload ended is given up (counted as dead).
    pub webhook_max_age_secs: u64,
    /// Bound on one delivery attempt (connecting included).
    pub webhook_timeout_secs: u64,
    /// Deliveries in flight at once, per replica.
    pub webhook_concurrency: usize,
    /// The first retry's delay; each next one doubles, up to `webhook_max_backoff_secs` (with jitter).
    pub webhook_min_backoff_ms: u64,
    pub webhook_max_backoff_secs: u64,
    /// Signs upload links (`POST /v1/upload-links`): one or more secrets of at least 32 characters,
    /// separated by commas or white space; the first signs, all are accepted (rotation). Unset: links
    /// are off. Every replica needs the same.
    #[serde(serialize_with = "redacted")]
    pub upload_link_secret: Option<Secret>,
    /// A file holding `upload_link_secret` (read at start: rotating it takes a restart).
    #[serde(deserialize_with = "string_like")]
    pub upload_link_secret_file: Option<String>,
    /// The gateway's address as people reach it (`https://upload.example.com`): upload links start
    /// with it. Unset: the scheme and host of the request that made the link.
    pub public_base_url: Option<String>,
    /// The longest life an upload link may be given (`expires_in_secs`).
    pub upload_link_max_expiry_secs: u64,
    /// The upload page sends files in PATCHes of this many bytes.
    pub upload_page_chunk_bytes: u64,
    /// Box calls per minute per Box principal (service account, `As-User`, token), all replicas
    /// together (`BOX_RATE_CALLS_PER_MINUTE`); 0: not paced. Box allows about 1,000.
    pub box_rate_calls_per_minute: u32,
    /// Upload calls (new sessions, direct uploads) per minute per principal, all replicas together
    /// (`BOX_RATE_UPLOADS_PER_MINUTE`); 0: not paced. Box allows about 240.
    pub box_rate_uploads_per_minute: u32,
    /// How long a new upload may wait for Box capacity before 503 `box_rate_limited`.
    pub box_rate_wait_secs: u64,
}

/// Ids from the environment arrive parsed (`BOX_SUBJECT_ID=12345` is a number to figment): take any
/// scalar as its text.
fn string_like<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(Option::<Scalar>::deserialize(d)?.map(|v| match v {
        Scalar::Text(s) => s,
        Scalar::Unsigned(n) => n.to_string(),
        Scalar::Signed(n) => n.to_string(),
        Scalar::Float(n) => n.to_string(),
        Scalar::Bool(b) => b.to_string(),
    }))
}

fn redacted<S: serde::Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            workers: 0,
            max_connections: 256,
            box_api_url: "https://api.box.com/2.0".into(),
            box_upload_url: "https://upload.box.com/api/2.0".into(),
            box_token_url: "https://api.box.com/oauth2/token".into(),
            box_auth: "developer_token".into(),
            box_developer_token: None,
            box_developer_token_file: None,
            box_client_id: None,
            box_client_secret: None,
            box_client_secret_file: None,
            box_subject_type: None,
            box_subject_id: None,
            box_jwt_config_file: None,
            box_as_user: None,
            api_keys_file: None,
            api_keys: Vec::new(),
            allow_anonymous: false,
            part_concurrency: 4,
            memory_budget_bytes: 256 * 1024 * 1024,
            chunked_threshold_bytes: 20_000_000,
            max_file_size_bytes: 0,
            spool_dir: String::new(),
            spool_max_bytes: 1024 * 1024 * 1024,
            client_idle_timeout_secs: 60,
            // 16 kbit/s: below a bad GPRS link, a tenth of EDGE; a trickler of 1 KiB per 5 s is 205 B/s.
            client_min_bytes_per_sec: 2048,
            client_rate_window_secs: 60,
            budget_wait_secs: 20,
            spool_max_total_bytes: 0,
            shutdown_grace_secs: 30,
            readiness_check_interval_secs: 10,
            box_connect_timeout_secs: 10,
            box_request_timeout_secs: 300,
            box_retry_max_attempts: 6,
            box_retry_base_delay_ms: 250,
            box_retry_max_delay_ms: 30_000,
            // One full-length attempt (300 s) plus a few more at the backoff cap: a part that Box
            // keeps refusing fails in 15 minutes, never hangs an upload for the whole retry count.
            box_call_deadline_secs: 900,
            commit_timeout_secs: 600,
            log_format: "auto".into(),
            otlp_endpoint: None,
            state_dir: "./gateway-state".into(),
            redis_url: None,
            tus_expiration_secs: 24 * 3600,
            idempotency_window_secs: 24 * 3600,
            idempotency_claim_secs: 60,
            // 1 GiB: 16 uploads paused mid-part at Box's largest part (64 MiB), 128 at its usual
            // 8 MiB; an amount a Redis beside the gateway can spare without a dedicated instance.
            tus_max_pending_bytes: 1024 * 1024 * 1024,
            tus_max_open_uploads_per_key: 100,
            webhook_url: None,
            webhook_secret: None,
            webhook_secret_file: None,
            webhook_max_age_secs: 24 * 3600,
            webhook_timeout_secs: 10,
            webhook_concurrency: 8,
            webhook_min_backoff_ms: 1000,
            webhook_max_backoff_secs: 3600,
            upload_link_secret: None,
            upload_link_secret_file: None,
            public_base_url: None,
            upload_link_max_expiry_secs: 30 * 24 * 3600,
            // Box's usual part size: a PATCH fills a part; a cut one is kept up to where it broke.
            upload_page_chunk_bytes: 8 * 1024 * 1024,
            // A little under Box's 1,000 and 240: room for the readiness checks and for clocks.
            box_rate_calls_per_minute: 900,
            box_rate_uploads_per_minute: 220,
            box_rate_wait_secs: 10,
        }
    }
}

impl Settings {
    /// Defaults, then the TOML file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let known: Vec<String> = match serde_json::to_value(Settings::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let known2 = known.clone();
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment
            .merge(Env::prefixed("BOX_").filter_map(move |k| {
                let key = format!("box_{}", k.as_str().to_ascii_lowercase());
                known.contains(&key).then(|| key.into())
            }))
            .merge(Env::prefixed("GATEWAY_").filter_map(move |k| {
                let key = k.as_str().to_ascii_lowercase();
                known2.contains(&key).then(|| key.into())
            }));
        figment
            .extract()
            .map_err(|e| format!("invalid configuration: {e}"))
    }

    /// Every problem at once, each saying which key and why.
    pub fn validate(&self) -> Result<ValidSettings, Vec<String>> {
        let mut problems = Vec::new();
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("listen: {:?} is not host:port ({e})", self.listen)))
            .ok();
        let mut url = |key: &str, value: &str| -> String {
            match reqwest::Url::parse(value) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => value.trim_end_matches('/').to_owned(),
                _ => {
                    problems.push(format!("{key}: {value:?} is not an http(s) URL"));
                    String::new()
                }
            }
        };
        let api = url("box_api_url", &self.box_api_url);
        let upload = url("box_upload_url", &self.box_upload_url);
        let token = url("box_token_url", &self.box_token_url);
        let box_auth = self.box_auth(&mut problems);
        let api_keys = self.api_keys(&box_auth, &mut problems);
        let passthrough = matches!(box_auth, Some(BoxAuth::Passthrough));
        if api_keys.is_empty() && !passthrough && !self.allow_anonymous {
            problems.push(
                "api_keys_file: no API keys and box_auth is not passthrough, so anyone who reaches the gateway \
                 could write into Box as its account; configure API keys, or set allow_anonymous = true \
                 (GATEWAY_ALLOW_ANONYMOUS) if the gateway is only reachable from a trusted network"
                    .into(),
            );
        }
        if !(1..=64).contains(&self.part_concurrency) {
            problems.push(format!(
                "part_concurrency: {} is not within 1..=64",
                self.part_concurrency
            ));
        }
        if self.chunked_threshold_bytes == 0 || self.chunked_threshold_bytes > MAX_CHUNKED_THRESHOLD {
            problems.push(format!(
                "chunked_threshold_bytes: {} is not within 1..={MAX_CHUNKED_THRESHOLD} (Box advises direct uploads only up to about 50 MB)",
                self.chunked_threshold_bytes
            ));
        }
        // A direct upload is held whole (its SHA-1 goes in a header), so it must fit the budget.
        if self.memory_budget_bytes < self.chunked_threshold_bytes {
            problems.push(format!(
                "memory_budget_bytes: {} is below chunked_threshold_bytes ({}); a direct upload is held whole in memory",
                self.memory_budget_bytes, self.chunked_threshold_bytes
            ));
        }
        for (key, value) in [
            ("client_idle_timeout_secs", self.client_idle_timeout_secs),
            ("client_rate_window_secs", self.client_rate_window_secs),
            ("budget_wait_secs", self.budget_wait_secs),
            ("shutdown_grace_secs", self.shutdown_grace_secs),
            (
                "readiness_check_interval_secs",
                self.readiness_check_interval_secs,
            ),
            ("box_connect_timeout_secs", self.box_connect_timeout_secs),
            ("box_request_timeout_secs", self.box_request_timeout_secs),
            ("commit_timeout_secs", self.commit_timeout_secs),
            ("box_retry_max_attempts", self.box_retry_max_attempts as u64),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be at least 1"));
            }
        }
        if self.box_rate_calls_per_minute > 0
            && self.box_rate_uploads_per_minute > self.box_rate_calls_per_minute
        {
            problems.push(format!(
                "box_rate_uploads_per_minute: {} is above box_rate_calls_per_minute ({}); every upload call is a call too",
                self.box_rate_uploads_per_minute, self.box_rate_calls_per_minute
            ));
        }
        if self.box_rate_wait_secs > 3600 {
            problems.push(format!(
                "box_rate_wait_secs: {} is over an hour; a client would rather hear 503 and Retry-After",
                self.box_rate_wait_secs
            ));
        }
        if self.box_call_deadline_secs < self.box_request_timeout_secs {
            problems.push(format!(
                "box_call_deadline_secs: {} is below box_request_timeout_secs ({}); one attempt could not take its full time",
                self.box_call_deadline_secs, self.box_request_timeout_secs
            ));
        }
        if let Some(url) = self.otlp_endpoint.as_deref().filter(|u| !u.is_empty()) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!(
                    "otlp_endpoint: {url:?} is not an http:// or https:// URL"
                ));
            }
        }
        if !matches!(self.log_format.as_str(), "json" | "pretty" | "auto") {
            problems.push(format!(
                "log_format: {:?} is not json, pretty or auto",
                self.log_format
            ));
        }
        let spool_dir = if self.spool_dir.is_empty() {
            std::env::temp_dir()
        } else {
            PathBuf::from(&self.spool_dir)
        };
        if self.spool_max_bytes > 0 && !spool_dir.is_dir() {
            problems.push(format!("spool_dir: {} is not a directory", spool_dir.display()));
        }
        let spool_max_total_bytes = match self.spool_max_total_bytes {
            0 => self.spool_max_bytes.saturating_mul(4),
            n => n,
        };
        if spool_max_total_bytes < self.spool_max_bytes {
            problems.push(format!(
                "spool_max_total_bytes: {} is below spool_max_bytes ({}); one body of that size could never be spooled",
                spool_max_total_bytes, self.spool_max_bytes
            ));
        }
        // Box discards a session 7 days after its creation: an upload must expire before.
        const BOX_SESSION_LIFE_SECS: u64 = 7 * 24 * 3600;
        if self.tus_expiration_secs == 0 || self.tus_expiration_secs >= BOX_SESSION_LIFE_SECS {
            problems.push(format!(
                "tus_expiration_secs: {} is not within 1..{BOX_SESSION_LIFE_SECS} (Box discards an upload session after 7 days)",
                self.tus_expiration_secs
            ));
        }
        if self.idempotency_window_secs == 0 {
            problems.push("idempotency_window_secs: must be at least 1".into());
        }
        if self.idempotency_claim_secs == 0 || self.idempotency_claim_secs > self.idempotency_window_secs {
            problems.push(format!(
                "idempotency_claim_secs: {} is not within 1..=idempotency_window_secs ({})",
                self.idempotency_claim_secs, self.idempotency_window_secs
            ));
        }
        if self.tus_max_open_uploads_per_key == 0 {
            problems.push("tus_max_open_uploads_per_key: must be at least 1".into());
        }
        let redis_url = self.redis_url.clone().filter(|u| !u.expose().trim().is_empty());
        if let Some(url) = redis_url.as_ref().map(Secret::expose) {
            // The redis crate is built without TLS (one TLS stack less to build): say so at start
            // rather than fail at the first upload.
            if url.starts_with("rediss://") {
                problems.push(
                    "redis_url: rediss:// (TLS) is not supported; use redis:// on a trusted network".into(),
                );
            } else if !url.starts_with("redis://") && !url.starts_with("redis+unix://") {
                problems.push("redis_url: must start with redis:// or redis+unix://".into());
            }
        }
        let webhooks = self.webhooks(&api_keys, &mut problems);
        let upload_link_secrets = self.upload_link_secrets(passthrough, &mut problems);
        let public_base_url = self
            .public_base_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|u| u.trim().trim_end_matches('/').to_owned());
        if let Some(u) = &public_base_url {
            if !matches!(reqwest::Url::parse(u), Ok(p) if matches!(p.scheme(), "http" | "https")) {
                problems.push(format!("public_base_url: {u:?} is not an http(s) URL"));
            }
        }
        if !(1..=365 * 24 * 3600).contains(&self.upload_link_max_expiry_secs) {
            problems.push(format!(
                "upload_link_max_expiry_secs: {} is not within 1..=31536000 (a year)",
                self.upload_link_max_expiry_secs
            ));
        }
        if !(1024..=1 << 30).contains(&self.upload_page_chunk_bytes) {
            problems.push(format!(
                "upload_page_chunk_bytes: {} is not within 1024..=1073741824",
                self.upload_page_chunk_bytes
            ));
        }
        let state_dir = PathBuf::from(&self.state_dir);
        if self.max_connections == 0 {
            problems.push("max_connections: must be at least 1".into());
        }
        if redis_url.is_none() && self.state_dir.is_empty() {
            problems.push("state_dir: must name a directory (created if missing)".into());
        }
        match (problems.is_empty(), listen, box_auth) {
            (true, Some(listen), Some(box_auth)) => Ok(ValidSettings {
                listen,
                workers: if self.workers == 0 {
                    std::thread::available_parallelism().map_or(2, |n| n.get())
                } else {
                    self.workers
                },
                max_connections: self.max_connections,
                box_urls: crate::box_api::BoxUrls { api, upload, token },
                box_auth,
                box_as_user: self.box_as_user.clone().filter(|u| !u.is_empty()),
                api_keys,
                allow_anonymous: self.allow_anonymous,
                part_concurrency: self.part_concurrency,
                memory_budget_bytes: self.memory_budget_bytes,
                chunked_threshold_bytes: self.chunked_threshold_bytes,
                max_file_size_bytes: (self.max_file_size_bytes > 0).then_some(self.max_file_size_bytes),
                spool_dir,
                spool_max_bytes: self.spool_max_bytes,
                client_idle_timeout: Duration::from_secs(self.client_idle_timeout_secs),
                client_min_bytes_per_sec: self.client_min_bytes_per_sec,
                client_rate_window: Duration::from_secs(self.client_rate_window_secs),
                budget_wait: Duration::from_secs(self.budget_wait_secs),
                spool_max_total_bytes,
                shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
                readiness_check_interval: Duration::from_secs(self.readiness_check_interval_secs),
                box_connect_timeout: Duration::from_secs(self.box_connect_timeout_secs),
                box_request_timeout: Duration::from_secs(self.box_request_timeout_secs),
                retry: crate::box_api::RetryPolicy {
                    max_attempts: self.box_retry_max_attempts,
                    base_delay: Duration::from_millis(self.box_retry_base_delay_ms),
                    max_delay: Duration::from_millis(
                        self.box_retry_max_delay_ms.max(self.box_retry_base_delay_ms),
                    ),
                    deadline: Duration::from_secs(self.box_call_deadline_secs),
                },
                commit_timeout: Duration::from_secs(self.commit_timeout_secs),
                log_format: self.log_format.clone(),
                state_dir,
                redis_url,
                tus_expiration: Duration::from_secs(self.tus_expiration_secs),
                idempotency_window: Duration::from_secs(self.idempotency_window_secs),
                idempotency_claim: Duration::from_secs(self.idempotency_claim_secs),
                tus_max_pending_bytes: self.tus_max_pending_bytes,
                tus_max_open_uploads_per_key: self.tus_max_open_uploads_per_key,
                webhooks,
                upload_link_secrets,
                public_base_url,
                upload_link_max_expiry: Duration::from_secs(self.upload_link_max_expiry_secs),
                upload_page_chunk_bytes: self.upload_page_chunk_bytes,
                pacer: crate::box_api::PacerSettings {
                    calls_per_minute: self.box_rate_calls_per_minute,
                    uploads_per_minute: self.box_rate_uploads_per_minute,
                    wait: Duration::from_secs(self.box_rate_wait_secs),
                },
            }),
            _ => Err(problems),
        }
    }
}

impl Settings {
    /// The webhook settings: a secret is needed as soon as any URL (the gateway's or a key's) is set.
    fn webhooks(&self, keys: &[ApiKeyConfig], problems: &mut Vec<String>) -> crate::events::WebhookSettings {
        let url = self.webhook_url.clone().filter(|u| !u.trim().is_empty());
        if let Some(url) = &url {
            if reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
                problems.push(format!("webhook_url: {url:?} is not an http(s) URL"));
            }
        }
        let any_url = url.is_some()
            || keys
                .iter()
                .any(|k| k.webhook_url.as_deref().is_some_and(|u| !u.is_empty()));
        let inline = self
            .webhook_secret
            .as_ref()
            .filter(|s| !s.expose().trim().is_empty());
        let file = self.webhook_secret_file.as_deref().filter(|f| !f.is_empty());
        let secret = match (inline, file) {
            (Some(_), Some(_)) => {
                problems.push(
                    "webhook_secret: set either webhook_secret or webhook_secret_file, not both".into(),
                );
                None
            }
            (Some(s), None) => Some(SecretSource::Inline(s.clone())),
            (None, Some(f)) => Some(SecretSource::File(PathBuf::from(f))),
            (None, None) => None,
        };
        match &secret {
            Some(source) => {
                if let Err(why) = source.read().and_then(|s| crate::events::sign::parse_secrets(&s)) {
                    problems.push(format!(
                        "webhook_secret: {why} (expected whsec_<base64>, space-separated)"
                    ));
                }
            }
            None if any_url => problems.push(
                "webhook_secret: a webhook_url is set (the gateway's or a key's): events must be signed; \
                 set webhook_secret or webhook_secret_file (env GATEWAY_WEBHOOK_SECRET)"
                    .into(),
            ),
            None => {}
        }
        for (key, value) in [
            ("webhook_max_age_secs", self.webhook_max_age_secs),
            ("webhook_timeout_secs", self.webhook_timeout_secs),
            ("webhook_concurrency", self.webhook_concurrency as u64),
            ("webhook_min_backoff_ms", self.webhook_min_backoff_ms),
            ("webhook_max_backoff_secs", self.webhook_max_backoff_secs),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be at least 1"));
            }
        }
        crate::events::WebhookSettings {
            url,
            secret,
            max_age: Duration::from_secs(self.webhook_max_age_secs),
            timeout: Duration::from_secs(self.webhook_timeout_secs),
            concurrency: self.webhook_concurrency.max(1),
            min_backoff: Duration::from_millis(self.webhook_min_backoff_ms),
            max_backoff: Duration::from_secs(self.webhook_max_backoff_secs)
                .max(Duration::from_millis(self.webhook_min_backoff_ms)),
        }
    }

    /// The secrets of `upload_link_secret` or `upload_link_secret_file` (none: links are off); a
    /// problem names the key, never a secret.
    fn upload_link_secrets(&self, passthrough: bool, problems: &mut Vec<String>) -> Vec<Secret> {
        let inline = self
            .upload_link_secret
            .as_ref()
            .filter(|s| !s.expose().trim().is_empty());
        let file = self.upload_link_secret_file.as_deref().filter(|f| !f.is_empty());
        let text = match (inline, file) {
            (Some(_), Some(_)) => {
                problems.push(
                    "upload_link_secret: set either upload_link_secret or upload_link_secret_file, not both"
                        .into(),
                );
                return Vec::new();
            }
            (Some(s), None) => s.clone(),
            (None, Some(f)) => match SecretSource::File(PathBuf::from(f)).read() {
                Ok(s) => s,
                Err(why) => {
                    problems.push(format!("upload_link_secret_file: {why}"));
                    return Vec::new();
                }
            },
            (None, None) => return Vec::new(),
        };
        let secrets = crate::access::parse_secrets(text.expose());
        for (i, secret) in secrets.iter().enumerate() {
            if secret.expose().len() < crate::access::MIN_SECRET_LEN {
                problems.push(format!(
                    "upload_link_secret: secret #{} is shorter than {} characters (make one with `openssl rand -hex 32`)",
                    i + 1,
                    crate::access::MIN_SECRET_LEN
                ));
            }
        }
        if passthrough && !secrets.is_empty() {
            problems.push(
                "upload_link_secret: upload links need the gateway's own Box credentials (a link carries no Box token); box_auth is passthrough"
                    .into(),
            );
        }
        secrets
    }

    /// The Box credentials of `box_auth`, each missing or contradictory key named.
    fn box_auth(&self, problems: &mut Vec<String>) -> Option<BoxAuth> {
        let before = problems.len();
        let secret =
            |problems: &mut Vec<String>, key: &str, inline: &Option<Secret>, file: &Option<String>| match (
                inline.as_ref().filter(|s| !s.expose().trim().is_empty()),
                file.as_deref().filter(|f| !f.is_empty()),
            ) {
                (Some(_), Some(_)) => {
                    problems.push(format!("{key}: set either {key} or {key}_file, not both"));
                    None
                }
                (Some(s), None) => Some(SecretSource::Inline(s.clone())),
                (None, Some(f)) => {
                    let source = SecretSource::File(PathBuf::from(f));
                    match source.read() {
                        Ok(_) => Some(source),
                        Err(why) => {
                            problems.push(format!("{key}_file: {why}"));
                            None
                        }
                    }
                }
                (None, None) => {
                    problems.push(format!(
                        "{key}: box_auth = {:?} needs {key} or {key}_file (env {} or {}_FILE)",
                        self.box_auth,
                        key.to_ascii_uppercase(),
                        key.to_ascii_uppercase()
                    ));
                    None
                }
            };
        let subject = |problems: &mut Vec<String>, required: bool| -> Option<Subject> {
            let kind = self.box_subject_type.as_deref().filter(|s| !s.is_empty());
            let id = self.box_subject_id.as_deref().filter(|s| !s.is_empty());
            match (kind, id) {
                (None, None) if !required => None,
                (kind, Some(id)) => match SubjectType::parse(kind.unwrap_or("enterprise")) {
                    Some(kind) => Some(Subject {
                        kind,
                        id: id.to_owned(),
                    }),
                    None => {
                        problems.push(format!("box_subject_type: {kind:?} is not enterprise or user"));
                        None
                    }
                },
                (_, None) => {
                    problems.push(format!(
                        "box_subject_id: box_auth = {:?} needs the enterprise or user id to act as (BOX_SUBJECT_ID)",
                        self.box_auth
                    ));
                    None
                }
            }
        };
        let auth = match self.box_auth.as_str() {
            "developer_token" => secret(
                problems,
                "box_developer_token",
                &self.box_developer_token,
                &self.box_developer_token_file,
            )
            .map(BoxAuth::DeveloperToken),
            "client_credentials" => {
                let client_id = self.box_client_id.clone().filter(|c| !c.is_empty());
                if client_id.is_none() {
                    problems.push("box_client_id: box_auth = \"client_credentials\" needs the app's client id (BOX_CLIENT_ID)".into());
                }
                let client_secret = secret(
                    problems,
                    "box_client_secret",
                    &self.box_client_secret,
                    &self.box_client_secret_file,
                );
                let subject = subject(problems, true);
                match (client_id, client_secret, subject) {
                    (Some(client_id), Some(client_secret), Some(subject)) => {
                        Some(BoxAuth::Minted(Grant::ClientCredentials {
                            client_id,
                            client_secret,
                            subject,
                        }))
                    }
                    _ => None,
                }
            }
            "jwt" => {
                let subject = subject(problems, false);
                match self.box_jwt_config_file.as_deref().filter(|f| !f.is_empty()) {
                    None => {
                        problems.push("box_jwt_config_file: box_auth = \"jwt\" needs the Box app config JSON file (BOX_JWT_CONFIG_FILE)".into());
                        None
                    }
                    Some(file) => match JwtApp::load(Path::new(file)) {
                        Err(why) => {
                            problems.push(format!("box_jwt_config_file: {why}"));
                            None
                        }
                        Ok(_) => Some(BoxAuth::Minted(Grant::Jwt {
                            config_file: PathBuf::from(file),
                            subject,
                        })),
                    },
                }
            }
            "passthrough" => Some(BoxAuth::Passthrough),
            other => {
                problems.push(format!(
                    "box_auth: {other:?} is not developer_token, client_credentials, jwt or passthrough"
                ));
                None
            }
        };
        auth.filter(|_| problems.len() == before)
    }

    /// The API keys of `api_keys_file` and `api_keys`, each problem named.
    fn api_keys(&self, box_auth: &Option<BoxAuth>, problems: &mut Vec<String>) -> Vec<ApiKeyConfig> {
        let mut keys = self.api_keys.clone();
        if let Some(file) = self.api_keys_file.as_deref().filter(|f| !f.is_empty()) {
            match crate::access::load_keys_file(Path::new(file)) {
                Ok(more) => keys.extend(more),
                Err(why) => problems.push(format!("api_keys_file: {why}")),
            }
        }
        let minted = matches!(box_auth, Some(BoxAuth::Minted(_)));
        problems.extend(crate::access::check_keys(&keys, minted));
        keys
    }
}

/// How the gateway authenticates to Box.
#[derive(Debug, Clone)]
pub enum BoxAuth {
    DeveloperToken(SecretSource),
    /// `client_credentials` or `jwt`: tokens minted at the token endpoint.
    Minted(Grant),
    /// Each caller's own `Authorization: Bearer` token goes to Box.
    Passthrough,
}

impl BoxAuth {
    /// The `box_auth` value, for logs.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::DeveloperToken(_) => "developer_token",
            Self::Minted(Grant::ClientCredentials { .. }) => "client_credentials",
            Self::Minted(Grant::Jwt { .. }) => "jwt",
            Self::Passthrough => "passthrough",
        }
    }
}

/// Settings after validation: typed, with units in the types.
#[derive(Debug, Clone)]
pub struct ValidSettings {
    pub listen: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
    pub box_urls: crate::box_api::BoxUrls,
    pub box_auth: BoxAuth,
    pub box_as_user: Option<String>,
    pub api_keys: Vec<ApiKeyConfig>,
    pub allow_anonymous: bool,
    pub part_concurrency: usize,
    pub memory_budget_bytes: u64,
    pub chunked_threshold_bytes: u64,
    pub max_file_size_bytes: Option<u64>,
    pub spool_dir: PathBuf,
    /// 0: spooling is off.
    pub spool_max_bytes: u64,
    pub client_idle_timeout: Duration,
    /// 0: no minimum body rate.
    pub client_min_bytes_per_sec: u64,
    pub client_rate_window: Duration,
    pub budget_wait: Duration,
    /// Resolved: never 0.
    pub spool_max_total_bytes: u64,
    pub shutdown_grace: Duration,
    pub readiness_check_interval: Duration,
    pub box_connect_timeout: Duration,
    pub box_request_timeout: Duration,
    pub retry: crate::box_api::RetryPolicy,
    pub commit_timeout: Duration,
    pub log_format: String,
    pub state_dir: PathBuf,
    /// Set: the state lives in Redis (any replica takes any request); else in `state_dir`.
    pub redis_url: Option<Secret>,
    pub tus_expiration: Duration,
    pub idempotency_window: Duration,
    pub idempotency_claim: Duration,
    /// 0: no unfinished part may be kept (every PATCH must end on a part boundary or the end).
    pub tus_max_pending_bytes: u64,
    pub tus_max_open_uploads_per_key: usize,
    pub webhooks: crate::events::WebhookSettings,
    /// Empty: upload links are off. The first signs.
    pub upload_link_secrets: Vec<Secret>,
    /// Without a trailing `/`.
    pub public_base_url: Option<String>,
    pub upload_link_max_expiry: Duration,
    pub upload_page_chunk_bytes: u64,
    /// Box's rate limits as the pacer keeps them.
    pub pacer: crate::box_api::PacerSettings,
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment's own large error
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_credentials_and_callers() {
        let problems = Settings::default().validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("box_developer_token"));
        assert!(problems[1].starts_with("api_keys_file"));
        let ok = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Default::default()
        };
        assert_eq!(
            ok.validate().unwrap().box_urls.upload,
            "https://upload.box.com/api/2.0"
        );
    }

    #[test]
    fn box_rate_limits_are_checked() {
        let bad = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            box_rate_calls_per_minute: 100,
            box_rate_uploads_per_minute: 200,
            box_rate_wait_secs: 7200,
            ..Default::default()
        };
        let problems = bad.validate().unwrap_err().join("\n");
        assert!(problems.contains("box_rate_uploads_per_minute"), "{problems}");
        assert!(problems.contains("box_rate_wait_secs"), "{problems}");
        let ok = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Default::default()
        };
        let pacer = ok.validate().unwrap().pacer;
        assert_eq!((pacer.calls_per_minute, pacer.uploads_per_minute), (900, 220));
        figment::Jail::expect_with(|jail| {
            jail.set_env("BOX_RATE_CALLS_PER_MINUTE", "500");
            jail.set_env("BOX_RATE_UPLOADS_PER_MINUTE", "100");
            jail.set_env("BOX_RATE_WAIT_SECS", "3");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                (
                    s.box_rate_calls_per_minute,
                    s.box_rate_uploads_per_minute,
                    s.box_rate_wait_secs
                ),
                (500, 100, 3)
            );
            Ok(())
        });
    }

    #[test]
    fn every_problem_is_named() {
        let bad = Settings {
            listen: "nowhere".into(),
            box_api_url: "ftp://x".into(),
            part_concurrency: 0,
            chunked_threshold_bytes: 60_000_000,
            log_format: "xml".into(),
            box_developer_token: Some(Secret::new("t")),
            ..Default::default()
        };
        let problems = bad.validate().unwrap_err().join("\n");
        for key in [
            "listen",
            "box_api_url",
            "part_concurrency",
            "chunked_threshold_bytes",
            "log_format",
        ] {
            assert!(problems.contains(key), "{key} missing in {problems}");
        }
    }

    #[test]
    fn file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "g.toml",
                "part_concurrency = 3\nbox_api_url = \"http://file/2.0\"",
            )?;
            jail.set_env("BOX_API_URL", "http://env/2.0");
            jail.set_env("GATEWAY_LISTEN", "127.0.0.1:9");
            jail.set_env("BOX_DEVELOPER_TOKEN", "secret-token");
            jail.set_env("GATEWAY_CONFIG", "ignored: not a setting");
            jail.set_env("BOX_SUBJECT_ID", "12345");
            jail.set_env("BOX_CLIENT_SECRET_FILE", "/run/secrets/box");
            let s = Settings::load(Some(Path::new("g.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.part_concurrency, 3);
            assert_eq!(s.box_api_url, "http://env/2.0");
            assert_eq!(s.listen, "127.0.0.1:9");
            assert!(!format!("{s:?}").contains("secret-token"));
            assert_eq!(s.box_subject_id.as_deref(), Some("12345"));
            assert_eq!(s.box_client_secret_file.as_deref(), Some("/run/secrets/box"));
            Ok(())
        });
    }

    #[test]
    fn each_mode_names_what_it_misses() {
        let problems = |mode: &str| {
            Settings {
                box_auth: mode.into(),
                allow_anonymous: true,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .join("\n")
        };
        let ccg = problems("client_credentials");
        for key in ["box_client_id", "box_client_secret", "box_subject_id"] {
            assert!(ccg.contains(key), "{key} missing in {ccg}");
        }
        assert!(problems("jwt").contains("box_jwt_config_file"));
        assert!(problems("oauth").contains("box_auth"));
        let both = Settings {
            box_developer_token: Some(Secret::new("t")),
            box_developer_token_file: Some("/x".into()),
            allow_anonymous: true,
            ..Default::default()
        };
        assert!(both.validate().unwrap_err()[0].contains("not both"));
    }

    #[test]
    fn webhook_keys_are_checked_and_the_secret_never_shown() {
        let base = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Default::default()
        };
        assert!(base.validate().is_ok(), "no URL, no secret needed");
        let unsigned = Settings {
            webhook_url: Some("http://127.0.0.1:9/hooks".into()),
            ..base.clone()
        };
        let problems = unsigned.validate().unwrap_err().join("\n");
        assert!(problems.contains("webhook_secret"), "{problems}");
        let bad = Settings {
            webhook_url: Some("ftp://x".into()),
            webhook_secret: Some(Secret::new("whsec_c2VjcmV0 hunter2")),
            webhook_concurrency: 0,
            ..base.clone()
        };
        let problems = bad.validate().unwrap_err().join("\n");
        for key in ["webhook_url", "webhook_secret", "webhook_concurrency"] {
            assert!(problems.contains(key), "{key} missing in {problems}");
        }
        assert!(
            !problems.contains("hunter2") && !problems.contains("c2VjcmV0"),
            "{problems}"
        );
        let good = Settings {
            webhook_secret: Some(Secret::new("whsec_c2VjcmV0 whsec_b3RoZXI=")),
            ..unsigned
        };
        let valid = good.validate().unwrap();
        assert_eq!(valid.webhooks.url.as_deref(), Some("http://127.0.0.1:9/hooks"));
        assert!(!format!("{valid:?}").contains("c2VjcmV0"));
        assert!(!serde_json::to_string(&good).unwrap().contains("c2VjcmV0"));
    }

    #[test]
    fn state_keys_are_checked_and_the_redis_url_never_shown() {
        let base = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Default::default()
        };
        let problems = Settings {
            tus_expiration_secs: 7 * 24 * 3600,
            idempotency_window_secs: 0,
            redis_url: Some(Secret::new("http://redis:6379")),
            tus_max_open_uploads_per_key: 0,
            ..base.clone()
        }
        .validate()
        .unwrap_err()
        .join("\n");
        for key in [
            "tus_expiration_secs",
            "idempotency_window_secs",
            "idempotency_claim_secs",
            "tus_max_open_uploads_per_key",
            "redis_url",
        ] {
            assert!(problems.contains(key), "{key} missing in {problems}");
        }
        let with_password = Settings {
            redis_url: Some(Secret::new("redis://:hunter2@redis:6379/0")),
            ..base
        };
        assert!(!format!("{with_password:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&with_password).unwrap().contains("hunter2"));
        let valid = with_password.validate().unwrap();
        assert!(!format!("{valid:?}").contains("hunter2"));
        assert_eq!(valid.tus_expiration, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn upload_link_secrets_are_checked_and_never_shown() {
        let base = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Default::default()
        };
        let long = "0123456789abcdef0123456789abcdef";
        let ok = Settings {
            upload_link_secret: Some(Secret::new(format!("{long}new, {long}old"))),
            public_base_url: Some("https://up.example.com/".into()),
            ..base.clone()
        };
        assert!(!format!("{ok:?}").contains(long));
        let valid = ok.validate().unwrap();
        assert_eq!(valid.upload_link_secrets.len(), 2);
        assert_eq!(valid.public_base_url.as_deref(), Some("https://up.example.com"));
        let problems = Settings {
            upload_link_secret: Some(Secret::new("short-one")),
            public_base_url: Some("up.example.com".into()),
            upload_link_max_expiry_secs: 0,
            upload_page_chunk_bytes: 1,
            ..base
        }
        .validate()
        .unwrap_err()
        .join("\n");
        for key in [
            "upload_link_secret",
            "public_base_url",
            "upload_link_max_expiry_secs",
            "upload_page_chunk_bytes",
        ] {
            assert!(problems.contains(key), "{key} missing in {problems}");
        }
        assert!(!problems.contains("short-one"));
    }

    #[test]
    fn typos_in_the_file_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("g.toml", "part_concurency = 3")?;
            let err = Settings::load(Some(Path::new("g.toml"))).unwrap_err();
            assert!(err.contains("part_concurency"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_limits_come_from_the_environment_and_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("GATEWAY_CLIENT_MIN_BYTES_PER_SEC", "4096");
            jail.set_env("GATEWAY_CLIENT_RATE_WINDOW_SECS", "30");
            jail.set_env("GATEWAY_BUDGET_WAIT_SECS", "10");
            jail.set_env("GATEWAY_SPOOL_MAX_TOTAL_BYTES", "3221225472");
            jail.set_env("BOX_DEVELOPER_TOKEN", "t");
            jail.set_env("GATEWAY_ALLOW_ANONYMOUS", "true");
            let v = Settings::load(None)?.validate().map_err(|p| p.join("; "))?;
            assert_eq!(v.client_min_bytes_per_sec, 4096);
            assert_eq!(v.client_rate_window, Duration::from_secs(30));
            assert_eq!(v.budget_wait, Duration::from_secs(10));
            assert_eq!(v.spool_max_total_bytes, 3 << 30);
            Ok(())
        });
        let base = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Default::default()
        };
        // 0: four bodies of spool_max_bytes.
        assert_eq!(base.clone().validate().unwrap().spool_max_total_bytes, 4 << 30);
        let bad = Settings {
            spool_max_total_bytes: 1024,
            client_rate_window_secs: 0,
            budget_wait_secs: 0,
            ..base
        };
        let problems = bad.validate().unwrap_err().join("\n");
        for key in [
            "spool_max_total_bytes",
            "client_rate_window_secs",
            "budget_wait_secs",
        ] {
            assert!(problems.contains(key), "{key} missing in {problems}");
        }
    }
}
