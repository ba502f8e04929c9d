//! Create-session rules: the session object, every seed error, conflicts, quota, expiry, new versions.
use super::helpers::*;
use box_upload_gateway::emulator::{EmulatorConfig, SessionState};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn create_session_answers_the_session_object_with_absolute_endpoints() {
    let emu = spawn().await;

    let res = emu
        .create_session_raw(json!({"folder_id": "0", "file_name": "a.bin", "file_size": 2_600_000}))
        .await;

    assert_eq!(res.status(), 201);
    assert!(res.headers().contains_key("box-request-id"));
    let s: Value = res.json().await.unwrap();
    assert_eq!(s["type"], "upload_session");
    assert_eq!(s["part_size"], MIB);
    assert_eq!(s["total_parts"], 3);
    assert_eq!(s["num_parts_processed"], 0);
    assert!(s["session_expires_at"].is_string());
    let id = s["id"].as_str().unwrap();
    let base = format!("{}/files/upload_sessions/{id}", emu.handle.upload_url());
    let ends = &s["session_endpoints"];
    assert_eq!(ends["upload_part"], base);
    assert_eq!(ends["status"], base);
    assert_eq!(ends["abort"], base);
    assert_eq!(ends["commit"], format!("{base}/commit"));
    assert_eq!(ends["list_parts"], format!("{base}/parts"));
    let seen = emu.inspect();
    let view = seen.session(id).unwrap();
    assert_eq!(
        (view.folder_id.as_str(), view.file_name.as_str(), view.file_size),
        ("0", "a.bin", 2_600_000)
    );
    assert_eq!(
        (view.part_size, view.total_parts, view.state),
        (MIB, 3, SessionState::Open)
    );
    assert_eq!(seen.counters.sessions_created, 1);
}

#[tokio::test]
async fn default_part_size_follows_box_tiers() {
    let emu = spawn_with(EmulatorConfig::default()).await;

    let s = emu.create_session("big.bin", 20_000_000).await;

    assert_eq!(s["part_size"], 8 * MIB);
    assert_eq!(s["total_parts"], 3);
    let tiers = box_upload_gateway::emulator::part_size_for;
    assert_eq!(
        (tiers(999 * MIB), tiers(2 << 30), tiers(100 << 30)),
        (8 * MIB, 32 * MIB, 64 * MIB)
    );
}

async fn seed_error(emu: &TestEmulator, body: Value, status: u16, code: &str) -> Value {
    let res = emu.create_session_raw(body).await;
    assert_box_error(res, status, code).await
}

#[tokio::test]
async fn every_create_session_seed_error_has_boxs_code() {
    let emu = spawn().await;
    let size = 3_000_000;

    seed_error(
        &emu,
        json!({"file_name": "a", "file_size": size}),
        400,
        "missing_destination",
    )
    .await;
    seed_error(
        &emu,
        json!({"folder_id": "abc", "file_name": "a", "file_size": size}),
        400,
        "invalid_folder_id",
    )
    .await;
    seed_error(
        &emu,
        json!({"folder_id": "0", "file_size": size}),
        400,
        "missing_file_name",
    )
    .await;
    seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "a"}),
        400,
        "missing_file_size",
    )
    .await;
    seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "a", "file_size": "big"}),
        400,
        "invalid_file_size",
    )
    .await;
    seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "a", "file_size": -1}),
        400,
        "invalid_file_size",
    )
    .await;
    seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "x".repeat(256), "file_size": size}),
        400,
        "item_name_too_long",
    )
    .await;
    seed_error(
        &emu,
        json!({"folder_id": "987654", "file_name": "a", "file_size": size}),
        404,
        "invalid_parameter",
    )
    .await;
    let res = emu
        .post(&emu.upload("/files/upload_sessions"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_box_error(res, 400, "bad_request").await;

    assert!(emu.inspect().sessions.is_empty());
}

#[tokio::test]
async fn names_box_rejects_are_item_name_invalid() {
    let emu = spawn().await;
    for name in ["", "a/b", "a\\b", " lead", "trail ", ".", "..", "bell\u{7}"] {
        let body = json!({"folder_id": "0", "file_name": name, "file_size": 3_000_000});
        seed_error(&emu, body, 400, "item_name_invalid").await;
    }
    assert!(emu.inspect().sessions.is_empty());
}

#[tokio::test]
async fn file_size_too_small_carries_boxs_message() {
    let emu = spawn_with(EmulatorConfig::default()).await;

    let body = seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "a", "file_size": 302023}),
        400,
        "file_size_too_small",
    )
    .await;

    assert_eq!(
        body["message"],
        "File size 302023 less than minimum allowed for this API: 20000000"
    );
    assert!(emu.inspect().sessions.is_empty());
}

