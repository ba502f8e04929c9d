//! The malware gate's scanner: uploads streamed through clamd's `INSTREAM` while their parts go to
//! Box, and a typed verdict the commit waits for. Nothing here knows HTTP or Box.
//!
//! The pipeline feeds a scan as a tee beside the parts: `Scanner::start` for an upload of known
//! size, `Scan::push` for each piece of each part as it is cut (the same `Bytes`, never copied),
//! `Scan::finish` for the verdict. The bytes go to clamd from a task of their own
//! (`write_stream`); `push` waits while the scan's queue holds `queue_bytes`, so a slow clamd slows
//! the upload (the pipeline stops reading its body) instead of growing memory. What `push` is given
//! to hold (the part's budget permit) is dropped only once those bytes are written to clamd, so the
//! bytes waiting for clamd stay counted in the memory budget after Box has taken the part.
//!
//! Fail closed: every way a scan can end other than clamd's `OK` is a verdict that is not `Clean`
//! (`Infected`, `Error`, `TooLarge`). clamd scans the file only once its last byte has come (it
//! writes the stream to a temporary file first): the verdict's wait after `finish` grows with the
//! file's size and with clamd's signature database.
mod address;
mod pool;
mod protocol;

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};

pub use address::{AddressError, ClamdAddress};
pub use protocol::MAX_CHUNK_BYTES;

use crate::metrics::GatewayMetrics;
use pool::{Conn, Pool};
use protocol::{Answer, Finding};

/// The largest file ClamAV looks at: 2 GiB − 3 (`INT_MAX - 2`, libclamav's `CL_ENGINE_MAX_FILESIZE`,
/// which caps any larger `MaxFileSize` to it: clamd 1.4 logs "File size limit set to 2147483645
/// bytes"). What lies past it is reported clean unless `AlertExceedsMax` is on
/// (Cisco-Talos/clamav#344, #1030).
pub const CLAMAV_MAX_FILE_BYTES: u64 = i32::MAX as u64 - 2;

#[derive(Debug, Clone)]
pub struct ScannerSettings {
    pub address: ClamdAddress,
    /// Connections to clamd at most, idle ones included: the scans that run at once. A scan that
    /// finds none free within `timeout` fails (`busy`).
    pub max_connections: usize,
    /// The longest clamd may keep a scan waiting at any one step: a free connection and connecting,
    /// each write of the stream, and (plus `min_scan_bytes_per_sec`'s allowance) the verdict after
    /// the last byte. Not the upload's whole time: the client sets the pace of the bytes in between.
    pub timeout: Duration,
    /// The slowest scan waited for: clamd scans a stream only once it has it whole, so the verdict
    /// may come `timeout + size / min_scan_bytes_per_sec` after the last byte (0: `timeout` alone).
    pub min_scan_bytes_per_sec: u64,
    /// Larger files are not scanned (`TooLarge`): at most `CLAMAV_MAX_FILE_BYTES`, and not above
    /// clamd's `StreamMaxLength`.
    pub max_bytes: u64,
    /// Bytes one scan may hold before `push` waits for clamd to take them.
    pub queue_bytes: usize,
    /// How long an idle session connection is kept for the next scan (zero: a connection per scan).
    /// Below clamd's `ReadTimeout` (120 s by default) to spare a PING to a connection clamd closed.
    pub idle: Duration,
}

/// What clamd (or the scanner before it) decided about an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// clamd found `signature` (`…FOUND`); with `AlertExceedsMax` this includes
    /// `Heuristics.Limits.Exceeded.*` (a file clamd could not look at whole).
    Infected {
        signature: String,
    },
    /// The scan did not end with a verdict: fail closed.
    Error(ScanError),
    /// The upload is larger than `max_bytes`: not sent to clamd at all.
    TooLarge {
        size: u64,
        limit: u64,
    },
}

impl Verdict {
    /// The `verdict` label of `gateway_scans_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Infected { .. } => "infected",
            Self::Error(_) => "error",
            Self::TooLarge { .. } => "too_large",
        }
    }

    pub fn is_clean(&self) -> bool {
        matches!(self, Self::Clean)
    }

    /// clamd could not look at the file whole (`MaxFileSize`, `MaxScanSize`, `MaxScanTime`,
    /// `MaxRecursion`...) and, with `AlertExceedsMax`, said so as a finding: not clean, but no
    /// malware found either.
    pub fn is_limits_exceeded(&self) -> bool {
        matches!(self, Self::Infected { signature } if signature.starts_with("Heuristics.Limits.Exceeded"))
    }
}

