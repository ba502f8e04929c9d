//! Spawning an emulator and speaking its protocol with reqwest, plus Box error-body assertions.
use box_upload_gateway::emulator::{Emulator, EmulatorConfig, EmulatorHandle, Inspection, DEV_TOKEN};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

pub use crate::support::files::{seeded_bytes, sha1_b64, sha1_hex};

pub const MIB: u64 = 1 << 20;

pub struct TestEmulator {
    pub handle: EmulatorHandle,
    pub client: reqwest::Client,
}

pub fn client() -> reqwest::Client {
    // The crate builds reqwest without a rustls provider; ring is the one it ships for TLS.
    box_upload_gateway::http_client::install_tls_provider();
    reqwest::Client::builder().build().expect("reqwest client")
}

/// Small parts keep the tests fast: 1 MiB parts, 2,500,000-byte minimum.
pub fn small_config() -> EmulatorConfig {
    EmulatorConfig {
        part_size: Some(MIB),
        min_chunked_size: 2_500_000,
        ..EmulatorConfig::default()
    }
}

pub async fn spawn() -> TestEmulator {
    spawn_with(small_config()).await
}

pub async fn spawn_with(config: EmulatorConfig) -> TestEmulator {
    let handle = Emulator::spawn(config).await.expect("emulator starts");
    TestEmulator {
        handle,
        client: client(),
    }
}

