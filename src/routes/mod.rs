//! Thin handlers: parse the request into a typed upload, hand its body to the pipeline, shape the
//! answer. Every route is registered in `startup.rs`. The plumbing they share has rooms of its own:
//! - `admission.rs`: the one order in which every upload is let in, and what it gives back if refused
//! - `outcome.rs`: how an upload that ends is counted, told (completion event) and logged
//! - `client_body.rs`: the deadlines on a client's body (idle, minimum rate)
//! - `params.rs`: the upload's parameters and the headers that shape a body
//! - `idempotency.rs`: `Idempotency-Key` on the plain endpoints (a middleware)
pub mod admission;
pub mod client_body;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod idempotency;
pub mod links;
pub mod outcome;
pub mod page;
pub mod params;
pub mod tus;
pub mod upload;

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

use crate::access::Access;
use crate::config::{ClientLimits, IdempotencySettings, LinkSettings, SpoolSettings, TusSettings};
use crate::error::ApiError;
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
