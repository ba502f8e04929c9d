//! Settings: built-in defaults < TOML file < environment, validated once at start into typed values.
//!
//! Environment names: `BOX_*` for the Box side (`BOX_API_URL` sets `box_api_url`), `GATEWAY_*` for
//! the rest (`GATEWAY_PART_CONCURRENCY` sets `part_concurrency`). Every key is listed, with its default,
//! in the configuration reference, docs/configuration.md.
//!
//! `Settings` is that flat list of keys, as operators write them; `validate()` (validate.rs, one
//! function per part of the gateway) turns it into `ValidSettings` (valid.rs), grouped by the part
//! that uses each value.
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::access::ApiKeyConfig;
use crate::secret::Secret;

mod secrets;
mod valid;
mod validate;

pub use valid::*;

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
    /// A TOML file of `[[keys]]` (`access::ApiKeyConfig`: name, sha256, folders and optional limits,
    /// Box subject, webhook_url and its webhook_secret, quotas; docs/configuration.md shows every
    /// field).
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
    /// The most of `memory_budget_bytes` one caller may hold (a key with its links; one link; one
    /// token's user; the anonymous caller), as a fraction in (0, 1]: the rest stays for the others.
    pub memory_budget_share_per_key: f64,
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
    /// The HTTP version offered to Box's hosts: `http1` (a connection per part in flight), `http2`
    /// (one connection per lane, as many lanes as parts can be in flight), or `auto` (both offered by
    /// ALPN, the host picks; over `http://`, HTTP/1.1).
    pub box_http_version: String,
    /// A PEM file of CA certificates trusted for Box's hosts on top of the system's (a TLS-inspecting
    /// proxy's CA, the emulator's `tls/ca.pem`).
    #[serde(deserialize_with = "string_like")]
    pub box_ca_file: Option<String>,
    /// How long a commit's `parts_mismatch` is taken for Box still digesting the last parts (seen
    /// for a second or two after them); past it, a part is missing and the commit fails.
    pub parts_mismatch_window_secs: u64,
    /// `json`, `pretty`, or `auto` (pretty on a terminal, JSON otherwise).
    pub log_format: String,
    /// OpenTelemetry: the OTLP/HTTP collector's base URL (spans go to `<url>/v1/traces`). Unset: the
    /// standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; neither: no traces.
    pub otlp_endpoint: Option<String>,
    /// Where the embedded state store keeps its file (tus uploads, idempotency answers).
    pub state_dir: String,
    /// A Redis shared by every replica for that state (`GATEWAY_REDIS_URL`): `redis://`, `rediss://`
    /// (TLS through rustls, Redis's certificate checked against the system's roots, or
    /// `redis_ca_file`) or `redis+unix://`; empty: the embedded store. A Secret: the URL may carry a
    /// password.
    #[serde(serialize_with = "redacted")]
    pub redis_url: Option<Secret>,
    /// With `rediss://`: a PEM file of the CA certificates Redis's certificate is checked against,
    /// instead of the system's (a managed Redis signed by its own CA). Read at start.
    #[serde(deserialize_with = "string_like")]
    pub redis_ca_file: Option<String>,
    /// A tus upload not finished this long after its creation is aborted (its Box session too).
    pub tus_expiration_secs: u64,
    /// A tus request's lock on its upload lives this long unless renewed (every third of it, while
    /// the request runs): a replica that died mid-`PATCH` holds the upload at most this long.
    pub tus_lock_ttl_secs: u64,
    /// How long an `Idempotency-Key`'s answer is kept for retries.
    pub idempotency_window_secs: u64,
    /// How long a claim on an `Idempotency-Key` lives unless the upload holding it extends it (it
    /// does, every third of this, for as long as it runs): after a crash the key is free this soon.
    pub idempotency_claim_secs: u64,
    /// The bytes of every tus upload's unfinished part, together, that the state store may hold.
    pub tus_max_pending_bytes: u64,
    /// The bytes of unfinished parts one caller may keep in the state store (a key with its links;
    /// one link; one token's user; the anonymous caller), within `tus_max_pending_bytes`.
    pub tus_max_pending_bytes_per_key: u64,
    /// Open (not landed, not expired) tus uploads per API key (or per token, without a key).
    pub tus_max_open_uploads_per_key: usize,
    /// Where completion events are POSTed (`GATEWAY_WEBHOOK_URL`); an API key's own `webhook_url`
    /// takes its uploads' events instead. Empty: no events (except those keys').
    pub webhook_url: Option<String>,
    /// Standard Webhooks secrets `whsec_<base64>` of at least 24 bytes, whitespace-separated during a
    /// rotation (each signs) (`GATEWAY_WEBHOOK_SECRET`): they sign the events sent to `webhook_url`
    /// only (a key with its own `webhook_url` has its own `webhook_secret`).
    #[serde(serialize_with = "redacted")]
    pub webhook_secret: Option<Secret>,
    /// A file holding them instead (read at each delivery: a rotated Secret needs no restart).
    #[serde(deserialize_with = "string_like")]
    pub webhook_secret_file: Option<String>,
    /// An event not delivered this long after the upload ended is given up (counted as dead).
    pub webhook_max_age_secs: u64,
    /// Bound on one delivery attempt (connecting included).
    pub webhook_timeout_secs: u64,
    /// Bound on connecting to a receiver (a receiver that is down or black-holed costs this much).
    pub webhook_connect_timeout_ms: u64,
    /// Deliveries in flight at once, per replica.
    pub webhook_concurrency: usize,
    /// Deliveries in flight at once to one receiver (the gateway's, or a key's), per replica: a
    /// receiver that never answers holds this many of the `webhook_concurrency` slots, no more.
    pub webhook_receiver_concurrency: usize,
    /// Failed attempts in a row after which a receiver is paused (for the retries' backoff schedule),
    /// then probed with one event at a time until one goes through.
    pub webhook_receiver_pause_after_failures: u32,
    /// Events the outbox holds at most, all keys together (all replicas with Redis); past it, a
    /// new event is not stored.
    pub webhook_outbox_max_events: u64,
    /// Events the outbox holds at most for one API key (`passthrough` and `anonymous` callers count
    /// as one key each); past it, that key's new events are not stored.
    pub webhook_outbox_max_events_per_key: u64,
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
    /// with it. Required with links on (a link's address never comes from a request's headers).
    pub public_base_url: Option<String>,
    /// The longest life an upload link may be given (`expires_in_secs`); also how long a revoked
    /// link is remembered.
    pub upload_link_max_expiry_secs: u64,
    /// A link's largest file when neither the link's request nor its key gives a limit: every link
    /// has one.
    pub upload_link_default_max_file_size_bytes: u64,
    /// Upload links an API key may make or revoke per minute, all replicas together (a minute's
    /// worth at once); past it 429 `rate_limited`.
    pub upload_links_per_minute_per_key: u32,
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
    /// The longest wait taken from a `Retry-After` of Box (or a proxy): a 429's pause of its
    /// principal on every replica, a retry's wait, and the `Retry-After` passed on to clients
    /// (`BOX_RATE_MAX_PAUSE_SECS`); 1 to 3600.
    pub box_rate_max_pause_secs: u64,
    /// The folder id uploads by path start from when the caller has no API key (`GATEWAY_PATH_ROOT`;
    /// a key's own `path_root` is its root). `0` is the Box user's All Files.
    #[serde(deserialize_with = "text_like")]
    pub path_root: String,
    /// How long a folder resolved for an upload by path is trusted without asking Box: a folder
    /// renamed or moved in Box receives uploads by its old path this long at most (0: not cached).
    pub path_cache_ttl_secs: u64,
    /// Resolved folders kept per replica (the oldest go first).
    pub path_cache_max_entries: usize,
    /// How long a metadata template's schema is trusted: a field added to a template is accepted
    /// this much later at worst (0: read at every upload that carries metadata).
    pub metadata_schema_cache_ttl_secs: u64,
    /// Template schemas kept per replica.
    pub metadata_schema_cache_max_entries: usize,
    /// The malware scanner, clamd (`GATEWAY_CLAMD_ADDRESS`): `tcp://host:port` or
    /// `unix:/path/to/clamd.ctl`. Set: every upload is scanned, and lands only when clean (except
    /// the keys with `scan = false`). Unset: nothing is scanned.
    #[serde(deserialize_with = "string_like")]
    pub clamd_address: Option<String>,
    /// Larger files are not scanned: at most ClamAV's own limit, 2 GiB - 3 (2147483645), past which
    /// clamd reports a file clean unless told otherwise (Cisco-Talos/clamav#344).
    pub scan_max_bytes: u64,
    /// A file above `scan_max_bytes`: `refuse` (413 `too_large_to_scan`, before any byte when its
    /// size is known) or `allow_unscanned` (it lands, and says `"scanned": false`).
    pub scan_oversize: String,
    /// The longest clamd may keep a scan waiting at one step (a free connection, each write, the
    /// verdict after the last byte); past it the upload fails with 503 `scanner_unavailable`.
    pub scan_timeout_secs: u64,
    /// The verdict's wait grows with the file: `scan_timeout_secs` plus the file's size at this rate
    /// (clamd scans a stream only once it has it whole). 0: `scan_timeout_secs` alone.
    pub scan_min_bytes_per_sec: u64,
    /// Connections to clamd at most, per replica: the scans that run at once (clamd's `MaxThreads`
    /// at least this).
    pub scan_max_connections: usize,
    /// Bytes one scan may hold before the upload waits for clamd to take them (they stay counted in
    /// the memory budget until clamd has them).
    pub scan_queue_bytes: u64,
    /// How long an idle connection to clamd is kept for the next scan (0: a connection per scan);
    /// below clamd's `ReadTimeout`.
    pub scan_connection_idle_secs: u64,
    /// The folder chunked tus uploads are committed into to be scanned, before they move into their
    /// own (`GATEWAY_SCAN_STAGING_FOLDER_ID`): one only the gateway's Box users may see. Unset: a
    /// folder `box-upload-gateway-scan-staging` in the root of the Box user each upload acts as.
    #[serde(deserialize_with = "string_like")]
    pub scan_staging_folder_id: Option<String>,
}

