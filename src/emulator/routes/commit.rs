//! Commit a session: check the listed parts and the whole-file digest, then rename the session file
//! into the file store as a new file or a new version.
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::{Endpoint, FaultAction};
use super::super::state::{FileRec, PartView, Session, SessionState, State, Version};
use super::super::storage::fold_range;
use super::super::Shared;
use super::body::store_then;
use super::items::{check_conflict, check_quota, file_json};
use super::sessions::{json_object, open_session_mut, session_not_found};
use super::{gate, header_str};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::Digest;
use std::sync::Arc;

pub async fn commit(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> Reply {
    let gate = gate(&shared, &req, Some(Endpoint::Commit), true).await?;
    let result = match gate.action {
        Some(FaultAction::CommitAccepted { retry_after }) => {
            shared.lock().counters.commits_accepted_202 += 1;
            return Ok(HttpResponse::Accepted()
                .insert_header((header::RETRY_AFTER, retry_after.to_string()))
                .finish());
        }
        Some(FaultAction::PartsMismatch) => Err(BoxApiError::new(
            400,
            "parts_mismatch",
            "No matching part found on server for the last part (transient)",
        )),
        ref action => {
            if let Some(FaultAction::LosePart { offset }) = action {
                if let Some(s) = shared.lock().sessions.get_mut(path.as_str()) {
                    s.parts.remove(offset);
                }
            }
            let differs = matches!(action, Some(FaultAction::CommitDiffers));
            finish(&req, &shared, &path, &body, differs).await
        }
    };
    {
        let mut state = shared.lock();
        match &result {
            Ok(_) => state.counters.commits_created += 1,
            Err(_) => state.counters.commits_rejected += 1,
        }
    }
    // The file is committed either way; only its answer is lost.
    store_then(&req, result, gate.action.as_ref(), "file")
}

/// A part as the commit body lists it; `sha1` may be absent or null (some clients send neither).
#[derive(Deserialize, serde::Serialize)]
struct ListedPart {
    part_id: String,
    offset: u64,
    size: u64,
    #[serde(default)]
    sha1: Option<String>,
}

#[derive(Deserialize)]
struct Attributes {
    content_created_at: Option<String>,
    content_modified_at: Option<String>,
}

async fn finish(
    req: &HttpRequest,
    shared: &web::Data<Shared>,
    session_id: &str,
    body: &[u8],
    differs: bool,
) -> Reply {
    let expected = whole_file_digest(req)?;
    let fields = json_object(body)?;
    let listed: Vec<ListedPart> = fields
        .get("parts")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
        .ok_or_else(|| {
            BoxApiError::bad_request("Body must carry a parts array of {part_id, offset, size, sha1}")
        })?;
    // Optional: missing from the OpenAPI schema but sent by most SDKs.
    let attributes: Option<Attributes> = fields
        .get("attributes")
        .and_then(|a| serde_json::from_value(a.clone()).ok());
    if let Some(done) = already_committed(shared, session_id) {
        return Ok(done);
    }
    {
        let mut state = shared.lock();
        let s = open_session_mut(&mut state, session_id)?;
        check_parts(s, &listed)?;
        let s = &state.sessions[session_id];
        check_preconditions(req, &state, s)?;
        check_target(shared, &state, s)?;
    }
    let actual = if shared.config.trusts_digests() {
        expected
    } else {
        fold_ready(shared, session_id).await?
    };
    if actual != expected {
        let b64 = |d: &[u8; 20]| base64::engine::general_purpose::STANDARD.encode(d);
        return Err(BoxApiError::new(
            400,
            "digest_mismatch",
            format!(
                "File digest was incorrect. Actual: {} Expected: {}",
                b64(&actual),
                b64(&expected)
            ),
        ));
    }
    let mut sha1 = actual;
    if differs {
        // The `commit_differs` fault: what Box stored is not what the parts hold.
        sha1[0] ^= 0xff;
    }
    create_file(shared, session_id, hex::encode(sha1), attributes)
}

fn whole_file_digest(req: &HttpRequest) -> Result<[u8; 20], BoxApiError> {
    let digest = super::digest::PartDigest::parse(header_str(req, "digest").unwrap_or(""))?;
    digest
        .sha1
        .ok_or_else(|| BoxApiError::bad_request("Missing Digest header with sha="))
}

/// A retried commit whose first answer was lost gets the same file back.
fn already_committed(shared: &Shared, session_id: &str) -> Option<HttpResponse> {
    let state = shared.lock();
    let file_id = state.sessions.get(session_id)?.committed_file_id.as_ref()?;
    let f = state.files.get(file_id)?;
    Some(HttpResponse::Created().json(json!({"total_count": 1, "entries": [file_json(&state, f)]})))
}

/// The listed parts must be exactly the stored ones, and those must cover the file.
fn check_parts(s: &Session, listed: &[ListedPart]) -> Result<(), BoxApiError> {
    for p in listed {
        let stored = s.parts.get(&p.offset);
        if !stored.is_some_and(|st| same_part(st, p)) {
            let shown = serde_json::to_string(p).unwrap_or_default();
            return Err(BoxApiError::new(
                400,
                "parts_mismatch",
                format!("No matching part found on server for {shown}"),
            ));
        }
    }
    let distinct: std::collections::BTreeSet<u64> = listed.iter().map(|p| p.offset).collect();
    if distinct.len() != s.parts.len() || s.parts.len() as u64 != s.total_parts {
        return Err(BoxApiError::new(
            400,
            "parts_mismatch",
            format!(
                "Parts listed: {}, parts stored: {}, parts needed: {}",
                distinct.len(),
                s.parts.len(),
                s.total_parts
            ),
        ));
    }
    Ok(())
}

fn same_part(stored: &PartView, listed: &ListedPart) -> bool {
    stored.part_id == listed.part_id
        && stored.size == listed.size
        && listed
            .sha1
            .as_ref()
            .is_none_or(|h| h.eq_ignore_ascii_case(&stored.sha1))
}

/// `If-Match` / `If-None-Match` against the file the commit would replace (etag; `*` = any).
fn check_preconditions(req: &HttpRequest, state: &State, s: &Session) -> Result<(), BoxApiError> {
    let target = match &s.file_id {
        Some(id) => state.files.get(id),
        None => match state.item_named(&s.folder_id, &s.file_name) {
            Some(super::super::state::Item::File(f)) => Some(f),
            _ => None,
        },
    };
    let etag = target.map(FileRec::etag);
    let matches = |v: &str| {
        v.split(',')
            .map(|t| t.trim().trim_matches('"'))
            .any(|t| t == "*" || Some(t) == etag.as_deref())
    };
    let failed = header_str(req, "if-match").is_some_and(|v| etag.is_none() || !matches(v))
        || header_str(req, "if-none-match").is_some_and(|v| etag.is_some() && matches(v));
    if failed {
        return Err(BoxApiError::new(
            412,
            "precondition_failed",
            "The resource has been modified. Please retrieve the resource again and retry",
        ));
    }
    Ok(())
}

/// The name may have been taken, or the account filled, since the session was created.
fn check_target(shared: &Shared, state: &State, s: &Session) -> Result<(), BoxApiError> {
    if let Some(id) = &s.file_id {
        if !state.files.contains_key(id) {
            return Err(BoxApiError::not_found(format!("File {id} not found")));
        }
    }
    check_conflict(shared, state, &s.folder_id, &s.file_name, s.file_id.as_deref())?;
    let replacing = s
        .file_id
        .as_ref()
        .and_then(|id| state.files.get(id))
        .map_or(0, |f| f.current().size);
    check_quota(shared, state, s.file_size, replacing)
}

/// Folds the session's contiguous stored parts into its whole-file SHA-1 and returns the digest once
/// the whole file is folded.
async fn fold_ready(shared: &Shared, session_id: &str) -> Result<[u8; 20], BoxApiError> {
    let upto = fold_parts(shared, session_id)
        .await
        .map_err(|e| BoxApiError::internal(e.to_string()))?;
    let (fold, size) = {
        let state = shared.lock();
        let s = state
            .sessions
            .get(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        (s.fold.clone(), s.file_size)
    };
    if upto != size {
        return Err(BoxApiError::new(
            400,
            "parts_mismatch",
            "Parts do not cover the file",
        ));
    }
    let hasher = fold.lock().await.hasher.clone();
    Ok(hasher.finalize().into())
}

/// Run after every stored part, so the commit finds the digest (nearly) ready.
pub fn spawn_fold(shared: Arc<Shared>, session_id: String) {
    tokio::spawn(async move {
        if let Err(e) = fold_parts(&shared, &session_id).await {
            tracing::warn!(session_id, "folding parts failed: {e}");
        }
    });
}

/// One folder at a time per session (the async mutex); each part is read back from the page cache.
async fn fold_parts(shared: &Shared, session_id: &str) -> std::io::Result<u64> {
    let Some((fold, file)) = shared
        .lock()
        .sessions
        .get(session_id)
        .map(|s| (s.fold.clone(), s.file.clone()))
    else {
        return Ok(0);
    };
    let mut fold = fold.lock().await;
    loop {
        let next = shared
            .lock()
            .sessions
            .get(session_id)
            .and_then(|s| s.parts.get(&fold.upto).map(|p| p.size));
        let Some(size) = next else {
            return Ok(fold.upto);
        };
        let hasher = std::mem::take(&mut fold.hasher);
        fold.hasher = fold_range(file.clone(), hasher, fold.upto, size).await?;
        fold.upto += size;
    }
}

fn create_file(shared: &Shared, session_id: &str, sha1: String, attributes: Option<Attributes>) -> Reply {
    let mut state = shared.lock();
    let version_id = state.next_id();
    let s = open_session_mut(&mut state, session_id)?;
    let (existing, folder_id, name, size, from) = (
        s.file_id.clone(),
        s.folder_id.clone(),
        s.file_name.clone(),
        s.file_size,
        s.path.clone(),
    );
    let file_id = match &existing {
        Some(id) => id.clone(),
        None => state.next_id(),
    };
    let path = shared
        .storage
        .keep_version(&from, &file_id, &version_id)
        .map_err(|e| BoxApiError::internal(e.to_string()))?;
    let version = Version {
        id: version_id,
        sha1,
        size,
        path,
    };
    let (created, modified) = attributes
        .map(|a| (a.content_created_at, a.content_modified_at))
        .unwrap_or_default();
    let f = add_version(&mut state, &file_id, &folder_id, &name, version);
    if created.is_some() {
        f.content_created_at = created;
    }
    if modified.is_some() {
        f.content_modified_at = modified;
    }
    let s = state.sessions.get_mut(session_id).expect("checked above");
    s.state = SessionState::Committed;
    s.committed_file_id = Some(file_id.clone());
    let body: Value = json!({"total_count": 1, "entries": [file_json(&state, &state.files[&file_id])]});
    Ok(HttpResponse::Created().json(body))
}

/// Adds a version to `file_id` (renaming it to `name`), creating the file when it is new.
pub fn add_version<'a>(
    state: &'a mut State,
    file_id: &str,
    folder_id: &str,
    name: &str,
    version: Version,
) -> &'a mut FileRec {
    let now = Utc::now();
    let f = state.files.entry(file_id.to_owned()).or_insert_with(|| FileRec {
        id: file_id.to_owned(),
        name: name.to_owned(),
        parent_id: folder_id.to_owned(),
        versions: Vec::new(),
        created_at: now,
        modified_at: now,
        content_created_at: None,
        content_modified_at: None,
        description: String::new(),
        tags: Vec::new(),
        shared_link: None,
        metadata: Default::default(),
    });
    f.name = name.to_owned();
    f.modified_at = now;
    f.versions.push(version);
    f
}
