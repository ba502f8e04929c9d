//! Resumable uploads: tus 1.0.0 (<https://tus.io/protocols/resumable-upload>) onto one Box upload
//! session, at `/v1/tus/`.
//! - `OPTIONS /v1/tus/`       what the server supports (no key needed)
//! - `POST    /v1/tus/`       creation (and creation-with-upload): opens the Box session
//! - `HEAD    /v1/tus/{id}`   where the upload stands (`Upload-Offset`; `Upload-Box-File-Id` once landed)
//! - `PATCH   /v1/tus/{id}`   appends at `Upload-Offset`; the last byte commits
//! - `DELETE  /v1/tus/{id}`   termination: aborts the Box session
//!
//! The upload's state (Box session, offset, the whole file's SHA-1 state, the bytes of the part not yet
//! full, the caller's key name, expiry, the landed file's id) is one value in the state store, so a
//! restarted gateway or another replica takes the next request. A lock per upload, held for the whole
//! of a PATCH or DELETE, keeps two requests (on any replicas) from writing the same upload: the second
//! gets 409 `upload_locked`.
use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::Engine;
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::params::{header_u64, validate_id, validate_name, UploadParams};
use super::upload::{content_length, fail, from_payload, idle_timeout};
use super::AppState;
use crate::access::Caller;
use crate::box_api::{NewUpload, Target};
use crate::error::ApiError;
use crate::pipeline::{spool, Resumable, UploadRequest};
use crate::state::{now_secs, Lock};

pub const TUS_VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
const OCTETS: &str = "application/offset+octet-stream";
/// The answer header naming the Box file once the upload landed (documented in openapi.yaml).
pub const BOX_FILE_ID: &str = "Upload-Box-File-Id";
/// A PATCH extends its lock every third of this while it runs; a replica that died mid-PATCH
/// holds the upload at most this long.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// A record outlives its expiry by this much, so the sweeper still finds it to abort its session.
const GRACE: Duration = Duration::from_secs(3600);

/// What the gateway needs for tus besides the pipeline.
pub struct TusConfig {
    pub expiration: Duration,
    pub max_size: Option<u64>,
}

/// One upload in the state store (the bytes of the unfinished part are stored after it).
#[derive(Serialize, Deserialize)]
struct Record {
    /// The caller's key name (`anonymous`, `passthrough`): only the same caller sees the upload.
    owner: String,
    /// Unix seconds.
    expires_at: u64,
    /// `Upload-Metadata` as sent, for HEAD.
    metadata: String,
    upload: Resumable,
    /// Once the file landed in Box.
    file_id: Option<String>,
}

fn store_key(id: &str) -> String {
    format!("tus:{id}")
}

fn encode(record: &Record, pending: &[u8]) -> Result<Vec<u8>, ApiError> {
    let meta = serde_json::to_vec(record).map_err(|e| internal(format!("encode: {e}")))?;
    let mut out = Vec::with_capacity(4 + meta.len() + pending.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(pending);
    Ok(out)
}

fn decode(bytes: Vec<u8>) -> Result<(Record, Bytes), ApiError> {
    let bytes = Bytes::from(bytes);
    let bad = || internal("a stored upload cannot be read".into());
    let len = u32::from_be_bytes(bytes.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let meta = bytes.get(4..4 + len).ok_or_else(bad)?;
    let record = serde_json::from_slice(meta).map_err(|_| bad())?;
    Ok((record, bytes.slice(4 + len..)))
}

fn internal(why: String) -> ApiError {
    tracing::error!(error = %why, "tus state");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the gateway failed; see its logs",
    )
}

/// Every tus answer carries `Tus-Resumable`; a 412 also says which versions are spoken.
fn answer(result: Result<HttpResponse, ApiError>) -> HttpResponse {
    let mut response = result.unwrap_or_else(|e| e.error_response());
    let headers = response.headers_mut();
    headers.insert(
        header::HeaderName::from_static("tus-resumable"),
        HeaderValue::from_static(TUS_VERSION),
    );
    if response.status() == StatusCode::PRECONDITION_FAILED {
        response.headers_mut().insert(
            header::HeaderName::from_static("tus-version"),
            HeaderValue::from_static(TUS_VERSION),
        );
    }
    response
}

fn check_version(req: &HttpRequest) -> Result<(), ApiError> {
    match req.headers().get("tus-resumable").map(HeaderValue::as_bytes) {
        Some(b"1.0.0") => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "tus_version_unsupported",
            "send Tus-Resumable: 1.0.0",
        )),
    }
}

