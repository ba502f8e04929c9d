//! Resumable uploads: tus 1.0.0 (<https://tus.io/protocols/resumable-upload>) onto one Box upload
//! session, at `/v1/tus/`.
//! - `OPTIONS /v1/tus/`       what the server supports (no key needed)
//! - `POST    /v1/tus/`       creation (and creation-with-upload): opens the Box session
//! - `HEAD    /v1/tus/{id}`   where the upload stands (`Upload-Offset`; `Upload-Box-File-Id` once landed)
//! - `PATCH   /v1/tus/{id}`   appends at `Upload-Offset`; the last byte commits
//! - `DELETE  /v1/tus/{id}`   termination: aborts the Box session
//!
//! The upload's state (Box session, offset, the whole file's SHA-1 state, its owner, expiry, the
//! landed file's id) is one small record in the state store, so a restarted gateway or another replica
//! takes the next request; the bytes of the part not yet full are stored apart (`tus:<id>:pending`),
//! read only by a PATCH, never by HEAD, and counted against `tus_max_pending_bytes`. Each owner has
//! at most `tus_max_open_uploads_per_key` uploads open.
//!
//! A lock per upload, held for the whole of a PATCH or DELETE, keeps two requests (on any replicas)
//! from writing the same upload: the second gets 409 `upload_locked`. Every write is fenced by that
//! lock (the store checks the lock's token atomically with the write), and a request that loses its
//! lock stops: a stale PATCH can never move the offset backwards.
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
use super::upload::{client_body, content_length, fail, from_payload};
use super::AppState;
use crate::access::Caller;
use crate::box_api::{NewUpload, Target};
use crate::error::ApiError;
use crate::pipeline::{spool, Resumable, UploadError, UploadRequest};
use crate::state::{now_secs, Fenced, FencedWrite, Lock};

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
/// `Retry-After` of 503 `tus_storage_full`: other uploads' parts fill and leave the store meanwhile.
const STORAGE_FULL_RETRY_SECS: u64 = 10;

/// One upload in the state store (the bytes of the unfinished part are stored apart, under
/// `pending_key`).
#[derive(Serialize, Deserialize)]
struct Record {
    /// `Caller::owner`: the API key's name, or a hash of the caller's token; only the same owner
    /// sees the upload.
    owner: String,
    /// The caller's name (key name, `passthrough`, `anonymous`) for logs and metrics.
    #[serde(default)]
    caller: String,
    /// Unix seconds.
    expires_at: u64,
    /// `Upload-Metadata` as sent, for HEAD.
    metadata: String,
    upload: Resumable,
    /// Once the file landed in Box.
    file_id: Option<String>,
    /// The length of the unfinished part stored apart (checked when it is read back).
    #[serde(default)]
    pending_len: u64,
    /// The unfinished part as it was read, so a save that did not change it does not write it again.
    #[serde(skip)]
    loaded_pending: Bytes,
    /// Read from an old record that carried it inline: the next save stores it apart.
    #[serde(skip)]
    pending_inline: bool,
    /// Once the upload failed for good (its commit, or the direct upload, was refused): what HEAD
    /// and PATCH answer from then on, on any replica, until DELETE or expiry.
    #[serde(default)]
    failed: Option<Failure>,
}

/// Why an upload failed for good: the answer its last PATCH got.
#[derive(Serialize, Deserialize)]
struct Failure {
    /// The gateway's error code of that answer (`box_timeout`, `digest_mismatch`, ...).
    code: String,
    message: String,
}

/// The header naming the cause of a failed upload's 410 (HEAD has no body to carry it).
pub const FAILURE_CODE: &str = "Upload-Failure-Code";

/// 410 `upload_failed`: the upload will never land; nothing of it is in Box.
fn failed_answer(failure: &Failure) -> HttpResponse {
    let mut response = ApiError::new(
        StatusCode::GONE,
        "upload_failed",
        format!(
            "the upload failed for good and nothing of it is in Box ({}: {}); DELETE it and upload the file again",
            failure.code, failure.message
        ),
    )
    .error_response();
    if let Ok(code) = HeaderValue::from_str(&failure.code) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("upload-failure-code"), code);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn store_key(id: &str) -> String {
    format!("tus:{id}")
}

fn pending_key(id: &str) -> String {
    format!("tus:{id}:pending")
}

