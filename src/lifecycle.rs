//! The gateway's life after start: whether it takes new uploads, whether it is ready (what `/readyz`
//! says), and the drain on SIGTERM or SIGINT.
//!
//! The drain, in order (`Application::run_until_stopped`):
//! 1. readiness turns false and new uploads are refused with 503 `draining` (`begin_upload` says no),
//!    and so are those still waiting for Box capacity in their admission (`drain_begun`): they have
//!    not started, another replica takes them at once, and their wait (up to `box_rate_wait_secs`)
//!    would otherwise outlast the grace;
//! 2. uploads in flight get until `shutdown_grace - abort_reserve(shutdown_grace)` to finish;
//! 3. then `stop_uploads` fires: the pipeline stops reading bodies and sending parts, aborts each
//!    remaining Box session (awaited) and the client is answered 503 `draining`; an upload whose
//!    commit is already under way is let finish (Box may be creating the file). A tus PATCH stops the
//!    same way but keeps its session and what Box confirmed (`Pipeline::append`): the client resumes
//!    from HEAD, which is answered even while draining (`routes::middleware::drain_gate`);
//! 4. at `shutdown_grace` the HTTP server stops, whatever is left, and the process exits 0 once what
//!    the requests it dropped give back (an admission's open-upload slot, quotas) is done, within
//!    `abort_reserve(shutdown_grace)` more (`hold`, `settle`).
//!
//! Background work that outlives uploads (the webhook delivery worker) stops at the end of the
//! drain (`stop_background`), so the events of uploads that finished during the drain go out first
//! if their receiver answers; what is not delivered stays in the outbox for the next start.
//!
//! The embedded emulator of `serve --emulator` is stopped only after all this.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why the gateway is not ready; `None` in `Lifecycle::box_problem` means Box answered the last check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// Stable: `starting`, `draining`, `box_credentials_refused`, `scanner_unavailable`. (Box out of reach is not one: see
    /// `box_unreachable`.)
    pub reason: &'static str,
    pub message: String,
}

pub struct Lifecycle {
    draining: AtomicBool,
    /// Fires as the drain begins: what waits to start (an admission waiting for Box capacity) stops.
    drain_begun: CancellationToken,
    in_flight: AtomicUsize,
    idle: Notify,
    stop_uploads: CancellationToken,
    /// What the last background check of Box found (`starting` until the first check is done).
    box_problem: Mutex<Option<NotReady>>,
    /// What the last ping of this replica's own clamd found (`readiness::check_scanner`).
    scanner_problem: Mutex<Option<NotReady>>,
    /// Fires once the drain is over: background workers (webhook delivery) stop.
    stop_background: CancellationToken,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            drain_begun: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            stop_uploads: CancellationToken::new(),
            box_problem: Mutex::new(Some(NotReady {
                reason: "starting",
                message: "Box has not been checked yet".into(),
            })),
            scanner_problem: Mutex::new(None),
            stop_background: CancellationToken::new(),
        }
    }
}

