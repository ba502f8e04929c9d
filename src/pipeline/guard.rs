//! Aborts a Box upload session unless its commit succeeded: on an error (awaited, so the client hears
//! of the failure once the session is gone), and on drop (a client that disconnected, a panic),
//! where the abort is spawned since nobody is left to wait for it.
//!
//! The abort goes at once, past the pacer (`BoxClient::send`): a principal paused for minutes must
//! not keep the client, or a drain, waiting for its cleanup. What is awaited is that one attempt; if
//! it fails in a way a retry may fix (Box's 429 during the pause, a 5xx, a dropped connection), the
//! retries go on in the background with the retry policy (`Retry-After` honoured, within
//! `box_call_deadline_secs`), and the client is answered meanwhile.
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::box_api::{BoxClient, UploadSession};
use crate::metrics::GatewayMetrics;

pub struct SessionGuard {
    armed: Option<(BoxClient, UploadSession)>,
    rt: Handle,
    metrics: Arc<GatewayMetrics>,
}

impl SessionGuard {
    pub fn new(client: BoxClient, session: UploadSession, rt: Handle, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            armed: Some((client, session)),
            rt,
            metrics,
        }
    }

    pub fn session(&self) -> &UploadSession {
        &self.armed.as_ref().expect("guard used after it was spent").1
    }

    /// The commit succeeded: nothing to undo.
    pub fn disarm(mut self) {
        self.armed = None;
    }

    /// The session outlives this request (a resumable upload): its state store entry holds it now,
    /// and termination or expiry aborts it.
    pub fn into_session(mut self) -> UploadSession {
        self.armed.take().expect("guard used after it was spent").1
    }

    /// Aborts now and waits for Box's answer.
    pub async fn abort(mut self, reason: &'static str) {
        if let Some(task) = self.spawn_abort(reason) {
            let _ = task.await;
        }
    }

    fn spawn_abort(&mut self, reason: &'static str) -> Option<tokio::task::JoinHandle<()>> {
        let (client, session) = self.armed.take()?;
        self.metrics.sessions_aborted.with_label_values(&[reason]).inc();
        let rt = self.rt.clone();
        Some(self.rt.spawn(async move {
            let first = client.abort_once(&session).await;
            let delay = match &first {
                Err(err) if err.status() != Some(404) && err.retry_reason().is_some() => {
                    client.retry_policy().delay(1, err.retry_after())
                }
                _ => return aborted(&session, reason, first),
            };
            tracing::warn!(session_id = %session.id, reason, ?delay, error = %first.unwrap_err(),
                "could not abort Box upload session yet; retrying in the background");
            rt.spawn(async move {
                tokio::time::sleep(delay).await;
                let retried = client.abort(&session).await;
                aborted(&session, reason, retried);
            });
        }))
    }
}

fn aborted(session: &UploadSession, reason: &'static str, result: Result<(), crate::box_api::BoxError>) {
    match result {
        Ok(()) => tracing::info!(session_id = %session.id, reason, "aborted Box upload session"),
        // Gone already: committed (after a lost commit answer), aborted or expired.
        Err(err) if err.status() == Some(404) => {
            tracing::info!(session_id = %session.id, reason, "the Box upload session was already closed")
        }
        Err(err) => tracing::error!(session_id = %session.id, reason, error = %err,
            "could not abort Box upload session; Box discards it when it expires"),
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() {
            "panic"
        } else {
            "cancelled"
        };
        self.spawn_abort(reason);
    }
}
