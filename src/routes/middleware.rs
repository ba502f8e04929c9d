//! The request middleware, outermost first: every request gets a span and a request id
//! (`trace_request`, one log line when it ends, the link token kept out of it by `loggable_path`);
//! `/v1` requests then pass the drain gate (`drain_gate`).
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::AppState;
use crate::error::ApiError;

/// The request's headers, as OpenTelemetry's propagator reads them.
struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The request's id (`X-Request-Id`), for handlers that pass it on (completion events).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn of(req: &actix_web::HttpRequest) -> Option<String> {
        use actix_web::HttpMessage;
        req.extensions().get::<RequestId>().map(|r| r.0.clone())
    }
}

/// The request's path for the logs: an upload link's page (`/upload/<token>`, routes/page.rs) carries
/// its token, a credential, in the path; it is logged as `/upload/[link]`.
pub fn loggable_path(path: &str) -> &str {
    match path.starts_with(super::page::PAGE_PREFIX) {
        true => "/upload/[link]",
        false => path,
    }
}

/// Middleware: every request gets a span with a request id (the caller's `X-Request-Id` if it sent a
/// sane one, else a new one), returned in `X-Request-Id`, and one log line when it ends.
pub async fn trace_request(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use tracing::Instrument;
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let quiet = matches!(req.path(), "/healthz" | "/readyz" | "/metrics");
    let span = tracing::info_span!("request", request_id = %request_id, method = %req.method(), path = %loggable_path(req.path()),
        key = tracing::field::Empty, trace_id = tracing::field::Empty);
    // Joined to the caller's trace (W3C `traceparent`) when traces are on; logs then carry its id.
    let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    {
        use actix_web::HttpMessage;
        req.extensions_mut().insert(RequestId(request_id.clone()));
    }
    let started = std::time::Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    let duration_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| match quiet && status < 400 {
        true => tracing::debug!(status, duration_ms, "request finished"),
        false => tracing::info!(status, duration_ms, "request finished"),
    });
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            value,
        );
    }
    Ok(response)
}

/// Middleware on `/v1`: while the gateway drains, a new upload is answered 503 `draining`; one let
/// through counts as in flight until its answer is ready, and the drain waits for it.
pub async fn drain_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    // A tus HEAD (and OPTIONS) only reads: answered even while draining, so a client that was cut
    // learns where to resume; not counted, the drain need not wait for it.
    if matches!(
        *req.method(),
        actix_web::http::Method::HEAD | actix_web::http::Method::OPTIONS
    ) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let lifecycle = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.lifecycle.clone());
    let flight = lifecycle.as_ref().map(|l| l.begin_upload());
    if let Some(None) = flight {
        let refusal = ApiError::draining(
            "the gateway is shutting down and takes no new uploads: send it again (another replica takes it)",
        );
        return Ok(req.into_response(refusal.error_response()).map_into_right_body());
    }
    let response = next.call(req).await?;
    drop(flight);
    Ok(response.map_into_left_body())
}
