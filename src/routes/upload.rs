//! The upload endpoints:
//! - `POST /v1/folders/{folder_id}/files`     multipart, a new file
//! - `PUT  /v1/folders/{folder_id}/files/{name}` raw body, a new file
//! - `POST /v1/files/{file_id}/versions`      multipart, a new version
//! - `PUT  /v1/files/{file_id}/content`       raw body, a new version
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_multipart::{Field, Multipart};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, LocalBoxStream};
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde_json::json;
use tracing::Instrument;

use super::multipart_scan::{suffix_len, FileData, HeadScan, Scan};
use super::params::{header_u64, validate_id, validate_name, UploadParams};
use super::AppState;
use crate::access::{Caller, QuotaCost};
use crate::box_api::{Admission, NewUpload, Target};
use crate::error::ApiError;
use crate::events::{Completed, Event, Failed};
use crate::pipeline::{spool, UploadError, UploadMethod, UploadOutcome, UploadRequest};

/// Text fields before the file are small; a bigger one is not a parameter.
const MAX_FIELD_BYTES: usize = 64 * 1024;
const MAX_FIELDS: usize = 100;
/// All the text fields before the file together: they are held until the upload ends, outside the
/// memory budget, so their bound is small and fixed (100 fields of 64 KiB each would be 6.4 MiB a
/// request).
const MAX_FIELDS_BYTES: usize = 64 * 1024;
/// How much of a multipart body is looked at to find where the file starts.
const MAX_SCAN_BYTES: usize = 64 * 1024;

type Body = LocalBoxStream<'static, Result<Bytes, UploadError>>;

/// Where the size of the file comes from; Box needs it before the first byte.
enum Size {
    /// From `size` or `Upload-Length`, or a raw body's `Content-Length`.
    Declared(u64),
    /// From a multipart body's `Content-Length`, assuming the file is its last part.
    Derived(u64),
    Unknown,
}

pub async fn multipart_to_folder(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.access.authenticate_checked(req.headers()).await?;
    let folder_id = validate_id(&path, "folder")?;
    caller.check_folder(&folder_id)?;
    let tracker = Tracker::start(&state, &caller, &req);
    let result = multipart(
        &req,
        query.into_inner(),
        payload,
        &state,
        &caller,
        &tracker,
        |name, filename| {
            Ok(Target::NewFile {
                folder_id: folder_id.clone(),
                name: validate_name(&name.unwrap_or(filename))?,
            })
        },
    )
    .await;
    tracker.answer(result).await
}

pub async fn multipart_new_version(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.access.authenticate_checked(req.headers()).await?;
    let file_id = validate_id(&path, "file")?;
    caller.check_file(&state.pipeline, &file_id).await?;
    let tracker = Tracker::start(&state, &caller, &req);
    let result = multipart(
        &req,
        query.into_inner(),
        payload,
        &state,
        &caller,
        &tracker,
        |name, _filename| {
            // A new version keeps its name unless `name` asks for another; the part's filename does not.
            Ok(Target::NewVersion {
                file_id: file_id.clone(),
                name: name.as_deref().map(validate_name).transpose()?,
            })
        },
    )
    .await;
    tracker.answer(result).await
}

pub async fn raw_to_folder(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.access.authenticate_checked(req.headers()).await?;
    let (folder_id, name) = path.into_inner();
    let target = Target::NewFile {
        folder_id: validate_id(&folder_id, "folder")?,
        name: validate_name(&name)?,
    };
    caller.check_folder(&folder_id)?;
    let tracker = Tracker::start(&state, &caller, &req);
    let result = raw(
        &req,
        query.into_inner(),
        payload,
        &state,
        &caller,
        target,
        &tracker,
    )
    .await;
    tracker.answer(result).await
}

pub async fn raw_new_version(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<UploadParams>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.access.authenticate_checked(req.headers()).await?;
    let name = query.name.as_deref().map(validate_name).transpose()?;
    let file_id = validate_id(&path, "file")?;
    caller.check_file(&state.pipeline, &file_id).await?;
    let target = Target::NewVersion { file_id, name };
    let tracker = Tracker::start(&state, &caller, &req);
    let result = raw(
        &req,
        query.into_inner(),
        payload,
        &state,
        &caller,
        target,
        &tracker,
    )
    .await;
    tracker.answer(result).await
}

