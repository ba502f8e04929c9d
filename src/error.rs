//! The gateway's one error type at the HTTP edge: a stable snake_case code, its HTTP status, and one
//! JSON rendering used everywhere (handlers, extractors, multipart, unknown routes).
//!
//! `{"error": {"code", "message", "box": {"status", "code", "request_id"}?, "existing_file_id"?,
//! "field"?}}`.
//! 5xx messages stay generic; the full cause chain goes to the log.
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;

use crate::box_api::{BoxError, BoxErrorKind};
use crate::pipeline::UploadError;

/// The `Retry-After` of the gateway's own 503 `busy` and 507 `insufficient_storage`: about the time
/// a part takes to go up, after which budget or spool may be free again.
pub const BUSY_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub box_info: Option<Box<BoxInfo>>,
    pub existing_file_id: Option<Box<str>>,
    /// The field a 400 `invalid_field` or 422 `invalid_metadata` is about, as the client named it
    /// (`description`, `enterprise.invoiceData.amount`).
    pub field: Option<Box<str>>,
    /// Seconds a client should wait before trying again (429/503 passed on from Box).
    pub retry_after_secs: Option<u64>,
    /// The challenge of a 401 (`WWW-Authenticate`). (This, `field` and `existing_file_id` are boxed
    /// `str`s, not `String`s: `ApiError` stays below clippy's bound for an `Err`, 128 bytes.)
    pub www_authenticate: Option<Box<str>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BoxInfo {
    pub status: u16,
    pub code: Option<String>,
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            box_info: None,
            existing_file_id: None,
            field: None,
            retry_after_secs: None,
            www_authenticate: None,
        }
    }

    pub fn with_www_authenticate(self, challenge: String) -> Self {
        Self {
            www_authenticate: Some(challenge.into()),
            ..self
        }
    }

    /// 503 `draining`: the gateway is shutting down; another replica (or this one, restarted) takes
    /// the upload. `Retry-After` is a hint of a few seconds, enough for a rollout to move on.
    pub fn draining(message: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(5),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "draining", message)
        }
    }

    /// 503 `box_rate_limited`: no Box capacity for this principal within `box_rate_wait_secs`;
    /// nothing was read or sent. `Retry-After`: when capacity may be there.
    pub fn box_rate_limited(waited: std::time::Duration, retry_after: std::time::Duration) -> Self {
        Self {
            retry_after_secs: Some((retry_after.as_millis().div_ceil(1000) as u64).max(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "box_rate_limited",
                format!(
                    "Box's rate limit for this principal left no room within box_rate_wait_secs ({}s); nothing was sent: try again after Retry-After",
                    waited.as_secs()
                ),
            )
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The metrics label of the outcome this error stands for.
    pub fn outcome(&self) -> &'static str {
        match (self.status.as_u16(), self.code) {
            // The gateway's own limits (budget, spool), not Box: told apart for the error-ratio alert.
            (_, "busy" | "budget_too_small" | "insufficient_storage") => "gateway_busy",
            // Limits doing their work (Box's, a key's quota): told apart from failures too.
            (_, "box_rate_limited" | "rate_limited") => "rate_limited",
            // The malware gate: a refused file is the gate working; its scanner's outage is alerted
            // on by itself (BoxUploadGatewayScannerUnavailable), not as Box's errors.
            (_, "malware_detected" | "scan_incomplete") => "malware",
            (_, "scanner_unavailable") => "scanner_unavailable",
            _ => self.outcome_by_status(),
        }
    }

    fn outcome_by_status(&self) -> &'static str {
        match self.status.as_u16() {
            409 => "conflict",
            400..=499 => "client_error",
            500 => "internal_error",
            _ => "box_error",
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status.as_u16(), self.message)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "box", skip_serializing_if = "Option::is_none")]
    box_info: Option<&'a BoxInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    existing_file_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        if let Some(challenge) = self.www_authenticate.as_deref() {
            response.insert_header(("WWW-Authenticate", challenge));
        }
        response.json(Envelope {
            error: Body {
                code: self.code,
                message: &self.message,
                box_info: self.box_info.as_deref(),
                existing_file_id: self.existing_file_id.as_deref(),
                field: self.field.as_deref(),
            },
        })
    }
}

