//! `GET /healthz` and `GET /metrics`.
use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
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
