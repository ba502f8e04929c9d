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

    /// Why a retry may succeed, as a metrics label; `None` when retrying cannot help.
    pub fn retry_reason(&self) -> Option<&'static str> {
        match &self.kind {
            BoxErrorKind::Status { status: 429, .. } => Some("rate_limited"),
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

    /// A server error on an upload may have stored the part anyway (box-api.md).
    pub fn may_have_landed(&self) -> bool {
        !matches!(&self.kind, BoxErrorKind::Status { status, .. } if *status < 500)
            && !matches!(self.kind, BoxErrorKind::Credentials(_))
    }
}

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
