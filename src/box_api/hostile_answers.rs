//! Property tests: every parser of Box's answers, fed arbitrary statuses, headers and bodies (and
//! JSON of roughly the right shape with wrong values), never panics and always ends in a typed
//! `BoxError` or a value, which the edge then maps to a documented error (never a 500).
use std::time::Duration;

use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::auth::{token_answer, token_error};
use super::client::{check_session, decode_bytes, status_error, CommitAnswer};
use super::error::{retry_after_value, MAX_RETRY_AFTER};
use super::types::*;
use crate::error::ApiError;
use crate::pipeline::UploadError;

/// Keys Box's answers carry, so generated objects often look almost right.
const KEYS: &[&str] = &[
    "id",
    "type",
    "part_size",
    "total_parts",
    "session_endpoints",
    "upload_part",
    "commit",
    "abort",
    "list_parts",
    "status",
    "entries",
    "total_count",
    "part",
    "offset",
    "size",
    "sha1",
    "part_id",
    "code",
    "message",
    "context_info",
    "conflicts",
    "request_id",
    "access_token",
    "expires_in",
    "file_version",
    "error",
    "error_description",
    "session_expires_at",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        "https?://[a-z.]{0,8}/[a-z/]{0,8}".prop_map(Value::String),
        "[0-9a-f]{40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![prop::sample::select(KEYS).prop_map(str::to_owned), ".{0,6}"],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Raw bytes: JSON, JSON cut short, or anything at all.
fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        (arb_json(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let mut bytes = serde_json::to_vec(&v).unwrap();
            bytes.truncate(at.index(bytes.len() + 1));
            bytes
        }),
        prop::collection::vec(any::<u8>(), 0..200),
        Just(b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>".to_vec()),
    ]
}

fn arb_retry_after() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[0-9]{15,40}",
        "(Mon|Fri|Sun), [0-9]{2} (Jan|Dec|Foo) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
        ".{0,20}",
    ]
}

fn headers(retry_after: &str, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(retry_after) {
        h.insert(reqwest::header::RETRY_AFTER, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("box-request-id"), v);
    }
    h
}

/// What the gateway's client would get: never a 500, always a code.
fn assert_mapped(err: super::BoxError) {
    let api = ApiError::from(UploadError::Box(err));
    assert_ne!(api.status.as_u16(), 500, "{api}");
    assert!(!api.code.is_empty());
    assert!(api
        .retry_after_secs
        .is_none_or(|s| s <= MAX_RETRY_AFTER.as_secs()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn error_answers_of_any_status_headers_and_body(
        status in 0u16..1000,
        retry_after in arb_retry_after(),
        request_id in ".{0,40}",
        body in arb_body(),
        endpoint in prop::sample::select(&["upload_part", "commit", "create_session", "token", "abort"][..]),
    ) {
        let err = status_error(endpoint, status, &headers(&retry_after, &request_id), &body);
        prop_assert_eq!(err.status(), Some(status));
        prop_assert!(err.retry_after().is_none_or(|d| d <= MAX_RETRY_AFTER));
        let _ = (err.retry_reason(), err.is_auth_failure(), err.may_have_landed(), err.to_string());
        let _ = err.body().and_then(BoxErrorBody::conflict);
        assert_mapped(err);
        let token = token_error(status, None, &body);
        let _ = (token.is_refusal(), token.is_auth_failure());
        assert_mapped(token);
    }

    #[test]
    fn retry_after_of_any_text(value in arb_retry_after()) {
        let d = retry_after_value(&value, std::time::SystemTime::now());
        prop_assert!(d.is_none_or(|d| d <= MAX_RETRY_AFTER));
    }

    #[test]
    fn session_objects(body in arb_body(), size in any::<u64>()) {
        if let Ok(session) = decode_bytes::<UploadSession>("create_session", &body) {
            let _ = check_session(&session, size);
        }
    }

    #[test]
    fn session_objects_of_the_right_shape_with_wrong_values(
        part_size in any::<u64>(),
        total_parts in any::<u64>(),
        size in any::<u64>(),
        url in prop_oneof![".{0,10}", "https://upload.box.com/api/2.0/files/upload_sessions/[A-F0-9]{4}"],
    ) {
        let body = serde_json::json!({
            "id": "S", "part_size": part_size, "total_parts": total_parts,
            "session_endpoints": {"upload_part": url, "commit": url, "abort": url, "list_parts": url},
        });
        let session: UploadSession = decode_bytes("create_session", &serde_json::to_vec(&body).unwrap()).unwrap();
        if check_session(&session, size).is_ok() {
            // What the pipeline then relies on.
            prop_assert!(session.part_size > 0 && session.total_parts <= super::client::MAX_PARTS);
            prop_assert_eq!(session.total_parts, size.div_ceil(session.part_size));
        }
    }

    #[test]
    fn part_echoes_pages_commits_and_files(body in arb_body()) {
        let _ = decode_bytes::<PartEcho>("upload_part", &body);
        let _ = decode_bytes::<PartsPage>("list_parts", &body);
        let _ = decode_bytes::<ItemsPage>("folder_items", &body);
        if let Ok(files) = decode_bytes::<FileCollection>("commit", &body) {
            if let Ok(file) = super::client::first_file_of("commit", files) {
                prop_assert!(file.id().is_some_and(|id| !id.is_empty()));
                let _ = (file.sha1(), file.size());
            }
        }
        if let Err(err) = decode_bytes::<FileCollection>("commit", &body) {
            assert_mapped(err);
        }
        let _ = BoxErrorBody::from_bytes(&body).conflict();
    }

    #[test]
    fn conflicts_in_object_and_array_form(item in arb_json(), as_array in any::<bool>()) {
        let conflicts = if as_array { Value::Array(vec![item]) } else { item };
        let body = serde_json::json!({"code": "item_name_in_use", "context_info": {"conflicts": conflicts}});
        let parsed = BoxErrorBody::from_bytes(&serde_json::to_vec(&body).unwrap());
        if let Some(c) = parsed.conflict() {
            prop_assert!(!c.kind.is_empty());
        }
    }

    #[test]
    fn token_answers(body in arb_body()) {
        match token_answer(&body) {
            Ok((token, lifetime)) => {
                prop_assert!(!token.expose().is_empty());
                prop_assert!(lifetime >= Duration::from_secs(1) && lifetime <= Duration::from_secs(86_400));
            }
            Err(err) => assert_mapped(err),
        }
    }

    #[test]
    fn token_answers_of_the_right_shape_with_wrong_values(token in arb_json(), expires in arb_json()) {
        let body = serde_json::json!({"access_token": token, "expires_in": expires, "token_type": "bearer"});
        let _ = token_answer(&serde_json::to_vec(&body).unwrap());
    }
}

#[test]
fn a_202_is_pending_with_a_capped_wait() {
    // The commit's 202 reads only `Retry-After`; the same defensive parser as errors.
    let h = headers("100000000000000000000", "");
    let pending = CommitAnswer::Pending(super::error::parse_retry_after(&h));
    assert!(matches!(pending, CommitAnswer::Pending(Some(d)) if d == MAX_RETRY_AFTER));
}
