//! Production credentials against the emulator's token endpoint, and API keys at the gateway's edge.
use std::path::{Path, PathBuf};
use std::time::Duration;

use box_upload_gateway::box_api::Secret;
use box_upload_gateway::config::Settings;
use box_upload_gateway::emulator::{EmulatorConfig, EmulatorHandle, FaultPlan};
use serde_json::{json, Value};

use crate::support::*;

const CLIENT_ID: &str = "gateway-app-client-id";
const ENTERPRISE: &str = "4242";

fn ccg_emulator(config: &mut EmulatorConfig) {
    config.clients = vec![(CLIENT_ID.into(), secret("ccg_client_secret").into())];
    config.enterprise_id = Some(ENTERPRISE.into());
    config.users = vec!["777".into()];
    // Only tokens it issued: the gateway cannot get by on the development token.
    config.tokens = vec!["no-static-token-accepted".into()];
}

/// Client credentials with the secret in a file (a Kubernetes Secret mount), acting for the enterprise.
fn ccg_gateway(dir: &Path) -> impl FnOnce(&mut Settings, &EmulatorHandle) {
    let secret_file = dir.join("box_client_secret");
    std::fs::write(&secret_file, format!("{}\n", secret("ccg_client_secret"))).unwrap();
    move |s: &mut Settings, _: &EmulatorHandle| {
        s.box_auth = "client_credentials".into();
        s.box_developer_token = None;
        s.box_client_id = Some(CLIENT_ID.into());
        s.box_client_secret_file = Some(secret_file.display().to_string());
        s.box_subject_type = Some("enterprise".into());
        s.box_subject_id = Some(ENTERPRISE.into());
    }
}

async fn ccg_app(dir: &Path, o: Options) -> TestApp {
    spawn_app_with(Options {
        emulator: Some(Box::new(ccg_emulator)),
        gateway: Some(Box::new(ccg_gateway(dir))),
        ..o
    })
    .await
}

fn tokens_issued(app: &TestApp) -> u64 {
    app.emulator.inspect().counters.tokens_issued
}

#[tokio::test]
async fn client_credentials_upload_lands_with_one_token() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let app = ccg_app(dir.path(), Options::default()).await;
    let (file, sha1) = make_file(3 * PART + 17 + THRESHOLD);

    // Act: a chunked upload (several parts) and a direct one
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "ccg.bin", &[])
        .await;
    let small = app.put_raw("small.bin", vec![7; 1000], &[]).await.status;

    // Assert: both landed with tokens of one grant; the start-up check and the uploads shared it
    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, 3 * PART + 17 + THRESHOLD);
    assert_eq!(small, 201);
    assert_eq!(tokens_issued(&app), 1);
    assert_eq!(
        app.metric_with("gateway_box_token_requests_total", &["issued"])
            .await,
        1.0
    );
}

/// A Box app config file as the console downloads it: an RSA key encrypted the way Box encrypts it
/// (PKCS#8, PBES2, PBKDF2-HMAC-SHA1, 3DES), made with openssl. Returns the file and the public key.
fn box_app_config(dir: &Path, passphrase: &str) -> (PathBuf, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the tests need openssl on the PATH (Debian: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "plain.pem",
    ]);
    let pass = format!("pass:{passphrase}");
    run(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "des3",
        "-v2prf",
        "hmacWithSHA1",
        "-iter",
        "2048",
        "-in",
        "plain.pem",
        "-passout",
        &pass,
        "-out",
        "encrypted.pem",
    ]);
    run(&["pkey", "-in", "plain.pem", "-pubout", "-out", "public.pem"]);
    std::fs::remove_file(dir.join("plain.pem")).unwrap();
    let private_key = std::fs::read_to_string(dir.join("encrypted.pem")).unwrap();
    assert!(private_key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let config = json!({
        "boxAppSettings": {
            "clientID": CLIENT_ID,
            "clientSecret": secret("jwt_client_secret"),
            "appAuth": {"publicKeyID": "kid-7xq2", "privateKey": private_key, "passphrase": passphrase}
        },
        "enterpriseID": ENTERPRISE
    });
    let path = dir.join("box_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    (path, std::fs::read_to_string(dir.join("public.pem")).unwrap())
}

#[tokio::test]
async fn jwt_from_a_box_app_config_file_with_an_encrypted_key() {
    // Arrange: the emulator verifies the assertion's signature with the app's public key
    let dir = tempfile::tempdir().unwrap();
    let (config_file, public_key) = box_app_config(dir.path(), secret("jwt_passphrase"));
    let app = spawn_app_with(Options {
        emulator: Some(Box::new(move |c: &mut EmulatorConfig| {
            c.clients = vec![(CLIENT_ID.into(), secret("jwt_client_secret").into())];
            c.jwt_public_keys = vec![("kid-7xq2".into(), public_key)];
            c.enterprise_id = Some(ENTERPRISE.into());
            c.tokens = vec!["no-static-token-accepted".into()];
        })),
        gateway: Some(Box::new(move |s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "jwt".into();
            s.box_developer_token = None;
            s.box_jwt_config_file = Some(config_file.display().to_string());
        })),
        ..Options::default()
    })
    .await;
    let (file, sha1) = make_file(THRESHOLD + 2 * PART);

    // Act
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "jwt.bin", &[])
        .await;

    // Assert
    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, THRESHOLD + 2 * PART);
    assert_eq!(tokens_issued(&app), 1);
}

