//! The framework-free core: takes a typed upload request and a byte stream, and lands the file in
//! Box whole (direct upload, or a chunked session re-chunked into exact parts) or not at all.
//!
//! Nothing here imports actix: the body is any `Stream<Item = Result<Bytes, E>>`, polled in the
//! caller's task (actix's payload is `!Send`); Box calls run on the process's multi-threaded runtime
//! (`rt`), so part uploads use the other cores while the caller's thread reads the body and computes
//! both digests (each part's and the whole file's) in one pass (`hash.rs`).
mod budget;
mod chunker;
mod fields;
mod guard;
mod hash;
mod names;
mod paths;
mod resumable;
mod scanned;
mod spool;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use sha1::{Digest, Sha1};
use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use budget::{BudgetError, BudgetPermit, Hold, Holder, MemoryBudget, OverBudget};
pub use chunker::{Part, Rechunker};
pub use fields::{
    check_values, AppliedFields, CheckedFields, FieldError, FileFields, MetadataValues, RawFields,
    SharedLink, SharedLinkAccess, MAX_DESCRIPTION_CHARS, MAX_TAGS, MAX_TEMPLATES,
};
pub use guard::SessionGuard;
pub use hash::{ResumableSha1, TwinSha1};
pub use names::numbered_name;
pub use paths::{CreatedFolder, FolderPath, PathError, PathSettings, ResolvedFolder};
pub use resumable::Resumable;
use scanned::scan_all;
pub use scanned::{
    Destination, Gate, ScanGate, ScanOversize, ScanPlan, Staging, Unscanned, STAGING_FOLDER_NAME,
};
pub use spool::{spool, SpoolSpace, Spooled};

use crate::box_api::{
    BoxClient, BoxError, CommitAnswer, FileObject, FileUpdate, NewUpload, Principal, SharedLinkUpdate,
    Target, UploadPart, UploadSession,
};
use crate::metrics::GatewayMetrics;

/// What to do when the name is taken in the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    #[default]
    Error,
    Version,
    Rename,
}

#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub upload: NewUpload,
    pub on_conflict: OnConflict,
    /// SHA-1 the client says the file has; the upload fails (and nothing lands) if it differs.
    pub expected_sha1: Option<[u8; 20]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadMethod {
    Direct,
    Chunked,
}

impl UploadMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Chunked => "chunked",
        }
    }
}

