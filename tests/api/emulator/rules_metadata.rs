//! Metadata templates and instances: the schema as Box answers it, the schema check with Box's error
//! codes and bodies, reading instances back, JSON Patch updates, and the control API.
use super::helpers::*;
use box_upload_gateway::emulator::{EmulatorConfig, Endpoint, FaultAction, FaultPlan};
use serde_json::{json, Value};

fn metadata_url(emu: &TestEmulator, file_id: &str, scope: &str, key: &str) -> String {
    emu.api(&format!("/files/{file_id}/metadata/{scope}/{key}"))
}

async fn create_instance(emu: &TestEmulator, file_id: &str, body: Value) -> reqwest::Response {
    emu.post(&metadata_url(emu, file_id, "enterprise", "invoiceData"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_schema_is_answered_as_box_describes_it() {
    let emu = spawn_with_invoice().await;
    let schema: Value = emu
        .get(&emu.api("/metadata_templates/enterprise/invoiceData/schema"))
        .send_json()
        .await;
    assert_eq!(schema["type"], "metadata_template");
    assert_eq!(schema["scope"], "enterprise_12345");
    assert_eq!(schema["templateKey"], "invoiceData");
    assert_eq!(schema["displayName"], "Invoice data");
    assert!(schema["id"].as_str().is_some_and(|id| id.len() == 36));
    let status = &schema["fields"][3];
    assert_eq!(
        (status["type"].as_str(), status["key"].as_str()),
        (Some("enum"), Some("status"))
    );
    assert_eq!(status["options"][1]["key"], "paid");
    assert!(status["options"][1]["id"].is_string() && status["id"].is_string());
    assert_eq!(schema["fields"][4]["type"], "multiSelect");
    // The enterprise's own id names the same scope.
    let same: Value = emu
        .get(&emu.api("/metadata_templates/enterprise_12345/invoiceData/schema"))
        .send_json()
        .await;
    assert_eq!(same["id"], schema["id"]);

    let unknown = emu
        .get(&emu.api("/metadata_templates/enterprise/nope/schema"))
        .send()
        .await
        .unwrap();
    assert_box_error(unknown, 404, "not_found").await;
    let bad_scope = emu
        .get(&emu.api("/metadata_templates/team/invoiceData/schema"))
        .send()
        .await
        .unwrap();
    assert_box_error(bad_scope, 400, "bad_request").await;
    let properties: Value = emu
        .get(&emu.api("/metadata_templates/global/properties/schema"))
        .send_json()
        .await;
    assert_eq!(properties["scope"], "global");
}

#[tokio::test]
async fn an_instance_is_created_read_back_and_kept_where_box_keeps_it() {
    let emu = spawn_with_invoice().await;
    let file_id = emu.small_file("0", "inv-001.pdf").await;
    let res = create_instance(
        &emu,
        &file_id,
        json!({"amount": 1250.5, "vendor": "ACME", "dueDate": "2026-12-31T00:00:00Z", "status": "open", "regions": ["EU", "US"]}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["$parent"], format!("file_{file_id}"));
    assert_eq!(
        (created["$scope"].as_str(), created["$template"].as_str()),
        (Some("enterprise_12345"), Some("invoiceData"))
    );
    assert_eq!(created["$version"], 0);
    assert_eq!(
        created["dueDate"], "2026-12-31T00:00:00.000Z",
        "Box keeps dates with milliseconds, in UTC"
    );
    assert_eq!(created["regions"], json!(["EU", "US"]));

    let read: Value = emu
        .get(&metadata_url(&emu, &file_id, "enterprise", "invoiceData"))
        .send_json()
        .await;
    assert_eq!(read, created);
    let all: Value = emu
        .get(&emu.api(&format!("/files/{file_id}/metadata")))
        .send_json()
        .await;
    assert_eq!(all["entries"], json!([created]));
    let with_fields: Value = emu
        .get(&emu.api(&format!(
            "/files/{file_id}?fields=metadata.enterprise.invoiceData"
        )))
        .send_json()
        .await;
    assert_eq!(
        with_fields["metadata"]["enterprise_12345"]["invoiceData"]["amount"],
        1250.5
    );

    let seen = emu.inspect();
    let kept = &seen.file(&file_id).unwrap().metadata["enterprise_12345.invoiceData"];
    assert_eq!(
        (kept["vendor"].as_str(), kept["status"].as_str()),
        (Some("ACME"), Some("open"))
    );
    assert!(kept.keys().all(|k| !k.starts_with('$')));

    let twice = create_instance(&emu, &file_id, json!({"amount": 1.0})).await;
    assert_metadata_error(twice, 409, "tuple_already_exists").await;
    let missing = emu
        .get(&metadata_url(&emu, &file_id, "global", "properties"))
        .send()
        .await
        .unwrap();
    assert_box_error(missing, 404, "instance_not_found").await;
}

#[tokio::test]
async fn values_that_do_not_fit_the_schema_are_refused_with_boxs_error() {
    let emu = spawn_with_invoice().await;
    let file_id = emu.small_file("0", "inv-002.pdf").await;
    for bad in [
        json!({"amount": "1250.50"}),
        json!({"amount": null}),
        json!({"vendor": 12}),
        json!({"dueDate": "31/12/2026"}),
        json!({"dueDate": "2026-12-31"}),
        json!({"status": "overdue"}),
        json!({"regions": ["EU", "Mars"]}),
        json!({"regions": "EU"}),
        json!({"colour": "red"}),
    ] {
        let body = assert_metadata_error(
            create_instance(&emu, &file_id, bad.clone()).await,
            400,
            "schema_validation_failed",
        )
        .await;
        let field = bad.as_object().unwrap().keys().next().unwrap().clone();
        assert!(body["message"].as_str().unwrap().contains(&field), "{body}");
    }
    let not_object = emu
        .post(&metadata_url(&emu, &file_id, "enterprise", "invoiceData"))
        .json(&json!(["amount", 1]))
        .send()
        .await
        .unwrap();
    assert_box_error(not_object, 400, "bad_request").await;
    let unknown = emu
        .post(&metadata_url(&emu, &file_id, "enterprise", "nope"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_box_error(unknown, 404, "instance_tuple_not_found").await;
    let no_file = create_instance(&emu, "4242", json!({"amount": 1.0})).await;
    assert_box_error(no_file, 404, "not_found").await;
    assert!(emu.inspect().file(&file_id).unwrap().metadata.is_empty());
}

#[tokio::test]
async fn global_properties_take_any_key_with_text() {
    let emu = spawn().await;
    let file_id = emu.small_file("0", "p.txt").await;
    let url = metadata_url(&emu, &file_id, "global", "properties");
    let bad = emu.post(&url).json(&json!({"count": 3})).send().await.unwrap();
    assert_metadata_error(bad, 400, "schema_validation_failed").await;
    let ok = emu
        .post(&url)
        .json(&json!({"project": "Apollo", "team": "Ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    assert_eq!(
        emu.inspect().file(&file_id).unwrap().metadata["global.properties"]["team"],
        "Ops"
    );
}

#[tokio::test]
async fn a_json_patch_updates_an_instance_whole_or_not_at_all() {
    let emu = spawn_with_invoice().await;
    let file_id = emu.small_file("0", "inv-003.pdf").await;
    assert_eq!(
        create_instance(&emu, &file_id, json!({"amount": 10.0, "status": "open"}))
            .await
            .status(),
        201
    );
    let url = metadata_url(&emu, &file_id, "enterprise", "invoiceData");
    let patch = |ops: Value| {
        emu.put(&url)
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string())
            .send()
    };

    // `add` overwrites a value that is there (OpenAPI, the update's `value`).
    let res = patch(json!([{"op": "add", "path": "/amount", "value": 20.5}, {"op": "add", "path": "/vendor", "value": "ACME"}])).await.unwrap();
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(
        (updated["amount"].as_f64(), updated["$version"].as_u64()),
        (Some(20.5), Some(1))
    );

    let refused = patch(json!([{"op": "add", "path": "/vendor", "value": "Other"}, {"op": "replace", "path": "/status", "value": "lost"}])).await.unwrap();
    assert_box_error(refused, 400, "schema_validation_failed").await;
    let bad_op = patch(json!([{"op": "replace", "path": "/dueDate", "value": "2026-01-01T00:00:00Z"}]))
        .await
        .unwrap();
    assert_box_error(bad_op, 400, "bad_request").await;
    let wrong_type = emu.put(&url).json(&json!([])).send().await.unwrap();
    assert_box_error(wrong_type, 400, "bad_request").await;

    let kept = emu.inspect().file(&file_id).unwrap().metadata["enterprise_12345.invoiceData"].clone();
    assert_eq!(
        serde_json::Value::Object(kept),
        json!({"amount": 20.5, "status": "open", "vendor": "ACME"})
    );
}

#[tokio::test]
async fn templates_come_from_the_control_api_too() {
    let emu = spawn().await;
    let base = emu.handle.base_url();
    let added = emu
        .client
        .post(format!("{base}/_emulator/metadata_templates"))
        .json(&json!([{"scope": "enterprise", "templateKey": "contract", "fields": [{"type": "date", "key": "signed"}]}]))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
    emu.handle.put_metadata_template(invoice_template()).unwrap();
    let listed: Value = emu
        .client
        .get(format!("{base}/_emulator/metadata_templates"))
        .send_json()
        .await;
    let keys: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["templateKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["contract", "invoiceData", "properties"]);

    let bad = emu
        .client
        .post(format!("{base}/_emulator/metadata_templates"))
        .json(&json!([{"scope": "enterprise", "templateKey": "x", "fields": [{"type": "enum", "key": "e"}]}]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let replaced = emu
        .client
        .put(format!("{base}/_emulator/metadata_templates"))
        .json(&json!({"entries": [{"scope": "global", "templateKey": "tagsOnly", "fields": [{"type": "string", "key": "t"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    let seen = emu.inspect();
    let keys: Vec<(&str, &str)> = seen
        .metadata_templates
        .iter()
        .map(|t| (t.scope.as_str(), t.template_key.as_str()))
        .collect();
    assert_eq!(keys, [("global", "properties"), ("global", "tagsOnly")]);
    let gone = emu
        .get(&emu.api("/metadata_templates/enterprise/contract/schema"))
        .send()
        .await
        .unwrap();
    assert_box_error(gone, 404, "not_found").await;
}

#[tokio::test]
async fn a_bad_template_stops_the_emulator_from_starting() {
    let mut bad = invoice_template();
    bad.template_key = "has space".into();
    let started = box_upload_gateway::emulator::Emulator::spawn(EmulatorConfig {
        metadata_templates: vec![bad],
        ..small_config()
    })
    .await;
    assert!(started.is_err());
}

#[tokio::test]
async fn the_metadata_calls_have_their_faults() {
    let emu = spawn_with_invoice().await;
    let file_id = emu.small_file("0", "f.pdf").await;
    emu.handle.set_faults(FaultPlan {
        rules: vec![
            rule(Endpoint::GetMetadataTemplate, status(503, None, Some(2))),
            rule(Endpoint::CreateMetadata, FaultAction::StoreThenFail),
            rule(Endpoint::UpdateMetadata, status(500, None, None)),
        ],
        ..FaultPlan::default()
    });
    let schema = emu
        .get(&emu.api("/metadata_templates/enterprise/invoiceData/schema"))
        .send()
        .await
        .unwrap();
    assert_eq!(schema.headers()["retry-after"], "2");
    assert_box_error(schema, 503, "unavailable").await;
    // The lost answer: the instance is there although Box answered 500.
    assert_box_error(
        create_instance(&emu, &file_id, json!({"amount": 5.0})).await,
        500,
        "internal_server_error",
    )
    .await;
    assert_eq!(
        emu.inspect().file(&file_id).unwrap().metadata["enterprise_12345.invoiceData"]["amount"],
        5.0
    );
    let update = emu
        .put(&metadata_url(&emu, &file_id, "enterprise", "invoiceData"))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op": "add", "path": "/amount", "value": 6.0}]"#)
        .send()
        .await
        .unwrap();
    assert_box_error(update, 500, "internal_server_error").await;
    let fired: Vec<Endpoint> = emu.inspect().faults_fired.iter().map(|f| f.endpoint).collect();
    assert_eq!(
        fired,
        [
            Endpoint::GetMetadataTemplate,
            Endpoint::CreateMetadata,
            Endpoint::UpdateMetadata
        ]
    );
}
