//! The one way in. Every new upload, whatever its endpoint (the four plain ones, tus creation), is
//! admitted in this order, and every other upload request (tus PATCH, HEAD, DELETE) goes through its
//! first step:
//!
//! 1. **Authenticate**, once per request (`caller`): the `Caller` is kept in the request's extensions,
//!    so the `Idempotency-Key` middleware and the handler share it.
//! 2. **Cheap local refusals**, which cost nothing: the route (a link's caller on a plain endpoint is
//!    403 `link_not_allowed`, `plain_caller`), the parameters, the folder (or an upload by path's
//!    root, `Caller::path_root`, and its path's syntax, `params::folder_path`), the size limits (the
//!    malware gate's too: `scan_plan`, 413 `too_large_to_scan` when the size is known), the names, the
//!    syntax of the fields that land with the file (`UploadParams::fields`); then, for tus
//!    creation, the owner's open-upload cap and its link's file slot (atomic counts in the store:
//!    taken here, given back if a later gate refuses). **Box reads** come last in this step, once
//!    every local check has passed: a new version's file (`Caller::check_file`, one read), then the
//!    metadata templates' schemas the fields' metadata must fit (`Pipeline::check_fields`, one read
//!    per template not cached; 422 `invalid_metadata`), before any quota is spent or byte read.
//! 3. **The key's quotas** (`max_uploads_per_minute`, then `max_bytes_per_day` when the size is known).
//! 4. **The Box pacer**: the principal's capacity for one upload call, waited for at most
//!    `box_rate_wait_secs` (`Pacer::reserve_upload_call`), and no longer than until a drain begins.
//! 5. **The memory budget**, taken by the pipeline for the bytes of each part as they arrive, in the
//!    caller's share (`pipeline/budget.rs`), after Box has accepted the destination: a 503 `busy`
//!    there aborts the session.
//! 6. The upload is **started** (its Box destination asked for, `start`, an upload by path's folders
//!    resolved and the missing ones made first; or its file bytes began to come, a body of unknown
//!    size being spooled) and tracked (`outcome.rs`): only from here on is a completion event
//!    written. (Folders are made here, not in step 2: they are Box writes, which a refused upload
//!    must not cost.)
//!
//! (Step 5 comes after Box was asked because the budget is taken as bytes are read, and Box picks the
//! part size; the fair budget of issue 24 keeps that place: nothing is taken for a declared size.) A
//! multipart form's head (at most 64 KiB) is read in step 2: its fields are parameters.
//!
//! Nothing that costs (a quota, a pacer admission, a Box call, a store write, an event) happens before
//! every cheap refusal has been made. What steps 2 to 4 took is held by a `Reservation`, a drop guard
//! (garage's habit, like the pipeline's `SessionGuard`): whatever is refused after a take, the
//! reservation gives back what the upload did not use, so no refusal has to undo anything by hand.
//! Given back: the quotas, unless the upload reached Box; the pacer's prepaid upload call, unless it
//! was made; the open-upload and link slots, the sweeper's entry and a Box session opened for nothing,
//! unless the tus upload was created (`keep`). A body of unknown size is spooled after step 4 (the
//! spool is not cheap, and a key past its quota must not make the gateway spool), so its bytes quota
//! comes after the pacer, and a refusal there gives everything back.
//!
//! `settle` gives back at once, awaited, before the answer goes out (a client that retries at once
//! finds its quota there); a reservation dropped unsettled (the client left, a panic, the server's
//! stop at the end of a drain) gives back in the background, on the gateway's runtime, and the
//! process does not exit before that is done (`Lifecycle::hold`). Step 4's wait ends when a drain
//! begins (503 `draining`): an upload that has not started is refused then, as a new one is.
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpMessage, HttpRequest};

use super::outcome::UploadReport;
use super::AppState;
use crate::access::{Caller, LinkSlot, QuotaCost, QuotaTaken};
use crate::box_api::{Admission, PaceKey};
use crate::error::ApiError;
use crate::pipeline::{
    CheckedFields, FileFields, Pipeline, Prepared, ResolvedFolder, Resumable, ScanPlan, Unscanned,
    UploadError, UploadRequest,
};
use crate::routes::params::PathUpload;

/// The request's caller: authenticated on the first call (with pass-through, its token checked with
/// Box), then the same one for the rest of the request.
pub async fn caller(req: &HttpRequest, state: &AppState) -> Result<Arc<Caller>, ApiError> {
    let known = req.extensions().get::<Arc<Caller>>().cloned();
    if let Some(caller) = known {
        return Ok(caller);
    }
    let caller = Arc::new(state.access.authenticate_checked(req.headers()).await?);
    req.extensions_mut().insert(caller.clone());
    Ok(caller)
}

