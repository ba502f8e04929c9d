//! Connections to clamd, kept in `IDSESSION` so one carries scan after scan.
//!
//! Why a session: without one clamd answers one command and closes the connection, so every scan
//! would pay a connect (and, to a clamd in another pod, a network round trip or two) before its first
//! byte. In a session the connection stays; before it is used again a `PING` shows it is still open
//! (clamd closes a session that stays silent past its `ReadTimeout`, 120 s by default, and the PING
//! restarts that clock), so a stale one is dropped before the stream starts, never in the middle of
//! it. The pool's size also bounds the scans at once: clamd's receiving thread watches at most
//! `MaxQueue` (default 100) connections, idle session connections included, and stops accepting
//! beyond that.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout_at;

use super::protocol::{self, Answer};
use super::{ClamdAddress, ErrorKind, ScanError};
use crate::metrics::GatewayMetrics;

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One connection in a session.
pub struct Conn {
    pub io: Box<dyn Io>,
    /// The id clamd will put on the next command's answer.
    next_id: u32,
    idle_since: Instant,
}

impl Conn {
    /// Connects and opens a session (clamd answers nothing to `IDSESSION`).
    pub async fn open(address: &ClamdAddress) -> Result<Self, ScanError> {
        let mut io = Self::open_plain(address).await?;
        io.write_all(protocol::IDSESSION).await.map_err(|e| {
            ScanError::new(
                ErrorKind::Connect,
                format!("opening a session with clamd at {address}: {e}"),
            )
        })?;
        Ok(Self {
            io,
            next_id: 1,
            idle_since: Instant::now(),
        })
    }

    /// A connection without a session: clamd answers one command on it, then closes it.
    pub async fn open_plain(address: &ClamdAddress) -> Result<Box<dyn Io>, ScanError> {
        let connect = |e: std::io::Error| {
            ScanError::new(
                ErrorKind::Connect,
                format!("connecting to clamd at {address}: {e}"),
            )
        };
        Ok(match address {
            ClamdAddress::Tcp { host, port } => {
                let stream = TcpStream::connect((ClamdAddress::tcp_host(host), *port))
                    .await
                    .map_err(connect)?;
                // The end-of-stream chunk is 4 bytes: Nagle's algorithm would hold it until the
                // last data is acknowledged (up to a delayed ACK, 40 ms) before clamd starts to
                // scan. Writes are gathered into large vectored writes instead.
                stream.set_nodelay(true).map_err(connect)?;
                Box::new(stream)
            }
            ClamdAddress::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(connect)?),
        })
    }

    /// The id of the command about to be sent.
    pub fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub async fn ping(&mut self) -> Result<(), ScanError> {
        self.io
            .write_all(protocol::PING)
            .await
            .map_err(|e| ScanError::new(ErrorKind::ConnectionLost, format!("sending PING: {e}")))?;
        let id = self.take_id();
        let Answer { text, trailing } = protocol::read_answer(&mut self.io).await?;
        protocol::pong(&text, Some(id))?;
        if trailing {
            return Err(ScanError::new(ErrorKind::Protocol, "clamd sent more than PONG"));
        }
        Ok(())
    }
}

/// The connections: at most `max` at once, idle ones included.
pub struct Pool {
    address: ClamdAddress,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Conn>>,
    /// An idle connection older than this is closed instead of reused (zero: none is kept).
    max_idle: std::time::Duration,
    metrics: Arc<GatewayMetrics>,
}

/// A connection lent to one scan, and its place in the pool (given back on drop).
pub struct Lease {
    pub conn: Conn,
    _slot: OwnedSemaphorePermit,
    _in_use: InUse,
}

/// Counts a lent connection in `gateway_scanner_connections_in_use` while it lives.
struct InUse(Arc<GatewayMetrics>);

impl InUse {
    fn new(metrics: &Arc<GatewayMetrics>) -> Self {
        metrics.scanner_connections_in_use.inc();
        Self(metrics.clone())
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.scanner_connections_in_use.dec();
    }
}

impl Pool {
    pub fn new(
        address: ClamdAddress,
        max: usize,
        max_idle: std::time::Duration,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        metrics.scanner_connections_max.set(max as i64);
        Self {
            address,
            slots: Arc::new(Semaphore::new(max.max(1))),
            idle: Mutex::new(Vec::new()),
            max_idle,
            metrics,
        }
    }

    pub fn address(&self) -> &ClamdAddress {
        &self.address
    }

    /// A connection that answered just now: an idle one that still PINGs, else a new one. Waiting
    /// for a place and connecting together end at `deadline`.
    pub async fn lease(&self, deadline: tokio::time::Instant) -> Result<Lease, ScanError> {
        let slot = timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                ScanError::new(
                    ErrorKind::Busy,
                    "every connection to clamd was in use until the scan's deadline",
                )
            })?
            .expect("the pool's semaphore is never closed");
        let conn = loop {
            // The most recently used first: the likeliest to be open. Past `max_idle` it is closed,
            // and so are all below it (older still).
            let next = self.idle.lock().expect("pool lock").pop();
            let Some(mut conn) = next else {
                break self.connect(deadline).await?;
            };
            if conn.idle_since.elapsed() > self.max_idle {
                self.idle.lock().expect("pool lock").clear();
                continue;
            }
            match timeout_at(deadline, conn.ping()).await {
                Ok(Ok(())) => break conn,
                // Closed by clamd meanwhile (its ReadTimeout, a restart): try the next one.
                Ok(Err(_)) => continue,
                Err(_) => {
                    return Err(ScanError::new(
                        ErrorKind::Timeout,
                        "clamd did not answer PING before the scan's deadline",
                    ))
                }
            }
        };
        Ok(Lease {
            conn,
            _slot: slot,
            _in_use: InUse::new(&self.metrics),
        })
    }

    async fn connect(&self, deadline: tokio::time::Instant) -> Result<Conn, ScanError> {
        let opened = timeout_at(deadline, Conn::open(&self.address))
            .await
            .unwrap_or_else(|_| {
                Err(ScanError::new(
                    ErrorKind::Connect,
                    format!(
                        "connecting to clamd at {} took past the scan's deadline",
                        self.address
                    ),
                ))
            });
        self.metrics.scanner_up.set(i64::from(opened.is_ok()));
        opened
    }

    /// Keeps the connection of a scan that ended with a verdict, for the next scan.
    pub fn give_back(&self, lease: Lease) {
        if self.max_idle.is_zero() {
            return;
        }
        let mut conn = lease.conn;
        conn.idle_since = Instant::now();
        self.idle.lock().expect("pool lock").push(conn);
    }
}