/// An admitted upload; the drain waits until every one is dropped.
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Lifecycle {
    /// Counts a new upload in, unless the gateway is draining.
    pub fn begin_upload(self: &Arc<Self>) -> Option<InFlight> {
        // Counted before the check, so a drain that starts in between still waits for it.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let flight = InFlight(self.clone());
        (!self.draining.load(Ordering::SeqCst)).then_some(flight)
    }

    /// Counts in, draining or not, work that no request waits for but the process must finish
    /// before it exits: what a dropped request gives back (`routes::admission::Reservation`). The
    /// drain, and `settle` after the server's stop, wait for it.
    pub fn hold(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Fires when the drain begins: an upload that has not started yet (still waiting for Box
    /// capacity) is refused then, as a new one is, instead of holding the drain.
    pub fn drain_begun(&self) -> CancellationToken {
        self.drain_begun.clone()
    }

    /// Fires when uploads in flight must stop (the grace period is over): the pipeline's seam.
    pub fn stop_uploads(&self) -> CancellationToken {
        self.stop_uploads.clone()
    }

    /// Fires at the end of the drain: background workers' seam.
    pub fn stop_background(&self) -> CancellationToken {
        self.stop_background.clone()
    }

    pub fn set_box_problem(&self, problem: Option<NotReady>) {
        *self.box_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// This replica's own clamd (a sidecar) answers, or not: every upload here would fail closed.
    pub fn set_scanner_problem(&self, problem: Option<NotReady>) {
        *self.scanner_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// The background check could not reach Box: every replica sees the same, so readiness keeps the
    /// last verdict on the credentials; only `starting` ends (the replica serves, and its uploads get
    /// 503 `box_unavailable` with `Retry-After` until Box is back).
    pub fn box_unreachable(&self) {
        let mut problem = self.box_problem.lock().unwrap_or_else(|p| p.into_inner());
        if problem.as_ref().is_some_and(|p| p.reason == "starting") {
            *problem = None;
        }
    }

    /// What `/readyz` answers: ready, or why not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady {
                reason: "draining",
                message: "the gateway is shutting down and takes no new uploads".into(),
            });
        }
        let box_problem = self.box_problem.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let scanner_problem = self
            .scanner_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match box_problem.or(scanner_problem) {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Steps 1 to 3 of the drain; returns once no upload is in flight, or at `grace` at the latest.
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        self.drain_begun.cancel();
        let started = tokio::time::Instant::now();
        let stop_at = started + grace - abort_reserve(grace);
        tracing::info!(
            in_flight = self.in_flight(),
            grace_secs = grace.as_secs_f64(),
            "draining: new uploads are refused, uploads in flight may finish"
        );
        if !self.wait_idle(stop_at).await {
            tracing::warn!(
                in_flight = self.in_flight(),
                "grace period over: stopping the uploads still in flight and aborting their Box sessions"
            );
            self.stop_uploads.cancel();
            if !self.wait_idle(started + grace).await {
                tracing::error!(
                    in_flight = self.in_flight(),
                    "uploads still running at the end of the grace period: stopping regardless"
                );
            }
        }
        tracing::info!(secs = started.elapsed().as_secs_f64(), "drained");
        self.stop_background.cancel();
    }

    /// After the server's stop: waits up to `limit` for what the requests it dropped give back
    /// (`hold`); whether all of it was done.
    pub async fn settle(&self, limit: Duration) -> bool {
        self.wait_idle(tokio::time::Instant::now() + limit).await
    }

    /// Whether no upload was in flight by `deadline`.
    async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a last drop in between is not missed.
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

/// The end of the grace period kept for aborting what did not finish: a fifth of it, at most 5 s.
pub fn abort_reserve(grace: Duration) -> Duration {
    (grace / 5).min(Duration::from_secs(5))
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(signal = "ctrl-c", "shutdown requested");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_refuses_new_uploads_and_waits_for_those_in_flight() {
        let life = Arc::new(Lifecycle::default());
        let flight = life.begin_upload().expect("admitted before the drain");
        let drain = {
            let life = life.clone();
            tokio::spawn(async move { life.drain(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(life.begin_upload().is_none(), "refused while draining");
        assert_eq!(life.readiness().unwrap_err().reason, "draining");
        assert!(!drain.is_finished());
        drop(flight);
        tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .expect("the drain ends with the last upload")
            .unwrap();
        assert!(!life.stop_uploads().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_that_outlive_the_grace_are_told_to_stop_before_it_ends() {
        let life = Arc::new(Lifecycle::default());
        let flight = life.begin_upload().unwrap();
        let stop = life.stop_uploads();
        let released = tokio::spawn(async move {
            stop.cancelled().await;
            let at = tokio::time::Instant::now();
            drop(flight);
            at
        });
        let started = tokio::time::Instant::now();
        life.drain(Duration::from_secs(30)).await;
        let stopped_at = released.await.unwrap() - started;
        assert_eq!(
            stopped_at,
            Duration::from_secs(25),
            "a reserve of 5 s for the aborts"
        );
    }

    #[test]
    fn readiness_follows_the_box_check() {
        let life = Lifecycle::default();
        assert_eq!(life.readiness().unwrap_err().reason, "starting");
        life.box_unreachable();
        assert!(
            life.readiness().is_ok(),
            "Box out of reach at start does not hold a replica back"
        );
        life.set_box_problem(Some(NotReady {
            reason: "box_credentials_refused",
            message: String::new(),
        }));
        life.box_unreachable();
        assert_eq!(
            life.readiness().unwrap_err().reason,
            "box_credentials_refused",
            "the last verdict on the credentials stands"
        );
        life.set_box_problem(None);
        assert!(life.readiness().is_ok());
        assert_eq!(abort_reserve(Duration::from_secs(10)), Duration::from_secs(2));
    }
}
