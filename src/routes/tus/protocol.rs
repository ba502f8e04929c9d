//! The tus 1.0.0 protocol's pieces (<https://tus.io/protocols/resumable-upload>): its headers, the
//! `Upload-Metadata` and `Upload-Checksum` parsers, and the shape of its answers.
use std::collections::HashMap;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use base64::Engine;

use super::record::{Failure, Record};
use crate::error::ApiError;

pub const TUS_VERSION: &str = "1.0.0";
pub(super) const EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
pub(super) const OCTETS: &str = "application/offset+octet-stream";
/// The answer header naming the Box file once the upload landed (documented in openapi.yaml).
pub const BOX_FILE_ID: &str = "Upload-Box-File-Id";

/// The answer header saying whether the landed file was scanned for malware (`scan_header`).
pub const SCAN: &str = "Upload-Scan";

/// HEAD's error answers carry their error's code here (a HEAD answer has no body): e.g.
/// `scanner_unavailable`, `upload_completing`.
pub const ERROR_CODE: &str = "upload-error-code";

/// The header naming the cause of a failed upload's 410 (HEAD has no body to carry it).
pub const FAILURE_CODE: &str = "Upload-Failure-Code";

/// 410 `upload_failed`: the upload will never land; nothing of it is in Box.
pub(super) fn failed_answer(failure: &Failure) -> HttpResponse {
    let mut response = ApiError::new(
        StatusCode::GONE,
        "upload_failed",
        format!(
            "the upload failed for good and nothing of it is in Box ({}: {}); DELETE it and upload the file again",
            failure.code, failure.message
        ),
    )
    .error_response();
    if let Ok(code) = HeaderValue::from_str(&failure.code) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("upload-failure-code"), code);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Every tus answer carries `Tus-Resumable`; a 412 also says which versions are spoken.
pub(super) fn answer(result: Result<HttpResponse, ApiError>) -> HttpResponse {
    let mut response = result.unwrap_or_else(|e| e.error_response());
    let headers = response.headers_mut();
    headers.insert(
        header::HeaderName::from_static("tus-resumable"),
        HeaderValue::from_static(TUS_VERSION),
    );
    // A PATCH stopped by the drain answers before its body is read: the connection closes, so the
    // server's stop does not wait for a body nobody reads.
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    if response.status() == StatusCode::PRECONDITION_FAILED {
        response.headers_mut().insert(
            header::HeaderName::from_static("tus-version"),
            HeaderValue::from_static(TUS_VERSION),
        );
    }
    response
}

pub(super) fn check_version(req: &HttpRequest) -> Result<(), ApiError> {
    match req.headers().get("tus-resumable").map(HeaderValue::as_bytes) {
        Some(b"1.0.0") => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "tus_version_unsupported",
            "send Tus-Resumable: 1.0.0",
        )),
    }
}

fn http_date(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// `Upload-Metadata`: `key base64,key base64,key` (tus 1.0.0, creation). A malformed header is 400
/// `invalid_upload_metadata` (it was `invalid_metadata` before the Box `metadata` field came, whose
/// refusal is 422 `invalid_metadata`: one code, one meaning).
pub fn parse_metadata(raw: &str) -> Result<HashMap<String, String>, ApiError> {
    let invalid =
        |why: String| ApiError::bad_request("invalid_upload_metadata", format!("Upload-Metadata: {why}"));
    let mut out = HashMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| invalid(format!("the value of {key:?} is not base64")))?;
        let value =
            String::from_utf8(value).map_err(|_| invalid(format!("the value of {key:?} is not UTF-8")))?;
        if out.insert(key.to_owned(), value).is_some() {
            return Err(invalid(format!("{key:?} is given twice")));
        }
    }
    Ok(out)
}

/// `Upload-Checksum: sha1 <base64>`; other algorithms are refused (OPTIONS lists `sha1` only).
pub fn parse_checksum(headers: &header::HeaderMap) -> Result<Option<[u8; 20]>, ApiError> {
    let Some(value) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or_default();
    let (alg, digest) = value.trim().split_once(' ').unwrap_or((value, ""));
    if alg != "sha1" {
        return Err(ApiError::bad_request(
            "unsupported_checksum_algorithm",
            format!("Upload-Checksum algorithm {alg:?} is not supported; use sha1"),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .ok()
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("invalid_sha1", "Upload-Checksum is not a base64 SHA-1"))
}

pub(super) fn upload_id(req: &HttpRequest) -> String {
    req.match_info().get("id").unwrap_or_default().to_owned()
}

/// Where the upload stands: its offset, expiry, and the Box file once it landed.
pub(super) fn progress(response: &mut actix_web::HttpResponseBuilder, record: &Record) {
    response
        .insert_header(("Upload-Offset", record.resumable.offset))
        .insert_header(("Upload-Expires", http_date(record.expires_at)));
    if let Some(file_id) = &record.file_id {
        response.insert_header((BOX_FILE_ID, file_id.as_str()));
    }
    if let Some(scan) = &record.scan {
        response.insert_header((SCAN, scan_header(scan)));
    }
}

/// `Upload-Scan` of a landed upload: `clean` (clamd found it so), or `unscanned; reason=<why>`
/// (`scanning_off`, `key_exempt`, `too_large`): the tus form of the 201's `scan`.
fn scan_header(scan: &crate::scan::ScanReport) -> String {
    match (scan.scanned, &scan.verdict, &scan.reason) {
        (true, Some(verdict), _) => verdict.clone(),
        (_, _, reason) => format!("unscanned; reason={}", reason.as_deref().unwrap_or("unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_parsed_and_checked() {
        let m =
            parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,folder_id MTIz")
                .unwrap();
        assert_eq!(m["filename"], "world_domination_plan.pdf");
        assert_eq!(m["is_confidential"], "");
        assert_eq!(m["folder_id"], "123");
        assert_eq!(parse_metadata("").unwrap().len(), 0);
        for bad in ["filename !!", "a YQ==,a Yg==", "name /w=="] {
            assert_eq!(
                parse_metadata(bad).unwrap_err().code,
                "invalid_upload_metadata",
                "{bad}"
            );
        }
    }
}
