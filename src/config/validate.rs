//! `Settings::validate`: every problem at once, each naming its key and why, one function per part of
//! the gateway, each returning the typed settings that part uses (`valid.rs`).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::secrets::secret_source;
use super::valid::*;
use super::{Settings, MAX_CHUNKED_THRESHOLD};
use crate::access::ApiKeyConfig;
use crate::box_api::{BoxUrls, Grant, JwtApp, PacerSettings, RetryPolicy, Subject, SubjectType};
use crate::events::{ReceiverSettings, WebhookSettings};
use crate::http_client::{BoxConnections, BoxHttpVersion};
use crate::pipeline::{PathSettings, PipelineSettings, ScanOversize, Staging};
use crate::scan::ScannerSettings;
use crate::secret::SecretSource;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The part size Box picks for most files (box-api.md, "Minimum size and limits"): 8 MiB.
const BOX_COMMON_PART_BYTES: u64 = 8 << 20;

/// The most connections (HTTP/2 lanes, idle HTTP/1.1 connections) the gateway keeps to Box: past it,
/// parts share connections rather than the gateway holding hundreds of TLS sessions.
const MAX_BOX_LANES: usize = 64;

/// Box discards an upload session 7 days after its creation: a tus upload must expire before.
const BOX_SESSION_LIFE_SECS: u64 = 7 * 24 * 3600;

type Problems = Vec<String>;

impl Settings {
    /// Every problem at once, each saying which key and why.
    pub fn validate(&self) -> Result<ValidSettings, Vec<String>> {
        let mut problems = Vec::new();
        let p = &mut problems;
        let server = self.server(p);
        let box_side = self.box_side(p);
        let passthrough = matches!(&box_side, Some(b) if matches!(b.auth, BoxAuth::Passthrough));
        let access = self.access(box_side.as_ref().map(|b| &b.auth), p);
        let pipeline = self.pipeline(p);
        let memory = self.memory(p);
        let client = self.client(p);
        let spool = self.spool(p);
        let state = self.state(p);
        let tus = self.tus(p);
        let idempotency = self.idempotency(p);
        let links = self.links(passthrough, p);
        let webhooks = self.webhooks(&access.api_keys, p);
        let paths = self.paths(p);
        let scan = self.scan(p);
        self.telemetry(p);
        match (problems.is_empty(), server, box_side) {
            (true, Some(server), Some(box_side)) => Ok(ValidSettings {
                server,
                box_side,
                access,
                pipeline,
                memory,
                client,
                spool,
                state,
                tus,
                idempotency,
                links,
                webhooks,
                paths,
                scan,
            }),
            _ => Err(problems),
        }
    }