async fn raw(
    req: &HttpRequest,
    params: UploadParams,
    payload: web::Payload,
    state: &AppState,
    caller: &Caller,
    target: Target,
    tracker: &Tracker<'_>,
) -> Result<UploadOutcome, ApiError> {
    tracker.admission.set(Some(admit_upload(state, caller).await?));
    let size = match (
        params.declared_size(req.headers())?,
        content_length(req.headers())?,
    ) {
        (Some(n), _) | (None, Some(n)) => Size::Declared(n),
        (None, None) => Size::Unknown,
    };
    let body = client_body(payload, state).map_err(from_payload).boxed_local();
    let expected_sha1 = params.expected_sha1(Some(req.headers()))?;
    upload(state, caller, tracker, params, expected_sha1, target, size, body).await
}

/// Reads the text fields up to the first part with a filename, then streams that part to Box.
/// Fields after the file are never read as file bytes: the file part ends at its boundary.
async fn multipart(
    req: &HttpRequest,
    mut params: UploadParams,
    payload: web::Payload,
    state: &AppState,
    caller: &Caller,
    tracker: &Tracker<'_>,
    // Builds the target from the explicit `name` (if any) and the file part's filename.
    target: impl FnOnce(Option<String>, String) -> Result<Target, ApiError>,
) -> Result<UploadOutcome, ApiError> {
    let boundary = boundary(req.headers())?;
    let content_length = content_length(req.headers())?;
    tracker.admission.set(Some(admit_upload(state, caller).await?));
    let mut payload = client_body(payload, state);
    // Where the file's data starts: its size may follow from Content-Length, and its bytes can be
    // cut out of the body without actix-multipart's copy (`FileData`). actix-multipart still parses
    // the head (fields and the file part's headers); when it does not find the file there the
    // scan must have misread the form, and actix-multipart reads the whole body as it comes.
    let (seen, data_offset) = scan(&mut payload, &boundary).await?;
    let fast = match data_offset {
        Some(offset) => {
            let (head, rest) = split_chunks(&seen, offset);
            let mut head_form = Multipart::new(req.headers(), stream::iter(head.into_iter().map(Ok)));
            read_form_head(&mut head_form)
                .await
                .ok()
                .map(|(fields, filename, _)| (fields, filename, rest))
        }
        None => None,
    };
    // The file's Field reads through the form it came from: the form lives as long as the upload.
    let mut form;
    let (fields, filename, body): (_, _, Body) = match fast {
        Some((fields, filename, rest)) => {
            let data = FileData::new(stream::iter(rest.into_iter().map(Ok)).chain(payload), &boundary);
            (fields, filename, data.map_err(from_payload).boxed_local())
        }
        None => {
            form = Multipart::new(
                req.headers(),
                stream::iter(seen.into_iter().map(Ok)).chain(payload),
            );
            let (fields, filename, field) = read_form_head(&mut form).await?;
            (fields, filename, field.map_err(from_multipart).boxed_local())
        }
    };
    for (key, value) in fields {
        params.set(&key, value);
    }
    let target = target(params.name.clone(), filename)?;
    let size = match (params.declared_size(req.headers())?, content_length, data_offset) {
        (Some(n), ..) => Size::Declared(n),
        (None, Some(len), Some(offset)) => {
            let overhead = offset as u64 + suffix_len(&boundary);
            if len < overhead {
                return Err(ApiError::bad_request(
                    "invalid_multipart",
                    "Content-Length is shorter than the form",
                ));
            }
            Size::Derived(len - overhead)
        }
        _ => Size::Unknown,
    };
    let expected_sha1 = params.expected_sha1(None)?;
    upload(state, caller, tracker, params, expected_sha1, target, size, body).await
}