/// `string_like` for a key that always has a value (its default fills it in).
fn text_like<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string_like(d).map(Option::unwrap_or_default)
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

fn redact_urls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.contains("://") => {
            *s = crate::http_client::loggable_url(s);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_urls),
        serde_json::Value::Object(map) => map.values_mut().for_each(redact_urls),
        _ => {}
    }
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
            // Half: one tenant, whatever it does, leaves the other half to everyone else; one caller
            // alone still has 16 parts of 8 MiB in flight, or six direct uploads of 20 MB.
            memory_budget_share_per_key: 0.5,
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
            box_http_version: "http1".into(),
            box_ca_file: None,
            commit_timeout_secs: 600,
            parts_mismatch_window_secs: 5,
            log_format: "auto".into(),
            otlp_endpoint: None,
            state_dir: "./gateway-state".into(),
            redis_url: None,
            redis_ca_file: None,
            tus_expiration_secs: 24 * 3600,
            tus_lock_ttl_secs: 30,
            idempotency_window_secs: 24 * 3600,
            idempotency_claim_secs: 60,
            // 1 GiB: 16 uploads paused mid-part at Box's largest part (64 MiB), 128 at its usual
            // 8 MiB; an amount a Redis beside the gateway can spare without a dedicated instance.
            tus_max_pending_bytes: 1024 * 1024 * 1024,
            // A quarter of the default cap: four tenants must fill the store before another's
            // unfinished parts are refused (and a direct upload's last PATCH lands even then).
            tus_max_pending_bytes_per_key: 256 * 1024 * 1024,
            tus_max_open_uploads_per_key: 100,
            webhook_url: None,
            webhook_secret: None,
            webhook_secret_file: None,
            webhook_max_age_secs: 24 * 3600,
            webhook_timeout_secs: 10,
            // A receiver on the same continent connects in well under a second; a lost SYN is
            // retransmitted after 1 s: 2 s allows one retransmission.
            webhook_connect_timeout_ms: 2000,
            webhook_concurrency: 8,
            // A quarter of the slots: four receivers that never answer leave half of them free.
            webhook_receiver_concurrency: 2,
            webhook_receiver_pause_after_failures: 5,
            // About 1 KB an event: at most about 100 MB of Redis (or of the state volume).
            webhook_outbox_max_events: 100_000,
            // 45 minutes of Box's 220 uploads a minute with a receiver down.
            webhook_outbox_max_events_per_key: 10_000,
            webhook_min_backoff_ms: 1000,
            webhook_max_backoff_secs: 3600,
            upload_link_secret: None,
            upload_link_secret_file: None,
            public_base_url: None,
            upload_link_max_expiry_secs: 30 * 24 * 3600,
            // 2 GiB (Box Starter's largest file): a stranger's upload is bounded unless the key
            // holder asks for more, within the key's own limit.
            upload_link_default_max_file_size_bytes: 2 * 1024 * 1024 * 1024,
            // One a second on average: a backend making a link per customer, not a flood of them.
            upload_links_per_minute_per_key: 60,
            // Box's usual part size: a PATCH fills a part; a cut one is kept up to where it broke.
            upload_page_chunk_bytes: 8 * 1024 * 1024,
            // A little under Box's 1,000 and 240: room for the readiness checks and for clocks.
            box_rate_calls_per_minute: 900,
            box_rate_uploads_per_minute: 220,
            box_rate_wait_secs: 10,
            // Box counts its limits per minute (box-api.md): an honest Retry-After is the rest of
            // the current minute, at most 60 s. Twice that leaves room for Box's temporary lower
            // limits, while an odd header (`Retry-After: 100000000000000000000` from a proxy)
            // stops a Box user's uploads for two minutes instead of an hour. A longer real ban is
            // still honoured, one pause at a time: the first call after a pause meets Box's 429
            // again and pauses again.
            box_rate_max_pause_secs: 120,
            path_root: "0".into(),
            // A few minutes: a burst of uploads into one path asks Box once, and a folder moved in
            // Box stops receiving uploads by its old path soon after.
            path_cache_ttl_secs: 180,
            // About 1 MB of ids and paths.
            path_cache_max_entries: 10_000,
            metadata_schema_cache_ttl_secs: 300,
            metadata_schema_cache_max_entries: 1_000,
            clamd_address: None,
            scan_max_bytes: crate::scan::CLAMAV_MAX_FILE_BYTES,
            scan_oversize: "refuse".into(),
            // clamd answers a PING within milliseconds even while it scans: 30 s of silence at one
            // step is a clamd that is gone or stuck.
            scan_timeout_secs: 30,
            // A quarter of what one core of clamd scans with the full database (phase 1 measured
            // 60 MB/s with one signature): a busy clamd still answers in time.
            scan_min_bytes_per_sec: 4_000_000,
            scan_max_connections: 8,
            // One part of Box's common size: clamd may fall one part behind the upload.
            scan_queue_bytes: 8 * 1024 * 1024,
            scan_connection_idle_secs: 30,
            scan_staging_folder_id: None,
        }
    }
}

