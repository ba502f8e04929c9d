//! Resumable uploads: tus 1.0.0 (<https://tus.io/protocols/resumable-upload>) onto one Box upload
//! session, at `/v1/tus/`.
//! - `OPTIONS /v1/tus/`       what the server supports (no key needed)
//! - `POST    /v1/tus/`       creation (and creation-with-upload): opens the Box session (`create.rs`)
//! - `HEAD    /v1/tus/{id}`   where the upload stands (`Upload-Offset`; `Upload-Box-File-Id` once landed)
//! - `PATCH   /v1/tus/{id}`   appends at `Upload-Offset`; the last byte commits (`patch.rs`)
//! - `DELETE  /v1/tus/{id}`   termination: aborts the Box session (`head_delete.rs`)
//!
//! The upload's state (Box session, offset, the whole file's SHA-1 state, its owner, expiry, the
//! landed file's id) is one small record in the state store (`record.rs`), so a restarted gateway or
//! another replica takes the next request; the bytes of the part not yet full are stored apart, read
//! only by a PATCH (or by HEAD's landing of a complete one), and counted against
//! `tus_max_pending_bytes`. Each owner has at most `tus_max_open_uploads_per_key` uploads open.
//! Expired uploads are swept (`sweep.rs`).
//!
//! An upload whose every byte is in lands once (`complete.rs`): by its last PATCH or, when no request
//! is landing it (no scanner verdict yet, or its replica died mid-landing), by HEAD, holding the lock
//! as a PATCH does.
//!
//! A lock per upload, held for the whole of a PATCH, a DELETE or a landing, keeps two requests (on any replicas)
//! from writing the same upload: the second gets 409 `upload_locked`. It is taken only once the id,
//! the owner and the expiry were checked: another caller's request is 404 and takes no lock. Every
//! write is fenced by that lock (the store checks the lock's token atomically with the write), and a
//! request that loses its lock stops: a stale PATCH can never move the offset backwards.
mod complete;
mod create;
mod head_delete;
mod patch;
pub mod protocol;
mod record;
mod sweep;

use actix_web::{web, HttpRequest, HttpResponse};

pub use protocol::{BOX_FILE_ID, FAILURE_CODE, TUS_VERSION};
pub use sweep::sweep;

use super::AppState;

pub async fn options(state: web::Data<AppState>) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    response
        .insert_header(("Tus-Version", TUS_VERSION))
        .insert_header(("Tus-Extension", protocol::EXTENSIONS))
        .insert_header(("Tus-Checksum-Algorithm", "sha1"));
    if let Some(max) = state.tus.max_size {
        response.insert_header(("Tus-Max-Size", max));
    }
    protocol::answer(Ok(response.finish()))
}

pub async fn create(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    protocol::answer(create::create_upload(&req, payload, &state).await)
}

pub async fn head(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match head_delete::head_upload(&req, &state).await {
        Ok(response) => protocol::answer(Ok(response)),
        // A HEAD answer has no body: its error's code goes in a header, so a client can tell a
        // scanner that is down (`scanner_unavailable`) from a landing under way (`upload_completing`).
        Err(err) => {
            let code = actix_web::http::header::HeaderValue::from_static(err.code);
            let mut response = protocol::answer(Err(err));
            response.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static(protocol::ERROR_CODE),
                code,
            );
            response
        }
    }
}

pub async fn patch(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    protocol::answer(patch::patch_upload(&req, payload, &state).await)
}

pub async fn delete(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    protocol::answer(head_delete::delete_upload(&req, &state).await)
}
