//! The plain upload endpoints:
//! - `POST /v1/folders/{folder_id}/files`     multipart, a new file
//! - `PUT  /v1/folders/{folder_id}/files/{name}` raw body, a new file
//! - `POST /v1/files/{file_id}/versions`      multipart, a new version
//! - `PUT  /v1/files/{file_id}/content`       raw body, a new version
//! - `POST /v1/paths/{folder path}`           multipart, a new file by path (issue 25)
//! - `PUT  /v1/paths/{folder path}/{name}`    raw body, a new file by path
//!
//! Each handler takes the request apart (the path, the query, a form's head: `multipart.rs`) into a
//! destination, a size and parameters (the fields that land with the file among them); `upload` then
//! admits it (`admission.rs`), hands the body to the pipeline, and the report (`outcome.rs`) counts
//! and tells how it ended. An upload by path starts from the caller's root (`Caller::path_root`): its
//! `Target::NewFile` names the root until the path is resolved, at the upload's start.
mod multipart;
mod multipart_scan;

#[cfg(test)]
pub(super) use multipart_scan::{file_data_offset, suffix_len, HeadScan, Scan};

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tracing::Instrument;

use self::multipart::{read_head, Body};
use super::admission::{self, Cost};
use super::client_body::{client_body, from_payload};
use super::outcome::{Source, UploadReport};
use super::params::{
    content_length, file_path, folder_path, raw_path_tail, validate_id, validate_name, PathText, PathUpload,
    UploadParams,
};
use super::AppState;
use crate::access::Caller;
use crate::box_api::{NewUpload, Target};
use crate::error::ApiError;
use crate::pipeline::{spool, FolderPath, ResolvedFolder, UploadError, UploadOutcome, UploadRequest};

/// Where the size of the file comes from; Box needs it before the first byte.
enum Size {
    /// From `size` or `Upload-Length`, or a raw body's `Content-Length`.
    Declared(u64),
    /// From a multipart body's `Content-Length`, assuming the file is its last part.
    Derived(u64),
    Unknown,
}

pub async fn multipart_to_folder(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = Endpoint::MultipartToFolder(path.into_inner());
    handle(req, endpoint, query.into_inner(), payload, state).await
}

pub async fn multipart_new_version(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = Endpoint::MultipartNewVersion(path.into_inner());
    handle(req, endpoint, query.into_inner(), payload, state).await
}

pub async fn raw_to_folder(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (folder_id, name) = path.into_inner();
    let endpoint = Endpoint::RawToFolder(folder_id, name);
    handle(req, endpoint, query.into_inner(), payload, state).await
}

pub async fn raw_new_version(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = Endpoint::RawNewVersion(path.into_inner());
    handle(req, endpoint, query.into_inner(), payload, state).await
}

/// `POST /v1/paths/{folder path}`: the path is read from the raw URI (`params::raw_path_tail`), not
/// from actix's partly decoded match.
pub async fn multipart_to_path(
    req: HttpRequest,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = Endpoint::MultipartToPath(raw_path_tail(&req).to_owned());
    handle(req, endpoint, query.into_inner(), payload, state).await
}

/// `PUT /v1/paths/{folder path}/{name}`.
pub async fn raw_to_path(
    req: HttpRequest,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = Endpoint::RawToPath(raw_path_tail(&req).to_owned());
    handle(req, endpoint, query.into_inner(), payload, state).await
}

/// Which endpoint, with its path's ids (and a raw upload's name), or its raw folder path.
enum Endpoint {
    MultipartToFolder(String),
    MultipartNewVersion(String),
    RawToFolder(String, String),
    RawNewVersion(String),
    /// The folder path, percent-encoded as sent.
    MultipartToPath(String),
    /// The folder path and the file's name, percent-encoded as sent.
    RawToPath(String),
}

