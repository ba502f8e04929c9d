//! Direct (multipart) uploads and their preflight.
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::{Endpoint, FaultAction};
use super::super::state::Version;
use super::super::storage::PositionalWriter;
use super::super::Shared;
use super::body::{drain, shaped, store_then, Shaping, SharedBody};
use super::commit::add_version;
use super::items::{check_conflict, check_quota, file_json, folder_exists, missing_parent, validate_name};
use super::sessions::json_object;
use super::{absolute, gate, header_str};
use actix_multipart::{Field, Multipart};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

/// Where a direct upload goes: a new file in `folder_id`, or a new version of `file_id`.
struct Target {
    file_id: Option<String>,
    folder_id: String,
    name: String,
}

pub async fn upload_new(req: HttpRequest, payload: web::Payload, shared: web::Data<Shared>) -> Reply {
    upload(req, payload, shared, None).await
}

pub async fn upload_version(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Reply {
    upload(req, payload, shared, Some(path.into_inner())).await
}

async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
    file_id: Option<String>,
) -> Reply {
    let (cut, bandwidth, action) = match gate(&shared, &req, Some(Endpoint::DirectUpload), true).await {
        Ok(g) => match g.action {
            Some(FaultAction::CutConnection { after_bytes }) => (Some(after_bytes), g.bandwidth, None),
            action => (None, g.bandwidth, action),
        },
        Err(e) => {
            drain(&mut shaped(payload, Shaping::new(&req, None, None))).await;
            return Err(e);
        }
    };
    let body = shaped(payload, Shaping::new(&req, bandwidth, cut));
    let body = SharedBody(Rc::new(RefCell::new(body)));
    let differs = matches!(action, Some(FaultAction::CommitDiffers));
    let result = receive(&req, &shared, body.clone(), file_id, differs).await;
    if result.is_err() {
        let mut rest = body.0.replace(Box::pin(futures_util::stream::empty()));
        drain(&mut rest).await;
    }
    store_then(&req, result, action.as_ref(), "file")
}

async fn receive(
    req: &HttpRequest,
    shared: &Shared,
    body: SharedBody,
    file_id: Option<String>,
    differs: bool,
) -> Reply {
    let mut form = Multipart::new(req.headers(), body);
    let attributes = next_field(&mut form)
        .await?
        .ok_or_else(|| BoxApiError::bad_request("Missing attributes"))?;
    match attributes.name() {
        Some("attributes") => {}
        // Box streams the file as it reads it, so it needs the metadata first.
        Some("file") => {
            return Err(BoxApiError::new(
                400,
                "metadata_after_file_contents",
                "Metadata must be sent before the file contents",
            ))
        }
        _ => {
            return Err(BoxApiError::bad_request(
                "The first multipart field must be attributes",
            ))
        }
    }
    let fields = json_object(&read_small(attributes).await?)?;
    let target = resolve(shared, &fields, file_id)?;
    let file = loop {
        let field = next_field(&mut form)
            .await?
            .ok_or_else(|| BoxApiError::bad_request("Missing file field"))?;
        if field.name() == Some("file") {
            break field;
        }
    };
    let tmp = shared.storage.tmp_path();
    let result = store(req, shared, file, &tmp, &target, &fields, differs).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn next_field(form: &mut Multipart) -> Result<Option<Field>, BoxApiError> {
    match form.next().await {
        None => Ok(None),
        Some(Ok(f)) => Ok(Some(f)),
        Some(Err(e)) => Err(BoxApiError::bad_request(format!("Malformed multipart body: {e}"))),
    }
}

async fn read_small(mut field: Field) -> Result<Vec<u8>, BoxApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = field.next().await {
        out.extend_from_slice(&chunk.map_err(|e| BoxApiError::bad_request(e.to_string()))?);
        if out.len() > 1 << 20 {
            return Err(BoxApiError::bad_request("attributes too large"));
        }
    }
    Ok(out)
}

fn resolve(
    shared: &Shared,
    fields: &Map<String, Value>,
    file_id: Option<String>,
) -> Result<Target, BoxApiError> {
    let name = fields.get("name").and_then(Value::as_str).map(str::to_owned);
    let state = shared.lock();
    let target = match file_id {
        Some(id) => {
            let f = state
                .files
                .get(&id)
                .ok_or_else(|| BoxApiError::not_found(format!("File {id} not found")))?;
            Target {
                folder_id: f.parent_id.clone(),
                name: name.unwrap_or_else(|| f.name.clone()),
                file_id: Some(id),
            }
        }
        None => {
            let folder_id = fields
                .get("parent")
                .and_then(|p| p.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    BoxApiError::new(400, "missing_destination", "attributes.parent.id is required")
                })?;
            let name = name
                .ok_or_else(|| BoxApiError::new(400, "missing_file_name", "attributes.name is required"))?;
            Target {
                file_id: None,
                folder_id: folder_id.to_owned(),
                name,
            }
        }
    };
    validate_name(&target.name)?;
    if !folder_exists(&state, &target.folder_id) {
        return Err(missing_parent(&target.folder_id));
    }
    check_conflict(
        shared,
        &state,
        &target.folder_id,
        &target.name,
        target.file_id.as_deref(),
    )?;
    Ok(target)
}

