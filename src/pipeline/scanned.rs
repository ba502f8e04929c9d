//! The malware gate in the pipeline: what each upload's scan is (decided at its admission), and how a
//! scanned upload lands.
//!
//! - A plain upload's bytes go to clamd as they go to Box (`Pipeline::send`: each part's pieces are
//!   pushed to the scan beside its upload, the part's budget permit held until both have them), and
//!   the commit waits for clamd's verdict: only `clean` commits; anything else aborts the session.
//!   A direct upload's bytes are scanned before they are sent.
//! - A resumable (tus) upload's `PATCH`es may reach different replicas, and a scan stream cannot
//!   move between them. A direct-size one holds all its bytes in the store until its last byte:
//!   they are scanned then, before the direct upload. A chunked one is committed into the staging
//!   folder under a unique name (`Gate`), then the replica that completes it streams the file from
//!   Box through clamd and, when clean, moves it into its folder under its name (the conflict policy
//!   applied then); otherwise it is deleted. Its fields (description, tags, shared link, metadata)
//!   and its folder path are applied only once it is in its final place, never to the staged file.
//! - A new version never exists unscanned: a staged upload that must become a version (a `file_id`,
//!   or `on_conflict=version` meeting a name) is copied from the staged file into a session of the
//!   file, whose commit carries the SHA-1 of the bytes clamd found clean (`expected_sha1`): Box
//!   refuses the commit if other bytes came.
//!
//! Fail closed: anything other than clamd's clean verdict keeps the file out of Box. A resumable
//! upload that met no verdict (clamd down, busy, past its deadline) is kept whole (its staged file,
//! or a direct-size one's bytes in the store) and lands when its scan is tried again and is clean.
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::box_api::{NewUpload, Target};
use crate::scan::{Scan, ScanReport, Scanner, Verdict};

use super::{
    CheckedFields, FolderPath, OnConflict, Prepared, ResolvedFolder, Resumable, UploadError, UploadOutcome,
    UploadRequest,
};

/// A file above the scanner's `scan_max_bytes` (clamd does not look past ClamAV's limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanOversize {
    /// 413 `too_large_to_scan` before any byte, when the size is known (after the body, when not).
    #[default]
    Refuse,
    /// Lands unscanned, and its answer and event say `"scanned": false`.
    AllowUnscanned,
}

impl ScanOversize {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "refuse" => Some(Self::Refuse),
            "allow_unscanned" => Some(Self::AllowUnscanned),
            _ => None,
        }
    }
}

/// Where a chunked resumable upload is committed before its scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staging {
    /// `scan_staging_folder_id`: one folder for every upload (writable by each Box user uploads act
    /// as).
    Folder(String),
    /// A folder named `STAGING_FOLDER_NAME` in the root of the Box user each upload acts as, made at
    /// its first need: seen by that user only.
    PerUser,
}

/// The staging folder's name when `scan_staging_folder_id` is not set.
pub const STAGING_FOLDER_NAME: &str = "box-upload-gateway-scan-staging";

/// The scanner and what to do around it: one per process.
#[derive(Clone)]
pub struct ScanGate {
    pub scanner: Scanner,
    pub oversize: ScanOversize,
    pub staging: Staging,
}

impl ScanGate {
    /// What is done about the scan of an upload of `size` bytes (None: not known before its body),
    /// for a caller exempt or not (`scan = false` in its key): a plan, or `Verdict::TooLarge` when it
    /// must be refused before any byte.
    pub fn plan(&self, exempt: bool, size: Option<u64>) -> Result<ScanPlan, Verdict> {
        if exempt {
            return Ok(ScanPlan::Skip(Unscanned::KeyExempt));
        }
        let limit = self.scanner.max_bytes();
        match size {
            Some(size) if size > limit => match self.oversize {
                ScanOversize::Refuse => Err(Verdict::TooLarge { size, limit }),
                ScanOversize::AllowUnscanned => Ok(ScanPlan::Skip(Unscanned::TooLarge { limit })),
            },
            _ => Ok(ScanPlan::Scan),
        }
    }
}

/// One upload's scan, decided at its admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanPlan {
    Scan,
    Skip(Unscanned),
}

impl Default for ScanPlan {
    fn default() -> Self {
        Self::Skip(Unscanned::Off)
    }
}

