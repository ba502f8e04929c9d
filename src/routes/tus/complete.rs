//! The landing of a tus upload whose every byte is in, written once for the two requests that run
//! it: its last PATCH (`patch.rs`), and HEAD for an upload that no request is landing
//! (`head_delete.rs`): its last PATCH met no scanner verdict, or the replica landing it died between
//! the staged commit and the move, and standard tus clients (tus-js-client, tuspy) never send the
//! last PATCH again: they ask HEAD.
//!
//! Landing: the commit (into the staging folder when the upload is scanned), the scan, the move, the
//! fields, the event, the record saved, the open-upload slot given back.
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};

use super::record::{internal, load_pending, load_record, save, while_locked, Failure, Record, TusWrite};
use crate::access::Caller;
use crate::error::ApiError;
use crate::pipeline::{UploadError, WholeFile};
use crate::routes::outcome::{Source, UploadReport};
use crate::routes::AppState;
use crate::state::Lease;

/// Every byte is in, and the upload has neither landed nor failed for good: a request is landing it
/// (it holds the lock), or none is and HEAD may.
pub(super) fn awaits_landing(record: &Record) -> bool {
    record.resumable.is_complete() && record.file_id.is_none() && record.failed.is_none()
}

/// What the upload's events say of it: where it goes, its path, its method, its metadata.
pub(super) fn describe(report: &UploadReport<'_>, record: &Record) {
    // A staged upload's failure names where it was going, not the staging folder.
    let target = match &record.resumable.gate {
        Some(gate) => gate.reported_target(),
        None => record.resumable.upload.target.clone(),
    };
    report.set_target(&target);
    report.set_path(record.path.clone());
    report.set_method(record.resumable.method());
    if let Ok(metadata) = super::protocol::parse_metadata(&record.metadata) {
        report.set_upload_metadata(metadata);
    }
}

/// Lands a complete upload (`file`: a direct-size upload's whole file, in memory), while the lock of
/// `write` is held. It lands, is moved back to the first part Box lacks (`Rewound`), waits for the
/// scanner (503 `scanner_unavailable`: every byte kept, the record unchanged), or fails for good
/// (the record says so, its session is aborted and its staged file deleted).
pub(super) async fn land(
    write: TusWrite<'_>,
    record: &mut Record,
    file: Option<WholeFile>,
    report: &UploadReport<'_>,
) -> Result<(), ApiError> {
    let (state, caller, lock, id) = (write.state, write.caller, write.lock, write.id);
    let pipeline = state
        .pipeline
        .acting_as(&caller.principal)
        .held_by(caller.holder());
    report.received().set(record.resumable.offset);
    let fields = record.fields.clone();
    // A direct-size upload's bytes (shared, not copied), to be stored if the scanner gives no verdict.
    let kept = file.as_ref().map(WholeFile::pieces);
    // A scanned chunked upload is committed into the staging folder first, and its staged file kept
    // in the record before the scan: its landing taken again (HEAD, the last PATCH sent again)
    // needs no second commit.
    let staged = |r: &Record| {
        r.resumable
            .gate
            .as_ref()
            .is_some_and(|g| g.staged_file_id.is_some())
    };
    let staged_before = staged(record);
    let committed = pipeline.commit_staged(&mut record.resumable).await;
    if committed.is_ok() && !staged_before && staged(record) {
        save(state, lock, id, record, &Bytes::new()).await?;
    }
    let completed = match committed {
        Ok(()) => {
            pipeline
                .complete_with_fields(&mut record.resumable, file, fields)
                .await
        }
        Err(err) => Err(err),
    };
    match completed {
        Ok(outcome) => {
            drop(kept);
            // The event is stored before the record says landed: a crash in between still tells
            // (the file is in Box), where the other order could lose the event.
            report.landed(&outcome).await;
            record.file_id = outcome.file.id().map(str::to_owned);
            record.scan = Some(outcome.scan.clone());
            save(state, lock, id, record, &Bytes::new()).await?;
            // Landed: no longer counted among the owner's open uploads (HEAD still finds it).
            if let Err(err) = state.store.close_upload(&record.owner, id).await {
                tracing::warn!(upload_id = %id, error = %err, "a landed upload stays counted as open until it expires");
            }
            count(state, caller, "completed");
            Ok(())
        }
        // Box lacks parts: the upload was moved back to the first hole, and goes on from there.
        Err(err @ UploadError::Rewound { .. }) => {
            save(state, lock, id, record, &Bytes::new()).await?;
            count(state, caller, "rewound");
            Err(ApiError::logged(err))
        }
        // No verdict (clamd down, busy, past its deadline) is not a verdict on the file: the upload
        // stays complete and undecided (its staged file kept, unseen; nothing in its folder, no
        // event) and lands when HEAD, or the last PATCH sent again, finds the scanner back. A
        // direct-size upload's bytes were in memory only: they are stored now as its unfinished
        // part, within the same bounds (`tus_max_pending_bytes`, per key); when they do not fit
        // the offset goes back to 0 (503 `tus_storage_full` or 429), never a full offset without
        // the bytes behind it.
        Err(err) if err.is_scanner_unavailable() => {
            tracing::warn!(upload_id = %id, error = %err,
                "no scanner verdict: the tus upload is kept whole, to be scanned again");
            if let Some(pieces) = kept {
                save(state, lock, id, record, &joined(&pieces)).await?;
            }
            count(state, caller, "scan_deferred");
            // Logged above at warn: the upload did not fail.
            let err = ApiError::from(err);
            Err(ApiError {
                message: "the malware scanner gave no verdict on the file; every byte is kept and nothing was stored in its folder: ask HEAD after Retry-After, which lands it once the scanner answers".into(),
                ..err
            })
        }
        // Nothing half-done stays in Box: the session is aborted. The record stays, saying so, for
        // HEAD and PATCH on any replica (never a full offset without a file), until DELETE or expiry.
        Err(err) => {
            drop(kept);
            pipeline.abort_resumable(&record.resumable, "error").await;
            let err = caller.box_error(ApiError::logged(err));
            record.failed = Some(Failure {
                code: err.code.to_owned(),
                message: err.message.clone(),
            });
            report.failed(&err).await;
            save(state, lock, id, record, &Bytes::new()).await?;
            // Failed: no longer counted among the owner's open uploads (HEAD still answers it).
            if let Err(err) = state.store.close_upload(&record.owner, id).await {
                tracing::warn!(upload_id = %id, error = %err, "a failed upload stays counted as open until it expires");
            }
            count(state, caller, "failed");
            Err(err)
        }
    }
}

