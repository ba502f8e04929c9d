//! The request body as the gateway reads it from a client, with two deadlines: an idle timeout and a
//! minimum rate over a window of waiting (`client_idle_timeout_secs`, `client_min_bytes_per_sec`,
//! `client_rate_window_secs`). Every body the gateway reads goes through it (plain and tus uploads,
//! `POST /v1/upload-links`). A link's upload has a third: the link's expiry (`client_body_until`).
use std::io::ErrorKind;
use std::time::Duration;

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::stream;
use futures_util::{Stream, StreamExt};

use super::AppState;
use crate::pipeline::UploadError;

/// The minimum body rate: at least `min_bytes_per_sec` over each `window` of the gateway waiting for
/// the body (`client_min_bytes_per_sec`, `client_rate_window_secs`).
#[derive(Debug, Clone, Copy)]
pub(super) struct MinRate {
    pub min_bytes_per_sec: u64,
    pub window: Duration,
}

/// A body that came too slowly, carried through actix's `PayloadError` to `from_payload`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent {received} bytes in {window:?} of waiting")]
struct TooSlow {
    received: u64,
    window: Duration,
    min_bytes_per_sec: u64,
}

/// The caller's access (an upload link) expired while its body was being read.
#[derive(Debug, thiserror::Error)]
#[error("the upload link expired at {at_unix_secs} while the body was being read")]
struct AccessEnded {
    at_unix_secs: u64,
}

/// Waiting time and bytes within the current window of a `MinRate`. Only time spent waiting for the
/// client counts: while the gateway waits for the budget or for Box it does not read the body, and
/// the client (held back by TCP) is not to blame.
struct RateWindow {
    rate: MinRate,
    waited: Duration,
    bytes: u64,
}

impl RateWindow {
    fn new(rate: MinRate) -> Self {
        Self {
            rate,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// Waiting time left before the window is judged.
    fn left(&self) -> Duration {
        self.rate.window.saturating_sub(self.waited)
    }

    /// Counts a wait of `waited` that brought `bytes`; once the window is full it is judged, and the
    /// next one starts empty.
    fn record(&mut self, waited: Duration, bytes: u64) -> Result<(), TooSlow> {
        self.waited += waited;
        self.bytes += bytes;
        if self.waited < self.rate.window {
            return Ok(());
        }
        let needed = self.rate.min_bytes_per_sec as f64 * self.waited.as_secs_f64();
        if (self.bytes as f64) < needed {
            return Err(TooSlow {
                received: self.bytes,
                window: self.waited,
                min_bytes_per_sec: self.rate.min_bytes_per_sec,
            });
        }
        *self = Self::new(self.rate);
        Ok(())
    }
}

/// The request body as the gateway reads it from a client: it ends with 408 when the client sends
/// nothing for `client_idle_timeout` (`client_timeout`), or sends below `client_min_bytes_per_sec`
/// over `client_rate_window` of waiting (`client_too_slow`). A stalled or trickling client must not
/// hold its part of the memory budget, nor its Box session, for ever: a trickle of 1 KiB every few
/// seconds never trips the idle timeout alone.
pub fn client_body(
    payload: impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    state: &AppState,
) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
    client_body_until(payload, state, None)
}

/// `client_body`, cut when `until` (Unix seconds: an upload link's expiry) passes: a link's upload
/// ends with its link (410 `link_expired`, `from_payload`), however long one of its requests runs.
/// The time waiting between polls counts too (the link's expiry is wall-clock time).
pub fn client_body_until(
    payload: impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    state: &AppState,
    until: Option<u64>,
) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
    let limits = state.client;
    let rate = (limits.min_bytes_per_sec > 0).then_some(MinRate {
        min_bytes_per_sec: limits.min_bytes_per_sec,
        window: limits.rate_window,
    });
    let until = until.map(|at| {
        let left = at.saturating_sub(crate::state::now_secs());
        (tokio::time::Instant::now() + Duration::from_secs(left), at)
    });
    body_deadlines(payload, limits.idle_timeout, rate, until)
}