/// The caller of a plain upload endpoint: a link's caller is refused here (403 `link_not_allowed`),
/// before anything is read, counted or claimed.
pub async fn plain_caller(req: &HttpRequest, state: &AppState) -> Result<Arc<Caller>, ApiError> {
    let caller = caller(req, state).await?;
    caller.check_plain_upload()?;
    Ok(caller)
}

/// Step 2's malware-gate check, for an upload of `size` bytes (None: not known before its body; then
/// again once it is): its scan's plan, or 413 `too_large_to_scan` past `scan_max_bytes` (unless
/// `scan_oversize = "allow_unscanned"`), before any byte is read. `gateway_scans_total{verdict=
/// "too_large"}` counts the files not scanned for their size, refused or let through.
pub fn scan_plan(state: &AppState, caller: &Caller, size: Option<u64>) -> Result<ScanPlan, ApiError> {
    let Some(gate) = state.pipeline.scan_gate() else {
        return Ok(ScanPlan::Skip(Unscanned::Off));
    };
    let plan = gate.plan(caller.scan_exempt(), size);
    if matches!(plan, Err(_) | Ok(ScanPlan::Skip(Unscanned::TooLarge { .. }))) {
        state.metrics.scans.with_label_values(&["too_large"]).inc();
    }
    plan.map_err(|verdict| ApiError::from(UploadError::Scan(verdict)))
}

/// The last of step 2's Box reads: the fields' metadata checked against its templates' schemas, as
/// the caller's principal sees them (422 `invalid_metadata` naming the field; no Box call when there
/// is no metadata, or its schemas are cached).
pub async fn check_fields(
    state: &AppState,
    caller: &Caller,
    fields: FileFields,
) -> Result<CheckedFields, ApiError> {
    state
        .pipeline
        .acting_as(&caller.principal)
        .check_fields(fields)
        .await
        .map_err(|e| caller.box_error(ApiError::logged(e)))
}

/// What a new upload costs beyond its quota of uploads, known before its body is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost<'a> {
    /// The file's size, when it is known before the body (declared, or a body's length).
    pub size: Option<u64>,
    /// A tus creation: the upload's id and expiry (Unix seconds), counted among its owner's open
    /// uploads (`tus_max_open_uploads_per_key`) and its link's files.
    pub tus: Option<(&'a str, u64)>,
}

/// Steps 2 (its counted part) to 4 for a new upload whose cheap checks have passed: the open-upload
/// cap and link slot (tus), the key's quotas, then Box capacity. A refusal gives back what the steps
/// before it took.
pub async fn admit(
    state: &web::Data<AppState>,
    caller: &Caller,
    cost: Cost<'_>,
) -> Result<Reservation, ApiError> {
    let mut reservation = Reservation::new(state.clone());
    match reservation.take(state, caller, cost).await {
        Ok(()) => Ok(reservation),
        Err(err) => {
            reservation.settle().await;
            Err(err)
        }
    }
}

/// An upload Box accepted the destination of (`start`).
pub struct Started {
    /// The pipeline acting as the caller, for the upload's bytes.
    pub pipeline: Pipeline,
    pub prepared: Prepared,
    /// An upload by path: the folder its path led to, and the folders made on the way.
    pub folder: Option<ResolvedFolder>,
}

/// Step 6: the admitted upload is started. Box is asked for its destination (a session, or a direct
/// upload's preflight) by the pipeline acting as the caller, its first upload call paid for by the
/// admission; from here on its quotas are spent and its end writes an event. An upload by path has
/// its path resolved first (missing folders made: Box calls that come after the quotas and the
/// pacer, so a refused upload makes no folder; a file in the way is 409 `path_conflict`). `scan`: its
/// malware scan (`scan_plan`). A tus upload (`tus_id`) that is scanned and chunked goes into the
/// staging folder instead (`Pipeline::prepare_resumable`): its path's folders are made only once it
/// is clean.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    state: &AppState,
    caller: &Caller,
    reservation: &mut Reservation,
    report: &UploadReport<'_>,
    request: UploadRequest,
    by_path: Option<&PathUpload>,
    scan: ScanPlan,
    tus_id: Option<&str>,
) -> Result<Started, ApiError> {
    let pipeline = state
        .pipeline
        .acting_as(&caller.principal)
        .held_by(caller.holder())
        .admitted(reservation.box_admission());
    reservation.reached_box();
    report.started();
    let at_path = by_path.map(|at| (at.root.as_str(), &at.folder, at.create_folders));
    let prepared = match (tus_id, at_path) {
        (Some(id), at_path) => pipeline.prepare_resumable(request, at_path, scan, id).await,
        (None, None) => pipeline.prepare(request).await.map(|p| (p.with_scan(scan), None)),
        (None, Some((root, folder, create))) => pipeline
            .prepare_at_path(root, folder, create, request)
            .await
            .map(|(p, folder)| (p.with_scan(scan), Some(folder))),
    };
    let (prepared, folder) = prepared.map_err(|e| caller.box_error(ApiError::logged(e)))?;
    if let Some(folder) = &folder {
        report.set_folder(&folder.folder_id);
    }
    report.set_method(prepared.method());
    Ok(Started {
        pipeline,
        prepared,
        folder,
    })
}

