//! `Idempotency-Key` on the plain upload endpoints: a client whose request timed out can send it
//! again with the same key and gets the first answer (status and body) instead of a second file, or
//! 409 `idempotency_key_in_use` while the first is still running.
//!
//! It runs after authentication and the route's own check (a link's caller on a plain endpoint is
//! refused first, `admission::plain_caller`, sharing the request's one authentication). Keys are
//! scoped by the caller's owner (`Owner`: an API key, one link, a Box user, a token's digest; with a
//! bearer token, that token too), never by a key's name alone: a link's holder never reaches the key's
//! answers, nor claims its keys. Each key is bound to the request's fingerprint (SHA-256 of method, path, query, declared size and
//! the client's digest): the same key on another request is 422 `idempotency_key_reused`. The
//! answer is kept in the state store for `idempotency_window_secs`, so a retry that reaches another
//! replica is answered the same. Only successes are kept: a failed upload leaves nothing in Box, so
//! its retry simply runs again (and a 5xx that was Box's hiccup can then succeed).
//!
//! While the upload runs, the key is claimed by a lock of `idempotency_claim_secs`, extended every
//! third of that for as long as the upload runs (a `Lease`): after a crash the key is free again
//! that soon. The
//! upload runs in its own task, which holds the claim until the upload has ended: a client that
//! leaves does not free the key while its upload may still land (its retry then waits with 409, and
//! gets the first answer once it landed).
//!
//! It wraps the plain upload routes (by folder id, by file id, by path) as a middleware (registered in `startup.rs`), so the handlers do
//! not know of it.

use actix_web::body::{to_bytes, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{admission, AppState};
use crate::access::Caller;
use crate::error::ApiError;
use crate::state::{Lease, StoreError};

pub const HEADER: &str = "idempotency-key";
/// What an older gateway stored while the first request ran (read, never written).
const RUNNING: &[u8] = b"running";

/// What the store keeps under the key: the fingerprint it is bound to, and the 201's body once the
/// upload landed.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// Hex SHA-256; empty (an answer kept by an older gateway): any request matches.
    fingerprint: String,
    #[serde(default)]
    answer: Option<String>,
}

impl Stored {
    fn parse(bytes: &[u8]) -> Stored {
        serde_json::from_slice(bytes).unwrap_or_else(|_| Stored {
            fingerprint: String::new(),
            answer: (bytes != RUNNING).then(|| String::from_utf8_lossy(bytes).into_owned()),
        })
    }

    fn matches(&self, fingerprint: &str) -> bool {
        self.fingerprint.is_empty() || self.fingerprint == fingerprint
    }
}

/// What a claim attempt found.
enum Claimed {
    /// This request runs the upload, holding the claim.
    Run(Lease),
    /// It is answered without running: the first answer, 409 or 422.
    Answer(HttpResponse),
}

/// Runs the upload once per `Idempotency-Key` (when the request has one). `methods` are the ones the
/// route takes: any other goes on to its 405, key or not (the key binds only the upload itself).
pub async fn idempotent(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    methods: std::sync::Arc<[Method]>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let upload = methods.contains(req.method());
    let Some(state) = state.filter(|_| upload && req.headers().contains_key(HEADER)) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let key = match admission::plain_caller(req.request(), &state).await {
        Ok(caller) => store_key(req.request(), &caller),
        Err(err) => Err(err),
    };
    let key = match key {
        Ok(key) => key,
        Err(err) => return Ok(req.into_response(err.error_response())),
    };
    let fingerprint = fingerprint(req.request());
    let lease = match claim(&state, &key, &fingerprint).await {
        Ok(Claimed::Run(lease)) => lease,
        Ok(Claimed::Answer(answer)) => return Ok(req.into_response(answer)),
        Err(err) => return Ok(req.into_response(err.error_response())),
    };
    // The upload runs in a task of its own (on this worker: the request's body cannot leave its
    // thread), so that when the client leaves, the upload, which may still land, keeps its claim
    // until it has ended and its answer is kept.
    let (tx, rx) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(async move {
        // The drain waits for it too, though its client is gone.
        let _flight = state.lifecycle.begin_upload();
        let work = async {
            let response = next.call(req).await?;
            keep_answer(&state, &key, &fingerprint, response).await
        };
        // Another request may run the same upload once the claim is lost; this one is not stopped,
        // since it may be landing, but the operator is told.
        let result = lease
            .during(work, || {
                tracing::warn!("lost the claim on an Idempotency-Key while its upload ran");
                state
                    .metrics
                    .idempotent_requests
                    .with_label_values(&["claim_lost"])
                    .inc();
            })
            .await;
        if !matches!(&result, Ok(r) if r.status() == StatusCode::CREATED) {
            // Nothing landed: the key is free for any request again.
            if let Err(err) = state.store.delete(&key).await {
                tracing::warn!(error = %err, "could not free an Idempotency-Key; its claim expires by itself");
            }
        }
        lease.release().await;
        let _ = tx.send(result);
    });
    rx.await.unwrap_or_else(|_| {
        Err(actix_web::error::ErrorInternalServerError(
            "the upload's task failed",
        ))
    })
}

