//! A body of unknown length, written to a temporary file so its size is known before Box is asked
//! for a session (Box needs `file_size` first). The file is removed when the `Spooled` is dropped.
use std::path::Path;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::UploadError;

pub struct Spooled {
    file: tempfile::NamedTempFile,
    pub size: u64,
}

/// Writes `body` to a new file in `dir`, refusing it past `max_bytes`.
pub async fn spool<S, E>(body: S, dir: &Path, max_bytes: u64) -> Result<Spooled, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<UploadError>,
{
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
        writer
            .write_all(&chunk)
            .await
            .map_err(|e| UploadError::Internal(format!("spool write: {e}")))?;
    }
    writer
        .flush()
        .await
        .map_err(|e| UploadError::Internal(format!("spool write: {e}")))?;
    Ok(Spooled { file, size })
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