fn body_deadlines(
    payload: impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    idle: Duration,
    rate: Option<MinRate>,
    until: Option<(tokio::time::Instant, u64)>,
) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
    use tokio::time::Instant;
    let too_slow = |slow: TooSlow| PayloadError::Io(std::io::Error::other(slow));
    let ended = |at_unix_secs| PayloadError::Io(std::io::Error::other(AccessEnded { at_unix_secs }));
    Box::pin(
        stream::unfold(
            Some((payload, rate.map(RateWindow::new))),
            move |state| async move {
                let (mut payload, mut window) = state?;
                // The clock runs only inside this call: the time between two polls is the gateway's.
                let idle_deadline = Instant::now() + idle;
                loop {
                    let started = Instant::now();
                    if let Some((_, at)) = until.filter(|(end, _)| started >= *end) {
                        return Some((Err(ended(at)), None));
                    }
                    let deadline = window
                        .as_ref()
                        .map_or(idle_deadline, |w| idle_deadline.min(started + w.left()));
                    let deadline = until.map_or(deadline, |(end, _)| deadline.min(end));
                    // `next()` is cancel-safe: a wait cut at the window's end loses no bytes.
                    match tokio::time::timeout_at(deadline, payload.next()).await {
                        Ok(Some(item)) => {
                            if let (Some(w), Ok(chunk)) = (window.as_mut(), &item) {
                                if let Err(slow) = w.record(started.elapsed(), chunk.len() as u64) {
                                    return Some((Err(too_slow(slow)), None));
                                }
                            }
                            return Some((item, Some((payload, window))));
                        }
                        Ok(None) => return None,
                        Err(_) if until.is_some_and(|(end, _)| Instant::now() >= end) => {
                            // Checked at the top of the loop.
                        }
                        Err(_) if Instant::now() >= idle_deadline => {
                            return Some((
                                Err(PayloadError::Io(std::io::Error::new(
                                    ErrorKind::TimedOut,
                                    "client idle",
                                ))),
                                None,
                            ))
                        }
                        // The rate's window ended while waiting: judge it, then wait on.
                        Err(_) => {
                            if let Some(Err(slow)) = window.as_mut().map(|w| w.record(started.elapsed(), 0)) {
                                return Some((Err(too_slow(slow)), None));
                            }
                        }
                    }
                }
            },
        )
        // actix-multipart polls again after the end; a fused stream keeps answering `None`.
        .fuse(),
    )
}

pub fn from_payload(err: PayloadError) -> UploadError {
    match err {
        PayloadError::Io(e) if e.kind() == ErrorKind::TimedOut => UploadError::ClientTimeout,
        PayloadError::Io(e) => {
            if let Some(ended) = e.get_ref().and_then(|inner| inner.downcast_ref::<AccessEnded>()) {
                return UploadError::AccessExpired {
                    at_unix_secs: ended.at_unix_secs,
                };
            }
            match e.get_ref().and_then(|inner| inner.downcast_ref::<TooSlow>()) {
                Some(slow) => UploadError::ClientTooSlow {
                    received: slow.received,
                    window: slow.window,
                    min_bytes_per_sec: slow.min_bytes_per_sec,
                },
                None => UploadError::Body(PayloadError::Io(e).to_string()),
            }
        }
        other => UploadError::Body(other.to_string()),
    }
}

