//! Files, folders, auth, request ids and As-User.
use super::helpers::*;
use box_upload_gateway::emulator::DEV_TOKEN;
use serde_json::{json, Value};

#[tokio::test]
async fn get_file_and_download_answer_what_was_committed() {
    let emu = spawn().await;
    let data = seeded_bytes(2_600_000, 30);
    let file = emu.chunked_upload("d.bin", &data).await;
    let id = file["id"].as_str().unwrap();

    let got: Value = emu.get(&emu.api(&format!("/files/{id}"))).send_json().await;
    let body = emu
        .get(&emu.api(&format!("/files/{id}/content")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    assert_eq!(got["sha1"], sha1_hex(&data));
    assert_eq!(got["size"], data.len());
    assert_eq!(got["etag"], "0");
    assert_eq!(sha1_hex(&body), sha1_hex(&data));
    let res = emu.get(&emu.api("/files/999/content")).send().await.unwrap();
    assert_box_error(res, 404, "not_found").await;
}

#[tokio::test]
async fn folders_are_created_listed_and_conflict_by_name() {
    let emu = spawn().await;
    let root: Value = emu.get(&emu.api("/folders/0")).send_json().await;
    assert_eq!(root["name"], "All Files");
    assert_eq!(root["item_collection"]["total_count"], 0);

    let res = emu
        .post(&emu.api("/folders"))
        .json(&json!({"name": "Reports", "parent": {"id": "0"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let folder: Value = res.json().await.unwrap();
    let id = folder["id"].as_str().unwrap();
    assert_eq!(emu.direct_new(id, "in.txt", b"hello").await.status(), 201);

    let listed: Value = emu.get(&emu.api(&format!("/folders/{id}"))).send_json().await;
    assert_eq!(listed["item_collection"]["entries"][0]["name"], "in.txt");
    let root: Value = emu.get(&emu.api("/folders/0")).send_json().await;
    assert_eq!(root["item_collection"]["entries"][0]["id"], id);
    let again = emu
        .post(&emu.api("/folders"))
        .json(&json!({"name": "reports", "parent": {"id": "0"}}))
        .send()
        .await
        .unwrap();
    let body = assert_box_error(again, 409, "item_name_in_use").await;
    assert_eq!(body["context_info"]["conflicts"]["type"], "folder");
    let orphan = emu
        .post(&emu.api("/folders"))
        .json(&json!({"name": "x", "parent": {"id": "555"}}))
        .send()
        .await
        .unwrap();
    assert_box_error(orphan, 404, "not_found").await;
    let bad = emu
        .post(&emu.api("/folders"))
        .json(&json!({"name": "a/b", "parent": {"id": "0"}}))
        .send()
        .await
        .unwrap();
    assert_box_error(bad, 400, "item_name_invalid").await;
    assert_eq!(emu.inspect().folders.len(), 2);
    let seeded = emu.handle.create_folder("0", "Seeded");
    assert!(emu
        .inspect()
        .folders
        .iter()
        .any(|f| f.id == seeded && f.name == "Seeded"));
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_with_a_bearer_challenge() {
    let emu = spawn().await;
    let no_token = emu.client.get(emu.api("/folders/0")).send().await.unwrap();
    let wrong = emu
        .client
        .get(emu.api("/folders/0"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();

    for res in [no_token, wrong] {
        let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            challenge.starts_with("Bearer realm=\"Service\", error=\"invalid_token\", error_description=\""),
            "{challenge}"
        );
        assert_box_error(res, 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn configured_tokens_replace_the_dev_token() {
    let emu = spawn_with(box_upload_gateway::emulator::EmulatorConfig {
        tokens: vec!["t1".into()],
        ..small_config()
    })
    .await;

    let dev = emu
        .client
        .get(emu.api("/folders/0"))
        .bearer_auth(DEV_TOKEN)
        .send()
        .await
        .unwrap();
    let t1 = emu
        .client
        .get(emu.api("/folders/0"))
        .bearer_auth("t1")
        .send()
        .await
        .unwrap();

    assert_eq!((dev.status().as_u16(), t1.status().as_u16()), (401, 200));
}

#[tokio::test]
async fn every_response_has_a_request_id_and_as_user_is_recorded() {
    let emu = spawn().await;

    let ok = emu
        .get(&emu.api("/folders/0"))
        .header("as-user", "4242")
        .send()
        .await
        .unwrap();
    let unknown = emu.get(&emu.api("/nowhere")).send().await.unwrap();

    assert!(ok.headers().contains_key("box-request-id"));
    assert_box_error(unknown, 404, "not_found").await;
    assert_eq!(emu.inspect().as_user, ["4242"]);
}

#[tokio::test]
async fn stop_closes_the_listener() {
    let emu = spawn().await;
    let url = emu.api("/folders/0");
    assert_eq!(emu.get(&url).send().await.unwrap().status(), 200);

    emu.handle.stop().await;

    // A new connection each time: the shared client's pooled one may outlive the stop by a moment
    // (actix drops a stopped worker's connections on its own thread), and is not the listener.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let (fresh, url) = (&fresh, &url);
    crate::support::eventually(
        "the emulator to refuse connections after its stop",
        std::time::Duration::from_secs(2),
        || async move { fresh.get(url).bearer_auth(DEV_TOKEN).send().await.is_err() },
    )
    .await;
}

#[tokio::test]
async fn extractor_errors_are_box_errors_too() {
    let emu = spawn().await;
    let s = emu.create_session("q.bin", 3_000_000).await;
    let list = s["session_endpoints"]["list_parts"].as_str().unwrap();

    let res = emu.get(&format!("{list}?offset=abc")).send().await.unwrap();

    assert_box_error(res, 400, "bad_request").await;
}

/// `GET /folders/{id}/items`: pages by `offset`/`limit`, and `fields` picks what entries carry.
#[tokio::test]
async fn folder_items_are_paginated_with_selected_fields() {
    let emu = spawn().await;
    for i in 0..5u8 {
        let res = emu.direct_new("0", &format!("f{i}.txt"), &[i; 10]).await;
        assert_eq!(res.status(), 201);
    }

    let page = |q: &str| emu.get(&emu.api(&format!("/folders/0/items?{q}")));
    let first: Value = page("fields=name,sha1,size&limit=2").send_json().await;
    let last: Value = page("fields=name,sha1,size&limit=2&offset=4").send_json().await;
    let mini: Value = page("").send_json().await;

    assert_eq!(first["total_count"], 5);
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    let entry = &first["entries"][1];
    assert_eq!(entry["name"], "f1.txt");
    assert_eq!(entry["size"], 10);
    assert_eq!(entry["sha1"], sha1_hex(&[1; 10]));
    assert_eq!(entry["type"], "file");
    assert!(entry.get("parent").is_none(), "only the asked fields: {entry}");
    assert_eq!(last["entries"][0]["name"], "f4.txt");
    assert_eq!(
        (last["offset"].as_u64(), last["limit"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(mini["entries"].as_array().unwrap().len(), 5);
    assert!(
        mini["entries"][0].get("size").is_none(),
        "mini objects by default"
    );
    assert_box_error(page("limit=0").send().await.unwrap(), 400, "bad_request").await;
    assert_box_error(
        emu.get(&emu.api("/folders/42/items")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
}
