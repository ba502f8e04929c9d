//! Upload-part rules: ranges, digests, overlaps, body length, closed sessions, list parts.
use super::helpers::*;
use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

const SIZE: u64 = 2_600_000; // parts of 1 MiB, 1 MiB, 502,848 bytes

async fn setup() -> (TestEmulator, Value, Vec<u8>) {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 10);
    let s = emu.create_session("p.bin", SIZE).await;
    (emu, s, data)
}

fn part_digest(data: &[u8], offset: u64, len: u64) -> String {
    format!(
        "sha={}",
        sha1_b64(&data[offset as usize..(offset + len) as usize])
    )
}

#[tokio::test]
async fn parts_in_any_order_are_echoed_in_hex_and_listed() {
    let (emu, s, data) = setup().await;

    let last = emu.put_part(&s, &data, 2 * MIB, SIZE - 2 * MIB).await;
    assert_eq!(last.status(), 200);
    let echo: Value = last.json().await.unwrap();
    assert_eq!(echo["part"]["offset"], 2 * MIB);
    assert_eq!(echo["part"]["size"], SIZE - 2 * MIB);
    assert_eq!(echo["part"]["sha1"], sha1_hex(&data[2 * MIB as usize..]));
    assert_eq!(echo["part"]["part_id"].as_str().unwrap().len(), 8);
    assert_eq!(emu.put_part(&s, &data, 0, MIB).await.status(), 200);
    assert_eq!(emu.put_part(&s, &data, MIB, MIB).await.status(), 200);

    let list = s["session_endpoints"]["list_parts"].as_str().unwrap();
    let all: Value = emu.get(list).send_json().await;
    assert_eq!(all["total_count"], 3);
    let offsets: Vec<u64> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [0, MIB, 2 * MIB]);
    let page: Value = emu.get(&format!("{list}?offset=1&limit=1")).send_json().await;
    assert_eq!(
        (page["offset"].as_u64(), page["limit"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(page["entries"][0]["offset"], MIB);
    let res = emu.get(&format!("{list}?limit=1001")).send().await.unwrap();
    assert_box_error(res, 400, "bad_request").await;
    let status: Value = emu
        .get(s["session_endpoints"]["status"].as_str().unwrap())
        .send_json()
        .await;
    assert_eq!(status["num_parts_processed"], 3);
    let seen = emu.inspect();
    let view = &seen.sessions[0];
    assert_eq!(view.parts.len(), 3);
    assert_eq!(view.parts[0].sha1, sha1_hex(&data[..MIB as usize]));
    assert_eq!(seen.counters.part_uploads_accepted, 3);
}

#[tokio::test]
async fn content_range_syntax_is_checked() {
    let (emu, s, data) = setup().await;
    for range in [
        "bytes=0-1048575/2600000",
        "0-1048575",
        "bytes 1048575-0/2600000",
        "",
    ] {
        let res = emu
            .put_part_with(
                &s,
                range,
                &part_digest(&data, 0, MIB),
                data[..MIB as usize].to_vec(),
            )
            .await;
        assert_box_error(res, 400, "bad_request").await;
    }
    assert!(emu.inspect().sessions[0].parts.is_empty());
}

#[tokio::test]
async fn ranges_must_be_aligned_exact_and_within_the_session() {
    let (emu, s, data) = setup().await;
    let cases = [
        (1, MIB, SIZE),                      // not aligned to part_size
        (0, MIB - 1, SIZE),                  // short part
        (0, MIB + 1, SIZE),                  // long part
        (2 * MIB, SIZE - 2 * MIB - 1, SIZE), // last part not ending at file_size - 1
        (0, MIB, SIZE + 1),                  // total differs from the session's
    ];
    for (first, len, total) in cases {
        let range = format!("bytes {first}-{}/{total}", first + len - 1);
        let body = data[first as usize..(first + len) as usize].to_vec();
        let res = emu
            .put_part_with(&s, &range, &part_digest(&data, first, len), body)
            .await;
        assert_box_error(res, 416, "requested_range_not_satisfiable").await;
    }
    let seen = emu.inspect();
    assert!(seen.sessions[0].parts.is_empty());
    assert_eq!(seen.counters.part_uploads_rejected, cases.len() as u64);
}

#[tokio::test]
async fn an_overlapping_part_is_416_with_the_conflicting_part() {
    let (emu, s, data) = setup().await;
    let first: Value = emu.put_part(&s, &data, 0, MIB).await.json().await.unwrap();

    let res = emu.put_part(&s, &data, 0, MIB).await;

    let body = assert_box_error(res, 416, "range_overlaps_existing_part").await;
    assert_eq!(body["context_info"]["conflicting_part"], first["part"]);
    assert_eq!(emu.inspect().sessions[0].parts.len(), 1);
}

#[tokio::test]
async fn part_digests_are_checked_sha_and_sha256() {
    let (emu, s, data) = setup().await;
    let part = data[..MIB as usize].to_vec();
    let range = format!("bytes 0-{}/{SIZE}", MIB - 1);
    let wrong = format!("sha={}", sha1_b64(b"other"));
    let sha256_ok = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&part));
    let sha256_bad = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"x"));

    assert_box_error(
        emu.put_part_with(&s, &range, &wrong, part.clone()).await,
        400,
        "bad_digest",
    )
    .await;
    let both_bad = format!("{}, sha-256={sha256_bad}", part_digest(&data, 0, MIB));
    assert_box_error(
        emu.put_part_with(&s, &range, &both_bad, part.clone()).await,
        400,
        "bad_digest",
    )
    .await;
    assert_box_error(
        emu.put_part_with(&s, &range, "", part.clone()).await,
        400,
        "bad_request",
    )
    .await;
    assert!(emu.inspect().sessions[0].parts.is_empty());

    let upper = format!("SHA={}, sha-256={sha256_ok}", sha1_b64(&part));
    let res = emu.put_part_with(&s, &range, &upper, part.clone()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(emu.inspect().sessions[0].parts[0].sha1, sha1_hex(&part));
}

