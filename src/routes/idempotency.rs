//! `Idempotency-Key` on the plain upload endpoints: a client whose request timed out can send it
//! again with the same key and gets the first answer (status and body) instead of a second file, or
//! 409 `idempotency_key_in_use` while the first is still running.
//!
//! Keys are scoped by caller (the API key's name; with pass-through and no key, the caller's Box
//! token) and kept in the state store for `idempotency_window_secs`, so a retry that reaches another
//! replica is answered the same. Only successes are kept: a failed upload leaves nothing in Box, so
//! its retry simply runs again (and a 5xx that was Box's hiccup can then succeed).
//!
//! It wraps the four upload routes as a middleware (registered in `startup.rs`), so the handlers do
//! not know of it.
use std::sync::Arc;

use actix_web::body::{to_bytes, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::access::Caller;
use crate::error::ApiError;
use crate::state::{StateStore, StoreError};

pub const HEADER: &str = "idempotency-key";
/// What the store holds while the first request runs; then the 201's body.
const RUNNING: &[u8] = b"running";

/// Runs the upload once per `Idempotency-Key` (when the request has one).
pub async fn once(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    // Only the uploads themselves (POST, PUT); any other method goes on to its 405.
    let upload = matches!(*req.method(), Method::POST | Method::PUT);
    let Some(state) = state.filter(|_| upload && req.headers().contains_key(HEADER)) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let key = state
        .access
        .authenticate(req.headers())
        .and_then(|caller| store_key(req.request(), &caller));
    let key = match key {
        Ok(key) => key,
        Err(err) => return Ok(req.into_response(err.error_response())),
    };
    match claim(&state, &key).await {
        Ok(None) => {}
        Ok(Some(answer)) => return Ok(req.into_response(answer)),
        Err(err) => return Ok(req.into_response(err.error_response())),
    }
    // If the client leaves (the request is dropped), the claim goes, so its retry can run.
    let mut claim = Claim(Some((state.store.clone(), key.clone())));
    let response = next.call(req).await?;
    if response.status() != StatusCode::CREATED {
        return Ok(response.map_into_boxed_body());
    }
    let (request, response) = response.into_parts();
    let (response, body) = response.into_parts();
    let body = to_bytes(body)
        .await
        .map_err(|_| actix_web::error::ErrorInternalServerError("the answer could not be read"))?;
    match state
        .store
        .put(&key, body.to_vec(), state.idempotency_window)
        .await
    {
        Ok(()) => claim.0 = None,
        Err(err) => tracing::warn!(error = %err, "could not keep the answer of an Idempotency-Key"),
    }
    Ok(ServiceResponse::new(
        request,
        response.set_body(BoxBody::new(body)),
    ))
}

/// Claims the key for this request (None), or answers for it: the first answer again, or 409 while
/// the first request runs.
async fn claim(state: &AppState, key: &str) -> Result<Option<HttpResponse>, ApiError> {
    let outcome = |o: &str| state.metrics.idempotent_requests.with_label_values(&[o]).inc();
    if state
        .store
        .put_new(key, RUNNING.to_vec(), state.idempotency_window)
        .await?
    {
        outcome("first");
        return Ok(None);
    }
    match state.store.get(key).await? {
        Some(answer) if answer != RUNNING => {
            outcome("replayed");
            serde_json::from_slice::<serde_json::Value>(&answer)
                .map_err(|_| StoreError("a stored answer cannot be read".into()))?;
            let mut response = HttpResponse::Created()
                .content_type(mime::APPLICATION_JSON)
                .body(answer);
            response.headers_mut().insert(
                HeaderName::from_static("idempotent-replayed"),
                HeaderValue::from_static("true"),
            );
            Ok(Some(response))
        }
        _ => {
            outcome("in_progress");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still running; retry when it is done",
            ))
        }
    }
}

/// `idem:<caller>:<SHA-256 of the key>`; the key itself is the client's and may be anything printable.
fn store_key(req: &HttpRequest, caller: &Caller) -> Result<String, ApiError> {
    let value = req.headers().get(HEADER).map_or(&[][..], HeaderValue::as_bytes);
    let key = value;
    if key.is_empty() || key.len() > 255 || !key.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    let mut scope = Sha256::new();
    scope.update(key);
    // The same key on another endpoint is another request.
    scope.update(b"\0");
    scope.update(req.method().as_str().as_bytes());
    scope.update(b" ");
    scope.update(req.path().as_bytes());
    // Callers without a key of their own are told apart by their Box token.
    if let Some(auth) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        scope.update(b"\0");
        scope.update(auth.as_bytes());
    }
    Ok(format!("idem:{}:{}", caller.name, hex::encode(scope.finalize())))
}

/// Removes a claim whose request did not finish with an answer to keep.
struct Claim(Option<(Arc<dyn StateStore>, String)>);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((store, key)) = self.0.take() {
            tokio::spawn(async move {
                let _ = store.delete(&key).await;
            });
        }
    }
}