fn http_date(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// `Upload-Metadata`: `key base64,key base64,key` (tus 1.0.0, creation).
pub(super) fn parse_metadata(raw: &str) -> Result<HashMap<String, String>, ApiError> {
    let invalid = |why: String| ApiError::bad_request("invalid_metadata", format!("Upload-Metadata: {why}"));
    let mut out = HashMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| invalid(format!("the value of {key:?} is not base64")))?;
        let value =
            String::from_utf8(value).map_err(|_| invalid(format!("the value of {key:?} is not UTF-8")))?;
        if out.insert(key.to_owned(), value).is_some() {
            return Err(invalid(format!("{key:?} is given twice")));
        }
    }
    Ok(out)
}

/// `Upload-Checksum: sha1 <base64>`; other algorithms are refused (OPTIONS lists `sha1` only).
pub(super) fn parse_checksum(headers: &header::HeaderMap) -> Result<Option<[u8; 20]>, ApiError> {
    let Some(value) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or_default();
    let (alg, digest) = value.trim().split_once(' ').unwrap_or((value, ""));
    if alg != "sha1" {
        return Err(ApiError::bad_request(
            "unsupported_checksum_algorithm",
            format!("Upload-Checksum algorithm {alg:?} is not supported; use sha1"),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .ok()
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("invalid_sha1", "Upload-Checksum is not a base64 SHA-1"))
}

fn upload_id(req: &HttpRequest) -> String {
    req.match_info().get("id").unwrap_or_default().to_owned()
}

pub async fn options(state: web::Data<AppState>) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    response
        .insert_header(("Tus-Version", TUS_VERSION))
        .insert_header(("Tus-Extension", EXTENSIONS))
        .insert_header(("Tus-Checksum-Algorithm", "sha1"));
    if let Some(max) = state.tus.max_size {
        response.insert_header(("Tus-Max-Size", max));
    }
    answer(Ok(response.finish()))
}

pub async fn create(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    answer(create_upload(&req, payload, &state).await)
}

pub async fn head(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer(head_upload(&req, &state).await)
}

pub async fn patch(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    answer(patch_upload(&req, payload, &state).await)
}

pub async fn delete(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer(delete_upload(&req, &state).await)
}

async fn create_upload(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = state.access.authenticate_checked(req.headers()).await?;
    if req.headers().contains_key("upload-defer-length") {
        return Err(ApiError::bad_request(
            "deferred_length_unsupported",
            "Upload-Defer-Length is not supported: Box needs the file's size before the first byte; send Upload-Length",
        ));
    }
    let size = header_u64(req.headers(), "Upload-Length", "invalid_size")?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_size",
            "Upload-Length is required (Box needs the size first)",
        )
    })?;
    let raw_metadata = req
        .headers()
        .get("upload-metadata")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let metadata = parse_metadata(&raw_metadata)?;
    let mut params = UploadParams::default();
    for (key, value) in &metadata {
        params.set(key, value.clone());
    }
    let name = params.name.clone().or_else(|| metadata.get("filename").cloned());
    let target = match (metadata.get("file_id"), metadata.get("folder_id")) {
        (Some(file_id), _) => {
            let file_id = validate_id(file_id, "file")?;
            caller.check_file(&state.pipeline, &file_id).await?;
            Target::NewVersion {
                file_id,
                name: params.name.as_deref().map(validate_name).transpose()?,
            }
        }
        (None, folder_id) => {
            let folder_id = validate_id(folder_id.map_or("0", String::as_str), "folder")?;
            caller.check_folder(&folder_id)?;
            let name = name.ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_metadata",
                    "Upload-Metadata needs a filename (or a file_id)",
                )
            })?;
            Target::NewFile {
                folder_id,
                name: validate_name(&name)?,
            }
        }
    };
    caller.check_size(size)?;
    let request = UploadRequest {
        upload: NewUpload {
            target,
            size,
            content_created_at: UploadParams::timestamp(&params.content_created_at, "content_created_at")?,
            content_modified_at: UploadParams::timestamp(&params.content_modified_at, "content_modified_at")?,
        },
        on_conflict: params.on_conflict()?,
        expected_sha1: params.expected_sha1(None)?,
    };
    let pipeline = state.pipeline.acting_as(&caller.principal);
    let prepared = pipeline
        .prepare(request)
        .await
        .map_err(|e| caller.box_error(fail(e)))?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let expires_at = now_secs() + state.tus.expiration.as_secs();
    let mut record = Record {
        owner: caller.name.to_string(),
        expires_at,
        metadata: raw_metadata,
        upload: prepared.into_resumable(),
        file_id: None,
    };
    let saved = async {
        save(state, &id, &record, &[]).await?;
        state
            .store
            .schedule(&id, expires_at)
            .await
            .map_err(ApiError::from)
    }
    .await;
    if let Err(err) = saved {
        pipeline.abort_resumable(&record.upload, "error").await;
        return Err(err);
    }
    state
        .metrics
        .tus_uploads
        .with_label_values(&["created", &caller.name])
        .inc();
    tracing::info!(upload_id = %id, size, key = %caller.name, "tus upload created");
    let mut response = HttpResponse::Created();
    response.insert_header((header::LOCATION, format!("/v1/tus/{id}")));
    // creation-with-upload: the body is the first chunk. An empty file is complete at once.
    let with_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == OCTETS.as_bytes());
    if with_body || size == 0 {
        let lock = take_lock(state, &id).await?;
        let appended = held(
            state,
            &lock,
            append(req, payload, state, &caller, &id, &mut record, Bytes::new()),
        )
        .await;
        release(state, lock).await;
        match appended {
            Ok(()) => {}
            // The upload exists and is not done: the client asks HEAD where it stands and sends the
            // rest. (An error once complete is the commit's: the upload is gone, so it is answered.)
            Err(err) if !err.status.is_server_error() && !record.upload.is_complete() => {
                tracing::info!(upload_id = %id, code = err.code, "the first chunk did not fully go in");
            }
            Err(err) => return Err(err),
        }
    }
    progress(&mut response, &record);
    Ok(response.finish())
}

