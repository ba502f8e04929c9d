//! A body of unknown length, written to a temporary file so its size is known before Box is asked
//! for a session (Box needs `file_size` first). The file is removed when the `Spooled` is dropped.
//!
//! Bound: bytes in spool files of all uploads together <= `spool_max_total_bytes` (`SpoolSpace`).
//! Each chunk's bytes are reserved *before* they are written, and the reservation is given back only
//! after the file is removed, so the disk never holds more than the cap, however many uploads spool
//! at once. Reserving as the bytes come (not a declared maximum up front) lets many small bodies of
//! unknown size spool side by side; the cost is that a refused body has been partly written (and is
//! removed at once).
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::UploadError;

/// The spool's bytes shared by all uploads, against `spool_max_total_bytes`.
#[derive(Clone)]
pub struct SpoolSpace {
    used: Arc<AtomicU64>,
    total: u64,
    gauge: prometheus::IntGauge,
}

impl SpoolSpace {
    pub fn new(total: u64, gauge: prometheus::IntGauge) -> Self {
        Self {
            used: Arc::default(),
            total,
            gauge,
        }
    }

    /// Bytes reserved now (written, or about to be).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Takes `bytes` if they fit under the cap; all or nothing, so concurrent writers never pass it.
    fn reserve(&self, bytes: u64) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|n| *n <= self.total)
            })
            .is_ok();
        if taken {
            self.gauge.add(bytes as i64);
        }
        taken
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        self.gauge.sub(bytes as i64);
    }
}

/// Bytes of the spool held by one file; given back on drop.
struct Reservation {
    space: SpoolSpace,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.space.release(self.bytes);
    }
}

pub struct Spooled {
    // Fields drop in order: the file is removed before its bytes are given back to the space.
    file: tempfile::NamedTempFile,
    _reserved: Reservation,
    pub size: u64,
}

/// Writes `body` to a new file in `dir`, refusing it past `max_bytes`, or when the spool of all
/// uploads would pass its cap (`SpoolFull`, before the chunk that would pass it is written).
pub async fn spool<S, E>(
    body: S,
    dir: &Path,
    max_bytes: u64,
    space: &SpoolSpace,
) -> Result<Spooled, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<UploadError>,
{
    // Declared before the file, so on an early return the file is removed before the bytes are given back.
    let mut reserved = Reservation {
        space: space.clone(),
        bytes: 0,
    };
    let file = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(dir)
        .map_err(|e| {
            UploadError::Internal(format!("cannot create a spool file in {}: {e}", dir.display()))
        })?;
    let mut writer =
        tokio::fs::File::from_std(file.reopen().map_err(|e| UploadError::Internal(e.to_string()))?);
    let mut size = 0u64;
    let mut body = body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Into::into)?;
        size += chunk.len() as u64;
        if size > max_bytes {
            return Err(UploadError::TooLarge {
                limit: max_bytes,
                what: "spool_max_bytes",
            });
        }
        if !space.reserve(chunk.len() as u64) {
            return Err(UploadError::SpoolFull { total: space.total });
        }
        reserved.bytes += chunk.len() as u64;
        writer
            .write_all(&chunk)
            .await
            .map_err(|e| UploadError::Internal(format!("spool write: {e}")))?;
    }
    writer
        .flush()
        .await
        .map_err(|e| UploadError::Internal(format!("spool write: {e}")))?;
    drop(writer);
    Ok(Spooled {
        file,
        _reserved: reserved,
        size,
    })
}

impl Spooled {
    /// The spooled bytes, read back in 256 KiB chunks.
    pub async fn stream(
        &self,
    ) -> Result<impl Stream<Item = Result<Bytes, UploadError>> + Unpin, UploadError> {
        let file = tokio::fs::File::open(self.file.path())
            .await
            .map_err(|e| UploadError::Internal(format!("spool read: {e}")))?;
        Ok(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
            .map_err(|e| UploadError::Internal(format!("spool read: {e}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn space(total: u64) -> SpoolSpace {
        SpoolSpace::new(total, prometheus::IntGauge::new("s", "s").unwrap())
    }

    fn body(chunks: usize, len: usize) -> impl Stream<Item = Result<Bytes, UploadError>> + Unpin {
        stream::iter((0..chunks).map(move |_| Ok(Bytes::from(vec![7u8; len]))))
    }

    #[tokio::test]
    async fn the_reservation_lives_as_long_as_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = space(1000);
        let spooled = spool(body(4, 100), dir.path(), 1000, &s).await.unwrap();
        assert_eq!((spooled.size, s.used()), (400, 400));
        drop(spooled);
        assert_eq!(s.used(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_body_past_the_shared_cap_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = space(1000);
        let first = spool(body(6, 100), dir.path(), 1000, &s).await.unwrap();
        let second = spool(body(6, 100), dir.path(), 1000, &s).await;
        assert!(matches!(second, Err(UploadError::SpoolFull { total: 1000 })));
        // The refused body's file is gone and its bytes given back; the first one's are kept.
        assert_eq!(s.used(), 600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(first);
        assert_eq!(s.used(), 0);
    }
}
