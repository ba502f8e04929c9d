//! Read, update and delete a file; its bytes; its versions.
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::Endpoint;
use super::super::metadata::scope_id;
use super::super::state::{FileRec, SharedLink, State};
use super::super::Shared;
use super::body::store_then;
use super::items::{check_conflict, file_json, validate_name};
use super::sessions::json_object;
use super::{absolute, gate, header_str};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

/// `GET /2.0/files/{id}[?fields=...]`.
pub async fn get(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let state = shared.lock();
    let f = state.files.get(path.as_str()).ok_or_else(|| not_found(&path))?;
    Ok(HttpResponse::Ok().json(answer(&shared, &state, f, &req)?))
}

/// The standard file object, or with `fields=` the mini object plus the fields asked for (OpenAPI,
/// `fields`: "none of the standard fields are returned ... only fields for the mini representation").
/// `tags` and `metadata.{scope}.{templateKey}` are answered only when asked for, as at Box.
fn answer(shared: &Shared, state: &State, f: &FileRec, req: &HttpRequest) -> Result<Value, BoxApiError> {
    let full = file_json(state, f);
    let Some(fields) = fields_query(req) else {
        return Ok(full);
    };
    let mut out = Map::new();
    for key in [
        "type",
        "id",
        "etag",
        "sequence_id",
        "name",
        "sha1",
        "file_version",
    ] {
        out.insert(key.to_owned(), full[key].clone());
    }
    for field in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if let Some(rest) = field.strip_prefix("metadata.") {
            let (scope, key) = rest.split_once('.').ok_or_else(|| {
                BoxApiError::bad_request(format!("fields: {field} is not metadata.<scope>.<templateKey>"))
            })?;
            let scope = scope_id(scope, shared.enterprise_id())
                .ok_or_else(|| BoxApiError::bad_request(format!("fields: unknown metadata scope {scope}")))?;
            let template = state.templates.get(&(scope.clone(), key.to_owned()));
            let instance = f.metadata.get(&(scope.clone(), key.to_owned()));
            if let (Some(t), Some(i)) = (template, instance) {
                let metadata = out.entry("metadata").or_insert_with(|| json!({}));
                metadata[scope.as_str()][key] = i.json(t, &f.id);
            }
        } else if field == "tags" {
            out.insert("tags".to_owned(), json!(f.tags));
        } else if let Some(v) = full.get(field) {
            out.insert(field.to_owned(), v.clone());
        }
    }
    Ok(Value::Object(out))
}

fn fields_query(req: &HttpRequest) -> Option<String> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()?
        .into_inner()
        .into_iter()
        .find(|(k, _)| k == "fields")
        .map(|(_, v)| v)
}

/// Box's limit on a file's description (OpenAPI `PUT /files/{id}`, `description.maxLength`).
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Box's limit on an item's tags (OpenAPI `File--Full.tags`, `maxItems`).
pub const MAX_TAGS: usize = 100;

