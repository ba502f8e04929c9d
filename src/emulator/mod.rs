//! A strict Box-compatible emulator: the upload API, the file and folder reads the gateway needs, the
//! token endpoint, and a control API (`/_emulator/...`) for inspection and fault injection.
//!
//! Served from one address: API under `/2.0`, uploads under `/api/2.0`, tokens at `/oauth2/token`.
mod cli;
mod errors;
mod faults;
mod metadata;
mod routes;
mod state;
mod storage;
mod wire;

pub use cli::{run, EmulatorArgs};
pub use errors::BoxApiError;
pub use faults::{Endpoint, FaultAction, FaultPlan, FaultRule, FiredFault, Garbage};
pub use metadata::{
    parse_templates, FieldKind, MetadataTemplate, TemplateField, TemplateOption, DEFAULT_ENTERPRISE_ID,
};
pub use state::{
    Counters, FileView, FolderView, Inspection, PartView, SessionState, SessionView, SharedLink,
    ROOT_FOLDER_ID,
};
pub use wire::{LinkShape, TlsSource, WireConfig, H2_DEFAULT_WINDOW_BYTES, H2_MAX_WINDOW_BYTES};

use actix_web::dev::ServerHandle;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Accepted as a bearer token when `EmulatorConfig::tokens` is empty.
pub const DEV_TOKEN: &str = "emulator-dev-token";
/// Accepted by `/oauth2/token` when `EmulatorConfig::clients` is empty.
pub const DEV_CLIENT_ID: &str = "emulator-client-id";
pub const DEV_CLIENT_SECRET: &str = "emulator-client-secret";

/// Box's documented minimum for chunked uploads (decimal bytes).
pub const BOX_MIN_CHUNKED_SIZE: u64 = 20_000_000;

/// The largest file any Box account may hold (500 GB, Enterprise Advanced); larger sessions are refused
/// with 403 `file_size_limit_exceeded`, as Box refuses files over the account's limit.
pub const BOX_MAX_FILE_SIZE: u64 = 500_000_000_000;

#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    /// None: a temporary directory removed when the handle drops.
    pub data_dir: Option<PathBuf>,
    /// Bearer tokens accepted besides issued ones; empty: `DEV_TOKEN`.
    pub tokens: Vec<String>,
    /// None: Box-like tiers, see `part_size_for`.
    pub part_size: Option<u64>,
    pub min_chunked_size: u64,
    /// 403 `storage_limit_exceeded` when the current versions would pass it.
    pub storage_limit_bytes: Option<u64>,
    /// 409 `context_info.conflicts` as an array (documented) instead of an object (what Box sends).
    pub conflicts_as_array: bool,
    pub session_ttl: Duration,
    /// `expires_in` of issued tokens.
    pub token_ttl: Duration,
    /// (kid, PEM public key): JWT assertions with that kid get their signature checked.
    pub jwt_public_keys: Vec<(String, String)>,
    /// (client_id, client_secret) pairs the token endpoint accepts; empty: the DEV_ pair.
    pub clients: Vec<(String, String)>,
    /// The enterprise a grant may act for (`box_subject_type=enterprise`, a JWT's `sub`); None: any.
    pub enterprise_id: Option<String>,
    /// The users a grant may act for (`box_subject_type=user`); empty: any.
    pub users: Vec<String>,
    pub faults: FaultPlan,
    /// Benchmarks only: compute no SHA-1 on chunked uploads and believe the `Digest` headers (the
    /// part echo and the file's `sha1` repeat what the client claimed). Every other rule holds.
    pub trust_digests: bool,
    /// Benchmarks only: chunked-upload parts are received, checked and counted but their bytes are not
    /// written (implies `trust_digests`), so the emulator costs one socket read per byte. Downloads of
    /// such files answer zeros.
    pub discard_content: bool,
    /// Metadata templates there from the start (`--metadata-templates FILE`), besides Box's built-in
    /// `global.properties`; checked by `Emulator::spawn`.
    pub metadata_templates: Vec<MetadataTemplate>,
    /// TLS and per-connection shaping (round trip, bandwidth, HTTP/2 windows); default: plain HTTP/1.1
    /// at loopback speed.
    pub wire: WireConfig,
}

impl EmulatorConfig {
    /// Whether part and file digests are taken from the client's headers instead of computed.
    pub fn trusts_digests(&self) -> bool {
        self.trust_digests || self.discard_content
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            tokens: Vec::new(),
            part_size: None,
            min_chunked_size: BOX_MIN_CHUNKED_SIZE,
            storage_limit_bytes: None,
            conflicts_as_array: false,
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            token_ttl: Duration::from_secs(3600),
            jwt_public_keys: Vec::new(),
            clients: Vec::new(),
            enterprise_id: None,
            users: Vec::new(),
            faults: FaultPlan::default(),
            trust_digests: false,
            discard_content: false,
            metadata_templates: Vec::new(),
            wire: WireConfig::default(),
        }
    }
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Box picks the part size; 8 MiB is what it gives most files and 32/64 MiB have been seen for large
/// ones. The 64 MiB tier keeps a 500 GB file under 10,000 parts (list-parts' offset limit).
pub fn part_size_for(file_size: u64) -> u64 {
    match file_size {
        s if s < GIB => 8 * MIB,
        s if s < 32 * GIB => 32 * MIB,
        _ => 64 * MIB,
    }
}

