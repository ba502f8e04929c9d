//! Read and create folders.
use super::super::errors::{BoxApiError, Reply};
use super::super::state::{FolderRec, State};
use super::super::Shared;
use super::gate;
use super::items::{check_conflict, file_mini, folder_exists, folder_mini, missing_parent, validate_name};
use super::sessions::json_object;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

pub async fn get(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let state = shared.lock();
    let d = state
        .folders
        .get(path.as_str())
        .ok_or_else(|| BoxApiError::not_found(format!("Folder {path} not found")))?;
    Ok(HttpResponse::Ok().json(folder_json(&state, d)))
}

pub async fn create(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let fields = json_object(&body)?;
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| BoxApiError::bad_request("name is required"))?;
    let parent = fields
        .get("parent")
        .and_then(|p| p.get("id"))
        .and_then(Value::as_str)
        .ok_or_else(|| BoxApiError::bad_request("parent.id is required"))?;
    validate_name(name)?;
    let mut state = shared.lock();
    if !folder_exists(&state, parent) {
        return Err(missing_parent(parent));
    }
    check_conflict(&shared, &state, parent, name, None)?;
    let id = state.create_folder(parent, name);
    Ok(HttpResponse::Created().json(folder_json(&state, &state.folders[&id])))
}

fn folder_json(state: &State, d: &FolderRec) -> Value {
    let mut entries: Vec<(String, Value)> = state
        .folders
        .values()
        .filter(|c| c.parent_id.as_deref() == Some(d.id.as_str()))
        .map(|c| (c.name.clone(), folder_mini(c)))
        .chain(
            state
                .files
                .values()
                .filter(|f| f.parent_id == d.id)
                .map(|f| (f.name.clone(), file_mini(f))),
        )
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let entries: Vec<Value> = entries.into_iter().map(|(_, v)| v).collect();
    json!({
        "type": "folder",
        "id": d.id,
        "etag": "0",
        "sequence_id": "0",
        "name": d.name,
        "created_at": d.created_at.to_rfc3339(),
        "modified_at": d.created_at.to_rfc3339(),
        "parent": d.parent_id.as_ref().and_then(|p| state.folders.get(p)).map(folder_mini),
        "item_status": "active",
        "item_collection": {
            "total_count": entries.len(),
            "entries": entries,
            "offset": 0,
            "limit": 100,
            "order": [{"by": "type", "direction": "ASC"}, {"by": "name", "direction": "ASC"}],
        },
    })
}
