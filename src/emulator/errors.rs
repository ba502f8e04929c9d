//! Box's error body, built in one place.
//!
//! Handlers return `Err(BoxApiError)`; the request-id middleware (see `mod.rs`) re-renders it with the
//! request's `BOX-REQUEST-ID`, so every error body carries the same `request_id` as its header.
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};

pub const BOX_REQUEST_ID: &str = "box-request-id";

#[derive(Debug, Clone)]
pub struct BoxApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub context_info: Option<Value>,
    pub retry_after: Option<u64>,
    /// OAuth-style body (`{"error", "error_description"}`) for the token endpoint.
    pub oauth: bool,
    /// Box's metadata-instance errors (OpenAPI `MetadataError`, box/box-openapi#393): only `code`,
    /// `message` and `request_id`, no `type` or `status`.
    pub metadata: bool,
    /// The fault plan's answers that are not Box's (boxed: rare, and the error stays small).
    pub raw: Option<Box<RawAnswer>>,
}

/// A `Retry-After` verbatim, a body verbatim (with its content type) instead of Box's error JSON.
#[derive(Debug, Clone, Default)]
pub struct RawAnswer {
    pub retry_after: Option<String>,
    pub body: Option<(&'static str, &'static str)>,
}

impl BoxApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.to_owned(),
            message: message.into(),
            context_info: None,
            retry_after: None,
            oauth: false,
            metadata: false,
            raw: None,
        }
    }

    pub fn with_context(mut self, context_info: Value) -> Self {
        self.context_info = Some(context_info);
        self
    }

    pub fn with_retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after = seconds;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_server_error", message)
    }

    pub fn unauthorized(description: &str) -> Self {
        Self::new(401, "unauthorized", description)
    }

    /// The token endpoint answers RFC 6749 errors, not Box's error body.
    pub fn oauth(status: u16, error: &str, description: impl Into<String>) -> Self {
        let mut e = Self::new(status, error, description);
        e.oauth = true;
        e
    }

    /// The shape Box answers the creation of a metadata instance with when it refuses it.
    pub fn metadata(status: u16, code: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(status, code, message);
        e.metadata = true;
        e
    }

    pub fn body(&self, request_id: &str) -> Value {
        if self.oauth {
            return json!({"error": self.code, "error_description": self.message});
        }
        if self.metadata {
            return json!({"code": self.code, "message": self.message, "request_id": request_id});
        }
        json!({
            "type": "error",
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
            "context_info": self.context_info,
            "help_url": "http://developers.box.com/docs/#errors",
            "request_id": request_id,
        })
    }

    pub fn render(&self, request_id: &str) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED && !self.oauth {
            // Box answers a bad token with this challenge (RFC 6750 section 3).
            res.insert_header((
                header::WWW_AUTHENTICATE,
                format!(
                    "Bearer realm=\"Service\", error=\"invalid_token\", error_description=\"{}\"",
                    self.message.replace('"', "'")
                ),
            ));
        }
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        let raw = self.raw.as_deref().cloned().unwrap_or_default();
        if let Some(value) = raw
            .retry_after
            .as_deref()
            .and_then(|v| header::HeaderValue::from_str(v).ok())
        {
            res.insert_header((header::RETRY_AFTER, value));
        }
        if let Some((content_type, body)) = raw.body {
            return res.content_type(content_type).body(body);
        }
        res.json(self.body(request_id))
    }
}

impl std::fmt::Display for BoxApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ResponseError for BoxApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        self.render("")
    }
}

pub type Reply = Result<HttpResponse, BoxApiError>;