impl ApiError {
    /// A failed upload's error for the client (the short, stable form), its whole cause chain logged:
    /// at warn for the gateway's own bounds doing their work (a full budget or spool, a drain), at
    /// error for a 5xx, at info for the client's own mistakes.
    pub fn logged(err: UploadError) -> Self {
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        let api = ApiError::from(err);
        if matches!(api.code, "busy" | "insufficient_storage" | "draining") {
            tracing::warn!(code = api.code, error = %chain, "upload refused for now");
        } else if api.status.is_server_error() {
            tracing::error!(code = api.code, error = %chain, "upload failed");
        } else {
            tracing::info!(code = api.code, error = %chain, "upload refused");
        }
        api
    }
}

impl From<UploadError> for ApiError {
    fn from(err: UploadError) -> Self {
        use StatusCode as S;
        match err {
            UploadError::Box(err) => from_box(err),
            UploadError::Conflict { existing_id, kind } => Self {
                existing_file_id: Some(existing_id.as_str().into()),
                ..Self::new(S::CONFLICT, "name_conflict", format!("a {kind} with this name already exists (id {existing_id}); pass on_conflict=version or on_conflict=rename"))
            },
            UploadError::NoFreeName(name) => {
                Self::new(S::CONFLICT, "name_conflict", format!("no free name found for {name:?}"))
            }
            UploadError::SizeMismatch { declared, received, derived } => {
                let hint = if derived {
                    " (the size was derived from Content-Length, which holds only when the file is the last part of the body: send a `size` field or query parameter)"
                } else {
                    ""
                };
                Self::bad_request(
                    "size_mismatch",
                    format!("the file has {received} bytes but {declared} were expected{hint}; nothing was stored"),
                )
            }
            UploadError::DigestMismatch { expected, actual } => Self::bad_request(
                "digest_mismatch",
                format!("the file's SHA-1 is {actual} but the request said {expected}; nothing was stored"),
            ),
            UploadError::Body(message) => {
                Self::bad_request("body_read_failed", format!("reading the request body failed: {message}"))
            }
            UploadError::AccessExpired { at_unix_secs } => {
                let at = chrono::DateTime::from_timestamp(at_unix_secs as i64, 0).unwrap_or_default();
                Self::new(
                    S::GONE,
                    "link_expired",
                    format!(
                        "this upload link expired at {} while the upload was being sent; nothing more of it is accepted: ask for a new link",
                        at.to_rfc3339()
                    ),
                )
            }
            UploadError::ClientTimeout => Self::new(
                S::REQUEST_TIMEOUT,
                "client_timeout",
                "the client sent nothing for longer than client_idle_timeout_secs; nothing was stored",
            ),
            UploadError::ShuttingDown => Self::draining(
                "the gateway shut down before the upload finished; its Box session was aborted and nothing was stored: send it again",
            ),
            UploadError::TooLarge { limit, what } => Self::new(
                S::PAYLOAD_TOO_LARGE,
                "file_too_large",
                format!("the file is larger than the gateway accepts ({what} = {limit} bytes)"),
            ),
            UploadError::CommitTimedOut(budget) => Self::new(
                S::GATEWAY_TIMEOUT,
                "box_timeout",
                format!("Box did not finish processing the upload within {}s", budget.as_secs()),
            ),
            UploadError::Integrity { file_id, what, removed, .. } => {
                let undone = match removed {
                    true => format!("the {what} it created ({file_id}) was deleted, so nothing of this upload is stored"),
                    false => format!("deleting the {what} it created ({file_id}) failed: remove it in Box"),
                };
                Self::new(
                    S::BAD_GATEWAY,
                    "box_integrity_error",
                    format!("Box stored a file that differs from the one sent; {undone}"),
                )
            }
            UploadError::ClientTooSlow { received, window, min_bytes_per_sec } => Self::new(
                S::REQUEST_TIMEOUT,
                "client_too_slow",
                format!(
                    "the body came at {} bytes/s over {}s of waiting for it, below client_min_bytes_per_sec ({min_bytes_per_sec}); nothing was stored",
                    received / window.as_secs().max(1),
                    window.as_secs()
                ),
            ),
            // The wait is what was over, not the gateway: a retry after a few seconds may get room.
            UploadError::Busy(waited) => Self {
                retry_after_secs: Some(BUSY_RETRY_AFTER_SECS),
                ..Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "busy",
                    format!(
                        "the gateway's memory budget had no room within budget_wait_secs ({}s); nothing was stored: try again",
                        waited.as_secs()
                    ),
                )
            },
            // A setting, not a passing state: no Retry-After (the same upload would fail the same way).
            UploadError::OverBudget(over) => Self::new(
                S::SERVICE_UNAVAILABLE,
                "budget_too_small",
                format!(
                    "Box chose parts of {} bytes, more than one caller's share of the gateway's memory_budget_bytes ({} of {}, memory_budget_share_per_key); nothing was stored",
                    over.wanted, over.share, over.total
                ),
            ),
            // Spool space frees as the spooled uploads go on to Box: worth a retry later.
            UploadError::SpoolFull { total } => Self {
                retry_after_secs: Some(BUSY_RETRY_AFTER_SECS),
                ..Self::new(
                    S::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    format!("the gateway's spool for bodies of unknown size is full (spool_max_total_bytes = {total}); send the size (`size`, Upload-Length or Content-Length) or try again later"),
                )
            },
            UploadError::Scan(verdict) => from_verdict(verdict),
            UploadError::Rewound { offset } => Self::new(
                S::CONFLICT,
                "upload_rewound",
                format!("Box lacks the bytes from {offset} on: the upload's offset is now {offset}; send the bytes from there (HEAD says so too)"),
            ),
            UploadError::Internal(_) => {
                Self::new(S::INTERNAL_SERVER_ERROR, "internal_error", "the gateway failed; see its logs")
            }
            // Found before any byte was read: nothing was sent to Box.
            UploadError::Fields(err) => {
                let (status, code) = match err.is_metadata() {
                    true => (S::UNPROCESSABLE_ENTITY, "invalid_metadata"),
                    false => (S::BAD_REQUEST, "invalid_field"),
                };
                Self {
                    field: Some(err.field().into()),
                    ..Self::new(status, code, format!("{err}; nothing was stored"))
                }
            }
            UploadError::Path(err @ crate::pipeline::PathError::Conflict { .. }) => {
                Self::new(S::CONFLICT, "path_conflict", format!("{err}; nothing was stored"))
            }
            UploadError::Path(err @ crate::pipeline::PathError::NotFound { .. }) => Self::new(
                S::NOT_FOUND,
                "folder_not_found",
                format!("{err} (create_folders=false); nothing was stored"),
            ),
            UploadError::FieldsNotApplied { file_id, what, removed, .. } => {
                let undone = match removed {
                    true => format!("the {what} it created ({file_id}) was deleted, so nothing of this upload is stored"),
                    false => format!("deleting the {what} it created ({file_id}) failed: remove it in Box"),
                };
                Self::new(
                    S::BAD_GATEWAY,
                    "box_fields_failed",
                    format!("Box did not take the file's description, tags, shared link or metadata; {undone}"),
                )
            }
        }
    }
}

