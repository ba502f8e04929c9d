//! Fields that land with a file: parsed and checked before any byte, applied after the commit with
//! Box's retries, and the file (or version) removed when they cannot be applied.
use super::helpers::*;
use crate::emulator::helpers::{rule, status};
use box_upload_gateway::emulator::{Endpoint, FaultAction, FaultPlan, FaultRule, ROOT_FOLDER_ID};
use box_upload_gateway::pipeline::{CheckedFields, FileFields, OnConflict, RawFields, UploadError};
use serde_json::{json, Value};

const METADATA: &str = r#"{"enterprise.invoiceData": {"amount": 1250.5, "vendor": "ACME", "dueDate": "2026-12-31T00:00:00Z", "status": "open", "regions": ["EU"]}}"#;

fn all_fields() -> FileFields {
    FileFields::parse(RawFields {
        description: Some("December invoice from ACME"),
        tags: Some("invoice, 2026, acme"),
        shared_link: Some("company"),
        metadata: Some(METADATA),
    })
    .unwrap()
}

/// Every request of `endpoint` (`times: None`), or the first `times`.
fn faulty(endpoint: Endpoint, action: FaultAction, times: Option<u64>) -> FaultRule {
    FaultRule {
        fraction: times.is_none().then_some(1.0),
        times,
        ..rule(endpoint, action)
    }
}