/// The record's JSON behind its length. (Records written before the unfinished part was stored
/// apart carry it after the JSON; `decode` still reads them.)
fn encode(record: &Record) -> Result<Vec<u8>, ApiError> {
    let meta = serde_json::to_vec(record).map_err(|e| internal(format!("encode: {e}")))?;
    let mut out = Vec::with_capacity(4 + meta.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    Ok(out)
}

/// The record, and the unfinished part an old record carries inline (empty for new ones).
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
    // A PATCH stopped by the drain answers before its body is read: the connection closes, so the
    // server's stop does not wait for a body nobody reads.
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
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
            // A link's page may leave the folder out: the link names it.
            let default = caller.link().map_or("0", |l| l.folder_id.as_str());
            let folder_id = validate_id(folder_id.map_or(default, String::as_str), "folder")?;
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
    let on_conflict = params.on_conflict()?;
    caller.check_on_conflict(&on_conflict)?;
    // The key's quotas and Box's capacity, before any byte is read and before a session is opened.
    let admission = super::upload::admit_upload(state, &caller).await?;
    state
        .access
        .take_quota(&caller, crate::access::QuotaCost::Bytes(size))
        .await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let expires_at = now_secs() + state.tus.expiration.as_secs();
    // Counted before Box is asked for a session, so a caller at its cap costs Box nothing.
    let max_open = state.tus.max_open_uploads_per_key;
    if !state
        .store
        .open_upload(&caller.owner().to_string(), &id, expires_at, now_secs(), max_open)
        .await?
    {
        state
            .metrics
            .tus_refused
            .with_label_values(&["too_many_open_uploads"])
            .inc();
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_open_uploads",
            format!("this caller has {max_open} resumable uploads open (tus_max_open_uploads_per_key): finish or DELETE one first"),
        ));
    }
    if let Err(err) = state.access.take_link_slot(&caller, &id).await {
        let _ = state.store.close_upload(&caller.owner().to_string(), &id).await;
        return Err(err);
    }
    let request = UploadRequest {
        upload: NewUpload {
            target,
            size,
            content_created_at: UploadParams::timestamp(&params.content_created_at, "content_created_at")?,
            content_modified_at: UploadParams::timestamp(&params.content_modified_at, "content_modified_at")?,
        },
        on_conflict,
        expected_sha1: params.expected_sha1(None)?,
    };
    let pipeline = state
        .pipeline
        .acting_as(&caller.principal)
        .admitted(Some(admission));
    let prepared = match pipeline.prepare(request).await {
        Ok(prepared) => prepared,
        Err(e) => {
            let _ = state.store.close_upload(&caller.owner().to_string(), &id).await;
            release_link_slot(state, &caller, &id).await;
            return Err(caller.box_error(fail(e)));
        }
    };
    let mut record = Record {
        owner: caller.owner().to_string(),
        caller: caller.key_label().to_string(),
        expires_at,
        metadata: raw_metadata,
        upload: prepared.into_resumable(),
        file_id: None,
        pending_len: 0,
        loaded_pending: Bytes::new(),
        pending_inline: false,
        failed: None,
    };
    // Scheduled first: a record the sweeper cannot find would hold its Box session for 7 days.
    let saved = async {
        state.store.schedule(&id, expires_at).await?;
        let lock = take_lock(state, &id).await?;
        let saved = save(state, &lock, &id, &mut record, &Bytes::new()).await;
        release(state, lock).await;
        saved
    }
    .await;
    if let Err(err) = saved {
        pipeline.abort_resumable(&record.upload, "error").await;
        let _ = state.store.close_upload(&caller.owner().to_string(), &id).await;
        release_link_slot(state, &caller, &id).await;
        let _ = state.store.unschedule(&id).await;
        return Err(err);
    }
    state
        .metrics
        .tus_uploads
        .with_label_values(&["created", &caller.key_label()])
        .inc();
    tracing::info!(upload_id = %id, size, key = %caller.key_label(), "tus upload created");
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
            append(
                req,
                payload,
                state,
                &caller,
                &lock,
                &id,
                &mut record,
                Bytes::new(),
            ),
        )
        .await;
        release(state, lock).await;
        match appended {
            Ok(()) => {}
            // The upload exists and is not done: the client asks HEAD where it stands and sends the
            // rest. (An error once complete is the commit's: the upload is gone, so it is answered.)
            // A full store is the same: what did not fit was dropped, and HEAD says so.
            Err(err)
                if (!err.status.is_server_error()
                    || err.code == "tus_storage_full"
                    || err.code == "draining")
                    && !record.upload.is_complete() =>
            {
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
    // The record only: HEAD never reads the unfinished part.
    let record = load_record(state, &upload_id(req), &caller).await?;
    if let Some(failure) = &record.failed {
        return Ok(failed_answer(failure));
    }
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
        if let Some(failure) = &record.failed {
            return Ok(Err(failed_answer(failure)));
        }
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
            append(req, payload, state, &caller, &lock, &id, &mut record, pending).await?;
        }
        Ok(Ok(record))
    })
    .await;
    release(state, lock).await;
    let record = match result? {
        Ok(record) => record,
        Err(failed) => return Ok(failed),
    };
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
        let record = load_record(state, &id, &caller).await?;
        // A failed upload's session was aborted when it failed.
        if record.file_id.is_none() && record.failed.is_none() {
            state
                .pipeline
                .acting_as(&caller.principal)
                .abort_resumable(&record.upload, "terminated")
                .await;
            state
                .metrics
                .tus_uploads
                .with_label_values(&["terminated", &caller.key_label()])
                .inc();
        }
        forget(state, &lock, &id, Some(&record.owner)).await?;
        Ok(record.file_id.is_some())
    })
    .await;
    release(state, lock).await;
    // A landed file keeps its link slot: deleting its record must not make room for another file.
    if !result? {
        release_link_slot(state, &caller, &id).await;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Appends the request's body at the upload's offset (after checking its `Upload-Checksum`), keeps
/// what is durable in the store, and lands the file when its last byte is in.
#[allow(clippy::too_many_arguments)]
async fn append(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    caller: &Caller,
    lock: &Lock,
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
    let received = state
        .metrics
        .tus_received_bytes
        .with_label_values(&[&caller.key_label()]);
    let body = client_body(payload, state)
        .map_err(from_payload)
        .inspect_ok(move |chunk| received.inc_by(chunk.len() as u64));
    let pipeline = state.pipeline.acting_as(&caller.principal);
    let appended = match checksum {
        None => pipeline.append(&mut record.upload, &mut pending, body).await,
        Some(want) => {
            // The chunk is checked whole before any of it goes to Box (whose parts cannot be taken
            // back): it is spooled to disk, not held in memory, while its SHA-1 is computed.
            let mut hasher = Sha1::new();
            let body = body.inspect_ok(|chunk| hasher.update(chunk));
            // Bounded like any spooled body: by `spool_max_bytes` for this chunk, and by the spool
            // of all uploads together.
            let limit = (size - offset).min(state.spool.max_bytes);
            let too_large = || {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "file_too_large",
                    format!(
                        "a chunk with Upload-Checksum is checked on disk before it goes to Box, and this one is larger than spool_max_bytes ({}): send smaller chunks",
                        state.spool.max_bytes
                    ),
                )
            };
            if state.spool.max_bytes == 0 {
                return Err(too_large());
            }
            let spooled = match spool(body, &state.spool.dir, limit, &state.spool_space).await {
                Err(UploadError::TooLarge { .. }) if limit < size - offset => return Err(too_large()),
                other => other.map_err(|e| caller.box_error(fail(e)))?,
            };
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
    save(state, lock, id, record, &pending).await?;
    appended.map_err(|e| match e {
        // Unlike a plain upload's, the session stays: the client resumes from HEAD's offset.
        UploadError::ShuttingDown => ApiError::draining(
            "the gateway is shutting down; what reached Box is kept: ask HEAD for the offset and resume (another replica takes it)",
        ),
        e => caller.box_error(fail(e)),
    })?;
    if !record.upload.is_complete() {
        return Ok(());
    }
    match pipeline.complete(&mut record.upload, pending).await {
        Ok(outcome) => {
            // Stored before the record says landed: a crash in between still tells (the file is
            // in Box), where the other order could lose the event.
            let mut completed = super::upload::completed(
                &outcome,
                caller.key_label().to_string(),
                crate::telemetry::RequestId::of(req),
            );
            completed.tus_id = Some(id.to_owned());
            completed.upload_metadata = parse_metadata(&record.metadata).ok();
            state
                .events
                .emit(caller.webhook_url(), crate::events::Event::Completed(completed))
                .await;
            record.file_id = outcome.file.id().map(str::to_owned);
            save(state, lock, id, record, &Bytes::new()).await?;
            // Landed: no longer counted among the owner's open uploads (HEAD still finds it).
            if let Err(err) = state.store.close_upload(&record.owner, id).await {
                tracing::warn!(upload_id = %id, error = %err, "a landed upload stays counted as open until it expires");
            }
            let m = &state.metrics;
            let method = outcome.method.as_str();
            m.tus_uploads
                .with_label_values(&["completed", &caller.key_label()])
                .inc();
            m.uploads
                .with_label_values(&[method, "success", &caller.key_label()])
                .inc();
            m.upload_bytes
                .with_label_values(&[method, &caller.key_label()])
                .inc_by(outcome.size);
            tracing::info!(upload_id = %id, method, file_id = outcome.file.id(), size = outcome.size,
                sha1 = %outcome.sha1_hex, "tus upload landed in Box");
            Ok(())
        }
        // Box lacks parts: the upload was moved back to the first hole, and goes on from there.
        Err(err @ UploadError::Rewound { .. }) => {
            save(state, lock, id, record, &Bytes::new()).await?;
            state
                .metrics
                .tus_uploads
                .with_label_values(&["rewound", &caller.key_label()])
                .inc();
            Err(fail(err))
        }
        // Nothing half-done stays in Box: the session is aborted. The record stays, saying so, for
        // HEAD and PATCH on any replica (never a full offset without a file), until DELETE or expiry.
        Err(err) => {
            pipeline.abort_resumable(&record.upload, "error").await;
            let err = caller.box_error(fail(err));
            record.failed = Some(Failure {
                code: err.code.to_owned(),
                message: err.message.clone(),
            });
            let (name, folder_id) = match &record.upload.upload.target {
                Target::NewFile { folder_id, name } => (Some(name.clone()), Some(folder_id.clone())),
                Target::NewVersion { name, .. } => (name.clone(), None),
            };
            let failed = crate::events::Failed {
                code: err.code.to_owned(),
                message: err.message.clone(),
                name,
                folder_id,
                bytes_received: record.upload.offset,
                key: caller.key_label().to_string(),
                request_id: crate::telemetry::RequestId::of(req),
                tus_id: Some(id.to_owned()),
            };
            state
                .events
                .emit(caller.webhook_url(), crate::events::Event::Failed(failed))
                .await;
            save(state, lock, id, record, &Bytes::new()).await?;
            // Failed: no longer counted among the owner's open uploads (HEAD still answers it).
            if let Err(err) = state.store.close_upload(&record.owner, id).await {
                tracing::warn!(upload_id = %id, error = %err, "a failed upload stays counted as open until it expires");
            }
            state
                .metrics
                .tus_uploads
                .with_label_values(&["failed", &caller.key_label()])
                .inc();
            Err(err)
        }
    }
}

async fn release_link_slot(state: &AppState, caller: &Caller, id: &str) {
    if let Some(slot) = state.access.link_slot_of(caller, id) {
        state.access.give_back_link_slot(slot).await;
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such upload (or it expired)",
    )
}

/// The upload's record, if it exists and belongs to the caller (another caller's upload is not found
/// either: 404, not 403, so an id says nothing to whoever does not own it). Its unfinished part is
/// not read.
async fn load_record(state: &AppState, id: &str, caller: &Caller) -> Result<Record, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(not_found());
    }
    let bytes = state.store.get(&store_key(id)).await?.ok_or_else(not_found)?;
    let (mut record, inline) = decode(bytes)?;
    if record.owner != caller.owner().to_string() || record.expires_at <= now_secs() {
        return Err(not_found());
    }
    if !inline.is_empty() {
        record.pending_len = inline.len() as u64;
        record.loaded_pending = inline;
        record.pending_inline = true;
    }
    Ok(record)
}