/// `Retry-After` of 503 `scanner_unavailable`: about what a restarted clamd sidecar takes to load
/// its database and answer again, and several pings of the readiness check.
pub const SCANNER_RETRY_AFTER_SECS: u64 = 30;

/// The malware gate's refusals (`pipeline/scanned.rs`): nothing of the file is in Box.
fn from_verdict(verdict: crate::scan::Verdict) -> ApiError {
    use crate::scan::Verdict;
    use StatusCode as S;
    match verdict {
        // With AlertExceedsMax, clamd names a limit of its own it met (an archive nested too deep,
        // more unpacked than MaxScanSize, a scan past MaxScanTime...) as a finding: the file was not
        // looked at whole, and what was not seen may hide malware. Refused, but not called malware.
        verdict @ Verdict::Infected { .. } if verdict.is_limits_exceeded() => {
            let Verdict::Infected { signature } = verdict else { unreachable!() };
            ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                "scan_incomplete",
                format!("the malware scanner could not look at the whole file ({signature}: a limit of ClamAV's, e.g. an archive nested too deep or too large unpacked); it is refused, and nothing was stored"),
            )
        }
        Verdict::Infected { signature } => ApiError::new(
            S::UNPROCESSABLE_ENTITY,
            "malware_detected",
            format!("the malware scanner found {signature} in the file; nothing was stored"),
        ),
        Verdict::TooLarge { size, limit } => ApiError::new(
            S::PAYLOAD_TOO_LARGE,
            "too_large_to_scan",
            format!("the file ({size} bytes) is larger than the malware scanner looks at (scan_max_bytes = {limit}); nothing was stored"),
        ),
        // Fail closed: no verdict is no upload. The cause (clamd down, too slow, a refusal of its
        // own) goes to the log, not to the client.
        Verdict::Error(_) => ApiError {
            retry_after_secs: Some(SCANNER_RETRY_AFTER_SECS),
            ..ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "scanner_unavailable",
                "the malware scanner gave no verdict on the file, so it was not stored: try again later",
            )
        },
        Verdict::Clean => ApiError::new(
            S::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the gateway failed; see its logs",
        ),
    }
}

