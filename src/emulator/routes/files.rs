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

fn not_found(id: &str) -> BoxApiError {
    BoxApiError::not_found(format!("File {id} not found"))
}
