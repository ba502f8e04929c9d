//! Aborts a Box upload session unless its commit succeeded: on an error (awaited, so the client hears
//! of the failure only once the session is gone), and on drop (a client that disconnected, a panic),
//! where the abort is spawned since nobody is left to wait for it.
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
        Some(self.rt.spawn(async move {
            match client.abort(&session).await {
                Ok(()) => {
                    tracing::info!(session_id = %session.id, reason, "aborted Box upload session")
                }
                // Gone already: committed (after a lost commit answer), aborted or expired.
                Err(err) if err.status() == Some(404) => {
                    tracing::info!(session_id = %session.id, reason, "the Box upload session was already closed")
                }
                Err(err) => tracing::error!(session_id = %session.id, reason, error = %err,
                    "could not abort Box upload session; Box discards it when it expires"),
            }
        }))
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
