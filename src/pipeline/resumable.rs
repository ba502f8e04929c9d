//! Resumable uploads: the bytes of one file arrive over many requests (tus PATCHes), possibly on
//! different replicas, and go into one Box upload session.
//!
//! Between requests an upload is a `Resumable` (serializable, kept by the state store) plus the bytes
//! of the part not yet full (`pending`, kept beside it). Each append runs the bytes through the same
//! re-chunker, memory budget and part uploader as a plain upload; a part goes to Box as soon as it is
//! full, before the append returns, so `offset` only counts bytes that are durable: in Box, or in
//! `pending`. Small files (below the chunked threshold) keep all their bytes in `pending` and go up
//! in one direct upload when the last byte is in.
use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::{stream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{
    read_charged, CheckedFields, Gate, Hold, Pipeline, Prepared, Rechunker, ResumableSha1, Route, ScanPlan,
    SessionGuard, TwinSha1, UploadError, UploadOutcome, WholeFile,
};
use crate::box_api::{NewUpload, UploadPart, UploadSession};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resumable {
    pub upload: NewUpload,
    pub expected_sha1: Option<[u8; 20]>,
    /// The Box session; none for a direct upload.
    pub session: Option<UploadSession>,
    /// Bytes that are durable: in Box's parts, then in `pending`.
    pub offset: u64,
    /// The parts Box holds, by offset. After a failed append some may lie past `offset`: when their
    /// bytes come again they are not re-sent.
    pub parts: BTreeMap<u64, UploadPart>,
    /// The whole file's SHA-1 over the bytes before `pending`.
    pub sha1: ResumableSha1,
    /// The whole file's chain at each part boundary up to `offset` (0 excepted: the empty chain), so
    /// the upload can be moved back to a part Box turns out to lack (`rewind`). About 80 bytes a part.
    #[serde(default)]
    pub chains: BTreeMap<u64, ResumableSha1>,
    /// What is done about its malware scan, decided at its creation (records older than the gate:
    /// not scanned).
    #[serde(default)]
    pub scan: ScanPlan,
    /// A chunked upload that is scanned: committed into the staging folder first, then landed where
    /// it goes once clean (`scanned.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

impl Prepared {
    /// Box accepted the destination: from here on the upload lives in the state store, and its
    /// session is aborted by termination or expiry, not when this request ends. Fields given with
    /// `with_fields` are not part of it: the caller keeps them beside it and hands them to
    /// `complete_with_fields`.
    pub fn into_resumable(self) -> Resumable {
        Resumable {
            session: match self.route {
                Route::Direct => None,
                Route::Chunked(guard) => Some(guard.into_session()),
            },
            upload: self.upload,
            expected_sha1: self.expected_sha1,
            offset: 0,
            parts: BTreeMap::new(),
            sha1: ResumableSha1::default(),
            chains: BTreeMap::new(),
            scan: self.scan,
            gate: self.gate,
        }
    }
}

impl Resumable {
    /// How Box receives it: a session's parts, or one direct upload.
    pub fn method(&self) -> super::UploadMethod {
        match self.session {
            Some(_) => super::UploadMethod::Chunked,
            None => super::UploadMethod::Direct,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.offset == self.upload.size
    }

    /// Keeps of `parts` only those Box lists (`listed`, the session's parts as Box has them) and moves
    /// the upload back to the first byte Box lacks, or to the nearest part boundary before it whose
    /// chain is known; the unfinished part's bytes are dropped (the caller stores none). Returns the
    /// new offset.
    pub fn rewind(&mut self, listed: &[UploadPart]) -> u64 {
        self.parts.retain(|at, p| {
            listed.iter().any(|l| {
                l.offset == *at
                    && l.size == p.size
                    && match (&l.sha1, &p.sha1) {
                        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                        _ => true,
                    }
            })
        });
        let Some(part_size) = self.session.as_ref().map(|s| s.part_size) else {
            return self.offset;
        };
        let hole = first_hole(0, &self.parts, part_size, self.upload.size);
        if hole >= self.offset {
            return self.offset;
        }
        let (to, chain) = match self.chains.range(..=hole).next_back() {
            Some((at, chain)) => (*at, chain.clone()),
            None => (0, ResumableSha1::default()),
        };
        self.chains.retain(|at, _| *at <= to);
        self.offset = to;
        self.sha1 = chain;
        to
    }
}

/// The offset rule (the invariant every append and commit keeps): an upload's offset never passes
/// what Box durably holds, plus the stored bytes of the part not yet full. So it is the first byte
/// Box lacks: walking from `from` (a part boundary up to which Box holds everything), part after part
/// while `held` has each one whole. A failed or unsent part is a hole; parts past it stay in `held`
/// (they are not sent again) but do not count.
pub fn first_hole(from: u64, held: &BTreeMap<u64, UploadPart>, part_size: u64, size: u64) -> u64 {
    let mut at = from;
    while at < size {
        match held.get(&at) {
            Some(p) if p.size == part_size.min(size - at) => at += p.size,
            _ => break,
        }
    }
    at
}

/// A part task's outcome: its offset and Box's answer.
type PartDone = (u64, Result<UploadPart, UploadError>);

/// One part's answer: a confirmed part goes into `held`; a failure is returned.
fn collect(
    done: Option<Result<PartDone, tokio::task::JoinError>>,
    held: &mut BTreeMap<u64, UploadPart>,
) -> Result<(), UploadError> {
    match done {
        Some(Ok((at, Ok(part)))) => {
            held.insert(at, part);
            Ok(())
        }
        Some(Ok((_, Err(err)))) => Err(err),
        Some(Err(e)) => Err(UploadError::Internal(format!("part task failed: {e}"))),
        None => Err(UploadError::Internal("no part in flight".into())),
    }
}

impl Pipeline {
    /// What an append to `r` holds of the memory budget: the part it goes on filling (a direct
    /// upload's whole file) reserved in the caller's share, and its unfinished part's `pending_len`
    /// stored bytes paid for, so they are read back from the state store only within the budget.
    pub async fn hold_for(&self, r: &Resumable, pending_len: u64) -> Result<Hold, UploadError> {
        let size = r.upload.size;
        let unit = match &r.session {
            None => size,
            Some(session) => {
                let start = r.offset.saturating_sub(pending_len);
                session.part_size.min(size.saturating_sub(start))
            }
        };
        let mut hold = self.hold();
        hold.reserve_unit(unit).await?;
        hold.prepay(pending_len).await?;
        Ok(hold)
    }

    /// Appends `body` at `r.offset`. On success every byte of `body` is durable. On an error the
    /// upload is left at the first byte Box lacks (see `first_hole`): a part that failed, or was
    /// never sent, is where the client resumes; parts Box holds past it are remembered in `parts`
    /// and not sent again. The bytes of an unfinished part are dropped on an error.
    /// A body that would pass the declared size fails with `SizeMismatch` and changes nothing: its
    /// last part is sent only once the body is seen to end with it.
    /// At the drain's stop, the append stops reading, keeps what Box holds and fails with
    /// `ShuttingDown` (the session stays open: the client resumes, here or on another replica).
    ///
    /// Every byte read (`pending`'s included) is held in `hold` (`hold_for`) until it is in Box or the
    /// append ends. A direct upload whose last byte came answers its whole file, to land from
    /// memory (`complete`): its bytes need not be stored first, and `pending` is left as it was.
    pub async fn append<S, E>(
        &self,
        r: &mut Resumable,
        pending: &mut Bytes,
        hold: &mut Hold,
        body: S,
    ) -> Result<Option<WholeFile>, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<UploadError>,
    {
        let size = r.upload.size;
        let start = r.offset - pending.len() as u64;
        let mut body = Rechunker::new(stream::iter([Ok(pending.clone())]).chain(body));
        let Some(session) = r.session.clone() else {
            // Direct: the whole file is held until its last byte (it is below the chunked threshold).
            hold.reserve_unit(size).await?;
            let part = read_charged(&mut body, size, |_| (), hold).await?;
            if (part.len as u64) < size {
                *pending = concat(&part.chunks);
                r.offset = pending.len() as u64;
                return Ok(None);
            }
            if !body.is_at_end().await.map_err(Into::<UploadError>::into)? {
                return Err(too_long(size));
            }
            r.offset = size;
            return Ok(Some(WholeFile {
                part,
                permit: hold.take(),
            }));
        };
        let part_size = session.part_size;
        let concurrency = self.settings.part_concurrency.max(1);
        // The whole file's chain goes on from the stored state; each part's digest beside it, in one
        // pass (parts start at multiples of the part size, so both chains stay block-aligned).
        let mut digests = TwinSha1::resume(r.sha1.clone());
        // The whole file's chain at each part boundary this append reached: wherever the upload is
        // left, its chain is the one at that boundary.
        let mut chains = BTreeMap::from([(start, r.sha1.clone())]);
        let mut offset = start;
        let mut in_flight: JoinSet<PartDone> = JoinSet::new();
        // The parts of this append Box confirmed (or already held, with the same bytes).
        let mut held = BTreeMap::new();
        let mut overran = false;
        // Ok: the body ended; its bytes past the last full part are the new `pending`.
        let read = async {
            loop {
                if offset == size {
                    return match body.is_at_end().await.map_err(Into::<UploadError>::into)? {
                        true => Ok(Bytes::new()),
                        false => {
                            overran = true;
                            Err(too_long(size))
                        }
                    };
                }
                // Same bound as a plain upload: at most `part_concurrency` parts filling or in flight,
                // each holding its bytes of the budget from before it is filled. A part that failed
                // ends the read: what follows it cannot count.
                while in_flight.len() >= concurrency {
                    collect(in_flight.join_next().await, &mut held)?;
                }
                while let Some(done) = in_flight.try_join_next() {
                    collect(Some(done), &mut held)?;
                }
                let len = part_size.min(size - offset);
                hold.reserve_unit(len).await?;
                // Hashed as the chunks arrive, like a plain upload's; a part that does not fill (the
                // request ends, or breaks off) leaves the chains as they were, and its bytes stay in
                // the hold until the append ends (they are stored as the unfinished part).
                let before = digests.clone();
                let part = match read_charged(&mut body, len, |c| digests.update(c), hold).await {
                    Ok(part) if part.len as u64 == len => part,
                    short => {
                        digests = before;
                        return Ok(concat(&short?.chunks));
                    }
                };
                // The last part goes to Box only once the body is known to end with it: Box's parts
                // cannot be taken back, and an overrunning body must change nothing.
                if offset + len == size && !body.is_at_end().await.map_err(Into::<UploadError>::into)? {
                    overran = true;
                    return Err(too_long(size));
                }
                let permit = std::sync::Arc::new(hold.take());
                let part_sha1 = digests.finish_part();
                chains.insert(offset + len, digests.clone().into_whole());
                let known = r.parts.get(&offset).cloned();
                let upload = self.upload_part(session.clone(), size, offset, part, part_sha1, permit, known);
                let at = offset;
                in_flight.spawn_on(async move { (at, upload.await) }.in_current_span(), &self.rt);
                offset += len;
            }
        };
        let read: Result<Bytes, UploadError> = tokio::select! {
            biased;
            () = self.stop.cancelled() => Err(UploadError::ShuttingDown),
            read = read => read,
        };

        let mut failed = None;
        if matches!(read, Err(UploadError::ShuttingDown)) {
            // The drain's stop: parts already answered count; the others are cut (a part Box got
            // anyway is found by its 416 when its bytes come again).
            while let Some(done) = in_flight.try_join_next() {
                failed = failed.or(collect(Some(done), &mut held).err());
            }
            in_flight.shutdown().await;
        }
        while let Some(done) = in_flight.join_next().await {
            failed = failed.or(collect(Some(done), &mut held).err());
        }
        // Every part Box confirmed is remembered, even past a hole: it is not sent again.
        r.parts.extend(held.iter().map(|(at, p)| (*at, p.clone())));
        if overran {
            return Err(too_long(size));
        }
        // The offset rule, in this one place: the upload stands at the first byte Box lacks, counting
        // from `start` (everything before it is in Box: the rule held when this append began); the
        // bytes of the unfinished part count only when every part before them is in Box.
        let reached = first_hole(start, &held, part_size, size);
        let (result, rest) = match (read, failed) {
            (Ok(rest), None) if reached == offset => (Ok(()), rest),
            (Ok(_), Some(err)) | (Err(err), _) => (Err(err), Bytes::new()),
            (Ok(_), None) => (
                Err(UploadError::Internal(format!(
                    "parts from {reached} are not in Box although none failed"
                ))),
                Bytes::new(),
            ),
        };
        if result.is_err() && reached == start {
            // Nothing of this append is in Box: the upload stays as it was, its stored unfinished
            // part included (it is still durable).
            return result.map(|()| None);
        }
        r.sha1 = chains
            .get(&reached)
            .cloned()
            .expect("the chain is known at every part boundary this append reached");
        r.chains.retain(|at, _| *at <= reached);
        r.chains
            .extend(chains.into_iter().filter(|(at, _)| *at > 0 && *at <= reached));
        r.offset = reached + rest.len() as u64;
        *pending = rest;
        result.map(|()| None)
    }

    /// Lands a complete upload: the commit (with the whole file's SHA-1), or the direct upload of its
    /// whole file (`file`, as the append that brought its last byte answered it). A commit whose
    /// `parts_mismatch` outlasts `parts_mismatch_window` means Box lacks a part: the session's parts
    /// are listed, `r` is moved back to the first hole (`rewind`) and the answer is `Rewound` (the
    /// caller keeps the upload; the client resends from there). On another error the caller aborts
    /// the session (`abort_resumable`).
    pub async fn complete(
        &self,
        r: &mut Resumable,
        file: Option<WholeFile>,
    ) -> Result<UploadOutcome, UploadError> {
        self.complete_with_fields(r, file, None).await
    }

    /// `complete`, then the fields applied as a plain upload's are (`Prepared::with_fields`): the
    /// caller keeps them beside the upload between requests (`CheckedFields` is serializable).
    ///
    /// A scanned upload: a direct-size one's whole file (`file`) is scanned before its direct
    /// upload; a chunked one (with a `gate`) must have been committed into the staging folder first
    /// (`commit_staged`, whose outcome the caller keeps), and lands now if clamd finds it clean.
    pub async fn complete_with_fields(
        &self,
        r: &mut Resumable,
        file: Option<WholeFile>,
        fields: Option<CheckedFields>,
    ) -> Result<UploadOutcome, UploadError> {
        let fields = fields.filter(|f| !f.is_empty());
        if r.session.is_none() {
            let file = file.ok_or_else(|| {
                UploadError::Internal("a direct upload was to land without its bytes".into())
            })?;
            let mut hasher = Sha1::new();
            for chunk in file.part.chunks.iter() {
                hasher.update(chunk);
            }
            return self
                .upload_direct(
                    &r.upload,
                    r.expected_sha1,
                    file,
                    hasher.finalize().into(),
                    fields,
                    r.scan,
                )
                .await;
        }
        if r.gate.is_some() {
            let landed = self.land_staged(r, fields).await;
            if landed.is_ok() {
                // Landed: its file is no staged file any more, which nothing must delete.
                if let Some(gate) = r.gate.as_mut() {
                    gate.staged_file_id = None;
                }
            }
            return landed;
        }
        let report = self.scan_report(r.scan, None)?;
        self.commit_resumable(r, fields, report).await
    }

    /// A scanned chunked upload's commit into the staging folder (under its unique name): its file
    /// there is kept in its `gate` (`staged_file_id`), for `complete_with_fields` to scan and land.
    /// Nothing to do when it was committed already (its last request is sent again).
    pub async fn commit_staged(&self, r: &mut Resumable) -> Result<(), UploadError> {
        if r.gate.as_ref().is_none_or(|g| g.staged_file_id.is_some()) {
            return Ok(());
        }
        let unscanned = crate::scan::ScanReport::skipped(super::Unscanned::Off.reason());
        let staged = self.commit_resumable(r, None, unscanned).await?;
        let id = staged
            .file
            .id()
            .ok_or_else(|| UploadError::Internal("the staged file has no id".into()))?
            .to_owned();
        if let Some(gate) = r.gate.as_mut() {
            gate.staged_file_id = Some(id);
        }
        Ok(())
    }

    /// The commit of a complete chunked upload (its session's parts, with the whole file's SHA-1).
    /// A commit whose `parts_mismatch` outlasts `parts_mismatch_window` means Box lacks a part: the
    /// session's parts are listed, `r` is moved back to the first hole (`rewind`) and the answer is
    /// `Rewound` (the caller keeps the upload; the client resends from there).
    async fn commit_resumable(
        &self,
        r: &mut Resumable,
        fields: Option<CheckedFields>,
        report: crate::scan::ScanReport,
    ) -> Result<UploadOutcome, UploadError> {
        let Some(session) = r.session.clone() else {
            return Err(UploadError::Internal(
                "a direct upload has no session to commit".into(),
            ));
        };
        let parts = r.parts.values().cloned().collect();
        let sha1 = r.sha1.clone().finalize();
        match self
            .finish_chunked(
                &r.upload,
                r.expected_sha1,
                &session,
                None,
                sha1,
                parts,
                fields,
                report,
            )
            .await
        {
            Ok((outcome, recovered)) => {
                if recovered {
                    self.abort_resumable(r, "recovered").await;
                }
                Ok(outcome)
            }
            Err(UploadError::Box(err)) if err.code() == Some("parts_mismatch") => {
                let client = self.client.clone();
                let listed = self
                    .on_rt(async move { client.list_parts(&session).await })
                    .await?
                    .map_err(|_| UploadError::Box(err))?;
                match r.rewind(&listed) {
                    offset if offset < r.upload.size => {
                        tracing::warn!(offset, "Box lacks parts of a resumable upload: moved it back");
                        Err(UploadError::Rewound { offset })
                    }
                    // Box's answers contradict each other: its failure, not the gateway's (502).
                    _ => Err(UploadError::Box(crate::box_api::BoxError::protocol(
                        "commit",
                        "Box lists every part yet answers parts_mismatch",
                    ))),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Aborts the upload's Box session, if it has one (termination, expiry, a failed commit), and
    /// deletes its staged file if it was committed into the staging folder and never landed.
    pub async fn abort_resumable(&self, r: &Resumable, reason: &'static str) {
        if let Some(staged) = r.gate.as_ref().and_then(|g| g.staged_file_id.as_deref()) {
            self.delete_staged(staged).await;
        }
        if let Some(session) = &r.session {
            SessionGuard::new(
                self.client.clone(),
                session.clone(),
                self.rt.clone(),
                self.metrics.clone(),
            )
            .abort(reason)
            .await;
        }
    }
}

fn too_long(size: u64) -> UploadError {
    UploadError::SizeMismatch {
        declared: size,
        received: size + 1,
        derived: false,
    }
}

fn concat(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [one] => one.clone(),
        chunks => Bytes::from(chunks.concat()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::box_api::{SessionEndpoints, Target};

    fn part(offset: u64, size: u64, sha1: &str) -> UploadPart {
        UploadPart {
            part_id: format!("p{offset}"),
            offset,
            size,
            sha1: Some(sha1.into()),
        }
    }

    fn held(parts: &[(u64, u64)]) -> BTreeMap<u64, UploadPart> {
        parts.iter().map(|&(o, s)| (o, part(o, s, "aa"))).collect()
    }

    #[test]
    fn the_offset_stops_at_the_first_part_box_lacks() {
        // 4 parts of 10 and a last of 5 (45 bytes).
        let (ps, size) = (10, 45);
        assert_eq!(first_hole(0, &held(&[]), ps, size), 0);
        assert_eq!(first_hole(0, &held(&[(0, 10), (10, 10)]), ps, size), 20);
        // A hole at 10 (the part refused at the concurrency limit): the parts past it do not count.
        assert_eq!(
            first_hole(0, &held(&[(0, 10), (20, 10), (30, 10), (40, 5)]), ps, size),
            10
        );
        // The first part failed: nothing counts.
        assert_eq!(first_hole(0, &held(&[(10, 10), (20, 10)]), ps, size), 0);
        // Everything, the short last part included.
        assert_eq!(
            first_hole(
                0,
                &held(&[(0, 10), (10, 10), (20, 10), (30, 10), (40, 5)]),
                ps,
                size
            ),
            45
        );
        // From an append's start (Box holds everything before it).
        assert_eq!(first_hole(20, &held(&[(20, 10), (40, 5)]), ps, size), 30);
        assert_eq!(first_hole(45, &held(&[]), ps, size), 45);
        // A part of the wrong size is not the part that belongs there.
        assert_eq!(first_hole(0, &held(&[(0, 10), (10, 7)]), ps, size), 10);
        assert_eq!(first_hole(40, &held(&[(40, 10)]), ps, size), 40);
    }

    fn resumable(offset: u64, parts: BTreeMap<u64, UploadPart>) -> Resumable {
        let url = String::from("http://box/s");
        let mut chains = BTreeMap::new();
        for at in [10, 20, 30, 40] {
            let mut chain = ResumableSha1::default();
            chain.update(&vec![7; at as usize]);
            chains.insert(at, chain);
        }
        Resumable {
            upload: NewUpload {
                target: Target::NewFile {
                    folder_id: "0".into(),
                    name: "a".into(),
                },
                size: 45,
                content_created_at: None,
                content_modified_at: None,
            },
            expected_sha1: None,
            session: Some(UploadSession {
                id: "s".into(),
                part_size: 10,
                total_parts: 5,
                session_endpoints: SessionEndpoints {
                    upload_part: url.clone(),
                    commit: url.clone(),
                    abort: url.clone(),
                    list_parts: url,
                    status: None,
                },
                session_expires_at: None,
            }),
            offset,
            parts,
            sha1: ResumableSha1::default(),
            chains,
            scan: ScanPlan::default(),
            gate: None,
        }
    }

    #[test]
    fn a_commit_that_finds_a_hole_moves_the_upload_back_to_it() {
        let all = held(&[(0, 10), (10, 10), (20, 10), (30, 10), (40, 5)]);
        // Box lost the part at 20: the upload goes back to 20, with the chain of the 20 bytes before.
        let mut r = resumable(45, all.clone());
        let listed: Vec<_> = all.values().filter(|p| p.offset != 20).cloned().collect();
        assert_eq!(r.rewind(&listed), 20);
        assert_eq!(r.offset, 20);
        let mut want = ResumableSha1::default();
        want.update(&[7; 20]);
        assert_eq!(r.sha1, want);
        assert!(
            !r.parts.contains_key(&20) && r.parts.contains_key(&30),
            "the others are kept"
        );
        assert!(r.chains.keys().all(|at| *at <= 20));
        // A part Box holds with other bytes than the record's is a hole too.
        let mut r = resumable(45, all.clone());
        let mut listed: Vec<_> = all.values().cloned().collect();
        listed[0].sha1 = Some("bb".into());
        assert_eq!(r.rewind(&listed), 0);
        assert_eq!(r.sha1, ResumableSha1::default());
        // No chain stored at the hole: back to the nearest boundary before it that has one.
        let mut r = resumable(45, all.clone());
        r.chains.remove(&30);
        let listed: Vec<_> = all.values().filter(|p| p.offset != 30).cloned().collect();
        assert_eq!(r.rewind(&listed), 20);
        // Box holds everything: nothing moves.
        let mut r = resumable(45, all.clone());
        let listed: Vec<_> = all.values().cloned().collect();
        assert_eq!(r.rewind(&listed), 45);
        assert_eq!(r.offset, 45);
    }
}