/// Why an upload is not scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unscanned {
    /// No scanner (`clamd_address` unset).
    Off,
    /// The caller's API key has `scan = false`.
    KeyExempt,
    /// Larger than `scan_max_bytes`, let through by `scan_oversize = "allow_unscanned"`.
    TooLarge { limit: u64 },
}

impl Unscanned {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Off => "scanning_off",
            Self::KeyExempt => "key_exempt",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// A chunked resumable upload that is scanned: it is committed into the staging folder under a
/// unique name (its upload's target), then lands at `destination` once clean. Kept in its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gate {
    pub destination: Destination,
    pub on_conflict: OnConflict,
    /// The staged file, once the upload was committed into the staging folder.
    #[serde(default)]
    pub staged_file_id: Option<String>,
}

impl Gate {
    /// Where the upload goes, for its events: its target, or for an upload by path its name in the
    /// root (the event names the path besides).
    pub fn reported_target(&self) -> Target {
        match &self.destination {
            Destination::Target(target) => target.clone(),
            Destination::Path { root, name, .. } => Target::NewFile {
                folder_id: root.clone(),
                name: name.clone(),
            },
        }
    }
}

/// Where a staged upload lands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Destination {
    /// A new file in a folder, or a new version of a file.
    Target(Target),
    /// An upload by path: its folder is resolved (and made, with `create`) once the file is clean.
    Path {
        root: String,
        folder: FolderPath,
        create: bool,
        name: String,
    },
}

impl super::Pipeline {
    /// The scan of an upload of `size` bytes, started (its connection is made meanwhile), when its
    /// plan says so. A file larger than the scanner takes is refused (`TooLarge`) or, with
    /// `allow_unscanned`, let through: `plan` then says why it is not scanned.
    pub(super) fn start_scan(&self, plan: &mut ScanPlan, size: u64) -> Result<Option<Scan>, UploadError> {
        let Some(gate) = self.scan_gate.as_deref().filter(|_| *plan == ScanPlan::Scan) else {
            if *plan == ScanPlan::Scan {
                *plan = ScanPlan::Skip(Unscanned::Off);
            }
            return Ok(None);
        };
        match gate.scanner.start(size) {
            Ok(scan) => Ok(Some(scan)),
            Err(Verdict::TooLarge { limit, .. }) if gate.oversize == ScanOversize::AllowUnscanned => {
                *plan = ScanPlan::Skip(Unscanned::TooLarge { limit });
                Ok(None)
            }
            Err(verdict) => Err(UploadError::Scan(verdict)),
        }
    }

    /// What the answer says of the scan: a clean verdict, or why there was none; anything else is
    /// the upload's failure (fail closed).
    pub(super) fn scan_report(
        &self,
        plan: ScanPlan,
        verdict: Option<Verdict>,
    ) -> Result<ScanReport, UploadError> {
        match (plan, verdict) {
            (ScanPlan::Skip(why), _) => Ok(ScanReport::skipped(why.reason())),
            (ScanPlan::Scan, Some(Verdict::Clean)) => Ok(ScanReport::clean(
                self.scan_gate.as_deref().and_then(|g| g.scanner.engine()),
            )),
            (ScanPlan::Scan, Some(verdict)) => Err(UploadError::Scan(verdict)),
            (ScanPlan::Scan, None) => Err(UploadError::Internal(
                "an upload to be scanned has no verdict".into(),
            )),
        }
    }
}

/// Pushes every piece of a file held in memory to its scan, each holding `hold` (the bytes' budget
/// permit) until clamd has it, and waits for the verdict.
pub(super) async fn scan_all<H: Clone + Send + 'static>(
    mut scan: Scan,
    pieces: &[Bytes],
    hold: &H,
) -> Verdict {
    for piece in pieces {
        if let Err(verdict) = scan.push(piece.clone(), hold.clone()).await {
            return verdict;
        }
    }
    scan.finish().await
}

/// The prefix of a staged file's name; the tus upload's id follows, so names never clash.
const STAGED_PREFIX: &str = "gateway-scan-";

