//! Who may upload, and where. Callers present an API key (`X-API-Key`), their own Box token
//! (`Authorization: Bearer`, with `box_auth = "passthrough"`), both, or an upload link's token
//! (`X-Upload-Link`); each key names the folders it may upload into, its largest file, and the Box
//! principal its uploads act as.
//!
//! - `keys.rs`: the configured keys, checked at start; digests only, compared in constant time
//! - `caller.rs`: the `Caller` a request is authenticated as, its `Owner`, its per-request checks
//! - `token_check.rs`: Box's verdict on pass-through tokens, cached by digest
//! - `quota.rs`: each key's own quotas, in the state store
//! - `links.rs` and `link_token.rs`: upload links, their signed tokens and their file slots
//!
//! Logs and metrics carry a key's name, never the key.
mod caller;
mod keys;
mod link_token;
mod links;
mod quota;
mod token_check;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use sha2::{Digest, Sha256};

pub use caller::{link_not_allowed, Caller, Owner};
pub use keys::{check_keys, load_keys_file, ApiKeyConfig};
use keys::{find_key, ApiKey};
pub use link_token::{
    note_problem, parse_secrets, LinkClaims, LinkKeys, LinkRefusal, MAX_NOTE_CHARS, MIN_SECRET_LEN,
};
pub use links::{LinkPolicy, LinkRequest, LinkSlot};
use quota::KeyQuota;
pub use quota::{QuotaCost, QuotaTaken};
use token_check::{TokenCheck, Verdict};

use crate::box_api::{BoxClient, Principal, StaticToken, Subject, TokenProvider};
use crate::error::ApiError;
use crate::metrics::GatewayMetrics;
use crate::secret::Secret;
use crate::state::StateStore;

/// The header that carries an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The header that carries an upload link's token (the upload page sends it with every tus request).
pub const LINK_HEADER: &str = "x-upload-link";
const REALM: &str = "box-upload-gateway";

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
    /// How links are given out (their default size limit, longest life, rate per key).
    link_policy: LinkPolicy,
    /// Keys' own quotas, by key name (only keys that have one).
    quotas: HashMap<Arc<str>, KeyQuota>,
    /// Where quotas and link slots are counted (shared by the replicas with Redis).
    store: Arc<dyn StateStore>,
}

impl Access {
    /// `default_principal` is the gateway's own (None with pass-through); `mint` makes a token provider
    /// for a key's own subject (only called for keys that name one, i.e. with minted tokens); `store`
    /// counts the keys' quotas and the links' file slots.
    pub fn new(
        keys: &[ApiKeyConfig],
        default_principal: Option<Principal>,
        mint: &dyn Fn(Subject) -> Arc<dyn TokenProvider>,
        metrics: Arc<GatewayMetrics>,
        store: Arc<dyn StateStore>,
    ) -> Self {
        let quotas = keys
            .iter()
            .zip(quota::quotas_of(keys))
            .filter_map(|(k, q)| q.map(|q| (Arc::from(k.name.as_str()), q)))
            .collect();
        Self {
            keys: keys.iter().map(|k| ApiKey::from_config(k, mint)).collect(),
            passthrough: default_principal.is_none(),
            default_principal,
            metrics,
            token_check: None,
            links: None,
            link_policy: LinkPolicy {
                default_max_file_size_bytes: u64::MAX,
                max_expiry: std::time::Duration::from_secs(365 * 24 * 3600),
                per_minute_per_key: u32::MAX,
            },
            quotas,
            store,
        }
    }

    /// Upload links signed and checked with `keys` (None: links are off), given out by `policy`.
    pub fn with_upload_links(self, keys: Option<LinkKeys>, policy: LinkPolicy) -> Self {
        Self {
            links: keys,
            link_policy: policy,
            ..self
        }
    }

    /// With pass-through, callers' tokens are checked with Box (`GET /users/me`, through `client`)
    /// by `authenticate_checked`; otherwise nothing changes.
    pub fn with_token_check(self, client: BoxClient) -> Self {
        let token_check = self.passthrough.then(|| TokenCheck::new(client));
        Self { token_check, ..self }
    }

