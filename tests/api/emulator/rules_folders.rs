//! `POST /2.0/folders`: Box's name rules, the conflicts that name the item in the way, and one
//! creation when many ask for the same name at once.
use super::helpers::*;
use box_upload_gateway::emulator::{EmulatorConfig, Endpoint, FaultAction, FaultPlan};
use serde_json::Value;

#[tokio::test]
async fn a_name_in_use_is_409_naming_the_folder_or_the_file_in_the_way() {
    let emu = spawn().await;
    let res = emu.create_folder_raw("0", "Finance").await;
    assert_eq!(res.status(), 201);
    let finance: Value = res.json().await.unwrap();
    let file_id = emu.small_file("0", "report.pdf").await;

    // Box compares names case-insensitively.
    let again = assert_box_error(
        emu.create_folder_raw("0", "FINANCE").await,
        409,
        "item_name_in_use",
    )
    .await;
    let conflict = &again["context_info"]["conflicts"];
    assert_eq!(
        (conflict["type"].as_str(), conflict["id"].as_str()),
        (Some("folder"), finance["id"].as_str())
    );
    assert_eq!(conflict["name"], "Finance");
    let file = assert_box_error(
        emu.create_folder_raw("0", "Report.PDF").await,
        409,
        "item_name_in_use",
    )
    .await;
    let conflict = &file["context_info"]["conflicts"];
    assert_eq!(
        (conflict["type"].as_str(), conflict["id"].as_str()),
        (Some("file"), Some(file_id.as_str()))
    );

    let seen = emu.inspect();
    assert_eq!(seen.folders.len(), 2, "All Files and Finance only");
    assert!(seen.child_folder("0", "finance").is_some());
}

#[tokio::test]
async fn conflicts_come_as_an_array_when_configured() {
    let emu = spawn_with(EmulatorConfig {
        conflicts_as_array: true,
        ..small_config()
    })
    .await;
    emu.create_folder_raw("0", "A").await;
    let body = assert_box_error(emu.create_folder_raw("0", "a").await, 409, "item_name_in_use").await;
    assert_eq!(body["context_info"]["conflicts"][0]["type"], "folder");
}

#[tokio::test]
async fn names_follow_boxs_rules_and_parents_must_exist() {
    let emu = spawn().await;
    for bad in ["", ".", "..", "a/b", "a\\b", " lead", "trail ", "tab\there"] {
        assert_box_error(emu.create_folder_raw("0", bad).await, 400, "item_name_invalid").await;
    }
    let long = "x".repeat(256);
    assert_box_error(emu.create_folder_raw("0", &long).await, 400, "item_name_too_long").await;
    assert_eq!(emu.create_folder_raw("0", &"x".repeat(255)).await.status(), 201);
    // OpenAPI `POST /folders`: a parent that is missing or hidden is 404 `not_found`.
    assert_box_error(emu.create_folder_raw("987654", "orphan").await, 404, "not_found").await;
    let no_parent = emu
        .post(&emu.api("/folders"))
        .json(&serde_json::json!({"name": "n"}))
        .send()
        .await
        .unwrap();
    assert_box_error(no_parent, 400, "bad_request").await;
    assert_eq!(emu.inspect().folders.len(), 2);
}

#[tokio::test]
async fn twenty_creations_of_one_name_at_once_make_one_folder() {
    let emu = spawn().await;
    let answers = futures_util::future::join_all((0..20).map(|_| emu.create_folder_raw("0", "Crowd"))).await;
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for res in answers {
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        match status {
            201 => {
                created += 1;
                ids.insert(body["id"].as_str().unwrap().to_owned());
            }
            409 => {
                ids.insert(
                    body["context_info"]["conflicts"]["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((created, ids.len()), (1, 1));
    let seen = emu.inspect();
    assert_eq!(
        seen.child_folder("0", "Crowd").map(|f| f.id.clone()),
        ids.into_iter().next()
    );
}

#[tokio::test]
async fn a_lost_answer_to_a_folder_creation_still_created_it() {
    let emu = spawn().await;
    emu.handle.set_faults(FaultPlan {
        rules: vec![rule(Endpoint::CreateFolder, FaultAction::StoreThenFail)],
        ..FaultPlan::default()
    });
    assert_box_error(
        emu.create_folder_raw("0", "Lost").await,
        500,
        "internal_server_error",
    )
    .await;
    let again = assert_box_error(emu.create_folder_raw("0", "Lost").await, 409, "item_name_in_use").await;
    let seen = emu.inspect();
    let lost = seen
        .child_folder("0", "Lost")
        .expect("created although the answer was lost");
    assert_eq!(again["context_info"]["conflicts"]["id"], lost.id.as_str());
    assert_eq!(seen.faults_fired[0].endpoint, Endpoint::CreateFolder);
}

#[tokio::test]
async fn a_folder_is_deleted_with_what_it_holds_only_when_asked() {
    let emu = spawn().await;
    let res = emu.create_folder_raw("0", "Old").await;
    let old: Value = res.json().await.unwrap();
    let old = old["id"].as_str().unwrap().to_owned();
    let inner = emu.handle.create_folder(&old, "Inner");
    let file_id = emu.small_file(&inner, "f.txt").await;

    let plain = emu
        .delete(&emu.api(&format!("/folders/{old}")))
        .send()
        .await
        .unwrap();
    assert_box_error(plain, 400, "folder_not_empty").await;
    let root = emu
        .delete(&emu.api("/folders/0?recursive=true"))
        .send()
        .await
        .unwrap();
    assert_box_error(root, 403, "access_denied_insufficient_permissions").await;
    let gone = emu
        .delete(&emu.api(&format!("/folders/{old}?recursive=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    let seen = emu.inspect();
    assert_eq!(seen.folders.len(), 1);
    assert!(seen.file(&file_id).is_none());
    // Creating under it is now 404, as for any missing parent.
    assert_box_error(emu.create_folder_raw(&inner, "x").await, 404, "not_found").await;
}