/// `PUT /2.0/files/{id}`: description, tags, shared link, name and parent (a move), all or nothing,
/// honouring `If-Match`. A move's name (the new one, or the file's own) must be free in the new
/// folder: 409 `item_name_in_use` naming what is there, as a rename's; a missing folder is 404.
/// Fields Box has but the emulator does not keep (`lock`, ...) are refused rather than ignored, so no
/// test believes they were applied.
pub async fn update(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> Reply {
    let gate = gate(&shared, &req, Some(Endpoint::UpdateFile), true).await?;
    let fields = if body.is_empty() {
        Map::new()
    } else {
        json_object(&body)?
    };
    let result = apply_update(&req, &shared, &path, &fields);
    store_then(&req, result, gate.action.as_ref(), "update")
}

fn apply_update(req: &HttpRequest, shared: &Shared, file_id: &str, fields: &Map<String, Value>) -> Reply {
    let mut state = shared.lock();
    let f = state.files.get(file_id).ok_or_else(|| not_found(file_id))?;
    check_if_match(req, f)?;
    let mut description = None;
    let mut tags = None;
    let mut link = None;
    let mut name = None;
    let mut parent = None;
    for (key, value) in fields {
        match key.as_str() {
            "description" => description = Some(parse_description(value)?),
            "tags" => tags = Some(parse_tags(value)?),
            "shared_link" => link = Some(parse_link(req, f.shared_link.as_ref(), value)?),
            "name" => {
                let n = value
                    .as_str()
                    .ok_or_else(|| BoxApiError::new(400, "item_name_invalid", "name must be a string"))?;
                validate_name(n)?;
                name = Some(n.to_owned());
            }
            "parent" => {
                // `parent.user_id` moves a file into another user's root: not kept here.
                let id = match value.as_object().map(|p| (p.get("id"), p.len())) {
                    Some((Some(Value::String(id)), 1)) => id.clone(),
                    _ => {
                        return Err(BoxApiError::bad_request(
                            "parent must be {\"id\": \"<folder id>\"}",
                        ))
                    }
                };
                if !state.folders.contains_key(&id) {
                    return Err(super::items::missing_parent(&id));
                }
                parent = Some(id);
            }
            "lock" | "disposition_at" | "permissions" | "collections" => {
                return Err(BoxApiError::bad_request(format!(
                    "{key} is a Box field the emulator does not implement"
                )))
            }
            other => return Err(BoxApiError::bad_request(format!("Unknown field {other}"))),
        }
    }
    // The name it will have, in the folder it will be in: taken by another item is a conflict.
    if name.is_some() || parent.is_some() {
        let folder = parent.as_deref().unwrap_or(&f.parent_id);
        let n = name.as_deref().unwrap_or(&f.name);
        check_conflict(shared, &state, folder, n, Some(file_id))?;
    }
    let f = state.files.get_mut(file_id).expect("looked up above");
    if let Some(p) = parent {
        f.parent_id = p;
    }
    if let Some(d) = description {
        f.description = d;
    }
    if let Some(t) = tags {
        f.tags = t;
    }
    if let Some(l) = link {
        f.shared_link = l;
    }
    if let Some(n) = name {
        f.name = n;
    }
    f.modified_at = chrono::Utc::now();
    let f = &state.files[file_id];
    Ok(HttpResponse::Ok().json(answer(shared, &state, f, req)?))
}

fn parse_description(value: &Value) -> Result<String, BoxApiError> {
    match value {
        Value::Null => Ok(String::new()),
        Value::String(s) if s.chars().count() <= MAX_DESCRIPTION_CHARS => Ok(s.clone()),
        Value::String(_) => Err(BoxApiError::bad_request(format!(
            "description: at most {MAX_DESCRIPTION_CHARS} characters"
        ))),
        _ => Err(BoxApiError::bad_request("description must be a string")),
    }
}

fn parse_tags(value: &Value) -> Result<Vec<String>, BoxApiError> {
    let items = value
        .as_array()
        .ok_or_else(|| BoxApiError::bad_request("tags must be an array of strings"))?;
    if items.len() > MAX_TAGS {
        return Err(BoxApiError::bad_request(format!(
            "tags: at most {MAX_TAGS} per item"
        )));
    }
    items
        .iter()
        .map(|t| match t.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_owned()),
            _ => Err(BoxApiError::bad_request("tags must be non-empty strings")),
        })
        .collect()
}

/// `shared_link`: `null` removes it; an object creates or changes it. Rules from the OpenAPI's
/// `PUT /files/{id}` body: `access` is `open`, `company` or `collaborators` (absent: the enterprise's
/// default, `open` here; an existing link keeps its own); a password only with `open`;
/// `permissions.can_download` only with `open` or `company`. A link keeps its URL when it changes.
fn parse_link(
    req: &HttpRequest,
    existing: Option<&SharedLink>,
    value: &Value,
) -> Result<Option<SharedLink>, BoxApiError> {
    let spec = match value {
        Value::Null => return Ok(None),
        Value::Object(m) => m,
        _ => return Err(BoxApiError::bad_request("shared_link must be an object or null")),
    };
    for key in spec.keys() {
        if !matches!(
            key.as_str(),
            "access" | "password" | "vanity_name" | "unshared_at" | "permissions"
        ) {
            return Err(BoxApiError::bad_request(format!(
                "shared_link.{key} is not a field"
            )));
        }
    }
    let access = match spec.get("access") {
        None | Some(Value::Null) => existing.map_or("open", |l| l.access.as_str()).to_owned(),
        Some(Value::String(a)) if matches!(a.as_str(), "open" | "company" | "collaborators") => a.clone(),
        Some(other) => {
            return Err(BoxApiError::bad_request(format!(
                "shared_link.access {other} is not open, company or collaborators"
            )))
        }
    };
    let password_set = match spec.get("password") {
        None => existing.is_some_and(|l| l.password_set),
        Some(Value::Null) => false,
        Some(Value::String(p)) if p.chars().count() >= 8 => true,
        Some(_) => {
            return Err(BoxApiError::bad_request(
                "shared_link.password must be at least eight characters",
            ))
        }
    };
    if password_set && access != "open" {
        return Err(BoxApiError::bad_request(
            "shared_link.password can only be set when access is open",
        ));
    }
    let can_download = match spec.get("permissions").map(|p| (p, p.get("can_download"))) {
        None => existing.map_or(access != "collaborators", |l| l.can_download),
        Some((Value::Object(p), Some(Value::Bool(b)))) if p.len() == 1 => *b,
        Some(_) => {
            return Err(BoxApiError::bad_request(
                "shared_link.permissions must be {\"can_download\": true|false}",
            ))
        }
    };
    let can_download = can_download && access != "collaborators";
    let unshared_at = match spec.get("unshared_at") {
        None => existing.and_then(|l| l.unshared_at.clone()),
        Some(Value::Null) => None,
        Some(Value::String(t)) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => Some(t.clone()),
        Some(_) => {
            return Err(BoxApiError::bad_request(
                "shared_link.unshared_at must be an RFC 3339 date-time",
            ))
        }
    };
    let vanity_name = match spec.get("vanity_name") {
        None => existing.and_then(|l| l.vanity_name.clone()),
        Some(Value::String(v))
            if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            Some(v.clone())
        }
        Some(_) => return Err(BoxApiError::bad_request("shared_link.vanity_name is not valid")),
    };
    let (url, download_url) = match existing {
        Some(l) => (l.url.clone(), l.download_url.clone()),
        None => {
            // Box's link tokens: 32 lowercase letters and digits (`https://app.box.com/s/...`).
            let token: String = (0..32)
                .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
                .collect();
            (
                absolute(req, &format!("/s/{token}")),
                absolute(req, &format!("/shared/static/{token}")),
            )
        }
    };
    Ok(Some(SharedLink {
        access,
        url,
        download_url,
        vanity_name,
        unshared_at,
        password_set,
        can_download,
    }))
}