    /// `authenticate`, and with pass-through the caller's token checked with Box (its verdict cached
    /// by the token's SHA-256, `token_check.rs`): a token Box refuses is 401 `unauthenticated` before
    /// any byte of the body is read, spooled or buffered. Box out of reach: 503.
    ///
    /// An upload link's caller (`X-Upload-Link`) is checked here too, its revocation included (a read
    /// of the state store): this is the only way a request is authenticated.
    pub async fn authenticate_checked(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(token) = headers.get(LINK_HEADER) {
            return self.authenticate_link(token.to_str().unwrap_or_default()).await;
        }
        let mut caller = self.authenticate(headers)?;
        let (Some(check), Some(token)) = (&self.token_check, bearer_token(headers)) else {
            return Ok(caller);
        };
        let verdict = check
            .verdict(&caller.principal, &token)
            .await
            .map_err(|err| caller.box_error(ApiError::from(crate::pipeline::UploadError::Box(err))))?;
        match verdict {
            Verdict::Accepted(id) => {
                // The uploads are the Box user's: a token refreshed mid-upload (Box's last an hour)
                // still reaches them, and another user's token does not, with a key or without
                // (users who share a key do not share their uploads).
                caller.owner = match caller.owner {
                    Owner::Token { .. } => Owner::BoxUser(id.clone()),
                    Owner::Key(key) => Owner::KeyBoxUser {
                        key,
                        box_user_id: id.clone(),
                    },
                    other => other,
                };
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

    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Who sent a request without a link: 401 `unauthenticated` when a required key or token is
    /// missing or wrong. (Pass-through tokens are checked with Box, and links, by
    /// `authenticate_checked`, which the routes call.)
    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
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
                    find_key(&self.keys, presented)
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
        let key_label: Arc<str> = match (key, self.passthrough) {
            (Some(k), _) => k.name.clone(),
            (None, true) => Arc::from("passthrough"),
            (None, false) => Arc::from("anonymous"),
        };
        let owner = match (key, bearer.or_else(|| bearer_token(headers))) {
            (Some(k), _) => Owner::Key(k.name.clone()),
            (None, Some(token)) => Owner::Token {
                sha256_hex: hex::encode(Sha256::digest(token.expose().as_bytes())),
            },
            (None, None) => Owner::Anonymous,
        };
        Ok(Caller {
            key_label,
            owner,
            folders: key.map(|k| k.folders.clone()),
            path_root: key.and_then(|k| k.path_root.clone()),
            max_file_size_bytes: key.and_then(|k| k.max_file_size_bytes),
            principal,
            passthrough: self.passthrough,
            metrics: self.metrics.clone(),
            box_user_id: None,
            link: None,
            scan_exempt: key.is_some_and(|k| k.scan_exempt),
        })
    }

    /// Whom the uploads of `owner` act as, with no request in hand (the tus sweeper aborting an
    /// expired upload's session). None with pass-through: its tokens come with requests.
    pub fn principal_of_owner(&self, owner: &Owner) -> Option<Principal> {
        let own = self.default_principal.as_ref()?;
        let key = owner
            .key_name()
            .and_then(|name| self.keys.iter().find(|k| &*k.name == name));
        Some(key_principal(key, own))
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
#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, secret: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            folders: vec!["1".into()],
            path_root: None,
            max_file_size_bytes: None,
            as_user: None,
            subject_type: None,
            subject_id: None,
            webhook_url: None,
            webhook_secret: None,
            webhook_secret_file: None,
            max_uploads_per_minute: None,
            max_bytes_per_day: None,
            scan: None,
        }
    }

    fn access(keys: &[ApiKeyConfig]) -> Access {
        let metrics = Arc::new(GatewayMetrics::new(&prometheus::Registry::new()).unwrap());
        let own = Principal {
            auth: Arc::new(StaticToken::new(Secret::new("own"))),
            as_user: None,
        };
        // Written by the link tests only (revocations, the link rate). The directory goes at the end
        // of this function; the open file lives on, unlinked, for the test (Linux).
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::state::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        Access::new(keys, Some(own), &|_| unreachable!(), metrics, store)
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
        assert_eq!(&**caller.key_label(), "b");
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
        assert_eq!(caller.owner().to_string(), "a");
        let open = access(&[]);
        let one = open
            .authenticate(&headers(&[("authorization", "Bearer t1")]))
            .unwrap();
        let two = open
            .authenticate(&headers(&[("authorization", "Bearer t2")]))
            .unwrap();
        assert_eq!(&**one.key_label(), "anonymous");
        assert_ne!(one.owner(), two.owner());
        let one_owner = one.owner().to_string();
        assert!(one_owner.starts_with("sha256:") && !one_owner.contains("t1"));
        assert_eq!(one_owner.len(), "sha256:".len() + 64);
        let nobody = open.authenticate(&headers(&[])).unwrap();
        assert_eq!(nobody.owner(), &Owner::Anonymous);
    }

    fn policy() -> LinkPolicy {
        LinkPolicy {
            default_max_file_size_bytes: 1000,
            max_expiry: std::time::Duration::from_secs(3600),
            per_minute_per_key: 2,
        }
    }

    async fn link_caller(a: &Access, token: &str) -> Result<Caller, ApiError> {
        a.authenticate_checked(&headers(&[("x-upload-link", token)]))
            .await
    }

    #[tokio::test]
    async fn link_callers_act_as_their_key_in_the_link_folder_only() {
        let mut k = key("a", "alpha-key");
        k.folders = vec!["1".into(), "2".into()];
        k.max_file_size_bytes = Some(100);
        let secrets = || LinkKeys::new(vec![Secret::new("s".repeat(32))]);
        let a = access(std::slice::from_ref(&k)).with_upload_links(secrets(), policy());
        let maker = a.authenticate(&headers(&[("x-api-key", "alpha-key")])).unwrap();
        let request = LinkRequest {
            folder_id: "1".into(),
            expires_at: crate::state::now_secs() + 60,
            max_file_size_bytes: Some(50),
            max_files: None,
            note: None,
        };
        let (token, claims) = a.issue_link(&maker, request.clone()).unwrap();
        let caller = link_caller(&a, &token).await.unwrap();
        assert_eq!(&**caller.key_label(), "a");
        assert_eq!(caller.owner().to_string(), format!("link:a:{}", claims.id));
        assert!(caller.check_folder("1").is_ok());
        assert_eq!(caller.check_folder("2").err().unwrap().code, "forbidden_folder");
        assert_eq!(caller.check_size(51).err().unwrap().code, "file_too_large");
        assert!(a.principal_of_owner(caller.owner()).is_some());
        assert!(
            caller.check_plain_upload().is_err(),
            "a link uploads through tus only"
        );
        assert!(maker.check_plain_upload().is_ok());
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
            ..request.clone()
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
            code(
                access(&[])
                    .with_upload_links(secrets(), policy())
                    .check_link_maker(&nobody)
            ),
            "unauthenticated"
        );
        // A link that would outlive upload_link_max_expiry_secs (made when it was higher) is refused.
        let (long, _) = a
            .issue_link(
                &maker,
                LinkRequest {
                    expires_at: crate::state::now_secs() + 7200,
                    ..request
                },
            )
            .unwrap();
        assert_eq!(link_caller(&a, &long).await.err().unwrap().code, "link_invalid");
        // The key gone, or no longer listing the folder: the link is revoked.
        k.folders = vec!["2".into()];
        let narrowed = access(std::slice::from_ref(&k)).with_upload_links(secrets(), policy());
        let err = link_caller(&narrowed, &token).await.err().unwrap();
        assert_eq!((err.status.as_u16(), err.code), (401, "link_invalid"));
        // The key's secret rotated under the same name: its links die with the old secret.
        k.folders = vec!["1".into()];
        let same = access(std::slice::from_ref(&k)).with_upload_links(secrets(), policy());
        assert!(link_caller(&same, &token).await.is_ok());
        k.sha256 = hex::encode(Sha256::digest(b"alpha-key-rotated"));
        let rotated = access(&[k]).with_upload_links(secrets(), policy());
        let err = link_caller(&rotated, &token).await.err().unwrap();
        assert_eq!((err.status.as_u16(), err.code), (401, "link_invalid"));
    }

