//! The delivery worker: takes due events from the outbox, signs and sends them, and removes,
//! reschedules or buries each by the receiver's answer.
//!
//! With several replicas every worker sees every due event; each takes the event's lease (a store
//! lock) first and then reads the entry again, so an event one replica delivered (and removed) or
//! rescheduled is not sent again by another that listed it a moment before.
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{sign, Entry, Events};
use crate::state::now_ms;
use crate::state::StoreError;

/// Due events listed per poll, per delivery slot.
const LIST_PER_SLOT: usize = 4;
/// How often the outbox's depth and age are read for the metrics.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// 410: the receiver asks for no more events at this URL.
    Gone,
    /// Any other answer, a timeout, a connection error: the metric's reason.
    Retry(String),
}

/// Delivers until `stop` fires (after the drain), then lets deliveries under way finish for at most
/// `webhook_timeout_secs`; what is left stays in the outbox for the next start (at least once).
pub async fn run(events: Arc<Events>, stop: CancellationToken) {
    let http = match crate::http_client::webhook_client(events.settings.timeout) {
        Ok(http) => http,
        Err(err) => {
            tracing::error!(error = %err, "webhook delivery cannot start");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(events.settings.concurrency));
    let poll = events
        .settings
        .min_backoff
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut running = JoinSet::new();
    let mut stats_at = tokio::time::Instant::now();
    loop {
        if stats_at <= tokio::time::Instant::now() {
            stats_at = tokio::time::Instant::now() + STATS_EVERY;
            events.update_stats().await;
        }
        let listed = events
            .store
            .outbox_due(now_ms(), events.settings.concurrency * LIST_PER_SLOT)
            .await;
        match listed {
            Ok(ids) => {
                for id in ids {
                    let permit = tokio::select! {
                        permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                        () = stop.cancelled() => break,
                    };
                    let (events, http) = (events.clone(), http.clone());
                    running.spawn(async move {
                        if let Err(err) = events.deliver(&http, &id).await {
                            tracing::warn!(webhook_id = %id, error = %err, "webhook delivery: the state store failed; retried later");
                        }
                        drop(permit);
                    });
                }
            }
            Err(err) => tracing::warn!(error = %err, "webhook outbox unreadable; retried"),
        }
        while running.try_join_next().is_some() {}
        tokio::select! {
            () = stop.cancelled() => break,
            () = events.wake.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
    let left = tokio::time::timeout(events.settings.timeout, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if left.is_err() {
        tracing::warn!("webhook deliveries still under way at shutdown: stopped; they stay in the outbox");
        running.shutdown().await;
    }
    events.update_stats().await;
}

fn gone_key(url: &str) -> String {
    crate::state::keys::webhook_gone(&hex::encode(Sha256::digest(url.as_bytes())))
}

impl Events {
    async fn update_stats(&self) {
        if let Ok((depth, oldest)) = self.store.outbox_stats().await {
            self.metrics.webhook_outbox_depth.set(depth as i64);
            let age = oldest.map_or(0, |o| now_ms().saturating_sub(o) / 1000);
            self.metrics.webhook_outbox_oldest_age.set(age as i64);
        }
    }

    /// One attempt at the event `id`, under its lease.
    async fn deliver(&self, http: &reqwest::Client, id: &str) -> Result<(), StoreError> {
        let lease_key = crate::state::keys::webhook_lease(id);
        let lease = self.settings.timeout + Duration::from_secs(30);
        let Some(lock) = self.store.lock(&lease_key, lease).await? else {
            return Ok(()); // Another replica (or this one) is at it.
        };
        let result = self.deliver_leased(http, id).await;
        self.store.unlock(&lock).await?;
        result
    }

    async fn deliver_leased(&self, http: &reqwest::Client, id: &str) -> Result<(), StoreError> {
        // Read again under the lease: another replica may have delivered or rescheduled it.
        let Some(bytes) = self.store.outbox_get(id).await? else {
            return Ok(());
        };
        let mut entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::error!(webhook_id = %id, error = %err, "unreadable outbox entry dropped");
                self.metrics.webhook_dead.with_label_values(&["unreadable"]).inc();
                return self.store.outbox_remove(id).await;
            }
        };
        let now = now_ms();
        if entry.due_ms > now {
            return Ok(());
        }
        if self.store.get(&gone_key(&entry.url)).await?.is_some() {
            self.metrics.webhook_dead.with_label_values(&["gone"]).inc();
            tracing::warn!(webhook_id = %id, "event dropped: its receiver answered 410 Gone to an earlier event");
            return self.store.outbox_remove(id).await;
        }
        let attempt = self.send(http, id, &entry).await;
        entry.attempts += 1;
        match attempt {
            Attempt::Delivered => {
                self.metrics.webhook_delivered.inc();
                tracing::info!(webhook_id = %id, attempts = entry.attempts, "webhook delivered");
                self.store.outbox_remove(id).await
            }
            Attempt::Gone => {
                self.metrics.webhook_dead.with_label_values(&["gone"]).inc();
                tracing::warn!(webhook_id = %id, "the receiver answered 410 Gone: no more events go to its URL for webhook_max_age_secs");
                self.store
                    .put(&gone_key(&entry.url), b"410".to_vec(), self.settings.max_age)
                    .await?;
                self.store.outbox_remove(id).await
            }
            Attempt::Retry(reason) => {
                let age = Duration::from_millis(now.saturating_sub(entry.created_ms));
                let delay = backoff(&self.settings, entry.attempts);
                if age + delay > self.settings.max_age {
                    self.metrics.webhook_dead.with_label_values(&["expired"]).inc();
                    tracing::error!(webhook_id = %id, attempts = entry.attempts, reason, "webhook dead: not delivered within webhook_max_age_secs");
                    return self.store.outbox_remove(id).await;
                }
                self.metrics.webhook_retried.with_label_values(&[&reason]).inc();
                tracing::warn!(webhook_id = %id, attempts = entry.attempts, reason,
                    retry_in_ms = delay.as_millis() as u64, "webhook not delivered; retried later");
                entry.due_ms = now + delay.as_millis() as u64;
                let value = serde_json::to_vec(&entry).map_err(|e| StoreError(e.to_string()))?;
                self.store
                    .outbox_put(id, value, entry.created_ms, entry.due_ms)
                    .await
            }
        }
    }

    async fn send(&self, http: &reqwest::Client, id: &str, entry: &Entry) -> Attempt {
        let keys = match self
            .settings
            .secret
            .as_ref()
            .ok_or_else(|| "no webhook_secret".to_owned())
            .and_then(|s| s.read())
            .and_then(|s| sign::parse_secrets(&s))
        {
            Ok(keys) => keys,
            Err(why) => {
                tracing::error!(webhook_id = %id, why, "webhook_secret unusable: event not sent");
                return Attempt::Retry("secret".into());
            }
        };
        let timestamp = crate::state::now_secs();
        let signature = sign::signature(&keys, id, timestamp, entry.body.as_bytes());
        let sent = http
            .post(&entry.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(entry.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            Ok(r) if r.status() == reqwest::StatusCode::GONE => Attempt::Gone,
            Ok(r) => Attempt::Retry(format!("status_{}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Attempt::Retry("timeout".into()),
            Err(_) => Attempt::Retry("connection".into()),
        }
    }
}

/// Exponential from `webhook_min_backoff_ms`, capped at `webhook_max_backoff_secs`, with "equal
/// jitter" (half fixed, half random) so receivers that come back are not hit by every replica's
/// retries at the same instant.
fn backoff(settings: &super::WebhookSettings, attempts: u32) -> Duration {
    let exp = settings
        .min_backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(settings.max_backoff);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let settings = super::super::WebhookSettings {
            url: None,
            secret: None,
            max_age: Duration::from_secs(86400),
            timeout: Duration::from_secs(10),
            concurrency: 1,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        for (attempts, full) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = backoff(&settings, attempts);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
        }
    }
}
