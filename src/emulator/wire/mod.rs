//! How the emulator meets the network: TLS like Box's hosts (ALPN `h2` and `http/1.1`) and each
//! connection shaped like a WAN link (an added round trip, a bandwidth cap, the HTTP/2 windows it
//! advertises). Over plain loopback every part in flight has its own fast TCP connection; Box is
//! reached over TLS, across round trips, by a client that may multiplex every part on one HTTP/2
//! connection. This is what lets the gateway's connection policy be measured against that.
//!
//! The listener is actix-web's own parts put together by hand (actix-server, a shaping and TLS step,
//! actix-http's `HttpService` around the same `App`): `HttpServer` only takes a bare `TcpStream`,
//! and the shaping has to sit under TLS, where a WAN link is.
mod link;
mod tls;

use super::routes::{self, ConnId, ConnSocket, ConnTls};
use super::Shared;
use actix_http::{HttpService, Protocol};
use actix_server::Server;
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::web;
use link::{link, Link};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

pub(crate) use tls::server_tls;

/// HTTP/2's initial flow-control window (RFC 9113 §6.9.2), which many servers keep.
pub const H2_DEFAULT_WINDOW_BYTES: u32 = 65_535;
/// The largest window HTTP/2 allows (RFC 9113 §6.9.1).
pub const H2_MAX_WINDOW_BYTES: u32 = (1 << 31) - 1;

#[derive(Clone, Debug, PartialEq)]
pub struct WireConfig {
    /// None: plain HTTP/1.1.
    pub tls: Option<TlsSource>,
    pub link: LinkShape,
    /// The window each HTTP/2 stream (one request) gets from the emulator: what a client may send on
    /// a stream before the emulator's `WINDOW_UPDATE`.
    pub h2_stream_window_bytes: u32,
    /// The same for a whole HTTP/2 connection, shared by its streams; at least 65,535 (every
    /// connection starts there and a server can only widen it).
    pub h2_connection_window_bytes: u32,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            tls: None,
            link: LinkShape::default(),
            h2_stream_window_bytes: H2_DEFAULT_WINDOW_BYTES,
            h2_connection_window_bytes: H2_DEFAULT_WINDOW_BYTES,
        }
    }
}

