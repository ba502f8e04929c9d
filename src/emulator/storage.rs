//! Bytes on disk. A session's parts are written in place at their offsets in one preallocated file,
//! which the commit renames into the file store: no copy, and RAM per part upload stays at two
//! `WRITE_CHUNK` buffers whatever the part size.
use sha1::{Digest, Sha1};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Size of one positional write; a part upload holds at most two of these.
const WRITE_CHUNK: usize = 1 << 20;

pub struct Storage {
    sessions: PathBuf,
    files: PathBuf,
    tmp: PathBuf,
}

impl Storage {
    pub fn open(root: &Path) -> io::Result<Self> {
        let s = Storage {
            sessions: root.join("sessions"),
            files: root.join("files"),
            tmp: root.join("tmp"),
        };
        for dir in [&s.sessions, &s.files, &s.tmp] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(s)
    }

    /// Sparse until written: `set_len` costs no disk.
    pub fn create_session_file(&self, id: &str, size: u64) -> io::Result<(PathBuf, File)> {
        let path = self.sessions.join(format!("{id}.upload"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.set_len(size)?;
        Ok((path, file))
    }

    pub fn tmp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Moves a finished upload into the file store (same filesystem: a rename).
    pub fn keep_version(&self, from: &Path, file_id: &str, version_id: &str) -> io::Result<PathBuf> {
        let dir = self.files.join(file_id);
        std::fs::create_dir_all(&dir)?;
        let to = dir.join(version_id);
        std::fs::rename(from, &to)?;
        Ok(to)
    }
}

/// The whole-file SHA-1 of a session, folded over its contiguous prefix of stored parts.
pub struct Fold {
    pub hasher: Sha1,
    pub upto: u64,
}

impl Default for Fold {
    fn default() -> Self {
        Fold {
            hasher: Sha1::new(),
            upto: 0,
        }
    }
}

/// Hashes `len` bytes of `file` from `offset` into `hasher`; the part was just written, so this
/// reads the page cache, not the disk.
pub async fn fold_range(file: Arc<File>, hasher: Sha1, offset: u64, len: u64) -> io::Result<Sha1> {
    tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        let mut buf = vec![0u8; WRITE_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(WRITE_CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], offset + done)?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        Ok(hasher)
    })
    .await
    .map_err(io::Error::other)?
}

/// Writes a stream of pieces at increasing offsets, one write in flight while the next buffer fills.
pub struct PositionalWriter {
    file: Arc<File>,
    offset: u64,
    buf: Vec<u8>,
    pending: Option<JoinHandle<io::Result<Vec<u8>>>>,
}

impl PositionalWriter {
    pub fn new(file: Arc<File>, offset: u64) -> Self {
        PositionalWriter {
            file,
            offset,
            buf: Vec::with_capacity(WRITE_CHUNK),
            pending: None,
        }
    }

    pub async fn push(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = WRITE_CHUNK - self.buf.len();
            let n = room.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == WRITE_CHUNK {
                self.flush_buf().await?;
            }
        }
        Ok(())
    }

    pub async fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.flush_buf().await?;
        }
        self.wait_pending().await.map(drop)
    }

    async fn wait_pending(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.pending.take() {
            Some(p) => p.await.map_err(io::Error::other)?.map(Some),
            None => Ok(None),
        }
    }

    async fn flush_buf(&mut self) -> io::Result<()> {
        let mut spare = self.wait_pending().await?.unwrap_or_default();
        spare.clear();
        let buf = std::mem::replace(&mut self.buf, spare);
        let (file, offset) = (self.file.clone(), self.offset);
        self.offset += buf.len() as u64;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            file.write_all_at(&buf, offset)?;
            Ok(buf)
        }));
        Ok(())
    }
}
