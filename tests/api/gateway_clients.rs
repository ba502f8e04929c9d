//! Real clients and real bodies: curl, Python requests (also chunked, with no Content-Length), a raw
//! PUT, fields after the file, wrong sizes, non-ASCII names, client digests, new versions.
use serde_json::Value;

use crate::support::*;

async fn python_requests(
    mode: &str,
    url: &str,
    path: &std::path::Path,
    filename: &str,
    fields: &[&str],
) -> (u16, Value) {
    let args = [[mode, url, path.to_str().unwrap(), filename].as_slice(), fields].concat();
    let within = std::time::Duration::from_secs(120);
    let v = crate::support::python::run_script("requests_upload.py", &args, &[], within).await;
    (v["status"].as_u64().unwrap() as u16, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_multipart() {
    let app = spawn_app().await;
    let size = THRESHOLD + PART + 3;
    let (file, sha1) = make_file(size);
    let (status, out) = python_requests("multipart", &app.folder_url("0"), file.path(), "py.bin", &[]).await;
    assert_eq!(status, 201, "{out}");
    app.assert_stored(&out["body"], &sha1, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_chunked_body_without_content_length_is_spooled() {
    let app = spawn_app().await;
    let size = THRESHOLD * 2 + 5;
    let (file, sha1) = make_file(size);
    let (status, out) =
        python_requests("chunked", &app.folder_url("0"), file.path(), "chunked.bin", &[]).await;
    assert_eq!(out["request_headers"]["Transfer-Encoding"], "chunked", "{out}");
    assert!(out["request_headers"].get("Content-Length").is_none());
    assert_eq!(status, 201, "{out}");
    assert_eq!(out["body"]["upload"]["method"], "chunked");
    app.assert_stored(&out["body"], &sha1, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_declared_size_streams_without_spooling() {
    let app = spawn_app_with(Options {
        spool_max_bytes: 0,
        ..Options::default()
    })
    .await;
    let size = THRESHOLD + 1;
    let (file, sha1) = make_file(size);
    let size_field = format!("size={size}");
    let (status, out) = python_requests(
        "chunked",
        &app.folder_url("0"),
        file.path(),
        "declared.bin",
        &[&size_field],
    )
    .await;
    assert_eq!(status, 201, "{out}");
    app.assert_stored(&out["body"], &sha1, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_length_with_spooling_off_is_411() {
    let app = spawn_app_with(Options {
        spool_max_bytes: 0,
        ..Options::default()
    })
    .await;
    let (file, _) = make_file(1000);
    let (status, out) = python_requests("chunked", &app.folder_url("0"), file.path(), "x.bin", &[]).await;
    assert_eq!(status, 411, "{out}");
    assert_eq!(out["body"]["error"]["code"], "length_required");
    assert!(sessions(&app.emulator).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_put_of_a_large_and_a_small_file() {
    let app = spawn_app().await;
    for size in [THRESHOLD * 3 + 7, 10] {
        let (file, sha1) = make_file(size);
        let url = format!("{}/v1/folders/0/files/raw-{size}.bin", app.address);
        let (status, answer) = curl(&["-T", file.path().to_str().unwrap(), &url]).await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["file"]["name"], format!("raw-{size}.bin"));
        app.assert_stored(&answer, &sha1, size);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_after_the_file_is_never_file_bytes() {
    let app = spawn_app().await;
    let size = THRESHOLD + 10;
    let (file, sha1) = make_file(size);
    // With the size declared before the file, the trailing field is ignored.
    let url = format!("{}?size={size}", app.folder_url("0"));
    let args = [
        "-F",
        &format!("file=@{};filename=a.bin", file.path().display()),
        "-F",
        "name=trailing.bin",
        &url,
    ];
    let (status, answer) = curl(&args).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer["file"]["name"], "a.bin",
        "a field after the file changes nothing"
    );
    app.assert_stored(&answer, &sha1, size);
    // With the size derived from Content-Length, the trailing field breaks the derivation: refused.
    let args = [
        "-F",
        &format!("file=@{};filename=b.bin", file.path().display()),
        "-F",
        "note=after",
        &app.folder_url("0"),
    ];
    let (status, answer) = curl(&args).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "size_mismatch");
    app.assert_no_open_session().await;
    assert_eq!(
        inspect(&app.emulator)["files"].as_array().unwrap().len(),
        1,
        "nothing else landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_declared_size_aborts_and_stores_nothing() {
    let app = spawn_app().await;
    let size = THRESHOLD + PART;
    let (file, _) = make_file(size);
    for declared in [size + 1, size - 1, 10] {
        let (status, answer) = app
            .curl_upload(
                &app.folder_url("0"),
                file.path(),
                "wrong.bin",
                &[("size", &declared.to_string())],
            )
            .await;
        assert_eq!(status, 400, "declared {declared}: {answer}");
        assert_eq!(answer["error"]["code"], "size_mismatch");
    }
    app.assert_no_open_session().await;
    assert!(inspect(&app.emulator)["files"].as_array().unwrap().is_empty());
    let aborted = sessions(&app.emulator)
        .iter()
        .filter(|s| s["state"] == "aborted")
        .count();
    assert_eq!(aborted, 2, "both chunked attempts were aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn japanese_file_names_plain_and_rfc5987() {
    let app = spawn_app().await;
    let (file, sha1) = make_file(THRESHOLD + 1);
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "報告書.pdf", &[])
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["file"]["name"], "報告書.pdf");
    app.assert_stored(&answer, &sha1, THRESHOLD + 1);
    // Python requests encodes non-ASCII names as filename*=utf-8''...
    let (status, out) = python_requests(
        "multipart",
        &app.folder_url("0"),
        file.path(),
        "議事録 2026.txt",
        &[],
    )
    .await;
    assert_eq!(status, 201, "{out}");
    assert_eq!(out["body"]["file"]["name"], "議事録 2026.txt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_digest_is_checked_before_anything_lands() {
    let app = spawn_app().await;
    let (file, sha1) = make_file(THRESHOLD + 1);
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "ok.bin", &[("sha1", &sha1)])
        .await;
    assert_eq!(status, 201, "{answer}");
    let wrong = "0".repeat(40);
    for size in [THRESHOLD + 1, 100] {
        let (file, _) = make_file(size);
        let (status, answer) = app
            .curl_upload(&app.folder_url("0"), file.path(), "bad.bin", &[("sha1", &wrong)])
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "digest_mismatch");
    }
    app.assert_no_open_session().await;
    assert_eq!(inspect(&app.emulator)["files"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_versions_by_multipart_and_raw_put() {
    let app = spawn_app().await;
    let (first, _) = make_file(100);
    let (_, answer) = app
        .curl_upload(&app.folder_url("0"), first.path(), "doc.bin", &[])
        .await;
    let id = answer["file"]["id"].as_str().unwrap().to_owned();
    let (big, big_sha1) = make_file(THRESHOLD + 5);
    let url = format!("{}/v1/files/{id}/versions", app.address);
    let (status, answer) = app.curl_upload(&url, big.path(), "ignored-name.bin", &[]).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["file"]["id"], id.as_str());
    assert_eq!(
        answer["file"]["name"], "doc.bin",
        "a version keeps its name unless asked"
    );
    app.assert_stored(&answer, &big_sha1, THRESHOLD + 5);
    let (small, small_sha1) = make_file(50);
    let url = format!("{}/v1/files/{id}/content?name=renamed.bin", app.address);
    let (status, answer) = curl(&["-T", small.path().to_str().unwrap(), &url]).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["file"]["name"], "renamed.bin");
    app.assert_stored(&answer, &small_sha1, 50);
}