/// What an admission took, given back unless the upload used it (see the module's doc).
pub struct Reservation {
    state: web::Data<AppState>,
    held: Held,
    /// The upload reached Box (its destination was asked for): its quotas are spent.
    reached_box: bool,
    /// The tus upload exists (its record is saved): its slots and its session are its own now.
    kept: bool,
}

/// What a reservation holds until it is settled.
#[derive(Default)]
struct Held {
    quotas: Vec<QuotaTaken>,
    box_admission: Option<(PaceKey, Admission)>,
    /// (owner, upload id) counted among the owner's open uploads.
    open_upload: Option<(String, String)>,
    link_slot: Option<LinkSlot>,
    /// A tus upload's id in the sweeper's schedule.
    scheduled: Option<String>,
    /// A tus upload's Box session, opened for a record that was never saved.
    session: Option<(Pipeline, Resumable)>,
}

impl Reservation {
    fn new(state: web::Data<AppState>) -> Self {
        Self {
            state,
            held: Held::default(),
            reached_box: false,
            kept: false,
        }
    }

    async fn take(&mut self, state: &AppState, caller: &Caller, cost: Cost<'_>) -> Result<(), ApiError> {
        if let Some((id, expires_at)) = cost.tus {
            // Counted before Box is asked for a session, so a caller at its cap costs Box nothing.
            let owner = caller.owner().to_string();
            let max_open = state.tus.max_open_uploads_per_key;
            if !state
                .store
                .open_upload(&owner, id, expires_at, crate::state::now_secs(), max_open)
                .await?
            {
                state
                    .metrics
                    .tus_refused
                    .with_label_values(&["too_many_open_uploads"])
                    .inc();
                return Err(ApiError::new(
                    actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                    "too_many_open_uploads",
                    format!("this caller has {max_open} resumable uploads open (tus_max_open_uploads_per_key): finish or DELETE one first"),
                ));
            }
            self.held.open_upload = Some((owner, id.to_owned()));
            self.held.link_slot = state.access.take_link_slot(caller, id).await?;
        }
        self.held
            .quotas
            .extend(state.access.take_quota(caller, QuotaCost::Upload).await?);
        if let Some(size) = cost.size {
            self.take_bytes(caller, size).await?;
        }
        let pace_key = caller.principal.pace_key();
        let waiting = std::time::Instant::now();
        // Not past the drain's start: an upload still waiting here has not started, so it is refused
        // as a new one is (another replica takes it at once) and `admit` gives back what it took.
        // Its wait (up to `box_rate_wait_secs`) would otherwise outlast the grace, and the server's
        // stop drop it unanswered.
        let drain_begun = state.lifecycle.drain_begun();
        let reserved = tokio::select! {
            biased;
            () = drain_begun.cancelled() => return Err(ApiError::draining(
                "the gateway began shutting down while this upload waited for Box capacity; nothing was sent to Box: send it again (another replica takes it)",
            )),
            reserved = state.pacer.reserve_upload_call(&pace_key, caller.key_label()) => reserved,
        };
        let admission = reserved.map_err(|no| {
            tracing::warn!(key = %caller.key_label(), waited = ?no.waited, "no Box capacity within box_rate_wait_secs: upload refused for now");
            ApiError::box_rate_limited(no.waited, no.retry_after)
        })?;
        // On the request's span, so its log lines say where a paced upload's time went: past the
        // pacer's burst, a client sending small files back to back waits 60 s /
        // `box_rate_uploads_per_minute` here (272 ms at the default 220), with its request already
        // in the socket and no Box call made yet; a packet capture of that shows an idle wire and
        // invites a hunt for a Nagle or delayed-ACK stall that is not there (docs/benchmark.md,
        // "Small files").
        tracing::Span::current().record("box_rate_wait_ms", waiting.elapsed().as_millis() as u64);
        self.held.box_admission = Some((pace_key, admission));
        Ok(())
    }

    /// The bytes quota of an upload whose size became known after its admission (a body of unknown
    /// size, once spooled).
    pub async fn take_bytes(&mut self, caller: &Caller, size: u64) -> Result<(), ApiError> {
        let taken = self
            .state
            .access
            .take_quota(caller, QuotaCost::Bytes(size))
            .await?;
        self.held.quotas.extend(taken);
        Ok(())
    }

