//! The upload's parameters, from the query string and from text fields before the file, and the
//! headers that shape a body (`Content-Length`, a multipart boundary), parsed once into typed values
//! with a clear error for each.
use actix_web::http::header::{self, HeaderMap};
use base64::Engine;
use serde::Deserialize;

use crate::error::ApiError;
use crate::pipeline::OnConflict;

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
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad_request(
                    "invalid_size",
                    format!("size {v:?} is not a whole number of bytes"),
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

/// A header holding a byte count (`Content-Length`, `Upload-Length`, `Upload-Offset`); `code` when it
/// is not a whole number.
pub fn header_u64(headers: &HeaderMap, name: &str, code: &'static str) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(code, format!("{name} is not a whole number of bytes"))),
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
    }
}
