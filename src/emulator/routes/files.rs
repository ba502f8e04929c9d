//! Read a file's object and its bytes.
use super::super::errors::{BoxApiError, Reply};
use super::super::Shared;
use super::gate;
use super::items::file_json;
use actix_web::{web, HttpRequest, HttpResponse};

pub async fn get(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let state = shared.lock();
    let f = state.files.get(path.as_str()).ok_or_else(|| not_found(&path))?;
    Ok(HttpResponse::Ok().json(file_json(&state, f)))
}

/// Box redirects to a download host; answering 200 with the bytes is what its clients end up with.
pub async fn download(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let file_path = {
        let state = shared.lock();
        state
            .files
            .get(path.as_str())
            .ok_or_else(|| not_found(&path))?
            .current()
            .path
            .clone()
    };
    let file = tokio::fs::File::open(&file_path)
        .await
        .map_err(|e| BoxApiError::internal(e.to_string()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .streaming(stream))
}

/// `DELETE /2.0/files/{id}`: Box moves the file to the trash and answers 204; here it is gone.
pub async fn delete(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> Reply {
    gate(&shared, &req, None, true).await?;
    let mut state = shared.lock();
    state
        .files
        .remove(path.as_str())
        .ok_or_else(|| not_found(&path))?;
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
    gate(&shared, &req, None, true).await?;
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

fn not_found(id: &str) -> BoxApiError {
    BoxApiError::not_found(format!("File {id} not found"))
}
