//! `/oauth2/token`: client credentials and JWT grants with Box's claim rules.
use super::helpers::*;
use box_upload_gateway::emulator::{EmulatorConfig, DEV_CLIENT_ID, DEV_CLIENT_SECRET};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const KEY: &str = include_str!("fixtures/jwt_test_key.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/jwt_test_key.pub.pem");
const OTHER_KEY: &str = include_str!("fixtures/jwt_other_key.pem");
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

async fn token(emu: &TestEmulator, form: &[(&str, &str)]) -> reqwest::Response {
    emu.client
        .post(emu.handle.token_url())
        .form(form)
        .send()
        .await
        .unwrap()
}

async fn assert_oauth_error(res: reqwest::Response, error: &str) {
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], error, "{body}");
    assert!(body["error_description"].is_string());
}

#[tokio::test]
async fn client_credentials_issue_a_working_token() {
    let emu = spawn().await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", DEV_CLIENT_ID),
        ("client_secret", DEV_CLIENT_SECRET),
        ("box_subject_type", "enterprise"),
        ("box_subject_id", "12345"),
    ];

    let res = token(&emu, &form).await;

    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["token_type"].as_str(), body["expires_in"].as_u64()),
        (Some("bearer"), Some(3600))
    );
    assert_eq!(body["restricted_to"], json!([]));
    let access = body["access_token"].as_str().unwrap();
    let folder = emu
        .client
        .get(emu.api("/folders/0"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(folder.status(), 200);
    assert_eq!(emu.inspect().counters.tokens_issued, 1);

    let mut bad = form;
    bad[2].1 = "wrong";
    assert_oauth_error(token(&emu, &bad).await, "invalid_client").await;
    let mut bad = form;
    bad[3].1 = "group";
    assert_oauth_error(token(&emu, &bad).await, "invalid_request").await;
}

fn claims(aud: &str, exp_in: i64, jti: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": DEV_CLIENT_ID, "sub": "12345", "box_sub_type": "enterprise", "aud": aud, "jti": jti, "exp": now + exp_in})
}

fn sign(key: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("kid1".into());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn jwt(emu: &TestEmulator, assertion: &str) -> reqwest::Response {
    let form = [
        ("grant_type", JWT_GRANT),
        ("assertion", assertion),
        ("client_id", DEV_CLIENT_ID),
        ("client_secret", DEV_CLIENT_SECRET),
    ];
    token(emu, &form).await
}

#[tokio::test]
async fn jwt_grants_check_signature_and_claims() {
    let emu = spawn_with(EmulatorConfig {
        jwt_public_keys: vec![("kid1".into(), PUBLIC_KEY.into())],
        ..small_config()
    })
    .await;
    let box_aud = "https://api.box.com/oauth2/token";
    let jti = "0123456789abcdef-unique";

    let ok = jwt(&emu, &sign(KEY, &claims(box_aud, 30, jti))).await;
    assert_eq!(ok.status(), 200);
    let own_aud = jwt(
        &emu,
        &sign(KEY, &claims(&emu.handle.token_url(), 30, "own-audience-jti-0001")),
    )
    .await;
    assert_eq!(own_aud.status(), 200);

    assert_oauth_error(
        jwt(&emu, &sign(KEY, &claims(box_aud, 30, jti))).await,
        "invalid_grant",
    )
    .await;
    assert_oauth_error(
        jwt(
            &emu,
            &sign(OTHER_KEY, &claims(box_aud, 30, "other-key-jti-00001")),
        )
        .await,
        "invalid_grant",
    )
    .await;
    assert_oauth_error(
        jwt(
            &emu,
            &sign(KEY, &claims("https://example.com", 30, "bad-aud-jti-0000001")),
        )
        .await,
        "invalid_grant",
    )
    .await;
    assert_oauth_error(
        jwt(&emu, &sign(KEY, &claims(box_aud, 120, "far-exp-jti-0000001"))).await,
        "invalid_grant",
    )
    .await;
    assert_oauth_error(
        jwt(&emu, &sign(KEY, &claims(box_aud, -5, "past-exp-jti-000001"))).await,
        "invalid_grant",
    )
    .await;
    assert_oauth_error(
        jwt(&emu, &sign(KEY, &claims(box_aud, 30, "short"))).await,
        "invalid_grant",
    )
    .await;
    let mut no_sub = claims(box_aud, 30, "no-sub-type-jti-0001");
    no_sub["box_sub_type"] = json!("team");
    assert_oauth_error(jwt(&emu, &sign(KEY, &no_sub)).await, "invalid_grant").await;
    let mut wrong_iss = claims(box_aud, 30, "wrong-iss-jti-000001");
    wrong_iss["iss"] = json!("someone-else");
    assert_oauth_error(jwt(&emu, &sign(KEY, &wrong_iss)).await, "invalid_grant").await;
    assert_eq!(emu.inspect().counters.tokens_issued, 2);
}

#[tokio::test]
async fn issued_tokens_expire_on_demand() {
    let emu = spawn().await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", DEV_CLIENT_ID),
        ("client_secret", DEV_CLIENT_SECRET),
        ("box_subject_type", "user"),
        ("box_subject_id", "7"),
    ];
    let body: Value = token(&emu, &form).await.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();

    let res = emu
        .client
        .post(format!("{}/_emulator/expire-tokens", emu.handle.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    let res = emu
        .client
        .get(emu.api("/folders/0"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_box_error(res, 401, "unauthorized").await;
    assert_eq!(
        emu.get(&emu.api("/folders/0")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn issued_tokens_expire_after_their_ttl() {
    let emu = spawn_with(EmulatorConfig {
        token_ttl: std::time::Duration::ZERO,
        ..small_config()
    })
    .await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", DEV_CLIENT_ID),
        ("client_secret", DEV_CLIENT_SECRET),
        ("box_subject_type", "enterprise"),
        ("box_subject_id", "1"),
    ];
    let body: Value = token(&emu, &form).await.json().await.unwrap();
    assert_eq!(body["expires_in"], 0);

    let res = emu
        .client
        .get(emu.api("/folders/0"))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();

    assert_box_error(res, 401, "unauthorized").await;
}

#[tokio::test]
async fn without_a_configured_key_only_the_claims_are_checked() {
    let emu = spawn().await;
    let ok = jwt(
        &emu,
        &sign(
            OTHER_KEY,
            &claims("https://api.box.com/oauth2/token", 30, "unverified-jti-000001"),
        ),
    )
    .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn subjects_and_key_ids_are_checked_when_configured() {
    let emu = spawn_with(EmulatorConfig {
        jwt_public_keys: vec![("kid1".into(), PUBLIC_KEY.into())],
        enterprise_id: Some("12345".into()),
        users: vec!["7".into()],
        ..small_config()
    })
    .await;
    let ccg = |kind: &'static str, id: &'static str| {
        [
            ("grant_type", "client_credentials"),
            ("client_id", DEV_CLIENT_ID),
            ("client_secret", DEV_CLIENT_SECRET),
            ("box_subject_type", kind),
            ("box_subject_id", id),
        ]
    };

    assert_eq!(token(&emu, &ccg("enterprise", "12345")).await.status(), 200);
    assert_eq!(token(&emu, &ccg("user", "7")).await.status(), 200);
    assert_oauth_error(token(&emu, &ccg("enterprise", "999")).await, "invalid_grant").await;
    assert_oauth_error(token(&emu, &ccg("user", "8")).await, "invalid_grant").await;
    let mut other_enterprise = claims("https://api.box.com/oauth2/token", 30, "other-enterprise-jti-01");
    other_enterprise["sub"] = json!("999");
    assert_oauth_error(jwt(&emu, &sign(KEY, &other_enterprise)).await, "invalid_grant").await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("unknown-kid".into());
    let unknown_kid = encode(
        &header,
        &claims("https://api.box.com/oauth2/token", 30, "unknown-kid-jti-000001"),
        &EncodingKey::from_rsa_pem(KEY.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_oauth_error(jwt(&emu, &unknown_kid).await, "invalid_grant").await;
    assert_eq!(emu.inspect().counters.tokens_issued, 2);
}
