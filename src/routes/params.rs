//! The upload's parameters, from the query string and from text fields before the file, and the
//! headers that shape a body (`Content-Length`, a multipart boundary), parsed once into typed values
//! with a clear error for each. An upload by path's folder path is checked here too, once, into a
//! `FolderPath` (`folder_path`, `path_upload`): nothing after this edge sees a path it did not check.
use actix_web::http::header::{self, HeaderMap};
use actix_web::HttpRequest;
use base64::Engine;
use serde::Deserialize;

use crate::error::ApiError;
use crate::pipeline::{FileFields, FolderPath, OnConflict, RawFields, UploadError};

/// Raw values as sent; a text field before the file overrides the query parameter of the same name.
#[derive(Debug, Default, Deserialize)]
pub struct UploadParams {
    pub name: Option<String>,
    pub size: Option<String>,
    pub content_created_at: Option<String>,
    pub content_modified_at: Option<String>,
    pub on_conflict: Option<String>,
    /// Hex SHA-1 the client says the file has.
    pub sha1: Option<String>,
    /// The fields that land with the file (issue 25): `FileFields::parse` reads them.
    pub description: Option<String>,
    /// Comma separated.
    pub tags: Option<String>,
    /// `open`, `company` or `collaborators`.
    pub shared_link: Option<String>,
    /// JSON: `{"<scope>.<templateKey>": {"field": value}}`.
    pub metadata: Option<String>,
    /// Upload by path: `false` refuses a missing folder (404 `folder_not_found`) instead of creating
    /// it.
    pub create_folders: Option<String>,
}

impl UploadParams {
    /// Takes a multipart text field; unknown fields are ignored, as HTML forms send extras.
    pub fn set(&mut self, key: &str, value: String) {
        let slot = match key {
            "name" => &mut self.name,
            "size" => &mut self.size,
            "content_created_at" => &mut self.content_created_at,
            "content_modified_at" => &mut self.content_modified_at,
            "on_conflict" => &mut self.on_conflict,
            "sha1" => &mut self.sha1,
            "description" => &mut self.description,
            "tags" => &mut self.tags,
            "shared_link" => &mut self.shared_link,
            "metadata" => &mut self.metadata,
            "create_folders" => &mut self.create_folders,
            _ => return,
        };
        *slot = Some(value);
    }

    /// The declared size: `size`, else the `Upload-Length` header.
    pub fn declared_size(&self, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
        let header = headers
            .get("upload-length")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        match self.size.as_ref().or(header.as_ref()) {
            None => Ok(None),
            Some(v) => byte_count(v).map(Some).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_size",
                    format!("size {v:?} is not a whole number of bytes below 2^63"),
                )
            }),
        }
    }

    pub fn on_conflict(&self) -> Result<OnConflict, ApiError> {
        match self.on_conflict.as_deref() {
            None | Some("error") => Ok(OnConflict::Error),
            Some("version") => Ok(OnConflict::Version),
            Some("rename") => Ok(OnConflict::Rename),
            Some(other) => Err(ApiError::bad_request(
                "invalid_on_conflict",
                format!("on_conflict {other:?} is not one of error, version, rename"),
            )),
        }
    }

    /// The fields that land with the file, typed: 400 `invalid_field` for a bad `description`,
    /// `tags` or `shared_link`, 422 `invalid_metadata` for metadata that is not the JSON it takes.
    /// (Whether the metadata fits its templates is Box's to say: `Pipeline::check_fields`.)
    pub fn fields(&self) -> Result<FileFields, ApiError> {
        FileFields::parse(RawFields {
            description: self.description.as_deref(),
            tags: self.tags.as_deref(),
            shared_link: self.shared_link.as_deref(),
            metadata: self.metadata.as_deref(),
        })
        .map_err(|e| ApiError::from(UploadError::Fields(e)))
    }

    /// Whether any of the fields that land with the file was given (a link's caller may give none).
    pub fn has_fields(&self) -> bool {
        [&self.description, &self.tags, &self.shared_link, &self.metadata]
            .iter()
            .any(|f| f.as_deref().is_some_and(|v| !v.trim().is_empty()))
    }

    /// `create_folders`: `true` (the default) or `false`.
    pub fn create_folders(&self) -> Result<bool, ApiError> {
        match self.create_folders.as_deref().map(str::trim) {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ApiError::bad_request(
                "invalid_request",
                format!("create_folders {other:?} is not true or false"),
            )),
        }
    }

    /// RFC 3339 timestamps, passed to Box as sent.
    pub fn timestamp(value: &Option<String>, key: &str) -> Result<Option<String>, ApiError> {
        match value {
            None => Ok(None),
            Some(v) => chrono::DateTime::parse_from_rfc3339(v.trim())
                .map(|_| Some(v.trim().to_owned()))
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_timestamp",
                        format!("{key} {v:?} is not an RFC 3339 date-time"),
                    )
                }),
        }
    }

    /// The client's SHA-1: `sha1` (hex), else `Digest: sha=<base64>` (RFC 3230). The header is the
    /// digest of the whole body, so it speaks of the file only for a raw body (`headers` is `None`
    /// for multipart).
    pub fn expected_sha1(&self, headers: Option<&HeaderMap>) -> Result<Option<[u8; 20]>, ApiError> {
        let invalid = |v: &str| ApiError::bad_request("invalid_sha1", format!("{v:?} is not a SHA-1 digest"));
        if let Some(v) = &self.sha1 {
            let bytes = hex::decode(v.trim()).map_err(|_| invalid(v))?;
            return bytes.try_into().map(Some).map_err(|_| invalid(v));
        }
        let Some(digest) = headers
            .and_then(|h| h.get("digest"))
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(None);
        };
        for item in digest.split(',') {
            if let Some((alg, value)) = item.trim().split_once('=') {
                if alg.eq_ignore_ascii_case("sha") {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value.trim())
                        .map_err(|_| invalid(value))?;
                    return bytes.try_into().map(Some).map_err(|_| invalid(value));
                }
            }
        }
        Ok(None)
    }
}

