//! Metadata templates' schemas and the instances applied to files (`/2.0/metadata_templates/...`,
//! `/2.0/files/{id}/metadata...`), with Box's schema check and its error codes (OpenAPI:
//! `schema_validation_failed`, `tuple_already_exists`, `instance_not_found`,
//! `instance_tuple_not_found`; the creation's 400 and 409 in the `MetadataError` shape).
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::Endpoint;
use super::super::metadata::{apply_patch, scope_id, Instance, StoredTemplate};
use super::super::state::State;
use super::super::Shared;
use super::body::store_then;
use super::files::not_found as file_not_found;
use super::sessions::json_object;
use super::{gate, header_str};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// `GET /2.0/metadata_templates/{scope}/{template_key}/schema`.
pub async fn schema(req: HttpRequest, path: web::Path<(String, String)>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, Some(Endpoint::GetMetadataTemplate), true).await?;
    let (scope, key) = path.into_inner();
    let scope = scope_of(&shared, &scope)?;
    let state = shared.lock();
    let t = state
        .templates
        .get(&(scope, key.clone()))
        .ok_or_else(|| BoxApiError::not_found(format!("Specified Metadata Template not found: {key}")))?;
    Ok(HttpResponse::Ok().json(t.json()))
}

/// `GET /2.0/files/{id}/metadata`: every instance on the file (Box does not page it).
pub async fn list(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let state = shared.lock();
    let f = state
        .files
        .get(path.as_str())
        .ok_or_else(|| file_not_found(&path))?;
    let entries: Vec<Value> = f
        .metadata
        .iter()
        .filter_map(|(k, i)| state.templates.get(k).map(|t| i.json(t, &f.id)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"entries": entries, "limit": 100})))
}

type InstancePath = web::Path<(String, String, String)>;

/// `GET /2.0/files/{id}/metadata/{scope}/{template_key}`.
pub async fn get(req: HttpRequest, path: InstancePath, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let (file_id, scope, key) = path.into_inner();
    let scope = scope_of(&shared, &scope)?;
    let state = shared.lock();
    let (t, i) = instance(&state, &file_id, &scope, &key)?;
    Ok(HttpResponse::Ok().json(i.json(t, &file_id)))
}

/// `POST /2.0/files/{id}/metadata/{scope}/{template_key}`: 201 with the instance.
pub async fn create(
    req: HttpRequest,
    path: InstancePath,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> Reply {
    let gate = gate(&shared, &req, Some(Endpoint::CreateMetadata), true).await?;
    let (file_id, scope, key) = path.into_inner();
    let result = (|| {
        let scope = scope_of(&shared, &scope)?;
        let values = json_object(&body)?;
        let mut state = shared.lock();
        let f = state
            .files
            .get(&file_id)
            .ok_or_else(|| file_not_found(&file_id))?;
        let t = template(&state, &scope, &key)?;
        if f.metadata.contains_key(&(scope.clone(), key.clone())) {
            return Err(BoxApiError::metadata(
                409,
                "tuple_already_exists",
                "An instance of the metadata template already exists on the file.",
            ));
        }
        let values = t
            .check(&values)
            .map_err(|why| BoxApiError::metadata(400, "schema_validation_failed", why))?;
        let t = t.clone();
        let i = Instance {
            id: uuid::Uuid::new_v4().to_string(),
            version: 0,
            values,
        };
        let body = i.json(&t, &file_id);
        let f = state.files.get_mut(&file_id).expect("looked up above");
        f.metadata.insert((scope, key), i);
        Ok(HttpResponse::Created().json(body))
    })();
    store_then(&req, result, gate.action.as_ref(), "metadata instance")
}

/// `PUT /2.0/files/{id}/metadata/{scope}/{template_key}`: a JSON Patch (`application/json-patch+json`,
/// the type Box's OpenAPI and SDKs send), applied whole or not at all, the result checked against
/// the template as a new instance is.
pub async fn update(
    req: HttpRequest,
    path: InstancePath,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> Reply {
    gate(&shared, &req, Some(Endpoint::UpdateMetadata), true).await?;
    let (file_id, scope, key) = path.into_inner();
    let scope = scope_of(&shared, &scope)?;
    if !header_str(&req, "content-type").is_some_and(|c| c.starts_with("application/json-patch+json")) {
        return Err(BoxApiError::bad_request(
            "Content-Type must be application/json-patch+json",
        ));
    }
    let ops: Value = serde_json::from_slice(&body)
        .map_err(|_| BoxApiError::bad_request("The body must be an array of JSON Patch operations"))?;
    let mut state = shared.lock();
    let (t, i) = instance(&state, &file_id, &scope, &key)?;
    let patched = apply_patch(&i.values, &ops).map_err(BoxApiError::bad_request)?;
    let values = t
        .check(&patched)
        .map_err(|why| BoxApiError::new(400, "schema_validation_failed", why))?;
    let t = t.clone();
    let f = state.files.get_mut(&file_id).expect("looked up above");
    let i = f.metadata.get_mut(&(scope, key)).expect("looked up above");
    i.values = values;
    i.version += 1;
    Ok(HttpResponse::Ok().json(i.json(&t, &file_id)))
}

/// `DELETE /2.0/files/{id}/metadata/{scope}/{template_key}`: 204.
pub async fn delete(req: HttpRequest, path: InstancePath, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let (file_id, scope, key) = path.into_inner();
    let scope = scope_of(&shared, &scope)?;
    let mut state = shared.lock();
    instance(&state, &file_id, &scope, &key)?;
    if let Some(f) = state.files.get_mut(&file_id) {
        f.metadata.remove(&(scope, key));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// 400 `bad_request` for a scope that is not `global` or `enterprise` (OpenAPI, get schema's 400).
fn scope_of(shared: &Shared, scope: &str) -> Result<String, BoxApiError> {
    scope_id(scope, shared.enterprise_id())
        .ok_or_else(|| BoxApiError::bad_request(format!("Invalid scope {scope}: use global or enterprise")))
}

/// A template an instance may be made of; Box's 404 for a missing one (box-windows-sdk-v2#385 shows
/// the message).
fn template<'a>(state: &'a State, scope: &str, key: &str) -> Result<&'a StoredTemplate, BoxApiError> {
    state
        .templates
        .get(&(scope.to_owned(), key.to_owned()))
        .ok_or_else(|| {
            BoxApiError::new(
                404,
                "instance_tuple_not_found",
                format!("Instance not found for '\"template\", \"scopedKey\", \"{scope}\", \"{key}\"'"),
            )
        })
}

fn instance<'a>(
    state: &'a State,
    file_id: &str,
    scope: &str,
    key: &str,
) -> Result<(&'a StoredTemplate, &'a Instance), BoxApiError> {
    let f = state.files.get(file_id).ok_or_else(|| file_not_found(file_id))?;
    let missing = || BoxApiError::new(404, "instance_not_found", "Instance not found.");
    let i = f
        .metadata
        .get(&(scope.to_owned(), key.to_owned()))
        .ok_or_else(missing)?;
    let t = state
        .templates
        .get(&(scope.to_owned(), key.to_owned()))
        .ok_or_else(missing)?;
    Ok((t, i))
}