/// The text fields before the first part with a filename, that filename, and the file's Field.
async fn read_form_head(form: &mut Multipart) -> Result<(Vec<(String, String)>, String, Field), ApiError> {
    let mut fields = Vec::new();
    let mut total = 0;
    loop {
        let field = form
            .next()
            .await
            .ok_or_else(|| ApiError::bad_request("missing_file", "the form has no part with a filename"))?
            .map_err(multipart_error)?;
        if let Some(filename) = filename_of(&field) {
            return Ok((fields, filename, field));
        }
        if fields.len() >= MAX_FIELDS {
            return Err(ApiError::bad_request(
                "invalid_multipart",
                "too many fields before the file",
            ));
        }
        let key = field.name().unwrap_or_default().to_owned();
        let value = read_text(field).await?;
        total += key.len() + value.len();
        if total > MAX_FIELDS_BYTES {
            return Err(ApiError::bad_request(
                "invalid_multipart",
                "the fields before the file are larger than 64 KiB together",
            ));
        }
        fields.push((key, value));
    }
}

/// The chunks split at byte `at`: what comes before, and what comes after (shared, not copied).
fn split_chunks(chunks: &[Bytes], at: usize) -> (Vec<Bytes>, Vec<Bytes>) {
    let (mut head, mut rest, mut offset) = (Vec::new(), Vec::new(), 0);
    for chunk in chunks {
        let end = offset + chunk.len();
        match at {
            at if at >= end => head.push(chunk.clone()),
            at if at <= offset => rest.push(chunk.clone()),
            at => {
                head.push(chunk.slice(..at - offset));
                rest.push(chunk.slice(at - offset..));
            }
        }
        offset = end;
    }
    (head, rest)
}

/// The pipeline's part: size (spooling a body of unknown size), Box destination, bytes. The caller's
/// size limit is checked before any byte goes to Box.
#[allow(clippy::too_many_arguments)]
async fn upload(
    state: &AppState,
    caller: &Caller,
    tracker: &Tracker<'_>,
    params: UploadParams,
    expected_sha1: Option<[u8; 20]>,
    target: Target,
    size: Size,
    body: Body,
) -> Result<UploadOutcome, ApiError> {
    // A link's uploads go through tus, where its `max_files` is counted.
    if caller.link().is_some() {
        return Err(crate::access::link_not_allowed(
            "an upload link uploads through the resumable endpoints (/v1/tus/), as its page does",
        ));
    }
    tracker.set_target(&target);
    let received = tracker.received.clone();
    let body: Body = body
        .inspect_ok(move |chunk| received.set(received.get() + chunk.len() as u64))
        .boxed_local();
    let on_conflict = params.on_conflict()?;
    let content_created_at = UploadParams::timestamp(&params.content_created_at, "content_created_at")?;
    let content_modified_at = UploadParams::timestamp(&params.content_modified_at, "content_modified_at")?;
    let (size, derived, body, _spooled) = match size {
        Size::Declared(n) => {
            caller.check_size(n)?;
            (n, false, body, None)
        }
        Size::Derived(n) => {
            caller.check_size(n)?;
            (n, true, body, None)
        }
        Size::Unknown if state.spool.max_bytes == 0 => {
            return Err(ApiError::new(
                actix_web::http::StatusCode::LENGTH_REQUIRED,
                "length_required",
                "the file's size is unknown: send a `size` field or query parameter, an Upload-Length header, or a Content-Length",
            ))
        }
        Size::Unknown => {
            // The key's limit bounds the spool too; a larger body is refused as it arrives.
            let limit = caller.max_file_size_bytes().map_or(state.spool.max_bytes, |l| l.min(state.spool.max_bytes));
            let spooled = match spool(body, &state.spool.dir, limit, &state.spool_space).await {
                Err(UploadError::TooLarge { .. }) if limit < state.spool.max_bytes => return Err(caller.too_large()),
                other => other.map_err(fail)?,
            };
            let body = spooled.stream().await.map_err(fail)?.boxed_local();
            (spooled.size, false, body, Some(spooled))
        }
    };
    state.access.take_quota(caller, QuotaCost::Bytes(size)).await?;
    let upload = NewUpload {
        target,
        size,
        content_created_at,
        content_modified_at,
    };
    let request = UploadRequest {
        upload,
        on_conflict,
        expected_sha1,
    };
    let pipeline = state
        .pipeline
        .acting_as(&caller.principal)
        .admitted(tracker.admission.take());
    // The upload's span (a child of the request's): the Box calls below are its children.
    let span = tracing::info_span!("upload", size, method = tracing::field::Empty);
    async {
        let prepared = pipeline
            .prepare(request)
            .await
            .map_err(|e| caller.box_error(fail(e)))?;
        tracker.method.set(Some(prepared.method()));
        tracing::Span::current().record("method", prepared.method().as_str());
        pipeline.send(prepared, body).await.map_err(|mut err| {
            if let UploadError::SizeMismatch { derived: d, .. } = &mut err {
                *d = derived;
            }
            caller.box_error(fail(err))
        })
    }
    .instrument(span)
    .await
}

