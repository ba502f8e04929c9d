//! Commit rules: whole-file digest, the parts list, optional sha1/attributes, preconditions, conflicts.
use super::helpers::*;
use box_upload_gateway::emulator::SessionState;
use serde_json::{json, Value};

const SIZE: u64 = 2_600_000;

async fn uploaded() -> (TestEmulator, Value, Vec<u8>, Vec<Value>) {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 20);
    let s = emu.create_session("c.bin", SIZE).await;
    let parts = emu.put_all_parts(&s, &data).await;
    (emu, s, data, parts)
}

#[tokio::test]
async fn commit_creates_the_file_from_the_stored_bytes() {
    let (emu, s, data, parts) = uploaded().await;

    let res = emu.commit(&s, &data, &parts).await;

    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["total_count"], 1);
    let file = &body["entries"][0];
    assert_eq!(file["type"], "file");
    assert_eq!(file["name"], "c.bin");
    assert_eq!(file["size"], SIZE);
    assert_eq!(file["sha1"], sha1_hex(&data));
    assert_eq!(file["file_version"]["sha1"], sha1_hex(&data));
    assert_eq!(file["parent"]["id"], "0");
    let id = file["id"].as_str().unwrap();
    assert_eq!(std::fs::read(emu.handle.file_path(id).unwrap()).unwrap(), data);
    let seen = emu.inspect();
    assert_eq!(seen.sessions[0].state, SessionState::Committed);
    assert_eq!(seen.file(id).unwrap().version_count, 1);
    assert_eq!(seen.counters.commits_created, 1);
}

#[tokio::test]
async fn a_wrong_whole_file_digest_is_digest_mismatch_with_both_digests() {
    let (emu, s, data, parts) = uploaded().await;

    let res = emu
        .commit_with(&s, &format!("sha={}", sha1_b64(b"nope")), json!({"parts": parts}))
        .await;

    let body = assert_box_error(res, 400, "digest_mismatch").await;
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains(&format!("Actual: {}", sha1_b64(&data))), "{msg}");
    assert!(msg.contains(&format!("Expected: {}", sha1_b64(b"nope"))), "{msg}");
    let seen = emu.inspect();
    assert!(seen.files.is_empty());
    assert_eq!(seen.counters.commits_rejected, 1);
}

#[tokio::test]
async fn the_parts_list_must_match_the_stored_parts() {
    let (emu, s, data, parts) = uploaded().await;
    let mut wrong_id = parts.clone();
    wrong_id[1]["part_id"] = json!("DEADBEEF");
    let mut wrong_sha = parts.clone();
    wrong_sha[0]["sha1"] = json!(sha1_hex(b"x"));

    for listed in [wrong_id, wrong_sha, parts[..2].to_vec()] {
        let res = emu.commit(&s, &data, &listed).await;
        let body = assert_box_error(res, 400, "parts_mismatch").await;
        assert!(body["message"].is_string());
    }
    let res = emu
        .commit_with(&s, &format!("sha={}", sha1_b64(&data)), json!({"nope": 1}))
        .await;
    assert_box_error(res, 400, "bad_request").await;
    let res = emu
        .post(s["session_endpoints"]["commit"].as_str().unwrap())
        .json(&json!({"parts": parts}))
        .send()
        .await
        .unwrap();
    assert_box_error(res, 400, "bad_request").await;
    assert!(emu.inspect().files.is_empty());
}

#[tokio::test]
async fn commit_needs_every_part_uploaded() {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 21);
    let s = emu.create_session("c.bin", SIZE).await;
    let first: Value = emu.put_part(&s, &data, 0, MIB).await.json().await.unwrap();

    let res = emu.commit(&s, &data, &[first["part"].clone()]).await;

    assert_box_error(res, 400, "parts_mismatch").await;
    assert_eq!(emu.inspect().sessions[0].state, SessionState::Open);
}

#[tokio::test]
async fn part_sha1_may_be_null_or_absent_and_attributes_apply() {
    let (emu, s, data, parts) = uploaded().await;
    let mut listed = parts.clone();
    listed[0]["sha1"] = Value::Null;
    listed[1].as_object_mut().unwrap().remove("sha1");
    let attributes = json!({"content_modified_at": "2024-01-02T03:04:05-08:00"});

    let res = emu
        .commit_with(
            &s,
            &format!("sha={}", sha1_b64(&data)),
            json!({"parts": listed, "attributes": attributes}),
        )
        .await;

    assert_eq!(res.status(), 201);
    let file = res.json::<Value>().await.unwrap()["entries"][0].clone();
    assert_eq!(file["content_modified_at"], "2024-01-02T03:04:05-08:00");
}

#[tokio::test]
async fn if_match_and_if_none_match_are_412_when_they_fail() {
    let emu = spawn().await;
    let first = emu.chunked_upload("v.bin", &seeded_bytes(SIZE, 22)).await;
    let id = first["id"].as_str().unwrap();
    let data = seeded_bytes(SIZE, 23);
    let s: Value = emu
        .post(&emu.upload(&format!("/files/{id}/upload_sessions")))
        .json(&json!({"file_size": SIZE}))
        .send_json()
        .await;
    let parts = emu.put_all_parts(&s, &data).await;
    let commit = |h: &'static str, v: &'static str| {
        emu.post(s["session_endpoints"]["commit"].as_str().unwrap())
            .header("digest", format!("sha={}", sha1_b64(&data)))
            .header(h, v)
            .json(&json!({"parts": parts}))
            .send()
    };

    assert_box_error(commit("if-match", "7").await.unwrap(), 412, "precondition_failed").await;
    assert_box_error(
        commit("if-none-match", "*").await.unwrap(),
        412,
        "precondition_failed",
    )
    .await;
    assert_eq!(emu.inspect().file(id).unwrap().version_count, 1);

    assert_eq!(commit("if-match", "0").await.unwrap().status(), 201);
    assert_eq!(emu.inspect().file(id).unwrap().version_count, 2);
}