impl super::Pipeline {
    /// `prepare` for a resumable upload. A chunked one that is scanned goes into the staging folder
    /// under a name made of its id, and keeps where it lands in its `gate` (an upload by path's
    /// folders are made only once it is clean). Box is asked first whether the destination takes the
    /// file (a preflight: the folder, the permission, the quota and, with `on_conflict=error`, the
    /// name), so those refusals still come before any byte. Any other upload: `prepare` (or
    /// `prepare_at_path`), as a plain upload's.
    pub async fn prepare_resumable(
        &self,
        request: UploadRequest,
        by_path: Option<(&str, &FolderPath, bool)>,
        plan: ScanPlan,
        id: &str,
    ) -> Result<(Prepared, Option<ResolvedFolder>), UploadError> {
        let staging = self.scan_gate.as_deref().map(|g| g.staging.clone());
        let staged = plan == ScanPlan::Scan && request.upload.size >= self.settings.chunked_threshold_bytes;
        let (Some(staging), true) = (staging, staged) else {
            return self.prepare_in_place(request, by_path, plan).await;
        };
        let destination = match (&request.upload.target, by_path) {
            (Target::NewFile { name, .. }, Some((root, folder, create))) => Destination::Path {
                root: root.to_owned(),
                folder: folder.clone(),
                create,
                name: name.clone(),
            },
            (target, _) => {
                self.preflight_destination(&request).await?;
                Destination::Target(target.clone())
            }
        };
        let mut staged_request = request.clone();
        staged_request.on_conflict = OnConflict::Error;
        let name = format!("{STAGED_PREFIX}{id}");
        let prepared = match &staging {
            Staging::Folder(folder_id) => {
                staged_request.upload.target = Target::NewFile {
                    folder_id: folder_id.clone(),
                    name,
                };
                self.prepare(staged_request).await?
            }
            Staging::PerUser => {
                staged_request.upload.target = Target::NewFile {
                    folder_id: "0".into(),
                    name,
                };
                let folder = FolderPath::new(vec![STAGING_FOLDER_NAME.to_owned()]);
                self.prepare_at_path("0", &folder, true, staged_request).await?.0
            }
        };
        if prepared.method() == super::UploadMethod::Direct {
            // Box refused a session as too small: it is a direct upload after all, whose bytes are
            // scanned in memory before they are sent to where they go.
            drop(prepared);
            return self.prepare_in_place(request, by_path, plan).await;
        }
        let prepared = Prepared {
            scan: plan,
            gate: Some(Gate {
                destination,
                on_conflict: request.on_conflict,
                staged_file_id: None,
            }),
            ..prepared
        };
        Ok((prepared, None))
    }

    async fn prepare_in_place(
        &self,
        request: UploadRequest,
        by_path: Option<(&str, &FolderPath, bool)>,
        plan: ScanPlan,
    ) -> Result<(Prepared, Option<ResolvedFolder>), UploadError> {
        let (prepared, folder) = match by_path {
            None => (self.prepare(request).await?, None),
            Some((root, path, create)) => {
                let (prepared, folder) = self.prepare_at_path(root, path, create, request).await?;
                (prepared, Some(folder))
            }
        };
        Ok((prepared.with_scan(plan), folder))
    }

    /// Box's preflight of the destination (`OPTIONS /files/content`): refusals of the folder, the
    /// permission or the size as `prepare` would have met them, and a name conflict when it is not
    /// resolved later (`on_conflict=error`).
    async fn preflight_destination(&self, request: &UploadRequest) -> Result<(), UploadError> {
        let client = self.client.clone();
        let upload = request.upload.clone();
        let answer = self.on_rt(async move { client.preflight(&upload).await }).await?;
        let Err(err) = answer else { return Ok(()) };
        match err.name_conflict() {
            Some(_) if request.on_conflict != OnConflict::Error => Ok(()),
            Some(conflict) => Err(UploadError::Conflict {
                existing_id: conflict.id,
                kind: conflict.kind,
            }),
            None => Err(err.into()),
        }
    }