/// What every handler shares.
pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub state: Mutex<state::State>,
    pub storage: storage::Storage,
    pub faults: Mutex<faults::FaultEngine>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, state::State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> MutexGuard<'_, faults::FaultEngine> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn part_size(&self, file_size: u64) -> u64 {
        self.config.part_size.unwrap_or_else(|| part_size_for(file_size))
    }

    /// The enterprise an `enterprise` metadata scope stands for.
    pub fn enterprise_id(&self) -> &str {
        self.config
            .enterprise_id
            .as_deref()
            .unwrap_or(metadata::DEFAULT_ENTERPRISE_ID)
    }
}

pub struct Emulator;

impl Emulator {
    pub async fn spawn(config: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
        config
            .wire
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (root, temp) = match &config.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let t = tempfile::Builder::new().prefix("box-emulator").tempdir()?;
                (t.path().to_owned(), Some(t))
            }
        };
        let enterprise_id = config
            .enterprise_id
            .as_deref()
            .unwrap_or(metadata::DEFAULT_ENTERPRISE_ID);
        let mut state = state::State::new();
        for t in &config.metadata_templates {
            let t = metadata::checked(t.clone(), enterprise_id)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            state.put_template(metadata::StoredTemplate::new(t));
        }
        let tls = config.wire.tls.as_ref().map(wire::server_tls).transpose()?;
        let ca_file = match tls.as_ref().and_then(|t| t.ca_pem.as_ref()) {
            Some(pem) => {
                let dir = root.join("tls");
                std::fs::create_dir_all(&dir)?;
                let file = dir.join("ca.pem");
                std::fs::write(&file, pem)?;
                Some(file)
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            storage: storage::Storage::open(&root)?,
            state: Mutex::new(state),
            faults: Mutex::new(faults::FaultEngine::new(config.faults.clone())),
            config,
        });
        let listener = std::net::TcpListener::bind(shared.config.listen)?;
        let addr = listener.local_addr()?;
        let server = wire::serve(shared.clone(), listener, tls.map(|t| t.config))?;
        let server_handle = server.handle();
        let task = tokio::spawn(server);
        Ok(EmulatorHandle {
            shared,
            addr,
            scheme,
            ca_file,
            server: server_handle,
            task,
            _temp: temp,
        })
    }
}

pub struct EmulatorHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    scheme: &'static str,
    ca_file: Option<PathBuf>,
    server: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _temp: Option<tempfile::TempDir>,
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The PEM file of the CA that signed a generated TLS certificate: what a client trusts the
    /// emulator with. None without TLS or with a certificate from files.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    pub fn api_url(&self) -> String {
        format!("{}/2.0", self.base_url())
    }

    pub fn upload_url(&self) -> String {
        format!("{}/api/2.0", self.base_url())
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.base_url())
    }

    pub fn inspect(&self) -> Inspection {
        self.shared.lock().inspect()
    }

    /// Replaces the plan and restarts its request counts.
    pub fn set_faults(&self, plan: FaultPlan) {
        *self.shared.faults() = faults::FaultEngine::new(plan);
    }

    pub fn file_path(&self, file_id: &str) -> Option<PathBuf> {
        let state = self.shared.lock();
        state.files.get(file_id).map(|f| f.current().path.clone())
    }

    pub fn create_folder(&self, parent_id: &str, name: &str) -> String {
        self.shared.lock().create_folder(parent_id, name)
    }

    /// Removes a folder and everything below it, as `DELETE /2.0/folders/{id}?recursive=true` does.
    pub fn delete_folder(&self, id: &str) {
        self.shared.lock().delete_folder(id);
    }

    /// Adds a metadata template (or replaces the one of its scope and key), as
    /// `POST /_emulator/metadata_templates` does.
    pub fn put_metadata_template(&self, template: MetadataTemplate) -> Result<(), String> {
        let t = metadata::checked(template, self.shared.enterprise_id())?;
        self.shared.lock().put_template(metadata::StoredTemplate::new(t));
        Ok(())
    }

    /// The access tokens issued so far (tests check that none of them shows in a log).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().tokens.keys().cloned().collect()
    }

    /// Every issued token answers 401 from now on (configured tokens are not issued ones).
    pub fn expire_issued_tokens(&self) {
        routes::control::expire_issued(&self.shared);
    }

    pub fn reset_max_parts_in_flight(&self) {
        routes::control::reset_max_in_flight(&self.shared);
    }

    pub async fn stop(self) {
        self.server.stop(false).await;
        let _ = self.task.await;
    }
}
