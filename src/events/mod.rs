//! Completion events: `upload.completed` and `upload.failed`, signed per Standard Webhooks and
//! delivered from a durable outbox in the state store.
//!
//! - The routes hand each upload's outcome to `Events::emit` before they answer: the event is in
//!   the outbox (redb on disk, or Redis) when the client gets its 201, so a crash right after the
//!   answer still delivers it. The pipeline knows nothing of webhooks.
//! - Each event goes to one receiver: the API key's own (`[[keys]]` `webhook_url`, signed with the
//!   key's own `webhook_secret`), else the gateway's (`webhook_url`, signed with `webhook_secret`).
//!   The outbox stores the receiver's *name* only; its URL and secret are looked up in the
//!   configuration at each delivery, so whoever can write the state store can neither choose where
//!   the gateway sends nor get a body signed, and no receiver holds a secret another one accepts.
//! - The outbox is bounded: at most `webhook_outbox_max_events_per_key` events of one key (the
//!   caller's key name; `passthrough` and `anonymous` are one key each) and
//!   `webhook_outbox_max_events` in all. Past either, the new event is refused (not stored, counted in
//!   `gateway_webhook_outbox_refused_total`, logged): the events already stored were promised to
//!   their receivers when their uploads were answered, and dropping them for newer ones would let one
//!   key evict another's. A count, not a rate: a key whose receiver keeps up never holds many, so its
//!   bursts pass; one whose receiver is down or slow stops at its cap, however fast it uploads. The
//!   store keeps no entry longer than `webhook_max_age_secs` plus an hour (a Redis TTL; the embedded
//!   store purges), even if no worker runs.
//! - `worker::run` delivers in the background, fairly across receivers (round-robin), at most
//!   `webhook_receiver_concurrency` to one receiver and `webhook_concurrency` in all, each event
//!   under a lease (a store lock) so one replica sends it, retried with exponential backoff and jitter
//!   until `webhook_max_age_secs`, then dead. A receiver that fails `webhook_receiver_pause_after_failures`
//!   attempts in a row is paused (then probed one event at a time), so one that is down or never
//!   answers holds no slot another receiver needs. A 2xx ends an event; a 410 stops the URL's events.
//! - Delivery is at least once (a crash between the receiver's 2xx and the outbox's removal sends
//!   it again), with a `webhook-id` stable across attempts for de-duplication, and in no order.
pub mod sign;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::metrics::GatewayMetrics;
use crate::secret::SecretSource;
use crate::state::{now_ms, OutboxAdd, OutboxAdded, StateStore, StoreError};

/// How much longer than `webhook_max_age_secs` the store keeps an entry by itself: the worker buries
/// (and counts) dead events first; the store's own expiry is for entries no worker will visit.
const OUTBOX_KEEP_MARGIN: Duration = Duration::from_secs(3600);

/// Who receives an event: the gateway's `webhook_url`, or an API key's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Receiver {
    Global,
    Key(Arc<str>),
}

impl Receiver {
    /// Its name in the outbox (the delivery lane), logs and metrics: `global` or `key:<name>`.
    pub fn name(&self) -> String {
        match self {
            Self::Global => "global".into(),
            Self::Key(name) => format!("key:{name}"),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "global" => Some(Self::Global),
            _ => name.strip_prefix("key:").map(|k| Self::Key(Arc::from(k))),
        }
    }
}

/// Where one receiver is and which secrets sign its events (validated).
#[derive(Clone)]
pub struct ReceiverSettings {
    pub url: String,
    /// `whsec_...` secrets, whitespace-separated; a file is read at each delivery, so a rotated
    /// Secret is picked up without a restart.
    pub secret: SecretSource,
}

impl fmt::Debug for ReceiverSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiverSettings")
            .field("url", &crate::http_client::loggable_url(&self.url))
            .field("secret", &self.secret)
            .finish()
    }
}