/// The one-line answer to "was this file scanned?", in the 201 and in `upload.completed`:
/// `{"scanned": true, "verdict": "clean", "engine": "ClamAV 1.4.3/27471/..."}` or
/// `{"scanned": false, "reason": "too_large"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    pub scanned: bool,
    /// `clean` (the only verdict a landed file has) when scanned.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verdict: Option<String>,
    /// clamd's engine and signature database (`VERSION`) when it last answered a ping.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub engine: Option<String>,
    /// Why not scanned: `scanning_off`, `key_exempt` or `too_large`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

impl ScanReport {
    pub fn clean(engine: Option<Arc<str>>) -> Self {
        Self {
            scanned: true,
            verdict: Some("clean".into()),
            engine: engine.map(|e| e.to_string()),
            reason: None,
        }
    }

    /// `reason`: `scanning_off`, `key_exempt` or `too_large`.
    pub fn skipped(reason: &str) -> Self {
        Self {
            scanned: false,
            verdict: None,
            engine: None,
            reason: Some(reason.into()),
        }
    }
}

/// How long the verdict may take after the last byte of a stream of `size` bytes.
fn verdict_wait(timeout: Duration, min_scan_bytes_per_sec: u64, size: u64) -> Duration {
    match min_scan_bytes_per_sec {
        0 => timeout,
        rate => timeout + Duration::from_secs_f64(size as f64 / rate as f64),
    }
}

/// Why a scan ended without a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ScanError {
    pub kind: ErrorKind,
    /// For the log (bounded, escaped: clamd's own words at most 200 characters).
    pub detail: String,
}

impl ScanError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// The `kind` label of `gateway_scan_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// clamd could not be reached (refused, unresolvable, no answer to the connection in time).
    Connect,
    /// Every connection of the pool stayed in use until the deadline.
    Busy,
    /// The connection ended before clamd's answer (clamd stopped, restarted, crashed).
    ConnectionLost,
    /// clamd took longer than `timeout` for one step (a write, the verdict).
    Timeout,
    /// clamd answered something that is no answer of clamd's (garbage, truncated, out of step).
    Protocol,
    /// `INSTREAM size limit exceeded`: the stream was longer than clamd's `StreamMaxLength`.
    SizeLimit,
    /// `COMMAND READ TIMED OUT`: no bytes came for clamd's `ReadTimeout`.
    ClamdTimeout,
    /// Another `… ERROR` answer of clamd's (its temporary file, its memory, its own scan limits).
    ClamdError,
    /// The scan's own task failed (a bug).
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Busy => "busy",
            Self::ConnectionLost => "connection_lost",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::SizeLimit => "size_limit",
            Self::ClamdTimeout => "clamd_timeout",
            Self::ClamdError => "clamd_error",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One per process: the pool of connections to clamd, shared by every upload's scan.
#[derive(Clone)]
pub struct Scanner {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    settings: ScannerSettings,
    metrics: Arc<GatewayMetrics>,
    rt: Handle,
    /// clamd's answer to `VERSION` at the last `ping`: the engine and database that scan, which an
    /// upload's answer names.
    engine: std::sync::Mutex<Option<Arc<str>>>,
}

/// One upload's scan under way. Dropped without `finish`, it is abandoned: its connection is closed
/// without ending the stream (clamd discards what it had) and no verdict is counted.
pub struct Scan {
    /// None once the scan was abandoned for `max_bytes`: the task then closes its connection.
    queue: Option<mpsc::UnboundedSender<Msg>>,
    /// Bytes the queue may still take; closed when the scan has failed.
    room: Arc<Semaphore>,
    room_bytes: usize,
    failed: Arc<OnceLock<ScanError>>,
    task: JoinHandle<Verdict>,
    pushed: u64,
    max_bytes: u64,
    /// Set when `push` went past `max_bytes`: the verdict without asking clamd.
    ended: Option<Verdict>,
    metrics: Arc<GatewayMetrics>,
}

enum Msg {
    Bytes {
        bytes: Bytes,
        _room: OwnedSemaphorePermit,
        _hold: Box<dyn Any + Send>,
    },
    End,
}