pub fn from_multipart(err: actix_multipart::MultipartError) -> UploadError {
    match err {
        actix_multipart::MultipartError::Payload(e) => from_payload(e),
        other => UploadError::Body(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    /// The default minimum rate over the default window, as `client_body` builds it.
    fn default_rate() -> MinRate {
        let d = Settings::default();
        MinRate {
            min_bytes_per_sec: d.client_min_bytes_per_sec,
            window: Duration::from_secs(d.client_rate_window_secs),
        }
    }

    /// Feeds a client sending `bytes` every `every` for `for_secs` seconds of waiting; the window's
    /// verdict, as soon as one comes.
    fn feed(rate: MinRate, bytes: u64, every: Duration, for_secs: u64) -> Result<(), TooSlow> {
        let mut w = RateWindow::new(rate);
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(for_secs) {
            w.record(every, bytes)?;
            waited += every;
        }
        Ok(())
    }

    #[test]
    fn the_defaults_fail_a_trickler_within_one_window() {
        let rate = default_rate();
        // 1 KiB every 5 s (205 B/s): judged at the end of the first 60 s window.
        let verdict = feed(rate, 1024, Duration::from_secs(5), rate.window.as_secs());
        let slow = verdict.expect_err("a trickler is too slow");
        assert_eq!(slow.window, rate.window);
        assert_eq!(slow.received, 12 * 1024);
    }

    #[test]
    fn the_defaults_pass_slow_mobile_links() {
        let rate = default_rate();
        // EDGE on a bad day (10 KB/s), GPRS (5 KB/s), and a link just above the minimum, for an hour.
        for bytes_per_sec in [10_000, 5_000, rate.min_bytes_per_sec + 10] {
            feed(rate, bytes_per_sec / 10, Duration::from_millis(100), 3600)
                .unwrap_or_else(|e| panic!("{bytes_per_sec} B/s refused: {e}"));
        }
        // A stall of half the window, made up by a burst after it, still passes.
        let mut w = RateWindow::new(rate);
        w.record(rate.window / 2, 0).unwrap();
        w.record(rate.window / 2, rate.min_bytes_per_sec * rate.window.as_secs())
            .unwrap();
    }

    #[test]
    fn a_window_starts_empty_after_a_good_one() {
        let rate = MinRate {
            min_bytes_per_sec: 100,
            window: Duration::from_secs(10),
        };
        let mut w = RateWindow::new(rate);
        // A fast first window does not pay for a slow second one.
        w.record(Duration::from_secs(10), 100_000).unwrap();
        assert_eq!(w.left(), rate.window);
        assert!(w.record(Duration::from_secs(10), 999).is_err());
    }

    /// A body fed by the test, chunk by chunk.
    fn channel() -> (
        tokio::sync::mpsc::UnboundedSender<Result<Bytes, PayloadError>>,
        impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        (tx, Box::pin(body))
    }

    /// The clock runs only while the body is awaited: a pause between polls (the gateway waiting for
    /// its budget or for Box) does not count against the client.
    #[tokio::test(start_paused = true)]
    async fn time_between_polls_is_not_the_clients() {
        let (tx, rx) = channel();
        let rate = MinRate {
            min_bytes_per_sec: 1000,
            window: Duration::from_secs(10),
        };
        let mut body = body_deadlines(rx, Duration::from_secs(60), Some(rate), None);
        // 8000 bytes in the window, a minute apart each: the window sees them arrive at once.
        for _ in 0..4 {
            tx.send(Ok(Bytes::from(vec![0u8; 2000]))).unwrap();
            // The gateway is busy elsewhere for a minute: the bytes were there all along.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(body.next().await.unwrap().is_ok());
        }
        // Now it waits on a client that sends nothing more: the window ends it, before the idle timeout.
        let started = tokio::time::Instant::now();
        let err = body.next().await.unwrap().unwrap_err();
        assert!(matches!(from_payload(err), UploadError::ClientTooSlow { .. }));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_still_comes_first_when_shorter() {
        let (_tx, rx) = channel();
        let rate = MinRate {
            min_bytes_per_sec: 1000,
            window: Duration::from_secs(60),
        };
        let mut body = body_deadlines(rx, Duration::from_secs(5), Some(rate), None);
        let err = body.next().await.unwrap().unwrap_err();
        assert!(matches!(from_payload(err), UploadError::ClientTimeout));
    }

    /// A link's body is cut at the link's expiry, whether the client is sending or the gateway is
    /// busy elsewhere, and however fast it comes.
    #[tokio::test(start_paused = true)]
    async fn a_links_body_ends_at_the_links_expiry() {
        let (tx, rx) = channel();
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut body = body_deadlines(rx, Duration::from_secs(20), None, Some((end, 1234)));
        // A fast client, a chunk every 10 s: never idle, yet cut at 30 s.
        for _ in 0..3 {
            tx.send(Ok(Bytes::from_static(b"abc"))).unwrap();
            assert!(body.next().await.unwrap().is_ok());
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        tx.send(Ok(Bytes::from_static(b"late"))).unwrap();
        let err = body.next().await.unwrap().unwrap_err();
        assert!(matches!(
            from_payload(err),
            UploadError::AccessExpired { at_unix_secs: 1234 }
        ));
        assert!(body.next().await.is_none());
        // A wait for a client that sends nothing is cut at the expiry, before the idle timeout.
        let (_tx, rx) = channel();
        let started = tokio::time::Instant::now();
        let end = started + Duration::from_secs(5);
        let mut body = body_deadlines(rx, Duration::from_secs(20), None, Some((end, 9)));
        let err = body.next().await.unwrap().unwrap_err();
        assert!(matches!(from_payload(err), UploadError::AccessExpired { .. }));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
