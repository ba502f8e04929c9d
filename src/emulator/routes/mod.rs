//! The HTTP face: one file per endpoint group, every route registered in `configure`.
pub mod body;
pub mod commit;
pub mod control;
pub mod digest;
pub mod direct;
pub mod files;
pub mod folders;
pub mod items;
pub mod metadata;
pub mod parts;
pub mod sessions;
pub mod token;

use super::errors::{BoxApiError, BOX_REQUEST_ID};
use super::faults::{Endpoint, FaultAction};
use super::{Shared, DEV_TOKEN};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, App, HttpRequest};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// The emulator's application; `wire::serve` puts it on the network.
pub fn app(
    data: web::Data<Shared>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(data)
        // Commit bodies list up to ~10,000 parts.
        .app_data(web::PayloadConfig::new(16 << 20))
        .wrap_fn(|req, srv| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let fut = srv.call(req);
            async move { fut.await.map(|res| with_request_id(res, &id)) }
        })
        .configure(configure)
}

fn configure(cfg: &mut web::ServiceConfig) {
    let session = "/api/2.0/files/upload_sessions/{session_id}";
    cfg.route("/api/2.0/files/upload_sessions", web::post().to(sessions::create))
        .service(
            web::resource(session)
                .route(web::put().to(parts::upload))
                .route(web::get().to(sessions::get))
                .route(web::delete().to(sessions::abort)),
        )
        .route(&format!("{session}/parts"), web::get().to(parts::list))
        .route(&format!("{session}/commit"), web::post().to(commit::commit))
        .route("/api/2.0/files/content", web::post().to(direct::upload_new))
        .route(
            "/api/2.0/files/{file_id}/upload_sessions",
            web::post().to(sessions::create_version),
        )
        .route(
            "/api/2.0/files/{file_id}/content",
            web::post().to(direct::upload_version),
        )
        .route(
            "/2.0/files/content",
            web::method(actix_web::http::Method::OPTIONS).to(direct::preflight_new),
        )
        .service(
            web::resource("/2.0/files/{file_id}/content")
                .route(web::method(actix_web::http::Method::OPTIONS).to(direct::preflight_version))
                .route(web::get().to(files::download)),
        )
        .service(
            web::resource("/2.0/files/{file_id}")
                .route(web::get().to(files::get))
                .route(web::put().to(files::update))
                .route(web::delete().to(files::delete)),
        )
        .route("/2.0/files/{file_id}/metadata", web::get().to(metadata::list))
        .service(
            web::resource("/2.0/files/{file_id}/metadata/{scope}/{template_key}")
                .route(web::get().to(metadata::get))
                .route(web::post().to(metadata::create))
                .route(web::put().to(metadata::update))
                .route(web::delete().to(metadata::delete)),
        )
        .route(
            "/2.0/metadata_templates/{scope}/{template_key}/schema",
            web::get().to(metadata::schema),
        )
        .route(
            "/2.0/files/{file_id}/versions/{version_id}",
            web::delete().to(files::delete_version),
        )
        .route("/2.0/users/me", web::get().to(files::users_me))
        .route("/2.0/folders", web::post().to(folders::create))
        .service(
            web::resource("/2.0/folders/{folder_id}")
                .route(web::get().to(folders::get))
                .route(web::delete().to(folders::delete)),
        )
        .route("/2.0/folders/{folder_id}/items", web::get().to(folders::items))
        .route("/oauth2/token", web::post().to(token::token))
        .configure(control::configure)
        .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, BoxApiError> {
    Err(BoxApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Stamps `BOX-REQUEST-ID` and renders every error as Box's body with the same id: a `BoxApiError`
/// as built, any other (an extractor's, say) with its status and the code Box uses for that status.
fn with_request_id<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
    id: &str,
) -> ServiceResponse<actix_web::body::BoxBody> {
    let rendered = res.response().error().map(|e| match e.as_error::<BoxApiError>() {
        Some(b) => b.render(id),
        None => {
            let status = res.response().status().as_u16();
            BoxApiError::new(status, code_for_status(status), e.to_string()).render(id)
        }
    });
    let mut res = match rendered {
        Some(r) => res.into_response(r),
        None => res.map_into_boxed_body(),
    };
    if let Ok(v) = HeaderValue::from_str(id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static(BOX_REQUEST_ID), v);
    }
    res
}

/// A duplicate of the connection's socket, so a `cut_connection` fault can reset it.
pub struct ConnSocket(pub OwnedFd);

/// Marks a connection that came over TLS: `absolute` answers `https` URLs on it.
pub struct ConnTls;

/// Which connection a request came on (numbered from 1 in the order they were accepted).
#[derive(Clone, Copy)]
pub struct ConnId(pub u64);

/// What the fault plan decided for one request that passed the gate.
pub struct Gate {
    pub action: Option<FaultAction>,
    pub bandwidth: Option<u64>,
}

/// Every handler starts here: plan-wide delay, bearer auth, `As-User`, then the fault rules.
pub async fn gate(
    shared: &Shared,
    req: &HttpRequest,
    endpoint: Option<Endpoint>,
    auth: bool,
) -> Result<Gate, BoxApiError> {
    let (delay_ms, bandwidth, expire_all, limits) = {
        let f = shared.faults();
        let p = f.plan();
        (
            p.delay_ms,
            p.bandwidth_bytes_per_sec,
            p.expire_tokens,
            RateLimits {
                calls: p.rate_calls_per_minute,
                uploads: p.rate_uploads_per_minute,
                window: Duration::from_secs(p.rate_window_secs.unwrap_or(60).max(1)),
            },
        )
    };
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    if auth {
        check_auth(shared, req, expire_all)?;
        record_as_user(shared, req);
        check_rate(shared, req, endpoint, limits)?;
    }
    let fired = shared.faults().pick(endpoint);
    let action = fired.map(|f| {
        let mut state = shared.lock();
        state.counters.faults_fired += 1;
        state.faults_fired.push(f.fired);
        f.action
    });
    match &action {
        Some(FaultAction::Status {
            status,
            code,
            message,
            retry_after,
        }) => {
            return Err(status_fault(
                *status,
                code.as_deref(),
                message.as_deref(),
                *retry_after,
            ));
        }
        Some(FaultAction::RetryAfterRaw { status, value }) => {
            let mut e = status_fault(*status, None, None, None);
            e.raw = Some(Box::new(super::errors::RawAnswer {
                retry_after: Some(value.clone()),
                body: None,
            }));
            return Err(e);
        }
        Some(FaultAction::GarbageBody { kind, status }) => {
            let mut e = status_fault(*status, None, None, None);
            e.raw = Some(Box::new(super::errors::RawAnswer {
                retry_after: None,
                body: Some(kind.body()),
            }));
            return Err(e);
        }
        _ => {}
    }
    Ok(Gate { action, bandwidth })
}

fn status_fault(status: u16, code: Option<&str>, message: Option<&str>, retry: Option<u64>) -> BoxApiError {
    let code = code.unwrap_or(code_for_status(status));
    BoxApiError::new(
        status,
        code,
        message.unwrap_or("injected by the emulator's fault plan"),
    )
    .with_retry_after(retry)
}

/// The code Box sends with a status when nothing more specific applies.
fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        412 => "precondition_failed",
        413 => "request_entity_too_large",
        429 => "rate_limit_exceeded",
        502 => "bad_gateway",
        503 => "unavailable",
        _ => "internal_server_error",
    }
}