/// The most bytes a client's number may count: Box describes sizes as 64-bit signed integers (its
/// OpenAPI: `file_size`, integer, int64), and sums of two counts (`Upload-Offset` + `Content-Length`)
/// cannot wrap a u64.
pub const MAX_BYTE_COUNT: u64 = i64::MAX as u64;

/// A client's byte count: a whole number up to `MAX_BYTE_COUNT`.
fn byte_count(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|n| *n <= MAX_BYTE_COUNT)
}

/// A header holding a byte count (`Content-Length`, `Upload-Length`, `Upload-Offset`); `code` when it
/// is not a whole number up to `MAX_BYTE_COUNT`.
pub fn header_u64(headers: &HeaderMap, name: &str, code: &'static str) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(byte_count).map(Some).ok_or_else(|| {
            ApiError::bad_request(code, format!("{name} is not a whole number of bytes below 2^63"))
        }),
    }
}

/// `Content-Length`, if the request has one.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    header_u64(headers, "Content-Length", "invalid_request")
}

/// The boundary of a `multipart/form-data` body (400 `invalid_multipart` for any other body).
pub fn boundary(headers: &HeaderMap) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_multipart",
            "Content-Type must be multipart/form-data with a boundary",
        )
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(invalid)?;
    let mime: mime::Mime = content_type.parse().map_err(|_| invalid())?;
    if mime.essence_str() != "multipart/form-data" {
        return Err(invalid());
    }
    mime.get_param(mime::BOUNDARY)
        .map(|b| b.as_str().to_owned())
        .ok_or_else(invalid)
}

/// Box's name rules (box-api.md), checked before Box is asked so the client hears of them at once.
pub fn validate_name(name: &str) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::bad_request("invalid_name", format!("the name {name:?} {why}"));
    if name.is_empty() {
        return Err(invalid("is empty"));
    }
    if name.chars().count() > 255 {
        return Err(invalid("is longer than 255 characters"));
    }
    if name.contains(['/', '\\']) {
        return Err(invalid("contains / or \\"));
    }
    if name != name.trim() {
        return Err(invalid("begins or ends with a space"));
    }
    if name == "." || name == ".." {
        return Err(invalid("is . or .."));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("contains a non-printable character"));
    }
    Ok(name.to_owned())
}

