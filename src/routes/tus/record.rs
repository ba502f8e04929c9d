//! A tus upload in the state store: one small record (`Record`), its unfinished part kept apart, the
//! lock that keeps two requests from writing it (`take_lock`, a `Lease`), and the fenced writes made
//! while that lock is held (`save`, `forget`).
use std::time::Duration;

use actix_web::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::access::{Caller, Owner};
use crate::error::ApiError;
use crate::pipeline::{CheckedFields, Resumable};
use crate::routes::AppState;
use crate::state::keys::{tus_pending, tus_record};
use crate::state::{now_secs, Fenced, FencedWrite, Lease, LeaseLost, Lock};

/// A record outlives its expiry by this much, so the sweeper still finds it to abort its session.
const GRACE: Duration = Duration::from_secs(3600);
/// `Retry-After` of 503 `tus_storage_full`: other uploads' parts fill and leave the store meanwhile.
const STORAGE_FULL_RETRY_SECS: u64 = 10;

/// One upload in the state store (the bytes of the unfinished part are stored apart, under
/// `keys::tus_pending`). The JSON names are the stored form: records written by an older gateway
/// are read the same.
#[derive(Serialize, Deserialize)]
pub(super) struct Record {
    /// `Owner`'s stored form: only the same owner sees the upload.
    pub owner: String,
    /// The caller's key label (key name, `passthrough`, `anonymous`) for logs and metrics.
    #[serde(default)]
    pub caller: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// When it was created (Unix ms), for `gateway_upload_duration_seconds`; None in older records.
    #[serde(default)]
    pub created_ms: Option<u64>,
    /// `Upload-Metadata` as sent, for HEAD.
    pub metadata: String,
    #[serde(rename = "upload")]
    pub resumable: Resumable,
    /// Once the file landed in Box.
    pub file_id: Option<String>,
    /// The length of the unfinished part stored apart (checked when it is read back).
    #[serde(default)]
    pub pending_len: u64,
    /// The unfinished part as it was read, so a save that did not change it does not write it again.
    #[serde(skip)]
    pub loaded_pending: Bytes,
    /// Read from an old record that carried it inline: the next save stores it apart.
    #[serde(skip)]
    pub pending_inline: bool,
    /// Once the upload failed for good (its commit, or the direct upload, was refused): what HEAD
    /// and PATCH answer from then on, on any replica, until DELETE or expiry.
    #[serde(default)]
    pub failed: Option<Failure>,
    /// The fields that land with the file, checked at creation, applied when the upload completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<CheckedFields>,
    /// An upload by path: its folder path below the caller's root, for the completion event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Once landed: whether it was scanned for malware (HEAD and the last PATCH say it in
    /// `Upload-Scan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<crate::scan::ScanReport>,
}

/// Where an append writes: the upload, its owner, and the lock its writes are fenced by.
#[derive(Clone, Copy)]
pub(super) struct TusWrite<'a> {
    pub state: &'a AppState,
    pub caller: &'a Caller,
    pub lock: &'a Lock,
    pub id: &'a str,
}

/// Why an upload failed for good: the answer its last PATCH got.
#[derive(Serialize, Deserialize)]
pub(super) struct Failure {
    /// The gateway's error code of that answer (`box_timeout`, `digest_mismatch`, ...).
    pub code: String,
    pub message: String,
}

impl Record {
    /// A new upload's record, owned by `caller`, its session prepared.
    pub fn new(caller: &Caller, expires_at: u64, metadata: String, resumable: Resumable) -> Self {
        Self {
            owner: caller.owner().to_string(),
            caller: caller.key_label().to_string(),
            expires_at,
            created_ms: Some(crate::state::now_ms()),
            metadata,
            resumable,
            file_id: None,
            pending_len: 0,
            loaded_pending: Bytes::new(),
            pending_inline: false,
            failed: None,
            fields: None,
            path: None,
            scan: None,
        }
    }
}

