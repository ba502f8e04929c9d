//! `HEAD /v1/tus/{id}` (where the upload stands) and `DELETE /v1/tus/{id}` (termination: its Box
//! session aborted, its record forgotten). Both check the id and the owner first: a stranger's
//! request is 404 and touches nothing.
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use tracing::Instrument;

use super::complete::{awaits_landing, land_stuck};
use super::protocol::{check_version, failed_answer, progress, upload_id};
use super::record::{forget, load_record, take_lock, try_lock, while_locked};
use crate::error::ApiError;
use crate::routes::admission;
use crate::routes::outcome::count_tus_end;
use crate::routes::AppState;

/// How long HEAD waits for an upload whose last byte is in to land or fail (its commit, its scan):
/// it never answers the full offset of a file that is not in Box yet, which a tus client would
/// take for success. Past it, 503 `upload_completing`; the landing goes on meanwhile (it runs in a
/// task of its own, `complete::land_stuck`, or in the request that holds the lock). A file whose
/// scan takes longer (clamd needs about 12 s per GB, operations.md) is answered by a later HEAD.
const HEAD_WAIT: Duration = Duration::from_secs(20);
/// How often HEAD looks at the record meanwhile.
const HEAD_POLL: Duration = Duration::from_millis(200);
/// `Retry-After` of HEAD's 503 `upload_completing`.
const COMPLETING_RETRY_AFTER_SECS: u64 = 5;

pub(super) async fn head_upload(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = admission::caller(req, state).await?;
    let id = upload_id(req);
    // The record only: HEAD never reads an unfinished part (its landing of a complete direct-size
    // upload reads that upload's whole file, as the last PATCH would).
    let mut record = load_record(state, &id, &caller).await?;
    // Every byte is in but the upload has neither landed nor failed. While a request lands it (it
    // holds the lock: the last PATCH, on any replica), HEAD waits for that, polling the record.
    // When none does (its last PATCH met no scanner verdict, or the replica landing it died after
    // the staged commit; its lock is free, or expires), HEAD lands it, once per HEAD: tus clients
    // ask HEAD, they never send the last PATCH again.
    let waited = Instant::now();
    let mut landing = None;
    let mut tried = false;
    while awaits_landing(&record) {
        if !tried {
            // Without waiting: a lock held means a request is landing it.
            if let Some(lease) = try_lock(state, &id).await? {
                tried = true;
                let task = land_stuck(state.clone(), caller.clone(), req.clone(), id.clone(), lease);
                // Counted by the lifecycle: a drain lets a landing under way finish within its grace.
                let hold = state.lifecycle.hold();
                let task = async move {
                    let landed = task.await;
                    drop(hold);
                    landed
                };
                landing = Some(actix_web::rt::spawn(task.instrument(tracing::Span::current())));
            }
        }
        let left = HEAD_WAIT.saturating_sub(waited.elapsed());
        if left.is_zero() {
            return Err(completing());
        }
        let nap = left.min(HEAD_POLL);
        let ended = match landing.as_mut() {
            Some(task) => tokio::time::timeout(nap, task).await.ok(),
            None => {
                tokio::time::sleep(nap).await;
                None
            }
        };
        record = load_record(state, &id, &caller).await?;
        if let Some(ended) = ended {
            landing = None;
            match ended {
                // Still undecided after HEAD's own landing: its answer says why (503
                // `scanner_unavailable` when clamd still gives no verdict; the upload is kept).
                Ok(Err(err)) if awaits_landing(&record) => return Err(err),
                Ok(_) => {}
                Err(join) => {
                    tracing::error!(upload_id = %id, error = %join, "HEAD's landing of a tus upload failed")
                }
            }
        }
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

/// 503 `upload_completing`: HEAD stopped waiting for a landing that goes on.
fn completing() -> ApiError {
    ApiError {
        retry_after_secs: Some(COMPLETING_RETRY_AFTER_SECS),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upload_completing",
            "every byte is in and the upload is being committed (and scanned); ask again after Retry-After",
        )
    }
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