async fn head_upload(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = state.access.authenticate_checked(req.headers()).await?;
    let (record, _) = load(state, &upload_id(req), &caller).await?;
    let mut response = HttpResponse::Ok();
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Upload-Length", record.upload.upload.size));
    if !record.metadata.is_empty() {
        response.insert_header(("Upload-Metadata", record.metadata.as_str()));
    }
    progress(&mut response, &record);
    Ok(response.finish())
}

async fn patch_upload(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = state.access.authenticate_checked(req.headers()).await?;
    if req.headers().get(header::CONTENT_TYPE).map(HeaderValue::as_bytes) != Some(OCTETS.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_content_type",
            format!("a PATCH's Content-Type must be {OCTETS}"),
        ));
    }
    let offset = header_u64(req.headers(), "Upload-Offset", "invalid_offset")?
        .ok_or_else(|| ApiError::bad_request("invalid_offset", "Upload-Offset is required"))?;
    let id = upload_id(req);
    let lock = take_lock(state, &id).await?;
    let result = held(state, &lock, async {
        let (mut record, pending) = load(state, &id, &caller).await?;
        if offset != record.upload.offset {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "offset_mismatch",
                format!(
                    "Upload-Offset is {offset} but the upload is at {}",
                    record.upload.offset
                ),
            ));
        }
        if record.file_id.is_none() {
            append(req, payload, state, &caller, &id, &mut record, pending).await?;
        }
        Ok(record)
    })
    .await;
    release(state, lock).await;
    let record = result?;
    let mut response = HttpResponse::NoContent();
    progress(&mut response, &record);
    Ok(response.finish())
}

/// Where the upload stands: its offset, expiry, and the Box file once it landed.
fn progress(response: &mut actix_web::HttpResponseBuilder, record: &Record) {
    response
        .insert_header(("Upload-Offset", record.upload.offset))
        .insert_header(("Upload-Expires", http_date(record.expires_at)));
    if let Some(file_id) = &record.file_id {
        response.insert_header((BOX_FILE_ID, file_id.as_str()));
    }
}

async fn delete_upload(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = state.access.authenticate_checked(req.headers()).await?;
    let id = upload_id(req);
    let lock = take_lock(state, &id).await?;
    let result = held(state, &lock, async {
        let (record, _) = load(state, &id, &caller).await?;
        if record.file_id.is_none() {
            state
                .pipeline
                .acting_as(&caller.principal)
                .abort_resumable(&record.upload, "terminated")
                .await;
            state
                .metrics
                .tus_uploads
                .with_label_values(&["terminated", &caller.name])
                .inc();
        }
        forget(state, &id).await
    })
    .await;
    release(state, lock).await;
    result?;
    Ok(HttpResponse::NoContent().finish())
}