/// Checks the fields, prepares, sends: the calls a handler makes.
async fn upload_with(
    replica: &Replica,
    name: &str,
    body: &[u8],
    fields: FileFields,
    on_conflict: OnConflict,
) -> Result<box_upload_gateway::pipeline::UploadOutcome, UploadError> {
    let p = &replica.pipeline;
    let checked = p.check_fields(fields).await?;
    let mut request = new_file(ROOT_FOLDER_ID, name, body.len() as u64);
    request.on_conflict = on_conflict;
    let prepared = p.prepare(request).await?.with_fields(checked);
    send(p, prepared, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_and_a_chunked_upload_land_with_their_fields_where_box_keeps_them() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let small = data(5000, 1);
    let big = data(CHUNKED_FROM + 123, 2);
    for (name, body) in [("small.pdf", &small), ("big.pdf", &big)] {
        let outcome = upload_with(&replica, name, body, all_fields(), OnConflict::Error)
            .await
            .unwrap();
        let id = outcome.file.id().unwrap().to_owned();
        let applied = outcome.fields.as_ref().expect("fields reported");
        let link = applied.shared_link.as_ref().unwrap();
        assert_eq!(link.access, "company");
        assert!(link.url.contains("/s/"));
        assert_eq!(
            applied.tags.as_deref(),
            Some(&["invoice".to_owned(), "2026".to_owned(), "acme".to_owned()][..])
        );
        assert_eq!(
            applied.metadata["enterprise.invoiceData"]["dueDate"],
            "2026-12-31T00:00:00.000Z"
        );
        // The answer's file object carries them where Box keeps them.
        let file = &outcome.file.0;
        assert_eq!(file["description"], "December invoice from ACME");
        assert_eq!(file["shared_link"]["url"], link.url.as_str());
        assert_eq!(
            file["metadata"]["enterprise_12345"]["invoiceData"]["amount"],
            1250.5
        );
        assert_eq!(file["sha1"], sha1_hex(body).as_str());

        let seen = emu.inspect();
        let kept = seen.file(&id).unwrap();
        assert_eq!(kept.description, "December invoice from ACME");
        assert_eq!(kept.tags, ["invoice", "2026", "acme"]);
        let kept_link = kept.shared_link.as_ref().unwrap();
        assert_eq!(
            (kept_link.access.as_str(), kept_link.url.as_str()),
            ("company", link.url.as_str())
        );
        let invoice = &kept.metadata["enterprise_12345.invoiceData"];
        assert_eq!(
            (invoice["vendor"].as_str(), invoice["status"].as_str()),
            (Some("ACME"), Some("open"))
        );
        assert_eq!(invoice["regions"], json!(["EU"]));
    }
    assert_eq!(
        emu.inspect().counters.commits_created,
        1,
        "the big one went through a session"
    );
    // One PUT and one metadata call per upload; the schema was read once (then cached).
    assert_eq!(replica.box_calls("update_file"), 2);
    assert_eq!(replica.box_calls("create_metadata"), 2);
    assert_eq!(replica.box_calls("get_metadata_template"), 1);
    assert_eq!(
        replica.counter_sum("gateway_metadata_schema_lookups_total", "result", "hit"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fields_no_box_call_is_added() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let body = data(3000, 3);
    let outcome = upload_with(
        &replica,
        "plain.bin",
        &body,
        FileFields::default(),
        OnConflict::Error,
    )
    .await
    .unwrap();
    assert!(outcome.fields.is_none());
    for endpoint in [
        "update_file",
        "create_metadata",
        "update_metadata",
        "get_metadata_template",
    ] {
        assert_eq!(replica.box_calls(endpoint), 0, "{endpoint}");
    }
    let kept = emu.inspect();
    let kept = kept.file(outcome.file.id().unwrap()).unwrap();
    assert!(
        kept.description.is_empty()
            && kept.tags.is_empty()
            && kept.shared_link.is_none()
            && kept.metadata.is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_is_refused_before_any_upload_call_naming_the_field() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let cases = [
        (
            r#"{"enterprise.invoiceData": {"amount": "a lot"}}"#,
            "enterprise.invoiceData.amount",
        ),
        (
            r#"{"enterprise.invoiceData": {"dueDate": "next week"}}"#,
            "enterprise.invoiceData.dueDate",
        ),
        (
            r#"{"enterprise.invoiceData": {"status": "lost"}}"#,
            "enterprise.invoiceData.status",
        ),
        (
            r#"{"enterprise.invoiceData": {"regions": ["EU", "Mars"]}}"#,
            "enterprise.invoiceData.regions",
        ),
        (
            r#"{"enterprise.invoiceData": {"colour": "red"}}"#,
            "enterprise.invoiceData.colour",
        ),
        (
            r#"{"enterprise.noSuchTemplate": {"a": "b"}}"#,
            "enterprise.noSuchTemplate",
        ),
    ];
    for (metadata, field) in cases {
        let fields = FileFields::parse(RawFields {
            metadata: Some(metadata),
            ..RawFields::default()
        })
        .unwrap();
        let err = replica.pipeline.check_fields(fields).await.unwrap_err();
        let UploadError::Fields(err) = &err else {
            panic!("{err:?}");
        };
        assert_eq!((err.field(), err.is_metadata()), (field, true), "{err}");
        let mapped = box_upload_gateway::error::ApiError::from(UploadError::Fields(err.clone()));
        assert_eq!((mapped.status.as_u16(), mapped.code), (422, "invalid_metadata"));
    }
    let malformed = FileFields::parse(RawFields {
        metadata: Some("{not json"),
        ..RawFields::default()
    })
    .unwrap_err();
    assert_eq!(malformed.field(), "metadata");
    let c = emu.inspect().counters;
    assert_eq!(
        (c.sessions_created, c.direct_uploads, c.part_uploads_accepted),
        (0, 0, 0)
    );
    assert!(emu.inspect().files.is_empty());
    // Only the schemas were read: the known template once (cached), the unknown one each time asked.
    assert_eq!(replica.box_calls("get_metadata_template"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_call_that_keeps_failing_leaves_no_file_behind() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    emu.set_faults(FaultPlan {
        rules: vec![faulty(Endpoint::CreateMetadata, status(503, None, None), None)],
        ..FaultPlan::default()
    });
    let big = data(CHUNKED_FROM + 1, 4);
    for (name, body) in [("small.pdf", data(800, 5)), ("big.pdf", big)] {
        let err = upload_with(&replica, name, &body, all_fields(), OnConflict::Error)
            .await
            .unwrap_err();
        let UploadError::FieldsNotApplied { what, removed, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((*what, *removed), ("file", true));
        let mapped = box_upload_gateway::error::ApiError::from(err);
        assert_eq!((mapped.status.as_u16(), mapped.code), (502, "box_fields_failed"));
    }
    let seen = emu.inspect();
    assert!(seen.files.is_empty(), "{:?}", seen.files);
    assert_eq!(seen.counters.files_deleted, 2);
    // Each metadata call was tried as any Box call is (3 attempts here), then given up.
    assert_eq!(replica.box_calls("create_metadata"), 6);
    assert_eq!(
        replica.counter_sum("gateway_fields_cleanups_total", "outcome", "deleted"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_versions_fields_failing_remove_the_version_only() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let first = upload_with(
        &replica,
        "report.pdf",
        &data(900, 6),
        FileFields::default(),
        OnConflict::Error,
    )
    .await
    .unwrap();
    emu.set_faults(FaultPlan {
        rules: vec![faulty(Endpoint::UpdateFile, status(500, None, None), None)],
        ..FaultPlan::default()
    });
    let err = upload_with(
        &replica,
        "report.pdf",
        &data(950, 7),
        all_fields(),
        OnConflict::Version,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            UploadError::FieldsNotApplied {
                what: "version",
                removed: true,
                ..
            }
        ),
        "{err:?}"
    );
    let seen = emu.inspect();
    let kept = seen.file(first.file.id().unwrap()).unwrap();
    assert_eq!(
        (kept.version_count, kept.size, kept.sha1.as_str()),
        (1, 900, sha1_hex(&data(900, 6)).as_str())
    );
    assert_eq!(seen.counters.versions_deleted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_and_an_instance_already_there_still_land_the_values() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    // The first creation's answer is lost (the instance is made): the retry meets 409 and sets the
    // values on the instance instead.
    emu.set_faults(FaultPlan {
        rules: vec![
            faulty(Endpoint::CreateMetadata, FaultAction::StoreThenFail, Some(1)),
            faulty(Endpoint::UpdateFile, FaultAction::StoreThenCut, Some(1)),
        ],
        ..FaultPlan::default()
    });
    let first = upload_with(&replica, "v.pdf", &data(700, 8), all_fields(), OnConflict::Error)
        .await
        .unwrap();
    let id = first.file.id().unwrap().to_owned();
    assert_eq!(replica.box_calls("update_metadata"), 1);
    assert_eq!(
        first.fields.as_ref().unwrap().metadata["enterprise.invoiceData"]["amount"],
        1250.5
    );

    // A new version of a file that has the template: the given values are set, the others kept.
    let second = FileFields::parse(RawFields {
        metadata: Some(r#"{"enterprise.invoiceData": {"amount": 99.0, "status": "paid"}}"#),
        tags: Some("paid"),
        ..RawFields::default()
    })
    .unwrap();
    let v2 = upload_with(&replica, "v.pdf", &data(710, 9), second, OnConflict::Version)
        .await
        .unwrap();
    assert_eq!(v2.file.id(), Some(id.as_str()));
    let seen = emu.inspect();
    let kept = seen.file(&id).unwrap();
    assert_eq!(kept.version_count, 2);
    assert_eq!(kept.tags, ["paid"]);
    let invoice = Value::Object(kept.metadata["enterprise_12345.invoiceData"].clone());
    assert_eq!(
        (
            invoice["amount"].as_f64(),
            invoice["status"].as_str(),
            invoice["vendor"].as_str()
        ),
        (Some(99.0), Some("paid"), Some("ACME"))
    );
    assert_eq!(
        kept.description, "December invoice from ACME",
        "a field not sent again stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_upload_lands_with_its_fields() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let p = &replica.pipeline;
    let checked: CheckedFields = p.check_fields(all_fields()).await.unwrap();
    // What a tus upload keeps between requests: serializable.
    let stored = serde_json::to_string(&checked).unwrap();
    let body = data(CHUNKED_FROM + 77, 10);
    let prepared = p
        .prepare(new_file(ROOT_FOLDER_ID, "tus.pdf", body.len() as u64))
        .await
        .unwrap();
    let mut r = prepared.into_resumable();
    let mut pending = bytes::Bytes::new();
    let pieces = futures_util::stream::iter([Ok::<_, UploadError>(bytes::Bytes::from(body.clone()))]);
    let mut hold = p.hold_for(&r, 0).await.unwrap();
    let whole = p.append(&mut r, &mut pending, &mut hold, pieces).await.unwrap();
    drop(hold);
    let outcome = p
        .complete_with_fields(&mut r, whole, Some(serde_json::from_str(&stored).unwrap()))
        .await
        .unwrap();
    let seen = emu.inspect();
    let kept = seen.file(outcome.file.id().unwrap()).unwrap();
    assert_eq!(
        (kept.sha1.as_str(), kept.description.as_str()),
        (sha1_hex(&body).as_str(), "December invoice from ACME")
    );
    assert_eq!(kept.metadata["enterprise_12345.invoiceData"]["amount"], 1250.5);
}
