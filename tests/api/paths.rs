//! Upload by path and the fields that land with a file (issue 25), over HTTP: the real gateway and
//! the real emulator, curl, tuspy and raw sockets as clients. Every assertion is on what the emulator
//! holds (folders, files, their fields, its counters) as well as on the answer.
use std::time::Duration;

use box_upload_gateway::access::ApiKeyConfig;
use box_upload_gateway::emulator::{
    Emulator, EmulatorConfig, EmulatorHandle, Endpoint, FaultPlan, FaultRule, Inspection, ROOT_FOLDER_ID,
};
use serde_json::{json, Value};

use crate::emulator::helpers::{invoice_template, rule, status};
use crate::support::tus_client::{metadata, tuspy, TUS};
use crate::support::webhook_receiver::{with_webhooks, Receiver};
use crate::support::*;

const METADATA: &str = r#"{"enterprise.invoiceData": {"amount": 1250.5, "vendor": "ACME", "dueDate": "2026-12-31T00:00:00Z", "status": "open", "regions": ["EU"]}}"#;
const DESCRIPTION: &str = "December invoice from ACME";
/// The emulator's enterprise (its default id) holds the invoice template.
const INVOICE: &str = "enterprise_12345.invoiceData";

/// A gateway in front of an emulator that knows the invoice template.
async fn app_with(mut o: Options) -> TestApp {
    let previous = o.emulator.take();
    o.emulator = Some(Box::new(move |c: &mut EmulatorConfig| {
        c.metadata_templates = vec![invoice_template()];
        if let Some(change) = previous {
            change(c);
        }
    }));
    spawn_app_with(o).await
}

async fn app() -> TestApp {
    app_with(Options::default()).await
}

/// `PUT {address}{path}` with `query`, the raw body, and an API key if given: the status and answer.
async fn put(
    address: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Vec<u8>,
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .put(format!("{address}{path}"))
        .query(query)
        .body(body);
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or_default()
}

/// The folder at `path` below `root` in the emulator, level by level.
fn folder_at(seen: &Inspection, root: &str, path: &str) -> Option<String> {
    path.split('/').try_fold(root.to_owned(), |parent, name| {
        seen.child_folder(&parent, name).map(|f| f.id.clone())
    })
}

/// Nothing reached Box's upload calls: no session, no part, no direct upload, no file.
fn assert_no_upload_call(emulator: &EmulatorHandle) {
    let seen = emulator.inspect();
    let c = &seen.counters;
    assert_eq!(
        (c.sessions_created, c.part_uploads_accepted, c.direct_uploads),
        (0, 0, 0),
        "{c:?}"
    );
    assert!(seen.files.is_empty(), "{:?}", seen.files);
}

/// The file's description, tags, company shared link and invoice metadata, as the emulator keeps
/// them; the answer's shared link is the one Box made.
fn assert_fields_landed(seen: &Inspection, answer: &Value) {
    let id = answer["file"]["id"].as_str().unwrap();
    let url = assert_fields_kept(seen, id);
    assert_eq!(answer["fields"]["shared_link"]["url"], url.as_str(), "{answer}");
    assert_eq!(answer["file"]["shared_link"]["url"], url.as_str(), "{answer}");
    assert_eq!(
        answer["fields"]["metadata"]["enterprise.invoiceData"]["vendor"],
        "ACME"
    );
}

/// The fields as the emulator keeps them on file `id`; its shared link's URL.
fn assert_fields_kept(seen: &Inspection, id: &str) -> String {
    let kept = seen.file(id).unwrap();
    assert_eq!(kept.description, DESCRIPTION);
    assert_eq!(kept.tags, ["invoice", "2026", "acme"]);
    let link = kept.shared_link.as_ref().expect("a shared link");
    assert_eq!(link.access, "company");
    let invoice = &kept.metadata[INVOICE];
    assert_eq!(invoice["amount"], 1250.5);
    assert_eq!(invoice["vendor"], "ACME");
    assert_eq!(invoice["status"], "open");
    assert_eq!(invoice["regions"], json!(["EU"]));
    assert_eq!(invoice["dueDate"], "2026-12-31T00:00:00.000Z");
    link.url.clone()
}