/// The record's JSON behind its length. (Records written before the unfinished part was stored
/// apart carry it after the JSON; `decode` still reads them.)
fn encode(record: &Record) -> Result<Vec<u8>, ApiError> {
    let meta = serde_json::to_vec(record).map_err(|e| internal(format!("encode: {e}")))?;
    let mut out = Vec::with_capacity(4 + meta.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    Ok(out)
}

/// The record, and the unfinished part an old record carries inline (empty for new ones).
pub(super) fn decode(bytes: Vec<u8>) -> Result<(Record, Bytes), ApiError> {
    let bytes = Bytes::from(bytes);
    let bad = || internal("a stored upload cannot be read".into());
    let len = u32::from_be_bytes(bytes.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let meta = bytes.get(4..4 + len).ok_or_else(bad)?;
    let record = serde_json::from_slice(meta).map_err(|_| bad())?;
    Ok((record, bytes.slice(4 + len..)))
}

/// What can be read of a record that does not decode: its owner and upload, if they are intact.
pub(super) fn salvage(bytes: &[u8]) -> (Option<String>, Option<Resumable>) {
    let meta = bytes
        .get(..4)
        .and_then(|h| <[u8; 4]>::try_from(h).ok())
        .map(|h| u32::from_be_bytes(h) as usize)
        .and_then(|len| bytes.get(4..4 + len));
    let Some(value) = meta.and_then(|m| serde_json::from_slice::<serde_json::Value>(m).ok()) else {
        return (None, None);
    };
    let owner = value.get("owner").and_then(|o| o.as_str()).map(str::to_owned);
    let upload = value
        .get("upload")
        .and_then(|u| serde_json::from_value::<Resumable>(u.clone()).ok());
    (owner, upload)
}

pub(super) fn internal(why: String) -> ApiError {
    tracing::error!(error = %why, "tus state");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the gateway failed; see its logs",
    )
}

pub(super) fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such upload (or it expired)",
    )
}

/// The upload's record, if it exists and belongs to the caller (another caller's upload is not found
/// either: 404, not 403, so an id says nothing to whoever does not own it). Nothing is written, no
/// lock is taken, and its unfinished part is not read: a stranger's request touches nothing.
pub(super) async fn load_record(state: &AppState, id: &str, caller: &Caller) -> Result<Record, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(not_found());
    }
    let bytes = state.store.get(&tus_record(id)).await?.ok_or_else(not_found)?;
    let (mut record, inline) = decode(bytes)?;
    if record.owner != caller.owner().to_string() || record.expires_at <= now_secs() {
        return Err(not_found());
    }
    if !inline.is_empty() {
        record.pending_len = inline.len() as u64;
        record.loaded_pending = inline;
        record.pending_inline = true;
    }
    Ok(record)
}

/// The upload's unfinished part, read once: only by a PATCH whose checks passed, its bytes already
/// taken from the memory budget (`Pipeline::hold_for`).
pub(super) async fn load_pending(state: &AppState, id: &str, record: &mut Record) -> Result<Bytes, ApiError> {
    if record.pending_len > 0 && record.loaded_pending.is_empty() {
        let pending = state
            .store
            .get_pending(&tus_pending(id))
            .await?
            .map(Bytes::from)
            .unwrap_or_default();
        if pending.len() as u64 != record.pending_len {
            return Err(internal(format!(
                "upload {id}: its unfinished part has {} bytes, its record says {}",
                pending.len(),
                record.pending_len
            )));
        }
        record.loaded_pending = pending;
    }
    Ok(record.loaded_pending.clone())
}

/// A write of the upload's record and unfinished part, the part counted under `owner`'s accounts
/// (none known: the store uncounts a removed part from the accounts stored with it).
fn fenced_write(
    state: &AppState,
    id: &str,
    owner: Option<&str>,
    value: Option<Vec<u8>>,
    ttl: Duration,
    pending: Option<Bytes>,
) -> FencedWrite {
    FencedWrite {
        key: tus_record(id),
        value,
        ttl,
        pending_key: tus_pending(id),
        pending,
        max_pending_bytes: state.tus.max_pending_bytes,
        pending_accounts: owner.map(|o| Owner::parse(o).accounts()).unwrap_or_default(),
        max_pending_bytes_per_account: state.tus.max_pending_bytes_per_key,
    }
}