#[derive(Debug)]
pub struct UploadOutcome {
    pub file: FileObject,
    pub method: UploadMethod,
    pub size: u64,
    pub sha1_hex: String,
    pub part_size: Option<u64>,
    pub parts: Option<u64>,
    pub session_id: Option<String>,
    /// The fields applied after the commit (`Prepared::with_fields`), as Box answered them; they are
    /// in `file` too, where Box keeps them (`description`, `tags`, `shared_link`, `metadata`).
    pub fields: Option<AppliedFields>,
    /// Whether it was scanned for malware, and by what (`scanned.rs`).
    pub scan: crate::scan::ScanReport,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Box(#[from] BoxError),
    #[error("a file named like this already exists (id {existing_id})")]
    Conflict { existing_id: String, kind: String },
    #[error("no free name found for {0:?}")]
    NoFreeName(String),
    #[error("the body held {received} bytes but the upload was declared as {declared} bytes")]
    SizeMismatch {
        declared: u64,
        received: u64,
        derived: bool,
    },
    #[error("the file's SHA-1 is {actual}, the client said {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("the client stopped sending the body")]
    ClientTimeout,
    /// The caller's access (an upload link) expired while the body was being read.
    #[error("the caller's access expired (at {at_unix_secs}) while the body was being read")]
    AccessExpired { at_unix_secs: u64 },
    /// The body came slower than `client_min_bytes_per_sec` over `client_rate_window_secs` of waiting.
    #[error("the client sent {received} bytes in {window:?} of waiting, below {min_bytes_per_sec} bytes/s")]
    ClientTooSlow {
        received: u64,
        window: Duration,
        min_bytes_per_sec: u64,
    },
    /// The memory budget had no room within `budget_wait_secs`.
    #[error("no room in the memory budget within {0:?}")]
    Busy(Duration),
    /// The spool of all uploads together is at `spool_max_total_bytes`.
    #[error("the spool is full ({total} bytes for all uploads)")]
    SpoolFull { total: u64 },
    #[error("the gateway shut down before the upload finished")]
    ShuttingDown,
    #[error("the file is larger than {what} ({limit} bytes)")]
    TooLarge { limit: u64, what: &'static str },
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error("Box did not finish the commit within {0:?}")]
    CommitTimedOut(Duration),
    #[error("Box answered a file that differs from what was sent: {detail}")]
    Integrity {
        detail: String,
        /// The file Box made of the upload.
        file_id: String,
        /// `file` (the upload created it) or `version` (it added a version).
        what: &'static str,
        /// Whether the gateway deleted that file or version.
        removed: bool,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// A resumable upload's commit found parts missing in Box: the upload was moved back to the
    /// first byte Box lacks, and the client sends from there.
    #[error("Box lacks the bytes from {offset} on; the upload was moved back there")]
    Rewound { offset: u64 },
    /// A field that cannot land as sent, found before any byte (`FileFields::parse`,
    /// `Pipeline::check_fields`).
    #[error(transparent)]
    Fields(#[from] FieldError),
    /// A folder path that cannot be resolved (`Pipeline::resolve_folder`).
    #[error(transparent)]
    Path(#[from] PathError),
    /// The malware gate kept the file out: clamd found something (`Infected`), could not give a
    /// verdict (`Error`), or the file is larger than it scans (`TooLarge`). Nothing of it is in Box.
    #[error("the scan did not find the file clean: {0:?}")]
    Scan(crate::scan::Verdict),
    /// The file landed but its fields could not be applied (after the retries): the file the upload
    /// created, or the version it added, was removed (`removed`), so nothing of the upload stays.
    #[error("the fields could not be applied to the file: {detail}")]
    FieldsNotApplied {
        detail: String,
        file_id: String,
        /// `file` or `version`.
        what: &'static str,
        removed: bool,
    },
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub part_concurrency: usize,
    /// Files at least this big go through a chunked session; smaller ones through a direct upload.
    pub chunked_threshold_bytes: u64,
    /// How long a commit may keep answering 202 or a transient `parts_mismatch`.
    pub commit_timeout: Duration,
    /// How long a commit's `parts_mismatch` is taken for Box still digesting the last parts (seen
    /// for a second or two after them); past it, a part is missing and the commit fails with that
    /// answer.
    pub parts_mismatch_window: Duration,
    pub max_file_size_bytes: Option<u64>,
}

/// One per process: the Box client, the memory budget and the settings, shared by every upload.
#[derive(Clone)]
pub struct Pipeline {
    client: BoxClient,
    budget: MemoryBudget,
    /// Whose uploads these are, for the budget's shares (`held_by`).
    holder: Holder,
    settings: Arc<PipelineSettings>,
    /// Upload by path: resolved folders and one resolution per path at a time (this process).
    paths: Arc<paths::PathResolver>,
    /// Metadata templates' schemas, to check an upload's metadata before its bytes.
    schemas: Arc<fields::SchemaCache>,
    metrics: Arc<GatewayMetrics>,
    rt: Handle,
    /// Fires when the drain's grace period is over: uploads stop before their commit (`lifecycle.rs`).
    stop: CancellationToken,
    /// The malware gate; None: nothing is scanned (`clamd_address` unset).
    scan_gate: Option<Arc<ScanGate>>,
}

/// An upload whose destination Box has accepted (conflicts resolved), waiting for its bytes.
pub struct Prepared {
    upload: NewUpload,
    expected_sha1: Option<[u8; 20]>,
    route: Route,
    /// Applied after the commit; the upload fails (and leaves nothing) if they cannot be.
    fields: Option<CheckedFields>,
    /// What is done about its malware scan (`with_scan`): not scanned unless told.
    scan: ScanPlan,
    /// A chunked resumable upload committed into the staging folder to be scanned: where it lands.
    gate: Option<Gate>,
}

enum Route {
    Direct,
    Chunked(Box<SessionGuard>),
}

impl Prepared {
    pub fn method(&self) -> UploadMethod {
        match self.route {
            Route::Direct => UploadMethod::Direct,
            Route::Chunked(_) => UploadMethod::Chunked,
        }
    }

    /// The fields to apply once the file is committed (no Box call is added when they are empty).
    pub fn with_fields(self, fields: CheckedFields) -> Self {
        Self {
            fields: (!fields.is_empty()).then_some(fields),
            ..self
        }
    }

    /// The upload's malware scan, as its admission decided (`ScanGate::plan`).
    pub fn with_scan(self, scan: ScanPlan) -> Self {
        Self { scan, ..self }
    }
}

impl Pipeline {
    pub fn new(
        client: BoxClient,
        budget: MemoryBudget,
        settings: PipelineSettings,
        metrics: Arc<GatewayMetrics>,
        rt: Handle,
        stop: CancellationToken,
    ) -> Self {
        if TwinSha1::new().is_fused() {
            tracing::info!("SHA-1: the CPU has SHA-NI; both digests of a chunked upload in one fused pass");
        } else if cfg!(target_arch = "x86_64") {
            tracing::warn!(
                "SHA-1: no SHA-NI on this CPU; digests computed in portable code, about 2.3 times slower"
            );
        } else {
            // The sha1 crate uses the CPU's own SHA-1 instructions where it finds them (ARMv8).
            tracing::info!("SHA-1: each digest of a chunked upload in its own pass (fused on x86_64 only)");
        }
        let path_settings = PathSettings::default();
        Self {
            client,
            budget,
            holder: Holder::gateway(),
            settings: Arc::new(settings),
            paths: Arc::new(paths::PathResolver::new(&path_settings)),
            schemas: Arc::new(fields::SchemaCache::new(
                path_settings.schema_cache_ttl,
                path_settings.schema_cache_max_entries,
            )),
            metrics,
            rt,
            stop,
            scan_gate: None,
        }
    }

    /// The same pipeline with the malware gate: uploads whose plan says so are scanned.
    pub fn with_scan_gate(self, gate: ScanGate) -> Self {
        Self {
            scan_gate: Some(Arc::new(gate)),
            ..self
        }
    }

    /// The malware gate, when `clamd_address` is set.
    pub fn scan_gate(&self) -> Option<&ScanGate> {
        self.scan_gate.as_deref()
    }

    /// The same pipeline with other cache settings for uploads by path and metadata schemas (its
    /// caches start empty).
    pub fn with_path_settings(self, settings: &PathSettings) -> Self {
        Self {
            paths: Arc::new(paths::PathResolver::new(settings)),
            schemas: Arc::new(fields::SchemaCache::new(
                settings.schema_cache_ttl,
                settings.schema_cache_max_entries,
            )),
            ..self
        }
    }

    /// The same pipeline with Box calls made as `principal` (an API key's, or a caller's own token).
    pub fn acting_as(&self, principal: &Principal) -> Self {
        Self {
            client: self.client.acting_as(principal),
            ..self.clone()
        }
    }

    /// The same pipeline, its uploads' bytes held by `holder` (the caller's owner) in the memory
    /// budget's shares.
    pub fn held_by(self, holder: Holder) -> Self {
        Self { holder, ..self }
    }

    /// What one upload of this pipeline's holder holds of the memory budget while it reads.
    pub fn hold(&self) -> Hold {
        self.budget.hold(&self.holder)
    }

    /// The same pipeline for an upload the pacer admitted (`Pacer::reserve_upload_call`): its first upload call is
    /// paid for. None: the calls take their own places (the upload waits as long as it takes).
    pub fn admitted(self, admission: Option<crate::box_api::Admission>) -> Self {
        match admission {
            Some(a) => Self {
                client: self.client.admitted(a),
                ..self
            },
            None => self,
        }
    }

    /// The folder that holds a file (to check a caller may add a version to it).
    pub async fn parent_folder(&self, file_id: &str) -> Result<String, UploadError> {
        let client = self.client.clone();
        let file_id = file_id.to_owned();
        Ok(self
            .on_rt(async move { client.parent_folder(&file_id).await })
            .await??)
    }

    /// 413 past the gateway's own `max_file_size_bytes`: checked again by `prepare`, and by the
    /// routes before an upload is admitted (a refusal that costs nothing).
    pub fn check_size(&self, size: u64) -> Result<(), UploadError> {
        match self.settings.max_file_size_bytes.filter(|l| size > *l) {
            Some(limit) => Err(UploadError::TooLarge {
                limit,
                what: "max_file_size_bytes",
            }),
            None => Ok(()),
        }
    }

    /// Asks Box for the destination before any byte is read: a chunked session (whose creation runs
    /// Box's name, permission and quota checks) or a direct-upload preflight. Name conflicts are
    /// resolved here, by `on_conflict`.
    pub async fn prepare(&self, request: UploadRequest) -> Result<Prepared, UploadError> {
        let UploadRequest {
            mut upload,
            on_conflict,
            expected_sha1,
        } = request;
        self.check_size(upload.size)?;
        let original = upload.target.clone();
        let mut chunked = upload.size >= self.settings.chunked_threshold_bytes;
        let mut renames = 0;
        loop {
            let answer = if chunked {
                let client = self.client.clone();
                let u = upload.clone();
                let (rt, metrics) = (self.rt.clone(), self.metrics.clone());
                // The guard is made in the task, as soon as Box has answered: if this request is
                // dropped meanwhile (the client went away), the task still ends and drops its output,
                // and the dropped guard aborts the session Box created for nobody.
                self.on_rt(async move {
                    let session = client.create_session(&u).await?;
                    Ok(Box::new(SessionGuard::new(client, session, rt, metrics)))
                })
                .await?
                .map(Some)
            } else {
                let client = self.client.clone();
                let u = upload.clone();
                self.on_rt(async move { client.preflight(&u).await })
                    .await?
                    .map(|()| None)
            };
            let err: BoxError = match answer {
                Ok(Some(guard)) => {
                    return Ok(Prepared {
                        upload,
                        expected_sha1,
                        route: Route::Chunked(guard),
                        fields: None,
                        scan: ScanPlan::default(),
                        gate: None,
                    });
                }
                Ok(None) => {
                    return Ok(Prepared {
                        upload,
                        expected_sha1,
                        route: Route::Direct,
                        fields: None,
                        scan: ScanPlan::default(),
                        gate: None,
                    })
                }
                Err(err) => err,
            };
            // Box's minimum for chunked uploads is its own (20,000,000 bytes today): when it refuses
            // a session for being too small, the direct upload is the way.
            if chunked && err.code() == Some("file_size_too_small") {
                tracing::warn!(
                    size = upload.size,
                    "Box refused a session as too small; using a direct upload"
                );
                chunked = false;
                continue;
            }
            let Some(conflict) = err.name_conflict() else {
                return Err(err.into());
            };
            match (on_conflict, &original) {
                (OnConflict::Version, Target::NewFile { .. })
                    if conflict.kind == "file" && matches!(upload.target, Target::NewFile { .. }) =>
                {
                    upload.target = Target::NewVersion {
                        file_id: conflict.id,
                        name: None,
                    };
                }
                (OnConflict::Rename, Target::NewFile { folder_id, name }) if renames < MAX_RENAMES => {
                    renames += 1;
                    upload.target = Target::NewFile {
                        folder_id: folder_id.clone(),
                        name: numbered_name(name, renames),
                    };
                }
                (OnConflict::Rename, Target::NewFile { name, .. }) => {
                    return Err(UploadError::NoFreeName(name.clone()))
                }
                _ => {
                    return Err(UploadError::Conflict {
                        existing_id: conflict.id,
                        kind: conflict.kind,
                    })
                }
            }
        }
    }

    /// Streams the body into Box. The body must hold exactly `upload.size` bytes; otherwise the
    /// session is aborted and nothing lands. With a scan (`with_scan`), the bytes go to clamd as they
    /// go to Box, and the commit waits for clamd's verdict: only a clean one commits.
    pub async fn send<S, E>(&self, prepared: Prepared, body: S) -> Result<UploadOutcome, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<UploadError>,
    {
        let Prepared {
            upload,
            expected_sha1,
            route,
            fields,
            scan: mut plan,
            gate: _,
        } = prepared;
        let mut body = Rechunker::new(body);
        match route {
            Route::Direct => {
                self.send_direct(&upload, expected_sha1, &mut body, fields, plan)
                    .await
            }
            Route::Chunked(guard) => {
                let scan = match self.start_scan(&mut plan, upload.size) {
                    Ok(scan) => scan,
                    Err(err) => {
                        guard.abort("scan").await;
                        return Err(err);
                    }
                };
                let mut parts = JoinSet::new();
                let session = guard.session().clone();
                let mut digests = TwinSha1::new();
                let mut done = Vec::with_capacity(session.total_parts as usize);
                // Until every part is in Box (and clamd's verdict is in), a drain's stop ends the
                // upload (its session is then aborted); once the commit is under way it is let
                // finish, since Box may be creating the file.
                let sent = self
                    .until_stopped(self.send_parts(
                        &upload,
                        &session,
                        &mut body,
                        &mut parts,
                        &mut digests,
                        &mut done,
                        scan,
                    ))
                    .await;
                let report = match sent.and_then(|verdict| self.scan_report(plan, verdict)) {
                    Ok(report) => report,
                    Err(err) => {
                        parts.shutdown().await;
                        let reason = match err {
                            UploadError::ShuttingDown => "shutdown",
                            UploadError::Scan(_) => "scan",
                            _ => "error",
                        };
                        guard.abort(reason).await;
                        return Err(err);
                    }
                };
                // The guard goes with the commit into its task: see `finish_chunked`.
                self.finish_chunked(
                    &upload,
                    expected_sha1,
                    &session,
                    Some(*guard),
                    digests.finalize(),
                    done,
                    fields,
                    report,
                )
                .await
                .map(|(outcome, _)| outcome)
            }
        }
    }

    async fn send_direct<S, E>(
        &self,
        upload: &NewUpload,
        expected_sha1: Option<[u8; 20]>,
        body: &mut Rechunker<S>,
        fields: Option<CheckedFields>,
        plan: ScanPlan,
    ) -> Result<UploadOutcome, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<UploadError>,
    {
        // The whole file is held so its SHA-1 can go in the request's header (and be re-sent on a
        // retry); it is small (below the chunked threshold, at most 50 MB), and its bytes are taken
        // from the budget as they arrive (within the caller's share: `reserve_unit`).
        let mut hasher = Sha1::new();
        let mut hold = self.hold();
        let part = self
            .until_stopped(async {
                hold.reserve_unit(upload.size).await?;
                let part = read_exact(body, upload.size, |c| hasher.update(c), &mut hold).await?;
                expect_end(body, upload.size).await?;
                Ok(part)
            })
            .await?;
        let file = WholeFile {
            part,
            permit: hold.take(),
        };
        self.upload_direct(
            upload,
            expected_sha1,
            file,
            hasher.finalize().into(),
            fields,
            plan,
        )
        .await
    }

    /// Sends a direct upload's whole file, held in memory, checks what Box made of it, then applies
    /// its fields (if any). With a scan (`plan`), the bytes go to clamd first: a direct upload lands
    /// at once, there is no commit to hold back, so nothing is sent before the verdict is clean.
    async fn upload_direct(
        &self,
        upload: &NewUpload,
        expected_sha1: Option<[u8; 20]>,
        file: WholeFile,
        sha1: [u8; 20],
        fields: Option<CheckedFields>,
        mut plan: ScanPlan,
    ) -> Result<UploadOutcome, UploadError> {
        check_expected(expected_sha1, &sha1)?;
        let client = self.client.clone();
        let u = upload.clone();
        let WholeFile { part, permit } = file;
        // Shared by the bytes' scan and their upload: given back once both are done with them.
        let permit = Arc::new(permit);
        let verdict = match self.start_scan(&mut plan, upload.size)? {
            Some(scan) => Some(
                self.until_stopped(async { Ok(scan_all(scan, &part.chunks, &permit).await) })
                    .await?,
            ),
            None => None,
        };
        let report = self.scan_report(plan, verdict)?;
        // The permit goes with the bytes into the task that sends them: when the client leaves, this
        // future is dropped but the task runs on, and its bytes stay counted until it ends.
        let file = self
            .on_rt(async move {
                let _permit = permit;
                client.upload_direct(&u, &part.chunks, &sha1).await
            })
            .await??;
        let file = self.verified(upload, file, &sha1).await?;
        let outcome = UploadOutcome {
            file,
            method: UploadMethod::Direct,
            size: upload.size,
            sha1_hex: hex::encode(sha1),
            part_size: None,
            parts: None,
            session_id: None,
            fields: None,
            scan: report,
        };
        match fields {
            None => Ok(outcome),
            // In a task of its own: a client that leaves now does not stop the fields, or the
            // removal of a file whose fields failed.
            Some(fields) => {
                let (this, upload) = (self.clone(), upload.clone());
                self.on_rt(async move { this.finish_fields(&upload, outcome, &fields).await })
                    .await?
            }
        }
    }

    /// Commits the parts of a chunked upload whose every byte went up, and checks what Box made of
    /// them. `true`: the commit's answer was lost and the file found in Box.
    ///
    /// With a `guard`, the commit and the guard's decision run in one task on the shared runtime, so
    /// a commit and an abort never race: if this request is dropped mid-commit (the client left),
    /// the task goes on, and only once the commit's outcome is known is the session aborted (a
    /// failure, or a recovered answer) or let be (committed). Without one (a resumable upload), the
    /// caller aborts on an error.
    ///
    /// A file Box answers that differs from what was sent (`box_integrity_error`) is removed: the
    /// file, if the upload created it, or the version it added.
    #[allow(clippy::too_many_arguments)]
    async fn finish_chunked(
        &self,
        upload: &NewUpload,
        expected_sha1: Option<[u8; 20]>,
        session: &UploadSession,
        guard: Option<SessionGuard>,
        sha1: [u8; 20],
        mut parts: Vec<UploadPart>,
        fields: Option<CheckedFields>,
        scan: crate::scan::ScanReport,
    ) -> Result<(UploadOutcome, bool), UploadError> {
        let size = upload.size;
        let part_size = session.part_size;
        parts.sort_by_key(|p| p.offset);
        let this = self.clone();
        let (upload, session) = (upload.clone(), session.clone());
        let task = async move {
            let committed = match check_expected(expected_sha1, &sha1) {
                Ok(()) => this.commit(&session, &upload, &sha1, parts).await,
                Err(err) => Err(err),
            };
            let result = match committed {
                Ok(Committed::Answered(file)) => {
                    this.verified(&upload, file, &sha1).await.map(|f| (f, false))
                }
                Ok(Committed::Recovered(file)) => Ok((file, true)),
                Err(err) => Err(err),
            };
            if let Some(guard) = guard {
                match &result {
                    Ok((_, false)) => guard.disarm(),
                    // The session was committed; the file it made is dealt with above.
                    Err(UploadError::Integrity { .. }) => guard.disarm(),
                    // Box holds the file but never answered the commit: in the rare case the file
                    // came from elsewhere (same name, same bytes), the session is still open; an
                    // abort closes it, and is refused harmlessly when the session was committed.
                    Ok((_, true)) => guard.abort("recovered").await,
                    Err(_) => guard.abort("error").await,
                }
            }
            let (file, recovered) = result?;
            let outcome = UploadOutcome {
                file,
                method: UploadMethod::Chunked,
                size,
                sha1_hex: hex::encode(sha1),
                part_size: Some(part_size),
                parts: Some(size.div_ceil(part_size)),
                session_id: Some(session.id.clone()),
                fields: None,
                scan,
            };
            // In this task, so a client that leaves now does not stop them (or the removal).
            let outcome = match fields {
                Some(fields) => this.finish_fields(&upload, outcome, &fields).await?,
                None => outcome,
            };
            Ok((outcome, recovered))
        };
        self.on_rt(task).await?
    }

    /// The file Box answered, if it is the one sent; else it is removed (the file the upload
    /// created, or the version it added) and the error says whether that worked.
    async fn verified(
        &self,
        upload: &NewUpload,
        file: FileObject,
        sha1: &[u8; 20],
    ) -> Result<FileObject, UploadError> {
        let detail = match verify_file(&file, upload.size, sha1) {
            Ok(()) => return Ok(file),
            Err(detail) => detail,
        };
        let file_id = file.id().unwrap_or_default().to_owned();
        let (what, removed) = self.remove_landed(upload, &file).await;
        let removed = match removed {
            Ok(()) => {
                tracing::warn!(file_id, what, %detail, "Box stored other bytes than were sent; the {what} was deleted");
                true
            }
            Err(err) => {
                tracing::error!(file_id, what, %detail, error = %err, "Box stored other bytes than were sent, and the {what} could not be deleted");
                false
            }
        };
        self.metrics
            .integrity_cleanups
            .with_label_values(&[what, if removed { "deleted" } else { "failed" }])
            .inc();
        Err(UploadError::Integrity {
            detail,
            file_id,
            what,
            removed,
        })
    }

    /// Removes what an upload made in Box: the file, if it created one, or the version it added
    /// (the file's previous version becomes current again). Returns which, and how it went.
    async fn remove_landed(
        &self,
        upload: &NewUpload,
        file: &FileObject,
    ) -> (&'static str, Result<(), BoxError>) {
        let file_id = file.id().unwrap_or_default();
        match &upload.target {
            Target::NewFile { .. } => ("file", self.client.delete_file(file_id).await),
            Target::NewVersion { .. } => {
                let version = file
                    .0
                    .get("file_version")
                    .and_then(|v| v.get("id"))
                    .and_then(serde_json::Value::as_str);
                match version {
                    Some(version) => ("version", self.client.delete_file_version(file_id, version).await),
                    None => (
                        "version",
                        Err(BoxError::protocol(
                            "commit",
                            "the answered file names no file_version",
                        )),
                    ),
                }
            }
        }
    }

    /// The finish step after the commit: one `PUT /files/{id}` for description, tags and shared link,
    /// then one call per metadata template, each with the retries of any Box call. If they cannot be
    /// applied, what the upload made is removed (`remove_landed`) and the upload fails with
    /// `FieldsNotApplied`: the file lands with its fields or not at all.
    async fn finish_fields(
        &self,
        upload: &NewUpload,
        mut outcome: UploadOutcome,
        fields: &CheckedFields,
    ) -> Result<UploadOutcome, UploadError> {
        let file_id = outcome.file.id().unwrap_or_default().to_owned();
        match self.apply_fields(&file_id, fields.fields()).await {
            Ok((applied, answered)) => {
                merge_fields(&mut outcome.file, answered);
                outcome.fields = Some(applied);
                Ok(outcome)
            }
            Err(err) => {
                let (what, removed) = self.remove_landed(upload, &outcome.file).await;
                let outcome_label = if removed.is_ok() { "deleted" } else { "failed" };
                self.metrics
                    .fields_cleanups
                    .with_label_values(&[what, outcome_label])
                    .inc();
                match &removed {
                    Ok(()) => {
                        tracing::warn!(file_id, what, error = %err, "the upload's fields could not be applied; the {what} was deleted")
                    }
                    Err(e) => {
                        tracing::error!(file_id, what, error = %err, removal = %e, "the upload's fields could not be applied, and the {what} could not be deleted")
                    }
                }
                Err(UploadError::FieldsNotApplied {
                    detail: err.to_string(),
                    file_id,
                    what,
                    removed: removed.is_ok(),
                })
            }
        }
    }

    /// Applies the fields to a landed file; returns them as Box answered, and the pieces of Box's file
    /// object to merge into the outcome's (`description`, `tags`, `shared_link`, `metadata`).
    async fn apply_fields(
        &self,
        file_id: &str,
        fields: &FileFields,
    ) -> Result<(AppliedFields, serde_json::Map<String, serde_json::Value>), BoxError> {
        use serde_json::{json, Value};
        let mut applied = AppliedFields::default();
        let mut answered = serde_json::Map::new();
        if fields.updates_file() {
            let update = FileUpdate {
                description: fields.description.clone(),
                tags: fields.tags.clone(),
                shared_link: fields.shared_link.map(|a| SharedLinkUpdate {
                    access: a.as_str().to_owned(),
                }),
            };
            let file = self.client.update_file(file_id, &update).await?;
            for key in ["description", "tags", "shared_link"] {
                if let Some(v) = file.0.get(key) {
                    answered.insert(key.to_owned(), v.clone());
                }
            }
            applied.description = fields.description.as_ref().and(
                file.0
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            );
            applied.tags = fields.tags.as_ref().and(
                file.0
                    .get("tags")
                    .and_then(|t| serde_json::from_value::<Vec<String>>(t.clone()).ok()),
            );
            if fields.shared_link.is_some() {
                let link = file.0.get("shared_link");
                let text = |k: &str| {
                    link.and_then(|l| l.get(k))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                match (text("access"), text("url")) {
                    (Some(access), Some(url)) => applied.shared_link = Some(SharedLink { access, url }),
                    _ => {
                        return Err(BoxError::protocol(
                            "update_file",
                            "the answer has no shared link with an access and a URL",
                        ))
                    }
                }
            }
        }
        let mut metadata = serde_json::Map::new();
        for m in &fields.metadata {
            let created = self
                .client
                .create_metadata(file_id, &m.scope, &m.template_key, &m.values)
                .await;
            let instance = match created {
                // The file has an instance of the template already (a new version of a file that had
                // one, or an attempt whose answer was lost): the values are set on it instead.
                Err(err) if err.status() == Some(409) => {
                    self.client
                        .update_metadata(file_id, &m.scope, &m.template_key, &m.values)
                        .await?
                }
                other => other?,
            };
            let values: serde_json::Map<String, Value> = instance
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| !k.starts_with('$'))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            applied.metadata.insert(m.name(), Value::Object(values));
            // Box's own form (`fields=metadata.<scope>.<key>`): by the instance's scope id.
            let scope = instance
                .get("$scope")
                .and_then(Value::as_str)
                .unwrap_or(&m.scope)
                .to_owned();
            let entry = metadata.entry(scope).or_insert_with(|| json!({}));
            entry[m.template_key.as_str()] = instance;
        }
        if !metadata.is_empty() {
            answered.insert("metadata".to_owned(), Value::Object(metadata));
        }
        Ok((applied, answered))
    }

    /// Checks the fields' metadata against their templates' schemas (fetched from Box as this
    /// pipeline's principal, cached `schema_cache_ttl`): known templates and fields, values of their
    /// fields' types. Call it before any byte of the body is read: a refusal is
    /// `UploadError::Fields` naming the field; a Box failure to answer is `UploadError::Box`.
    pub async fn check_fields(&self, fields: FileFields) -> Result<CheckedFields, UploadError> {
        for m in &fields.metadata {
            let schema = if m.scope == "global" && m.template_key == "properties" {
                None
            } else {
                self.schema(&m.scope, &m.template_key).await?
            };
            check_values(m, schema.as_deref())?;
        }
        Ok(CheckedFields::new(fields))
    }

    async fn schema(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<Arc<crate::box_api::MetadataTemplate>>, UploadError> {
        let who = self.client.principal().clone();
        if let Some(hit) = self.schemas.get(&who, scope, key, std::time::Instant::now()) {
            self.metrics.schema_cache.with_label_values(&["hit"]).inc();
            return Ok(Some(hit));
        }
        self.metrics.schema_cache.with_label_values(&["miss"]).inc();
        let client = self.client.clone();
        let (s, k) = (scope.to_owned(), key.to_owned());
        let found = self
            .on_rt(async move { client.metadata_template(&s, &k).await })
            .await??
            .map(Arc::new);
        if let Some(schema) = &found {
            self.schemas
                .put(&who, scope, key, schema.clone(), std::time::Instant::now());
        }
        Ok(found)
    }

    /// Resolves a folder path under `root` (a folder id) to a folder id, as this pipeline's principal:
    /// missing levels are created when `create` (else `PathError::NotFound`), a file in the way is
    /// `PathError::Conflict`. No Box call when the whole path is cached.
    pub async fn resolve_folder(
        &self,
        root: &str,
        path: &FolderPath,
        create: bool,
    ) -> Result<ResolvedFolder, UploadError> {
        let (paths, client, metrics) = (self.paths.clone(), self.client.clone(), self.metrics.clone());
        let (root, path) = (root.to_owned(), path.clone());
        // On the shared runtime: a client that leaves mid-way does not cut a level's creation short
        // (it would be harmless: the next resolution meets the folder with a 409).
        let resolved = self
            .on_rt(async move { paths.resolve(&client, &metrics, &root, &path, create).await })
            .await?;
        resolved.map_err(|e| match e {
            paths::ResolveError::Path(e) => UploadError::Path(e),
            paths::ResolveError::Box(e) => UploadError::Box(e),
        })
    }

    /// `prepare` for an upload by path: resolves `path` under `root`, puts the file there (the
    /// request's target must be `Target::NewFile`; its `folder_id` is replaced), and prepares it. If
    /// Box answers 404 for a folder that came from the cache (deleted since), the path is forgotten,
    /// resolved again, and the upload prepared once more.
    pub async fn prepare_at_path(
        &self,
        root: &str,
        path: &FolderPath,
        create: bool,
        request: UploadRequest,
    ) -> Result<(Prepared, ResolvedFolder), UploadError> {
        let Target::NewFile { name, .. } = &request.upload.target else {
            return Err(UploadError::Internal("an upload by path makes a new file".into()));
        };
        let name = name.clone();
        let mut again = false;
        loop {
            let folder = self.resolve_folder(root, path, create).await?;
            let mut r = request.clone();
            r.upload.target = Target::NewFile {
                folder_id: folder.folder_id.clone(),
                name: name.clone(),
            };
            match self.prepare(r).await {
                Err(UploadError::Box(err)) if err.status() == Some(404) && folder.cached && !again => {
                    tracing::info!(path = %path.display(), "the cached folder of an upload by path is gone from Box; resolving it again");
                    self.metrics.path_cache.with_label_values(&["stale"]).inc();
                    self.paths.forget(self.client.principal(), root, path);
                    again = true;
                }
                other => return other.map(|prepared| (prepared, folder)),
            }
        }
    }

    /// One part's upload with its retries, on the shared runtime (its digest, `sha1`, was taken while
    /// it was read). Its hold of the budget permit is released when Box has answered (a scan holds
    /// another until clamd has the bytes). `known`: a part Box already
    /// holds at this offset (a resumable upload's bytes sent again after a failed append): the same
    /// bytes are not sent again (parts are immutable: Box would answer 416).
    #[allow(clippy::too_many_arguments)]
    fn upload_part(
        &self,
        session: UploadSession,
        file_size: u64,
        offset: u64,
        part: Part,
        sha1: [u8; 20],
        permit: Arc<BudgetPermit>,
        known: Option<UploadPart>,
    ) -> impl std::future::Future<Output = Result<UploadPart, UploadError>> + Send + 'static {
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        async move {
            let _permit = permit;
            let started = Instant::now();
            if let Some(known) = known.filter(|k| same_part(k, offset, part.len, &sha1)) {
                return Ok(known);
            }
            let result = match client
                .upload_part(&session, file_size, offset, &part.chunks, &sha1)
                .await
            {
                // A resumable upload's part that went up in a request whose end was lost (its client
                // left mid-PATCH): Box holds it already, and these are the same bytes.
                Err(err) if err.status() == Some(416) => match client.list_parts(&session).await {
                    Ok(parts) => parts
                        .into_iter()
                        .find(|p| same_part(p, offset, part.len, &sha1))
                        .ok_or(err),
                    Err(_) => Err(err),
                },
                other => other,
            };
            metrics.part_duration.observe(started.elapsed().as_secs_f64());
            let outcome = if result.is_ok() { "uploaded" } else { "failed" };
            metrics.parts.with_label_values(&[outcome]).inc();
            Ok(result?)
        }
    }

    /// Reads the body into parts of exactly `part_size` bytes (the last may be shorter), hashing each
    /// into the whole file's SHA-1 and sending it, at most `part_concurrency` at once, until every
    /// part is in Box. With a `scan`, each part's pieces are pushed to it once the part's upload has
    /// started; the part's budget permit is shared by both and goes back once Box and clamd have the
    /// bytes, so the bound below holds for clamd's queue too (a slow clamd stops the reading).
    /// Returns clamd's verdict, waited for while the last parts go up.
    #[allow(clippy::too_many_arguments)]
    async fn send_parts<S, E>(
        &self,
        upload: &NewUpload,
        session: &UploadSession,
        body: &mut Rechunker<S>,
        in_flight: &mut JoinSet<Result<UploadPart, UploadError>>,
        digests: &mut TwinSha1,
        parts: &mut Vec<UploadPart>,
        mut scan: Option<crate::scan::Scan>,
    ) -> Result<Option<crate::scan::Verdict>, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<UploadError>,
    {
        let size = upload.size;
        let part_size = session.part_size;
        let concurrency = self.settings.part_concurrency.max(1);
        let mut offset = 0;
        let mut hold = self.hold();
        while offset < size {
            // Per upload at most `part_concurrency` parts exist at once (filling or in flight); each
            // holds its bytes of the budget from when they arrive until Box has answered for it (and
            // clamd has taken them).
            while in_flight.len() >= concurrency {
                parts.push(join(in_flight.join_next().await)?);
            }
            let len = part_size.min(size - offset);
            hold.reserve_unit(len).await?;
            // Hashed chunk by chunk as it arrives, while in cache; and the socket is read again
            // sooner than after one hashing burst per part (measured: 5 to 7 % less CPU, 20 % less
            // wall time, docs/benchmark.md "What made it cheaper").
            let part = read_exact(body, len, |c| digests.update(c), &mut hold)
                .await
                .map_err(|e| e.with_offset(offset))?;
            let permit = Arc::new(hold.take());
            let part_sha1 = digests.finish_part();
            let pieces = scan.is_some().then(|| part.chunks.clone());
            in_flight.spawn_on(
                self.upload_part(
                    session.clone(),
                    size,
                    offset,
                    part,
                    part_sha1,
                    permit.clone(),
                    None,
                )
                .in_current_span(),
                &self.rt,
            );
            if let (Some(scan), Some(pieces)) = (scan.as_mut(), pieces) {
                // The same `Bytes` as the part's upload: no copy.
                for piece in pieces.iter() {
                    scan.push(piece.clone(), permit.clone())
                        .await
                        .map_err(UploadError::Scan)?;
                }
            }
            offset += len;
            while let Some(done) = in_flight.try_join_next() {
                parts.push(join(Some(done))?);
            }
        }
        expect_end(body, size).await?;
        // clamd scans once it has the last byte: its verdict and the last parts' answers are waited
        // for together.
        let verdict = async {
            match scan {
                Some(scan) => Some(scan.finish().await),
                None => None,
            }
        };
        let joined = async {
            while let Some(done) = in_flight.join_next().await {
                parts.push(join(Some(done))?);
            }
            Ok::<_, UploadError>(())
        };
        let (verdict, joined) = tokio::join!(verdict, joined);
        joined?;
        Ok(verdict)
    }

    /// `work`, unless the drain's stop comes first.
    async fn until_stopped<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, UploadError>>,
    ) -> Result<T, UploadError> {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => Err(UploadError::ShuttingDown),
            result = work => result,
        }
    }

    /// Commits, retrying a 202 (parts still being processed), a transient `parts_mismatch` and a 409
    /// `name_temporarily_reserved` (another upload of the name is committing) within `commit_timeout`:
    /// Box can answer 202 fifteen times and more, so a small try count is not enough. Other retryable
    /// failures get the usual attempts.
    ///
    /// A commit whose answer is lost (a 5xx, a timeout, a dropped connection) may have created the
    /// file all the same; what Box says to a repeated commit then is not documented. So after such an
    /// answer, and on every failure after it, Box is asked what it holds (`BoxClient::recover`): the
    /// file sent (name, SHA-1, size) is success, reported as `Recovered`.
    async fn commit(
        &self,
        session: &UploadSession,
        upload: &NewUpload,
        sha1: &[u8; 20],
        parts: Vec<UploadPart>,
    ) -> Result<Committed, UploadError> {
        let client = self.client.clone();
        let (session, upload, sha1, metrics) = (session.clone(), upload.clone(), *sha1, self.metrics.clone());
        let budget = self.settings.commit_timeout;
        let mismatch_window = self.settings.parts_mismatch_window;
        self.on_rt(async move {
            // Also the bound of each attempt's wait for the pacer's room: a commit that cannot have
            // room in time fails at once (503 `box_rate_limited`) and the session is aborted.
            let deadline = tokio::time::Instant::now() + budget;
            let policy = client.retry_policy().clone();
            // Counts the commit's failures only: 202s (Box still processing the parts) are polled
            // apart, bounded by `commit_timeout` alone, so they never spend the error retries.
            let mut attempt = 0;
            let mut lost = false;
            let mut mismatch_since = None;
            loop {
                let err = match client.commit(&session, &upload, &sha1, &parts, deadline).await {
                    Ok(CommitAnswer::Committed(file)) => return Ok(Committed::Answered(file)),
                    Ok(CommitAnswer::Pending(retry_after)) => {
                        // A `Retry-After: 0` (or none) still waits a little: a Box that answers 202
                        // forever must not be polled in a tight loop for the whole commit timeout.
                        let delay = retry_after
                            .unwrap_or(Duration::from_secs(1))
                            .max(policy.base_delay);
                        wait_within(deadline, budget, delay, &metrics, "commit_pending").await?;
                        continue;
                    }
                    Err(err) => err,
                };
                attempt += 1;
                lost |= err.may_have_landed();
                if lost {
                    if let Some(file) = client.recover("commit", &upload, &sha1, upload.size).await {
                        return Ok(Committed::Recovered(file));
                    }
                }
                let delay = policy.delay(attempt, err.retry_after());
                let reason = match (err.code(), err.retry_reason()) {
                    // Transient right after the last part; past a short window Box lacks a part,
                    // and retrying cannot bring it (a resumable upload moves back to the hole).
                    (Some("parts_mismatch"), _)
                        if mismatch_since.get_or_insert_with(Instant::now).elapsed() < mismatch_window =>
                    {
                        "parts_mismatch"
                    }
                    (Some("parts_mismatch"), _) => return Err(err.into()),
                    (_, Some("name_reserved")) => "name_reserved",
                    (_, Some(reason)) if attempt < policy.max_attempts => reason,
                    _ => return Err(err.into()),
                };
                wait_within(deadline, budget, delay, &metrics, reason).await?;
            }
        })
        .await?
    }

    /// The gateway's own runtime, for work that outlives the request that started it: a request's
    /// actix worker has a runtime of its own, which ends with the server's stop (a task spawned
    /// there then never runs).
    pub fn runtime(&self) -> &Handle {
        &self.rt
    }

    /// Runs a Box call on the shared multi-threaded runtime.
    async fn on_rt<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, UploadError> {
        self.rt
            .spawn(fut.in_current_span())
            .await
            .map_err(|e| UploadError::Internal(format!("Box call task failed: {e}")))
    }
}

const MAX_RENAMES: u32 = 100;

fn join(
    done: Option<Result<Result<UploadPart, UploadError>, tokio::task::JoinError>>,
) -> Result<UploadPart, UploadError> {
    match done {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(UploadError::Internal(format!("part task failed: {e}"))),
        None => Err(UploadError::Internal("no part in flight".into())),
    }
}

/// Whether Box's part holds these bytes.
fn same_part(part: &UploadPart, offset: u64, len: usize, sha1: &[u8; 20]) -> bool {
    part.offset == offset
        && part.size == len as u64
        && part
            .sha1
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(&hex::encode(sha1)))
}

/// What a commit ended with.
enum Committed {
    /// Box answered the file.
    Answered(FileObject),
    /// The answer was lost, and Box was found holding the file sent.
    Recovered(FileObject),
}

/// Sleeps before another commit attempt, unless that would pass the commit's deadline.
async fn wait_within(
    deadline: tokio::time::Instant,
    budget: Duration,
    delay: Duration,
    metrics: &GatewayMetrics,
    reason: &'static str,
) -> Result<(), UploadError> {
    if tokio::time::Instant::now() + delay > deadline {
        return Err(UploadError::CommitTimedOut(budget));
    }
    metrics.box_retries.with_label_values(&["commit", reason]).inc();
    tokio::time::sleep(delay).await;
    Ok(())
}

impl From<BudgetError> for UploadError {
    fn from(err: BudgetError) -> Self {
        match err {
            BudgetError::OverBudget(over) => Self::OverBudget(over),
            BudgetError::Busy { waited, .. } => Self::Busy(waited),
        }
    }
}

impl UploadError {
    /// The scanner gave no verdict (clamd down, busy, past its deadline, an error of its own): the
    /// file is neither clean nor infected, and its scan may be tried again later.
    pub fn is_scanner_unavailable(&self) -> bool {
        matches!(self, Self::Scan(crate::scan::Verdict::Error(_)))
    }

