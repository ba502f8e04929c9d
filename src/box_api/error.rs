//! What can go wrong talking to Box, typed so callers can map it and the retry loop can decide.
use std::time::Duration;

use super::types::BoxErrorBody;

#[derive(Debug, thiserror::Error)]
#[error("Box {endpoint}: {kind}")]
pub struct BoxError {
    /// The Box endpoint, as named in metrics (`create_session`, `upload_part`, ...).
    pub endpoint: &'static str,
    pub kind: BoxErrorKind,
    /// A 401 to a token the provider had just minted again for this call: Box expires and revokes
    /// tokens on its own schedule, so another attempt (after the retry policy's wait) may fare
    /// better; when the attempts are spent it is still `box_auth_failed`.
    pub stale_token: bool,
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
    /// The call's total deadline across its retries (`box_call_deadline_secs`) passed: the attempt
    /// under way was dropped, or the wait Box asked for would have ended after it.
    #[error("no answer within the call's deadline of {0:?}")]
    Deadline(Duration),
    /// The pacer found no room for the call before its deadline: the principal is paused (Box
    /// answered 429) or its budget is spent until past it. Nothing was sent; `retry_after` is when
    /// the pacer expects room.
    #[error("no Box capacity for this principal before the call's deadline (room in {retry_after:?})")]
    Paced { retry_after: Duration },
    /// A timeout or dropped connection seen by another caller (a token refresh shared with its
    /// waiters), kept as text since the transport's error cannot be copied.
    #[error("Box could not be reached: {0}")]
    Unreachable(String),
    /// The gateway's own credentials cannot be used (a secret file unreadable, a key that does not
    /// decrypt): no request was sent. The message names the setting, never its value.
    #[error("unusable credentials: {0}")]
    Credentials(String),
}

