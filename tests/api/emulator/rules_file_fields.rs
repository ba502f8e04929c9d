//! `PUT /2.0/files/{id}` (description, tags, shared link, a move), `GET /2.0/files/{id}?fields=`, and
//! the deletion of files and versions, with their faults.
use super::helpers::*;
use box_upload_gateway::emulator::{Endpoint, FaultAction, FaultPlan};
use serde_json::{json, Value};

fn file_url(emu: &TestEmulator, id: &str) -> String {
    emu.api(&format!("/files/{id}"))
}

#[tokio::test]
async fn description_tags_and_a_shared_link_are_kept_and_answered() {
    let emu = spawn().await;
    let id = emu.small_file("0", "inv.pdf").await;
    let res = emu
        .put(&format!("{}?fields=description,tags,shared_link", file_url(&emu, &id)))
        .json(&json!({"description": "December invoice", "tags": ["invoice", "2026"], "shared_link": {"access": "company"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answered: Value = res.json().await.unwrap();
    assert_eq!(answered["description"], "December invoice");
    assert_eq!(answered["tags"], json!(["invoice", "2026"]));
    let link = &answered["shared_link"];
    assert_eq!(
        (link["access"].as_str(), link["effective_access"].as_str()),
        (Some("company"), Some("company"))
    );
    let url = link["url"].as_str().unwrap().to_owned();
    let token = url.rsplit('/').next().unwrap();
    assert!(url.contains("/s/") && token.len() == 32, "{url}");
    assert_eq!(link["is_password_enabled"], false);
    assert!(
        answered.get("size").is_none(),
        "fields= answers the mini object plus the fields asked for"
    );

    // The standard object has description and shared_link, not tags (those only with fields=).
    let standard: Value = emu.get(&file_url(&emu, &id)).send_json().await;
    assert_eq!(standard["description"], "December invoice");
    assert_eq!(standard["shared_link"]["url"], url.as_str());
    assert!(standard.get("tags").is_none() && standard["size"].is_u64());
    let tags: Value = emu
        .get(&format!("{}?fields=tags,name", file_url(&emu, &id)))
        .send_json()
        .await;
    assert_eq!(
        (tags["tags"].clone(), tags["name"].clone()),
        (json!(["invoice", "2026"]), json!("inv.pdf"))
    );

    // A link keeps its URL when its access changes; null removes it.
    let opened: Value = emu
        .put(&file_url(&emu, &id))
        .json(&json!({"shared_link": {"access": "open", "password": "Secret-42!"}}))
        .send_json()
        .await;
    assert_eq!(
        (
            opened["shared_link"]["url"].as_str(),
            opened["shared_link"]["is_password_enabled"].as_bool()
        ),
        (Some(url.as_str()), Some(true))
    );
    let seen = emu.inspect();
    let kept = seen.file(&id).unwrap();
    assert_eq!(
        (kept.description.as_str(), kept.tags.clone()),
        ("December invoice", vec!["invoice".to_owned(), "2026".to_owned()])
    );
    assert_eq!(kept.shared_link.as_ref().map(|l| l.access.as_str()), Some("open"));
    let removed: Value = emu
        .put(&file_url(&emu, &id))
        .json(&json!({"shared_link": null}))
        .send_json()
        .await;
    assert!(removed["shared_link"].is_null());
    assert!(emu.inspect().file(&id).unwrap().shared_link.is_none());
}

#[tokio::test]
async fn updates_that_box_refuses_change_nothing() {
    let emu = spawn().await;
    let id = emu.small_file("0", "x.pdf").await;
    let put = |body: Value| emu.put(&file_url(&emu, &id)).json(&body).send();
    for bad in [
        json!({"description": "d".repeat(257)}),
        json!({"description": "ok", "tags": "a,b"}),
        json!({"tags": [""]}),
        json!({"tags": (0..101).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
        json!({"shared_link": {"access": "everyone"}}),
        json!({"shared_link": {"access": "company", "password": "Secret-42!"}}),
        json!({"shared_link": {"access": "open", "password": "short"}}),
        json!({"shared_link": {"access": "collaborators", "permissions": {"can_download": true, "can_edit": true}}}),
        json!({"shared_link": {"access": "open", "colour": "red"}}),
        json!({"lock": {"access": "lock"}}),
        json!({"colour": "red"}),
    ] {
        assert_box_error(put(bad.clone()).await.unwrap(), 400, "bad_request").await;
    }
    assert_eq!(
        put(json!({"description": "d".repeat(256)}))
            .await
            .unwrap()
            .status(),
        200
    );
    emu.small_file("0", "taken.pdf").await;
    assert_box_error(
        put(json!({"name": "TAKEN.pdf", "description": "no"}))
            .await
            .unwrap(),
        409,
        "item_name_in_use",
    )
    .await;
    let stale = emu
        .put(&file_url(&emu, &id))
        .header("if-match", "7")
        .json(&json!({"description": "no"}))
        .send()
        .await
        .unwrap();
    assert_box_error(stale, 412, "precondition_failed").await;
    let kept = emu.inspect();
    let kept = kept.file(&id).unwrap();
    assert_eq!(
        (
            kept.description.chars().count(),
            kept.tags.len(),
            kept.name.as_str()
        ),
        (256, 0, "x.pdf")
    );
}

/// A move (`parent`, with or without a new `name`) keeps the file's id and bytes; the name must be free
/// in the folder it goes to (409 `item_name_in_use` naming what is there, and nothing moves), and the
/// folder must exist (404).
#[tokio::test]
async fn a_file_moves_into_a_folder_only_where_its_name_is_free() {
    let emu = spawn().await;
    let staging = emu.handle.create_folder("0", "staging");
    let target = emu.handle.create_folder("0", "target");
    let id = emu.small_file(&staging, "upload-1").await;
    let taken = emu.small_file(&target, "report.pdf").await;
    let put = |body: Value| emu.put(&file_url(&emu, &id)).json(&body).send();

    let clash = put(json!({"parent": {"id": target}, "name": "REPORT.pdf"}))
        .await
        .unwrap();
    let body = assert_box_error(clash, 409, "item_name_in_use").await;
    assert_eq!(body["context_info"]["conflicts"]["id"], taken.as_str());
    assert_box_error(
        put(json!({"parent": {"id": "999999"}})).await.unwrap(),
        404,
        "invalid_parameter",
    )
    .await;
    assert_box_error(
        put(json!({"parent": {"id": target, "user_id": "5"}}))
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    let unmoved = emu.inspect();
    assert_eq!(
        (
            unmoved.file(&id).unwrap().parent_id.as_str(),
            unmoved.file(&id).unwrap().name.as_str()
        ),
        (staging.as_str(), "upload-1")
    );

    let moved: Value = put(json!({"parent": {"id": target}, "name": "report (1).pdf"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (moved["id"].as_str(), moved["parent"]["id"].as_str()),
        (Some(id.as_str()), Some(target.as_str()))
    );
    assert_eq!(moved["name"], "report (1).pdf");
    // Moving it where it is, under its own name, is no conflict (a retried move).
    let again = put(json!({"parent": {"id": target}, "name": "report (1).pdf"}))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let seen = emu.inspect();
    let file = seen.file(&id).unwrap();
    assert_eq!(
        (file.parent_id.as_str(), file.version_count),
        (target.as_str(), 1)
    );
}

#[tokio::test]
async fn files_and_versions_are_deleted_and_their_faults_fire() {
    let emu = spawn().await;
    let id = emu.small_file("0", "v.bin").await;
    let v2 = emu
        .direct_upload(
            &emu.upload(&format!("/files/{id}/content")),
            &[("attributes", br#"{}"#), ("file", b"second version")],
            None,
        )
        .await;
    assert_eq!(v2.status(), 201);
    let v2: Value = v2.json().await.unwrap();
    let version = v2["entries"][0]["file_version"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    emu.handle.set_faults(FaultPlan {
        rules: vec![
            rule(Endpoint::DeleteFileVersion, status(503, None, None)),
            rule(Endpoint::DeleteFile, status(500, None, None)),
            rule(Endpoint::UpdateFile, FaultAction::StoreThenFail),
        ],
        ..FaultPlan::default()
    });
    let delete_version = || {
        emu.delete(&emu.api(&format!("/files/{id}/versions/{version}")))
            .send()
    };
    assert_box_error(delete_version().await.unwrap(), 503, "unavailable").await;
    assert_eq!(emu.inspect().file(&id).unwrap().version_count, 2);
    assert_eq!(delete_version().await.unwrap().status(), 204);
    let seen = emu.inspect();
    assert_eq!(
        (
            seen.file(&id).unwrap().version_count,
            seen.counters.versions_deleted
        ),
        (1, 1)
    );

    // The lost answer: the update is done although Box answered 500.
    let update = emu
        .put(&file_url(&emu, &id))
        .json(&json!({"tags": ["kept"]}))
        .send()
        .await
        .unwrap();
    assert_box_error(update, 500, "internal_server_error").await;
    assert_eq!(emu.inspect().file(&id).unwrap().tags, ["kept"]);

    let delete = || emu.delete(&file_url(&emu, &id)).send();
    assert_box_error(delete().await.unwrap(), 500, "internal_server_error").await;
    let stale = emu
        .delete(&file_url(&emu, &id))
        .header("if-match", "3")
        .send()
        .await
        .unwrap();
    assert_box_error(stale, 412, "precondition_failed").await;
    assert_eq!(delete().await.unwrap().status(), 204);
    assert_box_error(delete().await.unwrap(), 404, "not_found").await;
    let seen = emu.inspect();
    assert!(seen.file(&id).is_none());
    assert_eq!(seen.counters.files_deleted, 1);
    let fired: Vec<Endpoint> = seen.faults_fired.iter().map(|f| f.endpoint).collect();
    assert_eq!(
        fired,
        [
            Endpoint::DeleteFileVersion,
            Endpoint::UpdateFile,
            Endpoint::DeleteFile
        ]
    );
}