/// The upload (checked as `load_record` does) and its unfinished part, read once.
async fn load(state: &AppState, id: &str, caller: &Caller) -> Result<(Record, Bytes), ApiError> {
    let mut record = load_record(state, id, caller).await?;
    if record.pending_len > 0 && record.loaded_pending.is_empty() {
        let pending = state
            .store
            .get_pending(&pending_key(id))
            .await?
            .map(Bytes::from)
            .unwrap_or_default();
        if pending.len() as u64 != record.pending_len {
            return Err(internal(format!(
                "upload {id}: its unfinished part has {} bytes, its record says {}",
                pending.len(),
                record.pending_len
            )));
        }
        record.loaded_pending = pending;
    }
    let pending = record.loaded_pending.clone();
    Ok((record, pending))
}

fn fenced_write(
    state: &AppState,
    id: &str,
    value: Option<Vec<u8>>,
    ttl: Duration,
    pending: Option<Bytes>,
) -> FencedWrite {
    FencedWrite {
        key: store_key(id),
        value,
        ttl,
        pending_key: pending_key(id),
        pending,
        max_pending_bytes: state.tus.max_pending_bytes,
    }
}

/// Saves the record and its unfinished part (only if it changed), while `lock` is held. When the
/// part does not fit in `tus_max_pending_bytes`, it is dropped: the record is saved with its offset
/// at the part's start (so HEAD never claims bytes the gateway does not hold) and the answer is 503
/// `tus_storage_full`.
async fn save(
    state: &AppState,
    lock: &Lock,
    id: &str,
    record: &mut Record,
    pending: &Bytes,
) -> Result<(), ApiError> {
    let ttl = Duration::from_secs(record.expires_at.saturating_sub(now_secs())) + GRACE;
    let unchanged = !record.pending_inline
        && pending.len() == record.loaded_pending.len()
        && (pending.is_empty() || pending.as_ptr() == record.loaded_pending.as_ptr());
    let new_pending = (!unchanged).then(|| pending.clone());
    let before = (record.pending_len, record.upload.offset);
    record.pending_len = pending.len() as u64;
    let write = fenced_write(state, id, Some(encode(record)?), ttl, new_pending);
    match state.store.put_fenced(lock, write).await? {
        Fenced::Saved => {
            record.loaded_pending = pending.clone();
            record.pending_inline = false;
            Ok(())
        }
        Fenced::LockLost => {
            (record.pending_len, record.upload.offset) = before;
            state.metrics.tus_refused.with_label_values(&["lock_lost"]).inc();
            Err(lock_lost())
        }
        Fenced::Full => {
            state
                .metrics
                .tus_refused
                .with_label_values(&["storage_full"])
                .inc();
            record.upload.offset -= pending.len() as u64;
            record.pending_len = 0;
            let write = fenced_write(state, id, Some(encode(record)?), ttl, Some(Bytes::new()));
            match state.store.put_fenced(lock, write).await? {
                Fenced::LockLost => return Err(lock_lost()),
                _ => record.loaded_pending = Bytes::new(),
            }
            Err(ApiError {
                retry_after_secs: Some(STORAGE_FULL_RETRY_SECS),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tus_storage_full",
                    format!(
                        "the gateway holds as many unfinished parts as it may (tus_max_pending_bytes); the bytes after offset {} were not kept: ask HEAD and send them again later",
                        record.upload.offset
                    ),
                )
            })
        }
    }
}