impl WireConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=H2_MAX_WINDOW_BYTES).contains(&self.h2_stream_window_bytes) {
            return Err(format!(
                "the HTTP/2 stream window must be 1 to {H2_MAX_WINDOW_BYTES} bytes"
            ));
        }
        if !(H2_DEFAULT_WINDOW_BYTES..=H2_MAX_WINDOW_BYTES).contains(&self.h2_connection_window_bytes) {
            return Err(format!(
                "the HTTP/2 connection window must be {H2_DEFAULT_WINDOW_BYTES} to {H2_MAX_WINDOW_BYTES} bytes"
            ));
        }
        if self.link.bytes_per_sec == Some(0) {
            return Err("the per-connection bandwidth must be at least 1 byte per second".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TlsSource {
    /// A certificate for localhost, 127.0.0.1 and ::1 made at start, signed by a CA made with it; the
    /// CA's PEM is written to `<data dir>/tls/ca.pem` (`EmulatorHandle::ca_file`).
    Generated,
    /// A PEM certificate chain and its PEM private key.
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkShape {
    /// Added to every round trip on every connection.
    pub rtt: Duration,
    /// Each connection's bandwidth, each way. None: loopback's.
    pub bytes_per_sec: Option<u64>,
}

/// The deadline for a TLS handshake or a plain connection's first bytes, on top of the added round
/// trips.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// On plain HTTP: HTTP/2 when the client opens with h2c's preface (RFC 9113 §3.3, prior knowledge, as
/// reqwest's `http2_prior_knowledge` does), else HTTP/1.1. Peeked, so the bytes stay for the parser;
/// one look, as actix-http's own h2c detection does (a client sends the 24-byte preface in one write).
async fn plain_protocol(stream: &TcpStream) -> io::Result<Protocol> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut head = [0; PREFACE.len()];
    let n = stream.peek(&mut head).await?;
    Ok(if head[..n] == *PREFACE {
        Protocol::Http2
    } else {
        Protocol::Http1
    })
}

/// Serves the routes on `listener`, each connection shaped, then TLS (when configured), then HTTP/1.1
/// or HTTP/2 as ALPN chose.
pub(crate) fn serve(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<Server> {
    let wire = shared.config.wire.clone();
    let addr = listener.local_addr()?;
    let data = web::Data::from(shared);
    let server = Server::build()
        .workers(2)
        // Whoever embeds the emulator decides when it stops (`serve --emulator` drains the gateway first).
        .disable_signals()
        .listen("box-emulator", listener, move || {
            let acceptor = tls.clone().map(TlsAcceptor::from);
            let link = wire.link;
            let accept = fn_service(move |stream: TcpStream| {
                let acceptor = acceptor.clone();
                async move { Conn::accept(stream, link, acceptor).await }
            });
            let counted = data.clone();
            let app = routes::app(data.clone())
                .into_factory()
                .map_err(|e| e.error_response());
            let http = HttpService::build()
                .client_request_timeout(Duration::from_secs(5) + link.rtt)
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(addr)
                .h2_initial_window_size(wire.h2_stream_window_bytes)
                .h2_initial_connection_window_size(wire.h2_connection_window_bytes)
                .on_connect_ext(move |conn: &Conn, ext: &mut actix_http::Extensions| {
                    if let Ok(fd) = conn.socket.try_clone() {
                        ext.insert(ConnSocket(fd));
                    }
                    if matches!(conn.transport, Either::Right(_)) {
                        ext.insert(ConnTls);
                    }
                    let mut state = counted.lock();
                    let counters = &mut state.counters;
                    counters.connections += 1;
                    if conn.protocol == Protocol::Http2 {
                        counters.http2_connections += 1;
                    }
                    ext.insert(ConnId(counters.connections));
                })
                .finish(map_config(app, |_| AppConfig::default()));
            accept.and_then(http)
        })?
        .run();
    Ok(server)
}

/// One accepted connection as the HTTP layer sees it.
pub struct Conn {
    transport: Transport,
    protocol: Protocol,
    /// A duplicate of the TCP socket, so a `cut_connection` fault can reset it under TLS too.
    socket: OwnedFd,
}

/// Plain, or TLS over the link.
type Transport = Either<Link, Box<TlsStream<Link>>>;

impl Conn {
    async fn accept(
        stream: TcpStream,
        shape: LinkShape,
        tls: Option<TlsAcceptor>,
    ) -> Result<(Conn, Protocol, Option<std::net::SocketAddr>), actix_http::error::DispatchError> {
        let peer = stream.peer_addr().ok();
        // Small HTTP/2 frames (WINDOW_UPDATE) and answers go out at once, as a server's would.
        let _ = stream.set_nodelay(true);
        let socket = stream.as_fd().try_clone_to_owned()?;
        let deadline = HANDSHAKE_TIMEOUT + 2 * shape.rtt;
        let timed_out = |_| io::Error::new(io::ErrorKind::TimedOut, "no handshake in time");
        let Some(acceptor) = tls else {
            let protocol = tokio::time::timeout(deadline, plain_protocol(&stream))
                .await
                .map_err(timed_out)??;
            let conn = Conn {
                transport: Either::Left(link(stream, shape)),
                protocol,
                socket,
            };
            return Ok((conn, protocol, peer));
        };
        let stream = tokio::time::timeout(deadline, acceptor.accept(link(stream, shape)))
            .await
            .map_err(timed_out)??;
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        let conn = Conn {
            transport: Either::Right(Box::new(stream)),
            protocol,
            socket,
        };
        Ok((conn, protocol, peer))
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().transport).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().transport).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.transport.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_shutdown(cx)
    }
}
