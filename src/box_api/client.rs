//! One method per Box upload endpoint, over the clients built at start (`BoxHttp`).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{header, Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::auth::TokenProvider;
use super::error::{parse_retry_after, BoxError, BoxErrorKind};
use super::pacer::{Admission, PaceKey, Pacer};
use super::retry::RetryPolicy;
use super::types::*;
use crate::http_client::BoxHttp;
use crate::metrics::GatewayMetrics;
use crate::secret::Secret;

/// Where Box lives; all three are configurable so the emulator can stand in.
#[derive(Debug, Clone)]
pub struct BoxUrls {
    /// e.g. `https://api.box.com/2.0`
    pub api: String,
    /// e.g. `https://upload.box.com/api/2.0`
    pub upload: String,
    /// e.g. `https://api.box.com/oauth2/token`
    pub token: String,
}

/// What an upload creates: a new file in a folder, or a new version of a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    NewFile { folder_id: String, name: String },
    NewVersion { file_id: String, name: Option<String> },
}

/// What Box needs to know before the first byte.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewUpload {
    pub target: Target,
    pub size: u64,
    pub content_created_at: Option<String>,
    pub content_modified_at: Option<String>,
}

impl NewUpload {
    /// The optional `attributes` of a commit or direct upload.
    fn timestamps(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        if let Some(t) = &self.content_created_at {
            map.insert("content_created_at".into(), json!(t));
        }
        if let Some(t) = &self.content_modified_at {
            map.insert("content_modified_at".into(), json!(t));
        }
        map
    }
}

#[derive(Debug)]
pub enum CommitAnswer {
    Committed(FileObject),
    /// 202: parts are still being processed; commit again after the delay.
    Pending(Option<Duration>),
}

/// Whom Box calls act as: where their token comes from, and an optional managed user the service
/// account acts for (`As-User`).
#[derive(Clone)]
pub struct Principal {
    pub auth: Arc<dyn TokenProvider>,
    pub as_user: Option<String>,
}

impl Principal {
    /// Whom Box counts this principal's calls against, for the pacer.
    pub fn pace_key(&self) -> PaceKey {
        PaceKey::of(&self.auth.principal_id(), self.as_user.as_deref())
    }
}

#[derive(Clone)]
pub struct BoxClient {
    http: BoxHttp,
    urls: Arc<BoxUrls>,
    auth: Arc<dyn TokenProvider>,
    as_user: Option<Arc<str>>,
    retry: RetryPolicy,
    metrics: Arc<GatewayMetrics>,
    /// Box's rate limits (None: calls are not paced).
    pacer: Option<Arc<Pacer>>,
    /// Whom Box counts this client's calls against: its token provider's principal and `As-User`.
    pace_key: PaceKey,
    /// A new upload's admission: its first upload call is already paid for.
    prepaid: Option<Admission>,
}

impl BoxClient {
    pub fn new(
        http: impl Into<BoxHttp>,
        urls: BoxUrls,
        auth: Arc<dyn TokenProvider>,
        retry: RetryPolicy,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let pace_key = PaceKey::of(&auth.principal_id(), None);
        Self {
            http: http.into(),
            urls: Arc::new(urls),
            auth,
            as_user: None,
            retry,
            metrics,
            pacer: None,
            pace_key,
            prepaid: None,
        }
    }

    /// The same client with its calls paced by `pacer` (Box's rate limits, shared by replicas).
    pub fn with_pacer(self, pacer: Arc<Pacer>) -> Self {
        Self {
            pacer: Some(pacer),
            ..self
        }
    }

    /// The same client with every call acting as `user` (`As-User`), or as itself.
    pub fn acting_as_user(self, user: Option<&str>) -> Self {
        Self {
            pace_key: PaceKey::of(&self.auth.principal_id(), user),
            as_user: user.map(Arc::from),
            ..self
        }
    }

    /// The same client acting as another principal (an API key's, or a caller's own token).
    pub fn acting_as(&self, principal: &Principal) -> Self {
        Self {
            auth: principal.auth.clone(),
            as_user: principal.as_user.as_deref().map(Arc::from),
            pace_key: principal.pace_key(),
            prepaid: None,
            ..self.clone()
        }
    }