    /// Lands a staged upload (committed into the staging folder: `commit_staged`): its file is
    /// streamed from Box through clamd and, when clean, moved where it goes (or copied into a new
    /// version), then its fields are applied there. Malware, an incomplete scan, or a failure on the
    /// way deletes the staged file: nothing of the upload stays. No verdict at all
    /// (`UploadError::is_scanner_unavailable`) keeps it, to be scanned again later.
    ///
    /// It runs in the request's task (the copy into a version reads its body as a plain upload does,
    /// which is not a task's work). If the request is dropped on the way, every step can be taken
    /// again: the record still names the staged file, and the next landing (HEAD, or the last PATCH
    /// sent again: `routes/tus/complete.rs`) scans it again and moves it where it already is (a move
    /// onto its own name is no conflict), or deletes it.
    pub(super) async fn land_staged(
        &self,
        r: &Resumable,
        fields: Option<CheckedFields>,
    ) -> Result<UploadOutcome, UploadError> {
        let (Some(gate), Some(session)) = (r.gate.as_ref(), r.session.as_ref()) else {
            return Err(UploadError::Internal("a staged upload without its gate".into()));
        };
        let Some(staged) = gate.staged_file_id.as_deref() else {
            return Err(UploadError::Internal("a staged upload not committed yet".into()));
        };
        let sha1 = r.sha1.clone().finalize();
        let landed = async {
            self.scan_staged(staged, r.upload.size, &sha1).await?;
            self.move_staged(r, gate, staged, &sha1).await
        }
        .await;
        let (file, upload) = match landed {
            Ok(landed) => landed,
            // No verdict (clamd down, busy, past its deadline): the staged file is kept, seen by no
            // one, for the scan to be tried again (the last PATCH sent again, or HEAD).
            Err(err) if err.is_scanner_unavailable() => return Err(err),
            Err(err) => {
                self.delete_staged(staged).await;
                return Err(err);
            }
        };
        let outcome = UploadOutcome {
            file: self.verified(&upload, file, &sha1).await?,
            method: super::UploadMethod::Chunked,
            size: r.upload.size,
            sha1_hex: hex::encode(sha1),
            part_size: Some(session.part_size),
            parts: Some(r.upload.size.div_ceil(session.part_size)),
            session_id: Some(session.id.clone()),
            fields: None,
            scan: ScanReport::clean(self.scan_gate.as_deref().and_then(|g| g.scanner.engine())),
        };
        match fields {
            Some(fields) => self.finish_fields(&upload, outcome, &fields).await,
            None => Ok(outcome),
        }
    }