/// Bytes gathered into one vectored write: enough to keep syscalls few, few enough that the
/// holds of written bytes go back soon.
const WRITE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// After a failed write, how long clamd's last words (its refusal, sent just before it closed the
/// connection) are waited for: they are already in the socket's buffer if they came at all.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(200);

impl Scanner {
    /// `rt`: the multi-threaded runtime the scans' writers run on (an upload's own task may be on a
    /// single-threaded one).
    pub fn new(settings: ScannerSettings, metrics: Arc<GatewayMetrics>, rt: Handle) -> Self {
        let pool = Pool::new(
            settings.address.clone(),
            settings.max_connections,
            settings.idle,
            metrics.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                pool,
                settings,
                metrics,
                rt,
                engine: std::sync::Mutex::new(None),
            }),
        }
    }

    /// clamd's engine and database (`ClamAV 1.4.3/27471/Sat Nov 22 09:25:02 2025`) as the last
    /// `ping` found them; None before the first that answered.
    pub fn engine(&self) -> Option<Arc<str>> {
        self.inner.engine.lock().expect("engine lock").clone()
    }

    pub fn address(&self) -> &ClamdAddress {
        self.inner.pool.address()
    }

    /// The largest upload this scanner scans.
    pub fn max_bytes(&self) -> u64 {
        self.inner.settings.max_bytes
    }

    /// Bytes one scan holds at most before its `push` waits (plus the piece being pushed).
    pub fn queue_bytes(&self) -> u64 {
        self.inner.settings.queue_bytes as u64
    }

    /// How long the verdict on a file of `size` bytes may take after its last byte: the slowest
    /// pace this scanner waits for, which also bounds a staged file's download.
    pub fn verdict_wait(&self, size: u64) -> Duration {
        let s = &self.inner.settings;
        verdict_wait(s.timeout, s.min_scan_bytes_per_sec, size)
    }

    /// Starts the scan of an upload of `size` bytes. Returns at once: the connection is taken (or
    /// made) by the scan's task while the caller goes on (e.g. creates its Box session), and the
    /// first `push`es wait in the queue meanwhile. Larger than `max_bytes`: `Verdict::TooLarge`
    /// without any contact with clamd (before the upload's first byte is read).
    pub fn start(&self, size: u64) -> Result<Scan, Verdict> {
        let max_bytes = self.inner.settings.max_bytes;
        if size > max_bytes {
            let verdict = Verdict::TooLarge {
                size,
                limit: max_bytes,
            };
            count(&self.inner.metrics, &verdict);
            return Err(verdict);
        }
        let room_bytes = self.inner.settings.queue_bytes.clamp(1, u32::MAX as usize);
        let room = Arc::new(Semaphore::new(room_bytes));
        let failed = Arc::new(OnceLock::new());
        let (queue, rx) = mpsc::unbounded_channel();
        let task = self
            .inner
            .rt
            .spawn(run(self.inner.clone(), rx, room.clone(), failed.clone()));
        Ok(Scan {
            queue: Some(queue),
            room,
            room_bytes,
            failed,
            task,
            pushed: 0,
            max_bytes,
            ended: None,
            metrics: self.inner.metrics.clone(),
        })
    }

    /// Whether clamd answers `PING` on a new connection within the scan timeout (for a readiness
    /// check); sets `gateway_scanner_up`. Then asks clamd's `VERSION` (`engine`), which changes
    /// when freshclam brings a new database.
    pub async fn ping(&self) -> Result<(), ScanError> {
        let result = self
            .ask(protocol::PING, "PING")
            .await
            .and_then(|text| protocol::pong(&text, None));
        self.inner.metrics.scanner_up.set(i64::from(result.is_ok()));
        if result.is_ok() {
            match self
                .ask(protocol::VERSION, "VERSION")
                .await
                .and_then(|t| protocol::version(&t))
            {
                Ok(engine) => *self.inner.engine.lock().expect("engine lock") = Some(engine.into()),
                Err(err) => {
                    tracing::warn!(clamd = %self.address(), error = %err, "clamd did not say its VERSION")
                }
            }
        }
        result
    }

    /// Whether clamd takes a connection, within the scan timeout: what a caller checks before it
    /// fetches bytes to scan from elsewhere (a stopped clamd refuses at once; nothing is sent).
    pub async fn reachable(&self) -> Result<(), ScanError> {
        let address = self.inner.pool.address().clone();
        match timeout(self.inner.settings.timeout, Conn::open_plain(&address)).await {
            Ok(connected) => connected.map(drop),
            Err(_) => Err(ScanError::new(
                ErrorKind::Timeout,
                format!("clamd at {address} took no connection in time"),
            )),
        }
    }

    /// One command outside a session (clamd answers it, then closes the connection), within the
    /// scan timeout: the answer's text.
    async fn ask(&self, command: &'static [u8], name: &'static str) -> Result<Vec<u8>, ScanError> {
        let address = self.inner.pool.address().clone();
        timeout(self.inner.settings.timeout, async move {
            // Outside a session: the same PING the official image's health check sends.
            let mut io = Conn::open_plain(&address).await?;
            io.write_all(command)
                .await
                .map_err(|e| ScanError::new(ErrorKind::ConnectionLost, format!("sending {name}: {e}")))?;
            let Answer { text, .. } = protocol::read_answer(&mut io).await?;
            Ok(text)
        })
        .await
        .unwrap_or_else(|_| {
            Err(ScanError::new(
                ErrorKind::Timeout,
                format!("clamd did not answer {name} in time"),
            ))
        })
    }
}