    /// The pacer's admission, to hand to the pipeline with the upload (its first upload call is
    /// paid for).
    fn box_admission(&self) -> Option<Admission> {
        self.held.box_admission.as_ref().map(|(_, a)| a.clone())
    }

    /// The upload's destination is about to be asked of Box: its quotas are spent from here on.
    fn reached_box(&mut self) {
        self.reached_box = true;
    }

    /// A tus upload's Box session, aborted unless the upload is kept.
    pub fn hold_session(&mut self, pipeline: Pipeline, resumable: Resumable) {
        self.held.session = Some((pipeline, resumable));
    }

    /// A tus upload's entry in the sweeper's schedule, removed unless the upload is kept.
    pub fn hold_schedule(&mut self, id: &str) {
        self.held.scheduled = Some(id.to_owned());
    }

    /// The tus upload exists: its open-upload count, link slot, schedule and session are its own.
    pub fn keep(&mut self) {
        self.reached_box = true;
        self.kept = true;
    }

    /// Gives back, now, what the upload did not use.
    pub async fn settle(mut self) {
        let held = self.unused();
        give_back(&self.state, held).await;
    }

    /// What is to be given back (taken out, so it is given back once).
    fn unused(&mut self) -> Held {
        let mut held = std::mem::take(&mut self.held);
        if self.reached_box {
            held.quotas.clear();
        }
        if self.kept {
            held.open_upload = None;
            held.link_slot = None;
            held.scheduled = None;
            held.session = None;
        }
        held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let held = self.unused();
        let empty = held.quotas.is_empty()
            && held.box_admission.is_none()
            && held.open_upload.is_none()
            && held.link_slot.is_none()
            && held.scheduled.is_none()
            && held.session.is_none();
        if !empty {
            let state = self.state.clone();
            // On the gateway's runtime, and held by its lifecycle: a request the server's stop drops
            // is dropped on its actix worker, whose runtime ends with it (a task spawned there never
            // runs, and the owner's open-upload slot stayed taken until its set expired).
            let hold = state.lifecycle.hold();
            let runtime = state.pipeline.runtime().clone();
            runtime.spawn(async move {
                give_back(&state, held).await;
                drop(hold);
            });
        }
    }
}

async fn give_back(state: &AppState, held: Held) {
    let count = |what: &str| {
        state
            .metrics
            .admission_given_back
            .with_label_values(&[what])
            .inc()
    };
    if let Some((pipeline, resumable)) = held.session {
        pipeline.abort_resumable(&resumable, "error").await;
    }
    if let Some(id) = held.scheduled {
        if let Err(err) = state.store.unschedule(&id).await {
            tracing::warn!(upload_id = %id, error = %err, "could not unschedule an upload never created; the sweeper finds nothing");
        }
    }
    if let Some((owner, id)) = held.open_upload {
        match state.store.close_upload(&owner, &id).await {
            Ok(()) => count("open_upload"),
            Err(err) => {
                tracing::warn!(upload_id = %id, error = %err, "could not close an upload never created; asking the store again in the background");
                close_later(state, owner, id);
            }
        }
    }
    if let Some(slot) = held.link_slot {
        state.access.give_back_link_slot(slot).await;
        count("link_slot");
    }
    for taken in held.quotas {
        let what = taken.quota;
        state.access.give_back_quota(taken).await;
        count(what);
    }
    if let Some((key, admission)) = held.box_admission {
        if state.pacer.give_back(&key, &admission).await {
            count("box_admission");
        }
    }
}

/// The waits between the background attempts to close an open-upload slot the store refused to
/// close (Redis restarting, or failing over): about 8 s in all, then the slot lapses at the
/// upload's expiry (`max_open_uploads_per_key` counts it until then).
const CLOSE_RETRIES: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Closes `owner`'s slot for `id` in the background, on the gateway's runtime and held by its
/// lifecycle (the process does not exit first): the refusal's answer does not wait for a store that
/// is down, and its caller does not keep a slot for an upload that never existed.
fn close_later(state: &AppState, owner: String, id: String) {
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    let hold = state.lifecycle.hold();
    state.pipeline.runtime().spawn(async move {
        for wait in CLOSE_RETRIES {
            tokio::time::sleep(wait).await;
            match store.close_upload(&owner, &id).await {
                Ok(()) => {
                    metrics
                        .admission_given_back
                        .with_label_values(&["open_upload"])
                        .inc();
                    tracing::info!(upload_id = %id, "closed the open-upload slot of an upload never created");
                    drop(hold);
                    return;
                }
                Err(err) => tracing::debug!(upload_id = %id, error = %err, "the store still refuses to close an open-upload slot"),
            }
        }
        tracing::warn!(upload_id = %id, "an upload never created stays counted as open until its expiry");
        drop(hold);
    });
}