/// `If-Match` against the file's etag (`*` matches any file).
fn check_if_match(req: &HttpRequest, f: &FileRec) -> Result<(), BoxApiError> {
    let Some(v) = header_str(req, "if-match") else {
        return Ok(());
    };
    let etag = f.etag();
    if v.split(',')
        .map(|t| t.trim().trim_matches('"'))
        .any(|t| t == "*" || t == etag)
    {
        return Ok(());
    }
    Err(BoxApiError::new(
        412,
        "precondition_failed",
        "The resource has been modified. Please retrieve the resource again and retry",
    ))
}

/// Box redirects to a download host; answering 200 with the bytes is what its clients end up with.
pub async fn download(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let file_path = {
        let mut state = shared.lock();
        let file_path = state
            .files
            .get(path.as_str())
            .ok_or_else(|| not_found(&path))?
            .current()
            .path
            .clone();
        state.counters.downloads += 1;
        file_path
    };
    let file = tokio::fs::File::open(&file_path)
        .await
        .map_err(|e| BoxApiError::internal(e.to_string()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .streaming(stream))
}

/// `DELETE /2.0/files/{id}`: Box moves the file to the trash and answers 204; here it is gone, with
/// its metadata. `If-Match` is honoured.
pub async fn delete(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, Some(Endpoint::DeleteFile), true).await?;
    let mut state = shared.lock();
    let f = state.files.get(path.as_str()).ok_or_else(|| not_found(&path))?;
    check_if_match(&req, f)?;
    state.files.remove(path.as_str());
    state.counters.files_deleted += 1;
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /2.0/files/{id}/versions/{version_id}`: 204. Removing the current version makes the one
/// before it current; a file's only version cannot go (delete the file instead): 400.
pub async fn delete_version(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    shared: web::Data<Shared>,
) -> Reply {
    gate(&shared, &req, Some(Endpoint::DeleteFileVersion), true).await?;
    let (file_id, version_id) = path.into_inner();
    let mut state = shared.lock();
    let f = state.files.get_mut(&file_id).ok_or_else(|| not_found(&file_id))?;
    let at = f
        .versions
        .iter()
        .position(|v| v.id == version_id)
        .ok_or_else(|| BoxApiError::not_found(format!("File version {version_id} not found")))?;
    if f.versions.len() == 1 {
        return Err(BoxApiError::bad_request(
            "The only version of a file cannot be deleted; delete the file",
        ));
    }
    f.versions.remove(at);
    state.counters.versions_deleted += 1;
    Ok(HttpResponse::NoContent().finish())
}

/// The app's service account: the user of the developer token and of tokens issued for the
/// enterprise.
pub const EMULATOR_USER_ID: &str = "1000001";

/// `GET /2.0/users/me`: the token's user (Box answers the user object; 401 for a bad token). Each
/// token acts as one user, as at Box: `As-User` when sent; the n-th of `--token` user 1000001 + n;
/// a client-credentials token for a user that user; any other the service account.
pub async fn users_me(req: HttpRequest, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "type": "user",
        "id": user_of(&shared, &req),
        "name": "Emulator User",
        "login": "emulator@example.com",
    })))
}

fn user_of(shared: &Shared, req: &HttpRequest) -> String {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(user) = header("as-user") {
        return user.to_owned();
    }
    let token = header("authorization")
        .and_then(|v| v.get(7..))
        .map(str::trim)
        .unwrap_or_default();
    if let Some(n) = shared.config.tokens.iter().position(|t| t == token) {
        return (1_000_001 + n as u64).to_string();
    }
    let state = shared.lock();
    state
        .tokens
        .get(token)
        .and_then(|t| t.user.clone())
        .unwrap_or_else(|| EMULATOR_USER_ID.to_owned())
}

pub fn not_found(id: &str) -> BoxApiError {
    BoxApiError::not_found(format!("File {id} not found"))
}