    /// The same client for an upload admitted by the pacer: its first upload call (a new session or
    /// a direct upload) was paid for by the admission.
    pub fn admitted(self, admission: Admission) -> Self {
        Self {
            prepaid: Some(admission),
            ..self
        }
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// A session endpoint, checked before any call that would carry the bearer token to it: a
    /// session is stored state (a tus record, in a Redis others may write), so its URLs are pinned
    /// to the configured upload host (`check_session_host`).
    fn session_url<'u>(&self, endpoint: &'static str, url: &'u str) -> Result<&'u str, BoxError> {
        check_session_host(&self.urls.upload, url)
            .map_err(|why| BoxError::protocol(endpoint, format!("session endpoint {endpoint}: {why}")))?;
        Ok(url)
    }

    /// Whom Box counts this client's calls against (its token's principal and `As-User`): what
    /// decides which folders and templates the calls can see.
    pub fn principal(&self) -> &PaceKey {
        &self.pace_key
    }

    /// `POST {upload}/files/upload_sessions` or `POST {upload}/files/{id}/upload_sessions`.
    #[tracing::instrument(name = "box.create_session", skip_all)]
    pub async fn create_session(&self, upload: &NewUpload) -> Result<UploadSession, BoxError> {
        let (url, body) = match &upload.target {
            Target::NewFile { folder_id, name } => (
                format!("{}/files/upload_sessions", self.urls.upload),
                json!({"folder_id": folder_id, "file_size": upload.size, "file_name": name}),
            ),
            Target::NewVersion { file_id, name } => {
                let mut body = json!({"file_size": upload.size});
                if let Some(name) = name {
                    body["file_name"] = json!(name);
                }
                (
                    format!("{}/files/{file_id}/upload_sessions", self.urls.upload),
                    body,
                )
            }
        };
        let session: UploadSession = self
            .retried("create_session", |t| {
                self.http.client().post(&url).bearer_auth(t.expose()).json(&body)
            })
            .await?;
        let checked = check_session(&session, upload.size)
            .and_then(|()| check_session_hosts(&self.urls.upload, &session));
        if let Err(why) = checked {
            // Box made a session the gateway will not use: it must not linger until it expires.
            // Aborted only when its abort URL is one on Box's upload host (`abort` checks it): the
            // token never goes elsewhere.
            if reqwest::Url::parse(&session.session_endpoints.abort).is_ok() {
                if let Err(err) = self.abort(&session).await {
                    tracing::warn!(session_id = %session.id, error = %err, "could not abort a session Box described wrongly");
                }
            }
            return Err(BoxError::protocol("create_session", why));
        }
        Ok(session)
    }

    /// `PUT {session.upload_part}` with the part's bytes, retried. After an error that may have stored
    /// the part (a 5xx or a dropped connection), the parts are listed before re-sending (box-api.md):
    /// parts are immutable, so re-sending a stored part would only earn a 416.
    ///
    /// `chunks` is shared: each attempt streams the same pieces, without copying them or their list.
    #[tracing::instrument(name = "box.upload_part", skip_all, fields(offset = offset, size = chunks.iter().map(|c| c.len()).sum::<usize>()))]
    pub async fn upload_part(
        &self,
        session: &UploadSession,
        file_size: u64,
        offset: u64,
        chunks: &Arc<[Bytes]>,
        sha1: &[u8; 20],
    ) -> Result<UploadPart, BoxError> {
        let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let expected = UploadPart {
            part_id: String::new(),
            offset,
            size,
            sha1: Some(hex::encode(sha1)),
        };
        let digest = format!("sha={}", b64(sha1));
        let range = format!("bytes {}-{}/{}", offset, offset + size - 1, file_size);
        // Set when an attempt failed in a way that may still have stored the part.
        let maybe_stored = std::sync::atomic::AtomicBool::new(false);
        let maybe_stored = &maybe_stored;
        // Held to the last attempt: the part keeps a connection of its own (see `BoxHttp`).
        let lane = self.http.part_lane();
        let (digest, range, expected, lane) = (&digest, &range, &expected, &lane);
        self.retry
            .run(&self.metrics, |attempt| async move {
                if maybe_stored.swap(false, Ordering::Relaxed) {
                    if let Some(part) = self.find_part(session, offset).await? {
                        return check_echo(&part, expected);
                    }
                }
                let url = self.session_url("upload_part", &session.session_endpoints.upload_part)?;
                let result = self
                    .call("upload_part", attempt.deadline, |t| {
                        lane.client()
                            .put(url)
                            .bearer_auth(t.expose())
                            .header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(header::CONTENT_LENGTH, size)
                            .header(header::CONTENT_RANGE, range.as_str())
                            .header("Digest", digest.as_str())
                            .body(stream_body(chunks.clone()))
                    })
                    .await;
                match result {
                    Ok(PartEcho { part }) => check_echo(&part, expected),
                    Err(err) => {
                        maybe_stored.store(err.may_have_landed(), Ordering::Relaxed);
                        Err(err)
                    }
                }
            })
            .await
    }

    async fn find_part(&self, session: &UploadSession, offset: u64) -> Result<Option<UploadPart>, BoxError> {
        Ok(self
            .list_parts(session)
            .await?
            .into_iter()
            .find(|p| p.offset == offset))
    }

    /// `GET {session.list_parts}`, every page (`offset` counts parts, at most 1000 a page).
    #[tracing::instrument(name = "box.list_parts", skip_all)]
    pub async fn list_parts(&self, session: &UploadSession) -> Result<Vec<UploadPart>, BoxError> {
        const LIMIT: usize = 1000;
        let url = self.session_url("list_parts", &session.session_endpoints.list_parts)?;
        let mut parts = Vec::new();
        loop {
            let query = [("offset", parts.len()), ("limit", LIMIT)];
            let page: PartsPage = self
                .retried("list_parts", |t| {
                    self.http.client().get(url).query(&query).bearer_auth(t.expose())
                })
                .await?;
            let got = page.entries.len();
            parts.extend(page.entries);
            // A Box (or proxy) that pages without end is cut off at Box's own part limit.
            if parts.len() > MAX_PARTS as usize {
                return Err(BoxError::protocol(
                    "list_parts",
                    format!("more than {MAX_PARTS} parts listed"),
                ));
            }
            let total = page.total_count.unwrap_or(0).min(MAX_PARTS) as usize;
            if got == 0 || got < LIMIT && parts.len() >= total || parts.len() >= total && total > 0 {
                return Ok(parts);
            }
        }
    }

    /// `POST {session.commit}`, one attempt: the caller loops on `Pending` within its time budget,
    /// which is also `deadline`, the bound of this attempt's wait for the pacer's room.
    #[tracing::instrument(name = "box.commit", skip_all, fields(parts = parts.len()))]
    pub async fn commit(
        &self,
        session: &UploadSession,
        upload: &NewUpload,
        sha1: &[u8; 20],
        parts: &[UploadPart],
        deadline: tokio::time::Instant,
    ) -> Result<CommitAnswer, BoxError> {
        let mut body = json!({"parts": parts});
        let attributes = upload.timestamps();
        if !attributes.is_empty() {
            body["attributes"] = Value::Object(attributes);
        }
        let digest = format!("sha={}", b64(sha1));
        let url = self.session_url("commit", &session.session_endpoints.commit)?;
        let response = self
            .send("commit", deadline, |t| {
                self.http
                    .client()
                    .post(url)
                    .bearer_auth(t.expose())
                    .header("Digest", digest.as_str())
                    .json(&body)
            })
            .await?;
        if response.status() == StatusCode::ACCEPTED {
            return Ok(CommitAnswer::Pending(parse_retry_after(response.headers())));
        }
        let files: FileCollection = decode("commit", response).await?;
        first_file_of("commit", files).map(CommitAnswer::Committed)
    }

    /// `DELETE {session.abort}`: the parts are discarded. Retried (a 404 after a retry means an
    /// earlier attempt did it); never held back by the pacer (`send`).
    #[tracing::instrument(name = "box.abort", skip_all)]
    pub async fn abort(&self, session: &UploadSession) -> Result<(), BoxError> {
        let url = self.session_url("abort", &session.session_endpoints.abort)?;
        self.deleted("abort", |t| {
            self.http.client().delete(url).bearer_auth(t.expose())
        })
        .await
    }

    /// `DELETE {session.abort}`, one attempt, at once: what a failed upload waits for before its
    /// client is answered (`SessionGuard` retries a failure in the background).
    #[tracing::instrument(name = "box.abort", skip_all)]
    pub async fn abort_once(&self, session: &UploadSession) -> Result<(), BoxError> {
        let url = self.session_url("abort", &session.session_endpoints.abort)?;
        // An abort does not wait for the pacer (`send`): no deadline to give.
        self.send("abort", tokio::time::Instant::now(), |t| {
            self.http.client().delete(url).bearer_auth(t.expose())
        })
        .await
        .map(drop)
    }

    /// `OPTIONS {api}/files/content` (or `/files/{id}/content`): the name, permission and quota checks
    /// of an upload, without its bytes.
    #[tracing::instrument(name = "box.preflight", skip_all)]
    pub async fn preflight(&self, upload: &NewUpload) -> Result<(), BoxError> {
        let (url, body) = match &upload.target {
            Target::NewFile { folder_id, name } => (
                format!("{}/files/content", self.urls.api),
                json!({"name": name, "size": upload.size, "parent": {"id": folder_id}}),
            ),
            Target::NewVersion { file_id, name } => {
                let mut body = json!({"size": upload.size});
                if let Some(name) = name {
                    body["name"] = json!(name);
                }
                (format!("{}/files/{file_id}/content", self.urls.api), body)
            }
        };
        let _: serde::de::IgnoredAny = self
            .retried("preflight", |t| {
                self.http
                    .client()
                    .request(Method::OPTIONS, &url)
                    .bearer_auth(t.expose())
                    .json(&body)
            })
            .await?;
        Ok(())
    }

    /// `POST {upload}/files/content` (or `/files/{id}/content`): a small file in one request, with its
    /// SHA-1 in `Content-MD5` (Box's name for it, hex) so Box refuses corrupted bytes.
    #[tracing::instrument(name = "box.upload_direct", skip_all)]
    pub async fn upload_direct(
        &self,
        upload: &NewUpload,
        content: &[Bytes],
        sha1: &[u8; 20],
    ) -> Result<FileObject, BoxError> {
        let mut attributes = upload.timestamps();
        let url = match &upload.target {
            Target::NewFile { folder_id, name } => {
                attributes.insert("name".into(), json!(name));
                attributes.insert("parent".into(), json!({"id": folder_id}));
                format!("{}/files/content", self.urls.upload)
            }
            Target::NewVersion { file_id, name } => {
                if let Some(name) = name {
                    attributes.insert("name".into(), json!(name));
                }
                format!("{}/files/{file_id}/content", self.urls.upload)
            }
        };
        // Box wants `attributes` before `file` (400 metadata_after_file_contents otherwise); the body
        // is built by hand so the file's bytes are not copied.
        let boundary = format!("box-upload-gateway-{}", uuid::Uuid::new_v4().simple());
        let head = Bytes::from(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"attributes\"\r\n\r\n{}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n",
            Value::Object(attributes)
        ));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let length = head.len() + content.iter().map(Bytes::len).sum::<usize>() + tail.len();
        let sha1_hex = hex::encode(sha1);
        // The list is made once; each attempt streams it without copying it.
        let mut parts = Vec::with_capacity(content.len() + 2);
        parts.push(head);
        parts.extend_from_slice(content);
        parts.push(tail);
        let parts: Arc<[Bytes]> = parts.into();
        let build = &|t: &Secret| {
            self.http
                .client()
                .post(&url)
                .bearer_auth(t.expose())
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .header(header::CONTENT_LENGTH, length)
                .header("Content-MD5", sha1_hex.as_str())
                .body(stream_body(parts.clone()))
        };
        // Set when an attempt's answer was lost (a 5xx, a timeout, a dropped connection): the file may
        // have landed, so Box is asked what it holds before the bytes go again, and once more before
        // giving up. A re-sent upload that had landed would otherwise meet its own file as a name
        // conflict (a new file), or become a second identical version.
        let lost = AtomicBool::new(false);
        let lost = &lost;
        let size = upload.size;
        let result = self
            .retry
            .run(&self.metrics, |attempt| async move {
                if lost.load(Ordering::Relaxed) {
                    if let Some(file) = self.recover("direct_upload", upload, sha1, size).await {
                        return Ok(file);
                    }
                }
                let answer = self.call("direct_upload", attempt.deadline, build).await;
                if let Err(err) = &answer {
                    lost.fetch_or(err.may_have_landed(), Ordering::Relaxed);
                }
                first_file_of("direct_upload", answer?)
            })
            .await;
        match result {
            Err(err) if lost.load(Ordering::Relaxed) => {
                self.recover("direct_upload", upload, sha1, size).await.ok_or(err)
            }
            other => other,
        }
    }

