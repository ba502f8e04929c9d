//! `PATCH /v1/tus/{id}`: appends at `Upload-Offset`; the last byte commits (or, for a small file,
//! sends the one direct upload). Then the upload lands, is moved back to the first part Box lacks, or
//! fails for good.
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{StreamExt, TryStreamExt};
use sha1::{Digest, Sha1};

use super::protocol::{failed_answer, parse_checksum, progress, upload_id, OCTETS};
use super::record::{load_pending, load_record, save, take_lock, while_locked, Record, TusWrite};
use crate::error::ApiError;
use crate::pipeline::{spool, UploadError};
use crate::routes::admission;
use crate::routes::client_body::{client_body_until, from_payload};
use crate::routes::outcome::{Source, UploadReport};
use crate::routes::params::{content_length, header_u64};
use crate::routes::AppState;

pub(super) async fn patch_upload(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    super::protocol::check_version(req)?;
    let caller = admission::caller(req, state).await?;
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
    // The id, the owner and the expiry before the lock: a stranger's PATCH is 404 and touches
    // nothing (no lock, no write), so it cannot make its owner's PATCHes fail with 409. A PATCH at the
    // wrong offset is told so without its unfinished part being read.
    let record = load_record(state, &id, &caller).await?;
    if let Some(failure) = &record.failed {
        return Ok(failed_answer(failure));
    }
    check_offset(offset, &record)?;
    let lease = take_lock(state, &id).await?;
    let result = while_locked(state, &lease, async {
        // Again under the lock: another request may have moved the upload since. Its unfinished part
        // is read only after these checks, within the caller's share of the budget (`append`).
        let mut record = load_record(state, &id, &caller).await?;
        if let Some(failure) = &record.failed {
            return Ok(Err(failed_answer(failure)));
        }
        check_offset(offset, &record)?;
        if record.file_id.is_none() {
            let source = Source::Tus {
                id: id.clone(),
                created_ms: record.created_ms,
            };
            let report = UploadReport::begin(state, &caller, req, source);
            let write = TusWrite {
                state,
                caller: &caller,
                lock: lease.lock(),
                id: &id,
            };
            append(req, payload, write, &mut record, &report).await?;
        }
        Ok(Ok(record))
    })
    .await;
    lease.release().await;
    let record = match result? {
        Ok(record) => record,
        Err(failed) => return Ok(failed),
    };
    let mut response = HttpResponse::NoContent();
    progress(&mut response, &record);
    Ok(response.finish())
}

fn check_offset(offset: u64, record: &Record) -> Result<(), ApiError> {
    if offset != record.resumable.offset {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "offset_mismatch",
            format!(
                "Upload-Offset is {offset} but the upload is at {}",
                record.resumable.offset
            ),
        ));
    }
    Ok(())
}

/// Appends the request's body at the upload's offset (after checking its `Upload-Checksum`), keeps
/// what is durable in the store, and lands the file when its last byte is in (`complete::land`; an
/// empty PATCH at the full offset lands one that waits for the scanner). `report` tells the
/// upload's end when this request ends it (landed, failed for good); otherwise the upload goes on.
///
/// The upload's unfinished part is read back from the store only here, once the request was checked
/// and within the caller's share of the memory budget. A direct-size upload whose last byte comes in
/// this request lands from memory: its bytes are never stored, so a full store does not stop it.
pub(super) async fn append(
    req: &HttpRequest,
    payload: web::Payload,
    write: TusWrite<'_>,
    record: &mut Record,
    report: &UploadReport<'_>,
) -> Result<(), ApiError> {
    let TusWrite {
        state,
        caller,
        lock,
        id,
    } = write;
    super::complete::describe(report, record);
    let size = record.resumable.upload.size;
    let offset = record.resumable.offset;
    let checksum = parse_checksum(req.headers())?;
    // Checked: a Content-Length near 2^64 must not wrap past the length.
    if let Some(len) =
        content_length(req.headers())?.filter(|len| offset.checked_add(*len).is_none_or(|end| end > size))
    {
        return Err(ApiError::bad_request(
            "size_mismatch",
            format!("{len} bytes at offset {offset} pass the upload's length ({size})"),
        ));
    }
    let received = state
        .metrics
        .tus_received_bytes
        .with_label_values(&[caller.key_label()]);
    // A link's upload stops with its link, even in the middle of this request's body.
    let body = client_body_until(payload, state, caller.link().map(|l| l.expires_at))
        .map_err(from_payload)
        .inspect_ok(move |chunk| received.inc_by(chunk.len() as u64));
    let pipeline = state
        .pipeline
        .acting_as(&caller.principal)
        .held_by(caller.holder());
    let failed = |e: UploadError| {
        match e {
        // Unlike a plain upload's, the session stays: the client resumes from HEAD's offset.
        UploadError::ShuttingDown => ApiError::draining(
            "the gateway is shutting down; what reached Box is kept: ask HEAD for the offset and resume (another replica takes it)",
        ),
        e => caller.box_error(ApiError::logged(e)),
    }
    };
    let mut _spooled = None;
    let body = match checksum {
        None => body.boxed_local(),
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
                other => other.map_err(|e| caller.box_error(ApiError::logged(e)))?,
            };
            if <[u8; 20]>::from(hasher.finalize()) != want {
                return Err(ApiError::new(
                    StatusCode::from_u16(460).expect("460 is a valid status"),
                    "checksum_mismatch",
                    "the chunk's SHA-1 differs from Upload-Checksum; it was dropped",
                ));
            }
            let body = spooled.stream().await.map_err(ApiError::logged)?.boxed_local();
            // Kept (the spool file and its place in the spool) until the append has read it.
            _spooled = Some(spooled);
            body
        }
    };
    let mut hold = pipeline
        .hold_for(&record.resumable, record.pending_len)
        .await
        .map_err(failed)?;
    let mut pending = load_pending(state, id, record).await?;
    let appended = pipeline
        .append(&mut record.resumable, &mut pending, &mut hold, body)
        .await;
    let file = match appended {
        Ok(Some(file)) => Some(file),
        appended => {
            // What is durable is kept, whether the body came whole or not.
            save(state, lock, id, record, &pending).await?;
            appended.map_err(failed)?;
            None
        }
    };
    // Whatever this request read is in Box, stored, or (a direct upload's whole file) in `file`.
    drop((hold, pending));
    if !record.resumable.is_complete() {
        return Ok(());
    }
    super::complete::land(write, record, file, report).await
}