/// A new upload's turn, before any byte of its body is read: its key's upload quota (429
/// `rate_limited`), then Box capacity for its principal, waited for at most `box_rate_wait_secs`
/// and fairly among keys (503 `box_rate_limited`). Both with `Retry-After`.
pub(super) async fn admit_upload(state: &AppState, caller: &Caller) -> Result<Admission, ApiError> {
    state.access.take_quota(caller, QuotaCost::Upload).await?;
    state
        .pacer
        .admit(&caller.principal.pace_key(), caller.key_label())
        .await
        .map_err(|no| {
            tracing::warn!(key = %caller.key_label(), waited = ?no.waited, "no Box capacity within box_rate_wait_secs: upload refused for now");
            ApiError::box_rate_limited(no.waited, no.retry_after)
        })
}

/// Logs a failed upload with its whole cause chain (the client gets the short, stable form).
pub(super) fn fail(err: UploadError) -> ApiError {
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    let api = ApiError::from(err);
    // The gateway's own bounds doing their work (a full budget or spool, a drain) are not faults.
    if matches!(api.code, "busy" | "insufficient_storage" | "draining") {
        tracing::warn!(code = api.code, error = %chain, "upload refused for now");
    } else if api.status.is_server_error() {
        tracing::error!(code = api.code, error = %chain, "upload failed");
    } else {
        tracing::info!(code = api.code, error = %chain, "upload refused");
    }
    api
}

/// Reads raw body chunks until the file part's headers are seen, returning the chunks to replay
/// and where the file's data starts (None: not within `MAX_SCAN_BYTES`, or no file part).
///
/// Memory held before Box is called, per request: the first chunk as actix-http handed it (a slice of
/// its read buffer, below 256 KiB), scanned where it is, which for most clients holds the whole head;
/// else one window the pieces are copied into, at most `MAX_SCAN_BYTES` + 1 bytes, and the rest of
/// the chunk that filled it (again a slice of actix-http's buffer). No list of pieces: a head sent in
/// 1-byte chunks is one copy, not 64 Ki slices each keeping a read buffer alive.
async fn scan(
    payload: &mut (impl Stream<Item = Result<Bytes, PayloadError>> + Unpin),
    boundary: &str,
) -> Result<(Vec<Bytes>, Option<usize>), ApiError> {
    let mut head = HeadScan::new(boundary);
    let first = match payload.next().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => return Err(fail(from_payload(e))),
        None => return Ok((Vec::new(), None)),
    };
    match head.scan(&first) {
        Scan::Found(offset) => return Ok((vec![first], Some(offset))),
        Scan::NoFile => return Ok((vec![first], None)),
        Scan::NeedMore if first.len() > MAX_SCAN_BYTES => return Ok((vec![first], None)),
        Scan::NeedMore => {}
    }
    let mut window = BytesMut::with_capacity(MAX_SCAN_BYTES + 1);
    window.extend_from_slice(&first);
    drop(first);
    loop {
        let chunk = match payload.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(fail(from_payload(e))),
            None => return Ok((vec![window.freeze()], None)),
        };
        let take = chunk.len().min(MAX_SCAN_BYTES + 1 - window.len());
        window.extend_from_slice(&chunk[..take]);
        let found = match head.scan(&window) {
            Scan::Found(offset) => Some(offset),
            Scan::NeedMore if window.len() <= MAX_SCAN_BYTES => continue,
            Scan::NeedMore | Scan::NoFile => None,
        };
        let mut replay = vec![window.freeze()];
        if take < chunk.len() {
            replay.push(chunk.slice(take..));
        }
        return Ok((replay, found));
    }
}