impl TestEmulator {
    pub fn inspect(&self) -> Inspection {
        self.handle.inspect()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.handle.api_url())
    }

    pub fn upload(&self, path: &str) -> String {
        format!("{}{path}", self.handle.upload_url())
    }

    pub fn post(&self, url: &str) -> RequestBuilder {
        self.client.post(url).bearer_auth(DEV_TOKEN)
    }

    pub fn get(&self, url: &str) -> RequestBuilder {
        self.client.get(url).bearer_auth(DEV_TOKEN)
    }

    pub fn put(&self, url: &str) -> RequestBuilder {
        self.client.put(url).bearer_auth(DEV_TOKEN)
    }

    pub fn delete(&self, url: &str) -> RequestBuilder {
        self.client.delete(url).bearer_auth(DEV_TOKEN)
    }

    /// `POST /2.0/folders`.
    pub async fn create_folder_raw(&self, parent_id: &str, name: &str) -> Response {
        self.post(&self.api("/folders"))
            .json(&json!({"name": name, "parent": {"id": parent_id}}))
            .send()
            .await
            .unwrap()
    }

    /// A small file in `folder_id` by direct upload; its id.
    pub async fn small_file(&self, folder_id: &str, name: &str) -> String {
        let res = self.direct_new(folder_id, name, b"fields land here").await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        body["entries"][0]["id"].as_str().unwrap().to_owned()
    }

    pub async fn create_session_raw(&self, body: Value) -> Response {
        self.post(&self.upload("/files/upload_sessions"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A session for a new file in folder 0; panics unless Box would answer 201.
    pub async fn create_session(&self, name: &str, size: u64) -> Value {
        let res = self
            .create_session_raw(json!({"folder_id": "0", "file_name": name, "file_size": size}))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
        res.json().await.unwrap()
    }

    pub async fn put_part_with(
        &self,
        session: &Value,
        content_range: &str,
        digest: &str,
        body: Vec<u8>,
    ) -> Response {
        let url = session["session_endpoints"]["upload_part"].as_str().unwrap();
        self.client
            .put(url)
            .bearer_auth(DEV_TOKEN)
            .header("content-type", "application/octet-stream")
            .header("content-range", content_range)
            .header("digest", digest)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Uploads `data[offset..offset+len]` as one part of a `data.len()`-byte file.
    pub async fn put_part(&self, session: &Value, data: &[u8], offset: u64, len: u64) -> Response {
        let part = &data[offset as usize..(offset + len) as usize];
        let range = format!("bytes {}-{}/{}", offset, offset + len - 1, data.len());
        self.put_part_with(session, &range, &format!("sha={}", sha1_b64(part)), part.to_vec())
            .await
    }

    /// Uploads every part of `data` in order and returns the parts' echoes.
    pub async fn put_all_parts(&self, session: &Value, data: &[u8]) -> Vec<Value> {
        let part_size = session["part_size"].as_u64().unwrap();
        let mut parts = Vec::new();
        let mut offset = 0;
        while offset < data.len() as u64 {
            let len = part_size.min(data.len() as u64 - offset);
            let res = self.put_part(session, data, offset, len).await;
            assert_eq!(res.status(), StatusCode::OK);
            parts.push(res.json::<Value>().await.unwrap()["part"].clone());
            offset += len;
        }
        parts
    }

    pub async fn commit_with(&self, session: &Value, digest: &str, body: Value) -> Response {
        self.try_commit_with(session, digest, body).await.unwrap()
    }

    /// A commit whose answer may never come (a `store_then_cut` fault).
    pub async fn try_commit_with(
        &self,
        session: &Value,
        digest: &str,
        body: Value,
    ) -> reqwest::Result<Response> {
        let url = session["session_endpoints"]["commit"].as_str().unwrap();
        self.post(url).header("digest", digest).json(&body).send().await
    }

    pub async fn commit(&self, session: &Value, data: &[u8], parts: &[Value]) -> Response {
        self.try_commit(session, data, parts).await.unwrap()
    }

    pub async fn try_commit(
        &self,
        session: &Value,
        data: &[u8],
        parts: &[Value],
    ) -> reqwest::Result<Response> {
        self.try_commit_with(
            session,
            &format!("sha={}", sha1_b64(data)),
            json!({ "parts": parts }),
        )
        .await
    }

    /// Creates a session, uploads `data` and commits it; returns the file object.
    pub async fn chunked_upload(&self, name: &str, data: &[u8]) -> Value {
        let session = self.create_session(name, data.len() as u64).await;
        let parts = self.put_all_parts(&session, data).await;
        let res = self.commit(&session, data, &parts).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json::<Value>().await.unwrap()["entries"][0].clone()
    }

    /// `multipart/form-data` by hand, so tests control the field order.
    pub async fn direct_upload(
        &self,
        url: &str,
        fields: &[(&str, &[u8])],
        content_md5: Option<&str>,
    ) -> Response {
        self.try_direct_upload(url, fields, content_md5).await.unwrap()
    }

    /// A direct upload whose answer may never come (a `cut_connection` or `store_then_cut` fault).
    pub async fn try_direct_upload(
        &self,
        url: &str,
        fields: &[(&str, &[u8])],
        content_md5: Option<&str>,
    ) -> reqwest::Result<Response> {
        let boundary = "emulator-test-boundary-7MA4YWxkTrZu0gW";
        let mut body = Vec::new();
        for (name, value) in fields {
            let disposition = match *name {
                "file" => {
                    "form-data; name=\"file\"; filename=\"blob\"\r\nContent-Type: application/octet-stream"
                        .to_owned()
                }
                _ => format!("form-data; name=\"{name}\""),
            };
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(value);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut req = self
            .post(url)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        if let Some(md5) = content_md5 {
            req = req.header("content-md5", md5);
        }
        req.send().await
    }

    pub async fn direct_new(&self, folder_id: &str, name: &str, data: &[u8]) -> Response {
        self.try_direct_new(folder_id, name, data).await.unwrap()
    }

    pub async fn try_direct_new(
        &self,
        folder_id: &str,
        name: &str,
        data: &[u8],
    ) -> reqwest::Result<Response> {
        let attributes = json!({"name": name, "parent": {"id": folder_id}}).to_string();
        self.try_direct_upload(
            &self.upload("/files/content"),
            &[("attributes", attributes.as_bytes()), ("file", data)],
            None,
        )
        .await
    }
}

/// A fault rule on every request of `endpoint` (once, as rules without `fraction` fire).
pub fn rule(
    endpoint: box_upload_gateway::emulator::Endpoint,
    action: box_upload_gateway::emulator::FaultAction,
) -> box_upload_gateway::emulator::FaultRule {
    box_upload_gateway::emulator::FaultRule {
        endpoint,
        nth: None,
        fraction: None,
        seed: None,
        times: None,
        action,
    }
}

/// Box's error body with this status (`code` defaults from it).
pub fn status(
    status: u16,
    code: Option<&str>,
    retry_after: Option<u64>,
) -> box_upload_gateway::emulator::FaultAction {
    box_upload_gateway::emulator::FaultAction::Status {
        status,
        code: code.map(str::to_owned),
        message: None,
        retry_after,
    }
}

/// Asserts Box's error body and its `request_id` matching the `BOX-REQUEST-ID` header; returns it.
/// Sends a request that must succeed at the HTTP level and reads its JSON answer.
pub trait SendJson {
    fn send_json<T: serde::de::DeserializeOwned>(self) -> impl std::future::Future<Output = T>;
}

impl SendJson for RequestBuilder {
    async fn send_json<T: serde::de::DeserializeOwned>(self) -> T {
        self.send().await.unwrap().json().await.unwrap()
    }
}

/// Box's `MetadataError` body (a metadata instance refused): `code`, `message`, `request_id`, and
/// neither `type` nor `status` (box/box-openapi#393).
pub async fn assert_metadata_error(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let header_id = res.headers()["box-request-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.expect("a JSON error body");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(body["request_id"], header_id, "{body}");
    assert!(
        body.get("type").is_none() && body.get("status").is_none(),
        "{body}"
    );
    body
}

/// An invoice template with one field of each type Box has (the example).
pub fn invoice_template() -> box_upload_gateway::emulator::MetadataTemplate {
    serde_json::from_value(json!({
        "scope": "enterprise", "templateKey": "invoiceData", "displayName": "Invoice data",
        "fields": [
            {"type": "float", "key": "amount", "displayName": "Amount"},
            {"type": "string", "key": "vendor"},
            {"type": "date", "key": "dueDate"},
            {"type": "enum", "key": "status", "options": [{"key": "open"}, {"key": "paid"}]},
            {"type": "multiSelect", "key": "regions", "options": [{"key": "EU"}, {"key": "US"}, {"key": "APAC"}]}
        ]
    }))
    .unwrap()
}

/// An emulator with Box's defaults plus the invoice template.
pub async fn spawn_with_invoice() -> TestEmulator {
    spawn_with(EmulatorConfig {
        metadata_templates: vec![invoice_template()],
        ..small_config()
    })
    .await
}

pub async fn assert_box_error(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let header_id = res
        .headers()
        .get("box-request-id")
        .expect("BOX-REQUEST-ID header")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = res.json().await.expect("a JSON error body");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["help_url"].is_string(), "{body}");
    assert!(body.get("context_info").is_some(), "{body}");
    assert_eq!(body["request_id"], header_id, "{body}");
    body
}
