//! Property tests of everything that parses client input before the pipeline sees it: the raw
//! multipart scan that derives the size, the parameters (query and fields), `Digest`, `Upload-Length`,
//! `Content-Type`'s boundary, `Content-Length`, names and ids, tus's `Upload-Metadata` and
//! `Upload-Checksum`. Arbitrary bytes and mutations of valid
//! input: never a panic, and every refusal a 4xx with a code documented in openapi.yaml.
//!
//! `FUZZ_CASES` cases per property: 20,000 by default (every commit, a few seconds of CPU);
//! `FUZZ_CASES=100000` is the release run's depth, `FUZZ_CASES=1000000` on demand. The HTTP-level
//! counterpart, over real loopback, is tests/api/fuzz.rs.
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::params::{boundary, content_length, header_u64, validate_id, validate_name, UploadParams};
use super::tus::protocol::{parse_checksum, parse_metadata};
use super::upload::{file_data_offset, suffix_len, HeadScan, Scan};
use crate::error::ApiError;

fn config() -> Config {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    Config {
        cases,
        // A failure is printed with its input; no regression files in the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

/// The stable codes, as openapi.yaml's `ErrorCode` lists them (read once).
fn documented(code: &str) -> bool {
    static CODES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    CODES
        .get_or_init(|| {
            const OPENAPI: &str = include_str!("../../openapi.yaml");
            let at = OPENAPI
                .find("    ErrorCode:")
                .expect("openapi.yaml lists ErrorCode");
            OPENAPI[at..]
                .lines()
                .skip_while(|l| l.trim() != "enum:")
                .skip(1)
                .take_while(|l| l.trim_start().starts_with("- "))
                .map(|l| l.trim_start().trim_start_matches("- "))
                .collect()
        })
        .contains(&code)
}

/// A refusal must be a 4xx with a documented code.
fn refusal_ok<T>(result: Result<T, ApiError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(e.status.is_client_error(), "{e}");
        prop_assert!(documented(e.code), "undocumented code {}", e.code);
    }
    Ok(())
}

fn header(name: &'static str, value: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
    headers
}

/// A valid multipart body: text fields, then the file part (plain or RFC 5987 filename), maybe a
/// preamble; returns it with where the file's data starts.
fn valid_form() -> impl Strategy<Value = (Vec<u8>, String, usize)> {
    (
        "[A-Za-z0-9'()+_,./:=?-]{1,70}",
        prop::collection::vec(("[a-z_]{1,12}", "[ -~]{0,40}"), 0..4),
        prop::bool::ANY,
        "[^\"\r\n\\\\]{0,30}",
        prop::collection::vec(any::<u8>(), 0..48),
        prop::option::of("[ -~]{0,20}"),
    )
        .prop_map(|(boundary, fields, extended, filename, data, preamble)| {
            let mut body = preamble
                .map(|p| format!("{p}\r\n"))
                .unwrap_or_default()
                .into_bytes();
            for (name, value) in fields {
                body.extend(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                    )
                    .bytes(),
                );
            }
            let filename = if extended {
                let encoded: String = filename.bytes().map(|b| format!("%{b:02X}")).collect();
                format!("filename*=UTF-8''{encoded}")
            } else {
                format!("filename=\"{filename}\"")
            };
            body.extend(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; {filename}\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .bytes(),
            );
            let offset = body.len();
            body.extend_from_slice(&data);
            body.extend(format!("\r\n--{boundary}--\r\n").bytes());
            (body, boundary, offset)
        })
}

/// Byte-level mutations: flip, insert, delete, truncate, at positions chosen by the fuzzer.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..8),
                Just(b"\r\n".to_vec()),
                Just(b"--".to_vec()),
                Just(b"\r\n\r\n".to_vec()),
                Just(b"; filename=\"x\"".to_vec()),
            ]
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Flip(i, b) if !body.is_empty() => {
                let i = i % body.len();
                body[i] ^= b | 1;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, bytes) => {
                let i = at(*i, body.len());
                body.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(*i, body.len());
                let end = (i + n).min(body.len());
                body.drain(i..end);
            }
            Mutation::Truncate(i) => body.truncate(at(*i, body.len())),
        }
    }
    body
}