/// What the endpoints share: the caller (a link's is refused here), the upload's report, the
/// destination from the path, and the answer.
async fn handle(
    req: HttpRequest,
    endpoint: Endpoint,
    params: UploadParams,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = admission::plain_caller(&req, &state).await?;
    let report = UploadReport::begin(&state, &caller, &req, Source::Plain);
    let (req, state, caller, report) = (&req, &state, &caller, &report);
    let result = async {
        match endpoint {
            Endpoint::MultipartToFolder(folder_id) => {
                let folder_id = validate_id(&folder_id, "folder")?;
                multipart(req, params, payload, state, caller, report, |name, filename| {
                    Ok(Target::NewFile {
                        folder_id,
                        name: validate_name(&name.unwrap_or(filename))?,
                    }
                    .into())
                })
                .await
            }
            Endpoint::MultipartNewVersion(file_id) => {
                let file_id = validate_id(&file_id, "file")?;
                multipart(req, params, payload, state, caller, report, |name, _filename| {
                    // A new version keeps its name unless `name` asks for another; the part's
                    // filename does not.
                    Ok(Target::NewVersion {
                        file_id,
                        name: name.as_deref().map(validate_name).transpose()?,
                    }
                    .into())
                })
                .await
            }
            Endpoint::RawToFolder(folder_id, name) => {
                let target = Target::NewFile {
                    folder_id: validate_id(&folder_id, "folder")?,
                    name: validate_name(&name)?,
                };
                raw(req, params, payload, state, caller, target.into(), report).await
            }
            Endpoint::RawNewVersion(file_id) => {
                let target = Target::NewVersion {
                    file_id: validate_id(&file_id, "file")?,
                    name: params.name.as_deref().map(validate_name).transpose()?,
                };
                raw(req, params, payload, state, caller, target.into(), report).await
            }
            Endpoint::MultipartToPath(tail) => {
                // The path and the root before the form is read: a bad one costs no body byte.
                let folder = folder_path(&tail, PathText::Url)?;
                let root = caller.path_root(&state.path_root)?;
                multipart(req, params, payload, state, caller, report, |name, filename| {
                    Ok(Destination::at_path(
                        root,
                        folder,
                        validate_name(&name.unwrap_or(filename))?,
                    ))
                })
                .await
            }
            Endpoint::RawToPath(tail) => {
                let (folder, name) = file_path(&tail)?;
                let root = caller.path_root(&state.path_root)?;
                let destination = Destination::at_path(root, folder, validate_name(&name)?);
                raw(req, params, payload, state, caller, destination, report).await
            }
        }
    }
    .await;
    answer(report, result).await
}

/// Where a plain upload goes: its target, and for an upload by path the folders below its root
/// (the target's folder is the root until the path is resolved).
struct Destination {
    target: Target,
    path: Option<(String, FolderPath)>,
}

impl Destination {
    fn at_path(root: String, folder: FolderPath, name: String) -> Self {
        Self {
            target: Target::NewFile {
                folder_id: root.clone(),
                name,
            },
            path: Some((root, folder)),
        }
    }
}

impl From<Target> for Destination {
    fn from(target: Target) -> Self {
        Self { target, path: None }
    }
}

/// A landed upload: its outcome, and where its path led (an upload by path).
struct Landed {
    outcome: UploadOutcome,
    path: Option<(PathUpload, ResolvedFolder)>,
}

/// The 201 with Box's file object and how it went up, or the error; counted and told either way.
async fn answer(
    report: &UploadReport<'_>,
    result: Result<Landed, ApiError>,
) -> Result<HttpResponse, ApiError> {
    match result {
        Ok(Landed { outcome, path }) => {
            report.landed(&outcome).await;
            let mut body = json!({
                "file": outcome.file.0,
                "upload": {
                    "method": outcome.method,
                    "size": outcome.size,
                    "sha1": outcome.sha1_hex,
                    "part_size": outcome.part_size,
                    "parts": outcome.parts,
                    "session_id": outcome.session_id,
                    "duration_ms": report.elapsed().as_millis() as u64,
                },
                "scan": outcome.scan,
            });
            if let Some(fields) = &outcome.fields {
                body["fields"] = json!(fields);
            }
            if let Some((at, folder)) = path {
                body["path"] = json!({
                    "root_id": at.root,
                    "folder": at.folder.display(),
                    "folder_id": folder.folder_id,
                    "created": folder.created,
                });
            }
            Ok(HttpResponse::Created().json(body))
        }
        Err(err) => {
            report.failed(&err).await;
            Err(err)
        }
    }
}

async fn raw(
    req: &HttpRequest,
    params: UploadParams,
    payload: web::Payload,
    state: &web::Data<AppState>,
    caller: &Caller,
    destination: Destination,
    report: &UploadReport<'_>,
) -> Result<Landed, ApiError> {
    let size = match (
        params.declared_size(req.headers())?,
        content_length(req.headers())?,
    ) {
        (Some(n), _) | (None, Some(n)) => Size::Declared(n),
        (None, None) => Size::Unknown,
    };
    let expected_sha1 = params.expected_sha1(Some(req.headers()))?;
    let body = client_body(payload, state).map_err(from_payload).boxed_local();
    let upload = Upload {
        params,
        expected_sha1,
        destination,
        size,
    };
    upload.send(state, caller, report, body).await
}

/// Reads the form's head (its fields are parameters too), then uploads the file part.
async fn multipart(
    req: &HttpRequest,
    mut params: UploadParams,
    payload: web::Payload,
    state: &web::Data<AppState>,
    caller: &Caller,
    report: &UploadReport<'_>,
    // Builds the destination from the explicit `name` (if any) and the file part's filename.
    destination: impl FnOnce(Option<String>, String) -> Result<Destination, ApiError>,
) -> Result<Landed, ApiError> {
    // Held until the upload ends: the slow path's file Field reads through its form.
    let head = read_head(req, payload, state).await?;
    for (key, value) in &head.fields {
        params.set(key, value.clone());
    }
    let destination = destination(params.name.clone(), head.filename.clone())?;
    let size = match params.declared_size(req.headers())? {
        Some(n) => Size::Declared(n),
        None => head.derived_size()?.map_or(Size::Unknown, Size::Derived),
    };
    let expected_sha1 = params.expected_sha1(None)?;
    let (file, _form) = (head.file, head.form);
    let upload = Upload {
        params,
        expected_sha1,
        destination,
        size,
    };
    upload.send(state, caller, report, file).await
}

