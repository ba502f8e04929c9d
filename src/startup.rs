//! Builds the application from validated settings: wires the Box client, the pipeline, the metrics
//! and the state store together, starts the background tasks, and serves `routes::configure` behind
//! the request middleware. Binds before it runs, so tests can ask for port 0 and read the port.
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use prometheus::Registry;

use crate::access::Access;
use crate::box_api::{
    BoxClient, DeveloperToken, Grant, MintedToken, NoCredentials, Pacer, Principal, Secret, TokenProvider,
};
use crate::config::{BoxAuth, ValidSettings};
use crate::lifecycle::{self, Lifecycle};
use crate::metrics::GatewayMetrics;
use crate::pipeline::{MemoryBudget, Pipeline, ScanGate};
use crate::routes::{self, tus, AppState};
use crate::scan::Scanner;

/// The largest part size Box has been seen to pick (box-api.md): 64 MiB.
const LARGEST_BOX_PART: u64 = 64 * 1024 * 1024;

/// The listening socket, with room in the kernel's accept queue for the clients past
/// `max_connections` (std's `bind` asks for 128; the kernel caps the request at `somaxconn`).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    const ACCEPT_QUEUE: i32 = 4096;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(ACCEPT_QUEUE)?;
    Ok(socket.into())
}

pub struct Application {
    server: Server,
    port: u16,
    metrics: Arc<GatewayMetrics>,
    lifecycle: Arc<Lifecycle>,
    shutdown_grace: Duration,
}