impl Scan {
    /// Hands `bytes` to the scan; waits while its queue is full (clamd slower than the upload).
    /// `hold` is dropped once these bytes are written to clamd or the scan has ended: pass the
    /// part's memory-budget permit (shared with the part's upload), or `()`.
    ///
    /// `Err`: the scan has ended without a verdict of clamd's (an error, or past `max_bytes`);
    /// `finish` returns the same.
    pub async fn push(&mut self, bytes: Bytes, hold: impl Send + 'static) -> Result<(), Verdict> {
        if let Some(verdict) = &self.ended {
            return Err(verdict.clone());
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.pushed += bytes.len() as u64;
        if self.pushed > self.max_bytes {
            // The task sees its queue closed without an end: the stream is abandoned.
            let verdict = Verdict::TooLarge {
                size: self.pushed,
                limit: self.max_bytes,
            };
            count(&self.metrics, &verdict);
            self.room.close();
            self.queue = None;
            self.ended = Some(verdict.clone());
            return Err(verdict);
        }
        // A piece larger than the whole queue waits until the queue is empty.
        let wanted = bytes.len().min(self.room_bytes) as u32;
        let room = match self.room.clone().acquire_many_owned(wanted).await {
            Ok(room) => room,
            Err(_) => return Err(self.failure()),
        };
        let msg = Msg::Bytes {
            bytes,
            _room: room,
            _hold: Box::new(hold),
        };
        let queue = self
            .queue
            .as_ref()
            .expect("a scan that has not ended has its queue");
        queue.send(msg).map_err(|_| self.failure())
    }

    /// Ends the stream and waits for the verdict: at most `timeout` for the last bytes to go, then
    /// `timeout + size / min_scan_bytes_per_sec` for clamd's answer.
    pub async fn finish(self) -> Verdict {
        if let Some(verdict) = self.ended {
            return verdict;
        }
        // If the task has ended already the message is dropped, and its verdict stands.
        if let Some(queue) = &self.queue {
            let _ = queue.send(Msg::End);
        }
        match self.task.await {
            Ok(verdict) => verdict,
            Err(e) => Verdict::Error(ScanError::new(
                ErrorKind::Internal,
                format!("the scan's task failed: {e}"),
            )),
        }
    }

    /// The error that ended the scan, as its task recorded it.
    fn failure(&self) -> Verdict {
        Verdict::Error(
            self.failed
                .get()
                .cloned()
                .unwrap_or_else(|| ScanError::new(ErrorKind::Internal, "the scan ended without saying why")),
        )
    }
}

/// The scan's task: a connection, the stream, the verdict; counted, and the connection kept for the
/// next scan when the session is still in step.
async fn run(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    room: Arc<Semaphore>,
    failed: Arc<OnceLock<ScanError>>,
) -> Verdict {
    let timeout = inner.settings.timeout;
    let outcome = async {
        let mut lease = inner.pool.lease(Instant::now() + timeout).await?;
        let id = lease.conn.take_id();
        let ended = write_stream(&mut lease.conn, id, &mut rx, timeout, &inner.metrics).await?;
        Ok::<_, ScanError>((lease, id, ended))
    }
    .await;
    let (mut lease, id, (last_byte, size)) = match outcome {
        Ok((lease, id, Some(ended))) => (lease, id, ended),
        // Abandoned: the caller dropped its `Scan`. The lease closes the connection.
        Ok((_, _, None)) => {
            return Verdict::Error(ScanError::new(ErrorKind::Internal, "abandoned"));
        }
        Err(err) => return fail(&inner, &room, &failed, rx, err),
    };
    let wait = verdict_wait(timeout, inner.settings.min_scan_bytes_per_sec, size);
    let answer = match timeout_at(last_byte + wait, protocol::read_answer(&mut lease.conn.io)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => return fail(&inner, &room, &failed, rx, err),
        Err(_) => {
            let err = ScanError::new(
                ErrorKind::Timeout,
                format!("no verdict from clamd within {wait:?} of the last byte ({size} bytes)"),
            );
            return fail(&inner, &room, &failed, rx, err);
        }
    };
    let verdict = match protocol::stream_finding(&answer.text, Some(id)) {
        Ok(Finding::Clean) => Verdict::Clean,
        Ok(Finding::Infected(signature)) => Verdict::Infected { signature },
        Err(err) => return fail(&inner, &room, &failed, rx, err),
    };
    inner
        .metrics
        .scan_latency
        .observe(last_byte.elapsed().as_secs_f64());
    count(&inner.metrics, &verdict);
    inner.metrics.scanner_up.set(1);
    if !answer.trailing {
        inner.pool.give_back(lease);
    }
    verdict
}

/// Records why the scan failed (for `push`), wakes and refuses the pushes waiting for room, drops
/// what was queued (its holds go back), and counts the error.
fn fail(
    inner: &Inner,
    room: &Semaphore,
    failed: &OnceLock<ScanError>,
    rx: mpsc::UnboundedReceiver<Msg>,
    err: ScanError,
) -> Verdict {
    let _ = failed.set(err.clone());
    room.close();
    drop(rx);
    tracing::warn!(clamd = %inner.pool.address(), kind = %err.kind, detail = %err.detail, "scan failed");
    let verdict = Verdict::Error(err);
    count(&inner.metrics, &verdict);
    verdict
}

fn count(metrics: &GatewayMetrics, verdict: &Verdict) {
    metrics.scans.with_label_values(&[verdict.label()]).inc();
    if let Verdict::Error(err) = verdict {
        metrics.scan_errors.with_label_values(&[err.kind.as_str()]).inc();
    }
}

/// Sends `INSTREAM` and the queue's bytes as they come, each write gathering what is queued (up to
/// `WRITE_BATCH_BYTES`) into one vectored write; the end-of-stream chunk goes with the last bytes.
/// `Some((when the last byte was written, the bytes written))`, or `None` when the caller abandoned
/// the scan.
async fn write_stream(
    conn: &mut Conn,
    id: u32,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    step: Duration,
    metrics: &GatewayMetrics,
) -> Result<Option<(Instant, u64)>, ScanError> {
    let mut written = 0;
    let mut wire: Vec<Bytes> = vec![Bytes::from_static(protocol::INSTREAM)];
    // The bytes being written, with their room and holds: dropped once written.
    let mut batch: Vec<Msg> = Vec::new();
    loop {
        let mut ended = false;
        // Waits as long as the upload takes to bring bytes (clamd's ReadTimeout bounds that pause).
        match rx.recv().await {
            None => return Ok(None),
            Some(msg) => batch.push(msg),
        }
        let mut gathered = 0;
        loop {
            match batch.last() {
                Some(Msg::End) => {
                    ended = true;
                    break;
                }
                Some(Msg::Bytes { bytes, .. }) => gathered += bytes.len(),
                None => unreachable!("a message was just pushed"),
            }
            if gathered >= WRITE_BATCH_BYTES {
                break;
            }
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let pieces = batch.iter().filter_map(|m| match m {
            Msg::Bytes { bytes, .. } => Some(bytes.clone()),
            Msg::End => None,
        });
        protocol::frame(pieces, protocol::MAX_CHUNK_BYTES, &mut wire);
        if ended {
            wire.push(Bytes::from_static(protocol::END_OF_STREAM));
        }
        write_all(conn, id, &mut wire, step).await?;
        metrics.scan_bytes.inc_by(gathered as u64);
        written += gathered as u64;
        batch.clear();
        if ended {
            return Ok(Some((Instant::now(), written)));
        }
    }
}

/// Writes `wire` (emptied) within `step`. A failed write may be clamd refusing the stream and
/// closing: its answer says so, and is the error when it came.
async fn write_all(conn: &mut Conn, id: u32, wire: &mut Vec<Bytes>, step: Duration) -> Result<(), ScanError> {
    let mut buf = Pieces::new(std::mem::take(wire));
    match timeout(step, conn.io.write_all_buf(&mut buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let lost = ScanError::new(ErrorKind::ConnectionLost, format!("writing to clamd: {e}"));
            Err(last_words(conn, id).await.unwrap_or(lost))
        }
        Err(_) => Err(ScanError::new(
            ErrorKind::Timeout,
            format!("clamd took no bytes for {step:?}"),
        )),
    }
}

/// clamd's answer if it sent one before closing (its size-limit refusal), as an error.
async fn last_words(conn: &mut Conn, id: u32) -> Option<ScanError> {
    let answer = timeout(LAST_WORDS_WAIT, protocol::read_answer(&mut conn.io))
        .await
        .ok()?
        .ok()?;
    match protocol::stream_finding(&answer.text, Some(id)) {
        Err(err) => Some(err),
        // The stream was not finished: whatever this says, it is no verdict on the upload.
        Ok(_) => Some(ScanError::new(
            ErrorKind::Protocol,
            "clamd answered before the stream ended",
        )),
    }
}

/// A list of `Bytes` as one `Buf`, so a write gathers them (up to 64 slices a syscall).
struct Pieces {
    pieces: std::collections::VecDeque<Bytes>,
}

impl Pieces {
    fn new(pieces: Vec<Bytes>) -> Self {
        Self {
            pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
        }
    }
}

impl bytes::Buf for Pieces {
    fn remaining(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    fn chunk(&self) -> &[u8] {
        self.pieces.front().map_or(&[], |p| &p[..])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, piece) in dst.iter_mut().zip(&self.pieces) {
            *slot = std::io::IoSlice::new(piece);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let front = self.pieces.front_mut().expect("advanced past the end");
            if cnt < front.len() {
                bytes::Buf::advance(front, cnt);
                return;
            }
            cnt -= front.len();
            self.pieces.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn pieces_advance_across_their_boundaries() {
        let mut buf = Pieces::new(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!(buf.remaining(), 5);
        let mut slices = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(buf.chunks_vectored(&mut slices), 2);
        buf.advance(3);
        assert_eq!(buf.chunk(), b"de");
        buf.advance(2);
        assert!(!buf.has_remaining());
    }

    #[test]
    fn the_verdict_may_take_longer_for_larger_files() {
        let t = Duration::from_secs(30);
        assert_eq!(verdict_wait(t, 0, 2_000_000_000), t);
        assert_eq!(verdict_wait(t, 4_000_000, 0), t);
        assert_eq!(
            verdict_wait(t, 4_000_000, 2_000_000_000),
            Duration::from_secs(530)
        );
    }

    #[test]
    fn limit_alerts_are_told_apart_from_malware() {
        let found = |s: &str| Verdict::Infected { signature: s.into() };
        assert!(found("Heuristics.Limits.Exceeded.MaxScanTime").is_limits_exceeded());
        assert!(!found("Win.Test.EICAR_HDB-1").is_limits_exceeded());
        assert!(!Verdict::Clean.is_limits_exceeded());
    }

    /// The pipeline keeps a scan across awaits and may hand it to a task; every upload shares the
    /// scanner.
    #[test]
    fn scans_move_between_tasks_and_the_scanner_is_shared() {
        fn send<T: Send>() {}
        fn shared<T: Send + Sync + Clone>() {}
        send::<Scan>();
        shared::<Scanner>();
    }

    #[test]
    fn the_size_clamav_stops_at() {
        assert_eq!(CLAMAV_MAX_FILE_BYTES, 2_147_483_645);
    }

    #[test]
    fn labels_are_stable() {
        assert_eq!(Verdict::Clean.label(), "clean");
        assert_eq!(
            Verdict::Infected {
                signature: "x".into()
            }
            .label(),
            "infected"
        );
        assert_eq!(Verdict::TooLarge { size: 2, limit: 1 }.label(), "too_large");
        let err = ScanError::new(ErrorKind::SizeLimit, "x");
        assert_eq!(Verdict::Error(err.clone()).label(), "error");
        assert_eq!(err.to_string(), "size_limit: x");
    }
}
