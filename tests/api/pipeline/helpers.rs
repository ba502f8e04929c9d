//! A pipeline (one "replica") wired to a spawned emulator, and what the tests ask of both.
use box_upload_gateway::box_api::{BoxClient, BoxUrls, NewUpload, RetryPolicy, Secret, StaticToken, Target};
use box_upload_gateway::emulator::{Emulator, EmulatorConfig, EmulatorHandle, DEV_TOKEN};
use box_upload_gateway::metrics::GatewayMetrics;
use box_upload_gateway::pipeline::{
    MemoryBudget, OnConflict, Pipeline, PipelineSettings, Prepared, UploadError, UploadOutcome, UploadRequest,
};
use std::sync::Arc;
use std::time::Duration;

pub const MIB: u64 = 1 << 20;
/// Files this size and up go through a chunked session (the emulator's minimum is set to match).
pub const CHUNKED_FROM: u64 = 2_500_000;

pub async fn emulator() -> EmulatorHandle {
    emulator_with(|_| {}).await
}

/// Box's rules with small parts (1 MiB) and the invoice template of the emulator tests.
pub async fn emulator_with(change: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
    let mut config = EmulatorConfig {
        part_size: Some(MIB),
        min_chunked_size: CHUNKED_FROM,
        metadata_templates: vec![crate::emulator::helpers::invoice_template()],
        ..EmulatorConfig::default()
    };
    change(&mut config);
    Emulator::spawn(config).await.expect("emulator starts")
}

/// One gateway replica's pipeline: its own caches, metrics and Box client.
pub struct Replica {
    pub pipeline: Pipeline,
    pub metrics: Arc<GatewayMetrics>,
    registry: prometheus::Registry,
}

impl Replica {
    pub fn new(emulator: &EmulatorHandle) -> Self {
        Self::with_retry(
            emulator,
            RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
                deadline: Duration::from_secs(30),
                max_retry_after: Duration::from_secs(60),
            },
        )
    }

    /// Box calls with these retries; 64 MiB of memory budget, 2 parts in flight.
    pub fn with_retry(emulator: &EmulatorHandle, retry: RetryPolicy) -> Self {
        box_upload_gateway::http_client::install_tls_provider();
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(GatewayMetrics::new(&registry).unwrap());
        let client = BoxClient::new(
            reqwest::Client::new(),
            BoxUrls {
                api: emulator.api_url(),
                upload: emulator.upload_url(),
                token: emulator.token_url(),
            },
            Arc::new(StaticToken::new(Secret::new(DEV_TOKEN))),
            retry,
            metrics.clone(),
        );
        let budget = MemoryBudget::new(
            64 * MIB,
            metrics.buffered_bytes.clone(),
            metrics.buffered_bytes_peak.clone(),
        );
        let pipeline = Pipeline::new(
            client,
            budget,
            PipelineSettings {
                part_concurrency: 2,
                chunked_threshold_bytes: CHUNKED_FROM,
                commit_timeout: Duration::from_secs(30),
                parts_mismatch_window: Duration::from_secs(5),
                max_file_size_bytes: None,
            },
            metrics.clone(),
            tokio::runtime::Handle::current(),
            tokio_util::sync::CancellationToken::new(),
        );
        Self {
            pipeline,
            metrics,
            registry,
        }
    }

    /// Box calls made to `endpoint` (every answer counted), from the gateway's own metrics.
    pub fn box_calls(&self, endpoint: &str) -> u64 {
        self.counter_sum("gateway_box_calls_total", "endpoint", endpoint)
    }

    pub fn counter_sum(&self, name: &str, label: &str, value: &str) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == label && l.value() == value)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

pub fn new_file(folder_id: &str, name: &str, size: u64) -> UploadRequest {
    UploadRequest {
        upload: NewUpload {
            target: Target::NewFile {
                folder_id: folder_id.into(),
                name: name.into(),
            },
            size,
            content_created_at: None,
            content_modified_at: None,
        },
        on_conflict: OnConflict::Error,
        expected_sha1: None,
    }
}

/// Deterministic bytes, different for each seed.
pub fn data(size: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..size).map(|_| rng.u8(..)).collect()
}

/// Sends `data` (in 64 KiB pieces) into a prepared upload.
pub async fn send(
    pipeline: &Pipeline,
    prepared: Prepared,
    data: &[u8],
) -> Result<UploadOutcome, UploadError> {
    let pieces: Vec<Result<bytes::Bytes, UploadError>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    pipeline.send(prepared, futures_util::stream::iter(pieces)).await
}

/// An upload by path, as a handler makes it: resolve and prepare, then send `data`.
pub async fn upload_at(
    pipeline: &Pipeline,
    dest: &box_upload_gateway::pipeline::FolderPath,
    name: &str,
    data: &[u8],
) -> Result<(box_upload_gateway::pipeline::ResolvedFolder, UploadOutcome), UploadError> {
    let request = new_file("replaced by the path's folder", name, data.len() as u64);
    let (prepared, folder) = pipeline
        .prepare_at_path(box_upload_gateway::emulator::ROOT_FOLDER_ID, dest, true, request)
        .await?;
    Ok((folder, send(pipeline, prepared, data).await?))
}

pub fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(data))
}
