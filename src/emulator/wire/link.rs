//! One connection shaped like a WAN link: bytes from the client cross a link of `bytes_per_sec` and
//! reach the emulator `rtt` after they were sent; bytes to the client leave at `bytes_per_sec`.
//!
//! The whole round trip is put on the way in. What the shaping is for only sees round trips: an
//! HTTP/1.1 request is answered one RTT after it was sent, and an HTTP/2 sender waits one RTT between
//! filling the window the emulator advertises and the `WINDOW_UPDATE` that frees it. TCP's own
//! congestion control (slow start) is not modelled: each connection runs at its cap from the start.
use super::LinkShape;
use bytes::{BufMut, Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::either::Either;

/// The link moves bytes in pieces of this size, so the cap is kept to within one piece.
const PIECE_BYTES: usize = 16 << 10;

/// How far ahead of the clock a capped link may run: tokio's timers tick in milliseconds, and a
/// 16 KiB piece takes less than that at tens of MB/s, so sleeping for every piece would cap the link
/// below its rate. Over any span the link moves at most `rate × (span + SLACK)`.
const SLACK: Duration = Duration::from_millis(4);

/// Bytes held between the socket and the server when no cap is set, like a TCP receive window. With a
/// cap it is twice the bandwidth-delay product, so the link, not this buffer, sets the pace.
const UNCAPPED_WINDOW_BYTES: u64 = 4 << 20;

/// A connection: the bare socket when nothing is shaped (no cost), else a shaped link.
pub type Link = Either<TcpStream, Box<Shaped>>;

pub fn link(stream: TcpStream, shape: LinkShape) -> Link {
    if shape.rtt.is_zero() && shape.bytes_per_sec.is_none() {
        return Either::Left(stream);
    }
    let (read, write) = stream.into_split();
    let window = match shape.bytes_per_sec {
        Some(rate) => (2.0 * rate as f64 * shape.rtt.as_secs_f64()) as u64,
        None => UNCAPPED_WINDOW_BYTES,
    };
    let pieces = (window / PIECE_BYTES as u64).clamp(16, 4096) as usize;
    let (tx, rx) = mpsc::channel(pieces);
    // Reads on while the server is busy, as the network does; the channel's bound is the window.
    tokio::spawn(carry_in(read, tx, shape));
    Either::Right(Box::new(Shaped {
        arrivals: rx,
        next: None,
        arrival_wait: Box::pin(sleep_until(Instant::now())),
        write,
        send_wait: Box::pin(sleep_until(Instant::now())),
        rate: shape.bytes_per_sec,
        send_free_at: Instant::now(),
        send_start: None,
    }))
}

/// Bytes that reach the server at `at`; an empty piece is the client's end of stream.
type Arrival = (Instant, io::Result<Bytes>);

pub struct Shaped {
    arrivals: mpsc::Receiver<Arrival>,
    next: Option<Arrival>,
    arrival_wait: Pin<Box<Sleep>>,
    write: OwnedWriteHalf,
    send_wait: Pin<Box<Sleep>>,
    rate: Option<u64>,
    /// When the link towards the client has sent what it was given so far.
    send_free_at: Instant,
    /// When the piece being written started across the link (set until it is written).
    send_start: Option<Instant>,
}

fn transfer_time(bytes: usize, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate as f64)
}

/// The client-to-emulator direction: stamps each piece with the moment it arrives.
async fn carry_in(mut read: OwnedReadHalf, tx: mpsc::Sender<Arrival>, shape: LinkShape) {
    let mut free_at = Instant::now();
    let mut buf = BytesMut::new();
    loop {
        if shape.bytes_per_sec.is_some() && free_at > Instant::now() + SLACK {
            sleep_until(free_at - SLACK).await;
        }
        buf.reserve(PIECE_BYTES);
        let mut room = (&mut buf).limit(PIECE_BYTES);
        let read = tokio::select! {
            r = read.read_buf(&mut room) => r,
            // The server dropped the connection: stop holding the socket open.
            _ = tx.closed() => return,
        };
        let now = Instant::now();
        let (piece, end) = match read {
            Ok(0) => (Ok(Bytes::new()), true),
            Ok(n) => {
                if let Some(rate) = shape.bytes_per_sec {
                    free_at = free_at.max(now) + transfer_time(n, rate);
                }
                (Ok(buf.split().freeze()), false)
            }
            Err(e) => (Err(e), true),
        };
        let at = free_at.max(now) + shape.rtt;
        if tx.send((at, piece)).await.is_err() || end {
            return;
        }
    }
}