/// `Retry-After` of a 503 from Box's trouble when Box named no wait: long enough not to hammer a Box
/// that is down, short enough that a blip costs little.
pub const BOX_UNAVAILABLE_RETRY_AFTER_SECS: u64 = 10;

/// Box's answers, turned into what the gateway's client can act on (documented in openapi.yaml).
fn from_box(err: BoxError) -> ApiError {
    use StatusCode as S;
    let box_info = err.status().map(|status| {
        Box::new(BoxInfo {
            status,
            code: err.code().map(str::to_owned),
            request_id: err.request_id().map(str::to_owned),
        })
    });
    // Rounded up: a client back a fraction of a second early would meet the same pause.
    let retry_after_secs = err
        .retry_after()
        .map(|d| (d.as_millis().div_ceil(1000) as u64).max(1));
    let code = err.code().unwrap_or_default();
    let (status, ours, message) = match (&err.kind, err.status().unwrap_or(0), code) {
        // Box refused the gateway's own credentials at the token endpoint, or they could not be used.
        (BoxErrorKind::Credentials(_), ..) => (
            S::BAD_GATEWAY,
            "box_auth_failed",
            "the gateway's Box credentials cannot be used; see its logs".into(),
        ),
        _ if err.endpoint == "token" && err.is_auth_failure() => (
            S::BAD_GATEWAY,
            "box_auth_failed",
            format!("Box refused the gateway's credentials ({code})"),
        ),
        (BoxErrorKind::Timeout(_), ..) => (
            S::GATEWAY_TIMEOUT,
            "box_timeout",
            "Box did not answer in time".into(),
        ),
        (BoxErrorKind::Deadline(limit), ..) => (
            S::GATEWAY_TIMEOUT,
            "box_timeout",
            format!(
                "Box did not answer within the call's deadline of {}s (box_call_deadline_secs)",
                limit.as_secs()
            ),
        ),
        // The principal is paused (Box answered 429) past the call's deadline: nothing was sent.
        (BoxErrorKind::Paced { .. }, ..) => (
            S::SERVICE_UNAVAILABLE,
            "box_rate_limited",
            "Box's rate limit for this principal leaves no room for the upload's calls within box_call_deadline_secs; try again after Retry-After".into(),
        ),
        (BoxErrorKind::Connection(_) | BoxErrorKind::Unreachable(_), ..) => (
            S::SERVICE_UNAVAILABLE,
            "box_unavailable",
            "Box could not be reached".into(),
        ),
        (BoxErrorKind::Protocol(_), ..) => (
            S::BAD_GATEWAY,
            "box_protocol_error",
            "Box answered something the gateway does not understand".into(),
        ),
        (_, 401, _) => (
            S::BAD_GATEWAY,
            "box_auth_failed",
            "Box refused the gateway's credentials".into(),
        ),
        (_, 403, "storage_limit_exceeded") | (_, 507, _) => (
            S::INSUFFICIENT_STORAGE,
            "box_storage_full",
            "the Box account is out of space".into(),
        ),
        (_, 403, "file_size_limit_exceeded") | (_, 413, _) => (
            S::PAYLOAD_TOO_LARGE,
            "file_too_large",
            "the file is larger than the Box account allows".into(),
        ),
        (_, 403, _) => (
            S::FORBIDDEN,
            "box_access_denied",
            "the gateway's Box user may not write there".into(),
        ),
        (_, 404, _) | (_, 400, "invalid_folder_id") => (
            S::NOT_FOUND,
            "not_found",
            "the folder or file does not exist in Box, or the gateway's Box user cannot see it".into(),
        ),
        // Box computed another digest than the gateway sent: bytes changed on the way.
        (_, 400, "bad_digest" | "digest_mismatch") => (
            S::BAD_GATEWAY,
            "box_integrity_error",
            "Box received bytes that differ from the ones sent; nothing was stored".into(),
        ),
        (_, 400, "item_name_invalid" | "item_name_too_long") => (
            S::BAD_REQUEST,
            "invalid_name",
            format!("Box refused the name ({code})"),
        ),
        // Transient (another upload of the name is committing) and retried; still there after that.
        (_, 409, "name_temporarily_reserved") => (
            S::SERVICE_UNAVAILABLE,
            "box_unavailable",
            "Box kept the name reserved for another upload; try again later".into(),
        ),
        (_, 409, "item_name_in_use") => (
            S::CONFLICT,
            "name_conflict",
            "a file with this name already exists".into(),
        ),
        (_, 409, _) => (
            S::CONFLICT,
            "conflict",
            format!("Box reported a conflict ({code})"),
        ),
        (_, 412, _) => (
            S::PRECONDITION_FAILED,
            "precondition_failed",
            "the file changed in Box meanwhile".into(),
        ),
        (_, 429, _) => (
            S::SERVICE_UNAVAILABLE,
            "box_rate_limited",
            "Box kept answering that the rate limit is reached".into(),
        ),
        (_, 500..=599, _) => (
            S::SERVICE_UNAVAILABLE,
            "box_unavailable",
            "Box kept failing; try again later".into(),
        ),
        _ => (
            S::BAD_GATEWAY,
            "box_rejected_request",
            format!("Box refused the upload ({code})"),
        ),
    };
    let existing_file_id = err.body().and_then(|b| b.conflict()).map(|c| c.id.into());
    // A 503 always says when to come back: Box's own `Retry-After` when it sent one, else a hint.
    let retry_after_secs = match status {
        S::SERVICE_UNAVAILABLE => retry_after_secs.or(Some(BOX_UNAVAILABLE_RETRY_AFTER_SECS)),
        _ => retry_after_secs,
    };
    ApiError {
        status,
        code: ours,
        message,
        box_info,
        existing_file_id,
        field: None,
        retry_after_secs,
        www_authenticate: None,
    }
}

