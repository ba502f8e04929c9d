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

/// The request's path as logs (and trace spans) may show it. An upload link's page
/// (`/upload/<token>`, routes/page.rs) carries its token, a credential, in the path, and a client may
/// spell that path many ways: actix routes on the percent-decoded path (`/%75pload/<token>` is the
/// page), and 404s (`//upload/<token>`, `/UPLOAD/<token>`) are logged too. So, segment by segment,
/// each read percent-decoded (repeatedly: `%2575` is `%75` once decoded):
/// - everything after a segment that reads `upload` (in any case) is `[link]`: the page's route, and
///   every near miss of it;
/// - a segment holding a run of `TOKEN_RUN` or more base64url characters is `[redacted]`: a token's
///   MAC alone is 43 of them, wherever in a path it is put. (Upload ids are 32 hex digits, kept; a
///   file name with such a run loses it from the request's line only.)
///
/// The route actix matched (`match_pattern`) is logged beside it when the request ends.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(segments.len());
    let mut changed = false;
    for (i, segment) in segments.iter().enumerate() {
        let decoded = fully_decoded(segment);
        match looks_like_token(&decoded) {
            true => {
                out.push("[redacted]");
                changed = true;
            }
            false => out.push(segment),
        }
        if i > 0 && i + 1 < segments.len() && decoded.eq_ignore_ascii_case("upload") {
            out.push("[link]");
            changed = true;
            break;
        }
    }
    match changed {
        true => std::borrow::Cow::Owned(out.join("/")),
        false => std::borrow::Cow::Borrowed(path),
    }
}

/// The shortest run of base64url characters taken for (a piece of) a link token: a token's MAC is 43.
const TOKEN_RUN: usize = 40;

fn looks_like_token(segment: &str) -> bool {
    let mut run = 0;
    for b in segment.bytes() {
        run = match b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            true => run + 1,
            false => 0,
        };
        if run >= TOKEN_RUN {
            return true;
        }
    }
    false
}

/// A path segment percent-decoded until it no longer changes (at most a few times: each pass
/// shortens it), invalid UTF-8 replaced.
fn fully_decoded(segment: &str) -> String {
    let mut text = segment.to_owned();
    for _ in 0..4 {
        let next = percent_encoding::percent_decode_str(&text)
            .decode_utf8_lossy()
            .into_owned();
        if next == text {
            break;
        }
        text = next;
    }
    text
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
        key = tracing::field::Empty, trace_id = tracing::field::Empty,
        // An upload's wait for its Box user's capacity (`admission.rs`): a client faster than
        // `box_rate_uploads_per_minute` spends its time here, with its body unread in the socket.
        box_rate_wait_ms = tracing::field::Empty);
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
    // The route as registered (`/upload/{token}`, `/v1/tus/{id}`), never its values; none for a 404.
    let route = response.request().match_pattern().unwrap_or_default();
    span.in_scope(|| match quiet && status < 400 {
        true => tracing::debug!(status, duration_ms, route, "request finished"),
        false => tracing::info!(status, duration_ms, route, "request finished"),
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

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJpIjoiMDEyMzQ1Njc4OWFiY2RlZiIsImsiOiJ0ZWFtIiwiZCI6IkFBQUFBQUFBQUFBQUFBQUEiLCJmIjoiMCIsImUiOjE3MDAwMDAwMDB9.Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXU";

    #[test]
    fn a_link_token_never_survives_in_any_spelling_of_the_path() {
        let tag = TOKEN.rsplit('.').next().unwrap();
        let encoded: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
        let cut = format!("{}%00{}", &TOKEN[..60], &TOKEN[60..]);
        for path in [
            format!("/upload/{TOKEN}"),
            format!("//upload/{TOKEN}"),
            format!("/UPLOAD/{TOKEN}"),
            format!("/%75pload/{TOKEN}"),
            format!("/%2575pload/{TOKEN}"),
            format!("/upload/{TOKEN}/"),
            format!("/upload//{TOKEN}"),
            format!("/upload/{TOKEN}x"),
            format!("/v1/../upload/{TOKEN}"),
            format!("/elsewhere/{TOKEN}"),
            format!("/elsewhere/{encoded}"),
            format!("/x/{cut}"),
            format!("/upload/{}", &TOKEN[..30]),
            format!("/{tag}"),
        ] {
            let logged = loggable_path(&path);
            assert!(!logged.contains(tag), "{path} -> {logged}");
            assert!(!logged.contains(&TOKEN[..30]), "{path} -> {logged}");
        }
        assert_eq!(loggable_path(&format!("/upload/{TOKEN}")), "/upload/[link]");
        assert_eq!(loggable_path(&format!("//upload/{TOKEN}")), "//upload/[link]");
    }

    #[test]
    fn other_paths_are_logged_as_they_are() {
        for path in [
            "/v1/tus/0123456789abcdef0123456789abcdef",
            "/v1/folders/12345/files/Quarterly%20report%202026.pdf",
            "/v1/upload-links",
            "/upload",
            "/assets/upload-page.js",
            "/",
        ] {
            assert_eq!(loggable_path(path), path);
        }
    }
}
