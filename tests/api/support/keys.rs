//! The tests' secrets, and API keys built one way whether they go into the settings or into a keys
//! file.
use std::path::Path;

use box_upload_gateway::access::ApiKeyConfig;
use serde_json::{json, Value};

use super::app::{inspect, spawn_app_with, Options, TestApp};

/// A secret from tests/secrets.txt: the CI scan of the suite's debug log looks for every one of them.
pub fn secret(name: &str) -> &'static str {
    include_str!("../../secrets.txt")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("tests/secrets.txt has no {name}"))
}

/// The hex SHA-256 of an API key, as the keys file stores it.
pub fn sha256_hex(key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// An API key's entry, as the keys file and `api_keys` take it (held as JSON, so a field the gateway
/// adds needs no change here).
#[derive(Clone, Debug)]
pub struct ApiKey(Value);

impl ApiKey {
    /// A key named `name` whose secret is `key` (the gateway keeps its SHA-256), for folder 0.
    pub fn new(name: &str, key: &str) -> Self {
        Self(json!({"name": name, "sha256": sha256_hex(key), "folders": ["0"]}))
    }

    pub fn folders(self, folders: &[&str]) -> Self {
        self.merge(json!({ "folders": folders }))
    }

    pub fn max_file_size_bytes(self, bytes: u64) -> Self {
        self.merge(json!({ "max_file_size_bytes": bytes }))
    }

    pub fn as_user(self, user: &str) -> Self {
        self.merge(json!({ "as_user": user }))
    }

    pub fn webhook_url(self, url: &str) -> Self {
        self.merge(json!({ "webhook_url": url }))
    }

    /// The signing secret of the key's own receiver (`webhook_url`).
    pub fn webhook_secret(self, secret: &str) -> Self {
        self.merge(json!({ "webhook_secret": secret }))
    }

    pub fn max_uploads_per_minute(self, uploads: u32) -> Self {
        self.merge(json!({ "max_uploads_per_minute": uploads }))
    }

    pub fn max_bytes_per_day(self, bytes: u64) -> Self {
        self.merge(json!({ "max_bytes_per_day": bytes }))
    }

    /// Every field of `fields` (a JSON object), set or replaced.
    pub fn merge(mut self, fields: Value) -> Self {
        let entry = self.0.as_object_mut().unwrap();
        entry.extend(fields.as_object().expect("a JSON object").clone());
        self
    }

    /// As `Settings::api_keys` holds it.
    pub fn config(&self) -> ApiKeyConfig {
        serde_json::from_value(self.0.clone()).expect("a valid API key entry")
    }

    /// Its `[[keys]]` table, as the keys file holds it.
    fn toml(&self) -> String {
        let value = |v: &Value| match v {
            Value::Array(items) => format!(
                "[{}]",
                items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ),
            // A JSON string (quotes and backslashes escaped) is a TOML basic string.
            other => other.to_string(),
        };
        let fields: String = self
            .0
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k} = {}\n", value(v)))
            .collect();
        format!("[[keys]]\n{fields}")
    }
}

/// Writes `keys` as a keys file (`api_keys_file`) at `path`.
pub fn write_keys_file(path: &Path, keys: &[ApiKey]) {
    let tables: Vec<String> = keys.iter().map(ApiKey::toml).collect();
    std::fs::write(path, tables.join("\n")).unwrap();
}

/// A gateway with two keys in a keys file under `dir`: `team` may write only into a folder of its
/// own, up to 1 MiB, acting as user 777; `admin` may write into the root folder. The app and the
/// team's folder id.
pub async fn keyed_app(dir: &Path) -> (TestApp, String) {
    let path = dir.join("api-keys.toml");
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(move |s, emulator| {
            let team_folder = emulator.create_folder("0", "team");
            let team = ApiKey::new("team", secret("api_key_team"))
                .folders(&[&team_folder])
                .max_file_size_bytes(1024 * 1024)
                .as_user("777");
            write_keys_file(&path, &[team, ApiKey::new("admin", secret("api_key_admin"))]);
            s.api_keys_file = Some(path.display().to_string());
            s.allow_anonymous = false;
        })),
        ..Options::default()
    })
    .await;
    let team_folder = inspect(&app.emulator)["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "team")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (app, team_folder)
}

/// An API key named `name` for folder 0, with no limits of its own; its secret is `secret_name` in
/// tests/secrets.txt.
pub fn folder_zero_key(name: &str, secret_name: &str) -> ApiKeyConfig {
    ApiKey::new(name, secret(secret_name)).config()
}

/// POST /v1/upload-links with `body`, with the API key `api_key` (the secret itself) or none: the
/// status and the answer.
pub async fn make_link(app: &TestApp, api_key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = app
        .http
        .post(format!("{}/v1/upload-links", app.address))
        .json(&body);
    if let Some(k) = api_key {
        request = request.header("X-API-Key", k);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A link's token: the last segment of its URL.
pub fn token_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// The token of a link made with the API key `api_key` (the secret itself) and `body`.
pub async fn link_token(app: &TestApp, api_key: &str, body: Value) -> String {
    let (status, answer) = make_link(app, Some(api_key), body).await;
    assert_eq!(status, 201, "a link: {answer}");
    token_of(answer["url"].as_str().unwrap()).to_owned()
}

/// An upload link for folder 0, made by the key whose secret is `secret_name`, for files up to
/// `max_file_size_bytes`: its token.
pub async fn upload_link(app: &TestApp, secret_name: &str, max_file_size_bytes: u64) -> String {
    let body = json!({
        "folder_id": "0",
        "expires_in_secs": 3600,
        "max_file_size_bytes": max_file_size_bytes,
    });
    link_token(app, secret(secret_name), body).await
}

/// A Box access token the emulator mints for its user `user` (client credentials with a user
/// subject), as a pass-through caller would hold.
pub async fn user_token(app: &TestApp, user: &str) -> String {
    let answer: Value = app
        .http
        .post(format!("{}/oauth2/token", app.emulator.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", box_upload_gateway::emulator::DEV_CLIENT_ID),
            ("client_secret", box_upload_gateway::emulator::DEV_CLIENT_SECRET),
            ("box_subject_type", "user"),
            ("box_subject_id", user),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}