impl Settings {
    /// The settings as the startup log shows them: secrets redacted (by their type), and every
    /// string that is a URL with a host (webhook URLs, keys' too, `otlp_endpoint`, Box's URLs, and
    /// any added later) without user info, query or fragment, where URLs carry credentials.
    pub fn for_log(&self) -> String {
        let shown = serde_json::to_value(self).and_then(|mut value| {
            redact_urls(&mut value);
            serde_json::from_value::<Settings>(value)
        });
        match shown {
            Ok(settings) => format!("{settings:?}"),
            Err(_) => "[not shown: the settings could not be redacted]".into(),
        }
    }

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
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment's own large error
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::access::ApiKeyConfig;

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
            ok.validate().unwrap().box_side.urls.upload,
            "https://upload.box.com/api/2.0"
        );
    }

    #[test]
    fn box_connections_default_to_http1_sized_by_the_memory_budget() {
        let settings = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Settings::default()
        };
        let c = settings.validate().unwrap().box_side.connections;
        assert_eq!(c.version, crate::http_client::BoxHttpVersion::Http1);
        // 256 MiB of budget holds 32 parts of Box's common 8 MiB.
        assert_eq!((c.parts_in_flight, c.extra_roots.len()), (32, 0));
        let small = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            memory_budget_bytes: 24 << 20,
            // One caller's share must hold a direct upload (20 MB): the whole of this small budget.
            memory_budget_share_per_key: 1.0,
            part_concurrency: 8,
            ..Settings::default()
        };
        // Never fewer than one upload's parts, whatever the budget.
        assert_eq!(small.validate().unwrap().box_side.connections.parts_in_flight, 8);
    }

    #[test]
    fn box_http_version_and_box_ca_file_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "no certificate here").unwrap();
        for (version, file, bad) in [
            ("h3", None, "box_http_version"),
            ("http2", Some(dir.path().join("missing.pem")), "box_ca_file"),
            ("auto", Some(not_pem), "box_ca_file"),
        ] {
            let settings = Settings {
                box_developer_token: Some(Secret::new("t")),
                allow_anonymous: true,
                box_http_version: version.into(),
                box_ca_file: file.map(|f| f.display().to_string()),
                ..Settings::default()
            };
            let problems = settings.validate().unwrap_err().join("\n");
            assert!(problems.starts_with(bad), "{problems}");
        }
        let ca = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem() + &ca.cert.pem()).unwrap();
        let trusting = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            box_http_version: "http2".into(),
            box_ca_file: Some(ca_file.display().to_string()),
            ..Settings::default()
        };
        let c = trusting.validate().unwrap().box_side.connections;
        assert_eq!((c.version.as_str(), c.extra_roots.len()), ("http2", 2));
    }

    #[test]
    fn box_rate_limits_are_checked() {
        let bad = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            box_rate_calls_per_minute: 100,
            box_rate_uploads_per_minute: 200,
            box_rate_wait_secs: 7200,
            box_rate_max_pause_secs: 3601,
            ..Default::default()
        };
        let problems = bad.validate().unwrap_err().join("\n");
        assert!(problems.contains("box_rate_uploads_per_minute"), "{problems}");
        assert!(problems.contains("box_rate_wait_secs"), "{problems}");
        assert!(problems.contains("box_rate_max_pause_secs: 3601"), "{problems}");
        let no_pause = Settings {
            box_rate_max_pause_secs: 0,
            ..bad
        };
        let problems = no_pause.validate().unwrap_err().join("\n");
        assert!(problems.contains("box_rate_max_pause_secs"), "{problems}");
        let ok = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Default::default()
        };
        let box_side = ok.validate().unwrap().box_side;
        let pacer = box_side.pacer;
        assert_eq!((pacer.calls_per_minute, pacer.uploads_per_minute), (900, 220));
        // One cap for the pause and for every Retry-After the retries take or pass on.
        assert_eq!(pacer.max_pause, Duration::from_secs(120));
        assert_eq!(box_side.retry.max_retry_after, pacer.max_pause);
        figment::Jail::expect_with(|jail| {
            jail.set_env("BOX_RATE_CALLS_PER_MINUTE", "500");
            jail.set_env("BOX_RATE_UPLOADS_PER_MINUTE", "100");
            jail.set_env("BOX_RATE_WAIT_SECS", "3");
            jail.set_env("BOX_RATE_MAX_PAUSE_SECS", "30");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                (
                    s.box_rate_calls_per_minute,
                    s.box_rate_uploads_per_minute,
                    s.box_rate_wait_secs,
                    s.box_rate_max_pause_secs
                ),
                (500, 100, 3, 30)
            );
            Ok(())
        });
    }

    #[test]
    fn upload_by_path_settings_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            // A folder id from the environment arrives as a number: it is taken as its text.
            jail.set_env("GATEWAY_PATH_ROOT", "250000");
            jail.set_env("GATEWAY_PATH_CACHE_TTL_SECS", "60");
            jail.set_env("GATEWAY_METADATA_SCHEMA_CACHE_MAX_ENTRIES", "10");
            let s = Settings {
                box_developer_token: Some(Secret::new("t")),
                allow_anonymous: true,
                ..Settings::load(None).map_err(|e| e.to_string())?
            };
            let paths = s.validate().unwrap().paths;
            assert_eq!(paths.default_root, "250000");
            assert_eq!(paths.caches.path_cache_ttl, Duration::from_secs(60));
            assert_eq!(paths.caches.schema_cache_max_entries, 10);
            assert_eq!(paths.caches.schema_cache_ttl, Duration::from_secs(300));
            Ok(())
        });
        let bad = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            path_root: "All Files".into(),
            path_cache_max_entries: 0,
            metadata_schema_cache_ttl_secs: 90_000,
            ..Default::default()
        };
        let problems = bad.validate().unwrap_err().join("\n");
        for key in [
            "path_root",
            "path_cache_max_entries",
            "metadata_schema_cache_ttl_secs",
        ] {
            assert!(problems.contains(key), "{key} not named: {problems}");
        }
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

    /// `whsec_` and the base64 of `text` (at least 24 bytes for a secret that is accepted).
    fn whsec(text: &str) -> String {
        use base64::Engine;
        format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(text))
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
        let (one, two) = (
            whsec("gateway-secret-one-of-24-bytes"),
            whsec("gateway-secret-two-of-24-bytes"),
        );
        let bad = Settings {
            webhook_url: Some("ftp://user:hunter2@x/?token=t0ken".into()),
            webhook_secret: Some(Secret::new(format!("{one} hunter2"))),
            webhook_concurrency: 0,
            webhook_receiver_concurrency: 3,
            webhook_connect_timeout_ms: 60_000,
            webhook_outbox_max_events: 10,
            webhook_outbox_max_events_per_key: 11,
            ..base.clone()
        };
        let problems = bad.validate().unwrap_err().join("\n");
        for key in [
            "webhook_url",
            "webhook_secret",
            "webhook_concurrency",
            "webhook_receiver_concurrency",
            "webhook_connect_timeout_ms",
            "webhook_outbox_max_events_per_key",
        ] {
            assert!(problems.contains(key), "{key} missing in {problems}");
        }
        for shown in ["hunter2", "t0ken", one.trim_start_matches("whsec_")] {
            assert!(!problems.contains(shown), "{shown} in {problems}");
        }
        // A 1-byte secret is refused (Standard Webhooks: 24 to 64 bytes).
        let weak = Settings {
            webhook_secret: Some(Secret::new("whsec_YQ==")),
            ..unsigned.clone()
        };
        let problems = weak.validate().unwrap_err().join("\n");
        assert!(
            problems.contains("webhook_secret: secret 1 is 1 bytes"),
            "{problems}"
        );
        let good = Settings {
            webhook_secret: Some(Secret::new(format!("{one} {two}"))),
            ..unsigned
        };
        let valid = good.validate().unwrap();
        let global = valid.webhooks.global.as_ref().unwrap();
        assert_eq!(global.url, "http://127.0.0.1:9/hooks");
        assert_eq!(valid.webhooks.receiver_concurrency, 2);
        let encoded = one.trim_start_matches("whsec_");
        assert!(!format!("{valid:?}").contains(encoded));
        assert!(!serde_json::to_string(&good).unwrap().contains(encoded));
    }

    fn key_with_webhook(name: &str, secret: Option<&str>, file: Option<&str>) -> ApiKeyConfig {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(name)),
            "folders": ["1"],
            "webhook_url": format!("https://u:hunter2@{name}.example/hooks?token=t0ken"),
            "webhook_secret": secret,
            "webhook_secret_file": file,
        }))
        .unwrap()
    }

    #[test]
    fn a_key_with_its_own_webhook_url_needs_its_own_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b-secret");
        std::fs::write(&file, format!("{}\n", whsec("the-secret-of-key-b-24-bytes"))).unwrap();
        let file = file.display().to_string();
        let global = whsec("the-gateway-s-own-secret-24");
        let a_secret = whsec("the-secret-of-key-a-24-bytes");
        let with = |keys: Vec<ApiKeyConfig>| Settings {
            box_developer_token: Some(Secret::new("t")),
            webhook_url: Some("https://gateway.example/hooks".into()),
            webhook_secret: Some(Secret::new(global.clone())),
            api_keys: keys,
            ..Default::default()
        };
        let ok = with(vec![
            key_with_webhook("a", Some(&a_secret), None),
            key_with_webhook("b", None, Some(&file)),
        ]);
        let valid = ok.validate().unwrap();
        assert_eq!(
            valid.webhooks.keys.keys().collect::<Vec<_>>(),
            ["a", "b"],
            "each key its own receiver"
        );
        let shown = format!("{valid:?} {ok:?}");
        for secret_or_credential in ["hunter2", "t0ken", a_secret.trim_start_matches("whsec_")] {
            assert!(
                !shown.contains(secret_or_credential),
                "{secret_or_credential}: {shown}"
            );
        }
        // No secret of its own; one byte; the gateway's secret reused; another key's reused.
        let problems = with(vec![
            key_with_webhook("none", None, None),
            key_with_webhook("weak", Some("whsec_YQ=="), None),
            key_with_webhook("reuses-global", Some(&global), None),
            key_with_webhook("a", Some(&a_secret), None),
            key_with_webhook(
                "reuses-a",
                Some(&format!("{} {a_secret}", whsec("a-fresh-secret-of-24-bytes!"))),
                None,
            ),
            key_with_webhook("both", Some(&a_secret), Some(&file)),
        ])
        .validate()
        .unwrap_err()
        .join("\n");
        for expected in [
            "api key \"none\": webhook_url needs the key's own webhook_secret",
            "api key \"weak\": webhook_secret: secret 1 is 1 bytes",
            "api key \"reuses-global\": uses a webhook secret of the gateway's webhook_secret",
            "api key \"reuses-a\": uses a webhook secret of api key \"a\"",
            "api key \"both\": set either webhook_secret or webhook_secret_file",
        ] {
            assert!(problems.contains(expected), "{expected:?} missing in {problems}");
        }
        for secret_or_credential in ["hunter2", "t0ken", a_secret.trim_start_matches("whsec_"), "YQ=="] {
            assert!(
                !problems.contains(secret_or_credential),
                "{secret_or_credential}: {problems}"
            );
        }
        // A secret without a URL is a mistake: the key's events would not be signed with it.
        let mut stray = key_with_webhook("stray", Some(&a_secret), None);
        stray.webhook_url = None;
        let problems = with(vec![stray]).validate().unwrap_err().join("\n");
        assert!(
            problems.contains("api key \"stray\": webhook_secret without webhook_url"),
            "{problems}"
        );
    }

    #[test]
    fn the_logged_settings_show_no_credentials_of_any_url() {
        let settings = Settings {
            webhook_url: Some("https://user:hunter2@gateway.example/hooks?token=t0ken".into()),
            otlp_endpoint: Some("http://otel:hunter2@collector:4318/?api_key=t0ken".into()),
            box_api_url: "https://box:hunter2@api.box.com/2.0?x=t0ken".into(),
            webhook_secret: Some(Secret::new(whsec("the-gateway-s-own-secret-24"))),
            api_keys: vec![key_with_webhook(
                "a",
                Some(&whsec("the-secret-of-key-a-24-bytes")),
                None,
            )],
            ..Default::default()
        };
        let shown = settings.for_log();
        for hidden in ["hunter2", "t0ken", "dGhl"] {
            assert!(!shown.contains(hidden), "{hidden} in {shown}");
        }
        for kept in [
            "https://gateway.example/hooks",
            "http://collector:4318/",
            "https://api.box.com/2.0",
            "https://a.example/hooks",
            "[redacted]",
        ] {
            assert!(shown.contains(kept), "{kept} missing in {shown}");
        }
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
        for url in [
            "rediss://:hunter2@redis.example:6380/0",
            "redis+unix:///run/redis.sock",
        ] {
            let ok = Settings {
                redis_url: Some(Secret::new(url)),
                ..base.clone()
            };
            assert!(ok.validate().is_ok(), "{url}");
        }
        // redis_ca_file: with rediss:// only, and a file of PEM certificates.
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "no certificate here").unwrap();
        for (url, file, why) in [
            (
                "redis://redis:6379/0",
                dir.path().join("ca.pem"),
                "only with a rediss://",
            ),
            (
                "rediss://redis:6380/0",
                dir.path().join("missing.pem"),
                "redis_ca_file:",
            ),
            ("rediss://redis:6380/0", not_pem, "holds no PEM certificate"),
        ] {
            let problems = Settings {
                redis_url: Some(Secret::new(url)),
                redis_ca_file: Some(file.display().to_string()),
                ..base.clone()
            }
            .validate()
            .unwrap_err()
            .join("\n");
            assert!(problems.contains(why), "{url}: {problems}");
        }
        let with_password = Settings {
            redis_url: Some(Secret::new("redis://:hunter2@redis:6379/0")),
            ..base
        };
        assert!(!format!("{with_password:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&with_password).unwrap().contains("hunter2"));
        let valid = with_password.validate().unwrap();
        assert!(!format!("{valid:?}").contains("hunter2"));
        assert_eq!(valid.tus.expiration, Duration::from_secs(24 * 3600));
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
        assert_eq!(valid.links.secrets.len(), 2);
        assert_eq!(
            valid.links.public_base_url.as_deref(),
            Some("https://up.example.com")
        );
        assert_eq!(valid.links.per_minute_per_key, 60);
        assert_eq!(valid.links.default_max_file_size_bytes, 2 << 30);
        let problems = Settings {
            upload_link_secret: Some(Secret::new("short-one")),
            public_base_url: Some("up.example.com".into()),
            upload_link_max_expiry_secs: 0,
            upload_page_chunk_bytes: 1,
            upload_links_per_minute_per_key: 0,
            upload_link_default_max_file_size_bytes: 0,
            ..base.clone()
        }
        .validate()
        .unwrap_err()
        .join("\n");
        for key in [
            "upload_link_secret",
            "public_base_url",
            "upload_link_max_expiry_secs",
            "upload_page_chunk_bytes",
            "upload_links_per_minute_per_key",
            "upload_link_default_max_file_size_bytes",
        ] {
            assert!(problems.contains(key), "{key} missing in {problems}");
        }
        assert!(!problems.contains("short-one"));
        // With links on, a link's address never comes from the request's headers.
        let problems = Settings {
            upload_link_secret: Some(Secret::new(long)),
            ..base
        }
        .validate()
        .unwrap_err()
        .join("\n");
        assert!(problems.contains("public_base_url: required"), "{problems}");
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
            assert_eq!(v.client.min_bytes_per_sec, 4096);
            assert_eq!(v.client.rate_window, Duration::from_secs(30));
            assert_eq!(v.memory.wait, Duration::from_secs(10));
            assert_eq!(v.spool.max_total_bytes, 3 << 30);
            Ok(())
        });
        let base = Settings {
            box_developer_token: Some(Secret::new("t")),
            allow_anonymous: true,
            ..Default::default()
        };
        // 0: four bodies of spool_max_bytes.
        assert_eq!(base.clone().validate().unwrap().spool.max_total_bytes, 4 << 30);
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
