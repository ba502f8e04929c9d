//! Who may upload, and where. Callers present an API key (`X-API-Key`), their own Box token
//! (`Authorization: Bearer`, with `box_auth = "passthrough"`), or both; each key names the folders it may
//! upload into, its largest file, and the Box principal its uploads act as.
//!
//! Keys are stored as SHA-256 digests only, and a presented key is compared with every stored digest in
//! constant time. Logs and metrics carry a key's name, never the key.
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use figment::providers::Format;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::box_api::{BoxClient, Principal, StaticToken, Subject, SubjectType, TokenProvider};
use crate::error::ApiError;
use crate::metrics::GatewayMetrics;
use crate::pipeline::Pipeline;
use crate::secret::Secret;

mod link;
pub use link::{parse_secrets, LinkClaims, LinkKeys, LinkRefusal, MAX_NOTE_CHARS, MIN_SECRET_LEN};

/// The header that carries an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The header that carries an upload link's token (the upload page sends it with every tus request).
pub const LINK_HEADER: &str = "x-upload-link";
const REALM: &str = "box-upload-gateway";

/// One `[[keys]]` entry of the API keys file (or of `api_keys` in the settings file).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Shown in logs and metrics.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// Folder ids the key may upload into, and whose files it may add versions to.
    pub folders: Vec<String>,
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
    /// The key's own quota of new uploads a minute (429 `rate_limited` past it), whatever Box allows.
    #[serde(default)]
    pub max_uploads_per_minute: Option<u32>,
    /// The key's own quota of file bytes a day (a rolling day: the quota refills continuously).
    #[serde(default)]
    pub max_bytes_per_day: Option<u64>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("folders", &self.folders)
            .field("max_file_size_bytes", &self.max_file_size_bytes)
            .field("as_user", &self.as_user)
            .field("subject_id", &self.subject_id)
            .field("webhook_url", &self.webhook_url)
            .field("max_uploads_per_minute", &self.max_uploads_per_minute)
            .field("max_bytes_per_day", &self.max_bytes_per_day)
            .finish_non_exhaustive()
    }
}

impl ApiKeyConfig {
    fn subject(&self) -> Option<Subject> {
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
        if key.folders.is_empty() {
            problems.push(format!(
                "api key {name:?}: folders is empty; list the folder ids it may upload into"
            ));
        }
        for folder in &key.folders {
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
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!(
                    "api key {name:?}: webhook_url {url:?} is not an http:// or https:// URL"
                ));
            }
        }
    }
    problems
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
    Some(out)
}

/// The gateway's access rules, built once at start.
pub struct Access {
    keys: Vec<ApiKey>,
    /// Each caller's `Authorization: Bearer` token goes to Box.
    passthrough: bool,
    /// The gateway's own principal (None in pass-through), for uploads without a key.
    default_principal: Option<Principal>,
    metrics: Arc<GatewayMetrics>,
    /// Pass-through: each caller's token is checked with Box before any body byte is read.
    token_check: Option<TokenCheck>,
    /// Upload links' secrets; None: links are off.
    links: Option<LinkKeys>,
    /// Keys' own quotas, by key name (only keys that have one).
    quotas: std::collections::HashMap<Arc<str>, KeyQuota>,
}

/// A key's quotas (`max_uploads_per_minute`, `max_bytes_per_day`), kept in the state store so that
/// every replica counts against the same quota.
#[derive(Debug, Clone, Copy)]
struct KeyQuota {
    uploads_per_minute: Option<u32>,
    bytes_per_day: Option<u64>,
}

/// How long Box's verdict on a pass-through token is kept: a token seen again within it is not
/// checked again; a revoked token may pass for this long (its upload then fails at Box with 401).
const TOKEN_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Entries kept at most; past it, expired ones go (and if none has, the whole cache).
const TOKEN_CHECK_ENTRIES: usize = 10_000;

/// Box's verdicts on pass-through tokens, by the token's SHA-256 (never the token itself).
struct TokenCheck {
    client: BoxClient,
    verdicts: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Verdict, std::time::Instant)>>,
}

#[derive(Clone)]
enum Verdict {
    /// The Box user the token acts as.
    Accepted(Arc<str>),
    Refused,
}