const FIELDS: [(&str, &str); 4] = [
    ("description", DESCRIPTION),
    ("tags", "invoice, 2026, acme"),
    ("shared_link", "company"),
    ("metadata", METADATA),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_and_a_multipart_upload_into_a_new_three_level_path_make_its_folders_once() {
    // Arrange
    let app = app().await;
    let (small, small_sha1) = make_file(5_000);
    let (big, big_sha1) = make_file(THRESHOLD + 300_000);

    // Act: a raw PUT makes the path; a chunked multipart POST into it reuses it.
    let (status, first) = put(
        &app.address,
        "/v1/paths/Finance/Invoices/2026-12/inv-001.pdf",
        &[],
        std::fs::read(small.path()).unwrap(),
        None,
    )
    .await;
    let (status2, second) = app
        .curl_upload(
            &format!("{}/v1/paths/Finance/Invoices/2026-12", app.address),
            big.path(),
            "inv-002.pdf",
            &[],
        )
        .await;

    // Assert: both landed byte-exact in one folder, made by the first upload only.
    assert_eq!(status, 201, "{first}");
    assert_eq!(status2, 201, "{second}");
    app.assert_stored(&first, &small_sha1, 5_000);
    app.assert_stored(&second, &big_sha1, THRESHOLD + 300_000);
    assert_eq!(second["upload"]["method"], "chunked");
    let seen = app.emulator.inspect();
    let month = folder_at(&seen, ROOT_FOLDER_ID, "Finance/Invoices/2026-12").expect("the path exists");
    assert_eq!(
        seen.folders.len(),
        4,
        "All Files and three levels: {:?}",
        seen.folders
    );
    for answer in [&first, &second] {
        assert_eq!(answer["file"]["parent"]["id"], month.as_str());
        assert_eq!(answer["path"]["folder_id"], month.as_str());
        assert_eq!(answer["path"]["folder"], "Finance/Invoices/2026-12");
        assert_eq!(answer["path"]["root_id"], ROOT_FOLDER_ID);
    }
    let made: Vec<&str> = first["path"]["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(made, ["Finance", "Finance/Invoices", "Finance/Invoices/2026-12"]);
    assert_eq!(first["path"]["created"][2]["id"], month.as_str());
    assert_eq!(second["path"]["created"], json!([]));
    assert_eq!(app.metric("gateway_box_folders_created_total").await, 3.0);
    assert_eq!(
        app.metric_with("gateway_box_calls_total", &["endpoint=\"create_folder\""])
            .await,
        3.0,
        "the second upload asked Box nothing about folders (the path was cached)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_uploads_at_once_over_two_replicas_into_one_new_path_make_each_folder_once() {
    // Arrange
    let app = app().await;
    let other = spawn_replica(&app, Options::default()).await;
    let addresses = [app.address.clone(), other.address.clone()];

    // Act
    let uploads = (0..20).map(|i| {
        let address = addresses[i % 2].clone();
        async move {
            let path = format!("/v1/paths/Crowd/2026/Uploads/f{i:02}.bin");
            put(&address, &path, &[], vec![i as u8; 2_000 + i], None).await
        }
    });
    let answers = futures_util::future::join_all(uploads).await;

    // Assert
    let mut created = Vec::new();
    for (status, answer) in &answers {
        assert_eq!(*status, 201, "{answer}");
        for c in answer["path"]["created"].as_array().unwrap() {
            created.push(c["path"].as_str().unwrap().to_owned());
        }
    }
    created.sort();
    assert_eq!(created, ["Crowd", "Crowd/2026", "Crowd/2026/Uploads"]);
    let seen = app.emulator.inspect();
    assert_eq!(seen.folders.len(), 4, "each level made once: {:?}", seen.folders);
    let leaf = folder_at(&seen, ROOT_FOLDER_ID, "Crowd/2026/Uploads").unwrap();
    assert_eq!(seen.files.iter().filter(|f| f.parent_id == leaf).count(), 20);
    assert_eq!(seen.files.len(), 20);
    let made =
        app.metric("gateway_box_folders_created_total").await + other.metrics.folders_created.get() as f64;
    assert_eq!(made, 3.0);
}

fn key(name: &str, secret_name: &str, folders: &[&str], path_root: Option<&str>) -> ApiKeyConfig {
    serde_json::from_value(json!({
        "name": name,
        "sha256": sha256_hex(secret(secret_name)),
        "folders": folders,
        "path_root": path_root,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_path_root_cannot_leave_it() {
    // Arrange: "team" uploads by path below its folder Team only; "admin" by folder id only.
    let team_folder = std::sync::Arc::new(std::sync::OnceLock::new());
    let team_id = team_folder.clone();
    let app = app_with(Options {
        gateway: Some(Box::new(move |s, emulator| {
            let team = emulator.create_folder(ROOT_FOLDER_ID, "Team");
            s.allow_anonymous = false;
            s.api_keys = vec![
                key("team", "api_key_team", &[], Some(&team)),
                key("admin", "api_key_admin", &[ROOT_FOLDER_ID], None),
            ];
            team_id.set(team).unwrap();
        })),
        ..Options::default()
    })
    .await;
    let team_folder = team_folder.get().unwrap().clone();
    let team = secret("api_key_team");
    let raw = |head: String| {
        let address = app.address.clone();
        async move {
            raw_request(&address, &head, [], Duration::ZERO, Duration::from_secs(10))
                .await
                .expect("an answer")
        }
    };
    let too_deep = format!("{}escape.txt", "d/".repeat(51));

    // Act: ways out of the root, or around its checks, each as sent on the wire (no client
    // normalises them away).
    let mut refused = Vec::new();
    for tail in [
        "../escape.txt",
        "%2E%2E/escape.txt",
        "%2e%2e/%2e%2e/escape.txt",
        "a/../../escape.txt",
        "a/%2E%2E/%2E%2E/escape.txt",
        "a%2Fb/escape.txt",
        "a%2F..%2F..%2Fescape.txt",
        "a%5C..%5Cescape.txt",
        "a//escape.txt",
        "/escape.txt",
        "a/",
        "",
        "a/..",
        "%20a/escape.txt",
        "a%00/escape.txt",
        "%FF/escape.txt",
        too_deep.as_str(),
    ] {
        let head = format!(
            "PUT /v1/paths/{tail} HTTP/1.1\r\nHost: gateway\r\nX-API-Key: {team}\r\nContent-Length: 5"
        );
        refused.push((tail.to_owned(), raw(head).await));
    }
    let head = format!(
        "POST /v1/paths/%2E%2E HTTP/1.1\r\nHost: gateway\r\nX-API-Key: {team}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000"
    );
    refused.push(("POST %2E%2E".into(), raw(head).await));
    for path in ["..", "a/../..", "a//b"] {
        let head = format!(
            "POST /v1/tus/ HTTP/1.1\r\nHost: gateway\r\nX-API-Key: {team}\r\nTus-Resumable: {TUS}\r\nUpload-Length: 5\r\nUpload-Metadata: {}\r\nContent-Length: 0",
            metadata(&[("filename", "escape.txt"), ("path", path)])
        );
        refused.push((format!("tus {path}"), raw(head).await));
    }
    // The key's root is its only way in: no path for a key without one, no folder id for this one.
    let (no_root, no_root_answer) = put(
        &app.address,
        "/v1/paths/Sub/x.txt",
        &[],
        b"hello".to_vec(),
        Some(secret("api_key_admin")),
    )
    .await;
    let (by_id, by_id_answer) = put(
        &app.address,
        "/v1/folders/0/files/x.txt",
        &[],
        b"hello".to_vec(),
        Some(team),
    )
    .await;
    let (ok, landed) = put(
        &app.address,
        "/v1/paths/Sub/in-root.txt",
        &[],
        b"hello".to_vec(),
        Some(team),
    )
    .await;

    // Assert: every way out was 400 invalid_path, before Box was asked anything.
    for (what, answer) in &refused {
        assert_eq!(
            (answer.status, answer.code()),
            (400, "invalid_path"),
            "{what}: {answer:?}"
        );
    }
    assert_eq!((no_root, code(&no_root_answer)), (403, "forbidden_folder"));
    assert_eq!((by_id, code(&by_id_answer)), (403, "forbidden_folder"));
    assert_eq!(ok, 201, "{landed}");
    assert_eq!(landed["path"]["root_id"], team_folder.as_str());
    let seen = app.emulator.inspect();
    let sub = seen
        .child_folder(&team_folder, "Sub")
        .expect("made below the root");
    assert_eq!(landed["file"]["parent"]["id"], sub.id.as_str());
    assert_eq!(
        seen.folders.len(),
        3,
        "All Files, Team, Team/Sub and nothing else: {:?}",
        seen.folders
    );
    assert_eq!(seen.files.len(), 1, "{:?}", seen.files);
    assert_eq!(seen.counters.sessions_created, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_the_way_is_a_path_conflict_and_no_folder_is_made() {
    // Arrange: a file named Reports in All Files.
    let app = app().await;
    let (status, file) = put(
        &app.address,
        "/v1/folders/0/files/Reports",
        &[],
        b"q4".to_vec(),
        None,
    )
    .await;
    assert_eq!(status, 201, "{file}");

    // Act
    let (conflict, answer) = put(
        &app.address,
        "/v1/paths/Reports/2026/q4.pdf",
        &[],
        b"abc".to_vec(),
        None,
    )
    .await;
    let (missing, missing_answer) = put(
        &app.address,
        "/v1/paths/Archive/2026/q4.pdf",
        &[("create_folders", "false")],
        b"abc".to_vec(),
        None,
    )
    .await;

    // Assert
    assert_eq!((conflict, code(&answer)), (409, "path_conflict"), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"Reports\""), "names the segment: {message}");
    assert_eq!(
        (missing, code(&missing_answer)),
        (404, "folder_not_found"),
        "{missing_answer}"
    );
    let seen = app.emulator.inspect();
    assert_eq!(seen.folders.len(), 1, "no folder made: {:?}", seen.folders);
    assert_eq!(seen.files.len(), 1);
    assert_eq!(seen.files[0].size, 2, "the file in the way is untouched");
    assert_eq!(
        seen.counters.direct_uploads, 1,
        "only the first upload reached Box"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_a_chunked_and_a_raw_upload_land_with_their_fields() {
    // Arrange
    let app = app().await;
    let (small, small_sha1) = make_file(3_000);
    let (big, big_sha1) = make_file(THRESHOLD + 100_000);
    let folder = app.folder_url("0");

    // Act: multipart with the fields before the file; raw with the fields in the query.
    let (s1, direct) = app.curl_upload(&folder, small.path(), "small.pdf", &FIELDS).await;
    let (s2, chunked) = app.curl_upload(&folder, big.path(), "big.pdf", &FIELDS).await;
    let (s3, raw) = put(
        &app.address,
        "/v1/paths/Fields/raw.pdf",
        &FIELDS,
        std::fs::read(small.path()).unwrap(),
        None,
    )
    .await;

    // Assert
    assert_eq!((s1, s2, s3), (201, 201, 201), "{direct}\n{chunked}\n{raw}");
    assert_eq!(direct["upload"]["method"], "direct");
    assert_eq!(chunked["upload"]["method"], "chunked");
    app.assert_stored(&direct, &small_sha1, 3_000);
    app.assert_stored(&chunked, &big_sha1, THRESHOLD + 100_000);
    app.assert_stored(&raw, &small_sha1, 3_000);
    let seen = app.emulator.inspect();
    for answer in [&direct, &chunked, &raw] {
        assert_fields_landed(&seen, answer);
    }
    // One schema read for the three (cached), one file update and one metadata call each.
    let calls = |endpoint: &'static str| {
        let app = &app;
        async move {
            app.metric_with("gateway_box_calls_total", &[&format!("endpoint=\"{endpoint}\"")])
                .await
        }
    };
    assert_eq!(calls("get_metadata_template").await, 1.0);
    assert_eq!(calls("update_file").await, 3.0);
    assert_eq!(calls("create_metadata").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_upload_by_path_lands_with_its_fields_and_its_event_names_the_path() {
    // Arrange: tuspy, the tus project's Python client, sends the file in three chunks.
    let receiver = Receiver::started().await;
    let app = app_with(with_webhooks(receiver.url(), Options::default())).await;
    let size = THRESHOLD + 200_000;
    let (file, sha1) = make_file(size);
    let mut pairs = vec![("filename", "scan.pdf"), ("path", "Scans/2026 Q4")];
    pairs.extend(FIELDS);
    let metadata: serde_json::Map<String, Value> =
        pairs.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();

    // Act
    let done = tuspy(
        &[&app.address],
        file.path(),
        450_000,
        &["--metadata", &Value::Object(metadata).to_string()],
    )
    .await;

    // Assert
    let file_id = done["file_id"].as_str().expect("landed");
    let seen = app.emulator.inspect();
    let folder = folder_at(&seen, ROOT_FOLDER_ID, "Scans/2026 Q4").expect("the path was made");
    let kept = seen.file(file_id).unwrap();
    assert_eq!(
        (kept.parent_id.as_str(), kept.sha1.as_str()),
        (folder.as_str(), sha1.as_str())
    );
    assert_eq!(seen.counters.commits_created, 1, "one chunked session");
    let link = assert_fields_kept(&seen, file_id);
    let events = receiver.wait_for(1, Duration::from_secs(20)).await;
    let event = &events[0]["event"];
    assert_eq!(event["type"], "upload.completed", "{event}");
    assert_eq!(event["data"]["path"], "Scans/2026 Q4");
    assert_eq!(event["data"]["folder_id"], folder.as_str());
    assert!(
        !event.to_string().contains(&link),
        "no shared link URL in events: {event}"
    );
}

/// Bad fields, each refused before the body is read and before any Box upload call: raw (the body
/// never sent), multipart (the file part never sent) and tus creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_field_is_refused_before_the_body_with_no_upload_call() {
    // Arrange
    let app = app().await;
    let cases: [(&str, &str, u16, &str, &str); 9] = [
        ("metadata", "{not json", 422, "invalid_metadata", "metadata"),
        ("metadata", r#"["a"]"#, 422, "invalid_metadata", "metadata"),
        (
            "metadata",
            r#"{"enterprise.noSuchTemplate": {"a": "b"}}"#,
            422,
            "invalid_metadata",
            "enterprise.noSuchTemplate",
        ),
        (
            "metadata",
            r#"{"enterprise.invoiceData": {"colour": "red"}}"#,
            422,
            "invalid_metadata",
            "enterprise.invoiceData.colour",
        ),
        (
            "metadata",
            r#"{"enterprise.invoiceData": {"amount": "a lot"}}"#,
            422,
            "invalid_metadata",
            "enterprise.invoiceData.amount",
        ),
        (
            "metadata",
            r#"{"enterprise.invoiceData": {"dueDate": "next week"}}"#,
            422,
            "invalid_metadata",
            "enterprise.invoiceData.dueDate",
        ),
        (
            "metadata",
            r#"{"enterprise.invoiceData": {"regions": ["EU", "Mars"]}}"#,
            422,
            "invalid_metadata",
            "enterprise.invoiceData.regions",
        ),
        ("shared_link", "everyone", 400, "invalid_field", "shared_link"),
        (
            "description",
            &"d".repeat(257),
            400,
            "invalid_field",
            "description",
        ),
    ];
    let enc =
        |v: &str| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();

    for (field, value, status, error, named) in cases {
        // Act: raw, 5 MB declared and never sent.
        let head = format!(
            "PUT /v1/paths/Bad/x.pdf?{field}={} HTTP/1.1\r\nHost: gateway\r\nContent-Length: 5000000",
            enc(value)
        );
        let raw = raw_request(&app.address, &head, [], Duration::ZERO, Duration::from_secs(10))
            .await
            .expect("answered before the body");
        // Multipart: the field before the file, the file part's head, then no file byte.
        let form_head = format!(
            "--b\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.pdf\"\r\nContent-Type: application/pdf\r\n\r\n"
        );
        let head = format!(
            "POST /v1/folders/0/files HTTP/1.1\r\nHost: gateway\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}",
            form_head.len() + 5_000_000
        );
        let form = raw_request(
            &app.address,
            &head,
            [form_head.into_bytes()],
            Duration::ZERO,
            Duration::from_secs(10),
        )
        .await
        .expect("answered before the file");
        // tus creation.
        let head = format!(
            "POST /v1/tus/ HTTP/1.1\r\nHost: gateway\r\nTus-Resumable: {TUS}\r\nUpload-Length: 5000000\r\nUpload-Metadata: {}\r\nContent-Length: 0",
            metadata(&[("filename", "x.pdf"), (field, value)])
        );
        let tus = raw_request(&app.address, &head, [], Duration::ZERO, Duration::from_secs(10))
            .await
            .expect("answered");

        // Assert
        for (how, answer) in [("raw", &raw), ("multipart", &form), ("tus", &tus)] {
            assert_eq!(
                (
                    answer.status,
                    answer.code(),
                    answer.json["error"]["field"].as_str()
                ),
                (status, error, Some(named)),
                "{how} {field}={value}: {answer:?}"
            );
        }
    }
    assert_no_upload_call(&app.emulator);
    assert_eq!(
        app.emulator.inspect().folders.len(),
        1,
        "no folder made for a refused upload"
    );
    // A malformed Upload-Metadata header is tus's own 400, not the metadata field's 422.
    let head = format!(
        "POST /v1/tus/ HTTP/1.1\r\nHost: gateway\r\nTus-Resumable: {TUS}\r\nUpload-Length: 5\r\nUpload-Metadata: filename !!\r\nContent-Length: 0"
    );
    let header = raw_request(&app.address, &head, [], Duration::ZERO, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((header.status, header.code()), (400, "invalid_upload_metadata"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_call_that_keeps_failing_leaves_no_file_behind() {
    // Arrange: Box answers every metadata creation 503.
    let app = app_with(Options {
        faults: FaultPlan {
            rules: vec![FaultRule {
                fraction: Some(1.0),
                ..rule(Endpoint::CreateMetadata, status(503, None, None))
            }],
            ..FaultPlan::default()
        },
        box_retry_max_attempts: 3,
        ..Options::default()
    })
    .await;
    let (big, _) = make_file(THRESHOLD + 10_000);

    // Act: a direct and a chunked upload with fields.
    let (direct, direct_answer) = put(
        &app.address,
        "/v1/paths/Failing/small.pdf",
        &FIELDS,
        vec![7u8; 900],
        None,
    )
    .await;
    let (chunked, chunked_answer) = app
        .curl_upload(&app.folder_url("0"), big.path(), "big.pdf", &FIELDS)
        .await;

    // Assert
    for (status, answer) in [(direct, &direct_answer), (chunked, &chunked_answer)] {
        assert_eq!((status, code(answer)), (502, "box_fields_failed"), "{answer}");
    }
    let seen = app.emulator.inspect();
    assert!(seen.files.is_empty(), "{:?}", seen.files);
    assert_eq!(seen.counters.files_deleted, 2);
    assert_eq!(
        seen.counters.commits_created, 1,
        "the chunked one was committed, then removed"
    );
    assert_eq!(
        app.metric_with("gateway_fields_cleanups_total", &["outcome=\"deleted\""])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_link_may_not_upload_by_path_nor_set_fields() {
    // Arrange: a key and a link it made for All Files.
    let app = app_with(Options {
        gateway: Some(Box::new(|s, _| {
            s.allow_anonymous = false;
            s.api_keys = vec![key(
                "team",
                "api_key_team",
                &[ROOT_FOLDER_ID],
                Some(ROOT_FOLDER_ID),
            )];
            s.upload_link_secret = Some(box_upload_gateway::box_api::Secret::new(secret(
                "upload_link_secret",
            )));
            // Required with links on; the test reaches the gateway by its own address.
            s.public_base_url = Some("https://uploads.example.test".into());
        })),
        ..Options::default()
    })
    .await;
    let body = json!({"folder_id": "0", "expires_in_secs": 600});
    let (_, link) = make_link(&app, Some(secret("api_key_team")), body).await;
    let token = token_of(link["url"].as_str().unwrap()).to_owned();
    let tus_create = |pairs: Vec<(&'static str, &'static str)>| {
        let (app, token) = (&app, token.clone());
        async move {
            let response = app
                .http
                .post(format!("{}/v1/tus/", app.address))
                .header("Tus-Resumable", TUS)
                .header("X-Upload-Link", token)
                .header("Upload-Length", 5)
                .header("Upload-Metadata", metadata(&pairs))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Act
    let by_path = tus_create(vec![("filename", "x.txt"), ("path", "Anywhere")]).await;
    let with_link = tus_create(vec![("filename", "x.txt"), ("shared_link", "open")]).await;
    let with_metadata = tus_create(vec![("filename", "x.txt"), ("metadata", METADATA)]).await;
    let plain = reqwest::Client::new()
        .put(format!("{}/v1/paths/Anywhere/x.txt", app.address))
        .header("X-Upload-Link", &token)
        .body("hello")
        .send()
        .await
        .unwrap();

    // Assert
    for (status, answer) in [&by_path, &with_link, &with_metadata] {
        assert_eq!((*status, code(answer)), (403, "link_not_allowed"), "{answer}");
    }
    assert_eq!(plain.status(), 403);
    assert_no_upload_call(&app.emulator);
    assert_eq!(app.emulator.inspect().folders.len(), 1);
}

/// The one-liner docs/api.md gives a legacy application, run as written against the real binary at
/// `RUST_LOG=debug`: the file lands by path with its fields, and the shared link's URL (a capability)
/// is in the answer only, never in the gateway's logs or metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_curl_one_liner_lands_by_path_with_metadata_and_the_link_url_is_never_logged() {
    // Arrange
    let token = secret("developer_token");
    let emulator = Emulator::spawn(EmulatorConfig {
        tokens: vec![token.into()],
        metadata_templates: vec![invoice_template()],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let mut env = crate::support::process::emulator_env(&emulator);
    env.push(("BOX_DEVELOPER_TOKEN", token.into()));
    env.push(("GATEWAY_ALLOW_ANONYMOUS", "true".into()));
    let gateway = crate::support::process::Gateway::start(&crate::support::process::env_refs(&env)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("inv-001.pdf"), b"%PDF-1.7 invoice").unwrap();
    let gw = gateway.url("");

    // Act: as in docs/api.md ("Upload by path, with metadata, in one request").
    let out = tokio::process::Command::new("curl")
        .current_dir(dir.path())
        .args([
            "-sS",
            "-F",
            "description=December invoice from ACME",
            "-F",
            "tags=invoice,2026,acme",
            "-F",
            "shared_link=company",
        ])
        .args([
            "-F",
            r#"metadata={"enterprise.invoiceData": {"amount": 1250.5, "vendor": "ACME", "status": "open"}}"#,
        ])
        .args(["-F", "file=@inv-001.pdf"])
        .arg(format!("{gw}/v1/paths/Finance/Invoices/2026-12"))
        .output()
        .await
        .expect("curl runs");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let metrics = reqwest::get(gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // Assert
    let seen = emulator.inspect();
    let folder = folder_at(&seen, ROOT_FOLDER_ID, "Finance/Invoices/2026-12").expect("the path was made");
    let id = answer["file"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    let kept = seen.file(id).unwrap();
    assert_eq!(kept.parent_id, folder);
    assert_eq!(kept.name, "inv-001.pdf");
    assert_eq!(kept.tags, ["invoice", "2026", "acme"]);
    assert_eq!(kept.metadata[INVOICE]["vendor"], "ACME");
    let url = kept.shared_link.as_ref().unwrap().url.clone();
    assert_eq!(answer["fields"]["shared_link"]["url"], url.as_str());
    let logs = gateway.finish().await;
    assert!(
        logs.contains("upload landed in Box"),
        "the upload is logged: {logs}"
    );
    assert!(
        !logs.contains(&url),
        "the shared link URL leaked into the logs: {logs}"
    );
    let token_part = url.rsplit('/').next().unwrap();
    assert!(
        !logs.contains(token_part),
        "the shared link's token leaked into the logs"
    );
    assert!(
        !metrics.contains(token_part),
        "the shared link's token is in the metrics"
    );
}