    /// A short body seen while filling the part at `offset`.
    fn with_offset(self, offset: u64) -> Self {
        match self {
            Self::SizeMismatch {
                declared,
                received,
                derived,
            } => Self::SizeMismatch {
                declared,
                received: offset + received,
                derived,
            },
            other => other,
        }
    }
}

/// Exactly `len` bytes from the body, each chunk shown to `seen` and charged to `hold` as it
/// arrives, or `SizeMismatch` (with `received` counted within this read).
async fn read_exact<S, E>(
    body: &mut Rechunker<S>,
    len: u64,
    seen: impl FnMut(&[u8]),
    hold: &mut Hold,
) -> Result<Part, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<UploadError>,
{
    let part = read_charged(body, len, seen, hold).await?;
    if (part.len as u64) < len {
        return Err(UploadError::SizeMismatch {
            declared: len,
            received: part.len as u64,
            derived: false,
        });
    }
    Ok(part)
}

/// Bytes of a part charged at a time, at least: a piece that finds no budget charged for it takes
/// this much (or what is left of its part), so a body in 1-byte HTTP chunks costs one charge per
/// 64 KiB, not one per byte. What is charged ahead of the bytes is at most this per upload being
/// read, and always within its part's reservation.
const CHARGE_STEP_BYTES: u64 = 64 * 1024;

/// Up to `len` bytes from the body (fewer when it ends first), charged to `hold` as they join the
/// part (in steps of `CHARGE_STEP_BYTES`), before the next piece is read.
async fn read_charged<S, E>(
    body: &mut Rechunker<S>,
    len: u64,
    seen: impl FnMut(&[u8]),
    hold: &mut Hold,
) -> Result<Part, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<UploadError>,
{
    // `credit`: charged, not arrived yet; `left`: the part's bytes not arrived yet (a piece never
    // passes it: the rechunker cuts pieces at the part's end).
    let (mut credit, mut left) = (0u64, len);
    body.next_part_charged(len as usize, seen, async |n| {
        let n = n as u64;
        if n > credit {
            let step = (n - credit).max(CHARGE_STEP_BYTES).min(left - credit);
            hold.charge(step).await.map_err(UploadError::from)?;
            credit += step;
        }
        credit -= n;
        left -= n;
        Ok(())
    })
    .await
}

/// A direct upload's whole file, in memory, and its bytes' share of the budget.
pub struct WholeFile {
    part: Part,
    permit: BudgetPermit,
}

impl WholeFile {
    /// Its bytes, shared (no copy): what a resumable upload keeps in the store when its landing must
    /// wait (`UploadError::is_scanner_unavailable`).
    pub fn pieces(&self) -> Arc<[Bytes]> {
        self.part.chunks.clone()
    }
}

/// The body must end where the declared size does.
async fn expect_end<S, E>(body: &mut Rechunker<S>, size: u64) -> Result<(), UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<UploadError>,
{
    let extra = body.drain().await.map_err(Into::into)?;
    if extra > 0 {
        return Err(UploadError::SizeMismatch {
            declared: size,
            received: size + extra,
            derived: false,
        });
    }
    Ok(())
}

fn check_expected(expected: Option<[u8; 20]>, actual: &[u8; 20]) -> Result<(), UploadError> {
    match expected {
        Some(expected) if expected != *actual => Err(UploadError::DigestMismatch {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        }),
        _ => Ok(()),
    }
}

/// Puts the fields Box answered into the file object, where Box keeps them.
fn merge_fields(file: &mut FileObject, answered: serde_json::Map<String, serde_json::Value>) {
    if let Some(object) = file.0.as_object_mut() {
        object.extend(answered);
    }
}

/// After a commit or direct upload, the file Box answers must be the one sent.
fn verify_file(file: &FileObject, size: u64, sha1: &[u8; 20]) -> Result<(), String> {
    let want = hex::encode(sha1);
    let sha_ok = file.sha1().is_some_and(|s| s.eq_ignore_ascii_case(&want));
    let size_ok = file.size() == Some(size);
    if !sha_ok || !size_ok {
        return Err(format!(
            "sent {size} bytes with SHA-1 {want}; Box has {:?} bytes with SHA-1 {:?}",
            file.size(),
            file.sha1()
        ));
    }
    Ok(())
}