impl Application {
    /// Must run inside the process's multi-threaded tokio runtime: Box calls are spawned on it.
    pub fn build(settings: &ValidSettings) -> std::io::Result<Self> {
        let box_side = &settings.box_side;
        let memory = settings.memory;
        if memory.share_bytes < LARGEST_BOX_PART * settings.pipeline.part_concurrency as u64 {
            tracing::warn!(
                memory_budget_bytes = memory.budget_bytes,
                share_bytes = memory.share_bytes,
                "one caller's share of the memory budget holds fewer than part_concurrency parts of \
                 {LARGEST_BOX_PART} bytes (Box's largest part size seen): large files will go up with \
                 fewer parts in flight, and fail with 503 budget_too_small if Box picks a part larger \
                 than the share"
            );
        }
        let registry = Registry::new();
        let metrics = Arc::new(GatewayMetrics::new(&registry).map_err(std::io::Error::other)?);
        metrics.memory_budget_bytes.set(memory.budget_bytes as i64);
        let http =
            crate::http_client::BoxHttp::build(&box_side.connections).map_err(std::io::Error::other)?;
        tracing::info!(
            box_http_version = box_side.connections.version.as_str(),
            parts_in_flight = box_side.connections.parts_in_flight,
            lanes = http.lanes(),
            extra_cas = box_side.connections.extra_roots.len(),
            "connections to Box"
        );
        let mint = |grant: Grant| -> Arc<dyn TokenProvider> {
            Arc::new(MintedToken::new(
                grant,
                http.client().clone(),
                box_side.urls.token.clone(),
                box_side.retry.clone(),
                metrics.clone(),
            ))
        };
        let own: Option<Arc<dyn TokenProvider>> = match &box_side.auth {
            BoxAuth::DeveloperToken(source) => Some(Arc::new(DeveloperToken::new(source.clone()))),
            BoxAuth::Minted(grant) => Some(mint(grant.clone())),
            BoxAuth::Passthrough => None,
        };
        let own = own.map(|auth| Principal {
            auth,
            as_user: box_side.as_user.clone(),
        });
        let store = crate::state::open(
            settings.state.redis_url.as_ref().map(Secret::expose),
            settings.state.redis_ca_file.as_deref(),
            &settings.state.dir,
        )
        .map_err(std::io::Error::other)?;
        tracing::info!(
            state_store = store.kind(),
            "state store for resumable uploads, idempotency keys, rate limits and the webhook outbox"
        );
        let access = Access::new(
            &settings.access.api_keys,
            own.clone(),
            &|subject| match &box_side.auth {
                BoxAuth::Minted(grant) => mint(grant.for_subject(subject)),
                // Validation allows a key's own subject only with minted tokens.
                _ => Arc::new(NoCredentials),
            },
            metrics.clone(),
            store.clone(),
        );
        // Box's rate limits, per principal, shared by the replicas through the state store.
        let pacer = Arc::new(Pacer::new(store.clone(), box_side.pacer, metrics.clone()));
        let client = BoxClient::new(
            http.clone(),
            box_side.urls.clone(),
            own.as_ref().map_or_else(
                || Arc::new(NoCredentials) as Arc<dyn TokenProvider>,
                |p| p.auth.clone(),
            ),
            box_side.retry.clone(),
            metrics.clone(),
        )
        .acting_as_user(box_side.as_user.as_deref())
        .with_pacer(pacer.clone());
        let access = access.with_token_check(client.clone()).with_upload_links(
            crate::access::LinkKeys::new(settings.links.secrets.clone()),
            crate::access::LinkPolicy {
                default_max_file_size_bytes: settings.links.default_max_file_size_bytes,
                max_expiry: settings.links.max_expiry,
                per_minute_per_key: settings.links.per_minute_per_key,
            },
        );
        let lifecycle = Arc::new(Lifecycle::default());
        tokio::spawn(crate::readiness::check_box(
            client.clone(),
            !matches!(box_side.auth, BoxAuth::Passthrough),
            box_side.auth.mode(),
            lifecycle.clone(),
            settings.server.readiness_check_interval,
            metrics.box_reachable.clone(),
        ));
        let budget = MemoryBudget::new(
            memory.budget_bytes,
            metrics.buffered_bytes.clone(),
            metrics.buffered_bytes_peak.clone(),
        )
        .with_share(memory.share_bytes, metrics.buffered_bytes_by_key.clone())
        .with_max_wait(memory.wait);
        let mut pipeline = Pipeline::new(
            client,
            budget,
            settings.pipeline.clone(),
            metrics.clone(),
            tokio::runtime::Handle::current(),
            lifecycle.stop_uploads(),
        )
        .with_path_settings(&settings.paths.caches);
        if let Some(scan) = &settings.scan {
            let scanner = Scanner::new(
                scan.scanner.clone(),
                metrics.clone(),
                tokio::runtime::Handle::current(),
            );
            tracing::info!(clamd = %scanner.address(), scan_max_bytes = scanner.max_bytes(),
                oversize = ?scan.oversize, staging = ?scan.staging, "malware scanning on: uploads land only when clamd finds them clean");
            tokio::spawn(crate::readiness::check_scanner(
                scanner.clone(),
                scan.scanner.address.is_local(),
                lifecycle.clone(),
                settings.server.readiness_check_interval,
            ));
            pipeline = pipeline.with_scan_gate(ScanGate {
                scanner,
                oversize: scan.oversize,
                staging: scan.staging.clone(),
            });
        }
        let events = Arc::new(crate::events::Events::new(
            store.clone(),
            settings.webhooks.clone(),
            metrics.clone(),
        ));
        // Validation gives every receiver its secret: with none configured there is nothing to send.
        if settings.webhooks.any_receiver() {
            tokio::spawn(crate::events::worker::run(
                events.clone(),
                lifecycle.stop_background(),
            ));
        }
        let state = web::Data::new(AppState {
            access,
            pipeline,
            metrics: metrics.clone(),
            registry,
            client: settings.client,
            spool: settings.spool.clone(),
            spool_space: crate::pipeline::SpoolSpace::new(
                settings.spool.max_total_bytes,
                metrics.spool_bytes.clone(),
            ),
            lifecycle: lifecycle.clone(),
            store,
            tus: settings.tus,
            idempotency: settings.idempotency,
            events,
            upload_links: settings.links.clone(),
            pacer,
            path_root: settings.paths.default_root.clone(),
        });
        // Expired uploads are looked for a few times per expiration period, at most once a minute.
        let sweep_every =
            (settings.tus.expiration / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
        tokio::spawn(tus::sweep(state.clone().into_inner(), sweep_every));
        let listener = listen(settings.server.listen)?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(routes::middleware::trace_request))
                .app_data(state.clone())
                .configure(routes::configure)
        })
        .workers(settings.server.workers)
        // actix counts connections per worker; a worker at its share stops accepting until one
        // closes, and the kernel's accept queue holds the rest (outside the process's memory).
        .max_connections(
            settings
                .server
                .max_connections
                .div_ceil(settings.server.workers)
                .max(1),
        )
        // SIGTERM and SIGINT start the gateway's own drain (`run_until_stopped`), not actix's.
        .disable_signals()
        // By the time the server stops, the drain has settled every upload.
        .shutdown_timeout(2)
        .listen(listener)?
        .run();
        Ok(Self {
            server,
            port,
            metrics,
            lifecycle,
            shutdown_grace: settings.server.shutdown_grace,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn metrics(&self) -> Arc<GatewayMetrics> {
        self.metrics.clone()
    }

    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Serves until SIGTERM or SIGINT, then drains (see `lifecycle.rs`).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(lifecycle::shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then drains: new uploads are refused, those in flight get
    /// `shutdown_grace_secs` to finish or are stopped and their sessions aborted, and the server stops.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        tokio::select! {
            ended = &mut server => return ended.map_err(std::io::Error::other)?,
            () = shutdown => {}
        }
        self.lifecycle.drain(self.shutdown_grace).await;
        handle.stop(true).await;
        // The stop dropped what was still running; their give-backs run on this runtime (an actix
        // worker's ends with the stop) and are done before the process exits.
        let reserve = lifecycle::abort_reserve(self.shutdown_grace);
        if !self.lifecycle.settle(reserve).await {
            tracing::warn!(
                left = self.lifecycle.in_flight(),
                "what stopped requests took (open-upload slots, quotas) was not all given back; it lapses at its expiry"
            );
        }
        server.await.map_err(std::io::Error::other)?
    }
}