struct ApiKey {
    name: Arc<str>,
    digest: [u8; 32],
    folders: Arc<HashSet<String>>,
    max_file_size_bytes: Option<u64>,
    as_user: Option<String>,
    /// The key's own token provider (its own subject), else the gateway's.
    auth: Option<Arc<dyn TokenProvider>>,
    /// Where the key's completion events go, if not to the gateway's `webhook_url`.
    webhook_url: Option<Arc<str>>,
}

/// Who is uploading: what the handlers check and which principal the pipeline acts as.
pub struct Caller {
    /// The key's name, `passthrough` or `anonymous`: for logs and metrics.
    pub name: Arc<str>,
    /// Whose resumable uploads these are (only the owner sees one): the API key's name; with
    /// pass-through, once Box has checked the token (`authenticate_checked`), `box-user:<id>` of the
    /// Box user it acts as, so a refreshed token still reaches its uploads; otherwise, without a key,
    /// `sha256:<hex>` of the bearer token (never the token itself); an anonymous caller without any
    /// token is `anonymous`, one owner shared by all of them (the upload's random id is then its
    /// only guard: documented in docs/api.md, "Resumable uploads").
    pub owner: Arc<str>,
    /// None: any folder.
    folders: Option<Arc<HashSet<String>>>,
    max_file_size_bytes: Option<u64>,
    pub principal: Principal,
    passthrough: bool,
    metrics: Arc<GatewayMetrics>,
    /// Pass-through: the Box user the caller's token acts as, from Box's check of it.
    box_user_id: Option<Arc<str>>,
    /// An upload link's caller: what the link allows (it acts as the key that made it).
    link: Option<Arc<LinkClaims>>,
}

impl Access {
    /// `default_principal` is the gateway's own (None with pass-through); `mint` makes a token provider
    /// for a key's own subject (only called for keys that name one, i.e. with minted tokens).
    pub fn new(
        keys: &[ApiKeyConfig],
        default_principal: Option<Principal>,
        mint: &dyn Fn(Subject) -> Arc<dyn TokenProvider>,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let keys_config = keys;
        let keys: Vec<ApiKey> = keys
            .iter()
            .map(|k| ApiKey {
                name: Arc::from(k.name.as_str()),
                digest: parse_digest(&k.sha256).unwrap_or_default(),
                folders: Arc::new(k.folders.iter().cloned().collect()),
                max_file_size_bytes: k.max_file_size_bytes,
                as_user: k.as_user.clone().filter(|u| !u.is_empty()),
                auth: k.subject().map(mint),
                webhook_url: k.webhook_url.as_deref().filter(|u| !u.is_empty()).map(Arc::from),
            })
            .collect();
        let quotas = keys
            .iter()
            .zip(keys_config_quotas(keys_config))
            .filter_map(|(k, q)| q.map(|q| (k.name.clone(), q)))
            .collect();
        Self {
            keys,
            passthrough: default_principal.is_none(),
            default_principal,
            metrics,
            token_check: None,
            links: None,
            quotas,
        }
    }

    /// Upload links signed and checked with `keys` (None: links are off).
    pub fn with_upload_links(self, keys: Option<LinkKeys>) -> Self {
        Self { links: keys, ..self }
    }

    /// With pass-through, callers' tokens are checked with Box (`GET /users/me`, through `client`)
    /// by `authenticate_checked`; otherwise nothing changes.
    pub fn with_token_check(self, client: BoxClient) -> Self {
        let token_check = self.passthrough.then(|| TokenCheck {
            client,
            verdicts: Default::default(),
        });
        Self { token_check, ..self }
    }