/// 409 `upload_locked`: this request lost the upload's lock, so another may be writing it.
fn lock_lost() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "upload_locked",
        "this request lost the upload's lock (another request may be writing it); nothing more of it was kept: ask HEAD for the offset",
    )
}

/// Removes the upload (record and unfinished part), while `lock` is held, and stops counting it.
async fn forget(state: &AppState, lock: &Lock, id: &str, owner: Option<&str>) -> Result<(), ApiError> {
    let write = fenced_write(state, id, None, Duration::ZERO, Some(Bytes::new()));
    if state.store.put_fenced(lock, write).await? == Fenced::LockLost {
        return Err(lock_lost());
    }
    if let Some(owner) = owner {
        state.store.close_upload(owner, id).await?;
    }
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

/// Runs `work` while keeping the lock alive; when the lock is lost (it expired, or another took it),
/// `work` is stopped where it is (dropped: its parts in flight are cancelled, and it saves nothing)
/// and the answer is 409 `upload_locked`. If the request is dropped (the client left and actix
/// dropped the handler), the lock is released in the background.
async fn held<T>(
    state: &AppState,
    lock: &Lock,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let mut guard = Unlocker(Some((state.store.clone(), lock.clone())));
    let keep = async {
        loop {
            tokio::time::sleep(LOCK_TTL / 3).await;
            match state.store.extend(lock, LOCK_TTL).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(lock = %lock.key, "lost the upload's lock while writing it: stopped");
                    state.metrics.tus_refused.with_label_values(&["lock_lost"]).inc();
                    return Err(lock_lost());
                }
                // The store did not answer: the lock may still be held; the fenced save decides.
                Err(err) => {
                    tracing::warn!(lock = %lock.key, error = %err, "could not extend an upload's lock")
                }
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
        if let Ok(bytes) = state.store.pending_bytes().await {
            state.metrics.tus_pending_bytes.set(bytes as i64);
        }
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
        let mut owner = None;
        if let Some(bytes) = state.store.get(&store_key(id)).await? {
            // A record that cannot be read is removed all the same (it would otherwise come back
            // at every sweep, and stand before the others); its session is aborted if it can be
            // found in what is left of it.
            let (record_owner, caller, upload, landed) = match decode(bytes.clone()) {
                Ok((record, _)) => {
                    // Landed, or failed for good (its session was aborted then): nothing to abort.
                    let landed = record.file_id.is_some() || record.failed.is_some();
                    (Some(record.owner), record.caller, Some(record.upload), landed)
                }
                Err(_) => {
                    let (owner, upload) = salvage(&bytes);
                    tracing::error!(upload_id = %id, session_found = upload.is_some(),
                        "a stored tus upload cannot be read: removed");
                    (owner, String::new(), upload, false)
                }
            };
            if !landed {
                match (&upload, record_owner.as_deref().and_then(|o| state.access.principal_of_owner(&crate::access::Owner::parse(o)))) {
                    (Some(upload), Some(principal)) => {
                        state
                            .pipeline
                            .acting_as(&principal)
                            .abort_resumable(upload, "expired")
                            .await
                    }
                    (Some(upload), None) if upload.session.is_some() => tracing::warn!(upload_id = %id,
                        "an expired tus upload's session cannot be aborted without its caller's token; Box discards it after 7 days"),
                    _ => {}
                }
                state.metrics.tus_uploads.with_label_values(&["expired", &caller]).inc();
                tracing::info!(upload_id = %id, "tus upload expired");
            }
            owner = record_owner;
        }
        forget(state, &lock, id, owner.as_deref()).await
    }
    .await;
    release(state, lock).await;
    result
}

/// What can be read of a record that does not decode: its owner and upload, if they are intact.
fn salvage(bytes: &[u8]) -> (Option<String>, Option<Resumable>) {
    let meta = bytes
        .get(..4)
        .and_then(|h| <[u8; 4]>::try_from(h).ok())
        .map(|h| u32::from_be_bytes(h) as usize)
        .and_then(|len| bytes.get(4..4 + len));
    let Some(value) = meta.and_then(|m| serde_json::from_slice::<serde_json::Value>(m).ok()) else {
        return (None, None);
    };
    let owner = value.get("owner").and_then(|o| o.as_str()).map(str::to_owned);
    let upload = value
        .get("upload")
        .and_then(|u| serde_json::from_value::<Resumable>(u.clone()).ok());
    (owner, upload)
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
    fn records_round_trip_without_their_pending_bytes() {
        let record = Record {
            owner: "k".into(),
            caller: "k".into(),
            pending_len: 0,
            loaded_pending: Bytes::new(),
            pending_inline: false,
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
                chains: Default::default(),
            },
            file_id: None,
            failed: None,
        };
        let (back, inline) = decode(encode(&record).unwrap()).unwrap();
        assert_eq!((back.owner.as_str(), back.upload.offset), ("k", 3));
        assert!(inline.is_empty(), "the unfinished part is stored apart");
        // A record of the previous layout, its unfinished part inline, is still read.
        let mut old = encode(&record).unwrap();
        old.extend_from_slice(b"abc");
        assert_eq!(&decode(old).unwrap().1[..], b"abc");
        assert!(decode(vec![0, 0]).is_err());
        // What the sweeper can still read of a damaged record: its owner and its session.
        let meta = serde_json::to_vec(&record).unwrap();
        let mut damaged = (meta.len() as u32).to_be_bytes().to_vec();
        damaged.extend_from_slice(&meta);
        let (owner, upload) = salvage(&damaged);
        assert_eq!(owner.as_deref(), Some("k"));
        assert_eq!(upload.unwrap().offset, 3);
        assert!(matches!(salvage(b"\xff\xff"), (None, None)));
    }
}