pub(super) fn boundary(headers: &HeaderMap) -> Result<String, ApiError> {
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

pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    header_u64(headers, "Content-Length", "invalid_request")
}

/// The part's filename: RFC 5987 `filename*` (UTF-8) first, else plain `filename`.
fn filename_of(field: &Field) -> Option<String> {
    let cd = field.content_disposition()?;
    if let Some(ext) = cd.get_filename_ext() {
        let decoded = match &ext.charset {
            header::Charset::Iso_8859_1 => Some(ext.value.iter().map(|&b| b as char).collect()),
            _ => String::from_utf8(ext.value.clone()).ok(),
        };
        if decoded.is_some() {
            return decoded;
        }
    }
    cd.get_filename().map(str::to_owned)
}

async fn read_text(mut field: Field) -> Result<String, ApiError> {
    let key = field.name().unwrap_or_default().to_owned();
    let mut value = Vec::new();
    while let Some(chunk) = field.next().await {
        value.extend_from_slice(&chunk.map_err(multipart_error)?);
        if value.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(
                "invalid_multipart",
                format!("field {key:?} is larger than 64 KiB"),
            ));
        }
    }
    String::from_utf8(value)
        .map_err(|_| ApiError::bad_request("invalid_multipart", format!("field {key:?} is not UTF-8")))
}

/// The minimum body rate: at least `min_bytes_per_sec` over each `window` of the gateway waiting for
/// the body (`client_min_bytes_per_sec`, `client_rate_window_secs`).
#[derive(Debug, Clone, Copy)]
pub(super) struct MinRate {
    pub min_bytes_per_sec: u64,
    pub window: Duration,
}

/// A body that came too slowly, carried through actix's `PayloadError` to `from_payload`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent {received} bytes in {window:?} of waiting")]
struct TooSlow {
    received: u64,
    window: Duration,
    min_bytes_per_sec: u64,
}

/// Waiting time and bytes within the current window of a `MinRate`. Only time spent waiting for the
/// client counts: while the gateway waits for the budget or for Box it does not read the body, and
/// the client (held back by TCP) is not to blame.
struct RateWindow {
    rate: MinRate,
    waited: Duration,
    bytes: u64,
}

