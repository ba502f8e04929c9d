//! Thin handlers: parse the request into a typed upload, hand its body to the pipeline, shape the
//! answer. Every route is registered in `startup.rs`.
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod idempotency;
mod multipart_scan;
mod params;
pub mod tus;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;

use crate::access::Access;
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
    pub spool_dir: PathBuf,
    /// 0: spooling is off.
    pub spool_max_bytes: u64,
    /// A body that stalls this long fails with 408 (its Box session is aborted).
    pub client_idle_timeout: std::time::Duration,
    /// Resumable uploads and `Idempotency-Key` answers (embedded or Redis).
    pub store: Arc<dyn StateStore>,
    pub tus: tus::TusConfig,
    /// How long an `Idempotency-Key`'s answer is kept.
    pub idempotency_window: std::time::Duration,
}
