//! Settings after validation: typed, with units in the types, grouped by the part of the gateway that
//! uses them (zero2prod's nested settings, on the validated side only: the keys an operator writes
//! stay one flat, documented list in `Settings`).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::access::ApiKeyConfig;
use crate::box_api::{BoxUrls, Grant, PacerSettings, RetryPolicy};
use crate::events::WebhookSettings;
use crate::http_client::BoxConnections;
use crate::pipeline::{PathSettings, PipelineSettings, ScanOversize, Staging};
use crate::scan::ScannerSettings;
use crate::secret::{Secret, SecretSource};

#[derive(Debug, Clone)]
pub struct ValidSettings {
    pub server: ServerSettings,
    pub box_side: BoxSettings,
    pub access: AccessSettings,
    pub pipeline: PipelineSettings,
    pub memory: MemorySettings,
    pub client: ClientLimits,
    pub spool: SpoolSettings,
    pub state: StateSettings,
    pub tus: TusSettings,
    pub idempotency: IdempotencySettings,
    pub links: LinkSettings,
    pub webhooks: WebhookSettings,
    pub paths: PathUploadSettings,
    /// The malware gate; None: `clamd_address` unset, nothing is scanned.
    pub scan: Option<ScanSettings>,
}

/// The malware gate: clamd, and what the gateway does around it.
#[derive(Debug, Clone)]
pub struct ScanSettings {
    pub scanner: ScannerSettings,
    pub oversize: ScanOversize,
    pub staging: Staging,
}

/// Upload by path and the fields that land with a file.
#[derive(Debug, Clone)]
pub struct PathUploadSettings {
    /// Where uploads by path start for callers without an API key (a folder id).
    pub default_root: String,
    /// The pipeline's caches of resolved folders and of metadata templates' schemas.
    pub caches: PathSettings,
}

/// The HTTP server and the process around it.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Resolved: never 0.
    pub workers: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub readiness_check_interval: Duration,
}

/// Everything about talking to Box: where, as whom, how long, how often.
#[derive(Debug, Clone)]
pub struct BoxSettings {
    pub urls: BoxUrls,
    /// HTTP version, trust, and how many connections.
    pub connections: BoxConnections,
    pub auth: BoxAuth,
    pub as_user: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Box's rate limits as the pacer keeps them.
    pub pacer: PacerSettings,
}

/// Who may call the gateway.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    pub api_keys: Vec<ApiKeyConfig>,
    pub allow_anonymous: bool,
}

/// The process-wide byte budget for file bytes held in memory.
#[derive(Debug, Clone, Copy)]
pub struct MemorySettings {
    pub budget_bytes: u64,
    /// The most of it one caller may hold (`memory_budget_share_per_key` of `budget_bytes`).
    pub share_bytes: u64,
    /// How long an upload may wait for room before 503 `busy`.
    pub wait: Duration,
}

/// What the gateway tolerates of a client sending a body.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// A body that stalls this long fails with 408.
    pub idle_timeout: Duration,
    /// A body slower than this over `rate_window` of waiting fails with 408 `client_too_slow`
    /// (0: no minimum).
    pub min_bytes_per_sec: u64,
    pub rate_window: Duration,
}

/// Where bodies of unknown size (and checksummed tus chunks) are spooled.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    /// One body at most; 0: spooling is off.
    pub max_bytes: u64,
    /// All bodies together. Resolved: never 0.
    pub max_total_bytes: u64,
}

/// The state store: Redis when set (any replica takes any request), else embedded in `dir`.
#[derive(Debug, Clone)]
pub struct StateSettings {
    pub dir: PathBuf,
    pub redis_url: Option<Secret>,
    /// With `rediss://`: the CAs Redis's certificate is checked against, instead of the system's.
    pub redis_ca_file: Option<PathBuf>,
}

/// Resumable (tus) uploads.
#[derive(Debug, Clone, Copy)]
pub struct TusSettings {
    pub expiration: Duration,
    /// A PATCH extends its lock every third of this while it runs; a replica that died mid-PATCH
    /// holds the upload at most this long.
    pub lock_ttl: Duration,
    /// The gateway's own largest file (`max_file_size_bytes`), advertised as `Tus-Max-Size`.
    pub max_size: Option<u64>,
    /// All unfinished parts in the state store together (0: every PATCH must end on a part
    /// boundary or at the end).
    pub max_pending_bytes: u64,
    /// Of them, the most one caller's (a key's with its links', one link's) may take.
    pub max_pending_bytes_per_key: u64,
    /// Open (not landed, not expired) uploads per owner.
    pub max_open_uploads_per_key: usize,
}

/// `Idempotency-Key` on the plain upload endpoints.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencySettings {
    /// How long an answer is kept.
    pub window: Duration,
    /// How long a claim lasts unless its holder extends it.
    pub claim: Duration,
}

/// Upload links and their page.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Empty: upload links are off. The first signs; all are accepted.
    pub secrets: Vec<Secret>,
    /// Without a trailing `/`. Always set when links are on.
    pub public_base_url: Option<String>,
    pub max_expiry: Duration,
    pub page_chunk_bytes: u64,
    /// A link's size limit when neither its request nor its key gives one.
    pub default_max_file_size_bytes: u64,
    /// Links a key may make or revoke per minute.
    pub per_minute_per_key: u32,
}

/// How the gateway authenticates to Box.
#[derive(Debug, Clone)]
pub enum BoxAuth {
    DeveloperToken(SecretSource),
    /// `client_credentials` or `jwt`: tokens minted at the token endpoint.
    Minted(Grant),
    /// Each caller's own `Authorization: Bearer` token goes to Box.
    Passthrough,
}

impl BoxAuth {
    /// The `box_auth` value, for logs.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::DeveloperToken(_) => "developer_token",
            Self::Minted(Grant::ClientCredentials { .. }) => "client_credentials",
            Self::Minted(Grant::Jwt { .. }) => "jwt",
            Self::Passthrough => "passthrough",
        }
    }
}