    #[tokio::test]
    async fn links_always_carry_a_size_limit_and_are_revoked_one_by_one() {
        let k = key("a", "alpha-key");
        let a = access(&[k]).with_upload_links(LinkKeys::new(vec![Secret::new("s".repeat(32))]), policy());
        let maker = a.authenticate(&headers(&[("x-api-key", "alpha-key")])).unwrap();
        let request = LinkRequest {
            folder_id: "1".into(),
            expires_at: crate::state::now_secs() + 60,
            max_file_size_bytes: None,
            max_files: None,
            note: None,
        };
        let (one, claims) = a.issue_link(&maker, request.clone()).unwrap();
        let (two, _) = a.issue_link(&maker, request).unwrap();
        // The key has no size limit: the link gets upload_link_default_max_file_size_bytes.
        assert_eq!(claims.max_file_size_bytes, Some(1000));
        assert_eq!(
            link_caller(&a, &one).await.unwrap().max_file_size_bytes(),
            Some(1000)
        );
        a.revoke_link(&maker, &claims.id).await.unwrap();
        let err = link_caller(&a, &one).await.err().unwrap();
        assert_eq!((err.status.as_u16(), err.code), (401, "link_revoked"));
        assert!(link_caller(&a, &two).await.is_ok(), "another link of the key");
        assert_eq!(
            a.revoke_link(&maker, "../x").await.err().unwrap().code,
            "not_found"
        );
        // Two a minute, made or revoked: the revocation took one (the refused id none).
        assert!(a.take_link_rate(&maker).await.is_ok());
        let err = a.take_link_rate(&maker).await.err().unwrap();
        assert_eq!((err.status.as_u16(), err.code), (429, "rate_limited"));
        assert!(err.retry_after_secs.is_some_and(|s| (1..=30).contains(&s)));
    }

    #[test]
    fn bearer_tokens_are_parsed_case_insensitively() {
        let h = headers(&[("authorization", "bearer abc")]);
        assert_eq!(bearer_token(&h).unwrap().expose(), "abc");
        assert!(bearer_token(&headers(&[("authorization", "Basic abc")])).is_none());
        assert!(bearer_token(&headers(&[("authorization", "Bearer ")])).is_none());
    }
}
