//! The fault plan, each action observed by a client, set at start, through the handle and over HTTP.
use super::helpers::*;
use box_upload_gateway::emulator::{
    EmulatorConfig, Endpoint, FaultAction, FaultPlan, FaultRule, Inspection, SessionState, DEV_TOKEN,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SIZE: u64 = 2_600_000;

fn plan(rules: Vec<FaultRule>) -> FaultPlan {
    FaultPlan {
        rules,
        ..FaultPlan::default()
    }
}

#[tokio::test]
async fn status_faults_answer_box_errors_with_retry_after() {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 50);
    let s = emu.create_session("f.bin", SIZE).await;
    emu.handle.set_faults(plan(vec![FaultRule {
        times: Some(2),
        ..rule(Endpoint::UploadPart, status(429, None, Some(3)))
    }]));

    let first = emu.put_part(&s, &data, 0, MIB).await;
    assert_eq!(first.headers()["retry-after"], "3");
    assert_box_error(first, 429, "rate_limit_exceeded").await;
    assert_box_error(emu.put_part(&s, &data, 0, MIB).await, 429, "rate_limit_exceeded").await;
    assert_eq!(emu.put_part(&s, &data, 0, MIB).await.status(), 200);

    let seen = emu.inspect();
    assert_eq!(seen.counters.faults_fired, 2);
    assert_eq!(seen.faults_fired[1].request_number, 2);
    assert_eq!(seen.faults_fired[0].endpoint, Endpoint::UploadPart);
    assert_eq!(seen.sessions[0].parts.len(), 1);
}

#[tokio::test]
async fn any_box_code_can_be_injected_on_its_endpoint() {
    let emu = spawn().await;
    emu.handle.set_faults(plan(vec![
        rule(
            Endpoint::CreateSession,
            status(400, Some("missing_destination"), None),
        ),
        rule(
            Endpoint::DirectUpload,
            status(403, Some("storage_limit_exceeded"), None),
        ),
        rule(Endpoint::Token, status(503, None, Some(1))),
        FaultRule {
            nth: Some(2),
            ..rule(Endpoint::Abort, status(500, None, None))
        },
    ]));

    let res = emu
        .create_session_raw(json!({"folder_id": "0", "file_name": "a", "file_size": SIZE}))
        .await;
    assert_box_error(res, 400, "missing_destination").await;
    assert_box_error(
        emu.direct_new("0", "a.txt", b"x").await,
        403,
        "storage_limit_exceeded",
    )
    .await;
    let res = emu
        .client
        .post(emu.handle.token_url())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_box_error(res, 503, "unavailable").await;

    let seen = emu.inspect();
    assert!(seen.sessions.is_empty() && seen.files.is_empty());
    assert_eq!(seen.counters.faults_fired, 3);
}

#[tokio::test]
async fn store_then_fail_keeps_the_part_and_answers_500() {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 51);
    let s = emu.create_session("f.bin", SIZE).await;
    emu.handle
        .set_faults(plan(vec![rule(Endpoint::UploadPart, FaultAction::StoreThenFail)]));

    assert_box_error(
        emu.put_part(&s, &data, 0, MIB).await,
        500,
        "internal_server_error",
    )
    .await;

    let listed: Value = emu
        .get(s["session_endpoints"]["list_parts"].as_str().unwrap())
        .send_json()
        .await;
    assert_eq!(listed["entries"][0]["sha1"], sha1_hex(&data[..MIB as usize]));
    let again = assert_box_error(
        emu.put_part(&s, &data, 0, MIB).await,
        416,
        "range_overlaps_existing_part",
    )
    .await;
    assert_eq!(again["context_info"]["conflicting_part"], listed["entries"][0]);
}

#[tokio::test]
async fn commit_accepted_answers_202_then_the_file() {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 52);
    let s = emu.create_session("f.bin", SIZE).await;
    let parts = emu.put_all_parts(&s, &data).await;
    emu.handle.set_faults(plan(vec![FaultRule {
        times: Some(2),
        ..rule(Endpoint::Commit, FaultAction::CommitAccepted { retry_after: 2 })
    }]));

    for _ in 0..2 {
        let res = emu.commit(&s, &data, &parts).await;
        assert_eq!(res.status(), 202);
        assert_eq!(res.headers()["retry-after"], "2");
        assert!(res.bytes().await.unwrap().is_empty());
    }
    assert_eq!(emu.commit(&s, &data, &parts).await.status(), 201);

    let c = emu.inspect().counters;
    assert_eq!((c.commits_accepted_202, c.commits_created), (2, 1));
}

