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
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{
    join, Pipeline, Prepared, Rechunker, ResumableSha1, Route, SessionGuard, TwinSha1, UploadError,
    UploadOutcome,
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
}

impl Prepared {
    /// Box accepted the destination: from here on the upload lives in the state store, and its
    /// session is aborted by termination or expiry, not when this request ends.
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
        }
    }
}

impl Resumable {
    pub fn is_complete(&self) -> bool {
        self.offset == self.upload.size
    }
}

impl Pipeline {
    /// Appends `body` at `r.offset`. On success every byte of `body` is durable. On an error the
    /// upload is left where its bytes are durable: where it was, or, when the body broke off after
    /// some parts went to Box, after those parts (the bytes of a part not yet full are dropped).
    /// A body that would pass the declared size fails with `SizeMismatch` and changes nothing.
    pub async fn append<S, E>(
        &self,
        r: &mut Resumable,
        pending: &mut Bytes,
        body: S,
    ) -> Result<(), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<UploadError>,
    {
        let size = r.upload.size;
        let start = r.offset - pending.len() as u64;
        let mut body = Rechunker::new(stream::iter([Ok(pending.clone())]).chain(body));
        let Some(session) = r.session.clone() else {
            // Direct: the whole file is held until its last byte (it is below the chunked threshold).
            let _permit = self.budget.acquire(size).await?;
            let part = body.next_part((size + 1) as usize).await.map_err(Into::into)?;
            if part.len as u64 > size {
                return Err(too_long(size));
            }
            *pending = concat(&part.chunks);
            r.offset = pending.len() as u64;
            return Ok(());
        };
        let concurrency = self.settings.part_concurrency.max(1);
        // The whole file's chain goes on from the stored state; each part's digest beside it, in one
        // pass (parts start at multiples of the part size, so both chains stay block-aligned).
        let mut digests = TwinSha1::resume(r.sha1.clone());
        let mut offset = start;
        let mut in_flight = JoinSet::new();
        let mut done = Vec::new();
        // Every part of this append is in Box once `in_flight` is drained; the bytes left are the
        // new `pending` (Ok), or there was an error (the bytes of an unfinished part are lost).
        let cut: Result<Bytes, UploadError> = async {
            loop {
                if offset == size {
                    return match body.is_at_end().await.map_err(Into::into)? {
                        true => Ok(Bytes::new()),
                        false => Err(too_long(size)),
                    };
                }
                // Same bound as a plain upload: at most `part_concurrency` parts filling or in flight,
                // each holding its bytes of the budget from before it is filled.
                while in_flight.len() >= concurrency {
                    done.push(join(in_flight.join_next().await)?);
                }
                let len = session.part_size.min(size - offset);
                let permit = self.budget.acquire(len).await?;
                // Hashed as the chunks arrive, like a plain upload's; a part that does not fill (the
                // request ends, or breaks off) leaves the chains as they were.
                let before = digests.clone();
                let part = match body.next_part_seen(len as usize, |c| digests.update(c)).await {
                    Ok(part) if part.len as u64 == len => part,
                    short => {
                        digests = before;
                        return Ok(concat(&short.map_err(Into::into)?.chunks));
                    }
                };
                let part_sha1 = digests.finish_part();
                let known = r.parts.get(&offset).cloned();
                in_flight.spawn_on(
                    self.upload_part(session.clone(), size, offset, part, part_sha1, permit, known)
                        .in_current_span(),
                    &self.rt,
                );
                offset += len;
            }
        }
        .await;
        let mut failed = None;
        while let Some(result) = in_flight.join_next().await {
            match join(Some(result)) {
                Ok(part) => done.push(part),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        for part in done {
            r.parts.insert(part.offset, part);
        }
        let sha1 = digests.into_whole();
        match (cut, failed) {
            // A part did not make it: the append counts for nothing (its other parts are remembered).
            (_, Some(err)) => Err(err),
            (Ok(rest), None) => {
                r.sha1 = sha1;
                r.offset = offset + rest.len() as u64;
                *pending = rest;
                Ok(())
            }
            (Err(err), None) => {
                if offset > start {
                    r.sha1 = sha1;
                    r.offset = offset;
                    *pending = Bytes::new();
                }
                Err(err)
            }
        }
    }

    /// Lands a complete upload: the commit (with the whole file's SHA-1), or the direct upload of the
    /// held bytes. On an error the caller aborts the session (`abort_resumable`).
    pub async fn complete(&self, r: &Resumable, pending: Bytes) -> Result<UploadOutcome, UploadError> {
        match &r.session {
            None => {
                let prepared = Prepared {
                    upload: r.upload.clone(),
                    expected_sha1: r.expected_sha1,
                    route: Route::Direct,
                };
                self.send(prepared, stream::iter([Ok::<_, UploadError>(pending)]))
                    .await
            }
            Some(session) => {
                let parts = r.parts.values().cloned().collect();
                let sha1 = r.sha1.clone().finalize();
                let (outcome, recovered) = self
                    .finish_chunked(&r.upload, r.expected_sha1, session, sha1, parts)
                    .await?;
                if recovered {
                    self.abort_resumable(r, "recovered").await;
                }
                Ok(outcome)
            }
        }
    }

    /// Aborts the upload's Box session, if it has one (termination, expiry, a failed commit).
    pub async fn abort_resumable(&self, r: &Resumable, reason: &'static str) {
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
