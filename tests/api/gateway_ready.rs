//! `/readyz`: ready when the replica can serve: started, not draining, and its credentials not
//! refused by Box (checked in the background). Box out of reach is a metric, not unreadiness. (Draining is shown on the real binary, in
//! `gateway_process.rs`.)
use std::time::Duration;

use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{
    EmulatorConfig, EmulatorHandle, Endpoint, FaultAction, FaultPlan, FaultRule,
};
use serde_json::Value;

use crate::support::*;

/// Polls `/readyz` (bounded) until it says `state`: `ready` (200), or a reason for not being ready
/// (503); returns its body.
async fn readyz_says(app: &TestApp, state: &str) -> Value {
    let url = &format!("{}/readyz", app.address);
    let what = format!("/readyz to say {state}");
    eventually(&what, Duration::from_secs(10), || async move {
        let answer = app.http.get(url).send().await.unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        let says = body["reason"].as_str().or(body["status"].as_str()).unwrap();
        assert_eq!(status == 200, says == "ready", "{status} {body}");
        (says == state).then_some(body)
    })
    .await
}

fn every_call_fails_with(status: u16) -> FaultPlan {
    FaultPlan {
        rules: vec![FaultRule {
            endpoint: Endpoint::Any,
            nth: None,
            fraction: Some(1.0),
            seed: None,
            times: None,
            action: FaultAction::Status {
                status,
                code: None,
                message: None,
                retry_after: None,
            },
        }],
        ..FaultPlan::default()
    }
}

/// Waits (bounded) until `gateway_box_reachable` says `value`.
async fn reachable_says(app: &TestApp, value: f64) {
    let what = format!("gateway_box_reachable to say {value}");
    eventually(&what, Duration::from_secs(10), || async move {
        app.metric("gateway_box_reachable").await == value
    })
    .await
}

/// Box out of reach is every replica's problem: readiness stays (a Box outage must not empty the
/// Service), `gateway_box_reachable` says 0 for the alert, and uploads get 503 `box_unavailable`
/// with `Retry-After`.
#[tokio::test]
async fn box_out_of_reach_is_a_metric_and_a_503_not_unreadiness() {
    let app = spawn_app_with(Options {
        readiness_check_interval_secs: 1,
        box_retry_max_attempts: 2,
        ..Options::default()
    })
    .await;

    readyz_says(&app, "ready").await;
    reachable_says(&app, 1.0).await;

    // Box answers 503 to everything.
    app.emulator.set_faults(every_call_fails_with(503));
    reachable_says(&app, 0.0).await;
    let answer = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "still ready");
    let upload = app
        .http
        .put(format!("{}/outage.bin", app.folder_url("0")))
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 503);
    let retry_after: u64 = upload.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: Value = upload.json().await.unwrap();
    assert_eq!(body["error"]["code"], "box_unavailable", "{body}");

    // Box is back: reachable again, and liveness never changed.
    app.emulator.set_faults(FaultPlan::default());
    reachable_says(&app, 1.0).await;
    readyz_says(&app, "ready").await;
    let healthz = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
}

/// A replica that starts while Box is out of reach becomes ready all the same (it cannot tell its
/// credentials are wrong, and neither can any other replica).
#[tokio::test]
async fn a_replica_started_during_a_box_outage_is_ready() {
    let app = spawn_app_with(Options {
        faults: every_call_fails_with(503),
        readiness_check_interval_secs: 1,
        ..Options::default()
    })
    .await;
    readyz_says(&app, "ready").await;
    reachable_says(&app, 0.0).await;
}

#[tokio::test]
async fn probes_come_from_the_background_check_not_from_each_request() {
    let app = spawn_app_with(Options::default()).await;
    readyz_says(&app, "ready").await;
    let before = app
        .metric_with("gateway_box_calls_total", &["probe", "200"])
        .await;

    for _ in 0..20 {
        let answer = app
            .http
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }

    assert_eq!(before, 1.0, "one check at start");
    let after = app
        .metric_with("gateway_box_calls_total", &["probe", "200"])
        .await;
    assert_eq!(after, 1.0, "20 probes of /readyz made no Box call");
}

#[tokio::test]
async fn refused_credentials_make_the_gateway_unready_naming_boxs_code() {
    let wrong = secret("ccg_wrong_secret");
    let app = spawn_app_with(Options {
        emulator: Some(Box::new(|c: &mut EmulatorConfig| {
            c.clients = vec![("ready-client".into(), secret("ccg_client_secret").into())];
            c.tokens = vec!["no-static-token-accepted".into()];
        })),
        gateway: Some(Box::new(move |s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "client_credentials".into();
            s.box_developer_token = None;
            s.box_client_id = Some("ready-client".into());
            s.box_client_secret = Some(box_upload_gateway::box_api::Secret::new(wrong));
            s.box_subject_type = Some("enterprise".into());
            s.box_subject_id = Some("1".into());
        })),
        ..Options::default()
    })
    .await;

    let not_ready = readyz_says(&app, "box_credentials_refused").await;

    let message = not_ready["message"].as_str().unwrap();
    assert!(
        message.contains("client_credentials") && message.contains("invalid_client"),
        "{message}"
    );
    assert!(!not_ready.to_string().contains(wrong));
}

#[tokio::test]
async fn passthrough_is_ready_when_box_answers_without_any_token() {
    let app = spawn_app_with(Options {
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "passthrough".into();
            s.box_developer_token = None;
        })),
        ..Options::default()
    })
    .await;

    readyz_says(&app, "ready").await;

    let state = inspect(&app.emulator);
    assert_eq!(state["counters"]["tokens_issued"], 0, "no token asked for");
    assert_eq!(
        app.metric_with("gateway_box_calls_total", &["probe", "401"])
            .await,
        1.0
    );
}