/// The scan's own promise: an offset inside the body, and a derived size that fits in it.
fn scan_ok(body: &[u8], boundary: &str) -> Result<(), TestCaseError> {
    if let Scan::Found(offset) = file_data_offset(body, boundary) {
        prop_assert!(offset <= body.len());
        let _ = (body.len() as u64).checked_sub(offset as u64 + suffix_len(boundary));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scan_survives_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..400),
                                     boundary in "[ -~]{0,72}") {
        scan_ok(&body, &boundary)?;
    }

    #[test]
    fn scan_finds_the_file_of_a_valid_form_at_every_split((body, boundary, offset) in valid_form(),
                                                          cut in any::<prop::sample::Index>()) {
        prop_assert_eq!(file_data_offset(&body, &boundary), Scan::Found(offset));
        prop_assert_eq!(body.len() as u64 - offset as u64 - suffix_len(&boundary),
                        (body.len() - offset) as u64 - suffix_len(&boundary));
        // A body seen only in part never gives another answer than the whole one.
        let prefix = &body[..cut.index(body.len() + 1)];
        let partial = file_data_offset(prefix, &boundary);
        prop_assert!(partial == Scan::NeedMore || partial == Scan::Found(offset), "{:?}", partial);
    }

    /// Fed in pieces (searching only new bytes plus an overlap), the scan gives the whole body's answer,
    /// for valid forms and mutated ones alike.
    #[test]
    fn scan_in_pieces_answers_as_the_whole_body((body, boundary, _) in valid_form(),
                                               mutations in prop::collection::vec(mutation(), 0..3),
                                               sizes in prop::collection::vec(1usize..90, 1..6)) {
        let body = mutate(body, &mutations);
        let whole = file_data_offset(&body, &boundary);
        let mut scan = HeadScan::new(&boundary);
        let (mut end, mut i, mut answer) = (0, 0, Scan::NeedMore);
        while answer == Scan::NeedMore && end < body.len() {
            end = (end + sizes[i % sizes.len()]).min(body.len());
            i += 1;
            answer = scan.scan(&body[..end]);
        }
        prop_assert_eq!(answer, whole);
    }

    #[test]
    fn scan_survives_mutated_forms((body, boundary, _) in valid_form(),
                                   mutations in prop::collection::vec(mutation(), 1..4)) {
        scan_ok(&mutate(body, &mutations), &boundary)?;
    }

    #[test]
    fn parameters_parse_or_are_refused_with_a_documented_4xx(
        size in prop::option::of(prop_oneof!["[0-9]{0,25}", "\\PC{0,12}", "[ +-]?[0-9]{1,20}[ ]?"]),
        upload_length in prop::collection::vec(any::<u8>(), 0..24),
        on_conflict in prop::option::of(prop_oneof!["error|version|rename", "\\PC{0,10}"]),
        timestamp in prop::option::of(prop_oneof![
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
            "\\PC{0,30}"]),
        sha1 in prop::option::of(prop_oneof!["[0-9a-fA-F]{38,42}", "\\PC{0,44}"]),
        digest in prop::collection::vec(any::<u8>(), 0..60),
        structured_digest in "(sha|SHA|sha-256|md5)=[A-Za-z0-9+/=]{0,32}(, ?(sha|SHA)=[A-Za-z0-9+/=]{0,32})?",
    ) {
        let params = UploadParams {
            size,
            on_conflict,
            content_created_at: timestamp.clone(),
            sha1,
            ..UploadParams::default()
        };
        refusal_ok(params.declared_size(&header("upload-length", &upload_length)))?;
        refusal_ok(UploadParams::default().declared_size(&header("upload-length", &upload_length)))?;
        refusal_ok(params.on_conflict())?;
        refusal_ok(UploadParams::timestamp(&timestamp, "content_created_at"))?;
        refusal_ok(params.expected_sha1(Some(&header("digest", &digest))))?;
        let header_only = UploadParams::default();
        refusal_ok(header_only.expected_sha1(Some(&header("digest", &digest))))?;
        refusal_ok(header_only.expected_sha1(Some(&header("digest", structured_digest.as_bytes()))))?;
    }

    #[test]
    fn request_headers_parse_or_are_refused_with_a_documented_4xx(
        content_type in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            "multipart/form-data(; ?[a-z]{1,10}=(\"[^\"]{0,20}\"|[!-~]{0,20})){0,3}".prop_map(String::into_bytes),
        ],
        length in prop_oneof![prop::collection::vec(any::<u8>(), 0..24), "[0-9 ]{0,25}".prop_map(String::into_bytes)],
    ) {
        refusal_ok(boundary(&header("content-type", &content_type)))?;
        refusal_ok(content_length(&header("content-length", &length)))?;
    }

    #[test]
    fn tus_headers_parse_or_are_refused_with_a_documented_4xx(
        raw in prop_oneof![
            "\\PC{0,60}",
            prop::collection::vec(("[a-z_]{1,10}", prop::collection::vec(any::<u8>(), 0..20)), 0..5)
                .prop_map(|pairs| pairs.iter().map(|(k, v)| {
                    use base64::Engine;
                    format!("{k} {}", base64::engine::general_purpose::STANDARD.encode(v))
                }).collect::<Vec<_>>().join(",")),
        ],
        checksum in prop_oneof![prop::collection::vec(any::<u8>(), 0..40), "(sha1|md5|SHA1) [A-Za-z0-9+/=]{0,30}".prop_map(String::into_bytes)],
        offset in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        refusal_ok(parse_metadata(&raw))?;
        refusal_ok(parse_checksum(&header("upload-checksum", &checksum)))?;
        refusal_ok(header_u64(&header("upload-offset", &offset), "upload-offset", "invalid_offset"))?;
    }

    #[test]
    fn names_and_ids_are_checked_without_panic(
        name in prop_oneof![8 => "\\PC{0,24}", 1 => "[a-z .]{250,260}", 1 => "[ ./\\\\\t\u{0}-\u{1f}a]{0,6}"],
        id in "[0-9]{0,6}|\\PC{0,8}",
    ) {
        match validate_name(&name) {
            Ok(accepted) => {
                // What the gateway lets through is what Box accepts (box-api.md's rules).
                prop_assert_eq!(&accepted, &name);
                prop_assert!(!name.is_empty() && name.chars().count() <= 255);
                prop_assert!(!name.contains(['/', '\\']) && name.trim() == name);
                prop_assert!(name != "." && name != ".." && !name.chars().any(char::is_control));
            }
            Err(e) => refusal_ok::<()>(Err(e))?,
        }
        refusal_ok(validate_id(&id, "folder"))?;
    }
}

#[test]
fn the_documented_codes_are_read_from_openapi() {
    assert!(documented("invalid_multipart") && documented("box_storage_full"));
    assert!(!documented("made_up") && !documented("ErrorCode"));
}