/// The validated webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The gateway's `webhook_url` and `webhook_secret`: every event whose key names no receiver of
    /// its own (None: those events are not sent).
    pub global: Option<ReceiverSettings>,
    /// The keys with their own `webhook_url` and `webhook_secret`, by key name.
    pub keys: BTreeMap<String, ReceiverSettings>,
    pub max_age: Duration,
    /// One attempt, connecting included.
    pub timeout: Duration,
    /// Connecting alone.
    pub connect_timeout: Duration,
    /// Attempts in flight at once, per replica.
    pub concurrency: usize,
    /// Attempts in flight at once to one receiver, per replica.
    pub receiver_concurrency: usize,
    /// Failed attempts in a row after which a receiver is paused.
    pub pause_after_failures: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Events the outbox holds at most, all keys together.
    pub outbox_max_events: u64,
    /// Events the outbox holds at most for one key.
    pub outbox_max_events_per_key: u64,
}

impl WebhookSettings {
    /// Whether any event can be sent (else no worker runs).
    pub fn any_receiver(&self) -> bool {
        self.global.is_some() || !self.keys.is_empty()
    }

    /// The receiver of the events of a caller whose key is `key_name` (None: no key).
    pub fn receiver_for(&self, key_name: Option<&str>) -> Option<Receiver> {
        match key_name.filter(|k| self.keys.contains_key(*k)) {
            Some(key) => Some(Receiver::Key(Arc::from(key))),
            None => self.global.as_ref().map(|_| Receiver::Global),
        }
    }

    /// A receiver's URL and secret, as configured now (None: the key is gone, or names no URL).
    pub fn resolve(&self, receiver: &Receiver) -> Option<&ReceiverSettings> {
        match receiver {
            Receiver::Global => self.global.as_ref(),
            Receiver::Key(name) => self.keys.get(&**name),
        }
    }

    /// The receiver an entry written before receivers were named was meant for: the configured one
    /// with that exact URL, if any (the stored URL is never sent to).
    fn receiver_of_url(&self, url: &str) -> Option<Receiver> {
        if self.global.as_ref().is_some_and(|g| g.url == url) {
            return Some(Receiver::Global);
        }
        self.keys
            .iter()
            .find(|(_, r)| r.url == url)
            .map(|(name, _)| Receiver::Key(Arc::from(name.as_str())))
    }
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
    /// The upload link the upload came through (its id, as `POST /v1/upload-links` answered it):
    /// its caller was the link's holder, not the key's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link_id: Option<String>,
    pub request_id: Option<String>,
    /// A tus upload's id, and its `Upload-Metadata` decoded: the caller's input (a link holder's
    /// too), signed as received, never checked by the gateway.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tus_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upload_metadata: Option<HashMap<String, String>>,
    /// Whether the file was scanned for malware (`{"scanned": true, "verdict": "clean", "engine"}`,
    /// or `{"scanned": false, "reason"}`), as the upload's 201 says. None in events written before
    /// the malware gate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scan: Option<crate::scan::ScanReport>,
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
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link_id: Option<String>,
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
    /// `Receiver::name`: looked up in the configuration at each attempt. Absent only in entries
    /// written before receivers were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<String>,
    /// What those older entries held instead: used only to find the configured receiver with that
    /// URL, never sent to, never written.
    #[serde(default, skip_serializing)]
    pub url: Option<String>,
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

