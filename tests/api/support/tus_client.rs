//! A tus 1.0.0 client, request by request (the edge cases are the tests'), and tuspy, the protocol's
//! Python client, for whole uploads as an application sends them.
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::app::TestApp;

pub const TUS: &str = "1.0.0";

/// `Upload-Metadata`: each key with its value in base64.
pub fn metadata(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", base64::engine::general_purpose::STANDARD.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `POST {base}/v1/tus/` for an upload of `size` bytes with `pairs` as its metadata, ready for more
/// headers (a key, a link's token) and to be sent.
pub fn creation(
    http: &reqwest::Client,
    base: &str,
    size: u64,
    pairs: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    http.post(format!("{base}/v1/tus/"))
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", size)
        .header("Upload-Metadata", metadata(pairs))
}

/// Creates an upload named `name`: its path (the `Location`).
pub async fn create(http: &reqwest::Client, base: &str, size: u64, name: &str) -> String {
    let response = creation(http, base, size, &[("filename", name)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// `PATCH url` at `offset`, ready for more headers and its body.
pub fn patching(http: &reqwest::Client, url: &str, offset: u64) -> reqwest::RequestBuilder {
    http.patch(url)
        .header("Tus-Resumable", TUS)
        .header("Upload-Offset", offset)
        .header("Content-Type", "application/offset+octet-stream")
}

pub async fn patch(
    http: &reqwest::Client,
    url: &str,
    offset: u64,
    bytes: Vec<u8>,
    checksum: Option<&str>,
) -> reqwest::Response {
    let mut request = patching(http, url, offset);
    if let Some(c) = checksum {
        request = request.header("Upload-Checksum", c);
    }
    request.body(bytes).send().await.unwrap()
}

pub async fn head(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.head(url).header("Tus-Resumable", TUS).send().await.unwrap()
}

pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// An upload with `pairs` as its metadata, its `body` in one PATCH, `headers` on both requests (a
/// key, a link's token, a request id): the upload's id and the Box file's.
pub async fn upload_whole(
    app: &TestApp,
    pairs: &[(&str, &str)],
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (String, String) {
    let with = |mut r: reqwest::RequestBuilder| {
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r
    };
    let created = with(creation(&app.http, &app.address, body.len() as u64, pairs))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let url = match location.starts_with("http") {
        true => location,
        false => format!("{}{location}", app.address),
    };
    let patched = with(patching(&app.http, &url, 0))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 204);
    let file_id = header(&patched, "upload-box-file-id").expect("the last PATCH names the file");
    let id = url.rsplit('/').next().unwrap().to_owned();
    (id, file_id)
}

/// Runs tests/python/tus_upload.py (tuspy): each chunk to the next of `bases`. Panics on failure.
pub async fn tuspy(bases: &[&str], path: &Path, chunk: u64, extra: &[&str]) -> Value {
    let (bases, path, chunk) = (bases.join(","), path.display().to_string(), chunk.to_string());
    let args = [[bases.as_str(), &path, &chunk].as_slice(), extra].concat();
    super::python::run_script("tus_upload.py", &args, &[], Duration::from_secs(120)).await
}