    /// `authenticate`, and with pass-through the caller's token checked with Box (its verdict cached
    /// for `TOKEN_CHECK_TTL` by the token's SHA-256): a token Box refuses is 401 `unauthenticated`
    /// before any byte of the body is read, spooled or buffered. Box out of reach: 503.
    pub async fn authenticate_checked(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let mut caller = self.authenticate(headers)?;
        let (Some(check), Some(token)) = (&self.token_check, bearer_token(headers)) else {
            return Ok(caller);
        };
        let key: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let cached = {
            let verdicts = check.verdicts.lock().unwrap_or_else(|p| p.into_inner());
            verdicts
                .get(&key)
                .filter(|(_, at)| at.elapsed() < TOKEN_CHECK_TTL)
                .map(|(v, _)| v.clone())
        };
        let verdict = match cached {
            Some(v) => v,
            None => {
                let client = check.client.acting_as(&caller.principal);
                let verdict = match client.users_me().await {
                    Ok(id) => Verdict::Accepted(Arc::from(id)),
                    Err(err) if err.status() == Some(401) => Verdict::Refused,
                    Err(err) => {
                        return Err(caller.box_error(ApiError::from(crate::pipeline::UploadError::Box(err))))
                    }
                };
                let mut verdicts = check.verdicts.lock().unwrap_or_else(|p| p.into_inner());
                if verdicts.len() >= TOKEN_CHECK_ENTRIES {
                    verdicts.retain(|_, (_, at)| at.elapsed() < TOKEN_CHECK_TTL);
                    if verdicts.len() >= TOKEN_CHECK_ENTRIES {
                        verdicts.clear();
                    }
                }
                verdicts.insert(key, (verdict.clone(), std::time::Instant::now()));
                verdict
            }
        };
        match verdict {
            Verdict::Accepted(id) => {
                // Without a key, the uploads are the Box user's: a token refreshed mid-upload (Box's
                // last an hour) still reaches them, and another user's token does not.
                if caller.owner.starts_with("sha256:") {
                    caller.owner = Arc::from(format!("box-user:{id}"));
                }
                caller.box_user_id = Some(id);
                Ok(caller)
            }
            Verdict::Refused => {
                self.metrics
                    .access_refused
                    .with_label_values(&["passthrough", "unauthenticated"])
                    .inc();
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Box refused your access token",
                )
                .with_www_authenticate(format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")))
            }
        }
    }

    /// The key named `name`'s own `webhook_url`, if it has one (events go to the gateway's
    /// otherwise). By name, so every kind of caller that acts as a key gets that key's URL.
    pub fn webhook_url_of(&self, name: &str) -> Option<Arc<str>> {
        self.keys
            .iter()
            .find(|k| &*k.name == name)
            .and_then(|k| k.webhook_url.clone())
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Who sent the request: 401 `unauthenticated` when a required key or token is missing or wrong.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(token) = headers.get(LINK_HEADER) {
            return self.authenticate_link(token.to_str().unwrap_or_default());
        }
        let bearer = match self.passthrough {
            true => Some(bearer_token(headers).ok_or_else(|| {
                self.unauthenticated("send your Box access token as `Authorization: Bearer <token>`")
            })?),
            false => None,
        };
        let key = match self.keys.is_empty() {
            true => None,
            false => {
                let presented = headers
                    .get(API_KEY_HEADER)
                    .map(|v| v.as_bytes())
                    .ok_or_else(|| self.unauthenticated("send your API key in the X-API-Key header"))?;
                Some(
                    self.find(presented)
                        .ok_or_else(|| self.unauthenticated("the API key is not valid"))?,
                )
            }
        };
        let as_user = |fallback: Option<&Principal>| {
            key.and_then(|k| k.as_user.clone())
                .or_else(|| fallback.and_then(|p| p.as_user.clone()))
        };
        let principal = match (&bearer, &self.default_principal) {
            (Some(token), _) => Principal {
                auth: Arc::new(StaticToken::new(token.clone())),
                as_user: as_user(None),
            },
            (None, Some(own)) => key_principal(key, own),
            (None, None) => unreachable!("pass-through always has a bearer token here"),
        };
        let name: Arc<str> = match (key, self.passthrough) {
            (Some(k), _) => k.name.clone(),
            (None, true) => Arc::from("passthrough"),
            (None, false) => Arc::from("anonymous"),
        };
        // A key's name has no `:` (check_keys), so no token's owner can be mistaken for a key.
        let owner = match (key, bearer.or_else(|| bearer_token(headers))) {
            (Some(k), _) => k.name.clone(),
            (None, Some(token)) => Arc::from(format!(
                "sha256:{}",
                hex::encode(Sha256::digest(token.expose().as_bytes()))
            )),
            (None, None) => name.clone(),
        };
        Ok(Caller {
            name,
            owner,
            folders: key.map(|k| k.folders.clone()),
            max_file_size_bytes: key.and_then(|k| k.max_file_size_bytes),
            principal,
            passthrough: self.passthrough,
            metrics: self.metrics.clone(),
            box_user_id: None,
            link: None,
        })
    }