    /// Stores `event`, of a caller whose key label is `source` (the key's name, `passthrough` or
    /// `anonymous`: the unit of the per-key cap) and whose key is `key_name`, for the key's own
    /// receiver or else the gateway's; with neither, nothing. Returns once the outbox holds it.
    /// Refused past a cap, or lost to a store that fails: logged and counted, and the upload's
    /// answer does not change (the file is in Box either way; a retried upload would make a second).
    pub async fn emit(&self, source: &str, key_name: Option<&str>, event: Event) {
        let Some(receiver) = self.settings.receiver_for(key_name) else {
            return;
        };
        let kind = event.kind();
        match self.store_event(source, &receiver, &event).await {
            Ok((id, OutboxAdded::Added)) => {
                self.metrics
                    .webhook_events
                    .with_label_values(&[kind, "stored"])
                    .inc();
                tracing::debug!(webhook_id = %id, event = kind, receiver = %receiver.name(), "event stored in the outbox");
                self.wake.notify_one();
            }
            Ok((_, refused)) => {
                let (cap, setting) = match refused {
                    OutboxAdded::SourceFull => ("key", "webhook_outbox_max_events_per_key"),
                    _ => ("total", "webhook_outbox_max_events"),
                };
                self.metrics
                    .webhook_outbox_refused
                    .with_label_values(&[source, cap])
                    .inc();
                tracing::warn!(
                    event = kind,
                    key = source,
                    cap,
                    "the outbox is full ({setting}): event not stored, it will not be delivered"
                );
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

    async fn store_event(
        &self,
        source: &str,
        receiver: &Receiver,
        event: &Event,
    ) -> Result<(String, OutboxAdded), StoreError> {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let now = now_ms();
        let timestamp = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let lane = receiver.name();
        let entry = Entry {
            receiver: Some(lane.clone()),
            url: None,
            body: event.body(&timestamp),
            created_ms: now,
            due_ms: now,
            attempts: 0,
        };
        let value = serde_json::to_vec(&entry).map_err(|e| StoreError(e.to_string()))?;
        let added = self
            .store
            .outbox_add(OutboxAdd {
                id: &id,
                lane: &lane,
                source,
                value,
                created_ms: now,
                due_ms: now,
                keep: self.keep(),
                max_events: self.settings.outbox_max_events,
                max_events_per_source: self.settings.outbox_max_events_per_key,
            })
            .await?;
        Ok((id, added))
    }

    /// How long the store keeps an entry by itself.
    fn keep(&self) -> Duration {
        self.settings.max_age + OUTBOX_KEEP_MARGIN
    }

    /// The receiver an entry is for, as configured now.
    fn receiver_of(&self, entry: &Entry) -> Option<Receiver> {
        match (&entry.receiver, &entry.url) {
            (Some(name), _) => Receiver::parse(name),
            (None, Some(url)) => self.settings.receiver_of_url(url),
            (None, None) => None,
        }
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
        assert!(body["data"].get("link_id").is_none(), "only through a link");
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

#[cfg(test)]
mod receiver_tests {
    use super::*;
    use crate::secret::Secret;

    fn receiver(url: &str) -> ReceiverSettings {
        ReceiverSettings {
            url: url.into(),
            secret: SecretSource::Inline(Secret::new("whsec_x")),
        }
    }

    fn settings(global: bool) -> WebhookSettings {
        WebhookSettings {
            global: global.then(|| receiver("https://gateway.example/hooks")),
            keys: BTreeMap::from([("a".to_owned(), receiver("https://a.example/hooks"))]),
            max_age: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            concurrency: 1,
            receiver_concurrency: 1,
            pause_after_failures: 1,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            outbox_max_events: 10,
            outbox_max_events_per_key: 10,
        }
    }

    #[test]
    fn a_keys_own_receiver_else_the_gateways() {
        let s = settings(true);
        let a = s.receiver_for(Some("a")).unwrap();
        assert_eq!(a.name(), "key:a");
        assert_eq!(s.resolve(&a).unwrap().url, "https://a.example/hooks");
        assert_eq!(s.receiver_for(Some("b")), Some(Receiver::Global));
        assert_eq!(s.receiver_for(None), Some(Receiver::Global));
        assert_eq!(settings(false).receiver_for(None), None);
        assert_eq!(Receiver::parse("key:a"), Some(a));
        assert_eq!(Receiver::parse("global"), Some(Receiver::Global));
        assert_eq!(Receiver::parse("https://elsewhere.example"), None);
        // A key removed from the configuration has no receiver any more.
        assert!(s.resolve(&Receiver::Key(Arc::from("gone"))).is_none());
    }

    #[test]
    fn an_older_entrys_url_only_names_a_configured_receiver() {
        let s = settings(true);
        assert_eq!(
            s.receiver_of_url("https://a.example/hooks"),
            Some(Receiver::Key(Arc::from("a")))
        );
        assert_eq!(
            s.receiver_of_url("https://gateway.example/hooks"),
            Some(Receiver::Global)
        );
        assert_eq!(s.receiver_of_url("http://169.254.169.254/"), None);
        let old: Entry = serde_json::from_str(
            r#"{"url":"https://a.example/hooks","body":"{}","created_ms":1,"due_ms":1,"attempts":0}"#,
        )
        .unwrap();
        let written = serde_json::to_string(&old).unwrap();
        assert!(!written.contains("url"), "never written: {written}");
    }

    #[test]
    fn receiver_urls_are_logged_without_credentials() {
        let r = receiver("https://user:hunter2@a.example/hooks?token=t0ken");
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("t0ken"), "{shown}");
        assert!(shown.contains("a.example/hooks"), "{shown}");
    }
}