    fn server(&self, problems: &mut Problems) -> Option<ServerSettings> {
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("listen: {:?} is not host:port ({e})", self.listen)))
            .ok();
        if self.max_connections == 0 {
            problems.push("max_connections: must be at least 1".into());
        }
        at_least_one(
            problems,
            &[
                ("shutdown_grace_secs", self.shutdown_grace_secs),
                (
                    "readiness_check_interval_secs",
                    self.readiness_check_interval_secs,
                ),
            ],
        );
        Some(ServerSettings {
            listen: listen?,
            workers: match self.workers {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            },
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            readiness_check_interval: Duration::from_secs(self.readiness_check_interval_secs),
        })
    }

    fn box_side(&self, problems: &mut Problems) -> Option<BoxSettings> {
        let mut url = |key: &str, value: &str| -> String {
            match reqwest::Url::parse(value) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => value.trim_end_matches('/').to_owned(),
                _ => {
                    problems.push(format!("{key}: {value:?} is not an http(s) URL"));
                    String::new()
                }
            }
        };
        let urls = BoxUrls {
            api: url("box_api_url", &self.box_api_url),
            upload: url("box_upload_url", &self.box_upload_url),
            token: url("box_token_url", &self.box_token_url),
        };
        let auth = self.box_auth(problems);
        at_least_one(
            problems,
            &[
                ("box_connect_timeout_secs", self.box_connect_timeout_secs),
                ("box_request_timeout_secs", self.box_request_timeout_secs),
                ("box_retry_max_attempts", self.box_retry_max_attempts as u64),
                // 0 would not pause at all: the retries would meet Box's 429 again at once.
                ("box_rate_max_pause_secs", self.box_rate_max_pause_secs),
            ],
        );
        if self.box_call_deadline_secs < self.box_request_timeout_secs {
            problems.push(format!(
                "box_call_deadline_secs: {} is below box_request_timeout_secs ({}); one attempt could not take its full time",
                self.box_call_deadline_secs, self.box_request_timeout_secs
            ));
        }
        if self.box_rate_calls_per_minute > 0
            && self.box_rate_uploads_per_minute > self.box_rate_calls_per_minute
        {
            problems.push(format!(
                "box_rate_uploads_per_minute: {} is above box_rate_calls_per_minute ({}); every upload call is a call too",
                self.box_rate_uploads_per_minute, self.box_rate_calls_per_minute
            ));
        }
        if self.box_rate_max_pause_secs > crate::box_api::MAX_RETRY_AFTER.as_secs() {
            problems.push(format!(
                "box_rate_max_pause_secs: {} is over an hour (the longest Retry-After the gateway reads); one odd header would stop a Box user's uploads that long",
                self.box_rate_max_pause_secs
            ));
        }
        if self.box_rate_wait_secs > 3600 {
            problems.push(format!(
                "box_rate_wait_secs: {} is over an hour; a client would rather hear 503 and Retry-After",
                self.box_rate_wait_secs
            ));
        }
        let connections = self.box_connections(problems);
        Some(BoxSettings {
            urls,
            connections,
            auth: auth?,
            as_user: self.box_as_user.clone().filter(|u| !u.is_empty()),
            connect_timeout: Duration::from_secs(self.box_connect_timeout_secs),
            request_timeout: Duration::from_secs(self.box_request_timeout_secs),
            retry: RetryPolicy {
                max_attempts: self.box_retry_max_attempts,
                base_delay: Duration::from_millis(self.box_retry_base_delay_ms),
                max_delay: Duration::from_millis(
                    self.box_retry_max_delay_ms.max(self.box_retry_base_delay_ms),
                ),
                deadline: Duration::from_secs(self.box_call_deadline_secs),
                max_retry_after: Duration::from_secs(self.box_rate_max_pause_secs),
            },
            pacer: PacerSettings {
                calls_per_minute: self.box_rate_calls_per_minute,
                uploads_per_minute: self.box_rate_uploads_per_minute,
                wait: Duration::from_secs(self.box_rate_wait_secs),
                max_pause: Duration::from_secs(self.box_rate_max_pause_secs),
            },
        })
    }

    /// `box_http_version`, `box_ca_file`, and how many parts the process can have in flight (a
    /// connection each).
    fn box_connections(&self, problems: &mut Problems) -> BoxConnections {
        let version = BoxHttpVersion::parse(&self.box_http_version).unwrap_or_else(|| {
            problems.push(format!(
                "box_http_version: {:?} is not http1, http2 or auto",
                self.box_http_version
            ));
            BoxHttpVersion::Http1
        });
        let extra_roots = match self.box_ca_file.as_deref().filter(|f| !f.is_empty()) {
            Some(file) => {
                match CertificateDer::pem_file_iter(file).and_then(|c| c.collect::<Result<Vec<_>, _>>()) {
                    Ok(roots) if !roots.is_empty() => roots,
                    Ok(_) => {
                        problems.push(format!("box_ca_file: {file} holds no PEM certificate"));
                        Vec::new()
                    }
                    Err(e) => {
                        problems.push(format!("box_ca_file: {file}: {e}"));
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        // Each part in flight holds its bytes in the memory budget, so the budget bounds the parts in
        // flight over all uploads, at Box's common part size; uploads are bounded by the connections
        // clients may open.
        let by_budget = (self.memory_budget_bytes / BOX_COMMON_PART_BYTES) as usize;
        let by_uploads = self.part_concurrency.saturating_mul(self.max_connections);
        BoxConnections {
            version,
            parts_in_flight: by_budget
                .min(by_uploads)
                .clamp(self.part_concurrency.max(1), MAX_BOX_LANES),
            extra_roots,
            connect_timeout: Duration::from_secs(self.box_connect_timeout_secs),
            request_timeout: Duration::from_secs(self.box_request_timeout_secs),
        }
    }

    /// The Box credentials of `box_auth`, each missing or contradictory key named.
    fn box_auth(&self, problems: &mut Problems) -> Option<BoxAuth> {
        let before = problems.len();
        let required = |problems: &mut Problems, key: &str, inline, file| match secret_source(
            key, inline, file, problems,
        ) {
            Ok(Some(source)) => Some(source),
            Ok(None) => {
                problems.push(format!(
                    "{key}: box_auth = {:?} needs {key} or {key}_file (env {} or {}_FILE)",
                    self.box_auth,
                    key.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                ));
                None
            }
            Err(()) => None,
        };
        let subject = |problems: &mut Problems, required: bool| -> Option<Subject> {
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
            "developer_token" => required(
                problems,
                "box_developer_token",
                self.box_developer_token.as_ref(),
                self.box_developer_token_file.as_deref(),
            )
            .map(BoxAuth::DeveloperToken),
            "client_credentials" => {
                let client_id = self.box_client_id.clone().filter(|c| !c.is_empty());
                if client_id.is_none() {
                    problems.push("box_client_id: box_auth = \"client_credentials\" needs the app's client id (BOX_CLIENT_ID)".into());
                }
                let client_secret = required(
                    problems,
                    "box_client_secret",
                    self.box_client_secret.as_ref(),
                    self.box_client_secret_file.as_deref(),
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

    /// The API keys of `api_keys_file` and `api_keys`, each problem named; and the refusal to run open
    /// to anyone by accident.
    fn access(&self, box_auth: Option<&BoxAuth>, problems: &mut Problems) -> AccessSettings {
        let mut keys = self.api_keys.clone();
        if let Some(file) = self.api_keys_file.as_deref().filter(|f| !f.is_empty()) {
            match crate::access::load_keys_file(Path::new(file)) {
                Ok(more) => keys.extend(more),
                Err(why) => problems.push(format!("api_keys_file: {why}")),
            }
        }
        let minted = matches!(box_auth, Some(BoxAuth::Minted(_)));
        problems.extend(crate::access::check_keys(&keys, minted));
        let passthrough = matches!(box_auth, Some(BoxAuth::Passthrough));
        if keys.is_empty() && !passthrough && !self.allow_anonymous {
            problems.push(
                "api_keys_file: no API keys and box_auth is not passthrough, so anyone who reaches the gateway \
                 could write into Box as its account; configure API keys, or set allow_anonymous = true \
                 (GATEWAY_ALLOW_ANONYMOUS) if the gateway is only reachable from a trusted network"
                    .into(),
            );
        }
        AccessSettings {
            api_keys: keys,
            allow_anonymous: self.allow_anonymous,
        }
    }

    fn pipeline(&self, problems: &mut Problems) -> PipelineSettings {
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
        at_least_one(
            problems,
            &[
                ("commit_timeout_secs", self.commit_timeout_secs),
                ("parts_mismatch_window_secs", self.parts_mismatch_window_secs),
            ],
        );
        PipelineSettings {
            part_concurrency: self.part_concurrency,
            chunked_threshold_bytes: self.chunked_threshold_bytes,
            commit_timeout: Duration::from_secs(self.commit_timeout_secs),
            parts_mismatch_window: Duration::from_secs(self.parts_mismatch_window_secs),
            max_file_size_bytes: (self.max_file_size_bytes > 0).then_some(self.max_file_size_bytes),
        }
    }

    fn memory(&self, problems: &mut Problems) -> MemorySettings {
        let share = self.memory_budget_share_per_key;
        // NaN fails both comparisons.
        if !(share > 0.0 && share <= 1.0) {
            problems.push(format!(
                "memory_budget_share_per_key: {share} is not within (0, 1] (the fraction of memory_budget_bytes one caller may hold)"
            ));
        }
        let share_bytes = (self.memory_budget_bytes as f64 * share.clamp(0.0, 1.0)) as u64;
        // A direct upload is held whole (its SHA-1 goes in a header), so it must fit one share.
        if share_bytes < self.chunked_threshold_bytes {
            problems.push(format!(
                "memory_budget_bytes: {} x memory_budget_share_per_key {share} = {share_bytes} is below chunked_threshold_bytes ({}); a direct upload is held whole in memory, within one caller's share",
                self.memory_budget_bytes, self.chunked_threshold_bytes
            ));
        }
        at_least_one(problems, &[("budget_wait_secs", self.budget_wait_secs)]);
        MemorySettings {
            budget_bytes: self.memory_budget_bytes,
            share_bytes,
            wait: Duration::from_secs(self.budget_wait_secs),
        }
    }

    fn client(&self, problems: &mut Problems) -> ClientLimits {
        at_least_one(
            problems,
            &[
                ("client_idle_timeout_secs", self.client_idle_timeout_secs),
                ("client_rate_window_secs", self.client_rate_window_secs),
            ],
        );
        ClientLimits {
            idle_timeout: Duration::from_secs(self.client_idle_timeout_secs),
            min_bytes_per_sec: self.client_min_bytes_per_sec,
            rate_window: Duration::from_secs(self.client_rate_window_secs),
        }
    }

    fn spool(&self, problems: &mut Problems) -> SpoolSettings {
        let dir = match self.spool_dir.is_empty() {
            true => std::env::temp_dir(),
            false => PathBuf::from(&self.spool_dir),
        };
        if self.spool_max_bytes > 0 && !dir.is_dir() {
            problems.push(format!("spool_dir: {} is not a directory", dir.display()));
        }
        let max_total_bytes = match self.spool_max_total_bytes {
            0 => self.spool_max_bytes.saturating_mul(4),
            n => n,
        };
        if max_total_bytes < self.spool_max_bytes {
            problems.push(format!(
                "spool_max_total_bytes: {} is below spool_max_bytes ({}); one body of that size could never be spooled",
                max_total_bytes, self.spool_max_bytes
            ));
        }
        SpoolSettings {
            dir,
            max_bytes: self.spool_max_bytes,
            max_total_bytes,
        }
    }

    fn state(&self, problems: &mut Problems) -> StateSettings {
        let redis_url = self.redis_url.clone().filter(|u| !u.expose().trim().is_empty());
        if let Some(url) = redis_url.as_ref().map(|u| u.expose()) {
            // `rediss://` is TLS through rustls (the gateway's one TLS stack, ring provider).
            if !["redis://", "rediss://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                problems.push("redis_url: must start with redis://, rediss:// (TLS) or redis+unix://".into());
            }
        }
        if redis_url.is_none() && self.state_dir.is_empty() {
            problems.push("state_dir: must name a directory (created if missing)".into());
        }
        let redis_ca_file = self.redis_ca_file.as_deref().filter(|f| !f.is_empty());
        if let Some(file) = redis_ca_file {
            let tls = redis_url
                .as_ref()
                .is_some_and(|u| u.expose().starts_with("rediss://"));
            match CertificateDer::pem_file_iter(file).and_then(|c| c.collect::<Result<Vec<_>, _>>()) {
                _ if !tls => problems.push("redis_ca_file: only with a rediss:// redis_url".into()),
                Ok(roots) if roots.is_empty() => {
                    problems.push(format!("redis_ca_file: {file} holds no PEM certificate"))
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("redis_ca_file: {file}: {e}")),
            }
        }
        StateSettings {
            dir: PathBuf::from(&self.state_dir),
            redis_url,
            redis_ca_file: redis_ca_file.map(PathBuf::from),
        }
    }

    fn tus(&self, problems: &mut Problems) -> TusSettings {
        if self.tus_expiration_secs == 0 || self.tus_expiration_secs >= BOX_SESSION_LIFE_SECS {
            problems.push(format!(
                "tus_expiration_secs: {} is not within 1..{BOX_SESSION_LIFE_SECS} (Box discards an upload session after 7 days)",
                self.tus_expiration_secs
            ));
        }
        if self.tus_max_open_uploads_per_key == 0 {
            problems.push("tus_max_open_uploads_per_key: must be at least 1".into());
        }
        at_least_one(problems, &[("tus_lock_ttl_secs", self.tus_lock_ttl_secs)]);
        TusSettings {
            expiration: Duration::from_secs(self.tus_expiration_secs),
            lock_ttl: Duration::from_secs(self.tus_lock_ttl_secs),
            max_size: (self.max_file_size_bytes > 0).then_some(self.max_file_size_bytes),
            max_pending_bytes: self.tus_max_pending_bytes,
            max_pending_bytes_per_key: self.tus_max_pending_bytes_per_key,
            max_open_uploads_per_key: self.tus_max_open_uploads_per_key,
        }
    }

    fn idempotency(&self, problems: &mut Problems) -> IdempotencySettings {
        if self.idempotency_window_secs == 0 {
            problems.push("idempotency_window_secs: must be at least 1".into());
        }
        if self.idempotency_claim_secs == 0 || self.idempotency_claim_secs > self.idempotency_window_secs {
            problems.push(format!(
                "idempotency_claim_secs: {} is not within 1..=idempotency_window_secs ({})",
                self.idempotency_claim_secs, self.idempotency_window_secs
            ));
        }
        IdempotencySettings {
            window: Duration::from_secs(self.idempotency_window_secs),
            claim: Duration::from_secs(self.idempotency_claim_secs),
        }
    }

    /// Upload links: their secrets (none: links are off), where they point, how long they live.
    fn links(&self, passthrough: bool, problems: &mut Problems) -> LinkSettings {
        let source = secret_source(
            "upload_link_secret",
            self.upload_link_secret.as_ref(),
            self.upload_link_secret_file.as_deref(),
            problems,
        );
        // Read once, at start: rotating the link secret takes a restart.
        let secrets = match source.ok().flatten().map(|s| s.read()) {
            Some(Ok(text)) => crate::access::parse_secrets(text.expose()),
            Some(Err(why)) => {
                problems.push(format!("upload_link_secret_file: {why}"));
                Vec::new()
            }
            None => Vec::new(),
        };
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
        if public_base_url.is_none() && !secrets.is_empty() {
            problems.push(
                "public_base_url: required with upload links on (upload_link_secret): a link's address must not come from the request's Host or X-Forwarded-Host headers"
                    .into(),
            );
        }
        if self.upload_links_per_minute_per_key == 0 {
            problems.push("upload_links_per_minute_per_key: must be at least 1".into());
        }
        if self.upload_link_default_max_file_size_bytes == 0 {
            problems.push("upload_link_default_max_file_size_bytes: must be at least 1".into());
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
        LinkSettings {
            secrets,
            public_base_url,
            max_expiry: Duration::from_secs(self.upload_link_max_expiry_secs),
            page_chunk_bytes: self.upload_page_chunk_bytes,
            default_max_file_size_bytes: self.upload_link_default_max_file_size_bytes,
            per_minute_per_key: self.upload_links_per_minute_per_key,
        }
    }

    /// The webhook settings: one receiver per URL, each with its own secret (the gateway's URL with
    /// `webhook_secret`, a key's with the key's `webhook_secret`), none shared.
    fn webhooks(&self, keys: &[ApiKeyConfig], problems: &mut Problems) -> WebhookSettings {
        let url = self.webhook_url.clone().filter(|u| !u.trim().is_empty());
        if let Some(url) = &url {
            // Not repeated: a URL may carry credentials.
            if reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
                problems.push("webhook_url: not an http(s) URL".into());
            }
        }
        let secret = secret_source(
            "webhook_secret",
            self.webhook_secret.as_ref(),
            self.webhook_secret_file.as_deref(),
            problems,
        );
        // Each receiver's keys, to refuse one secret signing for two receivers.
        let mut signers: Vec<(String, Vec<crate::secret::Secret>)> = Vec::new();
        let global = match (url, secret) {
            (Some(url), Ok(Some(source))) => {
                match source.read().and_then(|s| crate::events::sign::parse_secrets(&s)) {
                    Ok(keys) => signers.push(("the gateway's webhook_secret".into(), keys)),
                    Err(why) => problems.push(format!(
                        "webhook_secret: {why} (expected whsec_<base64>, space-separated)"
                    )),
                }
                Some(ReceiverSettings { url, secret: source })
            }
            (Some(_), Ok(None)) => {
                problems.push(
                    "webhook_secret: webhook_url is set: its events must be signed; set webhook_secret or \
                     webhook_secret_file (env GATEWAY_WEBHOOK_SECRET)"
                        .into(),
                );
                None
            }
            (_, _) => None,
        };
        let mut key_receivers = std::collections::BTreeMap::new();
        for key in keys {
            let name = &key.name;
            let url = key.webhook_url.clone().filter(|u| !u.trim().is_empty());
            let inline = key
                .webhook_secret
                .as_ref()
                .filter(|s| !s.expose().trim().is_empty());
            let file = key
                .webhook_secret_file
                .as_deref()
                .filter(|f| !f.trim().is_empty());
            let source = match (inline, file) {
                (Some(_), Some(_)) => {
                    problems.push(format!(
                        "api key {name:?}: set either webhook_secret or webhook_secret_file, not both"
                    ));
                    continue;
                }
                (Some(s), None) => Some(SecretSource::Inline(s.clone())),
                (None, Some(f)) => Some(SecretSource::File(PathBuf::from(f))),
                (None, None) => None,
            };
            match (url, source) {
                (Some(url), Some(source)) => {
                    match source.read().and_then(|s| crate::events::sign::parse_secrets(&s)) {
                        Ok(keys) => signers.push((format!("api key {name:?}"), keys)),
                        Err(why) => problems.push(format!(
                            "api key {name:?}: webhook_secret{}: {why} (expected whsec_<base64>, space-separated)",
                            if file.is_some() { "_file" } else { "" }
                        )),
                    }
                    key_receivers.insert(name.clone(), ReceiverSettings { url, secret: source });
                }
                (Some(_), None) => problems.push(format!(
                    "api key {name:?}: webhook_url needs the key's own webhook_secret or webhook_secret_file \
                     (whsec_<base64>): the gateway's webhook_secret signs only the gateway's webhook_url, \
                     so no receiver holds a secret another one accepts"
                )),
                (None, Some(_)) => problems.push(format!(
                    "api key {name:?}: webhook_secret without webhook_url; its events go to the gateway's \
                     webhook_url, signed with the gateway's webhook_secret"
                )),
                (None, None) => {}
            }
        }
        for (i, (who, keys)) in signers.iter().enumerate() {
            for (other, other_keys) in &signers[..i] {
                if keys.iter().any(|k| other_keys.contains(k)) {
                    problems.push(format!(
                        "{who}: uses a webhook secret of {other}; each receiver needs its own, or either \
                         receiver's operator could sign events the other accepts"
                    ));
                }
            }
        }
        at_least_one(
            problems,
            &[
                ("webhook_max_age_secs", self.webhook_max_age_secs),
                ("webhook_timeout_secs", self.webhook_timeout_secs),
                ("webhook_connect_timeout_ms", self.webhook_connect_timeout_ms),
                ("webhook_concurrency", self.webhook_concurrency as u64),
                (
                    "webhook_receiver_concurrency",
                    self.webhook_receiver_concurrency as u64,
                ),
                (
                    "webhook_receiver_pause_after_failures",
                    self.webhook_receiver_pause_after_failures as u64,
                ),
                ("webhook_min_backoff_ms", self.webhook_min_backoff_ms),
                ("webhook_max_backoff_secs", self.webhook_max_backoff_secs),
                ("webhook_outbox_max_events", self.webhook_outbox_max_events),
                (
                    "webhook_outbox_max_events_per_key",
                    self.webhook_outbox_max_events_per_key,
                ),
            ],
        );
        if self.webhook_receiver_concurrency > self.webhook_concurrency {
            problems.push(format!(
                "webhook_receiver_concurrency: {} is above webhook_concurrency ({}), the slots of all receivers together",
                self.webhook_receiver_concurrency, self.webhook_concurrency
            ));
        }
        if self.webhook_connect_timeout_ms > self.webhook_timeout_secs.saturating_mul(1000) {
            problems.push(format!(
                "webhook_connect_timeout_ms: {} is longer than webhook_timeout_secs ({} s), which bounds the whole attempt",
                self.webhook_connect_timeout_ms, self.webhook_timeout_secs
            ));
        }
        if self.webhook_outbox_max_events_per_key > self.webhook_outbox_max_events {
            problems.push(format!(
                "webhook_outbox_max_events_per_key: {} is above webhook_outbox_max_events ({}); one key could fill the outbox",
                self.webhook_outbox_max_events_per_key, self.webhook_outbox_max_events
            ));
        }
        WebhookSettings {
            global,
            keys: key_receivers,
            max_age: Duration::from_secs(self.webhook_max_age_secs),
            timeout: Duration::from_secs(self.webhook_timeout_secs),
            connect_timeout: Duration::from_millis(self.webhook_connect_timeout_ms),
            concurrency: self.webhook_concurrency.max(1),
            receiver_concurrency: self.webhook_receiver_concurrency.max(1),
            pause_after_failures: self.webhook_receiver_pause_after_failures.max(1),
            min_backoff: Duration::from_millis(self.webhook_min_backoff_ms),
            max_backoff: Duration::from_secs(self.webhook_max_backoff_secs)
                .max(Duration::from_millis(self.webhook_min_backoff_ms)),
            outbox_max_events: self.webhook_outbox_max_events,
            outbox_max_events_per_key: self.webhook_outbox_max_events_per_key,
        }
    }

    /// Logs and traces (`log_format` itself is used before validation, by `telemetry::init`).
    fn telemetry(&self, problems: &mut Problems) {
        if let Some(url) = self.otlp_endpoint.as_deref().filter(|u| !u.is_empty()) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push("otlp_endpoint: not an http:// or https:// URL".into());
            }
        }
        if !matches!(self.log_format.as_str(), "json" | "pretty" | "auto") {
            problems.push(format!(
                "log_format: {:?} is not json, pretty or auto",
                self.log_format
            ));
        }
    }

    /// Upload by path: the root of callers without a key, and the caches of its resolver.
    fn paths(&self, problems: &mut Problems) -> PathUploadSettings {
        if self.path_root.is_empty() || !self.path_root.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(format!(
                "path_root: {:?} is not a Box folder id (0 is All Files)",
                self.path_root
            ));
        }
        at_least_one(
            problems,
            &[
                ("path_cache_max_entries", self.path_cache_max_entries as u64),
                (
                    "metadata_schema_cache_max_entries",
                    self.metadata_schema_cache_max_entries as u64,
                ),
            ],
        );
        for (key, secs) in [
            ("path_cache_ttl_secs", self.path_cache_ttl_secs),
            (
                "metadata_schema_cache_ttl_secs",
                self.metadata_schema_cache_ttl_secs,
            ),
        ] {
            if secs > 24 * 3600 {
                problems.push(format!(
                    "{key}: {secs} is over a day; Box's folders and templates change meanwhile"
                ));
            }
        }
        PathUploadSettings {
            default_root: self.path_root.clone(),
            caches: PathSettings {
                path_cache_ttl: Duration::from_secs(self.path_cache_ttl_secs),
                path_cache_max_entries: self.path_cache_max_entries,
                schema_cache_ttl: Duration::from_secs(self.metadata_schema_cache_ttl_secs),
                schema_cache_max_entries: self.metadata_schema_cache_max_entries,
            },
        }
    }
}

impl Settings {
    /// The malware gate: clamd's address and limits, the oversize policy, the staging folder.
    fn scan(&self, problems: &mut Problems) -> Option<ScanSettings> {
        use crate::scan::{ClamdAddress, CLAMAV_MAX_FILE_BYTES};
        let address = self
            .clamd_address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty());
        let oversize = ScanOversize::parse(&self.scan_oversize).unwrap_or_else(|| {
            problems.push(format!(
                "scan_oversize: {:?} is not refuse or allow_unscanned",
                self.scan_oversize
            ));
            ScanOversize::Refuse
        });
        if !(1..=CLAMAV_MAX_FILE_BYTES).contains(&self.scan_max_bytes) {
            problems.push(format!(
                "scan_max_bytes: {} is not within 1..={CLAMAV_MAX_FILE_BYTES} (ClamAV looks at no more of a file: 2 GiB - 3)",
                self.scan_max_bytes
            ));
        }
        if !(1..=1024).contains(&self.scan_max_connections) {
            problems.push(format!(
                "scan_max_connections: {} is not within 1..=1024",
                self.scan_max_connections
            ));
        }
        // clamd closes a session silent past its ReadTimeout (120 s by default): an idle connection
        // kept longer would meet a closed socket at its next PING.
        if self.scan_connection_idle_secs >= 120 {
            problems.push(format!(
                "scan_connection_idle_secs: {} is not below clamd's ReadTimeout (120 s by default)",
                self.scan_connection_idle_secs
            ));
        }
        if !(64 * 1024..=u32::MAX as u64).contains(&self.scan_queue_bytes) {
            problems.push(format!(
                "scan_queue_bytes: {} is not within 65536..={}",
                self.scan_queue_bytes,
                u32::MAX
            ));
        }
        at_least_one(problems, &[("scan_timeout_secs", self.scan_timeout_secs)]);
        let staging = match self.scan_staging_folder_id.as_deref().map(str::trim) {
            None | Some("") => Staging::PerUser,
            Some(id) if id.bytes().all(|b| b.is_ascii_digit()) => Staging::Folder(id.to_owned()),
            Some(id) => {
                problems.push(format!("scan_staging_folder_id: {id:?} is not a Box folder id"));
                Staging::PerUser
            }
        };
        let address = match address?.parse::<ClamdAddress>() {
            Ok(address) => address,
            Err(e) => {
                problems.push(e.to_string());
                return None;
            }
        };
        Some(ScanSettings {
            scanner: ScannerSettings {
                address,
                max_connections: self.scan_max_connections,
                timeout: Duration::from_secs(self.scan_timeout_secs),
                min_scan_bytes_per_sec: self.scan_min_bytes_per_sec,
                max_bytes: self.scan_max_bytes,
                queue_bytes: self.scan_queue_bytes as usize,
                idle: Duration::from_secs(self.scan_connection_idle_secs),
            },
            oversize,
            staging,
        })
    }
}

fn at_least_one(problems: &mut Problems, values: &[(&str, u64)]) {
    for (key, value) in values {
        if *value == 0 {
            problems.push(format!("{key}: must be at least 1"));
        }
    }
}