#[tokio::test]
async fn a_jwt_config_that_cannot_be_used_is_refused_at_start_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (config_file, _) = box_app_config(dir.path(), secret("jwt_passphrase"));
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    config["boxAppSettings"]["appAuth"]["passphrase"] = json!(secret("ccg_wrong_secret"));
    std::fs::write(&config_file, config.to_string()).unwrap();
    let settings = Settings {
        box_auth: "jwt".into(),
        box_jwt_config_file: Some(config_file.display().to_string()),
        allow_anonymous: true,
        ..Settings::default()
    };

    let problems = settings.validate().unwrap_err().join("\n");

    assert!(problems.contains("box_jwt_config_file"), "{problems}");
    assert!(problems.contains("passphrase"), "{problems}");
    assert!(!problems.contains(secret("ccg_wrong_secret")), "{problems}");
    assert!(!problems.contains(secret("jwt_client_secret")), "{problems}");
}

#[tokio::test]
async fn passthrough_sends_the_callers_own_token() {
    // Arrange: the emulator accepts only the caller's token; the gateway has no credentials at all
    let caller = secret("caller_box_token");
    let app = spawn_app_with(Options {
        emulator: Some(Box::new(move |c: &mut EmulatorConfig| {
            c.tokens = vec![caller.into()]
        })),
        gateway: Some(Box::new(|s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "passthrough".into();
            s.box_developer_token = None;
            s.allow_anonymous = false;
        })),
        ..Options::default()
    })
    .await;
    let (file, sha1) = make_file(THRESHOLD + PART + 1);
    let bearer = format!("Bearer {caller}");

    // Act
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "mine.bin", &[])
        .await;
    let form = format!("file=@{};filename=mine.bin", file.path().display());
    let (landed_status, landed) = curl(&[
        "-H",
        &format!("Authorization: {bearer}"),
        "-F",
        &form,
        &app.folder_url("0"),
    ])
    .await;
    let wrong = app
        .http
        .put(format!("{}/v1/folders/0/files/wrong.bin", app.address))
        .bearer_auth("not-a-box-token")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();

    // Assert: no token, 401 with a Bearer challenge; the caller's token, landed; a token Box refuses, 401
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "unauthenticated");
    assert_eq!(landed_status, 201, "{landed}");
    app.assert_stored(&landed, &sha1, THRESHOLD + PART + 1);
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let wrong: Value = wrong.json().await.unwrap();
    assert_eq!(wrong["error"]["code"], "unauthenticated", "{wrong}");
    assert_eq!(tokens_issued(&app), 0);
}

