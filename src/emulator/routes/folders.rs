//! Read and create folders.
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::Endpoint;
use super::super::state::{FolderRec, State};
use super::super::Shared;
use super::body::store_then;
use super::gate;
use super::items::{check_conflict, file_json, file_mini, folder_exists, folder_mini, validate_name};
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

/// `GET /2.0/folders/{id}/items?fields=&offset=&limit=`: one page of the folder's items, folders then
/// files, by name. `fields` selects what an entry carries besides `type`, `id` and `etag` (Box's rule);
/// without it, the mini objects. `limit` defaults to 100, at most 1000.
pub async fn items(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ItemsQuery>,
    shared: web::Data<Shared>,
) -> Reply {
    gate(&shared, &req, None, true).await?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(BoxApiError::bad_request("limit must be between 1 and 1000"));
    }
    let offset = query.offset.unwrap_or(0);
    let fields: Option<Vec<&str>> = query
        .fields
        .as_deref()
        .map(|f| f.split(',').map(str::trim).collect());
    let state = shared.lock();
    if !folder_exists(&state, &path) {
        return Err(BoxApiError::not_found(format!("Folder {path} not found")));
    }
    let all = children(&state, &path);
    let total = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(_, mini, full)| match &fields {
            None => mini,
            Some(fields) => select(&full, fields),
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "total_count": total,
        "entries": page,
        "offset": offset,
        "limit": limit,
        "order": [{"by": "type", "direction": "ASC"}, {"by": "name", "direction": "ASC"}],
    })))
}

#[derive(serde::Deserialize)]
pub struct ItemsQuery {
    fields: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// `type`, `id` and `etag` always, then the requested fields the item has.
fn select(full: &Value, fields: &[&str]) -> Value {
    let keep = ["type", "id", "etag"].iter().chain(fields);
    let picked: serde_json::Map<String, Value> = keep
        .filter_map(|k| full.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    Value::Object(picked)
}

/// The folder's items, folders first, each by name: (sort key, mini object, full object).
fn children(state: &State, folder_id: &str) -> Vec<((u8, String), Value, Value)> {
    let mut items: Vec<_> = state
        .folders
        .values()
        .filter(|c| c.parent_id.as_deref() == Some(folder_id))
        .map(|c| ((0, c.name.clone()), folder_mini(c), folder_mini(c)))
        .chain(
            state
                .files
                .values()
                .filter(|f| f.parent_id == folder_id)
                .map(|f| ((1, f.name.clone()), file_mini(f), file_json(state, f))),
        )
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items
}

/// `POST /2.0/folders`: 201 with the folder. The name check and the creation happen under one lock,
/// so of two requests for one name exactly one creates it and the other gets 409 `item_name_in_use`
/// naming it (what makes "create each folder once" safe across gateway replicas). A missing parent
/// is 404 `not_found` here (OpenAPI `POST /folders`), unlike uploads' `invalid_parameter`.
pub async fn create(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> Reply {
    let gate = gate(&shared, &req, Some(Endpoint::CreateFolder), true).await?;
    let result = create_folder(&shared, &body);
    store_then(&req, result, gate.action.as_ref(), "folder")
}

fn create_folder(shared: &Shared, body: &[u8]) -> Reply {
    let fields = json_object(body)?;
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
        return Err(BoxApiError::not_found(format!(
            "Parent folder {parent} not found"
        )));
    }
    check_conflict(shared, &state, parent, name, None)?;
    let id = state.create_folder(parent, name);
    Ok(HttpResponse::Created().json(folder_json(&state, &state.folders[&id])))
}

/// `DELETE /2.0/folders/{id}[?recursive=true]`: 204. Box moves the folder to the trash; here it is
/// gone, with everything in it. A folder with items needs `recursive=true` (400 `folder_not_empty`).
pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<DeleteQuery>,
    shared: web::Data<Shared>,
) -> Reply {
    gate(&shared, &req, None, true).await?;
    let mut state = shared.lock();
    if path.as_str() == super::super::ROOT_FOLDER_ID {
        return Err(BoxApiError::new(
            403,
            "access_denied_insufficient_permissions",
            "The root folder cannot be deleted",
        ));
    }
    if !folder_exists(&state, &path) {
        return Err(BoxApiError::not_found(format!("Folder {path} not found")));
    }
    if !query.recursive.unwrap_or(false) && !children(&state, &path).is_empty() {
        return Err(BoxApiError::new(
            400,
            "folder_not_empty",
            "The folder is not empty",
        ));
    }
    state.delete_folder(&path);
    Ok(HttpResponse::NoContent().finish())
}

#[derive(serde::Deserialize)]
pub struct DeleteQuery {
    recursive: Option<bool>,
}

fn folder_json(state: &State, d: &FolderRec) -> Value {
    let entries: Vec<Value> = children(state, &d.id)
        .into_iter()
        .map(|(_, mini, _)| mini)
        .collect();
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
