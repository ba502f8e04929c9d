//! Everything the emulator remembers, behind one mutex (never held across an await).
use super::faults::FiredFault;
use super::metadata::{Instance, MetadataTemplate, StoredTemplate};
use super::storage::Fold;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub const ROOT_FOLDER_ID: &str = "0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Open,
    Committed,
    Aborted,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartView {
    pub part_id: String,
    pub offset: u64,
    pub size: u64,
    /// Hex, as Box echoes it.
    pub sha1: String,
}

pub struct Session {
    pub id: String,
    pub folder_id: String,
    /// Set for a new-version session.
    pub file_id: Option<String>,
    pub file_name: String,
    pub file_size: u64,
    pub part_size: u64,
    pub total_parts: u64,
    pub state: SessionState,
    pub expires_at: DateTime<Utc>,
    /// Stored parts by offset.
    pub parts: BTreeMap<u64, PartView>,
    /// Offsets with an upload in progress.
    pub uploading: HashSet<u64>,
    pub path: PathBuf,
    pub file: Arc<std::fs::File>,
    pub fold: Arc<tokio::sync::Mutex<Fold>>,
    /// The file a successful commit made; a repeated commit answers it again.
    pub committed_file_id: Option<String>,
}

impl Session {
    pub fn state_now(&self) -> SessionState {
        if self.state == SessionState::Open && Utc::now() >= self.expires_at {
            SessionState::Expired
        } else {
            self.state
        }
    }
}

pub struct Version {
    pub id: String,
    pub sha1: String,
    pub size: u64,
    pub path: PathBuf,
}

pub struct FileRec {
    pub id: String,
    pub name: String,
    pub parent_id: String,
    pub versions: Vec<Version>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub content_created_at: Option<String>,
    pub content_modified_at: Option<String>,
    /// Box answers `""` for a file without one.
    pub description: String,
    pub tags: Vec<String>,
    pub shared_link: Option<SharedLink>,
    /// By (scope id, template key), e.g. (`enterprise_12345`, `invoiceData`).
    pub metadata: BTreeMap<(String, String), Instance>,
}

/// A file's shared link (`PUT /files/{id}` with `shared_link`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedLink {
    /// `open`, `company` or `collaborators`.
    pub access: String,
    /// Built on the host the client used, as `session_endpoints` are.
    pub url: String,
    pub download_url: String,
    #[serde(default)]
    pub vanity_name: Option<String>,
    #[serde(default)]
    pub unshared_at: Option<String>,
    #[serde(default)]
    pub password_set: bool,
    pub can_download: bool,
}

impl FileRec {
    pub fn current(&self) -> &Version {
        self.versions.last().expect("a file has at least one version")
    }

    /// Box's etag counts versions from 0.
    pub fn etag(&self) -> String {
        (self.versions.len() - 1).to_string()
    }
}