#[tokio::test]
async fn file_size_over_boxs_largest_limit_is_refused_not_a_server_error() {
    let emu = spawn_with(EmulatorConfig::default()).await;

    // Found by schemathesis (deploy/check live): an Upload-Length of 184 TB made the session file's
    // preallocation fail, and the emulator answered 500.
    seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "a", "file_size": 184_555_106_988_926_u64}),
        403,
        "file_size_limit_exceeded",
    )
    .await;

    assert!(emu.inspect().sessions.is_empty());
}

#[tokio::test]
async fn storage_limit_is_enforced_before_any_byte() {
    let emu = spawn_with(EmulatorConfig {
        storage_limit_bytes: Some(5_000_000),
        ..small_config()
    })
    .await;
    emu.chunked_upload("first.bin", &seeded_bytes(3_000_000, 1)).await;

    seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "b", "file_size": 3_000_000}),
        403,
        "storage_limit_exceeded",
    )
    .await;

    assert_eq!(emu.inspect().counters.sessions_created, 1);
}

#[tokio::test]
async fn name_conflict_names_the_existing_file_as_an_object() {
    let emu = spawn().await;
    let file = emu.chunked_upload("same.bin", &seeded_bytes(3_000_000, 2)).await;

    let body = seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "SAME.bin", "file_size": 3_000_000}),
        409,
        "item_name_in_use",
    )
    .await;

    let c = &body["context_info"]["conflicts"];
    assert!(c.is_object(), "{c}");
    assert_eq!(c["id"], file["id"]);
    assert_eq!(c["type"], "file");
    assert_eq!(c["name"], "same.bin");
    assert_eq!(c["sha1"], file["sha1"]);
    assert_eq!(c["etag"], "0");
    assert_eq!(c["file_version"]["id"], file["file_version"]["id"]);
}

#[tokio::test]
async fn name_conflict_as_array_with_the_flag() {
    let emu = spawn_with(EmulatorConfig {
        conflicts_as_array: true,
        ..small_config()
    })
    .await;
    let file = emu.chunked_upload("same.bin", &seeded_bytes(3_000_000, 3)).await;

    let body = seed_error(
        &emu,
        json!({"folder_id": "0", "file_name": "same.bin", "file_size": 3_000_000}),
        409,
        "item_name_in_use",
    )
    .await;

    assert_eq!(body["context_info"]["conflicts"][0]["id"], file["id"]);
}

#[tokio::test]
async fn expired_sessions_answer_410() {
    let emu = spawn_with(EmulatorConfig {
        session_ttl: Duration::ZERO,
        ..small_config()
    })
    .await;
    let data = seeded_bytes(3_000_000, 4);
    let s = emu.create_session("late.bin", data.len() as u64).await;

    let res = emu.put_part(&s, &data, 0, MIB).await;
    assert_box_error(res, 410, "session_expired").await;
    let res = emu
        .get(s["session_endpoints"]["status"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_box_error(res, 410, "session_expired").await;

    let seen = emu.inspect();
    assert_eq!(seen.sessions[0].state, SessionState::Expired);
    assert!(seen.sessions[0].parts.is_empty());
}

#[tokio::test]
async fn a_new_version_keeps_the_file_id_and_gets_a_new_version() {
    let emu = spawn().await;
    let first = emu.chunked_upload("doc.bin", &seeded_bytes(3_000_000, 5)).await;
    let id = first["id"].as_str().unwrap();
    let data = seeded_bytes(2_700_000, 6);

    let res = emu
        .post(&emu.upload(&format!("/files/{id}/upload_sessions")))
        .json(&json!({"file_size": data.len()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let s: Value = res.json().await.unwrap();
    let parts = emu.put_all_parts(&s, &data).await;
    let res = emu.commit(&s, &data, &parts).await;

    assert_eq!(res.status(), 201);
    let file = res.json::<Value>().await.unwrap()["entries"][0].clone();
    assert_eq!(file["id"], id);
    assert_eq!(file["sha1"], sha1_hex(&data));
    assert_eq!(file["etag"], "1");
    assert_ne!(file["file_version"]["id"], first["file_version"]["id"]);
    let seen = emu.inspect();
    assert_eq!(
        seen.session(s["id"].as_str().unwrap())
            .unwrap()
            .file_id
            .as_deref(),
        Some(id)
    );
    let f = seen.file(id).unwrap();
    assert_eq!(
        (f.version_count, f.size, f.sha1.clone()),
        (2, data.len() as u64, sha1_hex(&data))
    );
    assert_eq!(std::fs::read(emu.handle.file_path(id).unwrap()).unwrap(), data);
}

#[tokio::test]
async fn a_new_version_of_a_missing_file_is_404() {
    let emu = spawn().await;

    let res = emu
        .post(&emu.upload("/files/424242/upload_sessions"))
        .json(&json!({"file_size": 3_000_000}))
        .send()
        .await
        .unwrap();

    assert_box_error(res, 404, "not_found").await;
    assert!(emu.inspect().sessions.is_empty());
}