    /// Whom the uploads of the caller named `name` act as, with no request in hand (the tus sweeper
    /// aborting an expired upload's session). None with pass-through: its tokens come with requests.
    pub fn principal_of(&self, name: &str) -> Option<Principal> {
        let own = self.default_principal.as_ref()?;
        // A link's uploads are owned by `link:<key>:<link id>` and act as the key.
        let name = name
            .strip_prefix("link:")
            .and_then(|rest| rest.split(':').next())
            .unwrap_or(name);
        Some(key_principal(self.keys.iter().find(|k| &*k.name == name), own))
    }

    /// The key whose digest matches: every stored digest is compared, in constant time, so the time
    /// taken says nothing about how close a guess came.
    fn find(&self, presented: &[u8]) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }

    fn unauthenticated(&self, message: &str) -> ApiError {
        self.metrics
            .access_refused
            .with_label_values(&["none", "unauthenticated"])
            .inc();
        let mut challenges = Vec::new();
        if !self.keys.is_empty() {
            challenges.push(format!("ApiKey realm=\"{REALM}\", header=\"X-API-Key\""));
        }
        if self.passthrough {
            challenges.push(format!("Bearer realm=\"{REALM}\""));
        }
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            .with_www_authenticate(challenges.join(", "))
    }
}

fn keys_config_quotas(keys: &[ApiKeyConfig]) -> impl Iterator<Item = Option<KeyQuota>> + '_ {
    keys.iter().map(|k| {
        (k.max_uploads_per_minute.is_some() || k.max_bytes_per_day.is_some()).then_some(KeyQuota {
            uploads_per_minute: k.max_uploads_per_minute,
            bytes_per_day: k.max_bytes_per_day,
        })
    })
}

/// What an upload spends of its key's quotas.
#[derive(Debug, Clone, Copy)]
pub enum QuotaCost {
    /// One new upload (`max_uploads_per_minute`), taken before any byte of its body is read.
    Upload,
    /// Its bytes (`max_bytes_per_day`), taken once its size is known, before any byte goes to Box.
    Bytes(u64),
}

impl Access {
    /// 429 `rate_limited` with `Retry-After` when the caller's key has spent this quota (shared by
    /// every replica through `store`). Keys without quotas, and callers without keys, pass. A store
    /// that fails lets the upload go (logged): a quota is not worth failing uploads for.
    pub async fn check_quota(
        &self,
        store: &dyn crate::state::StateStore,
        caller: &Caller,
        cost: QuotaCost,
    ) -> Result<(), ApiError> {
        use crate::state::rate::{Lane, RateTake};
        let Some(quota) = self.quotas.get(&caller.name) else {
            return Ok(());
        };
        let (what, per, window_ms, amount) = match cost {
            QuotaCost::Upload => (
                "uploads_per_minute",
                quota.uploads_per_minute.map(u64::from),
                60_000.0,
                1,
            ),
            QuotaCost::Bytes(n) => ("bytes_per_day", quota.bytes_per_day, 86_400_000.0, n),
        };
        let Some(per) = per else { return Ok(()) };
        if amount == 0 {
            return Ok(());
        }
        let take = RateTake {
            now_ms: crate::state::now_ms(),
            // The whole quota at once, refilled evenly over its window.
            lanes: [
                Some(Lane {
                    interval_ms: window_ms / per as f64,
                    burst: per as f64,
                    cost: amount as f64,
                }),
                None,
            ],
            recovery_ms: 0,
        };
        let wait = match store
            .rate_take(&format!("quota:{what}:{}", caller.name), take)
            .await
        {
            Ok(wait) => wait,
            Err(err) => {
                tracing::warn!(key = %caller.name, error = %err, "the state store could not check a key's quota; the upload goes");
                0
            }
        };
        if wait == 0 {
            return Ok(());
        }
        self.metrics
            .key_quota_refused
            .with_label_values(&[&caller.name, what])
            .inc();
        let unit = match cost {
            QuotaCost::Upload => format!("{per} uploads a minute"),
            QuotaCost::Bytes(_) => format!("{per} bytes a day"),
        };
        Err(ApiError {
            retry_after_secs: Some(wait.div_ceil(1000).max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this API key's quota ({unit}) is spent for now; nothing was sent to Box: try again after Retry-After"),
            )
        })
    }
}

