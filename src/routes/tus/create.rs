//! `POST /v1/tus/`: creation (and creation-with-upload). The upload is admitted the way every new
//! upload is (`admission.rs`), its Box session opened, and its record saved; a body, if any, is its
//! first chunk (`patch::append`). `Upload-Metadata` carries the upload's parameters: `filename`,
//! `folder_id` or `path` (an upload by path, below the caller's root) or `file_id`, and the fields that
//! land with the file (`description`, `tags`, `shared_link`, `metadata`), checked here and kept in the
//! record until the last PATCH applies them.
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;

use super::patch::append;
use super::protocol::{check_version, parse_metadata, progress, OCTETS};
use super::record::{save, take_lock, while_locked, Record, TusWrite};
use crate::access::Caller;
use crate::box_api::{NewUpload, Target};
use crate::error::ApiError;
use crate::pipeline::UploadRequest;
use crate::routes::admission::{self, Cost};
use crate::routes::outcome::{Source, UploadReport};
use crate::routes::params::{
    content_length, folder_path, header_u64, validate_id, validate_name, PathText, PathUpload, UploadParams,
};
use crate::routes::AppState;
use crate::state::now_secs;

pub(super) async fn create_upload(
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let caller = admission::caller(req, state).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let report = UploadReport::begin(
        state,
        &caller,
        req,
        Source::Tus {
            id: id.clone(),
            created_ms: Some(crate::state::now_ms()),
        },
    );
    // Until the record is saved the upload does not exist: a refusal ends it, counted as such.
    let mut record = match create(req, state, &caller, &report, &id).await {
        Ok(record) => record,
        Err(err) => {
            report.failed(&err).await;
            return Err(err);
        }
    };
    state
        .metrics
        .tus_uploads
        .with_label_values(&["created", caller.key_label()])
        .inc();
    let size = record.resumable.upload.size;
    tracing::info!(upload_id = %id, size, key = %caller.key_label(), "tus upload created");
    let mut response = HttpResponse::Created();
    response.insert_header((header::LOCATION, format!("/v1/tus/{id}")));
    // creation-with-upload: the body is the first chunk. An empty file is complete at once.
    if with_body(req) || size == 0 {
        let lease = take_lock(state, &id).await?;
        let write = TusWrite {
            state,
            caller: &caller,
            lock: lease.lock(),
            id: &id,
        };
        let appended = while_locked(state, &lease, append(req, payload, write, &mut record, &report)).await;
        lease.release().await;
        match appended {
            Ok(()) => {}
            // The upload exists and is not done: the client asks HEAD where it stands and sends the
            // rest. (An error once complete is the commit's: the upload is gone, so it is answered.)
            // A full store is the same: what did not fit was dropped, and HEAD says so.
            Err(err)
                if (!err.status.is_server_error()
                    || err.code == "tus_storage_full"
                    || err.code == "draining")
                    && !record.resumable.is_complete() =>
            {
                tracing::info!(upload_id = %id, code = err.code, "the first chunk did not fully go in");
            }
            // The whole file came and waits for the scanner, kept: the answer is the error (no
            // success before the file lands) with the upload's Location, where HEAD lands it later.
            Err(err) if super::complete::awaits_landing(&record) => {
                let mut refused = err.error_response();
                if let Ok(location) = header::HeaderValue::from_str(&format!("/v1/tus/{id}")) {
                    refused.headers_mut().insert(header::LOCATION, location);
                }
                return Ok(refused);
            }
            Err(err) => return Err(err),
        }
    }
    progress(&mut response, &record);
    Ok(response.finish())
}

/// creation-with-upload: the request's body is the upload's first chunk.
fn with_body(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == OCTETS.as_bytes())
}