pub struct FolderRec {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub struct IssuedToken {
    pub expires_at: Instant,
    pub revoked: bool,
    /// The Box user it acts as: a client-credentials grant for a user names it; None is the app's
    /// service account (`EMULATOR_USER_ID`).
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub part_uploads_accepted: u64,
    pub part_uploads_rejected: u64,
    pub commits_created: u64,
    pub commits_accepted_202: u64,
    pub commits_rejected: u64,
    pub aborts: u64,
    pub direct_uploads: u64,
    pub sessions_created: u64,
    pub tokens_issued: u64,
    pub parts_in_flight: u64,
    /// Most part-upload requests in flight at once since start or the last reset.
    pub max_parts_in_flight: u64,
    pub faults_fired: u64,
    /// `DELETE /2.0/files/{id}` that removed a file.
    #[serde(default)]
    pub files_deleted: u64,
    /// `GET /2.0/files/{id}/content` that served a file's bytes.
    #[serde(default)]
    pub downloads: u64,
    /// `DELETE /2.0/files/{id}/versions/{version_id}` that removed a version.
    #[serde(default)]
    pub versions_deleted: u64,
    /// Calls answered 429 `rate_limit_exceeded` by the rate limits (`rate_calls_per_minute`,
    /// `rate_uploads_per_minute`), not by fault rules.
    #[serde(default)]
    pub rate_limited: u64,
    /// Connections accepted (after the TLS handshake on a TLS listener).
    #[serde(default)]
    pub connections: u64,
    /// Of those, the ones that speak HTTP/2 (`h2` by ALPN, or h2c's preface on plain HTTP).
    #[serde(default)]
    pub http2_connections: u64,
    /// Part uploads that came over HTTP/2.
    #[serde(default)]
    pub part_uploads_http2: u64,
    /// Most part uploads in flight at once on one connection since start or the last reset: above 1,
    /// parts share a connection (HTTP/2 streams) and its window and bandwidth.
    #[serde(default)]
    pub max_parts_in_flight_per_connection: u64,
}

#[derive(Default)]
pub struct State {
    pub sessions: HashMap<String, Session>,
    pub files: HashMap<String, FileRec>,
    pub folders: HashMap<String, FolderRec>,
    pub tokens: HashMap<String, IssuedToken>,
    pub used_jtis: HashSet<String>,
    pub counters: Counters,
    pub faults_fired: Vec<FiredFault>,
    pub as_user: Vec<String>,
    /// Per token and `As-User`: when its calls, and its upload calls, of the last 60 s came.
    pub rate_windows: HashMap<String, RateWindows>,
    /// By (scope id, template key); `global.properties` is always there, as at Box.
    pub templates: BTreeMap<(String, String), StoredTemplate>,
    /// Part uploads in flight per connection (by `wire::ConnId`), connections with none left out.
    pub parts_per_connection: HashMap<u64, u64>,
    next_id: u64,
}

#[derive(Default)]
pub struct RateWindows {
    pub calls: std::collections::VecDeque<Instant>,
    pub uploads: std::collections::VecDeque<Instant>,
}

impl State {
    pub fn new() -> Self {
        let mut state = State {
            next_id: 1_000_000 + fastrand::u64(..1_000_000),
            ..State::default()
        };
        state.put_template(StoredTemplate::properties());
        state.folders.insert(
            ROOT_FOLDER_ID.to_owned(),
            FolderRec {
                id: ROOT_FOLDER_ID.to_owned(),
                name: "All Files".to_owned(),
                parent_id: None,
                created_at: Utc::now(),
            },
        );
        state
    }

    /// Box ids are decimal strings.
    pub fn next_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    pub fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.current().size).sum()
    }

    /// The item named `name` in `folder_id`; Box compares names case-insensitively.
    pub fn item_named(&self, folder_id: &str, name: &str) -> Option<Item<'_>> {
        let lower = name.to_lowercase();
        let file = self
            .files
            .values()
            .find(|f| f.parent_id == folder_id && f.name.to_lowercase() == lower);
        if let Some(f) = file {
            return Some(Item::File(f));
        }
        self.folders
            .values()
            .find(|d| d.parent_id.as_deref() == Some(folder_id) && d.name.to_lowercase() == lower)
            .map(Item::Folder)
    }

    /// Adds a (checked) template, or replaces the one of the same scope and key.
    pub fn put_template(&mut self, template: StoredTemplate) {
        let key = (template.spec.scope.clone(), template.spec.template_key.clone());
        self.templates.insert(key, template);
    }

    /// Removes a folder with everything below it.
    pub fn delete_folder(&mut self, id: &str) {
        let mut gone = vec![id.to_owned()];
        let mut at = 0;
        while at < gone.len() {
            let parent = gone[at].clone();
            gone.extend(
                self.folders
                    .values()
                    .filter(|d| d.parent_id.as_deref() == Some(parent.as_str()))
                    .map(|d| d.id.clone()),
            );
            at += 1;
        }
        for folder in &gone {
            self.folders.remove(folder);
            self.files.retain(|_, f| &f.parent_id != folder);
        }
    }

    pub fn create_folder(&mut self, parent_id: &str, name: &str) -> String {
        let id = self.next_id();
        self.folders.insert(
            id.clone(),
            FolderRec {
                id: id.clone(),
                name: name.to_owned(),
                parent_id: Some(parent_id.to_owned()),
                created_at: Utc::now(),
            },
        );
        id
    }
}

