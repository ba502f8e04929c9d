//! Upload links: issuing them (`POST /v1/upload-links`), revoking one (`DELETE
//! /v1/upload-links/{id}`), checking a token, the caller a link makes, and the file slots of a link
//! with `max_files` (counted in the state store, shared by the replicas).
//!
//! A link is genuine (its MAC), not expired, its key still exists, still lists its folder and still
//! has the secret the link was bound to (`LinkClaims::key_binding`), and it was not revoked (a
//! revocation is remembered in the state store for `upload_link_max_expiry_secs`, as long as any link
//! may live). Making and revoking links is rate-limited per key, through the store.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;

use super::caller::{link_not_allowed, Caller, Owner};
use super::keys::ApiKey;
use super::link_token::{LinkClaims, LinkRefusal};
use super::{key_principal, Access};
use crate::error::ApiError;
use crate::state::now_secs;
use crate::state::rate::{Lane, RateTake};

/// How links are given out, from the settings (`upload_link_*`, `upload_links_per_minute_per_key`).
#[derive(Debug, Clone, Copy)]
pub struct LinkPolicy {
    /// A link's size limit when neither the request nor its key gives one: every link has one.
    pub default_max_file_size_bytes: u64,
    /// The longest a link may live: a revocation is remembered this long, and a link that would
    /// outlive it (made when the setting was higher) is refused.
    pub max_expiry: Duration,
    /// Links a key may make or revoke per minute (a minute's worth at once).
    pub per_minute_per_key: u32,
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

/// A file slot taken for one upload through a link with `max_files`.
#[derive(Debug, Clone)]
pub struct LinkSlot {
    link_id: String,
    upload_id: String,
}

impl Access {
    /// A signed link for `request`, made by `caller`: only an API key's caller may make one, for one
    /// of its folders and within its size limit. Every link has a size limit: the one asked for, else
    /// its key's, else `upload_link_default_max_file_size_bytes`. Not rate-limited here
    /// (`take_link_rate`, before the request's body is read).
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
                return Err(invalid_link_request(format!(
                    "max_file_size_bytes {asked} is above this API key's limit ({limit} bytes)"
                )))
            }
            (asked, limit) => asked
                .or(limit)
                .unwrap_or(self.link_policy.default_max_file_size_bytes),
        };
        let claims = LinkClaims {
            id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
            key: key.name.to_string(),
            key_binding: keys.binding(&key.digest),
            folder_id: request.folder_id,
            max_file_size_bytes: Some(max_file_size_bytes),
            max_files: request.max_files,
            note: request.note.filter(|n| !n.trim().is_empty()),
            expires_at: request.expires_at,
        };
        let token = keys.sign(&claims).ok_or_else(|| {
            invalid_link_request(format!(
                "the link would be longer than the gateway accepts ({} characters): shorten the note",
                super::link_token::MAX_TOKEN_LEN
            ))
        })?;
        Ok((token, claims))
    }

    /// One more link made or revoked by the caller's key (`upload_links_per_minute_per_key`, shared by
    /// the replicas through the store): 429 `rate_limited` with `Retry-After` past it. Checked before
    /// the request's body is read. A store that fails refuses (503): links are not worth an unbounded
    /// number of store writes.
    pub async fn take_link_rate(&self, caller: &Caller) -> Result<(), ApiError> {
        let key = self.link_maker(caller)?;
        let per_minute = self.link_policy.per_minute_per_key.max(1);
        let take = RateTake {
            now_ms: crate::state::now_ms(),
            lanes: [
                Some(Lane {
                    interval_ms: 60_000.0 / f64::from(per_minute),
                    burst: f64::from(per_minute),
                    cost: 1.0,
                }),
                None,
            ],
            recovery_ms: 0,
        };
        let store_key = crate::state::keys::quota("upload_links", &key.name);
        let wait = self.store.rate_take(&store_key, take).await?;
        if wait == 0 {
            return Ok(());
        }
        self.metrics
            .key_quota_refused
            .with_label_values(&[&key.name, "upload_links_per_minute"])
            .inc();
        Err(ApiError {
            retry_after_secs: Some(wait.div_ceil(1000).max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this API key makes or revokes at most {per_minute} upload links a minute (upload_links_per_minute_per_key): try again after Retry-After"),
            )
        })
    }

    /// Revokes the caller's key's link `link_id` (its id, from `POST /v1/upload-links`'s answer): its
    /// page and every upload request through it are refused from now on, on every replica. Remembered
    /// for `upload_link_max_expiry_secs` (no link lives longer). Only the key that made a link revokes
    /// it (the revocation is kept under the key's name); an id no link has is revoked all the same (the
    /// gateway keeps no list of links), so the answer says nothing about which ids exist. Counted
    /// with the links the key makes (`take_link_rate`): revocations are store writes that live long.
    pub async fn revoke_link(&self, caller: &Caller, link_id: &str) -> Result<(), ApiError> {
        let key = self.link_maker(caller)?;
        if link_id.is_empty() || link_id.len() > 64 || !link_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such upload link: its id is the `id` of POST /v1/upload-links's answer",
            ));
        }
        self.take_link_rate(caller).await?;
        let revoked = crate::state::keys::link_revoked(&key.name, link_id);
        self.store
            .put(&revoked, b"1".to_vec(), self.link_policy.max_expiry)
            .await?;
        self.metrics
            .upload_links_revoked
            .with_label_values(&[&key.name])
            .inc();
        tracing::info!(key = %key.name, link_id, "upload link revoked");
        Ok(())
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
            .find(|k| k.name == caller.key_label && caller.folders.is_some())
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

    /// The claims of a link token that is genuine, not expired, not revoked, and whose key still
    /// exists, still lists the link's folder and still has the secret the link was bound to (removing
    /// a key, its folder, or changing its secret revokes its links). Every link request, the page's
    /// and tus's, is checked here.
    pub async fn check_link(&self, token: &str) -> Result<LinkClaims, ApiError> {
        let claims = self.check_link_token(token)?;
        let revoked = crate::state::keys::link_revoked(&claims.key, &claims.id);
        if self.store.get(&revoked).await?.is_some() {
            self.metrics
                .access_refused
                .with_label_values(&[&claims.key, "link_revoked"])
                .inc();
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "link_revoked",
                "this upload link has been revoked; ask for a new one",
            ));
        }
        Ok(claims)
    }

    /// `check_link` without the store: the token alone, against the keys.
    fn check_link_token(&self, token: &str) -> Result<LinkClaims, ApiError> {
        let keys = self.links.as_ref().ok_or_else(links_disabled)?;
        let refused = |key: &str, err: ApiError| {
            self.metrics
                .access_refused
                .with_label_values(&[key, err.code])
                .inc();
            err
        };
        let claims = match keys.verify(token, now_secs()) {
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
        // Made when upload_link_max_expiry_secs was higher: its revocation could not be remembered
        // for as long as it lives.
        let too_long = claims.expires_at > now_secs() + self.link_policy.max_expiry.as_secs();
        match self.keys.iter().find(|k| *k.name == claims.key) {
            Some(key)
                if key.folders.contains(&claims.folder_id)
                    && keys.is_bound_to(&claims, &key.digest)
                    && !too_long =>
            {
                Ok(claims)
            }
            _ => Err(refused("none", link_invalid())),
        }
    }

    /// The caller of a request that carries a link: the key that made it, confined to the link's
    /// folder and limits. Its uploads are its own (`Owner::Link`), so one link's holder never reaches
    /// the key's other uploads.
    pub(super) async fn authenticate_link(&self, token: &str) -> Result<Caller, ApiError> {
        let claims = self.check_link(token).await?;
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
            key_label: key.name.clone(),
            owner: Owner::Link {
                key: key.name.clone(),
                link_id: Arc::from(claims.id.as_str()),
            },
            folders: Some(Arc::new(HashSet::from([claims.folder_id.clone()]))),
            // A link's holder uploads into its one folder, never by path (`Caller::path_root`).
            path_root: None,
            max_file_size_bytes,
            principal: key_principal(Some(key), own),
            passthrough: false,
            metrics: self.metrics.clone(),
            box_user_id: None,
            link: Some(Arc::new(claims)),
            // A link's holder is a stranger: its uploads are scanned whatever its key says.
            scan_exempt: false,
        })
    }

    /// A link with `max_files` counts the uploads made through it in the state store: each upload
    /// takes a slot (403 `link_files_exhausted` when none is left) until the link expires, and gives
    /// it back only when it is terminated (DELETE) before landing, or its creation fails. The token
    /// itself stays stateless. None: the caller is no link, or its link has no `max_files`.
    pub async fn take_link_slot(
        &self,
        caller: &Caller,
        upload_id: &str,
    ) -> Result<Option<LinkSlot>, ApiError> {
        let Some((link, max)) = caller.link().and_then(|l| Some((l, l.max_files?))) else {
            return Ok(None);
        };
        let counted = self
            .store
            .open_upload(
                &crate::state::keys::link_files(&link.id),
                upload_id,
                link.expires_at,
                now_secs(),
                max as usize,
            )
            .await?;
        if counted {
            return Ok(Some(LinkSlot {
                link_id: link.id.clone(),
                upload_id: upload_id.to_owned(),
            }));
        }
        Err(caller.refuse(ApiError::new(
            StatusCode::FORBIDDEN,
            "link_files_exhausted",
            format!(
                "this upload link accepts at most {max} files, and that many have been uploaded through it"
            ),
        )))
    }

    /// The slot the caller's link holds for `upload_id`, if its link counts files (to give it back).
    pub fn link_slot_of(&self, caller: &Caller, upload_id: &str) -> Option<LinkSlot> {
        let link = caller.link().filter(|l| l.max_files.is_some())?;
        Some(LinkSlot {
            link_id: link.id.clone(),
            upload_id: upload_id.to_owned(),
        })
    }

    /// Gives a link's file slot back.
    pub async fn give_back_link_slot(&self, slot: LinkSlot) {
        let set = crate::state::keys::link_files(&slot.link_id);
        if let Err(err) = self.store.close_upload(&set, &slot.upload_id).await {
            tracing::warn!(upload_id = %slot.upload_id, error = %err, "an upload link's file slot stays taken");
        }
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

fn invalid_link_request(message: String) -> ApiError {
    ApiError::bad_request("invalid_link_request", message)
}

fn links_disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "upload_links_disabled",
        "upload links are off: the gateway has no upload_link_secret",
    )
}
