//! Upload a part (streamed to its offset in the session file) and list parts.
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::{Endpoint, FaultAction};
use super::super::state::{PartView, Session};
use super::super::storage::PositionalWriter;
use super::super::Shared;
use super::body::{drain, shaped, store_then, Body, Shaping};
use super::sessions::open_session_mut;
use super::{commit, gate, header_str, ConnId};
use actix_web::http::Version;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::fs::File;
use std::sync::Arc;

pub async fn upload(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Reply {
    let _flight = InFlight::enter(&shared, &req);
    let (gate, mut body) = match gate(&shared, &req, Some(Endpoint::UploadPart), true).await {
        Ok(g) => {
            let cut = match g.action {
                Some(FaultAction::CutConnection { after_bytes }) => Some(after_bytes),
                _ => None,
            };
            let body = shaped(payload, Shaping::new(&req, g.bandwidth, cut));
            (g, body)
        }
        Err(e) => {
            drain(&mut shaped(payload, Shaping::new(&req, None, None))).await;
            return Err(e);
        }
    };
    let result = receive(&req, &shared, &path, &mut body).await;
    let result = store_then(&req, result, gate.action.as_ref(), "part");
    if result.is_err() {
        drain(&mut body).await;
        shared.lock().counters.part_uploads_rejected += 1;
    }
    result
}

/// Counts part uploads in flight, in all and per connection, for `max_parts_in_flight` and
/// `max_parts_in_flight_per_connection`.
struct InFlight(web::Data<Shared>, Option<u64>);

impl InFlight {
    fn enter(shared: &web::Data<Shared>, req: &HttpRequest) -> Self {
        let conn = req.conn_data::<ConnId>().map(|c| c.0);
        let mut state = shared.lock();
        let state = &mut *state;
        let c = &mut state.counters;
        c.parts_in_flight += 1;
        c.max_parts_in_flight = c.max_parts_in_flight.max(c.parts_in_flight);
        if req.version() == Version::HTTP_2 {
            c.part_uploads_http2 += 1;
        }
        if let Some(id) = conn {
            let on_conn = state.parts_per_connection.entry(id).or_default();
            *on_conn += 1;
            c.max_parts_in_flight_per_connection = c.max_parts_in_flight_per_connection.max(*on_conn);
        }
        InFlight(shared.clone(), conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.counters.parts_in_flight -= 1;
        if let Some(id) = self.1 {
            if let Some(n) = state.parts_per_connection.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    state.parts_per_connection.remove(&id);
                }
            }
        }
    }
}

/// `Content-Range: bytes first-last/total`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub total: u64,
}

impl ContentRange {
    pub fn parse(v: &str) -> Option<Self> {
        let rest = v.trim().strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let r = ContentRange {
            first: first.parse().ok()?,
            last: last.parse().ok()?,
            total: total.parse().ok()?,
        };
        (r.first <= r.last).then_some(r)
    }

    fn size(&self) -> u64 {
        self.last - self.first + 1
    }
}

fn range_error(message: String) -> BoxApiError {
    BoxApiError::new(416, "requested_range_not_satisfiable", message)
}

async fn receive(req: &HttpRequest, shared: &web::Data<Shared>, session_id: &str, body: &mut Body) -> Reply {
    let range = header_str(req, "content-range")
        .and_then(ContentRange::parse)
        .ok_or_else(|| {
            BoxApiError::bad_request("Content-Range must be 'bytes <first>-<last>/<file_size>'")
        })?;
    let digest = super::digest::PartDigest::parse(header_str(req, "digest").unwrap_or(""))?;
    let sha1 = digest
        .sha1
        .ok_or_else(|| BoxApiError::bad_request("Missing Digest header with sha="))?;
    let reservation = Reservation::take(shared, session_id, range)?;
    let hashing = Hashing {
        sha1: !shared.config.trusts_digests(),
        sha256: digest.sha256.is_some() && !shared.config.trusts_digests(),
    };
    let store = !shared.config.discard_content;
    let (got_sha1, got_sha256) = stream_part(body, reservation.file.clone(), range, hashing, store).await?;
    let got_sha1 = got_sha1.unwrap_or(sha1);
    let got_sha256 = got_sha256.or(digest.sha256);
    if got_sha1 != sha1 || digest.sha256.is_some_and(|d| Some(d) != got_sha256) {
        return Err(BoxApiError::new(
            400,
            "bad_digest",
            "The digest of the part does not match the Digest header",
        ));
    }
    let part = reservation.store(hex::encode(got_sha1))?;
    if !shared.config.trusts_digests() {
        commit::spawn_fold(shared.clone().into_inner(), session_id.to_owned());
    }
    Ok(HttpResponse::Ok().json(json!({ "part": part })))
}

/// Holds a part's offset while its bytes arrive, so a second upload of the range is refused.
struct Reservation {
    shared: web::Data<Shared>,
    session_id: String,
    range: ContentRange,
    file: Arc<File>,
}

