//! `HEAD /v1/tus/{id}` (where the upload stands) and `DELETE /v1/tus/{id}` (termination: its Box
//! session aborted, its record forgotten). Both check the id and the owner first: a stranger's
//! request is 404 and touches nothing.
use actix_web::{HttpRequest, HttpResponse};

use super::protocol::{check_version, failed_answer, progress, upload_id};
use super::record::{forget, load_record, take_lock, while_locked};
use crate::error::ApiError;
use crate::routes::admission;
use crate::routes::outcome::count_tus_end;
use crate::routes::AppState;

pub(super) async fn head_upload(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = admission::caller(req, state).await?;
    // The record only: HEAD never reads the unfinished part.
    let record = load_record(state, &upload_id(req), &caller).await?;
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