    /// After a lost answer: the file Box holds where the upload was going, if it is the one sent (same
    /// SHA-1 and size; for a new file, the same name in the folder). `None` when it is not there, or
    /// when Box could not be asked (logged and counted as `unknown`).
    #[tracing::instrument(name = "box.recover", skip_all)]
    pub async fn recover(
        &self,
        endpoint: &'static str,
        upload: &NewUpload,
        sha1: &[u8; 20],
        size: u64,
    ) -> Option<FileObject> {
        let found = self.find_landed(upload, &hex::encode(sha1), size).await;
        let outcome = match &found {
            Ok(Some(_)) => "landed",
            Ok(None) => "not_landed",
            Err(_) => "unknown",
        };
        self.metrics
            .lost_answers
            .with_label_values(&[endpoint, outcome])
            .inc();
        match found {
            Ok(Some(file)) => {
                tracing::info!(
                    endpoint,
                    file_id = file.id(),
                    "an answer was lost but the file had landed"
                );
                Some(file)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(endpoint, error = %err, "an answer was lost and Box could not be asked whether the file landed");
                None
            }
        }
    }

    async fn find_landed(
        &self,
        upload: &NewUpload,
        sha1_hex: &str,
        size: u64,
    ) -> Result<Option<FileObject>, BoxError> {
        let same = |item: &Value| {
            item.get("sha1")
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case(sha1_hex))
                && item.get("size").and_then(Value::as_u64) == Some(size)
        };
        match &upload.target {
            Target::NewFile { folder_id, name } => {
                match self.find_in_folder(folder_id, name, Some("file")).await? {
                    Some(item) if same(&item) => {
                        let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
                        self.get_file(id).await.map(Some)
                    }
                    _ => Ok(None),
                }
            }
            Target::NewVersion { file_id, name } => {
                let file = self.get_file(file_id).await?;
                let named = name
                    .as_deref()
                    .is_none_or(|n| file.0.get("name").and_then(Value::as_str) == Some(n));
                Ok((named && same(&file.0)).then_some(file))
            }
        }
    }

    /// The item named `name` in the folder (of type `kind`, if given): `GET {api}/folders/{id}/items`,
    /// page by page (at most 1000 a page), with `fields=name,sha1,size`. Box names are unique in a
    /// folder regardless of case.
    async fn find_in_folder(
        &self,
        folder_id: &str,
        name: &str,
        kind: Option<&str>,
    ) -> Result<Option<Value>, BoxError> {
        const LIMIT: u64 = 1000;
        let url = format!("{}/folders/{folder_id}/items", self.urls.api);
        let lower = name.to_lowercase();
        let mut offset = 0;
        loop {
            let query = [
                ("fields", "name,sha1,size".to_owned()),
                ("offset", offset.to_string()),
                ("limit", LIMIT.to_string()),
            ];
            let page: ItemsPage = self
                .retried("folder_items", |t| {
                    self.http.client().get(&url).query(&query).bearer_auth(t.expose())
                })
                .await?;
            let found = page.entries.iter().find(|item| {
                kind.is_none_or(|k| item.get("type").and_then(Value::as_str) == Some(k))
                    && item
                        .get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.to_lowercase() == lower)
            });
            if let Some(item) = found {
                return Ok(Some(item.clone()));
            }
            offset += page.entries.len() as u64;
            if page.entries.is_empty() || offset >= page.total_count.unwrap_or(0) {
                return Ok(None);
            }
            // Pages without end (a count that grows, pages of one item) stop somewhere: a folder of
            // a million items is past anything this search is meant for.
            if offset >= MAX_FOLDER_ITEMS {
                return Err(BoxError::protocol(
                    "folder_items",
                    format!("more than {MAX_FOLDER_ITEMS} items listed"),
                ));
            }
        }
    }

    /// The item named `name` in a folder, whatever its type: (`type`, `id`), e.g. (`folder`, `123`).
    /// A 404 is the folder gone (or hidden).
    pub async fn find_item(&self, folder_id: &str, name: &str) -> Result<Option<(String, String)>, BoxError> {
        let item = self.find_in_folder(folder_id, name, None).await?;
        Ok(item.and_then(|item| {
            let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
            Some((text("type")?, text("id")?))
        }))
    }

    /// `POST {api}/folders` with `{"name", "parent": {"id"}}`, retried like any call. A 409
    /// `item_name_in_use` is an answer, not a failure: the folder in the way is the one asked for
    /// (`Existing`), anything else in the way is `ItemInTheWay`. Box compares names regardless of
    /// case, so `Existing` may differ from `name` in case. After a lost answer (a 5xx that had
    /// created the folder), the retry meets the folder itself and answers `Existing`.
    #[tracing::instrument(name = "box.create_folder", skip_all)]
    pub async fn create_folder(&self, parent_id: &str, name: &str) -> Result<FolderCreated, FolderError> {
        #[derive(serde::Deserialize)]
        struct Created {
            id: String,
        }
        let url = self.api_path(&["folders"], "create_folder")?;
        let body = json!({"name": name, "parent": {"id": parent_id}});
        let answer: Result<Created, BoxError> = self
            .retried("create_folder", |t| {
                self.http
                    .client()
                    .post(url.clone())
                    .bearer_auth(t.expose())
                    .json(&body)
            })
            .await;
        let err = match answer {
            Ok(created) => return Ok(FolderCreated::Created { id: created.id }),
            Err(err) => err,
        };
        let conflict = err
            .body()
            .filter(|_| err.status() == Some(409) && err.code() == Some("item_name_in_use"))
            .and_then(|b| b.conflict());
        match conflict {
            Some(c) if c.kind == "folder" => Ok(FolderCreated::Existing { id: c.id }),
            Some(c) => Err(FolderError::ItemInTheWay {
                name: name.to_owned(),
                id: c.id,
                kind: c.kind,
            }),
            None => Err(err.into()),
        }
    }

    /// `GET {api}/metadata_templates/{scope}/{key}/schema`; `None` when Box has no such template
    /// (404), or does not know the scope (400 `bad_request`, OpenAPI).
    #[tracing::instrument(name = "box.get_metadata_template", skip_all)]
    pub async fn metadata_template(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<MetadataTemplate>, BoxError> {
        let url = self.api_path(
            &["metadata_templates", scope, key, "schema"],
            "get_metadata_template",
        )?;
        let answer = self
            .retried("get_metadata_template", |t| {
                self.http.client().get(url.clone()).bearer_auth(t.expose())
            })
            .await;
        match answer {
            Ok(template) => Ok(Some(template)),
            Err(err) if matches!(err.status(), Some(404)) || err.code() == Some("bad_request") => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `PUT {api}/files/{id}?fields=description,tags,shared_link`: the answer is the mini file object
    /// plus those three (Box answers only what `fields` names, and `tags` only when named).
    #[tracing::instrument(name = "box.update_file", skip_all)]
    pub async fn update_file(&self, file_id: &str, update: &FileUpdate) -> Result<FileObject, BoxError> {
        let url = self.api_path(&["files", file_id], "update_file")?;
        self.retried("update_file", |t| {
            self.http
                .client()
                .put(url.clone())
                .query(&[("fields", "description,tags,shared_link")])
                .bearer_auth(t.expose())
                .json(update)
        })
        .await
        .map(FileObject)
    }

    /// `POST {api}/files/{id}/metadata/{scope}/{key}` with the values: 201 answers the instance.
    /// A 409 (`tuple_already_exists` as documented, `conflict` as seen, box-openapi#393) means the
    /// file has an instance already: see `update_metadata`.
    #[tracing::instrument(name = "box.create_metadata", skip_all)]
    pub async fn create_metadata(
        &self,
        file_id: &str,
        scope: &str,
        key: &str,
        values: &serde_json::Map<String, Value>,
    ) -> Result<Value, BoxError> {
        let url = self.api_path(&["files", file_id, "metadata", scope, key], "create_metadata")?;
        self.retried("create_metadata", |t| {
            self.http
                .client()
                .post(url.clone())
                .bearer_auth(t.expose())
                .json(values)
        })
        .await
    }

    /// `PUT {api}/files/{id}/metadata/{scope}/{key}`: sets each value with a JSON Patch `add`, which
    /// overwrites a value already there (OpenAPI, the update's `value`), so sending it again is
    /// harmless. Box applies the patch whole or not at all.
    #[tracing::instrument(name = "box.update_metadata", skip_all)]
    pub async fn update_metadata(
        &self,
        file_id: &str,
        scope: &str,
        key: &str,
        values: &serde_json::Map<String, Value>,
    ) -> Result<Value, BoxError> {
        let url = self.api_path(&["files", file_id, "metadata", scope, key], "update_metadata")?;
        let ops: Vec<Value> = values
            .iter()
            .map(|(k, v)| {
                // JSON Pointer (RFC 6901) escapes `~` and `/` in a key.
                let path = format!("/{}", k.replace('~', "~0").replace('/', "~1"));
                json!({"op": "add", "path": path, "value": v})
            })
            .collect();
        let body = serde_json::to_vec(&ops).unwrap_or_default();
        self.retried("update_metadata", |t| {
            self.http
                .client()
                .put(url.clone())
                .bearer_auth(t.expose())
                .header(header::CONTENT_TYPE, "application/json-patch+json")
                .body(body.clone())
        })
        .await
    }

    /// `{api}/a/b/...` with each segment percent-encoded: an id, scope or key that came from a caller
    /// can never change the path's shape (`..`, `/`, `?`).
    fn api_path(&self, segments: &[&str], endpoint: &'static str) -> Result<reqwest::Url, BoxError> {
        let mut url = reqwest::Url::parse(&self.urls.api)
            .map_err(|e| BoxError::protocol(endpoint, format!("the Box API URL does not parse: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| BoxError::protocol(endpoint, "the Box API URL cannot take a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// `GET {api}/files/{id}`.
    pub async fn get_file(&self, file_id: &str) -> Result<FileObject, BoxError> {
        let url = format!("{}/files/{file_id}", self.urls.api);
        self.retried("get_file", |t| {
            self.http.client().get(&url).bearer_auth(t.expose())
        })
        .await
        .map(FileObject)
    }

    /// `PUT {api}/files/{id}` with `parent` and `name`: the file moved into the folder under the name
    /// (a staged upload landing once its scan was clean). 409 `item_name_in_use` when the name is
    /// taken there (its conflict names the file). A lost answer is retried: moving a file where it
    /// already is, under its own name, is no conflict.
    #[tracing::instrument(name = "box.move_file", skip_all)]
    pub async fn move_file(
        &self,
        file_id: &str,
        folder_id: &str,
        name: &str,
    ) -> Result<FileObject, BoxError> {
        let url = self.api_path(&["files", file_id], "move_file")?;
        let body = json!({"parent": {"id": folder_id}, "name": name});
        self.retried("move_file", |t| {
            self.http
                .client()
                .put(url.clone())
                .bearer_auth(t.expose())
                .json(&body)
        })
        .await
        .map(FileObject)
    }

    /// `GET {api}/files/{id}/content`: the file's bytes as they come (Box answers with a redirect to
    /// a download host, which is followed; the token is not sent there, reqwest drops it across
    /// hosts). The request is retried until the answer starts; the body is not: a stream that breaks
    /// fails. `within` bounds the whole download (the client's per-call timeout is for parts).
    #[tracing::instrument(name = "box.download_file", skip_all)]
    pub async fn download_file(
        &self,
        file_id: &str,
        within: std::time::Duration,
    ) -> Result<impl futures_util::Stream<Item = Result<Bytes, BoxError>> + Send + Unpin + 'static, BoxError>
    {
        use futures_util::TryStreamExt;
        let url = self.api_path(&["files", file_id, "content"], "download_file")?;
        let response = self
            .retry
            .run(&self.metrics, |attempt| {
                self.send("download_file", attempt.deadline, |t| {
                    self.http
                        .client()
                        .get(url.clone())
                        .bearer_auth(t.expose())
                        .timeout(within)
                })
            })
            .await?;
        Ok(response
            .bytes_stream()
            .map_err(|e| BoxError::transport("download_file", e)))
    }

    /// `DELETE {api}/files/{id}`: a file the gateway created, removed (to the trash) because it is
    /// not what was sent. Not retried after a lost answer blindly: a 404 then means it is gone.
    #[tracing::instrument(name = "box.delete_file", skip_all)]
    pub async fn delete_file(&self, file_id: &str) -> Result<(), BoxError> {
        let url = format!("{}/files/{file_id}", self.urls.api);
        self.deleted("delete_file", |t| {
            self.http.client().delete(&url).bearer_auth(t.expose())
        })
        .await
    }

    /// `DELETE {api}/files/{id}/versions/{version_id}`: a version the gateway added, removed because
    /// it is not what was sent (the file's previous version becomes current again).
    #[tracing::instrument(name = "box.delete_file_version", skip_all)]
    pub async fn delete_file_version(&self, file_id: &str, version_id: &str) -> Result<(), BoxError> {
        let url = format!("{}/files/{file_id}/versions/{version_id}", self.urls.api);
        self.deleted("delete_file_version", |t| {
            self.http.client().delete(&url).bearer_auth(t.expose())
        })
        .await
    }

    /// A DELETE with the retry policy; a 404 after a retry means an earlier attempt did it.
    async fn deleted(
        &self,
        endpoint: &'static str,
        build: impl Fn(&Secret) -> RequestBuilder,
    ) -> Result<(), BoxError> {
        self.retry
            .run(&self.metrics, |attempt| {
                let sent = self.send(endpoint, attempt.deadline, &build);
                async move {
                    match sent.await {
                        Ok(_) => Ok(()),
                        Err(err) if attempt.number > 1 && err.status() == Some(404) => Ok(()),
                        Err(err) => Err(err),
                    }
                }
            })
            .await
    }

    /// `GET {api}/users/me?fields=id`: the user the token acts as (pass-through checks a caller's
    /// token with it before reading any body byte). A 401 is the token refused.
    #[tracing::instrument(name = "box.users_me", skip_all)]
    pub async fn users_me(&self) -> Result<String, BoxError> {
        #[derive(serde::Deserialize)]
        struct Me {
            id: String,
        }
        let url = format!("{}/users/me", self.urls.api);
        let me: Me = self
            .retried("users_me", |t| {
                self.http
                    .client()
                    .get(&url)
                    .query(&[("fields", "id")])
                    .bearer_auth(t.expose())
            })
            .await?;
        Ok(me.id)
    }

    /// `GET {api}/files/{id}?fields=parent`: the folder a file is in.
    pub async fn parent_folder(&self, file_id: &str) -> Result<String, BoxError> {
        #[derive(serde::Deserialize)]
        struct WithParent {
            parent: Option<IdOnly>,
        }
        #[derive(serde::Deserialize)]
        struct IdOnly {
            id: String,
        }
        let url = format!("{}/files/{file_id}", self.urls.api);
        let file: WithParent = self
            .retried("get_file", |t| {
                self.http
                    .client()
                    .get(&url)
                    .query(&[("fields", "parent")])
                    .bearer_auth(t.expose())
            })
            .await?;
        file.parent
            .map(|p| p.id)
            .ok_or_else(|| BoxError::protocol("get_file", "the file has no parent folder"))
    }

    /// One cheap call (`GET /folders/0?fields=id`), not retried, for the readiness check: whether Box
    /// answers and, `with_credentials`, accepts the token (minting one if needed). Without credentials
    /// (pass-through) any answer below 500 means Box is there. With them, a 403 or 404 (a user who
    /// cannot see All Files) and a 429 still mean Box took the token. It does not wait for the
    /// pacer: no room now means Box answered this principal 429 lately (a pause) or the gateway is
    /// spending the whole budget, and either way Box is there; the next check asks again.
    pub async fn probe(&self, with_credentials: bool) -> Result<(), BoxError> {
        const ENDPOINT: &str = "probe";
        let url = format!("{}/folders/0", self.urls.api);
        if !with_credentials {
            let request = self.http.client().get(&url).query(&[("fields", "id")]);
            let response = self.counted(ENDPOINT, request).await?;
            return match response.status().is_server_error() {
                true => Err(error_from(ENDPOINT, response).await),
                false => Ok(()),
            };
        }
        let answer = self
            .send(ENDPOINT, tokio::time::Instant::now(), |t| {
                self.http
                    .client()
                    .get(&url)
                    .query(&[("fields", "id")])
                    .bearer_auth(t.expose())
            })
            .await;
        match answer {
            Err(err) if matches!(err.status(), Some(403 | 404 | 429)) => Ok(()),
            Err(err) if matches!(err.kind, BoxErrorKind::Paced { .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// A call with the retry policy around it, decoding a JSON answer.
    async fn retried<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        build: impl Fn(&Secret) -> RequestBuilder,
    ) -> Result<T, BoxError> {
        self.retry
            .run(&self.metrics, |attempt| {
                self.call(endpoint, attempt.deadline, &build)
            })
            .await
    }

    /// One call decoding a JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        deadline: tokio::time::Instant,
        build: impl Fn(&Secret) -> RequestBuilder,
    ) -> Result<T, BoxError> {
        decode(endpoint, self.send(endpoint, deadline, build).await?).await
    }

    /// One call: authorise, send, count, and turn any non-2xx answer into a typed error.
    /// A 401 is tried again with a fresh token when the provider can mint one, up to
    /// `MAX_REFRESHES` times: a token can expire between its refresh and its use (Box revokes and
    /// expires tokens on its own schedule), and one unlucky second 401 must not fail an upload as
    /// `box_auth_failed`. A refused grant fails at the token endpoint instead, at once.
    ///
    /// The pacer's room is waited for until `deadline` (the attempt's), and a call it has no room for
    /// by then fails at once (`Paced`, answered 503 `box_rate_limited` with `Retry-After`). Cleanup
    /// (`abort`, `delete_file`, `delete_file_version`) never waits for it. A `Retry-After` is taken
    /// at most `max_retry_after` (`box_rate_max_pause_secs`) long, for the pause and the error alike.
    async fn send(
        &self,
        endpoint: &'static str,
        deadline: tokio::time::Instant,
        build: impl Fn(&Secret) -> RequestBuilder,
    ) -> Result<Response, BoxError> {
        const MAX_REFRESHES: u32 = 3;
        let mut refreshes = 0;
        loop {
            // Paced before the token is fetched: a long wait must not leave it stale.
            if let Some(pacer) = &self.pacer {
                // Box's upload limit counts new sessions and direct uploads (each attempt is one).
                let upload = matches!(endpoint, "create_session" | "direct_upload");
                let cleanup = matches!(endpoint, "abort" | "delete_file" | "delete_file_version");
                if cleanup {
                    pacer.cleanup(&self.pace_key, endpoint).await;
                } else if !(upload && self.prepaid.as_ref().is_some_and(Admission::take)) {
                    if let Err(no_room) = pacer.call(&self.pace_key, upload, deadline).await {
                        self.metrics
                            .box_rate_calls_refused
                            .with_label_values(&[endpoint])
                            .inc();
                        let retry_after = no_room.retry_after;
                        return Err(BoxError::new(endpoint, BoxErrorKind::Paced { retry_after })
                            .capped(self.retry.max_retry_after));
                    }
                }
                pacer.count(&self.pace_key);
            }
            let token = self.auth.token().await?;
            let mut request = build(&token);
            if let Some(user) = &self.as_user {
                request = request.header("As-User", user.as_ref());
            }
            let response = self.counted(endpoint, request).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                if let Some(pacer) = &self.pacer {
                    pacer
                        .throttled(&self.pace_key, endpoint, parse_retry_after(response.headers()))
                        .await;
                }
            }
            let refreshable = status == StatusCode::UNAUTHORIZED && self.auth.invalidate(&token);
            if refreshable && refreshes < MAX_REFRESHES {
                refreshes += 1;
                continue;
            }
            let mut err = error_from(endpoint, response)
                .await
                .capped(self.retry.max_retry_after);
            err.stale_token = refreshable;
            return Err(err);
        }
    }
}

impl BoxClient {
    /// Sends one request as it is, counting it by endpoint and answer in the metrics.
    async fn counted(&self, endpoint: &'static str, request: RequestBuilder) -> Result<Response, BoxError> {
        let started = Instant::now();
        let result = request.send().await;
        let label = match &result {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "connection".into(),
        };
        self.metrics
            .box_calls
            .with_label_values(&[endpoint, &label])
            .inc();
        self.metrics
            .box_call_duration
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|e| BoxError::transport(endpoint, e))
    }
}

async fn error_from(endpoint: &'static str, response: Response) -> BoxError {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    status_error(endpoint, status, &headers, &bytes)
}

/// A non-2xx answer as a typed error, whatever its headers and body: Box's error JSON when it is
/// one, an empty body otherwise (a proxy's HTML page, a truncated answer).
pub(crate) fn status_error(
    endpoint: &'static str,
    status: u16,
    headers: &header::HeaderMap,
    bytes: &[u8],
) -> BoxError {
    let retry_after = parse_retry_after(headers);
    let request_id = headers
        .get("box-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = BoxErrorBody::from_bytes(bytes);
    if body.request_id.is_none() {
        body.request_id = request_id;
    }
    if body.code.is_none() && status == 401 {
        body.code = Some("unauthorized".into());
    }
    BoxError::new(
        endpoint,
        BoxErrorKind::Status {
            status,
            body: Box::new(body),
            retry_after,
        },
    )
}

async fn decode<T: DeserializeOwned>(endpoint: &'static str, response: Response) -> Result<T, BoxError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| BoxError::transport(endpoint, e))?;
    decode_bytes(endpoint, &bytes)
}

pub(crate) fn decode_bytes<T: DeserializeOwned>(endpoint: &'static str, bytes: &[u8]) -> Result<T, BoxError> {
    serde_json::from_slice(bytes).map_err(|e| BoxError::protocol(endpoint, format!("bad JSON: {e}")))
}

/// The file of a commit's or direct upload's answer: an object with a string `id` (what the gateway
/// answers, and what it would delete if the bytes differ), else a protocol error.
pub(crate) fn first_file_of(endpoint: &'static str, files: FileCollection) -> Result<FileObject, BoxError> {
    let file = files
        .entries
        .into_iter()
        .next()
        .map(FileObject)
        .ok_or_else(|| BoxError::protocol(endpoint, "no file in the answer"))?;
    if !file.0.is_object() || file.id().is_none_or(str::is_empty) {
        return Err(BoxError::protocol(endpoint, "the answered file has no id"));
    }
    Ok(file)
}

/// Box's limit on a session's parts (list-parts pages by part offset, at most 10,000).
pub const MAX_PARTS: u64 = 10_000;
const MAX_FOLDER_ITEMS: u64 = 1_000_000;

/// Whether a new session is one the gateway can use for `size` bytes: every part but the last is
/// exactly `part_size`, so `total_parts` must be the quotient; the parts within Box's limit; and its
/// endpoints URLs (they are called as given, never built by hand).
pub(crate) fn check_session(session: &UploadSession, size: u64) -> Result<(), String> {
    if session.part_size == 0 || session.total_parts != size.div_ceil(session.part_size) {
        return Err(format!(
            "session {} of {} parts of {} bytes for {} bytes: its part count disagrees with its part size",
            session.id, session.total_parts, session.part_size, size
        ));
    }
    if session.total_parts > MAX_PARTS {
        return Err(format!(
            "session of {} parts: more than Box's {MAX_PARTS}",
            session.total_parts
        ));
    }
    for (name, url) in called_endpoints(session) {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(format!("session endpoint {name} is not an http(s) URL")),
        }
    }
    Ok(())
}

/// The endpoints of a session the gateway calls, by name (`status` and `log_event` it never calls).
fn called_endpoints(session: &UploadSession) -> [(&'static str, &str); 4] {
    let e = &session.session_endpoints;
    [
        ("upload_part", &e.upload_part),
        ("commit", &e.commit),
        ("abort", &e.abort),
        ("list_parts", &e.list_parts),
    ]
}

/// Every endpoint of a new session on the configured upload host (`check_session_host`).
fn check_session_hosts(upload_base: &str, session: &UploadSession) -> Result<(), String> {
    for (name, url) in called_endpoints(session) {
        check_session_host(upload_base, url).map_err(|why| format!("session endpoint {name}: {why}"))?;
    }
    Ok(())
}

/// Whether `url` may receive the gateway's Box token as a session endpoint: on the configured upload
/// host (`box_upload_url`), or another host under that host's parent domain (box-api.md: Box may
/// answer on another upload host; `upload.box.com` admits `*.box.com`, an IP address or a one-label
/// host only itself); on the same port; over https when the configured URL is; without user info.
/// The reason names the configured host, never the URL (stored state, whoever wrote it).
pub(crate) fn check_session_host(upload_base: &str, url: &str) -> Result<(), String> {
    let base = reqwest::Url::parse(upload_base).map_err(|_| "box_upload_url is not a URL".to_owned())?;
    let base_host = base.host_str().unwrap_or_default();
    let not_ours = || format!("not on the Box upload host ({base_host})");
    let url = reqwest::Url::parse(url).map_err(|_| "not a URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") || (base.scheme() == "https" && url.scheme() != "https") {
        return Err(format!("not {}", base.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(not_ours());
    }
    let host = url.host_str().unwrap_or_default();
    // An IP address has no parent domain; `Url` gives IPv6 addresses in brackets.
    let is_domain = |h: &str| !h.starts_with('[') && h.parse::<std::net::IpAddr>().is_err();
    let parent = Some(base_host)
        .filter(|h| is_domain(h))
        .and_then(|h| h.split_once('.'))
        .map(|(_, p)| p.to_ascii_lowercase())
        .filter(|p| p.contains('.'));
    let same_host = host.eq_ignore_ascii_case(base_host)
        || parent.is_some_and(|p| is_domain(host) && host.to_ascii_lowercase().ends_with(&format!(".{p}")));
    if !same_host || url.port_or_known_default() != base.port_or_known_default() {
        return Err(not_ours());
    }
    Ok(())
}

/// A careful client checks the echo of each part (offset, size, sha1) against what it sent.
fn check_echo(echo: &UploadPart, sent: &UploadPart) -> Result<UploadPart, BoxError> {
    let sha_ok = echo
        .sha1
        .as_deref()
        .is_none_or(|s| s.eq_ignore_ascii_case(sent.sha1.as_deref().unwrap_or("")));
    if echo.offset != sent.offset || echo.size != sent.size || !sha_ok {
        return Err(BoxError::protocol(
            "upload_part",
            format!(
                "part echo differs: sent offset {} size {} sha1 {:?}, Box has offset {} size {} sha1 {:?}",
                sent.offset, sent.size, sent.sha1, echo.offset, echo.size, echo.sha1
            ),
        ));
    }
    Ok(UploadPart {
        sha1: sent.sha1.clone(),
        ..echo.clone()
    })
}

/// A body of shared chunks: sent without copying them, and re-sent on a retry for the price of one
/// reference count (neither the bytes nor the list of pieces is copied).
fn stream_body(chunks: Arc<[Bytes]>) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..chunks.len()).map(move |i| Ok::<_, std::io::Error>(chunks[i].clone())),
    ))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_endpoints_are_pinned_to_the_upload_host() {
        let box_base = "https://upload.box.com/api/2.0";
        let ok = |url: &str| check_session_host(box_base, url).is_ok();
        assert!(ok("https://upload.box.com/api/2.0/files/upload_sessions/F1"));
        assert!(ok(
            "https://UPLOAD.box.com:443/api/2.0/files/upload_sessions/F1/commit"
        ));
        assert!(ok(
            "https://upload-las.app.box.com/api/2.0/files/upload_sessions/F1"
        ));
        for bad in [
            "http://upload.box.com/api/2.0/files/upload_sessions/F1",
            "https://upload.box.com:8443/api/2.0/files/upload_sessions/F1",
            "https://attacker.example/api/2.0/files/upload_sessions/F1",
            "https://box.com.attacker.example/x",
            "https://evilbox.com/x",
            "https://user:pass@upload.box.com/x",
            "https://10.0.0.1/x",
            "not a url",
        ] {
            let why = check_session_host(box_base, bad).unwrap_err();
            assert!(!why.contains("attacker") && !why.contains("pass"), "{why}");
        }
        // The emulator on loopback: that address and port only.
        let local = "http://127.0.0.1:4000/api/2.0";
        assert!(check_session_host(local, "http://127.0.0.1:4000/api/2.0/files/upload_sessions/S").is_ok());
        for bad in [
            "http://127.0.0.1:4001/api/2.0/files/upload_sessions/S",
            "http://localhost:4000/api/2.0/files/upload_sessions/S",
            "http://127.0.0.2:4000/x",
        ] {
            assert!(check_session_host(local, bad).is_err(), "{bad}");
        }
        // A one-label host (a Kubernetes service) admits only itself.
        assert!(check_session_host("http://emulator:8080/api/2.0", "http://other:8080/x").is_err());
    }

    #[test]
    fn echo_must_match_what_was_sent() {
        let sent = UploadPart {
            part_id: String::new(),
            offset: 8,
            size: 8,
            sha1: Some("ab".into()),
        };
        let echo = UploadPart {
            part_id: "P1".into(),
            offset: 8,
            size: 8,
            sha1: Some("AB".into()),
        };
        assert_eq!(check_echo(&echo, &sent).unwrap().part_id, "P1");
        let wrong = UploadPart {
            size: 7,
            ..echo.clone()
        };
        assert!(check_echo(&wrong, &sent).is_err());
        let bad_sha = UploadPart {
            sha1: Some("cd".into()),
            ..echo
        };
        assert!(check_echo(&bad_sha, &sent).is_err());
    }
}
