//! Structured logs: JSON lines in production, readable lines on a terminal. `RUST_LOG` filters.
use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber (once per process; later calls are no-ops, which tests rely on).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = match format {
        "pretty" => true,
        "json" => false,
        _ => std::io::stdout().is_terminal(),
    };
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = if pretty {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
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
    let span = tracing::info_span!("request", request_id = %request_id, method = %req.method(), path = %req.path(), key = tracing::field::Empty);
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
