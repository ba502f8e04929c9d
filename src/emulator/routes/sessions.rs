//! Create, get and abort upload sessions.
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::{Endpoint, FaultAction};
use super::super::state::{Session, SessionState, State};
use super::super::{Shared, BOX_MAX_FILE_SIZE};
use super::items::{check_conflict, check_quota, folder_exists, missing_parent, validate_name};
use super::{absolute, gate};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What a create-session request asks for, validated.
struct NewSession {
    folder_id: String,
    file_id: Option<String>,
    file_name: String,
    file_size: u64,
}

pub async fn create(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> Reply {
    let lie = lies_about_parts(gate(&shared, &req, Some(Endpoint::CreateSession), true).await?);
    let fields = json_object(&body)?;
    let folder_id = match fields.get("folder_id") {
        None | Some(Value::Null) => {
            return Err(BoxApiError::new(
                400,
                "missing_destination",
                "Missing destination folder_id",
            ))
        }
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
        Some(_) => {
            return Err(BoxApiError::new(
                400,
                "invalid_folder_id",
                "folder_id must be a string of digits",
            ))
        }
    };
    let file_name = parse_name(&fields, true)?.unwrap_or_default();
    let file_size = parse_size(&shared, &fields)?;
    let new = NewSession {
        folder_id,
        file_id: None,
        file_name,
        file_size,
    };
    open_session(&req, &shared, new, lie)
}

pub async fn create_version(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> Reply {
    let lie = lies_about_parts(gate(&shared, &req, Some(Endpoint::CreateSession), true).await?);
    let fields = json_object(&body)?;
    let file_id = path.into_inner();
    let name = parse_name(&fields, false)?;
    let file_size = parse_size(&shared, &fields)?;
    let (folder_id, file_name) = {
        let state = shared.lock();
        let f = state
            .files
            .get(&file_id)
            .ok_or_else(|| BoxApiError::not_found(format!("File {file_id} not found")))?;
        (f.parent_id.clone(), name.unwrap_or_else(|| f.name.clone()))
    };
    let new = NewSession {
        folder_id,
        file_id: Some(file_id),
        file_name,
        file_size,
    };
    open_session(&req, &shared, new, lie)
}

pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, BoxApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(BoxApiError::bad_request("Request body must be a JSON object")),
    }
}

fn parse_name(fields: &Map<String, Value>, required: bool) -> Result<Option<String>, BoxApiError> {
    match fields.get("file_name") {
        None | Some(Value::Null) if required => {
            Err(BoxApiError::new(400, "missing_file_name", "Missing file_name"))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => validate_name(s).map(|_| Some(s.clone())),
        Some(_) => Err(BoxApiError::new(
            400,
            "item_name_invalid",
            "file_name must be a string",
        )),
    }
}

fn parse_size(shared: &Shared, fields: &Map<String, Value>) -> Result<u64, BoxApiError> {
    let size = match fields.get("file_size") {
        None | Some(Value::Null) => {
            return Err(BoxApiError::new(400, "missing_file_size", "Missing file_size"))
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            BoxApiError::new(
                400,
                "invalid_file_size",
                "file_size must be a non-negative integer",
            )
        })?,
    };
    let min = shared.config.min_chunked_size;
    if size < min {
        // Box's wording, as seen in SDK issues.
        return Err(BoxApiError::new(
            400,
            "file_size_too_small",
            format!("File size {size} less than minimum allowed for this API: {min}"),
        ));
    }
    if size > BOX_MAX_FILE_SIZE {
        // Without it, the session file's preallocation fails past the file system's limit: a 500.
        return Err(BoxApiError::new(
            403,
            "file_size_limit_exceeded",
            "File size exceeds the folder owner's file size limit",
        ));
    }
    Ok(size)
}

/// The `wrong_total_parts` fault: the session is real, its answer is not.
fn lies_about_parts(gate: super::Gate) -> bool {
    matches!(gate.action, Some(FaultAction::WrongTotalParts))
}

fn open_session(req: &HttpRequest, shared: &Shared, new: NewSession, lie: bool) -> Reply {
    let id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    let mut state = shared.lock();
    preflight(shared, &state, &new)?;
    let (path, file) = shared
        .storage
        .create_session_file(&id, new.file_size)
        .map_err(|e| BoxApiError::internal(e.to_string()))?;
    let part_size = shared.part_size(new.file_size);
    let session = Session {
        id: id.clone(),
        folder_id: new.folder_id,
        file_id: new.file_id,
        file_name: new.file_name,
        file_size: new.file_size,
        part_size,
        total_parts: new.file_size.div_ceil(part_size),
        state: SessionState::Open,
        expires_at: Utc::now() + shared.config.session_ttl,
        parts: Default::default(),
        uploading: Default::default(),
        path,
        file: Arc::new(file),
        fold: Default::default(),
        committed_file_id: None,
    };
    let mut body = session_json(req, &session);
    if lie {
        body["total_parts"] = json!(session.total_parts + 1);
    }
    state.sessions.insert(id, session);
    state.counters.sessions_created += 1;
    Ok(HttpResponse::Created().json(body))
}

/// Creating a session runs the upload preflight (Box docs: "Upload a large file"), so a conflict or a
/// full account is known before any byte is sent.
fn preflight(shared: &Shared, state: &State, new: &NewSession) -> Result<(), BoxApiError> {
    if !folder_exists(state, &new.folder_id) {
        return Err(missing_parent(&new.folder_id));
    }
    check_conflict(
        shared,
        state,
        &new.folder_id,
        &new.file_name,
        new.file_id.as_deref(),
    )?;
    let replacing = new
        .file_id
        .as_ref()
        .and_then(|id| state.files.get(id))
        .map_or(0, |f| f.current().size);
    check_quota(shared, state, new.file_size, replacing)
}

pub fn session_json(req: &HttpRequest, s: &Session) -> Value {
    let base = absolute(req, &format!("/api/2.0/files/upload_sessions/{}", s.id));
    json!({
        "id": s.id,
        "type": "upload_session",
        "session_expires_at": s.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "part_size": s.part_size,
        "total_parts": s.total_parts,
        "num_parts_processed": s.parts.len(),
        "session_endpoints": {
            "upload_part": base,
            "commit": format!("{base}/commit"),
            "abort": base,
            "list_parts": format!("{base}/parts"),
            "status": base,
            "log_event": format!("{base}/log"),
        },
    })
}

/// An open session, or Box's answer for one that is gone or past its TTL.
pub fn open_session_mut<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Session, BoxApiError> {
    let s = state.sessions.get_mut(id).ok_or_else(|| session_not_found(id))?;
    match s.state_now() {
        SessionState::Open => Ok(s),
        SessionState::Expired => Err(BoxApiError::new(
            410,
            "session_expired",
            "The upload session has expired",
        )),
        SessionState::Committed | SessionState::Aborted => Err(session_not_found(id)),
    }
}

pub fn session_not_found(id: &str) -> BoxApiError {
    BoxApiError::not_found(format!("Upload session {id} not found"))
}

pub async fn get(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let mut state = shared.lock();
    let s = open_session_mut(&mut state, &path)?;
    Ok(HttpResponse::Ok().json(session_json(&req, s)))
}

pub async fn abort(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, Some(Endpoint::Abort), true).await?;
    let mut state = shared.lock();
    let s = open_session_mut(&mut state, &path)?;
    s.state = SessionState::Aborted;
    // The open handle keeps in-flight writes valid; the bytes go when the last handle closes.
    let _ = std::fs::remove_file(&s.path);
    state.counters.aborts += 1;
    Ok(HttpResponse::NoContent().finish())
}
