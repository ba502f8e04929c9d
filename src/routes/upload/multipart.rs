//! A multipart form's head, read before the upload is admitted (its fields are the upload's
//! parameters): the text fields before the file, the file part's filename, and where the file's bytes
//! start, from which its size follows when it is the form's last part (`multipart_scan.rs`).
use actix_multipart::{Field, Multipart};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, LocalBoxStream};
use futures_util::{Stream, StreamExt, TryStreamExt};

use super::multipart_scan::{suffix_len, FileData, HeadScan, Scan};
use crate::error::ApiError;
use crate::pipeline::UploadError;
use crate::routes::client_body::{client_body, from_multipart, from_payload};
use crate::routes::params::{boundary, content_length};
use crate::routes::AppState;

/// Text fields before the file are small; a bigger one is not a parameter.
const MAX_FIELD_BYTES: usize = 64 * 1024;
const MAX_FIELDS: usize = 100;
/// All the text fields before the file together: they are held until the upload ends, outside the
/// memory budget, so their bound is small and fixed (100 fields of 64 KiB each would be 6.4 MiB a
/// request).
const MAX_FIELDS_BYTES: usize = 64 * 1024;
/// How much of a multipart body is looked at to find where the file starts.
const MAX_SCAN_BYTES: usize = 64 * 1024;

/// The file's bytes, as the pipeline reads them.
pub(super) type Body = LocalBoxStream<'static, Result<Bytes, UploadError>>;

/// What comes before the file's bytes.
pub(super) struct FormHead {
    /// The text fields before the file, in order.
    pub fields: Vec<(String, String)>,
    /// The file part's filename.
    pub filename: String,
    /// The file's bytes.
    pub file: Body,
    /// The form the slow path's file `Field` reads through: it must live as long as the upload.
    pub form: Option<Multipart>,
    content_length: Option<u64>,
    /// Where the file's data starts, plus the close delimiter's length (when the scan found it).
    overhead: Option<u64>,
}

impl FormHead {
    /// The file's size from `Content-Length`, assuming it is the form's last part (checked exactly
    /// when the body ends); None when either is unknown.
    pub fn derived_size(&self) -> Result<Option<u64>, ApiError> {
        match (self.content_length, self.overhead) {
            (Some(len), Some(overhead)) if len < overhead => Err(ApiError::bad_request(
                "invalid_multipart",
                "Content-Length is shorter than the form",
            )),
            (Some(len), Some(overhead)) => Ok(Some(len - overhead)),
            _ => Ok(None),
        }
    }
}

/// Reads the text fields up to the first part with a filename. Fields after the file are never read
/// as file bytes: the file part ends at its boundary.
pub(super) async fn read_head(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<FormHead, ApiError> {
    let boundary = boundary(req.headers())?;
    let content_length = content_length(req.headers())?;
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
    let overhead = data_offset.map(|offset| offset as u64 + suffix_len(&boundary));
    Ok(match fast {
        Some((fields, filename, rest)) => {
            let data = FileData::new(stream::iter(rest.into_iter().map(Ok)).chain(payload), &boundary);
            FormHead {
                fields,
                filename,
                file: data.map_err(from_payload).boxed_local(),
                form: None,
                content_length,
                overhead,
            }
        }
        None => {
            let mut form = Multipart::new(
                req.headers(),
                stream::iter(seen.into_iter().map(Ok)).chain(payload),
            );
            let (fields, filename, field) = read_form_head(&mut form).await?;
            FormHead {
                fields,
                filename,
                file: field.map_err(from_multipart).boxed_local(),
                form: Some(form),
                content_length,
                overhead,
            }
        }
    })
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
        Some(Err(e)) => return Err(ApiError::logged(from_payload(e))),
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
            Some(Err(e)) => return Err(ApiError::logged(from_payload(e))),
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

fn multipart_error(err: actix_multipart::MultipartError) -> ApiError {
    ApiError::bad_request(
        "invalid_multipart",
        format!("the multipart body is malformed: {err}"),
    )
}