#[tokio::test]
async fn a_transient_parts_mismatch_then_the_file() {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 53);
    let s = emu.create_session("f.bin", SIZE).await;
    let parts = emu.put_all_parts(&s, &data).await;
    emu.handle
        .set_faults(plan(vec![rule(Endpoint::Commit, FaultAction::PartsMismatch)]));

    assert_box_error(emu.commit(&s, &data, &parts).await, 400, "parts_mismatch").await;
    assert_eq!(emu.commit(&s, &data, &parts).await.status(), 201);
    assert_eq!(emu.inspect().counters.commits_rejected, 1);
}

/// The lost commit answer: the file is committed, then the connection is reset (or a 500 answered).
#[tokio::test]
async fn store_then_cut_and_store_then_fail_commit_but_lose_the_answer() {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 56);
    let s = emu.create_session("lost.bin", SIZE).await;
    let parts = emu.put_all_parts(&s, &data).await;
    emu.handle
        .set_faults(plan(vec![rule(Endpoint::Commit, FaultAction::StoreThenCut)]));

    let cut = emu.try_commit(&s, &data, &parts).await;

    assert!(cut.is_err(), "no answer: {cut:?}");
    let seen = emu.inspect();
    assert_eq!(seen.files.len(), 1);
    assert_eq!(seen.files[0].sha1, sha1_hex(&data));
    assert_eq!(seen.sessions[0].state, SessionState::Committed);
    assert_eq!(seen.faults_fired[0].action, "store_then_cut");

    let s2 = emu.create_session("lost-too.bin", SIZE).await;
    let parts2 = emu.put_all_parts(&s2, &data).await;
    emu.handle
        .set_faults(plan(vec![rule(Endpoint::Commit, FaultAction::StoreThenFail)]));
    assert_box_error(
        emu.commit(&s2, &data, &parts2).await,
        500,
        "internal_server_error",
    )
    .await;
    let seen = emu.inspect();
    assert_eq!(seen.files.len(), 2);
    assert_eq!(
        seen.session(s2["id"].as_str().unwrap()).unwrap().state,
        SessionState::Committed
    );
}

#[tokio::test]
async fn store_then_cut_and_fail_on_direct_uploads() {
    let emu = spawn().await;
    emu.handle.set_faults(plan(vec![
        rule(Endpoint::DirectUpload, FaultAction::StoreThenCut),
        FaultRule {
            nth: Some(2),
            ..rule(Endpoint::DirectUpload, FaultAction::StoreThenFail)
        },
    ]));

    let cut = emu.try_direct_new("0", "a.bin", b"first").await;
    let failed = emu.direct_new("0", "b.bin", b"second").await;

    assert!(cut.is_err(), "no answer: {cut:?}");
    assert_box_error(failed, 500, "internal_server_error").await;
    let names: Vec<String> = emu.inspect().files.into_iter().map(|f| f.name).collect();
    assert_eq!(names.len(), 2, "both stored: {names:?}");
}

#[tokio::test]
async fn cut_connection_is_a_transport_error_not_a_response() {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 54);
    let s = emu.create_session("f.bin", SIZE).await;
    emu.handle.set_faults(plan(vec![rule(
        Endpoint::UploadPart,
        FaultAction::CutConnection { after_bytes: 100_000 },
    )]));

    let part = data[..MIB as usize].to_vec();
    let res = emu
        .client
        .put(s["session_endpoints"]["upload_part"].as_str().unwrap())
        .bearer_auth(DEV_TOKEN)
        .header("content-range", format!("bytes 0-{}/{SIZE}", MIB - 1))
        .header("digest", format!("sha={}", sha1_b64(&part)))
        .body(part)
        .send()
        .await;

    let err = res.expect_err("the connection is reset");
    assert!(err.is_request() || err.is_body(), "{err:?}");
    let seen = emu.inspect();
    assert!(seen.sessions[0].parts.is_empty());
    assert_eq!(seen.faults_fired[0].action, "cut_connection");
    assert_eq!(
        emu.put_part(&s, &data, 0, MIB).await.status(),
        200,
        "the next request gets through"
    );
}