/// HEAD's landing of an upload that no request is landing (`awaits_landing`, its lock free: taken as
/// `lease`). It runs in a task of its own (`actix_web::rt::spawn`), so it is never cut short: HEAD
/// stops waiting for it after its bound, and its client may leave, while it goes on holding the
/// lock until the upload has landed, failed, or met no scanner verdict again.
pub(super) async fn land_stuck(
    state: web::Data<AppState>,
    caller: std::sync::Arc<Caller>,
    req: HttpRequest,
    id: String,
    lease: Lease,
) -> Result<(), ApiError> {
    let state = &**state;
    let result = while_locked(state, &lease, async {
        // Again under the lock: another request may have landed it since.
        let mut record = load_record(state, &id, &caller).await?;
        if !awaits_landing(&record) {
            return Ok(());
        }
        let source = Source::Tus {
            id: id.clone(),
            created_ms: record.created_ms,
        };
        let report = UploadReport::begin(state, &caller, &req, source);
        describe(&report, &record);
        let file = match record.resumable.session {
            Some(_) => None,
            None => Some(stored_whole_file(state, &caller, &id, &mut record).await?),
        };
        let write = TusWrite {
            state,
            caller: &caller,
            lock: lease.lock(),
            id: &id,
        };
        land(write, &mut record, file, &report).await
    })
    .await;
    lease.release().await;
    result
}

/// A direct-size upload's whole file, all of it in the store (kept there when its last PATCH met no
/// scanner verdict), read back within the caller's share of the memory budget as a PATCH reads it.
async fn stored_whole_file(
    state: &AppState,
    caller: &Caller,
    id: &str,
    record: &mut Record,
) -> Result<WholeFile, ApiError> {
    let pipeline = state
        .pipeline
        .acting_as(&caller.principal)
        .held_by(caller.holder());
    let failed = |e: UploadError| caller.box_error(ApiError::logged(e));
    let mut hold = pipeline
        .hold_for(&record.resumable, record.pending_len)
        .await
        .map_err(failed)?;
    let mut pending = load_pending(state, id, record).await?;
    let nothing = futures_util::stream::empty::<Result<Bytes, UploadError>>();
    pipeline
        .append(&mut record.resumable, &mut pending, &mut hold, nothing)
        .await
        .map_err(failed)?
        .ok_or_else(|| {
            internal(format!(
                "upload {id}: complete, but its stored bytes are not the whole file"
            ))
        })
}

fn count(state: &AppState, caller: &Caller, event: &str) {
    state
        .metrics
        .tus_uploads
        .with_label_values(&[event, caller.key_label()])
        .inc();
}

fn joined(pieces: &[Bytes]) -> Bytes {
    match pieces {
        [one] => one.clone(),
        pieces => {
            let mut all = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
            pieces.iter().for_each(|p| all.extend_from_slice(p));
            all.freeze()
        }
    }
}