impl RateWindow {
    fn new(rate: MinRate) -> Self {
        Self {
            rate,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// Waiting time left before the window is judged.
    fn left(&self) -> Duration {
        self.rate.window.saturating_sub(self.waited)
    }

    /// Counts a wait of `waited` that brought `bytes`; once the window is full it is judged, and the
    /// next one starts empty.
    fn record(&mut self, waited: Duration, bytes: u64) -> Result<(), TooSlow> {
        self.waited += waited;
        self.bytes += bytes;
        if self.waited < self.rate.window {
            return Ok(());
        }
        let needed = self.rate.min_bytes_per_sec as f64 * self.waited.as_secs_f64();
        if (self.bytes as f64) < needed {
            return Err(TooSlow {
                received: self.bytes,
                window: self.waited,
                min_bytes_per_sec: self.rate.min_bytes_per_sec,
            });
        }
        *self = Self::new(self.rate);
        Ok(())
    }
}

/// The request body as the gateway reads it from a client: it ends with 408 when the client sends
/// nothing for `client_idle_timeout` (`client_timeout`), or sends below `client_min_bytes_per_sec`
/// over `client_rate_window` of waiting (`client_too_slow`). A stalled or trickling client must not
/// hold its part of the memory budget, nor its Box session, for ever: a trickle of 1 KiB every few
/// seconds never trips the idle timeout alone.
pub(super) fn client_body(
    payload: impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    state: &AppState,
) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
    let limits = state.client;
    let rate = (limits.min_bytes_per_sec > 0).then_some(MinRate {
        min_bytes_per_sec: limits.min_bytes_per_sec,
        window: limits.rate_window,
    });
    body_deadlines(payload, limits.idle_timeout, rate)
}

fn body_deadlines(
    payload: impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    idle: Duration,
    rate: Option<MinRate>,
) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
    use tokio::time::Instant;
    let too_slow = |slow: TooSlow| PayloadError::Io(std::io::Error::other(slow));
    Box::pin(
        stream::unfold(
            Some((payload, rate.map(RateWindow::new))),
            move |state| async move {
                let (mut payload, mut window) = state?;
                // The clock runs only inside this call: the time between two polls is the gateway's.
                let idle_deadline = Instant::now() + idle;
                loop {
                    let started = Instant::now();
                    let deadline = window
                        .as_ref()
                        .map_or(idle_deadline, |w| idle_deadline.min(started + w.left()));
                    // `next()` is cancel-safe: a wait cut at the window's end loses no bytes.
                    match tokio::time::timeout_at(deadline, payload.next()).await {
                        Ok(Some(item)) => {
                            if let (Some(w), Ok(chunk)) = (window.as_mut(), &item) {
                                if let Err(slow) = w.record(started.elapsed(), chunk.len() as u64) {
                                    return Some((Err(too_slow(slow)), None));
                                }
                            }
                            return Some((item, Some((payload, window))));
                        }
                        Ok(None) => return None,
                        Err(_) if Instant::now() >= idle_deadline => {
                            return Some((
                                Err(PayloadError::Io(std::io::Error::new(
                                    ErrorKind::TimedOut,
                                    "client idle",
                                ))),
                                None,
                            ))
                        }
                        // The rate's window ended while waiting: judge it, then wait on.
                        Err(_) => {
                            if let Some(Err(slow)) = window.as_mut().map(|w| w.record(started.elapsed(), 0)) {
                                return Some((Err(too_slow(slow)), None));
                            }
                        }
                    }
                }
            },
        )
        // actix-multipart polls again after the end; a fused stream keeps answering `None`.
        .fuse(),
    )
}

pub(super) fn from_payload(err: PayloadError) -> UploadError {
    match err {
        PayloadError::Io(e) if e.kind() == ErrorKind::TimedOut => UploadError::ClientTimeout,
        PayloadError::Io(e) => match e.get_ref().and_then(|inner| inner.downcast_ref::<TooSlow>()) {
            Some(slow) => UploadError::ClientTooSlow {
                received: slow.received,
                window: slow.window,
                min_bytes_per_sec: slow.min_bytes_per_sec,
            },
            None => UploadError::Body(PayloadError::Io(e).to_string()),
        },
        other => UploadError::Body(other.to_string()),
    }
}

fn from_multipart(err: actix_multipart::MultipartError) -> UploadError {
    match err {
        actix_multipart::MultipartError::Payload(e) => from_payload(e),
        other => UploadError::Body(other.to_string()),
    }
}

fn multipart_error(err: actix_multipart::MultipartError) -> ApiError {
    ApiError::bad_request(
        "invalid_multipart",
        format!("the multipart body is malformed: {err}"),
    )
}

/// `upload.completed`'s data, from Box's file object (what the 201 carries).
pub(super) fn completed(outcome: &UploadOutcome, key: String, request_id: Option<String>) -> Completed {
    let file = &outcome.file.0;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    Completed {
        file_id: outcome.file.id().unwrap_or_default().to_owned(),
        file_version_id: text(&file["file_version"]["id"]),
        name: text(&file["name"]),
        folder_id: text(&file["parent"]["id"]),
        size: outcome.size,
        sha1: outcome.sha1_hex.clone(),
        method: outcome.method.as_str().to_owned(),
        key,
        request_id,
        tus_id: None,
        upload_metadata: None,
    }
}

