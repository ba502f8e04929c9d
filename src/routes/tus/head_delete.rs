//! `HEAD /v1/tus/{id}` (where the upload stands) and `DELETE /v1/tus/{id}` (termination: its Box
//! session aborted, its record forgotten). Both check the id and the owner first: a stranger's
//! request is 404 and touches nothing.
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use super::protocol::{check_version, failed_answer, progress, upload_id};
use super::record::{forget, load_record, take_lock, while_locked};
use crate::error::ApiError;
use crate::routes::admission;
use crate::routes::outcome::count_tus_end;
use crate::routes::AppState;

/// How long HEAD waits for an upload whose last byte is in to land or fail (its commit, its scan):
/// it never answers the full offset of a file that is not in Box yet, which a tus client would
/// take for success.
const HEAD_WAIT: Duration = Duration::from_secs(20);
/// How often HEAD looks at the record meanwhile.
const HEAD_POLL: Duration = Duration::from_millis(200);
/// `Retry-After` of HEAD's 503 `upload_completing`.
const COMPLETING_RETRY_AFTER_SECS: u64 = 5;

pub(super) async fn head_upload(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = admission::caller(req, state).await?;
    let id = upload_id(req);
    // The record only: HEAD never reads the unfinished part.
    let mut record = load_record(state, &id, &caller).await?;
    // Every byte is in but the upload has neither landed nor failed: its last PATCH is committing
    // (and scanning) it. The answer waits for that, polling the record (any replica may decide).
    let waited = Instant::now();
    while record.resumable.is_complete() && record.file_id.is_none() && record.failed.is_none() {
        if waited.elapsed() >= HEAD_WAIT {
            return Err(ApiError {
                retry_after_secs: Some(COMPLETING_RETRY_AFTER_SECS),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upload_completing",
                    "every byte is in and the upload is being committed (and scanned); ask again after Retry-After",
                )
            });
        }
        tokio::time::sleep(HEAD_POLL).await;
        record = load_record(state, &id, &caller).await?;
    }
    if let Some(failure) = &record.failed {
        return Ok(failed_answer(failure));
    }
    let mut response = HttpResponse::Ok();
    response
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .insert_header(("Upload-Length", record.resumable.upload.size));
    if !record.metadata.is_empty() {
        response.insert_header(("Upload-Metadata", record.metadata.as_str()));
    }
    progress(&mut response, &record);
    Ok(response.finish())
}

pub(super) async fn delete_upload(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = admission::caller(req, state).await?;
    let id = upload_id(req);
    // The owner before the lock (see `patch_upload`).
    load_record(state, &id, &caller).await?;
    let lease = take_lock(state, &id).await?;
    let result = while_locked(state, &lease, async {
        let record = load_record(state, &id, &caller).await?;
        // A failed upload's session was aborted when it failed; a landed one has none.
        let open = record.file_id.is_none() && record.failed.is_none();
        if open {
            state
                .pipeline
                .acting_as(&caller.principal)
                .abort_resumable(&record.resumable, "terminated")
                .await;
        }
        forget(state, lease.lock(), &id, Some(&record.owner)).await?;
        if open {
            state
                .metrics
                .tus_uploads
                .with_label_values(&["terminated", caller.key_label()])
                .inc();
            count_tus_end(state, &record.resumable, "cancelled", caller.key_label());
        }
        Ok(record.file_id.is_some())
    })
    .await;
    lease.release().await;
    // A landed file keeps its link slot: deleting its record must not make room for another file.
    if !result? {
        if let Some(slot) = state.access.link_slot_of(&caller, &id) {
            state.access.give_back_link_slot(slot).await;
        }
    }
    Ok(HttpResponse::NoContent().finish())
}
