//! What can go wrong talking to Box, typed so callers can map it and the retry loop can decide.
use std::time::Duration;

use super::types::BoxErrorBody;

#[derive(Debug, thiserror::Error)]
#[error("Box {endpoint}: {kind}")]
pub struct BoxError {
    /// The Box endpoint, as named in metrics (`create_session`, `upload_part`, ...).
    pub endpoint: &'static str,
    pub kind: BoxErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum BoxErrorKind {
    #[error("HTTP {status} {code}: {message}", code = body.code.as_deref().unwrap_or("-"), message = body.message.as_deref().unwrap_or(""))]
    Status {
        status: u16,
        body: Box<BoxErrorBody>,
        retry_after: Option<Duration>,
    },
    #[error("timed out")]
    Timeout(#[source] reqwest::Error),
    #[error("connection failed")]
    Connection(#[source] reqwest::Error),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The gateway's own credentials cannot be used (a secret file unreadable, a key that does not
    /// decrypt): no request was sent. The message names the setting, never its value.
    #[error("unusable credentials: {0}")]
    Credentials(String),
}

impl BoxError {
    pub fn new(endpoint: &'static str, kind: BoxErrorKind) -> Self {
        Self { endpoint, kind }
    }

    pub(crate) fn transport(endpoint: &'static str, err: reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            BoxErrorKind::Timeout(err)
        } else if err.is_decode() {
            BoxErrorKind::Protocol(format!("undecodable body: {err}"))
        } else {
            BoxErrorKind::Connection(err)
        };
        Self::new(endpoint, kind)
    }

    pub(crate) fn protocol(endpoint: &'static str, message: impl Into<String>) -> Self {
        Self::new(endpoint, BoxErrorKind::Protocol(message.into()))
    }

    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            BoxErrorKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn body(&self) -> Option<&BoxErrorBody> {
        match &self.kind {
            BoxErrorKind::Status { body, .. } => Some(body),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        self.body().and_then(|b| b.code.as_deref())
    }

    pub fn request_id(&self) -> Option<&str> {
        self.body().and_then(|b| b.request_id.as_deref())
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            BoxErrorKind::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Why a retry may succeed, as a metrics label; `None` when retrying cannot help. Retried: 429,
    /// 408, 409 `name_temporarily_reserved` (another upload of the name is committing), 500, 502, 503,
    /// 504, timeouts and dropped connections. Never: 501 and other 5xx (not implemented, out of space,
    /// ...), any other 4xx, and answers that cannot be understood: the same request would fail again.
    pub fn retry_reason(&self) -> Option<&'static str> {
        match &self.kind {
            BoxErrorKind::Status { status: 429, .. } => Some("rate_limited"),
            BoxErrorKind::Status { status: 408, .. } => Some("timeout"),
            BoxErrorKind::Status { status: 409, .. } if self.code() == Some(NAME_RESERVED) => {
                Some("name_reserved")
            }
            BoxErrorKind::Status {
                status: 500 | 502 | 503 | 504,
                ..
            } => Some("server_error"),
            BoxErrorKind::Status { .. } | BoxErrorKind::Protocol(_) | BoxErrorKind::Credentials(_) => None,
            BoxErrorKind::Timeout(_) => Some("timeout"),
            BoxErrorKind::Connection(_) => Some("connection"),
        }
    }

    /// Box refused credentials: the token endpoint said no (`invalid_client`, `invalid_grant`, ...), a
    /// call was answered 401 after a refresh, or the credentials could not even be used.
    pub fn is_auth_failure(&self) -> bool {
        match &self.kind {
            BoxErrorKind::Credentials(_) => true,
            BoxErrorKind::Status { status: 401, .. } => true,
            BoxErrorKind::Status { status, .. } => {
                self.endpoint == "token" && self.is_refusal() && *status < 500
            }
            _ => false,
        }
    }

    /// The token endpoint refused the grant itself (a 4xx other than 408/429): asking again with the
    /// same credentials cannot succeed.
    pub fn is_refusal(&self) -> bool {
        matches!(self.status(), Some(s) if (400..500).contains(&s) && s != 408 && s != 429)
    }

    /// Whether Box may have done the work although the answer says otherwise or never came: a 5xx,
    /// a timeout, a dropped connection, an answer that could not be read. A part may be stored, a
    /// commit or direct upload may have created the file (box-api.md); only a 4xx, or a call never
    /// made (no usable credentials), is sure to have changed nothing.
    pub fn may_have_landed(&self) -> bool {
        !matches!(&self.kind, BoxErrorKind::Status { status, .. } if *status < 500)
            && !matches!(self.kind, BoxErrorKind::Credentials(_))
    }
}

/// 409: Box holds the name while another upload of it is being committed; transient.
pub const NAME_RESERVED: &str = "name_temporarily_reserved";

/// `Retry-After` in seconds (Box never sends the HTTP-date form).
pub(crate) fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, code: &str) -> BoxError {
        let body = BoxErrorBody {
            code: Some(code.into()),
            ..Default::default()
        };
        BoxError::new(
            "commit",
            BoxErrorKind::Status {
                status,
                body: Box::new(body),
                retry_after: None,
            },
        )
    }

    #[test]
    fn only_what_a_retry_can_fix_is_retried() {
        let retried = [
            (429, "rate_limit_exceeded", "rate_limited"),
            (408, "request_timeout", "timeout"),
            (409, NAME_RESERVED, "name_reserved"),
            (500, "internal_server_error", "server_error"),
            (502, "bad_gateway", "server_error"),
            (503, "unavailable", "server_error"),
            (504, "gateway_timeout", "server_error"),
        ];
        for (code, box_code, reason) in retried {
            assert_eq!(
                status(code, box_code).retry_reason(),
                Some(reason),
                "{code} {box_code}"
            );
        }
        let final_ = [
            (501, "not_implemented"),
            (505, "http_version_not_supported"),
            (507, "insufficient_storage"),
            (400, "bad_request"),
            (401, "unauthorized"),
            (403, "storage_limit_exceeded"),
            (404, "not_found"),
            (409, "item_name_in_use"),
            (410, "session_expired"),
            (412, "precondition_failed"),
            (413, "request_entity_too_large"),
            (416, "range_overlaps_existing_part"),
        ];
        for (code, box_code) in final_ {
            assert_eq!(status(code, box_code).retry_reason(), None, "{code} {box_code}");
        }
        let protocol = BoxError::protocol("commit", "bad JSON");
        assert_eq!(protocol.retry_reason(), None);
        assert!(
            protocol.may_have_landed(),
            "an unreadable 2xx may hide a created file"
        );
        assert!(status(503, "unavailable").may_have_landed());
        assert!(!status(409, NAME_RESERVED).may_have_landed());
    }
}