/// The principal of a caller using the gateway's own credentials, with or without a key.
fn key_principal(key: Option<&ApiKey>, own: &Principal) -> Principal {
    match key.and_then(|k| k.auth.clone()) {
        // A key with its own subject acts as that subject, not as the gateway's managed user.
        Some(auth) => Principal {
            auth,
            as_user: key.and_then(|k| k.as_user.clone()),
        },
        None => Principal {
            auth: own.auth.clone(),
            as_user: key
                .and_then(|k| k.as_user.clone())
                .or_else(|| own.as_user.clone()),
        },
    }
}

/// `Authorization: Bearer <token>`, the scheme matched without regard to case (RFC 7235).
fn bearer_token(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Secret::new(token))
}

impl Caller {
    /// Pass-through: the Box user the caller's token acts as (Box's answer to `GET /users/me`, kept
    /// for ownership checks); None otherwise, or before `Access::authenticate_checked`.
    pub fn box_user_id(&self) -> Option<&str> {
        self.box_user_id.as_deref()
    }

    /// 403 `forbidden_folder` unless the caller's key lists the folder.
    pub fn check_folder(&self, folder_id: &str) -> Result<(), ApiError> {
        match &self.folders {
            Some(folders) if !folders.contains(folder_id) => Err(self.refuse(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_folder",
                format!("this API key may not upload into folder {folder_id}"),
            ))),
            _ => Ok(()),
        }
    }

    /// A new version is allowed only of a file inside the key's folders: Box is asked where it is
    /// (one metadata read, before any byte of the upload goes to Box).
    pub async fn check_file(&self, pipeline: &Pipeline, file_id: &str) -> Result<(), ApiError> {
        if self.link.is_some() {
            return Err(self.refuse(link_not_allowed(
                "an upload link adds new files only; it cannot add versions of existing ones",
            )));
        }
        if self.folders.is_none() {
            return Ok(());
        }
        let parent = pipeline
            .acting_as(&self.principal)
            .parent_folder(file_id)
            .await
            .map_err(|e| self.box_error(ApiError::from(e)))?;
        match &self.folders {
            Some(folders) if !folders.contains(&parent) => Err(self.refuse(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_folder",
                format!("file {file_id} is in a folder this API key may not upload into"),
            ))),
            _ => Ok(()),
        }
    }

    /// The caller's own size limit, if its key has one.
    pub fn max_file_size_bytes(&self) -> Option<u64> {
        self.max_file_size_bytes
    }

    /// 413 `file_too_large` when the file is larger than the caller's key allows.
    pub fn check_size(&self, size: u64) -> Result<(), ApiError> {
        match self.max_file_size_bytes {
            Some(limit) if size > limit => Err(self.too_large()),
            _ => Ok(()),
        }
    }

    /// 413 `file_too_large`: the file is larger than the caller's key allows.
    pub fn too_large(&self) -> ApiError {
        let limit = self.max_file_size_bytes.unwrap_or_default();
        self.refuse(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!("the file is larger than this API key accepts ({limit} bytes)"),
        ))
    }

    /// With pass-through, Box refusing the token is the caller's problem: 401, not the gateway's 502.
    pub fn box_error(&self, err: ApiError) -> ApiError {
        if self.passthrough && err.code == "box_auth_failed" {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthenticated",
                message: "Box refused your access token".into(),
                ..err
            }
            .with_www_authenticate(format!("Bearer realm=\"{REALM}\", error=\"invalid_token\""));
        }
        err
    }

    fn refuse(&self, err: ApiError) -> ApiError {
        self.metrics
            .access_refused
            .with_label_values(&[&self.name, err.code])
            .inc();
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, secret: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            folders: vec!["1".into()],
            max_file_size_bytes: None,
            as_user: None,
            subject_type: None,
            subject_id: None,
            webhook_url: None,
            max_uploads_per_minute: None,
            max_bytes_per_day: None,
        }
    }

    fn access(keys: &[ApiKeyConfig]) -> Access {
        let metrics = Arc::new(GatewayMetrics::new(&prometheus::Registry::new()).unwrap());
        let own = Principal {
            auth: Arc::new(StaticToken::new(Secret::new("own"))),
            as_user: None,
        };
        Access::new(keys, Some(own), &|_| unreachable!(), metrics)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_static(k),
                header::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn keys_are_found_by_digest_only() {
        let a = access(&[key("a", "alpha-key"), key("b", "beta-key")]);
        let caller = a.authenticate(&headers(&[("x-api-key", "beta-key")])).unwrap();
        assert_eq!(&*caller.name, "b");
        let err = a
            .authenticate(&headers(&[("x-api-key", "gamma-key")]))
            .err()
            .unwrap();
        assert_eq!((err.status.as_u16(), err.code), (401, "unauthenticated"));
        assert!(err.www_authenticate.as_deref().unwrap().starts_with("ApiKey"));
        assert!(a.authenticate(&headers(&[])).is_err());
    }

    #[test]
    fn folders_and_sizes_are_checked() {
        let mut k = key("a", "alpha-key");
        k.max_file_size_bytes = Some(10);
        let a = access(&[k]);
        let caller = a.authenticate(&headers(&[("x-api-key", "alpha-key")])).unwrap();
        assert!(caller.check_folder("1").is_ok());
        assert_eq!(caller.check_folder("2").err().unwrap().code, "forbidden_folder");
        assert!(caller.check_size(10).is_ok());
        assert_eq!(caller.check_size(11).err().unwrap().status.as_u16(), 413);
    }

    #[test]
    fn bad_keys_are_named() {
        let mut bad = key("bad name", "x");
        bad.sha256 = "the-key-itself".into();
        bad.folders = vec!["abc".into()];
        bad.subject_id = Some("7".into());
        let problems = check_keys(&[bad, key("dup", "y"), key("dup", "y")], false).join("\n");
        for what in [
            "name must be",
            "sha256 must be",
            "not a Box folder id",
            "need box_auth",
            "used twice",
            "same sha256",
        ] {
            assert!(problems.contains(what), "{what} missing in {problems}");
        }
    }

    #[test]
    fn owners_are_keys_or_hashes_of_tokens_never_tokens() {
        let keyed = access(&[key("a", "alpha-key")]);
        let caller = keyed
            .authenticate(&headers(&[
                ("x-api-key", "alpha-key"),
                ("authorization", "Bearer t1"),
            ]))
            .unwrap();
        assert_eq!(&*caller.owner, "a");
        let open = access(&[]);
        let one = open
            .authenticate(&headers(&[("authorization", "Bearer t1")]))
            .unwrap();
        let two = open
            .authenticate(&headers(&[("authorization", "Bearer t2")]))
            .unwrap();
        assert_eq!(&*one.name, "anonymous");
        assert_ne!(one.owner, two.owner);
        assert!(one.owner.starts_with("sha256:") && !one.owner.contains("t1"));
        assert_eq!(one.owner.len(), "sha256:".len() + 64);
        let nobody = open.authenticate(&headers(&[])).unwrap();
        assert_eq!(&*nobody.owner, "anonymous");
    }

    #[test]
    fn link_callers_act_as_their_key_in_the_link_folder_only() {
        let mut k = key("a", "alpha-key");
        k.folders = vec!["1".into(), "2".into()];
        k.max_file_size_bytes = Some(100);
        let secrets = || LinkKeys::new(vec![Secret::new("s".repeat(32))]);
        let a = access(std::slice::from_ref(&k)).with_upload_links(secrets());
        let maker = a.authenticate(&headers(&[("x-api-key", "alpha-key")])).unwrap();
        let request = LinkRequest {
            folder_id: "1".into(),
            expires_at: crate::state::now_secs() + 60,
            max_file_size_bytes: Some(50),
            max_files: None,
            note: None,
        };
        let (token, claims) = a.issue_link(&maker, request.clone()).unwrap();
        let caller = a.authenticate(&headers(&[("x-upload-link", &token)])).unwrap();
        assert_eq!(&*caller.name, "a");
        assert_eq!(&*caller.owner, format!("link:a:{}", claims.id));
        assert!(caller.check_folder("1").is_ok());
        assert_eq!(caller.check_folder("2").err().unwrap().code, "forbidden_folder");
        assert_eq!(caller.check_size(51).err().unwrap().code, "file_too_large");
        assert!(a.principal_of(&caller.owner).is_some());
        // A link makes no links; a size above the key's is refused; another key's folder too.
        assert_eq!(
            a.issue_link(&caller, request.clone()).err().unwrap().code,
            "link_not_allowed"
        );
        let too_big = LinkRequest {
            max_file_size_bytes: Some(101),
            ..request.clone()
        };
        assert_eq!(
            a.issue_link(&maker, too_big).err().unwrap().code,
            "invalid_link_request"
        );
        let elsewhere = LinkRequest {
            folder_id: "3".into(),
            ..request
        };
        assert_eq!(
            a.issue_link(&maker, elsewhere).err().unwrap().code,
            "forbidden_folder"
        );
        // Links off: 404 for a key, 401 without one (the endpoint's security is the key).
        let off = access(std::slice::from_ref(&k));
        let code = |r: Result<(), ApiError>| r.err().unwrap().code;
        assert_eq!(code(off.check_link_maker(&maker)), "upload_links_disabled");
        let nobody = access(&[]).authenticate(&headers(&[])).unwrap();
        assert_eq!(
            code(access(&[]).with_upload_links(secrets()).check_link_maker(&nobody)),
            "unauthenticated"
        );
        // The key gone, or no longer listing the folder: the link is revoked.
        k.folders = vec!["2".into()];
        let narrowed = access(&[k]).with_upload_links(secrets());
        let err = narrowed
            .authenticate(&headers(&[("x-upload-link", &token)]))
            .err()
            .unwrap();
        assert_eq!((err.status.as_u16(), err.code), (401, "link_invalid"));
    }

    #[test]
    fn bearer_tokens_are_parsed_case_insensitively() {
        let h = headers(&[("authorization", "bearer abc")]);
        assert_eq!(bearer_token(&h).unwrap().expose(), "abc");
        assert!(bearer_token(&headers(&[("authorization", "Basic abc")])).is_none());
        assert!(bearer_token(&headers(&[("authorization", "Bearer ")])).is_none());
    }
}