impl AsyncRead for Shaped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.next.is_none() {
                // None: the carrier ended after an end of stream or error it already passed on.
                match ready!(this.arrivals.poll_recv(cx)) {
                    Some(arrival) => {
                        this.arrival_wait.as_mut().reset(arrival.0);
                        this.next = Some(arrival);
                    }
                    None => return Poll::Ready(Ok(())),
                }
            }
            ready!(this.arrival_wait.as_mut().poll(cx));
            let Some((at, piece)) = this.next.take() else {
                continue;
            };
            let mut bytes = piece?;
            if bytes.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = bytes.len().min(buf.remaining());
            buf.put_slice(&bytes.split_to(n));
            if !bytes.is_empty() {
                this.next = Some((at, Ok(bytes)));
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for Shaped {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(rate) = this.rate else {
            return Pin::new(&mut this.write).poll_write(cx, data);
        };
        // A piece reaches the client once it has crossed the link: when the link is free, plus its
        // own transfer time (as `carry_in` stamps the other way).
        let piece = &data[..data.len().min(PIECE_BYTES)];
        let start = *this
            .send_start
            .get_or_insert_with(|| this.send_free_at.max(Instant::now()));
        let crossed = start + transfer_time(piece.len(), rate);
        if crossed > Instant::now() + SLACK {
            this.send_wait.as_mut().reset(crossed - SLACK);
            ready!(this.send_wait.as_mut().poll(cx));
        }
        let n = ready!(Pin::new(&mut this.write).poll_write(cx, piece))?;
        this.send_start = None;
        this.send_free_at = start + transfer_time(n, rate);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair: the client's end, and the server's end behind a link of `shape`.
    async fn pair(shape: LinkShape) -> (TcpStream, Link) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, link(server, shape))
    }

    // Lower bounds only: a loaded machine may make the link slower, never faster.

    const RATE: u64 = 2_000_000;
    const CAPPED: LinkShape = LinkShape {
        rtt: Duration::ZERO,
        bytes_per_sec: Some(RATE),
    };

    #[tokio::test]
    async fn bytes_arrive_one_round_trip_after_they_were_sent() {
        let rtt = Duration::from_millis(60);
        let (mut client, mut server) = pair(LinkShape {
            rtt,
            bytes_per_sec: None,
        })
        .await;
        let sent = Instant::now();
        client.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(sent.elapsed() >= rtt, "arrived after {:?}", sent.elapsed());
    }

    #[tokio::test]
    async fn a_capped_link_keeps_to_its_rate_and_delivers_every_byte_in_order() {
        let (mut client, mut server) = pair(CAPPED).await;
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let sent = Instant::now();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                client.write_all(&data).await.unwrap();
                client.shutdown().await.unwrap();
            })
        };
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(
            got == data,
            "{} bytes came, not the {} sent",
            got.len(),
            data.len()
        );
        let floor = transfer_time(data.len(), RATE).saturating_sub(SLACK);
        assert!(
            sent.elapsed() >= floor,
            "{:?} is faster than the cap ({floor:?})",
            sent.elapsed()
        );
    }

    #[tokio::test]
    async fn answers_leave_at_the_capped_rate() {
        let (mut client, mut server) = pair(CAPPED).await;
        let data = vec![7u8; 400_000];
        let sent = Instant::now();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        server.write_all(&data).await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap(), data.len());
        let floor = transfer_time(data.len(), RATE).saturating_sub(SLACK);
        assert!(
            sent.elapsed() >= floor,
            "{:?} is faster than the cap ({floor:?})",
            sent.elapsed()
        );
    }
}
