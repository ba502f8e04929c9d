//! API keys: the `[[keys]]` entries as configured, their checks at start, and the constant-time
//! lookup of a presented key among their digests. Keys are stored as SHA-256 digests only.
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use figment::providers::Format;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::box_api::{Subject, SubjectType, TokenProvider};
use crate::secret::Secret;

fn redacted<S: serde::Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

/// One `[[keys]]` entry of the API keys file (or of `api_keys` in the settings file).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Shown in logs and metrics.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// Folder ids the key may upload into, and whose files it may add versions to.
    #[serde(default)]
    pub folders: Vec<String>,
    /// A folder id: the key may upload by path (`/v1/paths/...`, tus `path`) into it and any folder
    /// below it, creating what is missing. A grant of its own, beside `folders` (which keeps saying
    /// where the key uploads by id): it need not be listed there, and the folders made below it are
    /// not added there. Without it, the key cannot upload by path.
    #[serde(default)]
    pub path_root: Option<String>,
    #[serde(default)]
    pub max_file_size_bytes: Option<u64>,
    /// The managed user this key's uploads act as (`As-User`).
    #[serde(default)]
    pub as_user: Option<String>,
    /// With `client_credentials` or `jwt`: the key's uploads get tokens for this subject instead of the
    /// gateway's (`enterprise` or `user`, and its id).
    #[serde(default)]
    pub subject_type: Option<String>,
    #[serde(default)]
    pub subject_id: Option<String>,
    /// Where this key's completion events go, instead of the gateway's `webhook_url`.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The Standard Webhooks secrets (`whsec_<base64>`, whitespace-separated during a rotation) that
    /// sign this key's events, required with `webhook_url`: each receiver holds only its own secret,
    /// so one receiver's operator cannot sign events another receiver would accept.
    #[serde(default, serialize_with = "redacted")]
    pub webhook_secret: Option<Secret>,
    /// A file holding them instead (read at each delivery: a rotated Secret needs no restart).
    #[serde(default)]
    pub webhook_secret_file: Option<String>,
    /// The key's own quota of new uploads a minute (429 `rate_limited` past it), whatever Box allows.
    #[serde(default)]
    pub max_uploads_per_minute: Option<u32>,
    /// The key's own quota of file bytes a day (a rolling day: the quota refills continuously).
    #[serde(default)]
    pub max_bytes_per_day: Option<u64>,
    /// `false`: this key's uploads are not scanned for malware (a trusted internal producer); its
    /// upload links' uploads still are. Absent: scanned (when `clamd_address` is set).
    #[serde(default)]
    pub scan: Option<bool>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("folders", &self.folders)
            .field("path_root", &self.path_root)
            .field("max_file_size_bytes", &self.max_file_size_bytes)
            .field("as_user", &self.as_user)
            .field("subject_id", &self.subject_id)
            .field(
                "webhook_url",
                &self.webhook_url.as_deref().map(crate::http_client::loggable_url),
            )
            .field("webhook_secret", &self.webhook_secret)
            .field("webhook_secret_file", &self.webhook_secret_file)
            .field("max_uploads_per_minute", &self.max_uploads_per_minute)
            .field("max_bytes_per_day", &self.max_bytes_per_day)
            .field("scan", &self.scan)
            .finish_non_exhaustive()
    }
}

