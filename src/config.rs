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

use crate::box_api::Secret;

/// The most a direct upload may carry: Box advises direct uploads only up to about 50 MB.
pub const MAX_CHUNKED_THRESHOLD: u64 = 50_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the gateway listens on (`GATEWAY_LISTEN`).
    pub listen: String,
    /// Worker threads for HTTP (0 = one per core).
    pub workers: usize,
    pub box_api_url: String,
    pub box_upload_url: String,
    pub box_token_url: String,
    /// A Box developer token (or any access token) used for every call.
    #[serde(serialize_with = "redacted")]
    pub box_developer_token: Option<Secret>,
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
    pub box_connect_timeout_secs: u64,
    /// Bound on one Box call, a whole part upload included.
    pub box_request_timeout_secs: u64,
    pub box_retry_max_attempts: u32,
    pub box_retry_base_delay_ms: u64,
    pub box_retry_max_delay_ms: u64,
    /// How long a commit may keep answering 202 / a transient parts_mismatch.
    pub commit_timeout_secs: u64,
    /// `json`, `pretty`, or `auto` (pretty on a terminal, JSON otherwise).
    pub log_format: String,
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
            box_api_url: "https://api.box.com/2.0".into(),
            box_upload_url: "https://upload.box.com/api/2.0".into(),
            box_token_url: "https://api.box.com/oauth2/token".into(),
            box_developer_token: None,
            part_concurrency: 4,
            memory_budget_bytes: 256 * 1024 * 1024,
            chunked_threshold_bytes: 20_000_000,
            max_file_size_bytes: 0,
            spool_dir: String::new(),
            spool_max_bytes: 1024 * 1024 * 1024,
            client_idle_timeout_secs: 60,
            box_connect_timeout_secs: 10,
            box_request_timeout_secs: 300,
            box_retry_max_attempts: 6,
            box_retry_base_delay_ms: 250,
            box_retry_max_delay_ms: 30_000,
            commit_timeout_secs: 600,
            log_format: "auto".into(),
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
        let mut figment = Figment::from(Serialized::defaults(Settings {
            box_developer_token: None,
            ..Default::default()
        }));
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
        if self
            .box_developer_token
            .as_ref()
            .is_none_or(|t| t.expose().trim().is_empty())
        {
            problems.push("box_developer_token: no Box credentials; set BOX_DEVELOPER_TOKEN (or run `serve --emulator`)".into());
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
            ("box_connect_timeout_secs", self.box_connect_timeout_secs),
            ("box_request_timeout_secs", self.box_request_timeout_secs),
            ("commit_timeout_secs", self.commit_timeout_secs),
            ("box_retry_max_attempts", self.box_retry_max_attempts as u64),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be at least 1"));
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
        match (problems.is_empty(), listen) {
            (true, Some(listen)) => Ok(ValidSettings {
                listen,
                workers: if self.workers == 0 {
                    std::thread::available_parallelism().map_or(2, |n| n.get())
                } else {
                    self.workers
                },
                box_urls: crate::box_api::BoxUrls { api, upload, token },
                box_token: self
                    .box_developer_token
                    .clone()
                    .unwrap_or_else(|| Secret::new("")),
                part_concurrency: self.part_concurrency,
                memory_budget_bytes: self.memory_budget_bytes,
                chunked_threshold_bytes: self.chunked_threshold_bytes,
                max_file_size_bytes: (self.max_file_size_bytes > 0).then_some(self.max_file_size_bytes),
                spool_dir,
                spool_max_bytes: self.spool_max_bytes,
                client_idle_timeout: Duration::from_secs(self.client_idle_timeout_secs),
                box_connect_timeout: Duration::from_secs(self.box_connect_timeout_secs),
                box_request_timeout: Duration::from_secs(self.box_request_timeout_secs),
                retry: crate::box_api::RetryPolicy {
                    max_attempts: self.box_retry_max_attempts,
                    base_delay: Duration::from_millis(self.box_retry_base_delay_ms),
                    max_delay: Duration::from_millis(
                        self.box_retry_max_delay_ms.max(self.box_retry_base_delay_ms),
                    ),
                },
                commit_timeout: Duration::from_secs(self.commit_timeout_secs),
                log_format: self.log_format.clone(),
            }),
            _ => Err(problems),
        }
    }
}

/// Settings after validation: typed, with units in the types.
#[derive(Debug, Clone)]
pub struct ValidSettings {
    pub listen: SocketAddr,
    pub workers: usize,
    pub box_urls: crate::box_api::BoxUrls,
    pub box_token: Secret,
    pub part_concurrency: usize,
    pub memory_budget_bytes: u64,
    pub chunked_threshold_bytes: u64,
    pub max_file_size_bytes: Option<u64>,
    pub spool_dir: PathBuf,
    /// 0: spooling is off.
    pub spool_max_bytes: u64,
    pub client_idle_timeout: Duration,
    pub box_connect_timeout: Duration,
    pub box_request_timeout: Duration,
    pub retry: crate::box_api::RetryPolicy,
    pub commit_timeout: Duration,
    pub log_format: String,
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment's own large error
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_credentials() {
        let problems = Settings::default().validate().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("box_developer_token"));
        let ok = Settings {
            box_developer_token: Some(Secret::new("t")),
            ..Default::default()
        };
        assert_eq!(
            ok.validate().unwrap().box_urls.upload,
            "https://upload.box.com/api/2.0"
        );
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
            let s = Settings::load(Some(Path::new("g.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.part_concurrency, 3);
            assert_eq!(s.box_api_url, "http://env/2.0");
            assert_eq!(s.listen, "127.0.0.1:9");
            assert!(!format!("{s:?}").contains("secret-token"));
            Ok(())
        });
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
}
