//! `Idempotency-Key` on the plain upload endpoints: a client whose request timed out can send it
//! again with the same key and gets the first answer (status and body) instead of a second file, or
//! 409 `idempotency_key_in_use` while the first is still running.
//!
//! Keys are scoped by caller (the API key's name; with pass-through and no key, the caller's Box
//! token) and kept in the state store for `idempotency_window_secs`, so a retry that reaches another
//! replica is answered the same. Only successes are kept: a failed upload leaves nothing in Box, so
//! its retry simply runs again (and a 5xx that was Box's hiccup can then succeed).
use std::future::Future;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::access::Caller;
use crate::error::ApiError;
use crate::state::StateStore;

pub const HEADER: &str = "idempotency-key";
/// What the store holds while the first request runs.
const RUNNING: &[u8] = b"running";

/// Runs `upload` once per `Idempotency-Key` (when the request has one); answers 201 with its body.
pub async fn once(
    req: &HttpRequest,
    state: &AppState,
    caller: &Caller,
    upload: impl Future<Output = Result<Value, ApiError>>,
) -> Result<HttpResponse, ApiError> {
    let created = |body: &Value| HttpResponse::Created().json(body);
    let Some(key) = store_key(req, caller)? else {
        return upload.await.map(|body| created(&body));
    };
    let window = state.idempotency_window;
    let outcome = |o: &str| state.metrics.idempotent_requests.with_label_values(&[o]).inc();
    let claimed = state.store.put_new(&key, RUNNING.to_vec(), window).await?;
    if !claimed {
        let stored = state.store.get(&key).await?;
        return match stored.as_deref() {
            Some(answer) if answer != RUNNING => {
                outcome("replayed");
                let body: Value = serde_json::from_slice(answer)
                    .map_err(|_| crate::state::StoreError("a stored answer cannot be read".into()))?;
                let mut response = created(&body["body"]);
                response.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
                    actix_web::http::header::HeaderValue::from_static("true"),
                );
                Ok(response)
            }
            _ => {
                outcome("in_progress");
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still running; retry when it is done",
                ))
            }
        };
    }
    outcome("first");
    // If the client leaves (the request is dropped), the claim goes, so its retry can run.
    let mut claim = Claim(Some((state.store.clone(), key.clone())));
    let result = upload.await;
    if let Ok(body) = &result {
        let answer = serde_json::to_vec(&json!({"status": 201, "body": body})).unwrap_or_default();
        match state.store.put(&key, answer, window).await {
            Ok(()) => claim.0 = None,
            Err(err) => tracing::warn!(error = %err, "could not keep the answer of an Idempotency-Key"),
        }
    }
    drop(claim);
    result.map(|body| created(&body))
}

/// `idem:<caller>:<SHA-256 of the key>`; the key itself is the client's and may be anything printable.
fn store_key(req: &HttpRequest, caller: &Caller) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(HEADER) else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if key.is_empty() || key.len() > 255 || !key.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    let mut scope = Sha256::new();
    scope.update(key);
    // Callers without a key of their own are told apart by their Box token.
    if let Some(auth) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        scope.update(b"\0");
        scope.update(auth.as_bytes());
    }
    Ok(Some(format!(
        "idem:{}:{}",
        caller.name,
        hex::encode(scope.finalize())
    )))
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
