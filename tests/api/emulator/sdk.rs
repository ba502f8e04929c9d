//! The official Python SDK (box-sdk-gen), unmodified, against a spawned emulator with Box's defaults.
use super::helpers::*;
use crate::support::python::run_script;
use box_upload_gateway::emulator::{EmulatorConfig, DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_TOKEN};
use std::time::Duration;

#[tokio::test]
async fn the_python_sdk_round_trips_through_the_emulator() {
    let emu = spawn_with(EmulatorConfig::default()).await;
    let base = emu.handle.base_url();

    let args = [base.as_str(), DEV_TOKEN, DEV_CLIENT_ID, DEV_CLIENT_SECRET];
    let report = run_script("sdk_roundtrip.py", &args, &[], Duration::from_secs(120)).await;
    let seen = emu.inspect();
    let big = seen
        .file(report["big_id"].as_str().unwrap())
        .expect("big file stored");
    assert_eq!(big.sha1, report["big_sha1"].as_str().unwrap());
    assert_eq!(big.size, report["big_size"].as_u64().unwrap());
    assert_eq!(big.parent_id, report["folder_id"].as_str().unwrap());
    let session = &seen.sessions[0];
    assert_eq!((session.part_size, session.total_parts), (8 * MIB, 3));
    let sizes: Vec<u64> = session.parts.iter().map(|p| p.size).collect();
    assert_eq!(sizes, [8 * MIB, 8 * MIB, big.size - 16 * MIB]);
    let small = seen
        .file(report["small_id"].as_str().unwrap())
        .expect("small file stored");
    assert_eq!(small.sha1, report["small_sha1"].as_str().unwrap());
    let c = &seen.counters;
    assert_eq!(
        (
            c.commits_created,
            c.direct_uploads,
            c.part_uploads_accepted,
            c.tokens_issued
        ),
        (1, 1, 3, 1)
    );
    assert_eq!(
        c.max_parts_in_flight, 1,
        "the generated SDK uploads one part at a time"
    );
}

/// The fields the gateway's pipeline applies are where Box keeps them: the official SDK reads the
/// description, tags, shared link and metadata back, and its own writes of the same land in the
/// emulator as the pipeline's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_back_the_fields_the_pipeline_applied() {
    use crate::pipeline::helpers::{emulator, new_file, send, Replica};
    use box_upload_gateway::pipeline::{FileFields, RawFields};

    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let p = &replica.pipeline;
    let fields = FileFields::parse(RawFields {
        description: Some("December invoice"),
        tags: Some("invoice,2026"),
        shared_link: Some("company"),
        metadata: Some(r#"{"enterprise.invoiceData": {"amount": 1250.5, "status": "open", "dueDate": "2026-12-31T00:00:00Z"}}"#),
    })
    .unwrap();
    let checked = p.check_fields(fields).await.unwrap();
    let prepared = p
        .prepare(new_file("0", "inv.pdf", 3))
        .await
        .unwrap()
        .with_fields(checked);
    let landed = send(p, prepared, b"pdf").await.unwrap();
    let file_id = landed.file.id().unwrap().to_owned();
    let other = send(p, p.prepare(new_file("0", "other.pdf", 3)).await.unwrap(), b"doc")
        .await
        .unwrap();
    let other_id = other.file.id().unwrap().to_owned();

    let base = emu.base_url();
    let args = [base.as_str(), DEV_TOKEN, &file_id, &other_id];
    let seen_by_sdk = run_script("sdk_fields.py", &args, &[], Duration::from_secs(120)).await;

    let seen = emu.inspect();
    let file = seen.file(&file_id).unwrap();
    let link = file.shared_link.as_ref().unwrap();
    assert_eq!(seen_by_sdk["description"], file.description.as_str());
    assert_eq!(seen_by_sdk["tags"], serde_json::json!(file.tags));
    assert_eq!(seen_by_sdk["shared_link"]["url"], link.url.as_str());
    assert_eq!(seen_by_sdk["shared_link"]["access"], "company");
    assert_eq!(seen_by_sdk["shared_link"]["effective_access"], "company");
    let kept = &file.metadata["enterprise_12345.invoiceData"];
    assert_eq!(seen_by_sdk["metadata_via_fields"]["amount"], kept["amount"]);
    let instance = &seen_by_sdk["instance"];
    assert_eq!(instance["scope"], "enterprise_12345");
    assert_eq!(instance["template"], "invoiceData");
    assert_eq!(instance["parent"], format!("file_{file_id}"));
    assert_eq!(instance["values"]["amount"], 1250.5);
    assert_eq!(instance["values"]["dueDate"], kept["dueDate"]);
    assert_eq!(seen_by_sdk["listed"], 1);
    assert_eq!(
        seen_by_sdk["template_fields"],
        serde_json::json!(["amount", "vendor", "dueDate", "status", "regions"])
    );
    // What the SDK wrote is kept as the pipeline's writes are.
    let written = seen.file(&other_id).unwrap();
    assert_eq!(written.description, "Written by the SDK");
    assert_eq!(written.tags, ["sdk", "written"]);
    let written_link = written.shared_link.as_ref().unwrap();
    assert_eq!(written_link.access, "open");
    assert_eq!(
        seen_by_sdk["written"]["shared_link_url"],
        written_link.url.as_str()
    );
    assert_eq!(seen_by_sdk["created_version"], 0);
    assert_eq!(seen_by_sdk["patched"]["version"], 1);
    let invoice = &written.metadata["enterprise_12345.invoiceData"];
    assert_eq!(
        (invoice["amount"].as_f64(), invoice["status"].as_str()),
        (Some(10.5), Some("paid"))
    );
}
