//! `POST /v1/upload-links`: an API key's holder makes a link that lets someone without a key upload
//! into one of the key's folders until it expires (the link's page is `routes/page.rs`).
//! `DELETE /v1/upload-links/{id}`: the key's holder revokes one of its links.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use super::client_body::{client_body, from_payload};
use super::params::validate_id;
use super::AppState;
use crate::access::{note_problem, LinkRequest};
use crate::error::ApiError;
use crate::state::now_secs;

/// The largest request body: far above any valid one (the note is its only long field).
const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    folder_id: serde_json::Value,
    expires_in_secs: u64,
    #[serde(default)]
    max_file_size_bytes: Option<u64>,
    #[serde(default)]
    max_files: Option<u32>,
    #[serde(default)]
    note: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_link_request", message)
}

pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = super::admission::caller(&req, &state).await?;
    state.access.check_link_maker(&caller)?;
    let mut bytes = Vec::new();
    // The body has the deadlines of any body the gateway reads (idle timeout, minimum rate): a
    // client that declares one and never sends it is 408, not a connection held for ever.
    let mut body = client_body(payload, &state);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| match from_payload(e) {
            e @ (crate::pipeline::UploadError::ClientTimeout
            | crate::pipeline::UploadError::ClientTooSlow { .. }) => ApiError::from(e),
            e => invalid(format!("the body could not be read: {e}")),
        })?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(invalid(format!("the body is larger than {MAX_BODY_BYTES} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body: Body = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "the body must be JSON {{\"folder_id\", \"expires_in_secs\", optional \"max_file_size_bytes\", \"max_files\", \"note\"}}: {e}"
        ))
    })?;
    // Box ids are strings of digits; a number is taken too.
    let folder_id = match &body.folder_id {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(invalid("folder_id must be a Box folder id")),
    };
    let folder_id =
        validate_id(&folder_id, "folder").map_err(|_| invalid("folder_id must be a Box folder id"))?;
    let max = state.upload_links.max_expiry.as_secs();
    if !(1..=max).contains(&body.expires_in_secs) {
        return Err(invalid(format!(
            "expires_in_secs must be within 1..={max} (upload_link_max_expiry_secs)"
        )));
    }
    if body.max_file_size_bytes == Some(0) || body.max_files == Some(0) {
        return Err(invalid("max_file_size_bytes and max_files must be at least 1"));
    }
    if let Some(problem) = body.note.as_deref().and_then(note_problem) {
        return Err(invalid(problem));
    }
    // Links that would be refused are not counted: a caller fixing its request is not held back.
    state.access.take_link_rate(&caller).await?;
    let (token, claims) = state.access.issue_link(
        &caller,
        LinkRequest {
            folder_id,
            expires_at: now_secs() + body.expires_in_secs,
            max_file_size_bytes: body.max_file_size_bytes,
            max_files: body.max_files,
            note: body.note,
        },
    )?;
    // Required with links on (settings): never the request's Host or X-Forwarded-Host.
    let base = state.upload_links.public_base_url.as_deref().unwrap_or_default();
    state
        .metrics
        .upload_links
        .with_label_values(&[caller.key_label()])
        .inc();
    tracing::info!(key = %caller.key_label(), link_id = %claims.id, folder_id = %claims.folder_id,
        expires_at = claims.expires_at, "upload link made");
    let expires_at = chrono::DateTime::from_timestamp(claims.expires_at as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({
            "id": claims.id,
            "url": format!("{base}{}{token}", super::page::PAGE_PREFIX),
            "expires_at": expires_at,
        })))
}

/// `DELETE /v1/upload-links/{id}`: 204, and the key's link `id` is refused from now on (its page, and
/// every tus request made with it, on every replica). Any id of the right form is accepted: the
/// gateway keeps no list of the links it made.
pub async fn revoke(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = super::admission::caller(&req, &state).await?;
    state.access.check_link_maker(&caller)?;
    let id = req.match_info().get("id").unwrap_or_default();
    state.access.revoke_link(&caller, id).await?;
    Ok(HttpResponse::NoContent()
        .insert_header(("Cache-Control", "no-store"))
        .finish())
}
