//! Builds the application from validated settings: the Box client, the pipeline, the metrics, and
//! every route in one block. Binds before it runs, so tests can ask for port 0 and read the port.
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{middleware, web, App, HttpResponse, HttpServer, ResponseError};
use prometheus::Registry;

use crate::access::Access;
use crate::box_api::{
    BoxClient, DeveloperToken, Grant, MintedToken, NoCredentials, Principal, TokenProvider,
};
use crate::config::{BoxAuth, ValidSettings};
use crate::error::{extractor_error, ApiError};
use crate::metrics::GatewayMetrics;
use crate::pipeline::{MemoryBudget, Pipeline, PipelineSettings};
use crate::routes::{health, upload, AppState};
use crate::telemetry;

/// The largest part size Box has been seen to pick (box-api.md): 64 MiB.
const LARGEST_BOX_PART: u64 = 64 * 1024 * 1024;

/// reqwest is built without a TLS crypto provider of its own (aws-lc is the slowest unit of the
/// build); rustls's ring provider serves TLS. SHA-1 never goes through it. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct Application {
    server: Server,
    port: u16,
    metrics: Arc<GatewayMetrics>,
}

impl Application {
    /// Must run inside the process's multi-threaded tokio runtime: Box calls are spawned on it.
    pub fn build(settings: &ValidSettings) -> std::io::Result<Self> {
        if settings.memory_budget_bytes < LARGEST_BOX_PART * settings.part_concurrency as u64 {
            tracing::warn!(
                memory_budget_bytes = settings.memory_budget_bytes,
                "the memory budget holds fewer than part_concurrency parts of {LARGEST_BOX_PART} bytes \
                 (Box's largest part size seen): large files will go up with fewer parts in flight, \
                 and fail if Box picks a part larger than the budget"
            );
        }
        let registry = Registry::new();
        let metrics = Arc::new(GatewayMetrics::new(&registry).map_err(std::io::Error::other)?);
        metrics
            .memory_budget_bytes
            .set(settings.memory_budget_bytes as i64);
        install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(settings.box_connect_timeout)
            .timeout(settings.box_request_timeout)
            .user_agent(concat!("box-upload-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        let mint = |grant: Grant| -> Arc<dyn TokenProvider> {
            Arc::new(MintedToken::new(
                grant,
                http.clone(),
                settings.box_urls.token.clone(),
                settings.retry.clone(),
                metrics.clone(),
            ))
        };
        let own: Option<Arc<dyn TokenProvider>> = match &settings.box_auth {
            BoxAuth::DeveloperToken(source) => Some(Arc::new(DeveloperToken::new(source.clone()))),
            BoxAuth::Minted(grant) => Some(mint(grant.clone())),
            BoxAuth::Passthrough => None,
        };
        if let (BoxAuth::Minted(_), Some(auth)) = (&settings.box_auth, &own) {
            tokio::spawn(check_credentials(settings.box_auth.mode(), auth.clone()));
        }
        let own = own.map(|auth| Principal {
            auth,
            as_user: settings.box_as_user.clone(),
        });
        let access = Access::new(
            &settings.api_keys,
            own.clone(),
            &|subject| match &settings.box_auth {
                BoxAuth::Minted(grant) => mint(grant.for_subject(subject)),
                // Validation allows a key's own subject only with minted tokens.
                _ => Arc::new(NoCredentials),
            },
            metrics.clone(),
        );
        let client = BoxClient::new(
            http.clone(),
            settings.box_urls.clone(),
            own.as_ref().map_or_else(
                || Arc::new(NoCredentials) as Arc<dyn TokenProvider>,
                |p| p.auth.clone(),
            ),
            settings.retry.clone(),
            metrics.clone(),
        )
        .acting_as_user(settings.box_as_user.as_deref());
        let budget = MemoryBudget::new(
            settings.memory_budget_bytes,
            metrics.buffered_bytes.clone(),
            metrics.buffered_bytes_peak.clone(),
        );
        let pipeline = Pipeline::new(
            client,
            budget,
            PipelineSettings {
                part_concurrency: settings.part_concurrency,
                chunked_threshold_bytes: settings.chunked_threshold_bytes,
                commit_timeout: settings.commit_timeout,
                max_file_size_bytes: settings.max_file_size_bytes,
            },
            metrics.clone(),
            tokio::runtime::Handle::current(),
        );
        let state = web::Data::new(AppState {
            access,
            pipeline,
            metrics: metrics.clone(),
            registry,
            spool_dir: settings.spool_dir.clone(),
            spool_max_bytes: settings.spool_max_bytes,
            client_idle_timeout: settings.client_idle_timeout,
        });
        let listener = TcpListener::bind(settings.listen)?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(telemetry::trace_request))
                .app_data(state.clone())
                .app_data(web::QueryConfig::default().error_handler(|e, _| extractor_error(e)))
                .app_data(web::PathConfig::default().error_handler(|e, _| extractor_error(e)))
                .service(
                    web::resource("/healthz")
                        .get(health::healthz)
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/metrics")
                        .get(health::metrics)
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::scope("/v1")
                        .service(
                            upload_route("/folders/{folder_id}/files", "POST")
                                .post(upload::multipart_to_folder),
                        )
                        .service(
                            upload_route("/folders/{folder_id}/files/{name}", "PUT")
                                .put(upload::raw_to_folder),
                        )
                        .service(
                            upload_route("/files/{file_id}/versions", "POST")
                                .post(upload::multipart_new_version),
                        )
                        .service(
                            upload_route("/files/{file_id}/content", "PUT").put(upload::raw_new_version),
                        ),
                )
                .default_service(web::to(not_found))
        })
        .workers(settings.workers)
        .listen(listener)?
        .run();
        Ok(Self {
            server,
            port,
            metrics,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn metrics(&self) -> Arc<GatewayMetrics> {
        self.metrics.clone()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Asks for a first token at start, so credentials Box refuses are named in the log at once (the mode
/// and Box's error code, never a secret) rather than at the first upload.
async fn check_credentials(mode: &'static str, auth: Arc<dyn TokenProvider>) {
    match auth.token().await {
        Ok(_) => tracing::info!(box_auth = mode, "Box accepted the gateway's credentials"),
        Err(err) => tracing::error!(
            box_auth = mode,
            box_code = err.code().unwrap_or("-"),
            error = %err,
            "Box refused the gateway's credentials: uploads fail with 502 box_auth_failed until they are fixed"
        ),
    }
}

fn upload_route(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(not_allowed(allow))
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