impl ApiKeyConfig {
    pub(super) fn subject(&self) -> Option<Subject> {
        Some(Subject {
            kind: SubjectType::parse(self.subject_type.as_deref().unwrap_or("user"))?,
            id: self.subject_id.clone()?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKeyConfig>,
}

/// Reads an API keys file: TOML, `[[keys]]` tables.
pub fn load_keys_file(path: &Path) -> Result<Vec<ApiKeyConfig>, String> {
    if !path.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    figment::Figment::from(figment::providers::Toml::file(path))
        .extract::<KeysFile>()
        .map(|f| f.keys)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Every problem of a set of keys, each naming the key.
pub fn check_keys(keys: &[ApiKeyConfig], minted: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for key in keys {
        let name = &key.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            problems.push(format!(
                "api key {name:?}: name must be non-empty ASCII letters, digits, - _ ."
            ));
        }
        if !names.insert(name.clone()) {
            problems.push(format!("api key {name:?}: the name is used twice"));
        }
        match parse_digest(&key.sha256) {
            None => problems.push(format!(
                "api key {name:?}: sha256 must be 64 hex digits (the SHA-256 of the key, not the key)"
            )),
            Some(d) if !digests.insert(d) => {
                problems.push(format!("api key {name:?}: same sha256 as another key"))
            }
            Some(_) => {}
        }
        if key.folders.is_empty() && key.path_root.is_none() {
            problems.push(format!(
                "api key {name:?}: folders is empty; list the folder ids it may upload into (or give it a path_root)"
            ));
        }
        for folder in key.folders.iter().chain(&key.path_root) {
            if folder.is_empty() || !folder.bytes().all(|b| b.is_ascii_digit()) {
                problems.push(format!(
                    "api key {name:?}: folder {folder:?} is not a Box folder id"
                ));
            }
        }
        if key.max_uploads_per_minute == Some(0) || key.max_bytes_per_day == Some(0) {
            problems.push(format!(
                "api key {name:?}: max_uploads_per_minute and max_bytes_per_day must be at least 1 (leave them out for no quota)"
            ));
        }
        if key.max_file_size_bytes == Some(0) {
            problems.push(format!(
                "api key {name:?}: max_file_size_bytes must be at least 1"
            ));
        }
        match (&key.subject_type, &key.subject_id) {
            (None, None) => {}
            _ if !minted => problems.push(format!(
                "api key {name:?}: subject_type/subject_id need box_auth = client_credentials or jwt"
            )),
            (_, None) => problems.push(format!("api key {name:?}: subject_type without subject_id")),
            (Some(t), Some(_)) if SubjectType::parse(t).is_none() => problems.push(format!(
                "api key {name:?}: subject_type {t:?} is not enterprise or user"
            )),
            _ => {}
        }
        if let Some(url) = key.webhook_url.as_deref().filter(|u| !u.is_empty()) {
            // The value is not repeated: a URL may carry credentials (user info, a query token).
            if reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
                problems.push(format!(
                    "api key {name:?}: webhook_url is not an http:// or https:// URL"
                ));
            }
        }
    }
    problems
}

pub(super) fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
    Some(out)
}

/// A key as the gateway holds it after start.
pub(super) struct ApiKey {
    pub name: Arc<str>,
    pub digest: [u8; 32],
    pub folders: Arc<HashSet<String>>,
    /// Where the key's uploads by path start (None: it may not upload by path).
    pub path_root: Option<Arc<str>>,
    pub max_file_size_bytes: Option<u64>,
    pub as_user: Option<String>,
    /// `scan = false`: its own uploads skip the malware scan (its links' do not).
    pub scan_exempt: bool,
    /// The key's own token provider (its own subject), else the gateway's.
    pub auth: Option<Arc<dyn TokenProvider>>,
}

impl ApiKey {
    /// `mint` makes a token provider for a key's own subject (only called for keys that name one).
    pub fn from_config(k: &ApiKeyConfig, mint: &dyn Fn(Subject) -> Arc<dyn TokenProvider>) -> Self {
        Self {
            name: Arc::from(k.name.as_str()),
            digest: parse_digest(&k.sha256).unwrap_or_default(),
            folders: Arc::new(k.folders.iter().cloned().collect()),
            path_root: k.path_root.as_deref().map(Arc::from),
            max_file_size_bytes: k.max_file_size_bytes,
            as_user: k.as_user.clone().filter(|u| !u.is_empty()),
            scan_exempt: k.scan == Some(false),
            auth: k.subject().map(mint),
        }
    }
}

/// The key whose digest matches: every stored digest is compared, in constant time, so the time
/// taken says nothing about how close a guess came.
pub(super) fn find_key<'a>(keys: &'a [ApiKey], presented: &[u8]) -> Option<&'a ApiKey> {
    let digest: [u8; 32] = Sha256::digest(presented).into();
    let mut found = None;
    for key in keys {
        if bool::from(key.digest.ct_eq(&digest)) {
            found = Some(key);
        }
    }
    found
}
