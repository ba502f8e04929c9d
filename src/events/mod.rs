//! Completion events: `upload.completed` and `upload.failed`, signed per Standard Webhooks and
//! delivered from a durable outbox in the state store.
//!
//! - The routes hand each upload's outcome to `Events::emit` before they answer: the event is in
//!   the outbox (redb on disk, or Redis) when the client gets its 201, so a crash right after the
//!   answer still delivers it. The pipeline knows nothing of webhooks.
//! - `worker::run` delivers in the background: at most `webhook_concurrency` at once, each event
//!   under a lease (a store lock) so one replica sends it, retried with exponential backoff and
//!   jitter until `webhook_max_age_secs`, then dead. A 2xx ends it; a 410 stops the URL's events.
//! - Delivery is at least once (a crash between the receiver's 2xx and the outbox's removal sends
//!   it again), with a `webhook-id` stable across attempts for de-duplication, and in no order.
pub mod sign;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::metrics::GatewayMetrics;
use crate::secret::SecretSource;
use crate::state::{now_ms, StateStore, StoreError};

/// The validated webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where events go unless the caller's API key names its own URL (None: only those keys'
    /// events are sent).
    pub url: Option<String>,
    /// `whsec_...` secrets, whitespace-separated; a file is read at each delivery, so a rotated
    /// Secret is picked up without a restart. None: no URL is configured anywhere.
    pub secret: Option<SecretSource>,
    pub max_age: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// One event's `data`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Completed(Completed),
    Failed(Failed),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Completed {
    pub file_id: String,
    pub file_version_id: Option<String>,
    pub name: Option<String>,
    pub folder_id: Option<String>,
    /// An upload by path: the folder path below its root, as the client gave it
    /// (`Finance/Invoices/2026-12`); `folder_id` is where it led. (No shared link URL: see
    /// docs/api.md, "Fields that land with the file".)
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    pub size: u64,
    pub sha1: String,
    /// `direct` or `chunked`: how Box received it.
    pub method: String,
    /// The API key's name (`passthrough`, `anonymous` without a key).
    pub key: String,
    pub request_id: Option<String>,
    /// A tus upload's id, and its `Upload-Metadata` decoded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tus_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upload_metadata: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Failed {
    /// The error code the client got (as in docs/api.md's error table).
    pub code: String,
    pub message: String,
    pub name: Option<String>,
    pub folder_id: Option<String>,
    /// An upload by path: the folder path below its root.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    /// File bytes the gateway had received from the client when the upload failed.
    pub bytes_received: u64,
    pub key: String,
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tus_id: Option<String>,
}

impl Event {
    fn kind(&self) -> &'static str {
        match self {
            Self::Completed(_) => "upload.completed",
            Self::Failed(_) => "upload.failed",
        }
    }

    /// The JSON body sent: `{"type", "timestamp", "data"}`.
    pub fn body(&self, timestamp: &str) -> String {
        let data = match self {
            Self::Completed(c) => serde_json::to_value(c),
            Self::Failed(f) => serde_json::to_value(f),
        }
        .unwrap_or_default();
        serde_json::json!({ "type": self.kind(), "timestamp": timestamp, "data": data }).to_string()
    }
}

/// An outbox entry: everything a delivery needs, whichever replica makes it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub url: String,
    /// The body, fixed at enqueue time so every attempt sends the same bytes.
    pub body: String,
    pub created_ms: u64,
    pub due_ms: u64,
    pub attempts: u32,
}

/// The routes' handle on the outbox, and the worker's state.
pub struct Events {
    store: Arc<dyn StateStore>,
    settings: WebhookSettings,
    metrics: Arc<GatewayMetrics>,
    /// Wakes the worker when an event is stored, so the first attempt does not wait for a poll.
    wake: Notify,
}

impl Events {
    pub fn new(store: Arc<dyn StateStore>, settings: WebhookSettings, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            store,
            settings,
            metrics,
            wake: Notify::new(),
        }
    }

    /// Stores `event` for delivery to `key_url` (the caller's key's own) or the gateway's URL; with
    /// neither, nothing. Returns once the outbox holds it. A store that fails is logged and counted
    /// (`gateway_webhook_events_total{outcome="not_stored"}`): the upload's answer does not change,
    /// since the file is in Box either way and a retried upload would make a second one.
    pub async fn emit(&self, key_url: Option<&str>, event: Event) {
        let Some(url) = key_url.or(self.settings.url.as_deref()) else {
            return;
        };
        let kind = event.kind();
        match self.store_event(url, &event).await {
            Ok(id) => {
                self.metrics
                    .webhook_events
                    .with_label_values(&[kind, "stored"])
                    .inc();
                tracing::debug!(webhook_id = %id, event = kind, "event stored in the outbox");
                self.wake.notify_one();
            }
            Err(err) => {
                self.metrics
                    .webhook_events
                    .with_label_values(&[kind, "not_stored"])
                    .inc();
                tracing::error!(event = kind, error = %err, "the event could not be stored: it will not be delivered");
            }
        }
    }

    async fn store_event(&self, url: &str, event: &Event) -> Result<String, StoreError> {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let now = now_ms();
        let timestamp = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let entry = Entry {
            url: url.to_owned(),
            body: event.body(&timestamp),
            created_ms: now,
            due_ms: now,
            attempts: 0,
        };
        let value = serde_json::to_vec(&entry).map_err(|e| StoreError(e.to_string()))?;
        self.store.outbox_put(&id, value, now, now).await?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_type_timestamp_and_data() {
        let event = Event::Completed(Completed {
            file_id: "1".into(),
            size: 3,
            key: "k".into(),
            ..Default::default()
        });
        let body: serde_json::Value = serde_json::from_str(&event.body("2026-01-01T00:00:00.000Z")).unwrap();
        assert_eq!(body["type"], "upload.completed");
        assert_eq!(body["timestamp"], "2026-01-01T00:00:00.000Z");
        assert_eq!(body["data"]["file_id"], "1");
        assert_eq!(body["data"]["size"], 3);
        assert!(body["data"].get("tus_id").is_none(), "only for tus uploads");
        let failed = Event::Failed(Failed {
            code: "box_timeout".into(),
            ..Default::default()
        });
        let body: serde_json::Value = serde_json::from_str(&failed.body("t")).unwrap();
        assert_eq!(body["type"], "upload.failed");
        assert_eq!(body["data"]["code"], "box_timeout");
        assert!(body["data"].get("type").is_none());
    }
}