    /// The staged file's bytes from Box through clamd; the bytes must be those committed (their
    /// SHA-1). Only a clean verdict passes. Held in memory: at most the scan's queue, within the
    /// budget.
    async fn scan_staged(&self, file_id: &str, size: u64, sha1: &[u8; 20]) -> Result<(), UploadError> {
        use futures_util::StreamExt;
        use sha1::Digest;
        let gate = self.scan_gate.as_deref().ok_or_else(|| {
            UploadError::Scan(Verdict::Error(crate::scan::ScanError::new(
                crate::scan::ErrorKind::Connect,
                "this replica has no scanner (clamd_address unset) for an upload staged to be scanned",
            )))
        })?;
        let scanner = &gate.scanner;
        // clamd takes a connection first, before Box is asked for the file: while it is down, each
        // HEAD of an upload waiting for its scan (its owner may be a link's stranger, asking in a
        // loop) costs a refused local connection, not a download through the Box user's pacer.
        scanner
            .reachable()
            .await
            .map_err(|e| UploadError::Scan(Verdict::Error(e)))?;
        let mut scan = scanner.start(size).map_err(UploadError::Scan)?;
        // The bytes on their way to clamd: at most its queue (plus the piece being pushed), taken
        // from the caller's share of the budget at once.
        let queued = scanner.queue_bytes().min(size);
        let mut hold = self.hold();
        hold.reserve_unit(queued).await?;
        hold.charge(queued).await?;
        let permit = Arc::new(hold.take());
        let mut bytes = self
            .client
            .download_file(file_id, scanner.verdict_wait(size))
            .await?;
        let mut hasher = sha1::Sha1::new();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            scan.push(chunk, permit.clone())
                .await
                .map_err(UploadError::Scan)?;
        }
        let got: [u8; 20] = hasher.finalize().into();
        if got != *sha1 {
            return Err(UploadError::Box(crate::box_api::BoxError::protocol(
                "download_file",
                format!(
                    "the staged file's bytes have SHA-1 {}, the upload's {}",
                    hex::encode(got),
                    hex::encode(sha1)
                ),
            )));
        }
        match scan.finish().await {
            Verdict::Clean => Ok(()),
            verdict => Err(UploadError::Scan(verdict)),
        }
    }

    /// The clean staged file where it goes: moved into its folder under its name (the conflict
    /// policy applied now), or copied into a new version. Returns the file, and the upload as it
    /// landed (its target, for the fields' cleanup).
    async fn move_staged(
        &self,
        r: &Resumable,
        gate: &Gate,
        staged: &str,
        sha1: &[u8; 20],
    ) -> Result<(crate::box_api::FileObject, NewUpload), UploadError> {
        let (folder_id, name, cached) = match &gate.destination {
            Destination::Target(Target::NewVersion { file_id, name }) => {
                return self.copy_as_version(r, staged, file_id, name.clone(), sha1).await;
            }
            Destination::Target(Target::NewFile { folder_id, name }) => {
                (folder_id.clone(), name.clone(), None)
            }
            Destination::Path {
                root,
                folder,
                create,
                name,
            } => {
                let resolved = self.resolve_folder(root, folder, *create).await?;
                let cached = resolved.cached.then(|| (root.clone(), folder.clone(), *create));
                (resolved.folder_id, name.clone(), cached)
            }
        };
        let (mut folder_id, mut cached) = (folder_id, cached);
        let mut attempt_name = name.clone();
        let mut renames = 0;
        loop {
            let err = match self.client.move_file(staged, &folder_id, &attempt_name).await {
                Ok(file) => {
                    let upload = NewUpload {
                        target: Target::NewFile {
                            folder_id,
                            name: attempt_name,
                        },
                        ..r.upload.clone()
                    };
                    return Ok((file, upload));
                }
                Err(err) => err,
            };
            // A folder taken from the path cache that Box says is gone: resolved once more.
            if err.status() == Some(404) {
                if let Some((root, folder, create)) = cached.take() {
                    self.paths.forget(self.client.principal(), &root, &folder);
                    folder_id = self.resolve_folder(&root, &folder, create).await?.folder_id;
                    continue;
                }
            }
            let Some(conflict) = err.name_conflict() else {
                return Err(err.into());
            };
            match gate.on_conflict {
                OnConflict::Rename if renames < super::MAX_RENAMES => {
                    renames += 1;
                    attempt_name = super::numbered_name(&name, renames);
                }
                OnConflict::Rename => return Err(UploadError::NoFreeName(name)),
                OnConflict::Version if conflict.kind == "file" => {
                    return self.copy_as_version(r, staged, &conflict.id, None, sha1).await;
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

    /// A new version of `file_id` made from the clean staged file: its bytes streamed from Box into
    /// a session of the file (or a direct upload), whose commit carries the SHA-1 clamd's bytes had,
    /// so no other bytes can become the version. The staged file is deleted after.
    async fn copy_as_version(
        &self,
        r: &Resumable,
        staged: &str,
        file_id: &str,
        name: Option<String>,
        sha1: &[u8; 20],
    ) -> Result<(crate::box_api::FileObject, NewUpload), UploadError> {
        let upload = NewUpload {
            target: Target::NewVersion {
                file_id: file_id.to_owned(),
                name,
            },
            ..r.upload.clone()
        };
        let prepared = self
            .prepare(UploadRequest {
                upload: upload.clone(),
                on_conflict: OnConflict::Error,
                expected_sha1: Some(*sha1),
            })
            .await?;
        let within = self
            .scan_gate
            .as_deref()
            .map_or(std::time::Duration::from_secs(3600), |g| {
                g.scanner.verdict_wait(upload.size)
            });
        let body = self.client.download_file(staged, within).await?;
        let outcome = self.send(prepared, body).await?;
        self.delete_staged(staged).await;
        Ok((outcome.file, upload))
    }

    /// Best effort: a staged file that stays is in the staging folder only, seen by no one else.
    pub(super) async fn delete_staged(&self, staged: &str) {
        match self.client.delete_file(staged).await {
            Ok(()) => tracing::info!(file_id = staged, "the staged file was deleted"),
            Err(err) if err.status() == Some(404) => {}
            Err(err) => {
                tracing::error!(file_id = staged, error = %err, "the staged file could not be deleted; it stays in the staging folder")
            }
        }
    }
}