#[tokio::test]
async fn api_keys_refuse_before_box_sees_a_byte() {
    // Arrange: a file in the root folder, uploaded by `admin`
    let dir = tempfile::tempdir().unwrap();
    let (app, team_folder) = keyed_app(dir.path()).await;
    let root = app
        .put_raw(
            "root.bin",
            vec![1; 100],
            &[("X-API-Key", secret("api_key_admin"))],
        )
        .await;
    assert_eq!(root.status, 201, "{}", root.json);
    let root_file_id = root.json["file"]["id"].as_str().unwrap().to_owned();
    let before = app.emulator.inspect().counters;
    let team = ("X-API-Key", secret("api_key_team"));
    let url = |path: &str| format!("{}/v1{path}", app.address);

    // Act
    let no_key = app
        .http
        .put(url("/folders/0/files/a.bin"))
        .body("x")
        .send()
        .await
        .unwrap();
    let wrong_key = app
        .http
        .put(url(&format!("/folders/{team_folder}/files/a.bin")))
        .header("X-API-Key", "apikey-team-Hs4Qd02LxTm")
        .body("x")
        .send()
        .await
        .unwrap();
    let other_folder = app
        .http
        .put(url("/folders/0/files/a.bin"))
        .header(team.0, team.1)
        .body("x")
        .send()
        .await
        .unwrap();
    let key_header = format!("X-API-Key: {}", team.1);
    let (small, _) = make_file(1);
    let (big, _) = make_file(1024 * 1024 + 1);
    let multipart = |url: String, path: &Path| {
        let form = format!("file=@{};filename=a.bin", path.display());
        let key_header = key_header.clone();
        async move { curl(&["-H", &key_header, "-F", &form, &url]).await }
    };
    let other_folder_multipart = multipart(url("/folders/0/files"), small.path()).await;
    let version_elsewhere = app
        .http
        .put(url(&format!("/files/{root_file_id}/content")))
        .header(team.0, team.1)
        .body("x")
        .send()
        .await
        .unwrap();
    let too_large = app
        .http
        .put(url(&format!("/folders/{team_folder}/files/big.bin")))
        .header(team.0, team.1)
        .body(vec![0u8; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    let too_large_multipart = multipart(url(&format!("/folders/{team_folder}/files")), big.path()).await;
    let unknown_length = app
        .http
        .put(url(&format!("/folders/{team_folder}/files/stream.bin")))
        .header(team.0, team.1)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            (0..5).map(|_| Ok::<_, std::io::Error>(vec![0u8; 300 * 1024])),
        )))
        .send()
        .await
        .unwrap();

    // Assert: each refusal with its status, code and challenge...
    for (response, status, code) in [
        (no_key, 401, "unauthenticated"),
        (wrong_key, 401, "unauthenticated"),
        (other_folder, 403, "forbidden_folder"),
        (version_elsewhere, 403, "forbidden_folder"),
        (too_large, 413, "file_too_large"),
        (unknown_length, 413, "file_too_large"),
    ] {
        assert_eq!(response.status(), status, "{code}");
        if status == 401 {
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(challenge.contains("X-API-Key"), "{challenge}");
        }
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    for ((status, body), want) in [(other_folder_multipart, 403), (too_large_multipart, 413)] {
        assert_eq!(status, want, "{body}");
    }
    // ...and Box saw none of their bytes: no session, no part, no upload, no file
    let after = app.emulator.inspect();
    assert_eq!(after.counters.sessions_created, before.sessions_created);
    assert_eq!(after.counters.direct_uploads, before.direct_uploads);
    assert_eq!(after.counters.part_uploads_accepted, before.part_uploads_accepted);
    assert_eq!(after.files.len(), 1);
    let refused = app.metrics_text().await;
    assert!(
        refused.contains("gateway_access_refused_total{code=\"forbidden_folder\",key=\"team\"} 3"),
        "{refused}"
    );
    assert!(
        refused.contains("gateway_access_refused_total{code=\"file_too_large\",key=\"team\"} 3"),
        "{refused}"
    );
    assert!(!refused.contains(secret("api_key_team")));
}

