//! Who is uploading (`Caller`), whose uploads they are (`Owner`), and the checks made on a caller for
//! each request: the route, the folder, the file, the size, `on_conflict`.
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use actix_web::http::StatusCode;

use super::link_token::LinkClaims;
use super::REALM;
use crate::box_api::Principal;
use crate::error::ApiError;
use crate::metrics::GatewayMetrics;
use crate::pipeline::{Holder, Pipeline};

/// 403 `link_not_allowed`: what an upload link's holder may not do.
pub fn link_not_allowed(why: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "link_not_allowed", why)
}

/// Whose resumable uploads and `Idempotency-Key`s these are: only the same owner sees them. Stored
/// (tus records, open-upload sets, idempotency keys) in its `Display` form, which is fixed: records
/// written by an older gateway still name their owners this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// An API key's caller: the key's name (no `:` in it, `check_keys`, so it cannot be mistaken for
    /// the forms below).
    Key(Arc<str>),
    /// A caller without a key whose bearer token Box has not checked: `sha256:<hex>` of the token
    /// (never the token itself).
    Token { sha256_hex: String },
    /// With pass-through, once Box checked the token (`authenticate_checked`): `box-user:<id>` of the
    /// Box user it acts as, so a refreshed token still reaches its uploads.
    BoxUser(Arc<str>),
    /// With pass-through and an API key, once Box checked the token: `key:<name>:box-user:<id>`. Box
    /// users who share a key do not share their uploads (each PATCH, HEAD and DELETE acts with its own
    /// user's token at Box). No bare key name starts with `key:` (no `:` in a name).
    KeyBoxUser { key: Arc<str>, box_user_id: Arc<str> },
    /// An upload link's caller: `link:<key>:<link id>`. One link's holder never reaches the key's
    /// other uploads, nor another link's.
    Link { key: Arc<str>, link_id: Arc<str> },
    /// A caller without any key or token: `anonymous`, one owner shared by all of them (the upload's
    /// random id is then its only guard, as docs/api.md says under "Resumable uploads").
    Anonymous,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(name) => f.write_str(name),
            Self::Token { sha256_hex } => write!(f, "sha256:{sha256_hex}"),
            Self::BoxUser(id) => write!(f, "box-user:{id}"),
            Self::KeyBoxUser { key, box_user_id } => write!(f, "key:{key}:box-user:{box_user_id}"),
            Self::Link { key, link_id } => write!(f, "link:{key}:{link_id}"),
            Self::Anonymous => f.write_str("anonymous"),
        }
    }
}

impl Owner {
    /// An owner read back from the store (the tus sweeper). A bare name is a key's (or `anonymous`,
    /// which acts as no key: the two never meet, since a gateway with keys has no anonymous callers).
    pub fn parse(stored: &str) -> Self {
        if let Some(hex) = stored.strip_prefix("sha256:") {
            return Self::Token {
                sha256_hex: hex.to_owned(),
            };
        }
        if let Some(id) = stored.strip_prefix("box-user:") {
            return Self::BoxUser(Arc::from(id));
        }
        if let Some((key, id)) = stored
            .strip_prefix("key:")
            .and_then(|r| r.split_once(":box-user:"))
        {
            return Self::KeyBoxUser {
                key: Arc::from(key),
                box_user_id: Arc::from(id),
            };
        }
        if let Some((key, link_id)) = stored.strip_prefix("link:").and_then(|r| r.split_once(':')) {
            return Self::Link {
                key: Arc::from(key),
                link_id: Arc::from(link_id),
            };
        }
        Self::Key(Arc::from(stored))
    }

    /// The API key whose rules the owner's uploads follow (a link's is the key that made it).
    pub fn key_name(&self) -> Option<&str> {
        match self {
            Self::Key(name) | Self::Link { key: name, .. } | Self::KeyBoxUser { key: name, .. } => Some(name),
            _ => None,
        }
    }

