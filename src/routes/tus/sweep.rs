//! The expiry sweeper, a background task: aborts the Box sessions of uploads past their expiry and
//! forgets them, every `interval`, for as long as the gateway runs. With several replicas each
//! sweeps; the upload's lock keeps them apart.
//!
//! A round works through every upload due, a page at a time, until none is left: an upload being
//! written (locked, by a request or another replica's sweeper) or that could not be expired stays
//! due, and later pages look past it. A round ends after `MAX_PER_ROUND` uploads, so a replica with
//! a backlog still measures the pending bytes and never spins; the next round goes on.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::record::{decode, forget, salvage, try_lock};
use crate::access::Owner;
use crate::error::ApiError;
use crate::routes::outcome::count_tus_end;
use crate::routes::AppState;
use crate::state::now_secs;

/// Uploads asked for at once.
const PAGE: usize = 100;
/// Uploads looked at in one round, at most: with 60 s rounds, 600,000 an hour per replica.
const MAX_PER_ROUND: usize = 10_000;

pub async fn sweep(state: Arc<AppState>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Ok(bytes) = state.store.pending_bytes().await {
            state.metrics.tus_pending_bytes.set(bytes as i64);
        }
        sweep_round(&state).await;
    }
}

/// Expires every upload due now (up to `MAX_PER_ROUND`): how many were looked at.
async fn sweep_round(state: &AppState) -> usize {
    let now = now_secs();
    // Ids left due by this round (locked, or failed to expire): the next page looks past them.
    let mut passed: HashSet<String> = HashSet::new();
    let mut looked_at = 0;
    while looked_at < MAX_PER_ROUND {
        let due = match state.store.due(now, passed.len() + PAGE).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "tus sweeper: the state store failed");
                break;
            }
        };
        let page: Vec<String> = due.into_iter().filter(|id| !passed.contains(id)).collect();
        if page.is_empty() {
            break;
        }
        for id in page {
            looked_at += 1;
            match expire(state, &id).await {
                Ok(true) => {}
                Ok(false) => {
                    passed.insert(id);
                }
                Err(err) => {
                    tracing::warn!(upload_id = %id, code = err.code, "tus sweeper could not expire an upload");
                    passed.insert(id);
                }
            }
        }
    }
    if looked_at >= MAX_PER_ROUND {
        tracing::warn!(
            looked_at,
            "tus sweeper: more uploads due than one round takes; the next round goes on"
        );
    }
    looked_at
}

/// Expires the upload `id`: false when it is being written now (locked; a later round takes it).
async fn expire(state: &AppState, id: &str) -> Result<bool, ApiError> {
    let Some(lease) = try_lock(state, id).await? else {
        return Ok(false);
    };
    let result = async {
        let mut owner = None;
        if let Some(bytes) = state.store.get(&crate::state::keys::tus_record(id)).await? {
            // A record that cannot be read is removed all the same (it would otherwise come back
            // at every sweep, and stand before the others); its session is aborted if it can be
            // found in what is left of it.
            let (record_owner, caller, upload, landed) = match decode(bytes.clone()) {
                Ok((record, _)) => {
                    // Landed, or failed for good (its session was aborted then): nothing to abort.
                    let landed = record.file_id.is_some() || record.failed.is_some();
                    (Some(record.owner), record.caller, Some(record.resumable), landed)
                }
                Err(_) => {
                    let (owner, upload) = salvage(&bytes);
                    tracing::error!(upload_id = %id, session_found = upload.is_some(),
                        "a stored tus upload cannot be read: removed");
                    (owner, String::new(), upload, false)
                }
            };
            if !landed {
                let principal = record_owner
                    .as_deref()
                    .and_then(|o| state.access.principal_of_owner(&Owner::parse(o)));
                match (&upload, principal) {
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
                if let Some(upload) = &upload {
                    let key_label = if caller.is_empty() { "unknown" } else { &caller };
                    count_tus_end(state, upload, "expired", key_label);
                }
                tracing::info!(upload_id = %id, "tus upload expired");
            }
            owner = record_owner;
        }
        forget(state, lease.lock(), id, owner.as_deref()).await
    }
    .await;
    lease.release().await;
    result.map(|()| true)
}
