//! Bad input gets a clear JSON error with a stable code; health and metrics answer.
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let app = spawn_app().await;
    let health = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (file, _) = make_file(THRESHOLD);
    let (status, _) = app
        .curl_upload(&app.folder_url("0"), file.path(), "m.bin", &[])
        .await;
    assert_eq!(status, 201);
    let text = app.metrics_text().await;
    for name in [
        "gateway_uploads_total{key=\"anonymous\",method=\"chunked\",outcome=\"success\"} 1",
        "gateway_upload_bytes_total{key=\"anonymous\",method=\"chunked\"} 1048576",
        "gateway_parts_total{outcome=\"uploaded\"} 4",
        "gateway_box_calls_total{endpoint=\"create_session\",status=\"201\"} 1",
        "gateway_box_calls_total{endpoint=\"commit\",status=\"201\"} 1",
        "gateway_uploads_in_flight 0",
        "gateway_buffered_bytes 0",
        "gateway_upload_duration_seconds_count",
        "gateway_part_duration_seconds_count",
        "gateway_memory_budget_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert!(
        !text.contains(box_upload_gateway::emulator::DEV_TOKEN),
        "no secret in metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests() {
    let app = spawn_app().await;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            app.http.post(app.folder_url("0")).body("plain"),
            400,
            "invalid_multipart",
        ),
        (
            app.http
                .post(app.folder_url("0"))
                .header("content-type", "multipart/form-data; boundary=XX")
                .body("--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XX--\r\n"),
            400,
            "missing_file",
        ),
        (
            app.http
                .put(format!("{}/v1/folders/0/files/%20bad", app.address))
                .body("x"),
            400,
            "invalid_name",
        ),
        (
            app.http
                .put(format!("{}/v1/folders/abc/files/a.txt", app.address))
                .body("x"),
            404,
            "not_found",
        ),
        (
            app.http
                .put(format!("{}/v1/folders/0/files/a.txt?size=x", app.address))
                .body("x"),
            400,
            "invalid_size",
        ),
        (
            app.http
                .put(format!(
                    "{}/v1/folders/0/files/a.txt?content_modified_at=yesterday",
                    app.address
                ))
                .body("x"),
            400,
            "invalid_timestamp",
        ),
        (app.http.get(app.folder_url("0")), 405, "method_not_allowed"),
        (
            app.http.delete(format!("{}/healthz", app.address)),
            405,
            "method_not_allowed",
        ),
        (
            app.http.get(format!("{}/v2/nothing", app.address)),
            404,
            "not_found",
        ),
        (
            app.http
                .put(format!("{}/v1/folders/999999/files/a.txt", app.address))
                .body("x"),
            404,
            "not_found",
        ),
    ];
    for (request, status, code) in cases {
        let response = request
            .header("x-request-id", "trace-me-42")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{code}");
        assert_eq!(
            response.headers()["x-request-id"],
            "trace-me-42",
            "the caller's request id comes back"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(inspect(&app.emulator)["files"].as_array().unwrap().is_empty());

    // RFC 9110: a 405 names the methods the path takes (schemathesis checks it).
    for (request, allow) in [
        (app.http.get(app.folder_url("0")), "POST"),
        (
            app.http.post(format!("{}/v1/files/1/content", app.address)),
            "PUT",
        ),
        (app.http.delete(format!("{}/metrics", app.address)), "GET"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(response.headers()["allow"], allow);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn box_side_folder_missing_carries_box_details() {
    let app = spawn_app().await;
    let (file, _) = make_file(THRESHOLD);
    let (status, answer) = app
        .curl_upload(&app.folder_url("424242"), file.path(), "x.bin", &[])
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found");
    assert_eq!(answer["error"]["box"]["status"], 404);
    assert!(answer["error"]["box"]["request_id"].is_string(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_limit_is_507() {
    let app = spawn_app_with(Options {
        storage_limit_bytes: Some(THRESHOLD),
        ..Options::default()
    })
    .await;
    for size in [THRESHOLD * 2, THRESHOLD + 1] {
        let (file, _) = make_file(size);
        let (status, answer) = app
            .curl_upload(&app.folder_url("0"), file.path(), "big.bin", &[])
            .await;
        assert_eq!(status, 507, "{answer}");
        assert_eq!(answer["error"]["code"], "box_storage_full");
        assert_eq!(answer["error"]["box"]["code"], "storage_limit_exceeded");
    }
    assert!(sessions(&app.emulator).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_the_limits_are_413() {
    let app = spawn_app_with(Options {
        max_file_size_bytes: THRESHOLD * 2,
        spool_max_bytes: THRESHOLD,
        ..Options::default()
    })
    .await;
    // Declared too large: refused before Box is asked.
    let (file, _) = make_file(THRESHOLD * 2 + 1);
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "big.bin", &[])
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "file_too_large");
    // Unknown size, spooled past spool_max_bytes.
    let url = format!("{}/v1/folders/0/files/spooled.bin", app.address);
    let (status, answer) = curl(&[
        "-T",
        file.path().to_str().unwrap(),
        "-H",
        "Transfer-Encoding: chunked",
        &url,
    ])
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spool_max_bytes"),
        "{answer}"
    );
    assert!(sessions(&app.emulator).is_empty());
    assert!(inspect(&app.emulator)["files"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn box_too_slow_is_504() {
    let app = spawn_app_with(Options {
        box_request_timeout_secs: 1,
        box_retry_max_attempts: 2,
        faults: serde_json::from_value(serde_json::json!({"delay_ms": 1500})).unwrap(),
        ..Options::default()
    })
    .await;
    let (file, _) = make_file(100);
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "slow.bin", &[])
        .await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["error"]["code"], "box_timeout");
    assert!(
        app.metric_with("gateway_box_retries_total", &["reason=\"timeout\""])
            .await
            >= 1.0
    );
}