/// Counts an upload in flight, and its outcome when it ends (`cancelled` if the client left first).
struct Tracker<'a> {
    state: &'a AppState,
    /// The caller's key name (`passthrough`, `anonymous`): a metrics label and a log field.
    key: Arc<str>,
    webhook_url: Option<String>,
    /// Known once Box has accepted the destination.
    method: std::cell::Cell<Option<UploadMethod>>,
    /// The pacer's admission (`admit_upload`), handed to the pipeline with the upload.
    admission: std::cell::Cell<Option<crate::box_api::Admission>>,
    started: Instant,
    finished: bool,
    /// For the completion event: the request's id, the destination's name and folder once known,
    /// and the file bytes received from the client.
    request_id: Option<String>,
    target: std::cell::RefCell<(Option<String>, Option<String>)>,
    received: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<'a> Tracker<'a> {
    fn start(state: &'a AppState, caller: &Caller, req: &HttpRequest) -> Self {
        state.metrics.uploads_in_flight.inc();
        tracing::Span::current().record("key", &**caller.key_label());
        Self {
            state,
            key: caller.key_label().clone(),
            webhook_url: caller.webhook_url().map(str::to_owned),
            method: Default::default(),
            admission: Default::default(),
            started: Instant::now(),
            finished: false,
            request_id: crate::telemetry::RequestId::of(req),
            target: Default::default(),
            received: Default::default(),
        }
    }

    fn set_target(&self, target: &Target) {
        *self.target.borrow_mut() = match target {
            Target::NewFile { folder_id, name } => (Some(name.clone()), Some(folder_id.clone())),
            Target::NewVersion { name, .. } => (name.clone(), None),
        };
    }

    /// The upload's outcome as a completion event, stored in the outbox before the client is
    /// answered (see `events`).
    async fn emit(&self, result: &Result<UploadOutcome, ApiError>) {
        let key = self.key.to_string();
        let event = match result {
            Ok(outcome) => Event::Completed(completed(outcome, key, self.request_id.clone())),
            Err(err) => {
                let (name, folder_id) = self.target.borrow().clone();
                Event::Failed(Failed {
                    code: err.code.to_owned(),
                    message: err.message.clone(),
                    name,
                    folder_id,
                    bytes_received: self.received.get(),
                    key,
                    request_id: self.request_id.clone(),
                    tus_id: None,
                })
            }
        };
        self.state.events.emit(self.webhook_url.as_deref(), event).await;
    }

    async fn answer(mut self, result: Result<UploadOutcome, ApiError>) -> Result<HttpResponse, ApiError> {
        self.emit(&result).await;
        self.finished = true;
        let m = &self.state.metrics;
        let elapsed = self.started.elapsed();
        match result {
            Ok(outcome) => {
                let method = outcome.method.as_str();
                m.uploads.with_label_values(&[method, "success", &self.key]).inc();
                m.upload_bytes
                    .with_label_values(&[method, &self.key])
                    .inc_by(outcome.size);
                m.upload_duration
                    .with_label_values(&[method])
                    .observe(elapsed.as_secs_f64());
                tracing::info!(method, file_id = outcome.file.id(), size = outcome.size, sha1 = %outcome.sha1_hex,
                    session_id = outcome.session_id, duration_ms = elapsed.as_millis() as u64, "upload landed in Box");
                Ok(HttpResponse::Created().json(json!({
                    "file": outcome.file.0,
                    "upload": {
                        "method": outcome.method,
                        "size": outcome.size,
                        "sha1": outcome.sha1_hex,
                        "part_size": outcome.part_size,
                        "parts": outcome.parts,
                        "session_id": outcome.session_id,
                        "duration_ms": elapsed.as_millis() as u64,
                    }
                })))
            }
            Err(err) => {
                m.uploads
                    .with_label_values(&[self.method_label(), err.outcome(), &self.key])
                    .inc();
                Err(err)
            }
        }
    }
}