pub enum Item<'a> {
    File(&'a FileRec),
    Folder(&'a FolderRec),
}

/// A snapshot of the emulator, also served at `GET /_emulator/state`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inspection {
    pub sessions: Vec<SessionView>,
    pub files: Vec<FileView>,
    pub folders: Vec<FolderView>,
    pub counters: Counters,
    pub faults_fired: Vec<FiredFault>,
    /// Every `As-User` header value seen, in order.
    pub as_user: Vec<String>,
    /// Sorted by scope and key, `global.properties` included.
    #[serde(default)]
    pub metadata_templates: Vec<MetadataTemplate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: String,
    pub folder_id: String,
    pub file_id: Option<String>,
    pub file_name: String,
    pub file_size: u64,
    pub part_size: u64,
    pub total_parts: u64,
    pub state: SessionState,
    /// Sorted by offset.
    pub parts: Vec<PartView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileView {
    pub id: String,
    pub name: String,
    pub parent_id: String,
    pub size: u64,
    pub sha1: String,
    pub version_count: usize,
    pub file_version_id: String,
    pub etag: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub shared_link: Option<SharedLink>,
    /// User values by `{scope id}.{template key}`, e.g. `enterprise_12345.invoiceData`.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FolderView {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
}

impl Inspection {
    pub fn session(&self, id: &str) -> Option<&SessionView> {
        self.sessions.iter().find(|s| s.id == id)
    }

    pub fn file(&self, id: &str) -> Option<&FileView> {
        self.files.iter().find(|f| f.id == id)
    }

    /// The folder named `name` (Box compares names case-insensitively) in `parent_id`.
    pub fn child_folder(&self, parent_id: &str, name: &str) -> Option<&FolderView> {
        let lower = name.to_lowercase();
        self.folders
            .iter()
            .find(|d| d.parent_id.as_deref() == Some(parent_id) && d.name.to_lowercase() == lower)
    }

    /// The file named `name` in `folder_id`.
    pub fn file_named(&self, folder_id: &str, name: &str) -> Option<&FileView> {
        let lower = name.to_lowercase();
        self.files
            .iter()
            .find(|f| f.parent_id == folder_id && f.name.to_lowercase() == lower)
    }
}

impl State {
    pub fn inspect(&self) -> Inspection {
        let mut sessions: Vec<SessionView> = self.sessions.values().map(session_view).collect();
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        let mut files: Vec<FileView> = self.files.values().map(file_view).collect();
        files.sort_by(|a, b| a.id.cmp(&b.id));
        let mut folders: Vec<FolderView> = self
            .folders
            .values()
            .map(|d| FolderView {
                id: d.id.clone(),
                name: d.name.clone(),
                parent_id: d.parent_id.clone(),
            })
            .collect();
        folders.sort_by(|a, b| a.id.cmp(&b.id));
        Inspection {
            sessions,
            files,
            folders,
            counters: self.counters.clone(),
            faults_fired: self.faults_fired.clone(),
            as_user: self.as_user.clone(),
            metadata_templates: self.templates.values().map(|t| t.spec.clone()).collect(),
        }
    }
}

fn session_view(s: &Session) -> SessionView {
    SessionView {
        id: s.id.clone(),
        folder_id: s.folder_id.clone(),
        file_id: s.file_id.clone(),
        file_name: s.file_name.clone(),
        file_size: s.file_size,
        part_size: s.part_size,
        total_parts: s.total_parts,
        state: s.state_now(),
        parts: s.parts.values().cloned().collect(),
    }
}

fn file_view(f: &FileRec) -> FileView {
    let v = f.current();
    FileView {
        id: f.id.clone(),
        name: f.name.clone(),
        parent_id: f.parent_id.clone(),
        size: v.size,
        sha1: v.sha1.clone(),
        version_count: f.versions.len(),
        file_version_id: v.id.clone(),
        etag: f.etag(),
        description: f.description.clone(),
        tags: f.tags.clone(),
        shared_link: f.shared_link.clone(),
        metadata: f
            .metadata
            .iter()
            .map(|((scope, key), i)| (format!("{scope}.{key}"), i.values.clone()))
            .collect(),
    }
}