#[tokio::test]
async fn a_body_that_disagrees_with_its_range_is_refused() {
    let (emu, s, data) = setup().await;
    let range = format!("bytes 0-{}/{SIZE}", MIB - 1);

    let short = data[..MIB as usize - 1].to_vec();
    let res = emu
        .put_part_with(&s, &range, &format!("sha={}", sha1_b64(&short)), short)
        .await;

    assert_box_error(res, 400, "bad_request").await;
    assert!(emu.inspect().sessions[0].parts.is_empty());
}

#[tokio::test]
async fn aborted_sessions_refuse_parts_and_drop_their_bytes() {
    let (emu, s, data) = setup().await;
    assert_eq!(emu.put_part(&s, &data, 0, MIB).await.status(), 200);

    let abort = emu
        .client
        .delete(s["session_endpoints"]["abort"].as_str().unwrap())
        .bearer_auth(box_upload_gateway::emulator::DEV_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(abort.status(), 204);
    assert_eq!(abort.content_length(), Some(0));

    assert_box_error(emu.put_part(&s, &data, MIB, MIB).await, 404, "not_found").await;
    let seen = emu.inspect();
    assert_eq!(
        seen.sessions[0].state,
        box_upload_gateway::emulator::SessionState::Aborted
    );
    assert_eq!(seen.counters.aborts, 1);
}

#[tokio::test]
async fn committed_sessions_refuse_parts() {
    let (emu, s, data) = setup().await;
    let parts = emu.put_all_parts(&s, &data).await;
    assert_eq!(emu.commit(&s, &data, &parts).await.status(), 201);

    assert_box_error(emu.put_part(&s, &data, 0, MIB).await, 404, "not_found").await;
    assert_eq!(
        emu.inspect().sessions[0].state,
        box_upload_gateway::emulator::SessionState::Committed
    );
}