/// Where an upload by path goes: its root (the caller's, `Caller::path_root`), the folders below it,
/// and whether the missing ones are made.
#[derive(Debug, Clone)]
pub struct PathUpload {
    pub root: String,
    pub folder: FolderPath,
    pub create_folders: bool,
}

/// A raw `PUT /v1/paths/...`'s tail: its folder path and the file's name (the last segment, held to
/// the same rules as the folders').
pub fn file_path(tail: &str) -> Result<(FolderPath, String), ApiError> {
    if tail.is_empty() {
        return Err(invalid_path(
            "the path names no file: PUT /v1/paths/{folders}/{file name}".into(),
        ));
    }
    let mut segments = segments(tail, PathText::Url, MAX_PATH_LEVELS + 1)?;
    let name = segments.pop().unwrap_or_default();
    Ok((FolderPath::new(segments), name))
}

/// The most folders a path may go down (a 51st level is 400 `invalid_path`): deeper than any tree a
/// person files by hand, and it bounds the Box calls one upload may make to resolve its path.
pub const MAX_PATH_LEVELS: usize = 50;
/// The longest segment, in UTF-8 bytes (Box's own limit is 255 characters: a name of 255 bytes is
/// within it whatever its characters).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// How a path arrives: in a URL (each segment percent-encoded, `%2F` being a `/` inside a segment),
/// or as text (tus `Upload-Metadata`'s `path`, already base64-decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathText {
    Url,
    Plain,
}

/// A folder path checked once at the edge: segments split on `/` *before* percent-decoding (so a
/// `%2F` stays inside its segment, and is refused there), each decoded as UTF-8 and held to Box's
/// name rules. An empty text is the root itself. Anything else that could name something other than
/// a folder below the root (an empty segment, `.`, `..`, `/` or `\` inside a segment, a control
/// character, a leading or trailing space, more than `MAX_SEGMENT_BYTES`, more than
/// `MAX_PATH_LEVELS` levels) is 400 `invalid_path`, before any Box call.
pub fn folder_path(text: &str, form: PathText) -> Result<FolderPath, ApiError> {
    if text.is_empty() {
        return Ok(FolderPath::new(Vec::new()));
    }
    segments(text, form, MAX_PATH_LEVELS).map(FolderPath::new)
}

/// At most `max` segments, each checked (`path_segment`).
fn segments(text: &str, form: PathText, max: usize) -> Result<Vec<String>, ApiError> {
    let raw: Vec<&str> = text.split('/').collect();
    if raw.len() > max {
        return Err(invalid_path(format!(
            "the path goes {} folders deep; at most {MAX_PATH_LEVELS}",
            raw.len() - (max - MAX_PATH_LEVELS)
        )));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, s)| path_segment(s, form).map_err(|why| invalid_path(format!("segment {} {why}", i + 1))))
        .collect()
}

/// One segment, decoded and checked; the error says why, after "segment N".
fn path_segment(raw: &str, form: PathText) -> Result<String, String> {
    let segment = match form {
        PathText::Plain => raw.to_owned(),
        PathText::Url => {
            // `%` not followed by two hex digits is not an escape a client meant: refused rather than
            // read as a literal `%` (which would make `a%2` and `a%252` the same folder).
            let bytes = raw.as_bytes();
            let bad_escape = bytes.iter().enumerate().any(|(i, &b)| {
                b == b'%'
                    && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                        && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            });
            if bad_escape {
                return Err("has a % that is not a percent-encoded byte".into());
            }
            percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| "is not UTF-8 once percent-decoded".to_owned())?
                .into_owned()
        }
    };
    let shown = format!("{segment:?}");
    let why = if segment.is_empty() {
        "is empty (two slashes in a row, or one at an end)".to_owned()
    } else if segment == "." || segment == ".." {
        format!("is {shown}: a path only goes down from its root")
    } else if segment.contains(['/', '\\']) {
        format!("{shown} holds a / or \\ (%2F or %5C)")
    } else if segment.chars().any(char::is_control) {
        format!("{shown} holds a control character")
    } else if segment.trim() != segment {
        format!("{shown} begins or ends with a space")
    } else if segment.len() > MAX_SEGMENT_BYTES {
        format!("is {} bytes long; at most {MAX_SEGMENT_BYTES}", segment.len())
    } else {
        return Ok(segment);
    };
    Err(why)
}

