//! Direct uploads (multipart) and their preflight.
use super::helpers::*;
use box_upload_gateway::emulator::EmulatorConfig;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn a_direct_upload_creates_the_file() {
    let emu = spawn().await;
    let data = seeded_bytes(300_000, 40);
    let attributes =
        json!({"name": "small.bin", "parent": {"id": "0"}, "content_created_at": "2024-05-06T07:08:09Z"})
            .to_string();

    let res = emu
        .direct_upload(
            &emu.upload("/files/content"),
            &[("attributes", attributes.as_bytes()), ("file", &data)],
            Some(&sha1_hex(&data)),
        )
        .await;

    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let file = &body["entries"][0];
    assert_eq!(
        (file["name"].as_str(), file["size"].as_u64()),
        (Some("small.bin"), Some(300_000))
    );
    assert_eq!(file["sha1"], sha1_hex(&data));
    assert_eq!(file["content_created_at"], "2024-05-06T07:08:09Z");
    let id = file["id"].as_str().unwrap();
    assert_eq!(std::fs::read(emu.handle.file_path(id).unwrap()).unwrap(), data);
    assert_eq!(emu.inspect().counters.direct_uploads, 1);
}

#[tokio::test]
async fn attributes_after_the_file_is_metadata_after_file_contents() {
    let emu = spawn().await;
    let attributes = json!({"name": "late.bin", "parent": {"id": "0"}}).to_string();

    let res = emu
        .direct_upload(
            &emu.upload("/files/content"),
            &[("file", b"bytes"), ("attributes", attributes.as_bytes())],
            None,
        )
        .await;

    assert_box_error(res, 400, "metadata_after_file_contents").await;
    assert!(emu.inspect().files.is_empty());
}

#[tokio::test]
async fn content_md5_carries_a_sha1_and_a_mismatch_is_bad_digest() {
    let emu = spawn().await;
    let attributes = json!({"name": "x.bin", "parent": {"id": "0"}}).to_string();

    let res = emu
        .direct_upload(
            &emu.upload("/files/content"),
            &[("attributes", attributes.as_bytes()), ("file", b"abc")],
            Some(&sha1_hex(b"abd")),
        )
        .await;

    assert_box_error(res, 400, "bad_digest").await;
    assert!(emu.inspect().files.is_empty());
}

#[tokio::test]
async fn direct_upload_checks_names_parents_and_conflicts() {
    let emu = spawn().await;
    let first: Value = emu.direct_new("0", "dup.txt", b"one").await.json().await.unwrap();

    let conflict = emu.direct_new("0", "dup.txt", b"two").await;
    let body = assert_box_error(conflict, 409, "item_name_in_use").await;
    assert_eq!(body["context_info"]["conflicts"]["id"], first["entries"][0]["id"]);
    assert_box_error(
        emu.direct_new("31337", "a.txt", b"x").await,
        404,
        "invalid_parameter",
    )
    .await;
    assert_box_error(emu.direct_new("0", "..", b"x").await, 400, "item_name_invalid").await;
    assert_eq!(emu.inspect().files.len(), 1);
}

#[tokio::test]
async fn a_direct_new_version_keeps_the_id_and_may_rename() {
    let emu = spawn().await;
    let first: Value = emu.direct_new("0", "v1.txt", b"one").await.json().await.unwrap();
    let id = first["entries"][0]["id"].as_str().unwrap();
    let attributes = json!({"name": "v2.txt"}).to_string();

    let res = emu
        .direct_upload(
            &emu.upload(&format!("/files/{id}/content")),
            &[("attributes", attributes.as_bytes()), ("file", b"two")],
            None,
        )
        .await;

    assert_eq!(res.status(), 201);
    let f = emu.inspect().file(id).unwrap().clone();
    assert_eq!(
        (f.name.as_str(), f.version_count, f.sha1.as_str()),
        ("v2.txt", 2, sha1_hex(b"two").as_str())
    );
}

#[tokio::test]
async fn storage_limit_applies_to_direct_uploads() {
    let emu = spawn_with(EmulatorConfig {
        storage_limit_bytes: Some(10),
        ..small_config()
    })
    .await;

    let res = emu.direct_new("0", "big.txt", b"more than ten bytes").await;

    assert_box_error(res, 403, "storage_limit_exceeded").await;
    assert!(emu.inspect().files.is_empty());
}

async fn preflight(emu: &TestEmulator, path: &str, body: Value) -> reqwest::Response {
    emu.client
        .request(Method::OPTIONS, emu.api(path))
        .bearer_auth(box_upload_gateway::emulator::DEV_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn preflight_answers_an_upload_url_or_the_upload_errors() {
    let emu = spawn_with(EmulatorConfig {
        storage_limit_bytes: Some(1000),
        ..small_config()
    })
    .await;
    let taken: Value = emu.direct_new("0", "taken.txt", b"x").await.json().await.unwrap();
    let id = taken["entries"][0]["id"].as_str().unwrap();

    let ok = preflight(
        &emu,
        "/files/content",
        json!({"name": "new.txt", "size": 10, "parent": {"id": "0"}}),
    )
    .await;
    assert_eq!(ok.status(), 200);
    let ok: Value = ok.json().await.unwrap();
    assert_eq!(ok["upload_url"], emu.upload("/files/content"));
    let version = preflight(&emu, &format!("/files/{id}/content"), json!({"size": 10})).await;
    assert_eq!(
        version.json::<Value>().await.unwrap()["upload_url"],
        emu.upload(&format!("/files/{id}/content"))
    );

    let conflict = preflight(
        &emu,
        "/files/content",
        json!({"name": "taken.txt", "size": 1, "parent": {"id": "0"}}),
    )
    .await;
    assert_box_error(conflict, 409, "item_name_in_use").await;
    let full = preflight(
        &emu,
        "/files/content",
        json!({"name": "big.txt", "size": 5000, "parent": {"id": "0"}}),
    )
    .await;
    assert_box_error(full, 403, "storage_limit_exceeded").await;
    let orphan = preflight(
        &emu,
        "/files/content",
        json!({"name": "o.txt", "size": 1, "parent": {"id": "77"}}),
    )
    .await;
    assert_box_error(orphan, 404, "invalid_parameter").await;
    assert_eq!(emu.inspect().files.len(), 1);
}