    /// What the owner's use of shared resources counts under, each account capped on its own (the
    /// memory budget's share, the tus pending bytes per key): its own stored form, and for a link
    /// also its key's, so one link is bounded and so are a key and all its links together.
    pub fn accounts(&self) -> Vec<String> {
        match self {
            Self::Link { key, .. } => vec![self.to_string(), key.to_string()],
            _ => vec![self.to_string()],
        }
    }
}

/// Who is uploading: what the handlers check and which principal the pipeline acts as. Made once per
/// request (`Access::authenticate_checked`); cloned only for work that outlives its request (HEAD's
/// landing of a stuck tus upload).
#[derive(Clone)]
pub struct Caller {
    /// The key's name, `passthrough` or `anonymous`: the `key` label of metrics, and the logs'.
    pub(super) key_label: Arc<str>,
    pub(super) owner: Owner,
    /// None: any folder.
    pub(super) folders: Option<Arc<HashSet<String>>>,
    /// The key's `path_root`: where its uploads by path start (a key without one cannot upload by
    /// path; a caller without a key starts from the gateway's `path_root`).
    pub(super) path_root: Option<Arc<str>>,
    pub(super) max_file_size_bytes: Option<u64>,
    pub principal: Principal,
    pub(super) passthrough: bool,
    pub(super) metrics: Arc<GatewayMetrics>,
    /// Pass-through: the Box user the caller's token acts as, from Box's check of it.
    pub(super) box_user_id: Option<Arc<str>>,
    /// An upload link's caller: what the link allows (it acts as the key that made it).
    pub(super) link: Option<Arc<LinkClaims>>,
    /// Its key has `scan = false` (never true for a link's caller: a link's holder is a stranger).
    pub(super) scan_exempt: bool,
}

