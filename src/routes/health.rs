//! `GET /healthz` (liveness: the process answers), `GET /readyz` (readiness: it takes uploads and Box
//! answers; checked in the background, see `lifecycle.rs`) and `GET /metrics`.
use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.lifecycle.readiness() {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(not_ready) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "not_ready",
            "reason": not_ready.reason,
            "message": not_ready.message,
        })),
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut out = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut out) {
        Ok(()) => HttpResponse::Ok().content_type(prometheus::TEXT_FORMAT).body(out),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            HttpResponse::InternalServerError().finish()
        }
    }
}