async fn store(
    req: &HttpRequest,
    shared: &Shared,
    mut field: Field,
    tmp: &PathBuf,
    target: &Target,
    fields: &Map<String, Value>,
    differs: bool,
) -> Reply {
    let file = Arc::new(std::fs::File::create(tmp).map_err(internal)?);
    let mut out = PositionalWriter::new(file, 0);
    let mut sha1 = Sha1::new();
    let mut size = 0u64;
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|e| BoxApiError::bad_request(format!("Reading the file failed: {e}")))?;
        sha1.update(&chunk);
        size += chunk.len() as u64;
        out.push(&chunk).await.map_err(internal)?;
    }
    out.finish().await.map_err(internal)?;
    let sha1: [u8; 20] = sha1.finalize().into();
    let stored = {
        let mut s = sha1;
        // The `commit_differs` fault on a direct upload: what Box stored is not what was sent.
        s[0] ^= if differs { 0xff } else { 0 };
        hex::encode(s)
    };
    let sha1 = hex::encode(sha1);
    // Box's quirk: the Content-MD5 header carries the SHA-1, in hex.
    if let Some(expected) = header_str(req, "content-md5") {
        if !expected.trim().eq_ignore_ascii_case(&sha1) {
            return Err(BoxApiError::new(
                400,
                "bad_digest",
                "The specified content digest does not match the file",
            ));
        }
    }
    let mut state = shared.lock();
    check_conflict(
        shared,
        &state,
        &target.folder_id,
        &target.name,
        target.file_id.as_deref(),
    )?;
    let replacing = target
        .file_id
        .as_ref()
        .and_then(|id| state.files.get(id))
        .map_or(0, |f| f.current().size);
    check_quota(shared, &state, size, replacing)?;
    let version_id = state.next_id();
    let file_id = target.file_id.clone().unwrap_or_else(|| state.next_id());
    let path = shared
        .storage
        .keep_version(tmp, &file_id, &version_id)
        .map_err(internal)?;
    let f = add_version(
        &mut state,
        &file_id,
        &target.folder_id,
        &target.name,
        Version {
            id: version_id,
            sha1: stored,
            size,
            path,
        },
    );
    for (key, slot) in [
        ("content_created_at", &mut f.content_created_at),
        ("content_modified_at", &mut f.content_modified_at),
    ] {
        if let Some(v) = fields.get(key).and_then(Value::as_str) {
            *slot = Some(v.to_owned());
        }
    }
    state.counters.direct_uploads += 1;
    Ok(HttpResponse::Created()
        .json(json!({"total_count": 1, "entries": [file_json(&state, &state.files[&file_id])]})))
}

fn internal(e: std::io::Error) -> BoxApiError {
    BoxApiError::internal(e.to_string())
}

pub async fn preflight_new(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> Reply {
    preflight(req, body, shared, None).await
}

pub async fn preflight_version(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> Reply {
    preflight(req, body, shared, Some(path.into_inner())).await
}

/// The direct upload's checks (name, parent, conflict, quota) without sending the bytes.
async fn preflight(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
    file_id: Option<String>,
) -> Reply {
    gate(&shared, &req, Some(Endpoint::Preflight), true).await?;
    let fields = if body.is_empty() {
        Map::new()
    } else {
        json_object(&body)?
    };
    let target = resolve(&shared, &fields, file_id)?;
    let size = fields.get("size").and_then(Value::as_u64).unwrap_or(0);
    {
        let state = shared.lock();
        let replacing = target
            .file_id
            .as_ref()
            .and_then(|id| state.files.get(id))
            .map_or(0, |f| f.current().size);
        check_quota(&shared, &state, size, replacing)?;
    }
    let path = match &target.file_id {
        Some(id) => format!("/api/2.0/files/{id}/content"),
        None => "/api/2.0/files/content".to_owned(),
    };
    Ok(HttpResponse::Ok().json(json!({"upload_url": absolute(&req, &path), "upload_token": null})))
}
