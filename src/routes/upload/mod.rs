//! The plain upload endpoints:
//! - `POST /v1/folders/{folder_id}/files`     multipart, a new file
//! - `PUT  /v1/folders/{folder_id}/files/{name}` raw body, a new file
//! - `POST /v1/files/{file_id}/versions`      multipart, a new version
//! - `PUT  /v1/files/{file_id}/content`       raw body, a new version
//!
//! Each handler takes the request apart (the path, the query, a form's head: `multipart.rs`) into a
//! destination, a size and parameters; `upload` then admits it (`admission.rs`), hands the body to the
//! pipeline, and the report (`outcome.rs`) counts and tells how it ended.
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
use super::params::{content_length, validate_id, validate_name, UploadParams};
use super::AppState;
use crate::access::Caller;
use crate::box_api::{NewUpload, Target};
use crate::error::ApiError;
use crate::pipeline::{spool, UploadError, UploadOutcome, UploadRequest};

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

/// Which of the four endpoints, with its path's ids (and a raw upload's name).
enum Endpoint {
    MultipartToFolder(String),
    MultipartNewVersion(String),
    RawToFolder(String, String),
    RawNewVersion(String),
}

/// What the four endpoints share: the caller (a link's is refused here), the upload's report, the
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
                    })
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
                    })
                })
                .await
            }
            Endpoint::RawToFolder(folder_id, name) => {
                let target = Target::NewFile {
                    folder_id: validate_id(&folder_id, "folder")?,
                    name: validate_name(&name)?,
                };
                raw(req, params, payload, state, caller, target, report).await
            }
            Endpoint::RawNewVersion(file_id) => {
                let target = Target::NewVersion {
                    file_id: validate_id(&file_id, "file")?,
                    name: params.name.as_deref().map(validate_name).transpose()?,
                };
                raw(req, params, payload, state, caller, target, report).await
            }
        }
    }
    .await;
    answer(report, result).await
}

/// The 201 with Box's file object and how it went up, or the error; counted and told either way.
async fn answer(
    report: &UploadReport<'_>,
    result: Result<UploadOutcome, ApiError>,
) -> Result<HttpResponse, ApiError> {
    match result {
        Ok(outcome) => {
            report.landed(&outcome).await;
            Ok(HttpResponse::Created().json(json!({
                "file": outcome.file.0,
                "upload": {
                    "method": outcome.method,
                    "size": outcome.size,
                    "sha1": outcome.sha1_hex,
                    "part_size": outcome.part_size,
                    "parts": outcome.parts,
                    "session_id": outcome.session_id,
                    "duration_ms": report.elapsed().as_millis() as u64,
                }
            })))
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
    target: Target,
    report: &UploadReport<'_>,
) -> Result<UploadOutcome, ApiError> {
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
        target,
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
    // Builds the target from the explicit `name` (if any) and the file part's filename.
    target: impl FnOnce(Option<String>, String) -> Result<Target, ApiError>,
) -> Result<UploadOutcome, ApiError> {
    // Held until the upload ends: the slow path's file Field reads through its form.
    let head = read_head(req, payload, state).await?;
    for (key, value) in &head.fields {
        params.set(key, value.clone());
    }
    let target = target(params.name.clone(), head.filename.clone())?;
    let size = match params.declared_size(req.headers())? {
        Some(n) => Size::Declared(n),
        None => head.derived_size()?.map_or(Size::Unknown, Size::Derived),
    };
    let expected_sha1 = params.expected_sha1(None)?;
    let (file, _form) = (head.file, head.form);
    let upload = Upload {
        params,
        expected_sha1,
        target,
        size,
    };
    upload.send(state, caller, report, file).await
}

/// A plain upload, taken apart from its request.
struct Upload {
    params: UploadParams,
    expected_sha1: Option<[u8; 20]>,
    target: Target,
    size: Size,
}

impl Upload {
    /// The admission's order (`admission.rs`), then the pipeline: the last local checks, the file's
    /// folder at Box for a new version, quotas and Box capacity, a spool for a body of unknown size,
    /// the Box destination, the bytes.
    async fn send(
        self,
        state: &web::Data<AppState>,
        caller: &Caller,
        report: &UploadReport<'_>,
        body: Body,
    ) -> Result<UploadOutcome, ApiError> {
        let Self {
            params,
            expected_sha1,
            target,
            size,
        } = self;
        let on_conflict = params.on_conflict()?;
        let content_created_at = UploadParams::timestamp(&params.content_created_at, "content_created_at")?;
        let content_modified_at =
            UploadParams::timestamp(&params.content_modified_at, "content_modified_at")?;
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
        report.set_target(&target);
        match &target {
            Target::NewFile { folder_id, .. } => caller.check_folder(folder_id)?,
            Target::NewVersion { file_id, .. } => caller.check_file(&state.pipeline, file_id).await?,
        }
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
                let (pipeline, prepared) =
                    admission::start(state, caller, &mut reservation, report, request).await?;
                tracing::Span::current().record("method", prepared.method().as_str());
                pipeline.send(prepared, body).await.map_err(|mut err| {
                    if let UploadError::SizeMismatch { derived: d, .. } = &mut err {
                        *d = derived;
                    }
                    caller.box_error(ApiError::logged(err))
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