impl BoxError {
    pub fn new(endpoint: &'static str, kind: BoxErrorKind) -> Self {
        Self {
            endpoint,
            kind,
            stale_token: false,
        }
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

    /// A 409 naming the item that holds the name (`context_info.conflicts`): a name conflict, which
    /// `on_conflict` may resolve; None for any other answer.
    pub fn name_conflict(&self) -> Option<super::types::Conflict> {
        self.body()
            .filter(|_| self.status() == Some(409))
            .and_then(|b| b.conflict())
    }

    pub fn request_id(&self) -> Option<&str> {
        self.body().and_then(|b| b.request_id.as_deref())
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            BoxErrorKind::Status { retry_after, .. } => *retry_after,
            BoxErrorKind::Paced { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The same error with its `Retry-After` no longer than `cap` (`box_rate_max_pause_secs`): what
    /// the gateway waits, pauses for and passes on to its client is one number.
    pub fn capped(mut self, cap: Duration) -> Self {
        if let BoxErrorKind::Status {
            retry_after: Some(asked),
            ..
        }
        | BoxErrorKind::Paced { retry_after: asked } = &mut self.kind
        {
            *asked = (*asked).min(cap);
        }
        self
    }

    /// The same error for another caller: a refresh's outcome shared with the uploads that waited
    /// for it. Transport errors cannot be cloned; they become `Unreachable` with their text.
    pub fn shared_copy(&self) -> Self {
        let kind = match &self.kind {
            BoxErrorKind::Status {
                status,
                body,
                retry_after,
            } => BoxErrorKind::Status {
                status: *status,
                body: body.clone(),
                retry_after: *retry_after,
            },
            BoxErrorKind::Timeout(e) | BoxErrorKind::Connection(e) => {
                BoxErrorKind::Unreachable(e.to_string())
            }
            BoxErrorKind::Protocol(m) => BoxErrorKind::Protocol(m.clone()),
            BoxErrorKind::Credentials(m) => BoxErrorKind::Credentials(m.clone()),
            BoxErrorKind::Deadline(d) => BoxErrorKind::Deadline(*d),
            BoxErrorKind::Paced { retry_after } => BoxErrorKind::Paced {
                retry_after: *retry_after,
            },
            BoxErrorKind::Unreachable(m) => BoxErrorKind::Unreachable(m.clone()),
        };
        Self {
            stale_token: self.stale_token,
            ..Self::new(self.endpoint, kind)
        }
    }

    /// Why a retry may succeed, as a metrics label; `None` when retrying cannot help. Retried: 429,
    /// 408, 409 `name_temporarily_reserved` (another upload of the name is committing) and
    /// `operation_blocked_temporary` (a folder locked by another operation), 500, 502, 503,
    /// 504, timeouts and dropped connections. Never: 501 and other 5xx (not implemented, out of space,
    /// ...), any other 4xx, and answers that cannot be understood: the same request would fail again.
    pub fn retry_reason(&self) -> Option<&'static str> {
        match &self.kind {
            BoxErrorKind::Status { status: 429, .. } => Some("rate_limited"),
            BoxErrorKind::Status { status: 401, .. } if self.stale_token => Some("token_expired"),
            BoxErrorKind::Status { status: 408, .. } => Some("timeout"),
            BoxErrorKind::Status { status: 409, .. } if self.code() == Some(NAME_RESERVED) => {
                Some("name_reserved")
            }
            BoxErrorKind::Status { status: 409, .. } if self.code() == Some(OPERATION_BLOCKED) => {
                Some("operation_blocked")
            }
            BoxErrorKind::Status {
                status: 500 | 502 | 503 | 504,
                ..
            } => Some("server_error"),
            BoxErrorKind::Status { .. } | BoxErrorKind::Protocol(_) | BoxErrorKind::Credentials(_) => None,
            BoxErrorKind::Timeout(_) => Some("timeout"),
            BoxErrorKind::Connection(_) => Some("connection"),
            // The pacer already knows no room comes before the deadline.
            BoxErrorKind::Deadline(_) | BoxErrorKind::Paced { .. } => None,
            BoxErrorKind::Unreachable(_) => Some("connection"),
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
    /// made (no usable credentials, no room in the pacer), is sure to have changed nothing.
    pub fn may_have_landed(&self) -> bool {
        !matches!(&self.kind, BoxErrorKind::Status { status, .. } if *status < 500)
            && !matches!(
                self.kind,
                BoxErrorKind::Credentials(_) | BoxErrorKind::Paced { .. }
            )
    }
}

/// 409: Box holds the name while another upload of it is being committed; transient.
pub const NAME_RESERVED: &str = "name_temporarily_reserved";

/// 409 on a folder creation: the parent is locked by a move, copy, delete or restore under way; "can
/// be retried at a later point" (OpenAPI, `POST /folders`).
pub const OPERATION_BLOCKED: &str = "operation_blocked_temporary";

/// The longest `Retry-After` the parser returns: a larger value (a proxy's mistake, or a day-long
/// ban) is read as this. It is the ceiling of `box_rate_max_pause_secs`, which caps what the gateway
/// then waits, pauses a principal for and passes on (`RetryPolicy::max_retry_after`,
/// `PacerSettings::max_pause`). An hour also keeps every later `Duration` arithmetic far from
/// overflow.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` (RFC 9110 10.2.3): delay-seconds or an HTTP-date, from Box or a proxy in front of
/// it, so read defensively: fractions are accepted, negative, NaN, infinite and unreadable values are
/// ignored (`None`), a date in the past is 0, and anything longer is capped at `MAX_RETRY_AFTER`.
pub(crate) fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    retry_after_value(value, std::time::SystemTime::now())
}

pub(crate) fn retry_after_value(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        // Compared before converting: `Duration::from_secs_f64` panics past u64::MAX seconds.
        return Some(if secs >= MAX_RETRY_AFTER.as_secs_f64() {
            MAX_RETRY_AFTER
        } else {
            Duration::from_secs_f64(secs)
        });
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default().min(MAX_RETRY_AFTER))
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
            (409, OPERATION_BLOCKED, "operation_blocked"),
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

    #[test]
    fn retry_after_is_read_defensively() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let read = |v: &str| retry_after_value(v, now);
        assert_eq!(read("7"), Some(Duration::from_secs(7)));
        assert_eq!(read(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(read("100000000000000000000"), Some(MAX_RETRY_AFTER));
        assert_eq!(read("1e308"), Some(MAX_RETRY_AFTER));
        for garbage in [
            "-1",
            "NaN",
            "inf",
            "-inf",
            "",
            "soon",
            "Tue, 99 Foo 2026",
            "\u{0}",
        ] {
            assert_eq!(read(garbage), None, "{garbage:?}");
        }
        // HTTP-dates: ahead (capped), near, past.
        assert_eq!(read("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_RETRY_AFTER));
        let soon = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(read(&soon), Some(Duration::from_secs(30)));
        assert_eq!(read("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
    }
}