/// The state store (tus uploads, idempotency answers) failed: the client may try again.
impl From<crate::state::StoreError> for ApiError {
    fn from(err: crate::state::StoreError) -> Self {
        tracing::error!(error = %err, "state store failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_store_unavailable",
            "the gateway's state store cannot be reached; try again",
        )
    }
}

/// Errors of actix's own extractors (query, path, JSON) as the gateway's JSON.
pub fn extractor_error(err: impl fmt::Display) -> actix_web::Error {
    ApiError::bad_request("invalid_request", err.to_string()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::box_api::BoxErrorBody;

    fn box_err(status: u16, code: &str) -> ApiError {
        let body = BoxErrorBody {
            code: Some(code.into()),
            request_id: Some("r1".into()),
            ..Default::default()
        };
        from_box(BoxError::new(
            "create_session",
            BoxErrorKind::Status {
                status,
                body: Box::new(body),
                retry_after: None,
            },
        ))
    }

    /// The malware gate's verdicts: a limit clamd met is refused, but not called malware; no verdict
    /// is 503 with `Retry-After` (fail closed), whatever its cause.
    #[test]
    fn scan_verdicts_map_to_documented_statuses() {
        use crate::scan::{ErrorKind, ScanError, Verdict};
        let found = |signature: &str| Verdict::Infected {
            signature: signature.into(),
        };
        let cases = [
            (found("Win.Test.EICAR_HDB-1"), 422, "malware_detected"),
            (
                found("Heuristics.Limits.Exceeded.MaxScanSize"),
                422,
                "scan_incomplete",
            ),
            (Verdict::TooLarge { size: 3, limit: 2 }, 413, "too_large_to_scan"),
            (
                Verdict::Error(ScanError::new(
                    ErrorKind::SizeLimit,
                    "INSTREAM size limit exceeded",
                )),
                503,
                "scanner_unavailable",
            ),
            (
                Verdict::Error(ScanError::new(ErrorKind::Timeout, "no verdict")),
                503,
                "scanner_unavailable",
            ),
        ];
        for (verdict, want_status, want_code) in cases {
            let e = ApiError::from(UploadError::Scan(verdict));
            assert_eq!((e.status.as_u16(), e.code), (want_status, want_code));
            assert_eq!(
                e.retry_after_secs.is_some(),
                want_code == "scanner_unavailable",
                "{want_code}"
            );
        }
        let named = ApiError::from(UploadError::Scan(found("Win.Test.EICAR_HDB-1")));
        assert!(
            named.message.contains("Win.Test.EICAR_HDB-1"),
            "{}",
            named.message
        );
    }

    #[test]
    fn box_codes_map_to_documented_statuses() {
        let cases = [
            (401, "unauthorized", 502, "box_auth_failed"),
            (403, "storage_limit_exceeded", 507, "box_storage_full"),
            (404, "invalid_parameter", 404, "not_found"),
            (400, "invalid_folder_id", 404, "not_found"),
            (400, "item_name_invalid", 400, "invalid_name"),
            (400, "missing_destination", 502, "box_rejected_request"),
            (409, "item_name_in_use", 409, "name_conflict"),
            (503, "unavailable", 503, "box_unavailable"),
            (409, "name_temporarily_reserved", 503, "box_unavailable"),
        ];
        for (status, code, want_status, want_code) in cases {
            let e = box_err(status, code);
            assert_eq!(
                (e.status.as_u16(), e.code),
                (want_status, want_code),
                "{status} {code}"
            );
            assert_eq!(e.box_info.unwrap().request_id.as_deref(), Some("r1"));
        }
    }

    /// The pacer's refusal of a call (a pause past its deadline) is Box's rate limit to the client:
    /// 503 `box_rate_limited`, no `box` details (Box was not asked), and a `Retry-After` rounded up
    /// so the client does not come back before the room. Box's own `Retry-After` is capped before
    /// it gets here (`BoxError::capped`).
    #[test]
    fn a_call_the_pacer_cannot_fit_is_box_rate_limited() {
        let paced = BoxError::new(
            "upload_part",
            BoxErrorKind::Paced {
                retry_after: std::time::Duration::from_millis(119_200),
            },
        );
        assert!(paced.retry_reason().is_none() && !paced.may_have_landed());
        let e = from_box(paced);
        assert_eq!((e.status.as_u16(), e.code), (503, "box_rate_limited"));
        assert_eq!(e.retry_after_secs, Some(120));
        assert!(e.box_info.is_none());
        let capped = BoxError::new(
            "upload_part",
            BoxErrorKind::Status {
                status: 429,
                body: Box::default(),
                retry_after: Some(crate::box_api::MAX_RETRY_AFTER),
            },
        )
        .capped(std::time::Duration::from_secs(120));
        assert_eq!(from_box(capped).retry_after_secs, Some(120));
    }
}