impl Caller {
    /// The key's name, `passthrough` or `anonymous` (never a key or a token): for metrics and logs.
    pub fn key_label(&self) -> &Arc<str> {
        &self.key_label
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Who holds the caller's uploads' bytes in the memory budget: its owner's accounts, shown under
    /// its key label.
    pub fn holder(&self) -> Holder {
        Holder::new(self.key_label.clone(), self.owner.accounts())
    }

    /// Pass-through: the Box user the caller's token acts as (Box's answer to `GET /users/me`, kept
    /// for ownership checks); None otherwise, or before `Access::authenticate_checked`.
    pub fn box_user_id(&self) -> Option<&str> {
        self.box_user_id.as_deref()
    }

    /// An upload link's caller: what its link allows.
    pub fn link(&self) -> Option<&LinkClaims> {
        self.link.as_deref()
    }

    /// Whether this caller's uploads skip the malware scan: its key says `scan = false` (a link's
    /// uploads never do).
    pub fn scan_exempt(&self) -> bool {
        self.scan_exempt && self.link.is_none()
    }

    /// 403 `link_not_allowed` for a link's caller on a plain upload endpoint: a link's uploads go
    /// through tus, where its `max_files` is counted (and its page uploads).
    pub fn check_plain_upload(&self) -> Result<(), ApiError> {
        match self.link {
            Some(_) => Err(self.refuse(link_not_allowed(
                "an upload link uploads through the resumable endpoints (/v1/tus/), as its page does",
            ))),
            None => Ok(()),
        }
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

    /// The folder an upload by path starts from, and below which it stays: the key's `path_root`, or,
    /// for a caller without a key, `default_root` (the gateway's `path_root` setting). 403
    /// `forbidden_folder` for a key without one; 403 `link_not_allowed` for a link's caller, whose
    /// holder is a stranger confined to the link's one folder.
    pub fn path_root(&self, default_root: &str) -> Result<String, ApiError> {
        if self.link.is_some() {
            return Err(self.refuse(link_not_allowed(
                "an upload link uploads into its own folder only: not by path",
            )));
        }
        match (&self.folders, &self.path_root) {
            (_, Some(root)) => Ok(root.to_string()),
            (Some(_), None) => Err(self.refuse(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_folder",
                "this API key has no path_root: it may not upload by path",
            ))),
            (None, None) => Ok(default_root.to_owned()),
        }
    }

    /// 403 `link_not_allowed` when a link's caller sends fields that land with the file: the link's
    /// holder is a stranger, and a description, tags, a shared link (an `open` one would publish the
    /// file) or metadata (which retention and workflows act on) are the key holder's to set.
    pub fn check_fields_allowed(&self, has_fields: bool) -> Result<(), ApiError> {
        match (&self.link, has_fields) {
            (Some(_), true) => Err(self.refuse(link_not_allowed(
                "an upload link uploads the file only: description, tags, shared_link and metadata are not taken from it",
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

    /// What a name clash does for this caller. A link is write-only: its holder must not learn which
    /// names exist in the folder, so its clashes are always renamed (`on_conflict` `error`, or none,
    /// is taken as `rename`: both answers then look the same); `version` is 403 `link_not_allowed`
    /// (a link adds new files only), whether or not the name exists.
    pub fn on_conflict(
        &self,
        asked: crate::pipeline::OnConflict,
    ) -> Result<crate::pipeline::OnConflict, ApiError> {
        use crate::pipeline::OnConflict;
        match (&self.link, asked) {
            (Some(_), OnConflict::Version) => Err(self.refuse(link_not_allowed(
                "an upload link adds new files only: on_conflict=version is not allowed (a clash is renamed)",
            ))),
            (Some(_), _) => Ok(OnConflict::Rename),
            (None, asked) => Ok(asked),
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
    /// A link's caller is told nothing Box said about the folder beyond the code: no file id (a name
    /// clash's `existing_file_id`, an id in the message), no Box detail.
    pub fn box_error(&self, err: ApiError) -> ApiError {
        if self.link.is_some() {
            return link_safe(err);
        }
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

    /// Counts an access refusal (`gateway_access_refused_total`) by the caller's key and the code.
    pub(super) fn refuse(&self, err: ApiError) -> ApiError {
        self.metrics
            .access_refused
            .with_label_values(&[&self.key_label, err.code])
            .inc();
        err
    }
}

/// An error as a link's holder may see it: without `existing_file_id` and Box's own detail, and a
/// name clash (only possible in a race: a link's clashes are renamed) without the name's id.
fn link_safe(err: ApiError) -> ApiError {
    let message = match err.code {
        "name_conflict" => {
            "another file took this name while the upload was under way; upload the file again".into()
        }
        _ => err.message,
    };
    ApiError {
        existing_file_id: None,
        box_info: None,
        message,
        ..err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_keep_their_stored_form() {
        let owners = [
            Owner::Key(Arc::from("team")),
            Owner::Token {
                sha256_hex: "ab".repeat(32),
            },
            Owner::BoxUser(Arc::from("77")),
            Owner::Link {
                key: Arc::from("team"),
                link_id: Arc::from("0123456789abcdef"),
            },
            Owner::KeyBoxUser {
                key: Arc::from("team"),
                box_user_id: Arc::from("77"),
            },
        ];
        let stored: Vec<String> = owners.iter().map(ToString::to_string).collect();
        assert_eq!(stored[0], "team");
        assert_eq!(stored[1], format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(stored[2], "box-user:77");
        assert_eq!(stored[3], "link:team:0123456789abcdef");
        assert_eq!(stored[4], "key:team:box-user:77");
        for (owner, stored) in owners.iter().zip(&stored) {
            assert_eq!(&Owner::parse(stored), owner);
        }
        assert_eq!(Owner::Anonymous.to_string(), "anonymous");
        assert_eq!(owners[3].key_name(), Some("team"));
        assert_eq!(owners[2].key_name(), None);
        assert_eq!(owners[4].key_name(), Some("team"));
        // A key's own owner is unchanged: its bare name, whatever it is.
        assert_eq!(Owner::parse("key"), Owner::Key(Arc::from("key")));
    }
}