fn invalid_path(message: String) -> ApiError {
    ApiError::bad_request("invalid_path", format!("{message}; nothing was stored"))
}

/// The path after `/v1/paths/` exactly as the client sent it (still percent-encoded): actix routes on
/// a path it has partly decoded (`%2E` becomes `.`, `%2F` stays), so the segments are taken from the
/// request's raw URI instead, counting the same number of segments off its front (decoding never
/// adds or removes a `/`, so the raw and the routed paths have the same segments).
pub fn raw_path_tail(req: &HttpRequest) -> &str {
    // "", "v1", "paths", then the tail.
    const PREFIX_SEGMENTS: usize = 3;
    let raw = req.uri().path();
    raw.splitn(PREFIX_SEGMENTS + 1, '/')
        .nth(PREFIX_SEGMENTS)
        .unwrap_or_default()
}

/// Box ids are decimal numbers.
pub fn validate_id(id: &str, what: &'static str) -> Result<String, ApiError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} id {id:?} is not a Box id"),
        ));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(path: &FolderPath) -> Vec<&str> {
        path.segments().iter().map(String::as_str).collect()
    }

    #[test]
    fn paths_are_decoded_per_segment() {
        let p = folder_path("Finance/Invoices%20Q4/2026-12", PathText::Url).unwrap();
        assert_eq!(names_of(&p), ["Finance", "Invoices Q4", "2026-12"]);
        let p = folder_path("%E5%A0%B1%E5%91%8A/a+b", PathText::Url).unwrap();
        assert_eq!(names_of(&p), ["報告", "a+b"], "UTF-8 decoded, + is a plus");
        assert_eq!(folder_path("%2541", PathText::Url).unwrap().segments(), ["%41"]);
        assert!(folder_path("", PathText::Url).unwrap().is_empty(), "the root");
        let plain = folder_path("Finance/Q4 %2F", PathText::Plain).unwrap();
        assert_eq!(
            names_of(&plain),
            ["Finance", "Q4 %2F"],
            "tus text is not percent-decoded"
        );
        let deep = vec!["d"; MAX_PATH_LEVELS].join("/");
        assert_eq!(folder_path(&deep, PathText::Url).unwrap().segments().len(), 50);
    }

    #[test]
    fn nothing_leaves_the_root_or_hides_a_slash() {
        let too_deep = vec!["d"; MAX_PATH_LEVELS + 1].join("/");
        let long = "x".repeat(MAX_SEGMENT_BYTES + 1);
        let long_utf8 = "é".repeat(128); // 256 bytes, 128 characters
        for bad in [
            "..",
            "a/../b",
            "%2E%2E",
            "%2e%2e/x",
            ".",
            "a/./b",
            "a%2Fb",
            "a%2fb",
            "a%5Cb",
            "a/",
            "/a",
            "a//b",
            "a/%20b",
            "a/b%20",
            "a%00b",
            "a%0Ab",
            "a%7Fb",
            "%FF",
            "%C3",
            "a%2",
            "a%zz",
            long.as_str(),
            long_utf8.as_str(),
            too_deep.as_str(),
        ] {
            let err = folder_path(bad, PathText::Url).unwrap_err();
            assert_eq!((err.status.as_u16(), err.code), (400, "invalid_path"), "{bad:?}");
        }
        for bad in ["..", "a/b\\c", "a\u{1}", " a", "a//b"] {
            assert_eq!(
                folder_path(bad, PathText::Plain).unwrap_err().code,
                "invalid_path",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_file_path_is_folders_then_a_name() {
        let (folder, name) = file_path("Finance/Q4/inv%20001.pdf").unwrap();
        assert_eq!(
            (names_of(&folder), name.as_str()),
            (vec!["Finance", "Q4"], "inv 001.pdf")
        );
        let (folder, name) = file_path("top.pdf").unwrap();
        assert_eq!((folder.is_empty(), name.as_str()), (true, "top.pdf"));
        let deepest = format!("{}x", "d/".repeat(MAX_PATH_LEVELS));
        assert_eq!(file_path(&deepest).unwrap().0.segments().len(), MAX_PATH_LEVELS);
        let too_deep = format!("d/{deepest}");
        for bad in ["", "/x", "a/", "a/..", "a//x", "%2E%2E/x", too_deep.as_str()] {
            assert_eq!(file_path(bad).unwrap_err().code, "invalid_path", "{bad:?}");
        }
    }

    #[test]
    fn the_tail_comes_from_the_raw_uri() {
        let req = actix_web::test::TestRequest::with_uri("/v1/paths/a%2Fb/%2E%2E/c?x=1").to_http_request();
        assert_eq!(raw_path_tail(&req), "a%2Fb/%2E%2E/c");
        let req = actix_web::test::TestRequest::with_uri("/v1/%70aths/").to_http_request();
        assert_eq!(raw_path_tail(&req), "");
    }

    #[test]
    fn fields_and_create_folders() {
        let p = UploadParams {
            shared_link: Some("company".into()),
            create_folders: Some("false".into()),
            ..Default::default()
        };
        assert!(p.has_fields());
        assert!(!p.create_folders().unwrap());
        assert!(UploadParams::default().create_folders().unwrap());
        let bad = UploadParams {
            shared_link: Some("everyone".into()),
            create_folders: Some("no".into()),
            ..Default::default()
        };
        assert_eq!(bad.fields().unwrap_err().code, "invalid_field");
        assert_eq!(bad.create_folders().unwrap_err().code, "invalid_request");
        let json = UploadParams {
            metadata: Some("{not json".into()),
            ..Default::default()
        };
        let err = json.fields().unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (422, "invalid_metadata"));
        assert!(!UploadParams::default().has_fields());
    }

    #[test]
    fn names_follow_box_rules() {
        assert!(validate_name("報告書 2026.pdf").is_ok());
        for bad in [
            "",
            " a",
            "a ",
            "a/b",
            "a\\b",
            ".",
            "..",
            "a\u{7}b",
            &"x".repeat(256),
        ] {
            assert_eq!(validate_name(bad).unwrap_err().code, "invalid_name", "{bad:?}");
        }
    }

    #[test]
    fn digests_from_field_or_header() {
        let mut headers = HeaderMap::new();
        let p = UploadParams {
            sha1: Some("da39a3ee5e6b4b0d3255bfef95601890afd80709".into()),
            ..Default::default()
        };
        assert_eq!(p.expected_sha1(Some(&headers)).unwrap().unwrap()[0], 0xda);
        headers.insert(
            "digest".parse().unwrap(),
            "SHA=2jmj7l5rSw0yVb/vlWAYkK/YBwk=".parse().unwrap(),
        );
        assert_eq!(
            UploadParams::default()
                .expected_sha1(Some(&headers))
                .unwrap()
                .unwrap()[0],
            0xda
        );
        let bad = UploadParams {
            sha1: Some("abc".into()),
            ..Default::default()
        };
        assert_eq!(
            bad.expected_sha1(Some(&headers)).unwrap_err().code,
            "invalid_sha1"
        );
    }

    #[test]
    fn sizes_and_policies() {
        let headers = HeaderMap::new();
        let p = UploadParams {
            size: Some("12".into()),
            on_conflict: Some("rename".into()),
            ..Default::default()
        };
        assert_eq!(p.declared_size(&headers).unwrap(), Some(12));
        assert_eq!(p.on_conflict().unwrap(), OnConflict::Rename);
        let bad = UploadParams {
            size: Some("-1".into()),
            on_conflict: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(bad.declared_size(&headers).unwrap_err().code, "invalid_size");
        assert_eq!(bad.on_conflict().unwrap_err().code, "invalid_on_conflict");
        // Past what Box can describe (int64): refused, never wrapped in a sum later.
        for (size, ok) in [
            (MAX_BYTE_COUNT, true),
            (MAX_BYTE_COUNT + 1, false),
            (u64::MAX, false),
        ] {
            let p = UploadParams {
                size: Some(size.to_string()),
                ..Default::default()
            };
            assert_eq!(p.declared_size(&headers).is_ok(), ok, "{size}");
            let mut h = HeaderMap::new();
            h.insert("upload-offset".parse().unwrap(), size.into());
            assert_eq!(
                header_u64(&h, "Upload-Offset", "invalid_offset").is_ok(),
                ok,
                "{size}"
            );
        }
    }
}