/// Saves the record and its unfinished part (only if it changed), while `lock` is held. When the
/// part does not fit in `tus_max_pending_bytes` (503 `tus_storage_full`), or in the owner's
/// `tus_max_pending_bytes_per_key` (429 `too_many_pending_bytes`), it is dropped: the record is saved
/// with its offset at the part's start (so HEAD never claims bytes the gateway does not hold).
pub(super) async fn save(
    state: &AppState,
    lock: &Lock,
    id: &str,
    record: &mut Record,
    pending: &Bytes,
) -> Result<(), ApiError> {
    let ttl = Duration::from_secs(record.expires_at.saturating_sub(now_secs())) + GRACE;
    let unchanged = !record.pending_inline
        && pending.len() == record.loaded_pending.len()
        && (pending.is_empty() || pending.as_ptr() == record.loaded_pending.as_ptr());
    let new_pending = (!unchanged).then(|| pending.clone());
    let before = (record.pending_len, record.resumable.offset);
    record.pending_len = pending.len() as u64;
    let owner = Some(record.owner.as_str());
    let write = fenced_write(state, id, owner, Some(encode(record)?), ttl, new_pending);
    let full = match state.store.put_fenced(lock, write).await? {
        Fenced::Saved => {
            record.loaded_pending = pending.clone();
            record.pending_inline = false;
            return Ok(());
        }
        Fenced::LockLost => {
            (record.pending_len, record.resumable.offset) = before;
            state.metrics.tus_refused.with_label_values(&["lock_lost"]).inc();
            return Err(lock_lost());
        }
        full => full,
    };
    let reason = match full {
        Fenced::Full => "storage_full",
        _ => "too_many_pending_bytes",
    };
    state.metrics.tus_refused.with_label_values(&[reason]).inc();
    record.resumable.offset -= pending.len() as u64;
    record.pending_len = 0;
    let write = fenced_write(state, id, owner, Some(encode(record)?), ttl, Some(Bytes::new()));
    match state.store.put_fenced(lock, write).await? {
        Fenced::LockLost => return Err(lock_lost()),
        _ => record.loaded_pending = Bytes::new(),
    }
    let offset = record.resumable.offset;
    Err(match full {
        Fenced::Full => ApiError {
            retry_after_secs: Some(STORAGE_FULL_RETRY_SECS),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tus_storage_full",
                format!(
                    "the gateway holds as many unfinished parts as it may (tus_max_pending_bytes); the bytes after offset {offset} were not kept: ask HEAD and send them again later"
                ),
            )
        },
        // The caller's own unfinished parts fill its share: waiting does not help, finishing them does.
        _ => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pending_bytes",
            format!(
                "this caller's unfinished parts take all it may keep (tus_max_pending_bytes_per_key, {} bytes, its links' included); the bytes after offset {offset} were not kept: finish or DELETE another upload, or send whole parts, then send them again",
                state.tus.max_pending_bytes_per_key
            ),
        ),
    })
}

/// 409 `upload_locked`: this request lost the upload's lock, so another may be writing it.
fn lock_lost() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "upload_locked",
        "this request lost the upload's lock (another request may be writing it); nothing more of it was kept: ask HEAD for the offset",
    )
}

/// Removes the upload's record and unfinished part, while `lock` is held, and stops counting it
/// among `owner`'s open uploads (and in the sweeper's schedule).
pub(super) async fn forget(
    state: &AppState,
    lock: &Lock,
    id: &str,
    owner: Option<&str>,
) -> Result<(), ApiError> {
    let write = fenced_write(state, id, owner, None, Duration::ZERO, Some(Bytes::new()));
    if state.store.put_fenced(lock, write).await? == Fenced::LockLost {
        return Err(lock_lost());
    }
    if let Some(owner) = owner {
        state.store.close_upload(owner, id).await?;
    }
    state.store.unschedule(id).await.map_err(ApiError::from)
}

/// The upload's lock: 409 `upload_locked` while another request holds it. Taken only for an upload
/// whose owner was checked first (`load_record`), so a stranger can never hold an owner's upload.
pub(super) async fn take_lock(state: &AppState, id: &str) -> Result<Lease, ApiError> {
    Lease::take(&state.store, &tus_record(id), state.tus.lock_ttl)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "upload_locked",
                "another request is writing this upload; ask HEAD for its offset when it is done",
            )
        })
}