fn check_auth(shared: &Shared, req: &HttpRequest, expire_all: bool) -> Result<(), BoxApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .map(str::trim);
    let Some(token) = token else {
        return Err(BoxApiError::unauthorized("The access token is missing"));
    };
    if expire_all {
        return Err(BoxApiError::unauthorized("The access token provided has expired"));
    }
    let tokens = &shared.config.tokens;
    if tokens.iter().any(|t| t == token) || (tokens.is_empty() && token == DEV_TOKEN) {
        return Ok(());
    }
    let state = shared.lock();
    match state.tokens.get(token) {
        Some(t) if !t.revoked && t.expires_at > Instant::now() => Ok(()),
        Some(_) => Err(BoxApiError::unauthorized("The access token provided has expired")),
        None => Err(BoxApiError::unauthorized("The access token provided is invalid")),
    }
}

/// The fault plan's rate limits: calls and upload calls per window (Box: per minute).
struct RateLimits {
    calls: Option<u32>,
    uploads: Option<u32>,
    window: Duration,
}

/// Box's rate limits, per user: here per token and `As-User`, over any 60 s (a sliding window, the
/// strictest reading of "per minute"; a test may shorten the window). A refused call is not
/// counted, so a client that waits out `Retry-After` gets through.
fn check_rate(
    shared: &Shared,
    req: &HttpRequest,
    endpoint: Option<Endpoint>,
    RateLimits {
        calls,
        uploads,
        window: period,
    }: RateLimits,
) -> Result<(), BoxApiError> {
    if calls.is_none() && uploads.is_none() {
        return Ok(());
    }
    let who = format!(
        "{}\0{}",
        header_str(req, "authorization").unwrap_or_default(),
        header_str(req, "as-user").unwrap_or_default()
    );
    let upload = matches!(endpoint, Some(Endpoint::CreateSession | Endpoint::DirectUpload));
    let now = Instant::now();
    let mut state = shared.lock();
    let windows = state.rate_windows.entry(who).or_default();
    for window in [&mut windows.calls, &mut windows.uploads] {
        while window.front().is_some_and(|t| now.duration_since(*t) >= period) {
            window.pop_front();
        }
    }
    // The earliest moment every window that is full has room again.
    let mut retry_after = None;
    for (limit, window, applies) in [(calls, &windows.calls, true), (uploads, &windows.uploads, upload)] {
        if let (Some(limit), true) = (limit, applies) {
            if window.len() >= limit as usize {
                let frees = window
                    .get(window.len() - limit as usize)
                    .map_or(Duration::ZERO, |t| period.saturating_sub(now.duration_since(*t)));
                retry_after = Some(retry_after.map_or(frees, |r: Duration| r.max(frees)));
            }
        }
    }
    if let Some(wait) = retry_after {
        state.counters.rate_limited += 1;
        let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
        return Err(BoxApiError::new(
            429,
            "rate_limit_exceeded",
            "Request rate limit exceeded, please try again later",
        )
        .with_retry_after(Some(secs)));
    }
    windows.calls.push_back(now);
    if upload {
        windows.uploads.push_back(now);
    }
    Ok(())
}

fn record_as_user(shared: &Shared, req: &HttpRequest) {
    if let Some(user) = req.headers().get("as-user").and_then(|v| v.to_str().ok()) {
        shared.lock().as_user.push(user.to_owned());
    }
}

/// Absolute URL on the host the client used, as Box builds `session_endpoints`.
pub fn absolute(req: &HttpRequest, path: &str) -> String {
    let info = req.connection_info();
    // An HTTP/1.1 request line carries no scheme: the connection knows.
    let scheme = match req.conn_data::<ConnTls>() {
        Some(_) => "https",
        None => info.scheme(),
    };
    format!("{scheme}://{}{}", info.host(), path)
}

pub fn header_str<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}