impl Reservation {
    fn take(shared: &web::Data<Shared>, session_id: &str, range: ContentRange) -> Result<Self, BoxApiError> {
        let mut state = shared.lock();
        let s = open_session_mut(&mut state, session_id)?;
        check_range(s, range)?;
        if let Some(existing) = s.parts.get(&range.first) {
            return Err(BoxApiError::new(
                416,
                "range_overlaps_existing_part",
                "Part overlaps with a previously uploaded part",
            )
            .with_context(json!({ "conflicting_part": existing })));
        }
        if !s.uploading.insert(range.first) {
            return Err(BoxApiError::new(
                409,
                "session_conflict",
                "Another upload of this part is in progress",
            ));
        }
        Ok(Reservation {
            shared: shared.clone(),
            session_id: session_id.to_owned(),
            range,
            file: s.file.clone(),
        })
    }

    fn store(&self, sha1: String) -> Result<PartView, BoxApiError> {
        let mut state = self.shared.lock();
        let s = open_session_mut(&mut state, &self.session_id)?;
        let part = PartView {
            part_id: format!("{:08X}", fastrand::u32(..)),
            offset: self.range.first,
            size: self.range.size(),
            sha1,
        };
        s.parts.insert(part.offset, part.clone());
        state.counters.part_uploads_accepted += 1;
        Ok(part)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(s) = self.shared.lock().sessions.get_mut(&self.session_id) {
            s.uploading.remove(&self.range.first);
        }
    }
}

/// Parts are aligned to `part_size`, exactly `part_size` long except the last, which ends the file.
fn check_range(s: &Session, r: ContentRange) -> Result<(), BoxApiError> {
    if r.total != s.file_size {
        return Err(range_error(format!(
            "Content-Range total {} differs from the session's file_size {}",
            r.total, s.file_size
        )));
    }
    if r.first % s.part_size != 0 {
        return Err(range_error(format!(
            "Part offset {} is not a multiple of the part size {}",
            r.first, s.part_size
        )));
    }
    if r.last >= s.file_size {
        return Err(range_error(format!(
            "Part ends at {} past the file's last byte {}",
            r.last,
            s.file_size - 1
        )));
    }
    let expected = s.part_size.min(s.file_size - r.first);
    if r.size() != expected {
        return Err(range_error(format!(
            "Part at {} must be {} bytes, not {}",
            r.first,
            expected,
            r.size()
        )));
    }
    Ok(())
}

/// Which digests a part upload computes (`trust_digests` turns both off for benchmarks).
#[derive(Clone, Copy)]
struct Hashing {
    sha1: bool,
    sha256: bool,
}

type PartDigests = (Option<[u8; 20]>, Option<[u8; 32]>);

/// One SHA-1 (plus SHA-256 when asked) and one positional write per byte; nothing else is kept.
async fn stream_part(
    body: &mut Body,
    file: Arc<File>,
    range: ContentRange,
    hashing: Hashing,
    store: bool,
) -> Result<PartDigests, BoxApiError> {
    let mut writer = PositionalWriter::new(file, range.first);
    let mut sha1 = hashing.sha1.then(Sha1::new);
    let mut sha256 = hashing.sha256.then(Sha256::new);
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| BoxApiError::bad_request(format!("Reading the body failed: {e}")))?;
        received += chunk.len() as u64;
        if received > range.size() {
            return Err(BoxApiError::bad_request("Body is longer than its Content-Range"));
        }
        if let Some(h) = sha1.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = sha256.as_mut() {
            h.update(&chunk);
        }
        if store {
            writer
                .push(&chunk)
                .await
                .map_err(|e| BoxApiError::internal(e.to_string()))?;
        }
    }
    if received != range.size() {
        return Err(BoxApiError::bad_request(format!(
            "Body has {received} bytes, Content-Range says {}",
            range.size()
        )));
    }
    writer
        .finish()
        .await
        .map_err(|e| BoxApiError::internal(e.to_string()))?;
    Ok((
        sha1.map(|h| h.finalize().into()),
        sha256.map(|h| h.finalize().into()),
    ))
}

#[derive(Deserialize)]
pub struct ListQuery {
    offset: Option<u64>,
    limit: Option<u64>,
}

/// `offset` counts parts, not bytes; Box caps `limit` at 1000 and rejects offsets past 10,000.
pub async fn list(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
    shared: web::Data<Shared>,
) -> Reply {
    gate(&shared, &req, None, true).await?;
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 || offset > 10_000 {
        return Err(BoxApiError::bad_request(
            "offset must be <= 10000 and limit within 1..=1000",
        ));
    }
    let mut state = shared.lock();
    let s = open_session_mut(&mut state, &path)?;
    let entries: Vec<&PartView> = s
        .parts
        .values()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "total_count": s.parts.len(),
        "offset": offset,
        "limit": limit,
        "entries": entries,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses_inclusive_ranges() {
        let r = ContentRange::parse("bytes 8388608-16777215/445856194").unwrap();
        assert_eq!(
            (r.first, r.last, r.total, r.size()),
            (8388608, 16777215, 445856194, 8388608)
        );
        for bad in ["bytes 5-4/10", "bytes=0-1/2", "bytes 0-1", "bytes a-1/2", ""] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }
}