/// What `POST /v1/upload-links` asks for, its bounds already checked by the route.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    pub folder_id: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub max_file_size_bytes: Option<u64>,
    pub max_files: Option<u32>,
    pub note: Option<String>,
}

impl Access {
    /// A signed link for `request`, made by `caller`: only an API key's caller may make one, for one
    /// of its folders and within its size limit.
    pub fn issue_link(
        &self,
        caller: &Caller,
        request: LinkRequest,
    ) -> Result<(String, LinkClaims), ApiError> {
        let key = self.link_maker(caller)?;
        let keys = self.links.as_ref().ok_or_else(links_disabled)?;
        caller.check_folder(&request.folder_id)?;
        let max_file_size_bytes = match (request.max_file_size_bytes, key.max_file_size_bytes) {
            (Some(asked), Some(limit)) if asked > limit => {
                return Err(ApiError::bad_request(
                    "invalid_link_request",
                    format!("max_file_size_bytes {asked} is above this API key's limit ({limit} bytes)"),
                ))
            }
            (asked, limit) => asked.or(limit),
        };
        let claims = LinkClaims {
            id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
            key: key.name.to_string(),
            folder_id: request.folder_id,
            max_file_size_bytes,
            max_files: request.max_files,
            note: request.note.filter(|n| !n.trim().is_empty()),
            expires_at: request.expires_at,
        };
        Ok((keys.sign(&claims), claims))
    }