/// The sweeper's lock on an upload: None while a request writes it (the next sweep takes it).
pub(super) async fn try_lock(state: &AppState, id: &str) -> Result<Option<Lease>, ApiError> {
    Ok(Lease::take(&state.store, &tus_record(id), state.tus.lock_ttl).await?)
}

/// Runs `work` while keeping the upload's lock alive; when the lock is lost (it expired, or another
/// took it), `work` is stopped where it is (dropped: its parts in flight are cancelled, and it saves
/// nothing) and the answer is 409 `upload_locked`.
pub(super) async fn while_locked<T>(
    state: &AppState,
    lease: &Lease,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match lease.while_held(work).await {
        Ok(out) => out,
        Err(LeaseLost) => {
            state.metrics.tus_refused.with_label_values(&["lock_lost"]).inc();
            Err(lock_lost())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::box_api::{NewUpload, Target};

    #[test]
    fn records_round_trip_without_their_pending_bytes() {
        let record = Record {
            owner: "k".into(),
            caller: "k".into(),
            pending_len: 0,
            loaded_pending: Bytes::new(),
            pending_inline: false,
            expires_at: 7,
            created_ms: Some(5),
            metadata: String::new(),
            resumable: Resumable {
                upload: NewUpload {
                    target: Target::NewFile {
                        folder_id: "0".into(),
                        name: "a".into(),
                    },
                    size: 10,
                    content_created_at: None,
                    content_modified_at: None,
                },
                expected_sha1: None,
                session: None,
                offset: 3,
                parts: Default::default(),
                sha1: Default::default(),
                chains: Default::default(),
                scan: crate::pipeline::ScanPlan::Scan,
                gate: Some(crate::pipeline::Gate {
                    destination: crate::pipeline::Destination::Path {
                        root: "0".into(),
                        folder: crate::pipeline::FolderPath::new(vec!["Scans".into(), "2026".into()]),
                        create: true,
                        name: "a".into(),
                    },
                    on_conflict: crate::pipeline::OnConflict::Rename,
                    staged_file_id: Some("77".into()),
                }),
            },
            file_id: None,
            failed: None,
            fields: None,
            path: Some("Scans/2026".into()),
            scan: None,
        };
        let (back, inline) = decode(encode(&record).unwrap()).unwrap();
        assert_eq!((back.owner.as_str(), back.resumable.offset), ("k", 3));
        assert_eq!(back.path.as_deref(), Some("Scans/2026"));
        // A staged upload keeps where it lands and its staged file across replicas.
        let gate = back.resumable.gate.as_ref().unwrap();
        assert_eq!(gate.staged_file_id.as_deref(), Some("77"));
        assert_eq!(
            gate.reported_target(),
            Target::NewFile {
                folder_id: "0".into(),
                name: "a".into()
            }
        );
        assert_eq!(back.resumable.scan, crate::pipeline::ScanPlan::Scan);
        assert!(inline.is_empty(), "the unfinished part is stored apart");
        // A record of the previous layout, its unfinished part inline, is still read.
        let mut old = encode(&record).unwrap();
        old.extend_from_slice(b"abc");
        assert_eq!(&decode(old).unwrap().1[..], b"abc");
        assert!(decode(vec![0, 0]).is_err());
        // What the sweeper can still read of a damaged record: its owner and its session.
        let meta = serde_json::to_vec(&record).unwrap();
        let mut damaged = (meta.len() as u32).to_be_bytes().to_vec();
        damaged.extend_from_slice(&meta);
        let (owner, upload) = salvage(&damaged);
        assert_eq!(owner.as_deref(), Some("k"));
        assert_eq!(upload.unwrap().offset, 3);
        assert!(matches!(salvage(b"\xff\xff"), (None, None)));
        // The stored form keeps its names (records of older gateways, the sweeper's salvage).
        let json: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(json["upload"]["offset"], 3);
        // A record written before `created_ms` reads as None.
        let mut older = json.clone();
        older.as_object_mut().unwrap().remove("created_ms");
        let older: Record = serde_json::from_value(older).unwrap();
        assert_eq!(older.created_ms, None);
    }
}