impl Tracker<'_> {
    /// `unknown` when the upload failed before Box accepted its destination.
    fn method_label(&self) -> &'static str {
        self.method.get().map_or("unknown", UploadMethod::as_str)
    }
}

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        self.state.metrics.uploads_in_flight.dec();
        if !self.finished {
            self.state
                .metrics
                .uploads
                .with_label_values(&["unknown", "cancelled", &self.key])
                .inc();
            tracing::warn!(
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "client left before the upload finished"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    /// The default minimum rate over the default window, as `client_body` builds it.
    fn default_rate() -> MinRate {
        let d = Settings::default();
        MinRate {
            min_bytes_per_sec: d.client_min_bytes_per_sec,
            window: Duration::from_secs(d.client_rate_window_secs),
        }
    }

    /// Feeds a client sending `bytes` every `every` for `for_secs` seconds of waiting; the window's
    /// verdict, as soon as one comes.
    fn feed(rate: MinRate, bytes: u64, every: Duration, for_secs: u64) -> Result<(), TooSlow> {
        let mut w = RateWindow::new(rate);
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(for_secs) {
            w.record(every, bytes)?;
            waited += every;
        }
        Ok(())
    }

    #[test]
    fn the_defaults_fail_a_trickler_within_one_window() {
        let rate = default_rate();
        // 1 KiB every 5 s (205 B/s): judged at the end of the first 60 s window.
        let verdict = feed(rate, 1024, Duration::from_secs(5), rate.window.as_secs());
        let slow = verdict.expect_err("a trickler is too slow");
        assert_eq!(slow.window, rate.window);
        assert_eq!(slow.received, 12 * 1024);
    }

    #[test]
    fn the_defaults_pass_slow_mobile_links() {
        let rate = default_rate();
        // EDGE on a bad day (10 KB/s), GPRS (5 KB/s), and a link just above the minimum, for an hour.
        for bytes_per_sec in [10_000, 5_000, rate.min_bytes_per_sec + 10] {
            feed(rate, bytes_per_sec / 10, Duration::from_millis(100), 3600)
                .unwrap_or_else(|e| panic!("{bytes_per_sec} B/s refused: {e}"));
        }
        // A stall of half the window, made up by a burst after it, still passes.
        let mut w = RateWindow::new(rate);
        w.record(rate.window / 2, 0).unwrap();
        w.record(rate.window / 2, rate.min_bytes_per_sec * rate.window.as_secs())
            .unwrap();
    }

    #[test]
    fn a_window_starts_empty_after_a_good_one() {
        let rate = MinRate {
            min_bytes_per_sec: 100,
            window: Duration::from_secs(10),
        };
        let mut w = RateWindow::new(rate);
        // A fast first window does not pay for a slow second one.
        w.record(Duration::from_secs(10), 100_000).unwrap();
        assert_eq!(w.left(), rate.window);
        assert!(w.record(Duration::from_secs(10), 999).is_err());
    }

    /// A body fed by the test, chunk by chunk.
    fn channel() -> (
        tokio::sync::mpsc::UnboundedSender<Result<Bytes, PayloadError>>,
        impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        (tx, Box::pin(body))
    }

    /// The clock runs only while the body is awaited: a pause between polls (the gateway waiting for
    /// its budget or for Box) does not count against the client.
    #[tokio::test(start_paused = true)]
    async fn time_between_polls_is_not_the_clients() {
        let (tx, rx) = channel();
        let rate = MinRate {
            min_bytes_per_sec: 1000,
            window: Duration::from_secs(10),
        };
        let mut body = body_deadlines(rx, Duration::from_secs(60), Some(rate));
        // 8000 bytes in the window, a minute apart each: the window sees them arrive at once.
        for _ in 0..4 {
            tx.send(Ok(Bytes::from(vec![0u8; 2000]))).unwrap();
            // The gateway is busy elsewhere for a minute: the bytes were there all along.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(body.next().await.unwrap().is_ok());
        }
        // Now it waits on a client that sends nothing more: the window ends it, before the idle timeout.
        let started = tokio::time::Instant::now();
        let err = body.next().await.unwrap().unwrap_err();
        assert!(matches!(from_payload(err), UploadError::ClientTooSlow { .. }));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_still_comes_first_when_shorter() {
        let (_tx, rx) = channel();
        let rate = MinRate {
            min_bytes_per_sec: 1000,
            window: Duration::from_secs(60),
        };
        let mut body = body_deadlines(rx, Duration::from_secs(5), Some(rate));
        let err = body.next().await.unwrap().unwrap_err();
        assert!(matches!(from_payload(err), UploadError::ClientTimeout));
    }
}