#[tokio::test]
async fn a_key_uploads_into_its_folders_as_its_own_user() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let (app, team_folder) = keyed_app(dir.path()).await;
    let (file, sha1) = make_file(THRESHOLD - 1);
    let team = ("X-API-Key", secret("api_key_team"));

    // Act: a new file, then a new version of it
    let first = app
        .http
        .put(format!("{}/v1/folders/{team_folder}/files/t.bin", app.address))
        .header(team.0, team.1)
        .body(std::fs::read(file.path()).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    app.assert_stored(&first, &sha1, THRESHOLD - 1);
    let version = app
        .http
        .put(format!(
            "{}/v1/files/{}/content",
            app.address,
            first["file"]["id"].as_str().unwrap()
        ))
        .header(team.0, team.1)
        .body(vec![5u8; 64])
        .send()
        .await
        .unwrap();
    let admin = app
        .put_raw("root.bin", vec![1; 10], &[("X-API-Key", secret("api_key_admin"))])
        .await
        .status;

    // Assert: every Box call of `team` acted as user 777, none of `admin`'s did
    assert_eq!(version.status(), 201);
    assert_eq!(admin, 201);
    let as_user = app.emulator.inspect().as_user;
    assert!(as_user.len() >= 4, "{as_user:?}");
    assert!(as_user.iter().all(|u| u == "777"), "{as_user:?}");
    let m = app.metrics_text().await;
    assert!(
        m.contains("key=\"team\",method=\"direct\",outcome=\"success\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("key=\"admin\",method=\"direct\",outcome=\"success\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_token_that_expires_mid_upload_is_refreshed_once() {
    // Arrange: a slow Box, so the upload is still sending parts when its token is revoked
    let dir = tempfile::tempdir().unwrap();
    let app = ccg_app(
        dir.path(),
        Options {
            part_concurrency: 1,
            faults: FaultPlan {
                delay_ms: 60,
                ..FaultPlan::default()
            },
            ..Options::default()
        },
    )
    .await;
    let size = THRESHOLD + 6 * PART;
    let (file, sha1) = make_file(size);
    let url = app.folder_url("0");
    let path = file.path().to_owned();
    let upload = tokio::spawn(async move {
        let (status, answer) =
            curl(&["-F", &format!("file=@{};filename=long.bin", path.display()), &url]).await;
        (status, answer)
    });

    // Act: once Box holds a part, every token it issued expires
    eventually("the upload sends parts", Duration::from_secs(20), || {
        std::future::ready(
            sessions(&app.emulator)
                .iter()
                .any(|s| !s["parts"].as_array().unwrap().is_empty()),
        )
    })
    .await;
    app.emulator.expire_issued_tokens();
    let (status, answer) = upload.await.unwrap();

    // Assert: landed whole, with exactly one refresh
    assert_eq!(status, 201, "{answer}");
    app.assert_stored(&answer, &sha1, size);
    assert_eq!(tokens_issued(&app), 2);
    assert_eq!(
        app.metric_with(
            "gateway_box_calls_total",
            &["endpoint=\"upload_part\"", "status=\"401\""]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn twenty_uploads_meeting_an_expired_token_cause_one_token_request() {
    // Arrange: a token in the cache, then revoked by Box
    let dir = tempfile::tempdir().unwrap();
    let app = ccg_app(dir.path(), Options::default()).await;
    assert_eq!(app.put_raw("warm.bin", vec![1; 10], &[]).await.status, 201);
    assert_eq!(tokens_issued(&app), 1);
    app.emulator.expire_issued_tokens();

    // Act: twenty uploads at once, each meeting a 401 first
    let uploads = (0..20).map(|i| {
        let app = &app;
        async move {
            app.put_raw(&format!("f{i}.bin"), vec![i as u8; 1000 + i], &[])
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(uploads).await;

    // Assert
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(tokens_issued(&app), 2);
}

#[tokio::test]
async fn refused_credentials_fail_each_upload_with_502_box_auth_failed() {
    // Arrange: the gateway holds a secret the token endpoint refuses
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("box_client_secret"), secret("ccg_wrong_secret")).unwrap();
    let secret_file = dir.path().join("box_client_secret");
    let app = spawn_app_with(Options {
        emulator: Some(Box::new(ccg_emulator)),
        gateway: Some(Box::new(move |s: &mut Settings, _: &EmulatorHandle| {
            s.box_auth = "client_credentials".into();
            s.box_developer_token = None;
            s.box_client_id = Some(CLIENT_ID.into());
            s.box_client_secret_file = Some(secret_file.display().to_string());
            s.box_subject_id = Some(ENTERPRISE.into());
        })),
        ..Options::default()
    })
    .await;

    // Act
    let first = app.put_raw("a.bin", vec![1; 10], &[]).await;
    let second = app.put_raw("b.bin", vec![1; 10], &[]).await.status;
    let (first, answer) = (first.status, first.json);

    // Assert: 502 box_auth_failed naming Box's code, and the refusal remembered (no request per upload)
    assert_eq!((first, second), (502, 502));
    assert_eq!(answer["error"]["code"], "box_auth_failed", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid_client"),
        "{answer}"
    );
    assert!(!answer.to_string().contains(secret("ccg_wrong_secret")));
    assert_eq!(
        app.metric_with("gateway_box_token_requests_total", &["refused"])
            .await,
        1.0
    );
    assert_eq!(app.emulator.inspect().counters.sessions_created, 0);
}

#[tokio::test]
async fn a_subject_box_does_not_know_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(Options {
        emulator: Some(Box::new(ccg_emulator)),
        gateway: Some(Box::new({
            let set = ccg_gateway(dir.path());
            move |s: &mut Settings, e: &EmulatorHandle| {
                set(s, e);
                s.box_subject_type = Some("user".into());
                s.box_subject_id = Some("999".into());
            }
        })),
        ..Options::default()
    })
    .await;

    let answer = app.put_raw("a.bin", vec![1; 10], &[]).await;

    assert_eq!(answer.status, 502);
    let answer = answer.json;
    assert_eq!(answer["error"]["box"]["code"], "invalid_grant", "{answer}");
}

#[test]
fn without_keys_or_passthrough_the_gateway_refuses_to_start() {
    let settings = Settings {
        box_developer_token: Some(Secret::new("t")),
        ..Settings::default()
    };
    let problems = settings.validate().unwrap_err().join("\n");
    assert!(
        problems.contains("api_keys_file") && problems.contains("allow_anonymous"),
        "{problems}"
    );
    let passthrough = Settings {
        box_auth: "passthrough".into(),
        ..Settings::default()
    };
    assert!(passthrough.validate().is_ok());
}