    /// The key of a caller that may make links: 401 without an API key (whether links are on or
    /// not: the endpoint's security is the key), 403 for a link's caller, 404 when links are off.
    fn link_maker(&self, caller: &Caller) -> Result<&ApiKey, ApiError> {
        if caller.link.is_some() {
            return Err(caller.refuse(link_not_allowed("an upload link cannot make another link")));
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.name == caller.name && caller.folders.is_some())
            .ok_or_else(|| {
                self.unauthenticated("upload links are made with an API key: send it in the X-API-Key header")
            })?;
        self.links.as_ref().ok_or_else(links_disabled)?;
        Ok(key)
    }

    /// `link_maker`'s verdict alone, before the request's body is read.
    pub fn check_link_maker(&self, caller: &Caller) -> Result<(), ApiError> {
        self.link_maker(caller).map(|_| ())
    }

    /// The claims of a link token that is genuine, not expired, and whose key still exists and still
    /// lists the link's folder (removing a key, or its folder, revokes its links).
    pub fn check_link(&self, token: &str) -> Result<LinkClaims, ApiError> {
        let keys = self.links.as_ref().ok_or_else(links_disabled)?;
        let refused = |key: &str, err: ApiError| {
            self.metrics
                .access_refused
                .with_label_values(&[key, err.code])
                .inc();
            err
        };
        let claims = match keys.verify(token, crate::state::now_secs()) {
            Ok(claims) => claims,
            Err(LinkRefusal::Invalid) => return Err(refused("none", link_invalid())),
            Err(LinkRefusal::Expired(claims)) => {
                let at = chrono::DateTime::from_timestamp(claims.expires_at as i64, 0).unwrap_or_default();
                return Err(refused(
                    &claims.key,
                    ApiError::new(
                        StatusCode::GONE,
                        "link_expired",
                        format!(
                            "this upload link expired at {}; ask for a new one",
                            at.to_rfc3339()
                        ),
                    ),
                ));
            }
        };
        match self.keys.iter().find(|k| *k.name == claims.key) {
            Some(key) if key.folders.contains(&claims.folder_id) => Ok(claims),
            _ => Err(refused("none", link_invalid())),
        }
    }