#[tokio::test]
async fn cut_connection_on_a_direct_upload() {
    let emu = spawn().await;
    emu.handle.set_faults(plan(vec![rule(
        Endpoint::DirectUpload,
        FaultAction::CutConnection { after_bytes: 0 },
    )]));
    let attributes = json!({"name": "cut.bin", "parent": {"id": "0"}}).to_string();
    let data = seeded_bytes(500_000, 55);
    let mut body = format!("--b\r\nContent-Disposition: form-data; name=\"attributes\"\r\n\r\n{attributes}\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n").into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(b"\r\n--b--\r\n");

    let res = emu
        .post(&emu.upload("/files/content"))
        .header("content-type", "multipart/form-data; boundary=b")
        .body(body)
        .send()
        .await;

    assert!(res.is_err(), "{res:?}");
    assert!(emu.inspect().files.is_empty());
}

#[tokio::test]
async fn delay_and_bandwidth_slow_requests_down() {
    let emu = spawn_with(EmulatorConfig {
        faults: FaultPlan {
            delay_ms: 150,
            ..FaultPlan::default()
        },
        ..small_config()
    })
    .await;
    let t = Instant::now();
    assert_eq!(
        emu.get(&emu.api("/folders/0")).send().await.unwrap().status(),
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(150));

    let data = seeded_bytes(SIZE, 56);
    let s = emu.create_session("slow.bin", SIZE).await;
    emu.handle.set_faults(FaultPlan {
        bandwidth_bytes_per_sec: Some(4 * MIB),
        ..FaultPlan::default()
    });
    let t = Instant::now();
    assert_eq!(emu.put_part(&s, &data, 0, MIB).await.status(), 200);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
}

#[tokio::test]
async fn parallel_part_uploads_are_counted_and_the_mark_resets() {
    let emu = spawn().await;
    let data = seeded_bytes(SIZE, 57);
    let s = emu.create_session("par.bin", SIZE).await;
    emu.handle.set_faults(FaultPlan {
        bandwidth_bytes_per_sec: Some(4 * MIB),
        ..FaultPlan::default()
    });

    let (a, b, c) = tokio::join!(
        emu.put_part(&s, &data, 0, MIB),
        emu.put_part(&s, &data, MIB, MIB),
        emu.put_part(&s, &data, 2 * MIB, SIZE - 2 * MIB)
    );
    assert!([a.status(), b.status(), c.status()].iter().all(|s| *s == 200));
    assert_eq!(emu.inspect().counters.max_parts_in_flight, 3);

    emu.handle.reset_max_parts_in_flight();
    assert_eq!(emu.inspect().counters.max_parts_in_flight, 0);
    let res = emu
        .client
        .post(format!(
            "{}/_emulator/reset-max-parts-in-flight",
            emu.handle.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

#[tokio::test]
async fn expire_tokens_makes_every_token_401_until_cleared() {
    let emu = spawn().await;
    let faults_url = format!("{}/_emulator/faults", emu.handle.base_url());
    let res = emu
        .client
        .put(&faults_url)
        .json(&json!({"expire_tokens": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    assert_box_error(
        emu.get(&emu.api("/folders/0")).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;

    assert_eq!(emu.client.delete(&faults_url).send().await.unwrap().status(), 204);
    assert_eq!(
        emu.get(&emu.api("/folders/0")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn the_control_api_sets_shows_and_clears_the_plan() {
    let emu = spawn().await;
    let base = emu.handle.base_url();
    let plan = json!({
        "rules": [{"endpoint": "preflight", "fraction": 1.0, "seed": 3, "times": 2,
                   "action": {"type": "status", "status": 503, "retry_after": 5}}],
        "delay_ms": 0
    });

    assert_eq!(
        emu.client
            .put(format!("{base}/_emulator/faults"))
            .json(&plan)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let shown: FaultPlan = emu
        .client
        .get(format!("{base}/_emulator/faults"))
        .send_json()
        .await;
    assert_eq!(shown.rules[0].endpoint, Endpoint::Preflight);
    let bad = emu
        .client
        .put(format!("{base}/_emulator/faults"))
        .json(&json!({"rules": [{"endpoint": "nope"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let preflight = || {
        emu.client
            .request(reqwest::Method::OPTIONS, emu.api("/files/content"))
            .bearer_auth(DEV_TOKEN)
            .json(&json!({"name": "p.txt", "size": 1, "parent": {"id": "0"}}))
            .send()
    };
    assert_box_error(preflight().await.unwrap(), 503, "unavailable").await;
    assert_box_error(preflight().await.unwrap(), 503, "unavailable").await;
    assert_eq!(preflight().await.unwrap().status(), 200);

    let state: Inspection = emu
        .client
        .get(format!("{base}/_emulator/state"))
        .send_json()
        .await;
    assert_eq!(state.counters.faults_fired, 2);
    assert_eq!(state, emu.inspect());
}
