//! Thin handlers: parse the request into a typed upload, hand its body to the pipeline, shape the
//! answer. Every route is registered here, in one table (`configure`). The plumbing the handlers
//! share has rooms of its own:
//! - `admission.rs`: the one order in which every upload is let in, and what it gives back if refused
//! - `outcome.rs`: how an upload that ends is counted, told (completion event) and logged
//! - `client_body.rs`: the deadlines on a client's body (idle, minimum rate)
//! - `params.rs`: the upload's parameters and the headers that shape a body
//! - `idempotency.rs`: `Idempotency-Key` on the plain endpoints (a middleware)
//! - `middleware.rs`: the request's span and id, the drain gate
pub mod admission;
pub mod client_body;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod idempotency;
pub mod links;
pub mod middleware;
pub mod outcome;
pub mod page;
pub mod params;
pub mod tus;
pub mod upload;

use std::sync::Arc;

use actix_web::http::{header, Method};
use actix_web::{middleware as actix_middleware, web, HttpResponse, ResponseError};

use crate::access::Access;
use crate::config::{ClientLimits, IdempotencySettings, LinkSettings, SpoolSettings, TusSettings};
use crate::error::{extractor_error, ApiError};
use crate::lifecycle::Lifecycle;
use crate::metrics::GatewayMetrics;
use crate::pipeline::Pipeline;
use crate::state::StateStore;

/// What every handler shares, built once in `startup.rs`.
pub struct AppState {
    /// Who may upload where (API keys, pass-through), checked before the pipeline is called.
    pub access: Access,
    pub pipeline: Pipeline,
    pub metrics: Arc<GatewayMetrics>,
    pub registry: prometheus::Registry,
    /// What a client sending a body must keep up (idle timeout, minimum rate).
    pub client: ClientLimits,
    /// Bodies of unknown size (and checksummed tus chunks) go to disk here first.
    pub spool: SpoolSettings,
    /// The spool of all uploads together, against `spool_max_total_bytes`.
    pub spool_space: crate::pipeline::SpoolSpace,
    /// Readiness and the drain: uploads are admitted through it.
    pub lifecycle: Arc<Lifecycle>,
    /// State shared by requests and replicas (embedded or Redis): tus uploads, `Idempotency-Key`
    /// answers, quotas, pacer rates, the events' outbox, link slots, open-upload sets (`state/keys.rs`
    /// lists its keys).
    pub store: Arc<dyn StateStore>,
    pub tus: TusSettings,
    pub idempotency: IdempotencySettings,
    /// Completion events (webhooks): the routes hand each upload's outcome here before answering.
    pub events: Arc<crate::events::Events>,
    /// Upload links and their page.
    pub upload_links: LinkSettings,
    /// Box's rate limits: new uploads reserve their first upload call through it (`admission.rs`).
    pub pacer: Arc<crate::box_api::Pacer>,
    /// The folder id uploads by path start from for callers without an API key (`path_root`).
    pub path_root: String,
}

/// Every route, with RFC-correct 405 `Allow` answers and a JSON 404 for the rest (zero2prod's `run()`;
/// `startup.rs` wraps it in the request middleware).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| extractor_error(e)))
        .app_data(web::PathConfig::default().error_handler(|e, _| extractor_error(e)))
        .service(
            web::resource("/healthz")
                .get(health::healthz)
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/readyz")
                .get(health::readyz)
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/metrics")
                .get(health::metrics)
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource(format!("{}{{token}}", page::PAGE_PREFIX))
                .get(page::show)
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/assets/{name}")
                .get(page::asset)
                .default_service(not_allowed("GET")),
        )
        .service(
            web::scope("/v1")
                .wrap(actix_middleware::from_fn(middleware::drain_gate))
                .service(upload_route("/folders/{folder_id}/files", "POST").post(upload::multipart_to_folder))
                .service(upload_route("/folders/{folder_id}/files/{name}", "PUT").put(upload::raw_to_folder))
                .service(
                    upload_route("/files/{file_id}/versions", "POST").post(upload::multipart_new_version),
                )
                .service(upload_route("/files/{file_id}/content", "PUT").put(upload::raw_new_version))
                // Upload by path: the tail (any number of segments) is read from the raw URI by the
                // handlers (`params::raw_path_tail`), not from this match.
                .service(
                    upload_route("/paths/{tail:.*}", "POST, PUT")
                        .post(upload::multipart_to_path)
                        .put(upload::raw_to_path),
                )
                .service(
                    web::resource("/upload-links")
                        .post(links::create)
                        .default_service(not_allowed("POST")),
                )
                .service(
                    web::resource("/upload-links/{id}")
                        .delete(links::revoke)
                        .default_service(not_allowed("DELETE")),
                )
                .service(
                    web::resource("/tus/")
                        .route(web::method(Method::OPTIONS).to(tus::options))
                        .post(tus::create)
                        .default_service(not_allowed("OPTIONS, POST")),
                )
                .service(
                    web::resource("/tus/{id}")
                        .route(web::method(Method::OPTIONS).to(tus::options))
                        .route(web::head().to(tus::head))
                        .route(web::method(Method::PATCH).to(tus::patch))
                        .delete(tus::delete)
                        .default_service(not_allowed("OPTIONS, HEAD, PATCH, DELETE")),
                ),
        )
        .default_service(web::to(not_found));
}

/// The plain upload endpoints: each takes an `Idempotency-Key` (on the methods in `allow`).
fn upload_route(
    path: &str,
    allow: &'static str,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<actix_web::body::BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let methods: Arc<[Method]> = allow
        .split(", ")
        .map(|m| Method::from_bytes(m.as_bytes()).expect("an HTTP method"))
        .collect();
    web::resource(path)
        .wrap(actix_middleware::from_fn(move |req, next| {
            idempotency::idempotent(req, next, methods.clone())
        }))
        .default_service(not_allowed(allow))
}

/// 405 with the `Allow` header RFC 9110 requires (schemathesis checks it), naming the path's method.
fn not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move {
        let mut res = ApiError::new(
            actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method; see openapi.yaml",
        )
        .error_response();
        res.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        res
    })
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see openapi.yaml",
    ))
}