/// Keeps a 201's body under the key (for the whole window) and gives the response back whole.
async fn keep_answer(
    state: &AppState,
    key: &str,
    fingerprint: &str,
    response: ServiceResponse<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if response.status() != StatusCode::CREATED {
        return Ok(response.map_into_boxed_body());
    }
    let (request, response) = response.into_parts();
    let (response, body) = response.into_parts();
    let body = to_bytes(body)
        .await
        .map_err(|_| actix_web::error::ErrorInternalServerError("the answer could not be read"))?;
    let stored = Stored {
        fingerprint: fingerprint.to_owned(),
        answer: Some(String::from_utf8_lossy(&body).into_owned()),
    };
    let kept = match serde_json::to_vec(&stored) {
        Ok(value) => state
            .store
            .put(key, value, state.idempotency.window)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(err) = kept {
        tracing::warn!(error = %err, "could not keep the answer of an Idempotency-Key");
    }
    Ok(ServiceResponse::new(
        request,
        response.set_body(BoxBody::new(body)),
    ))
}

/// Claims the key for this request, or answers for it: the first answer again, 409 while another
/// request holds the claim, 422 when the key was used for another request.
async fn claim(state: &AppState, key: &str, fingerprint: &str) -> Result<Claimed, ApiError> {
    let outcome = |o: &str| state.metrics.idempotent_requests.with_label_values(&[o]).inc();
    let claim_key = crate::state::keys::idempotency_claim(key);
    let lease = Lease::take(&state.store, &claim_key, state.idempotency.claim).await?;
    let stored = state.store.get(key).await?.map(|b| Stored::parse(&b));
    let release = |lease: Option<Lease>| async move {
        if let Some(lease) = lease {
            lease.release().await;
        }
    };
    match stored {
        Some(stored) if !stored.matches(fingerprint) => {
            release(lease).await;
            outcome("mismatch");
            Ok(Claimed::Answer(
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for another request (method, path, query, size or digest differ); use a new key",
                )
                .error_response(),
            ))
        }
        Some(Stored {
            answer: Some(answer), ..
        }) => {
            release(lease).await;
            outcome("replayed");
            serde_json::from_str::<serde_json::Value>(&answer)
                .map_err(|_| StoreError("a stored answer cannot be read".into()))?;
            let mut response = HttpResponse::Created()
                .content_type(mime::APPLICATION_JSON)
                .body(answer);
            response.headers_mut().insert(
                HeaderName::from_static("idempotent-replayed"),
                HeaderValue::from_static("true"),
            );
            Ok(Claimed::Answer(response))
        }
        // Claimed by this request; a claim left by a request that crashed has expired by now.
        _ => match lease {
            Some(lease) => {
                // The key is bound to this request's fingerprint from now on.
                let bound = Stored {
                    fingerprint: fingerprint.to_owned(),
                    answer: None,
                };
                let value = serde_json::to_vec(&bound).map_err(|e| StoreError(e.to_string()))?;
                if let Err(err) = state.store.put(key, value, state.idempotency.window).await {
                    release(Some(lease)).await;
                    return Err(err.into());
                }
                outcome("first");
                Ok(Claimed::Run(lease))
            }
            None => {
                outcome("in_progress");
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still running; retry when it is done",
                ))
            }
        },
    }
}

/// SHA-256 of what makes two requests the same upload: method, path, query, declared size (the
/// body's length, `Upload-Length`) and the client's digest (`Digest`). The fields inside a multipart
/// body are not read for it (they come after the claim); their length is in Content-Length.
fn fingerprint(req: &HttpRequest) -> String {
    let mut h = Sha256::new();
    for part in [req.method().as_str(), req.path(), req.query_string()] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    for name in ["content-length", "upload-length", "digest"] {
        if let Some(value) = req.headers().get(name) {
            h.update(name.as_bytes());
            h.update(b":");
            h.update(value.as_bytes());
        }
        h.update(b"\0");
    }
    hex::encode(h.finalize())
}

/// `idem:<owner>:<SHA-256 of the key>` (`state/keys.rs`); the key itself is the client's and may be
/// anything printable.
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
    // (The endpoint is not part of the scope but of the fingerprint: the same key on another
    // endpoint is 422, not a second upload.) The owner is the store key's own part; callers who share
    // an owner (a key used with pass-through by several Box users) are told apart by their Box token.
    if let Some(auth) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        scope.update(b"\0");
        scope.update(auth.as_bytes());
    }
    Ok(crate::state::keys::idempotency(
        &caller.owner().to_string(),
        &hex::encode(scope.finalize()),
    ))
}