/// Appends the request's body at the upload's offset (after checking its `Upload-Checksum`), keeps
/// what is durable in the store, and lands the file when its last byte is in.
async fn append(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    caller: &Caller,
    id: &str,
    record: &mut Record,
    mut pending: Bytes,
) -> Result<(), ApiError> {
    let size = record.upload.upload.size;
    let offset = record.upload.offset;
    let checksum = parse_checksum(req.headers())?;
    if let Some(len) = content_length(req.headers())?.filter(|len| offset + len > size) {
        return Err(ApiError::bad_request(
            "size_mismatch",
            format!("{len} bytes at offset {offset} pass the upload's length ({size})"),
        ));
    }
    let body = idle_timeout(payload, state.client_idle_timeout).map_err(from_payload);
    let pipeline = state.pipeline.acting_as(&caller.principal);
    let appended = match checksum {
        None => pipeline.append(&mut record.upload, &mut pending, body).await,
        Some(want) => {
            // The chunk is checked whole before any of it goes to Box (whose parts cannot be taken
            // back): it is spooled to disk, not held in memory, while its SHA-1 is computed.
            let mut hasher = Sha1::new();
            let body = body.inspect_ok(|chunk| hasher.update(chunk));
            let spooled = spool(body, &state.spool_dir, size - offset)
                .await
                .map_err(|e| caller.box_error(fail(e)))?;
            if <[u8; 20]>::from(hasher.finalize()) != want {
                return Err(ApiError::new(
                    StatusCode::from_u16(460).expect("460 is a valid status"),
                    "checksum_mismatch",
                    "the chunk's SHA-1 differs from Upload-Checksum; it was dropped",
                ));
            }
            let body = spooled.stream().await.map_err(fail)?;
            pipeline.append(&mut record.upload, &mut pending, body).await
        }
    };
    // What is durable is kept, whether the body came whole or not.
    save(state, id, record, &pending).await?;
    appended.map_err(|e| caller.box_error(fail(e)))?;
    if !record.upload.is_complete() {
        return Ok(());
    }
    match pipeline.complete(&record.upload, pending).await {
        Ok(outcome) => {
            record.file_id = outcome.file.id().map(str::to_owned);
            save(state, id, record, &[]).await?;
            let m = &state.metrics;
            let method = outcome.method.as_str();
            m.tus_uploads
                .with_label_values(&["completed", &caller.name])
                .inc();
            m.uploads
                .with_label_values(&[method, "success", &caller.name])
                .inc();
            m.upload_bytes
                .with_label_values(&[method, &caller.name])
                .inc_by(outcome.size);
            tracing::info!(upload_id = %id, method, file_id = outcome.file.id(), size = outcome.size,
                sha1 = %outcome.sha1_hex, "tus upload landed in Box");
            Ok(())
        }
        // Nothing half-done stays: the session is aborted and the upload forgotten.
        Err(err) => {
            pipeline.abort_resumable(&record.upload, "error").await;
            forget(state, id).await?;
            state
                .metrics
                .tus_uploads
                .with_label_values(&["failed", &caller.name])
                .inc();
            Err(caller.box_error(fail(err)))
        }
    }
}

/// The upload, if it exists and belongs to the caller (another caller's upload is not found either).
async fn load(state: &AppState, id: &str, caller: &Caller) -> Result<(Record, Bytes), ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such upload (or it expired)",
        )
    };
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(not_found());
    }
    let bytes = state.store.get(&store_key(id)).await?.ok_or_else(not_found)?;
    let (record, pending) = decode(bytes)?;
    if record.owner != *caller.name || record.expires_at <= now_secs() {
        return Err(not_found());
    }
    Ok((record, pending))
}

async fn save(state: &AppState, id: &str, record: &Record, pending: &[u8]) -> Result<(), ApiError> {
    let ttl = Duration::from_secs(record.expires_at.saturating_sub(now_secs())) + GRACE;
    state
        .store
        .put(&store_key(id), encode(record, pending)?, ttl)
        .await
        .map_err(ApiError::from)
}

async fn forget(state: &AppState, id: &str) -> Result<(), ApiError> {
    state.store.delete(&store_key(id)).await?;
    state.store.unschedule(id).await.map_err(ApiError::from)
}