    /// The caller of a request that carries a link: the key that made it, confined to the link's
    /// folder and limits. Its uploads are its own (`link:<key>:<id>` owns them), so one link's holder
    /// never reaches the key's other uploads.
    fn authenticate_link(&self, token: &str) -> Result<Caller, ApiError> {
        let claims = self.check_link(token)?;
        let key = self
            .keys
            .iter()
            .find(|k| *k.name == claims.key)
            .ok_or_else(link_invalid)?;
        // Validation refuses links with pass-through (a link carries no Box token).
        let own = self.default_principal.as_ref().ok_or_else(link_invalid)?;
        let max_file_size_bytes = match (claims.max_file_size_bytes, key.max_file_size_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Caller {
            name: key.name.clone(),
            owner: Arc::from(format!("link:{}:{}", key.name, claims.id)),
            folders: Some(Arc::new(HashSet::from([claims.folder_id.clone()]))),
            max_file_size_bytes,
            principal: key_principal(Some(key), own),
            passthrough: false,
            metrics: self.metrics.clone(),
            box_user_id: None,
            link: Some(Arc::new(claims)),
        })
    }
}

/// 401 `link_invalid`: not a link this gateway signed, altered, or its key is gone.
fn link_invalid() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "link_invalid",
        "this upload link is not valid (it was altered, or it has been revoked); ask for a new one",
    )
}

fn links_disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "upload_links_disabled",
        "upload links are off: the gateway has no upload_link_secret",
    )
}

/// 403 `link_not_allowed`: what an upload link's holder may not do.
pub fn link_not_allowed(why: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "link_not_allowed", why)
}

impl Caller {
    /// An upload link's caller: what its link allows.
    pub fn link(&self) -> Option<&LinkClaims> {
        self.link.as_deref()
    }

    /// 403 `link_not_allowed` when a link's caller would add a version to an existing file by name.
    pub fn check_on_conflict(&self, on_conflict: &crate::pipeline::OnConflict) -> Result<(), ApiError> {
        match (&self.link, on_conflict) {
            (Some(_), crate::pipeline::OnConflict::Version) => Err(self.refuse(link_not_allowed(
                "an upload link adds new files only: on_conflict=version is not allowed (use rename or error)",
            ))),
            _ => Ok(()),
        }
    }
}