/// Checks, admits and creates the upload: its record, saved. A refusal on the way gives back what
/// the admission took (`Reservation`), the session opened for it included.
async fn create(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    caller: &Caller,
    report: &UploadReport<'_>,
    id: &str,
) -> Result<Record, ApiError> {
    if req.headers().contains_key("upload-defer-length") {
        return Err(ApiError::bad_request(
            "deferred_length_unsupported",
            "Upload-Defer-Length is not supported: Box needs the file's size before the first byte; send Upload-Length",
        ));
    }
    let size = header_u64(req.headers(), "Upload-Length", "invalid_size")?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_size",
            "Upload-Length is required (Box needs the size first)",
        )
    })?;
    // A first chunk longer than the whole file: refused before anything is created.
    if let Some(len) = content_length(req.headers())?.filter(|len| with_body(req) && *len > size) {
        return Err(ApiError::bad_request(
            "size_mismatch",
            format!("a first chunk of {len} bytes passes the upload's length ({size})"),
        ));
    }
    let raw_metadata = req
        .headers()
        .get("upload-metadata")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let metadata = parse_metadata(&raw_metadata)?;
    let mut params = UploadParams::default();
    for (key, value) in &metadata {
        params.set(key, value.clone());
    }
    let name = params.name.clone().or_else(|| metadata.get("filename").cloned());
    let named = |name: Option<String>| {
        name.ok_or_else(|| {
            ApiError::bad_request(
                "invalid_upload_metadata",
                "Upload-Metadata needs a filename (or a file_id)",
            )
        })
    };
    let mut by_path = None;
    let target = match (metadata.get("file_id"), metadata.get("folder_id"), metadata.get("path")) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_upload_metadata",
                "Upload-Metadata gives path and folder_id (or file_id): path names the folder, below the caller's root; send one",
            ))
        }
        (Some(file_id), _, None) => Target::NewVersion {
            file_id: validate_id(file_id, "file")?,
            name: params.name.as_deref().map(validate_name).transpose()?,
        },
        (None, None, Some(path)) => {
            let folder = folder_path(path, PathText::Plain)?;
            let root = caller.path_root(&state.path_root)?;
            let target = Target::NewFile {
                folder_id: root.clone(),
                name: validate_name(&named(name)?)?,
            };
            by_path = Some(PathUpload {
                root,
                folder,
                create_folders: params.create_folders()?,
            });
            target
        }
        (None, folder_id, None) => {
            // A link's page may leave the folder out: the link names it.
            let default = caller.link().map_or("0", |l| l.folder_id.as_str());
            let folder_id = validate_id(folder_id.map_or(default, String::as_str), "folder")?;
            caller.check_folder(&folder_id)?;
            Target::NewFile {
                folder_id,
                name: validate_name(&named(name)?)?,
            }
        }
    };
    caller.check_fields_allowed(params.has_fields())?;
    let fields = params.fields()?;
    report.set_upload_metadata(metadata);
    report.set_target(&target);
    report.set_path(by_path.as_ref().map(|p| p.folder.display()));
    caller.check_size(size)?;
    state.pipeline.check_size(size).map_err(ApiError::from)?;
    let scan = admission::scan_plan(state, caller, Some(size))?;
    // A link's clash is always renamed (write-only: `Caller::on_conflict`).
    let on_conflict = caller.on_conflict(params.on_conflict()?)?;
    let request = UploadRequest {
        upload: NewUpload {
            target,
            size,
            content_created_at: UploadParams::timestamp(&params.content_created_at, "content_created_at")?,
            content_modified_at: UploadParams::timestamp(&params.content_modified_at, "content_modified_at")?,
        },
        on_conflict,
        expected_sha1: params.expected_sha1(None)?,
    };
    if let Target::NewVersion { file_id, .. } = &request.upload.target {
        caller.check_file(&state.pipeline, file_id).await?;
    }
    let fields = admission::check_fields(state, caller, fields).await?;
    let expires_at = now_secs() + state.tus.expiration.as_secs();
    let mut reservation = admission::admit(
        state,
        caller,
        Cost {
            size: Some(size),
            tus: Some((id, expires_at)),
        },
    )
    .await?;
    let created = async {
        let started = admission::start(
            state,
            caller,
            &mut reservation,
            report,
            request,
            by_path.as_ref(),
            scan,
            Some(id),
        )
        .await?;
        let resumable = started.prepared.into_resumable();
        reservation.hold_session(started.pipeline.clone(), resumable.clone());
        let mut record = Record::new(caller, expires_at, raw_metadata, resumable);
        record.fields = (!fields.is_empty()).then_some(fields);
        record.path = by_path.as_ref().map(|p| p.folder.display());
        // Scheduled first: a record the sweeper cannot find would hold its Box session for 7 days.
        state.store.schedule(id, expires_at).await?;
        reservation.hold_schedule(id);
        let lease = take_lock(state, id).await?;
        let saved = save(state, lease.lock(), id, &mut record, &Bytes::new()).await;
        lease.release().await;
        saved?;
        reservation.keep();
        Ok(record)
    }
    .await;
    reservation.settle().await;
    created
}