/// A plain upload, taken apart from its request.
struct Upload {
    params: UploadParams,
    expected_sha1: Option<[u8; 20]>,
    destination: Destination,
    size: Size,
}

impl Upload {
    /// The admission's order (`admission.rs`), then the pipeline: the last local checks (the fields'
    /// syntax among them), the Box reads (a new version's folder, the metadata's templates), quotas
    /// and Box capacity, a spool for a body of unknown size, the Box destination (an upload by path's
    /// folders first), the bytes, the fields applied after the commit.
    async fn send(
        self,
        state: &web::Data<AppState>,
        caller: &Caller,
        report: &UploadReport<'_>,
        body: Body,
    ) -> Result<Landed, ApiError> {
        let Self {
            params,
            expected_sha1,
            destination: Destination { target, path },
            size,
        } = self;
        let on_conflict = params.on_conflict()?;
        let content_created_at = UploadParams::timestamp(&params.content_created_at, "content_created_at")?;
        let content_modified_at =
            UploadParams::timestamp(&params.content_modified_at, "content_modified_at")?;
        let fields = params.fields()?;
        let by_path = match path {
            Some((root, folder)) => Some(PathUpload {
                root,
                folder,
                create_folders: params.create_folders()?,
            }),
            None => None,
        };
        let known_size = match size {
            Size::Declared(n) | Size::Derived(n) => {
                caller.check_size(n)?;
                state.pipeline.check_size(n).map_err(ApiError::from)?;
                Some(n)
            }
            Size::Unknown if state.spool.max_bytes == 0 => {
                return Err(ApiError::new(
                    actix_web::http::StatusCode::LENGTH_REQUIRED,
                    "length_required",
                    "the file's size is unknown: send a `size` field or query parameter, an Upload-Length header, or a Content-Length",
                ))
            }
            Size::Unknown => None,
        };
        let mut scan = admission::scan_plan(state, caller, known_size)?;
        report.set_target(&target);
        report.set_path(by_path.as_ref().map(|p| p.folder.display()));
        match (&target, &by_path) {
            // Its root is the caller's own (`Caller::path_root`), checked with the path.
            (_, Some(_)) => {}
            (Target::NewFile { folder_id, .. }, None) => caller.check_folder(folder_id)?,
            (Target::NewVersion { file_id, .. }, None) => caller.check_file(&state.pipeline, file_id).await?,
        }
        let fields = admission::check_fields(state, caller, fields).await?;
        let mut reservation = admission::admit(
            state,
            caller,
            Cost {
                size: known_size,
                tus: None,
            },
        )
        .await?;
        let received = report.received();
        let body: Body = body
            .inspect_ok(move |chunk| received.set(received.get() + chunk.len() as u64))
            .boxed_local();
        let result = async {
            let (size, derived, body, _spooled) = match size {
                Size::Declared(n) => (n, false, body, None),
                Size::Derived(n) => (n, true, body, None),
                Size::Unknown => {
                    // The key's limit bounds the spool too; a larger body is refused as it arrives.
                    let limit = caller
                        .max_file_size_bytes()
                        .map_or(state.spool.max_bytes, |l| l.min(state.spool.max_bytes));
                    let spooled = match spool(body, &state.spool.dir, limit, &state.spool_space).await {
                        Err(UploadError::TooLarge { .. }) if limit < state.spool.max_bytes => {
                            return Err(caller.too_large())
                        }
                        other => other.map_err(ApiError::logged)?,
                    };
                    state.pipeline.check_size(spooled.size).map_err(ApiError::from)?;
                    scan = admission::scan_plan(state, caller, Some(spooled.size))?;
                    reservation.take_bytes(caller, spooled.size).await?;
                    let body = spooled.stream().await.map_err(ApiError::logged)?.boxed_local();
                    (spooled.size, false, body, Some(spooled))
                }
            };
            let request = UploadRequest {
                upload: NewUpload {
                    target,
                    size,
                    content_created_at,
                    content_modified_at,
                },
                on_conflict,
                expected_sha1,
            };
            // The upload's span (a child of the request's): the Box calls below are its children.
            let span = tracing::info_span!("upload", size, method = tracing::field::Empty);
            async {
                let started = admission::start(
                    state,
                    caller,
                    &mut reservation,
                    report,
                    request,
                    by_path.as_ref(),
                    scan,
                    None,
                )
                .await?;
                tracing::Span::current().record("method", started.prepared.method().as_str());
                let prepared = started.prepared.with_fields(fields);
                let outcome = started.pipeline.send(prepared, body).await.map_err(|mut err| {
                    if let UploadError::SizeMismatch { derived: d, .. } = &mut err {
                        *d = derived;
                    }
                    caller.box_error(ApiError::logged(err))
                })?;
                Ok(Landed {
                    outcome,
                    path: by_path.zip(started.folder),
                })
            }
            .instrument(span)
            .await
        }
        .await;
        reservation.settle().await;
        result
    }
}