#[tokio::test]
async fn a_name_taken_since_the_session_opened_is_409_at_commit() {
    let (emu, s, data, parts) = uploaded().await;
    assert_eq!(emu.direct_new("0", "c.bin", b"small").await.status(), 201);

    let res = emu.commit(&s, &data, &parts).await;

    let body = assert_box_error(res, 409, "item_name_in_use").await;
    assert_eq!(body["context_info"]["conflicts"]["name"], "c.bin");
    assert_eq!(emu.inspect().sessions[0].state, SessionState::Open);
}

#[tokio::test]
async fn a_repeated_commit_answers_the_same_file() {
    let (emu, s, data, parts) = uploaded().await;
    let first: Value = emu.commit(&s, &data, &parts).await.json().await.unwrap();

    let again = emu.commit(&s, &data, &parts).await;

    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["entries"][0]["id"], first["entries"][0]["id"]);
    assert_eq!(emu.inspect().files.len(), 1);
}

#[tokio::test]
async fn parts_sent_backwards_and_in_parallel_still_fold_into_the_right_digest() {
    let emu = spawn().await;
    let size = 7 * MIB + 12_345;
    let data = seeded_bytes(size, 24);
    let s = emu.create_session("rev.bin", size).await;
    let mut parts = Vec::new();
    for i in (0..8).rev().step_by(2) {
        let len = |i: u64| MIB.min(size - i * MIB);
        let (a, b) = tokio::join!(
            emu.put_part(&s, &data, i * MIB, len(i)),
            emu.put_part(&s, &data, (i - 1) * MIB, len(i - 1))
        );
        for res in [a, b] {
            assert_eq!(res.status(), 200);
            parts.push(res.json::<Value>().await.unwrap()["part"].clone());
        }
    }

    let res = emu.commit(&s, &data, &parts).await;

    assert_eq!(res.status(), 201);
    let file = res.json::<Value>().await.unwrap()["entries"][0].clone();
    assert_eq!(file["sha1"], sha1_hex(&data));
    let id = file["id"].as_str().unwrap();
    assert_eq!(
        sha1_hex(&std::fs::read(emu.handle.file_path(id).unwrap()).unwrap()),
        sha1_hex(&data)
    );
}

#[tokio::test]
async fn trust_digests_believes_the_headers_but_keeps_the_other_rules() {
    let emu = spawn_with(box_upload_gateway::emulator::EmulatorConfig {
        trust_digests: true,
        ..small_config()
    })
    .await;
    let data = seeded_bytes(SIZE, 25);
    let s = emu.create_session("t.bin", SIZE).await;
    let claimed = sha1_b64(b"claimed");
    let range = format!("bytes 0-{}/{SIZE}", MIB - 1);

    let res = emu
        .put_part_with(
            &s,
            &range,
            &format!("sha={claimed}"),
            data[..MIB as usize].to_vec(),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["part"]["sha1"],
        sha1_hex(b"claimed")
    );
    let misaligned = emu
        .put_part_with(
            &s,
            &format!("bytes 1-{MIB}/{SIZE}"),
            &format!("sha={claimed}"),
            data[..MIB as usize].to_vec(),
        )
        .await;
    assert_box_error(misaligned, 416, "requested_range_not_satisfiable").await;
    let mut parts = vec![emu.inspect().sessions[0].parts[0].clone()];
    for (offset, len) in [(MIB, MIB), (2 * MIB, SIZE - 2 * MIB)] {
        let res = emu.put_part(&s, &data, offset, len).await;
        parts.push(serde_json::from_value(res.json::<Value>().await.unwrap()["part"].clone()).unwrap());
    }

    let res = emu
        .commit_with(&s, &format!("sha={claimed}"), json!({ "parts": parts }))
        .await;

    assert_eq!(res.status(), 201);
    assert_eq!(
        res.json::<Value>().await.unwrap()["entries"][0]["sha1"],
        sha1_hex(b"claimed")
    );
}

#[tokio::test]
async fn discard_content_keeps_the_rules_but_not_the_bytes() {
    let emu = spawn_with(box_upload_gateway::emulator::EmulatorConfig {
        discard_content: true,
        ..small_config()
    })
    .await;
    let data = seeded_bytes(SIZE, 26);
    let s = emu.create_session("d.bin", SIZE).await;
    let mut parts = Vec::new();
    for (offset, len) in [(0, MIB), (MIB, MIB), (2 * MIB, SIZE - 2 * MIB)] {
        let res = emu.put_part(&s, &data, offset, len).await;
        assert_eq!(res.status(), 200);
        parts.push(
            serde_json::from_value::<Value>(res.json::<Value>().await.unwrap()["part"].clone()).unwrap(),
        );
    }
    let wrong_size = emu
        .put_part_with(
            &s,
            &format!("bytes 0-{}/{SIZE}", MIB - 2),
            "sha=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            vec![0; 10],
        )
        .await;
    assert_box_error(wrong_size, 416, "requested_range_not_satisfiable").await;

    let res = emu
        .commit_with(&s, &format!("sha={}", sha1_b64(&data)), json!({ "parts": parts }))
        .await;

    assert_eq!(res.status(), 201);
    let file = &res.json::<Value>().await.unwrap()["entries"][0];
    assert_eq!(file["sha1"], sha1_hex(&data), "the client's digest is believed");
    assert_eq!(file["size"], SIZE);
    let stored = std::fs::read(emu.handle.file_path(file["id"].as_str().unwrap()).unwrap()).unwrap();
    assert!(stored.iter().all(|&b| b == 0), "the bytes were not written");
}