async fn take_lock(state: &AppState, id: &str) -> Result<Lock, ApiError> {
    state.store.lock(&store_key(id), LOCK_TTL).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "upload_locked",
            "another request is writing this upload; ask HEAD for its offset when it is done",
        )
    })
}

/// Runs `work` while keeping the lock alive. If the request is dropped (the client left and actix
/// dropped the handler), the lock is released in the background.
async fn held<T>(state: &AppState, lock: &Lock, work: impl std::future::Future<Output = T>) -> T {
    let mut guard = Unlocker(Some((state.store.clone(), lock.clone())));
    let keep = async {
        loop {
            tokio::time::sleep(LOCK_TTL / 3).await;
            if !matches!(state.store.extend(lock, LOCK_TTL).await, Ok(true)) {
                tracing::warn!(lock = %lock.key, "lost the upload's lock while writing it");
            }
        }
    };
    let out = tokio::select! {
        out = work => out,
        never = keep => never,
    };
    guard.0 = None;
    out
}

async fn release(state: &AppState, lock: Lock) {
    if let Err(err) = state.store.unlock(&lock).await {
        tracing::warn!(error = %err, "could not release an upload's lock; it expires by itself");
    }
}

struct Unlocker(Option<(std::sync::Arc<dyn crate::state::StateStore>, Lock)>);

impl Drop for Unlocker {
    fn drop(&mut self) {
        if let Some((store, lock)) = self.0.take() {
            tokio::spawn(async move {
                let _ = store.unlock(&lock).await;
            });
        }
    }
}

/// Aborts the Box sessions of uploads past their expiry and forgets them, every `interval`, for as
/// long as the gateway runs. With several replicas each sweeps; the upload's lock keeps them apart.
pub async fn sweep(state: std::sync::Arc<AppState>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let due = match state.store.due(now_secs(), 100).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "tus sweeper: the state store failed");
                continue;
            }
        };
        for id in due {
            if let Err(err) = expire(&state, &id).await {
                tracing::warn!(upload_id = %id, code = err.code, "tus sweeper could not expire an upload");
            }
        }
    }
}

async fn expire(state: &AppState, id: &str) -> Result<(), ApiError> {
    let Some(lock) = state.store.lock(&store_key(id), LOCK_TTL).await? else {
        return Ok(()); // being written now: the next sweep takes it
    };
    let result = async {
        if let Some(bytes) = state.store.get(&store_key(id)).await? {
            let (record, _) = decode(bytes)?;
            if record.file_id.is_none() {
                match state.access.principal_of(&record.owner) {
                    Some(principal) => {
                        state
                            .pipeline
                            .acting_as(&principal)
                            .abort_resumable(&record.upload, "expired")
                            .await
                    }
                    None => tracing::warn!(upload_id = %id,
                        "an expired tus upload's session cannot be aborted without its caller's token; Box discards it after 7 days"),
                }
                state.metrics.tus_uploads.with_label_values(&["expired", &record.owner]).inc();
                tracing::info!(upload_id = %id, "tus upload expired");
            }
        }
        forget(state, id).await
    }
    .await;
    release(state, lock).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_parsed_and_checked() {
        let m =
            parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,folder_id MTIz")
                .unwrap();
        assert_eq!(m["filename"], "world_domination_plan.pdf");
        assert_eq!(m["is_confidential"], "");
        assert_eq!(m["folder_id"], "123");
        assert_eq!(parse_metadata("").unwrap().len(), 0);
        for bad in ["filename !!", "a YQ==,a Yg==", "name /w=="] {
            assert_eq!(parse_metadata(bad).unwrap_err().code, "invalid_metadata", "{bad}");
        }
    }

    #[test]
    fn records_round_trip_with_their_pending_bytes() {
        let record = Record {
            owner: "k".into(),
            expires_at: 7,
            metadata: String::new(),
            upload: Resumable {
                upload: NewUpload {
                    target: Target::NewFile {
                        folder_id: "0".into(),
                        name: "a".into(),
                    },
                    size: 10,
                    content_created_at: None,
                    content_modified_at: None,
                },
                expected_sha1: None,
                session: None,
                offset: 3,
                parts: Default::default(),
                sha1: Default::default(),
            },
            file_id: None,
        };
        let (back, pending) = decode(encode(&record, b"abc").unwrap()).unwrap();
        assert_eq!((back.owner.as_str(), back.upload.offset), ("k", 3));
        assert_eq!(&pending[..], b"abc");
        assert!(decode(vec![0, 0]).is_err());
    }
}
