//! Request bodies as the fault plan shapes them: a bandwidth cap and a connection cut.
use super::super::errors::{BoxApiError, Reply};
use super::super::faults::FaultAction;
use super::ConnSocket;
use actix_web::error::PayloadError;
use actix_web::{web, HttpRequest};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub struct Shaping {
    pub bandwidth: Option<u64>,
    /// Reset the connection once this many body bytes have arrived.
    pub cut_after: Option<u64>,
    pub socket: Option<OwnedFd>,
}

impl Shaping {
    pub fn new(req: &HttpRequest, bandwidth: Option<u64>, cut_after: Option<u64>) -> Self {
        let socket = cut_after.and_then(|_| req.conn_data::<ConnSocket>().and_then(|s| s.0.try_clone().ok()));
        Shaping {
            bandwidth: bandwidth.filter(|b| *b > 0),
            cut_after,
            socket,
        }
    }
}

struct Progress {
    payload: web::Payload,
    shaping: Shaping,
    seen: u64,
    started: Instant,
    done: bool,
}

pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

pub fn shaped(payload: web::Payload, shaping: Shaping) -> Body {
    let progress = Progress {
        payload,
        shaping,
        seen: 0,
        started: Instant::now(),
        done: false,
    };
    // Fused: `drain` may poll again after the end or a cut.
    Box::pin(
        futures_util::stream::unfold(progress, |mut p| async move {
            if p.done {
                return None;
            }
            if p.cut_due() {
                p.cut();
                return Some((Err(cut_error()), p));
            }
            let item = p.payload.next().await?;
            if let Ok(bytes) = &item {
                p.seen += bytes.len() as u64;
                p.throttle().await;
            }
            Some((item, p))
        })
        .fuse(),
    )
}

impl Progress {
    fn cut_due(&self) -> bool {
        self.shaping.cut_after.is_some_and(|k| self.seen >= k)
    }

    /// RST instead of FIN (SO_LINGER 0): the client sees a transport error, never a response.
    fn cut(&mut self) {
        self.done = true;
        if let Some(fd) = &self.shaping.socket {
            reset(fd);
        }
    }

    async fn throttle(&self) {
        let Some(rate) = self.shaping.bandwidth else {
            return;
        };
        let due = Duration::from_secs_f64(self.seen as f64 / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// SO_LINGER 0 and shut down: the client sees a reset or an early end, never a response.
fn reset(fd: &OwnedFd) {
    let sock = socket2::SockRef::from(fd);
    let _ = sock.set_linger(Some(Duration::ZERO));
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

/// `store_then_cut`: the work is done, and the answer never reaches the client.
fn cut_answer(req: &HttpRequest) {
    if let Some(socket) = req.conn_data::<ConnSocket>() {
        reset(&socket.0);
    }
}

/// The `store_then_*` faults, applied to a request whose work is done: a stored part, file or commit
/// is answered 500, or not answered at all.
pub fn store_then(req: &HttpRequest, result: Reply, action: Option<&FaultAction>, what: &str) -> Reply {
    match (result, action) {
        (Ok(_), Some(FaultAction::StoreThenFail)) => Err(BoxApiError::internal(format!(
            "Internal Server Error (the {what} was stored)"
        ))),
        (Ok(done), Some(FaultAction::StoreThenCut)) => {
            cut_answer(req);
            Ok(done)
        }
        (r, _) => r,
    }
}

fn cut_error() -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection cut by the fault plan",
    ))
}

/// Lets a parser (multipart) own a stream while the handler can still drain what it left.
#[derive(Clone)]
pub struct SharedBody(pub Rc<RefCell<Body>>);

impl Stream for SharedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.borrow_mut().poll_next_unpin(cx)
    }
}

/// Reads what is left of a body, so an early error answer is not lost to a reset connection.
pub async fn drain(body: &mut Body) {
    while let Some(Ok(_)) = body.next().await {}
}
