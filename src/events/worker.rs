//! The delivery worker: takes due events from the outbox, signs and sends them, and removes,
//! reschedules or buries each by the receiver's answer.
//!
//! Receivers are isolated from one another (each is a lane of the outbox):
//! - each poll lists every lane's due events and starts them round-robin, one lane at a time, so a
//!   receiver with thousands of events due waits its turn like one with a single event;
//! - at most `webhook_receiver_concurrency` attempts run to one receiver (and `webhook_concurrency`
//!   in all), so a receiver that never answers holds that many slots, never all of them; a slot is
//!   taken without waiting (the listing never blocks behind a busy receiver);
//! - a receiver that failed `webhook_receiver_pause_after_failures` attempts in a row is paused for
//!   the backoff schedule of its failures, then probed with one event at a time until one goes
//!   through; its events stay in the outbox meanwhile, growing older like any other.
//!
//! The lanes' state is this replica's: with several replicas each keeps its own. Every worker may see
//! every due event; each takes the event's lease (a store lock) first and then reads the entry again,
//! so an event one replica delivered (and removed) or rescheduled is not sent again by another that
//! listed it a moment before.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{sign, Entry, Events, Receiver, WebhookSettings};
use crate::state::now_ms;
use crate::state::StoreError;

/// How often the outbox's depth and age are read for the metrics (and entries of older gateways
/// moved into lanes).
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// 410: the receiver asks for no more events at this URL.
    Gone,
    /// Any other answer, a timeout, a connection error: the metric's reason.
    Retry(String),
}

/// What a delivery tells its lane's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// The receiver took it (2xx) or asked for no more (410): it answers.
    Answered,
    /// The receiver failed it.
    Failed,
    /// Nothing was sent (another replica had it, it was not due any more, it had no receiver).
    Nothing,
}

/// One lane's state on this replica.
#[derive(Debug, Default)]
struct Lane {
    /// The events being attempted (still due in the store until their attempt ends).
    in_flight: HashSet<String>,
    /// Failed attempts in a row.
    failures: u32,
    paused_until: Option<Instant>,
}

/// Every lane's state, shared by the listing loop and the deliveries it starts.
#[derive(Default)]
struct Lanes(Mutex<HashMap<String, Lane>>);

impl Lanes {
    /// How many more attempts the lane may start now, and how many it has under way.
    fn room(&self, lane: &str, settings: &WebhookSettings, now: Instant) -> (usize, usize) {
        let lanes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = lanes.get(lane) else {
            return (settings.receiver_concurrency, 0);
        };
        let busy = state.in_flight.len();
        if state.paused_until.is_some_and(|until| until > now) {
            return (0, busy);
        }
        // After a pause, one probe at a time until an attempt goes through.
        let limit = match state.failures >= settings.pause_after_failures {
            true => 1,
            false => settings.receiver_concurrency,
        };
        (limit.saturating_sub(busy), busy)
    }

    fn in_flight(&self, lane: &str, id: &str) -> bool {
        let lanes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lanes.get(lane).is_some_and(|s| s.in_flight.contains(id))
    }

    fn started(&self, lane: &str, id: &str) {
        let mut lanes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lanes
            .entry(lane.to_owned())
            .or_default()
            .in_flight
            .insert(id.to_owned());
    }

    /// Records an attempt's end; `Some(pause)` when it paused the lane.
    fn ended(&self, lane: &str, id: &str, sent: Sent, settings: &WebhookSettings) -> Option<Duration> {
        let mut lanes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let state = lanes.entry(lane.to_owned()).or_default();
        state.in_flight.remove(id);
        match sent {
            Sent::Nothing => None,
            Sent::Answered => {
                state.failures = 0;
                state.paused_until = None;
                None
            }
            Sent::Failed => {
                state.failures += 1;
                let past = state.failures.checked_sub(settings.pause_after_failures)?;
                let pause = backoff(settings, past + 1);
                state.paused_until = Some(Instant::now() + pause);
                Some(pause)
            }
        }
    }

    /// Forgets lanes with nothing under way and no failures (a lane that has emptied).
    fn tidy(&self) {
        let mut lanes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lanes.retain(|_, s| !s.in_flight.is_empty() || s.failures > 0);
    }
}

/// Delivers until `stop` fires (after the drain), then lets deliveries under way finish for at most
/// `webhook_timeout_secs`; what is left stays in the outbox for the next start (at least once).
pub async fn run(events: Arc<Events>, stop: CancellationToken) {
    let settings = &events.settings;
    let http = match crate::http_client::webhook_client(settings.connect_timeout, settings.timeout) {
        Ok(http) => http,
        Err(err) => {
            tracing::error!(error = %err, "webhook delivery cannot start");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let lanes = Arc::new(Lanes::default());
    let poll = settings
        .min_backoff
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut running = JoinSet::new();
    let mut stats_at = Instant::now();
    // Which lane goes first this round: a different one each time.
    let mut turn = 0usize;
    loop {
        if stats_at <= Instant::now() {
            stats_at = Instant::now() + STATS_EVERY;
            events.migrate().await;
            events.update_stats().await;
            lanes.tidy();
        }
        match events.store.outbox_lanes().await {
            Ok(mut names) => {
                names.sort();
                if !names.is_empty() {
                    let n = names.len();
                    names.rotate_left(turn % n);
                    turn = turn.wrapping_add(1);
                }
                // Each lane's due events, as many as it may start now.
                let now = Instant::now();
                let mut queues = Vec::new();
                for lane in names {
                    let (room, busy) = lanes.room(&lane, settings, now);
                    let room = room.min(slots.available_permits());
                    if room == 0 {
                        continue;
                    }
                    // The earliest due include those under way (due until their attempt ends).
                    match events.store.outbox_due(&lane, now_ms(), room + busy).await {
                        Ok(ids) => {
                            let ids: VecDeque<_> = ids
                                .into_iter()
                                .filter(|id| !lanes.in_flight(&lane, id))
                                .take(room)
                                .collect();
                            if !ids.is_empty() {
                                queues.push((lane, ids));
                            }
                        }
                        Err(err) => tracing::warn!(error = %err, "webhook outbox unreadable; retried"),
                    }
                }
                // Round-robin: one event of each lane in turn, while slots are free.
                'rounds: loop {
                    let mut any = false;
                    for (lane, ids) in &mut queues {
                        let Some(id) = ids.pop_front() else { continue };
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break 'rounds;
                        };
                        any = true;
                        lanes.started(lane, &id);
                        let (events, http, lanes, lane) =
                            (events.clone(), http.clone(), lanes.clone(), lane.clone());
                        running.spawn(async move {
                            let sent = match events.deliver(&http, &lane, &id).await {
                                Ok(sent) => sent,
                                Err(err) => {
                                    tracing::warn!(webhook_id = %id, error = %err, "webhook delivery: the state store failed; retried later");
                                    Sent::Nothing
                                }
                            };
                            if let Some(pause) = lanes.ended(&lane, &id, sent, &events.settings) {
                                events.paused(&lane, pause);
                            }
                            drop(permit);
                        });
                    }
                    if !any {
                        break;
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "webhook outbox unreadable; retried"),
        }
        while running.try_join_next().is_some() {}
        // A finished delivery frees a slot (and maybe its lane's room): look again at once.
        tokio::select! {
            () = stop.cancelled() => break,
            () = events.wake.notified() => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
    let left = tokio::time::timeout(settings.timeout, async {
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

    /// Moves entries written by gateways before lanes (a replica not yet upgraded may still write
    /// them) into the legacy lane.
    async fn migrate(&self) {
        match self.store.outbox_migrate(self.keep()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                events = n,
                "webhook outbox: events stored by an older gateway moved into a lane"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "webhook outbox: events of an older gateway not moved; retried")
            }
        }
    }

    fn paused(&self, lane: &str, pause: Duration) {
        let receiver = Receiver::parse(lane).map_or_else(|| lane.to_owned(), |r| metric_label(&r));
        self.metrics
            .webhook_receiver_paused
            .with_label_values(&[&receiver])
            .inc();
        tracing::warn!(
            receiver = lane,
            pause_ms = pause.as_millis() as u64,
            "webhook receiver keeps failing: paused, then probed one event at a time"
        );
    }

    /// One attempt at the event `id` of `lane`, under its lease.
    async fn deliver(&self, http: &reqwest::Client, lane: &str, id: &str) -> Result<Sent, StoreError> {
        let lease_key = crate::state::keys::webhook_lease(id);
        let lease = self.settings.timeout + Duration::from_secs(30);
        let Some(lock) = self.store.lock(&lease_key, lease).await? else {
            return Ok(Sent::Nothing); // Another replica (or this one) is at it.
        };
        let result = self.deliver_leased(http, lane, id).await;
        self.store.unlock(&lock).await?;
        result
    }

    async fn deliver_leased(&self, http: &reqwest::Client, lane: &str, id: &str) -> Result<Sent, StoreError> {
        // Read again under the lease: another replica may have delivered or rescheduled it. Gone: it
        // was delivered, or the store let it expire (its id is still in the lane: remove that).
        let Some(bytes) = self.store.outbox_get(id).await? else {
            self.store.outbox_remove(id, lane).await?;
            return Ok(Sent::Nothing);
        };
        let mut entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::error!(webhook_id = %id, error = %err, "unreadable outbox entry dropped");
                self.metrics.webhook_dead.with_label_values(&["unreadable"]).inc();
                self.store.outbox_remove(id, lane).await?;
                return Ok(Sent::Nothing);
            }
        };
        let now = now_ms();
        if entry.due_ms > now {
            return Ok(Sent::Nothing);
        }
        // The receiver's URL and secret as configured now, never as stored.
        let resolved = self
            .receiver_of(&entry)
            .and_then(|r| Some((self.settings.resolve(&r)?, r)));
        let Some((target, receiver)) = resolved else {
            self.metrics
                .webhook_dead
                .with_label_values(&["no_receiver"])
                .inc();
            tracing::warn!(webhook_id = %id, receiver = entry.receiver.as_deref().unwrap_or("unknown"),
                "event dropped: its receiver is not configured any more (the key is gone or names no webhook_url)");
            self.store.outbox_remove(id, lane).await?;
            return Ok(Sent::Nothing);
        };
        let name = receiver.name();
        // An entry of an older gateway named its receiver by URL, which a retry does not write back.
        entry.receiver = Some(name.clone());
        if self.store.get(&gone_key(&target.url)).await?.is_some() {
            self.metrics.webhook_dead.with_label_values(&["gone"]).inc();
            tracing::warn!(webhook_id = %id, receiver = %name, "event dropped: its receiver answered 410 Gone to an earlier event");
            self.store.outbox_remove(id, lane).await?;
            return Ok(Sent::Nothing);
        }
        let attempt = self.send(http, id, &name, target, &entry).await;
        entry.attempts += 1;
        match attempt {
            Attempt::Delivered => {
                self.metrics.webhook_delivered.inc();
                tracing::info!(webhook_id = %id, receiver = %name, attempts = entry.attempts, "webhook delivered");
                self.store.outbox_remove(id, lane).await?;
                Ok(Sent::Answered)
            }
            Attempt::Gone => {
                self.metrics.webhook_dead.with_label_values(&["gone"]).inc();
                tracing::warn!(webhook_id = %id, receiver = %name, "the receiver answered 410 Gone: no more events go to its URL for webhook_max_age_secs");
                self.store
                    .put(&gone_key(&target.url), b"410".to_vec(), self.settings.max_age)
                    .await?;
                self.store.outbox_remove(id, lane).await?;
                Ok(Sent::Answered)
            }
            Attempt::Retry(reason) => {
                let age = Duration::from_millis(now.saturating_sub(entry.created_ms));
                let delay = backoff(&self.settings, entry.attempts);
                if age + delay > self.settings.max_age {
                    self.metrics.webhook_dead.with_label_values(&["expired"]).inc();
                    tracing::error!(webhook_id = %id, receiver = %name, attempts = entry.attempts, reason, "webhook dead: not delivered within webhook_max_age_secs");
                    self.store.outbox_remove(id, lane).await?;
                    return Ok(Sent::Failed);
                }
                self.metrics.webhook_retried.with_label_values(&[&reason]).inc();
                tracing::warn!(webhook_id = %id, receiver = %name, attempts = entry.attempts, reason,
                    retry_in_ms = delay.as_millis() as u64, "webhook not delivered; retried later");
                entry.due_ms = now + delay.as_millis() as u64;
                let value = serde_json::to_vec(&entry).map_err(|e| StoreError(e.to_string()))?;
                self.store
                    .outbox_reschedule(id, lane, value, entry.due_ms)
                    .await?;
                Ok(Sent::Failed)
            }
        }
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        id: &str,
        receiver: &str,
        target: &super::ReceiverSettings,
        entry: &Entry,
    ) -> Attempt {
        let keys = match target.secret.read().and_then(|s| sign::parse_secrets(&s)) {
            Ok(keys) => keys,
            Err(why) => {
                tracing::error!(webhook_id = %id, receiver, why, "the receiver's webhook_secret is unusable: event not sent");
                return Attempt::Retry("secret".into());
            }
        };
        let timestamp = crate::state::now_secs();
        let signature = sign::signature(&keys, id, timestamp, entry.body.as_bytes());
        let sent = http
            .post(&target.url)
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

/// A receiver as a metric label: `global`, or the key's name.
fn metric_label(receiver: &Receiver) -> String {
    match receiver {
        Receiver::Global => "global".into(),
        Receiver::Key(name) => name.to_string(),
    }
}

/// Exponential from `webhook_min_backoff_ms`, capped at `webhook_max_backoff_secs`, with "equal
/// jitter" (half fixed, half random) so receivers that come back are not hit by every replica's
/// retries at the same instant.
fn backoff(settings: &WebhookSettings, attempts: u32) -> Duration {
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
    use std::collections::BTreeMap;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            global: None,
            keys: BTreeMap::new(),
            max_age: Duration::from_secs(86400),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            concurrency: 8,
            receiver_concurrency: 2,
            pause_after_failures: 3,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            outbox_max_events: 100,
            outbox_max_events_per_key: 10,
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let settings = settings();
        for (attempts, full) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = backoff(&settings, attempts);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_that_keeps_failing_is_paused_then_probed_one_at_a_time() {
        let (s, lanes) = (settings(), Lanes::default());
        let now = Instant::now();
        assert_eq!(lanes.room("a", &s, now), (2, 0), "an idle lane: its concurrency");
        lanes.started("a", "1");
        lanes.started("a", "2");
        assert!(lanes.in_flight("a", "1") && !lanes.in_flight("b", "1"));
        assert_eq!(lanes.room("a", &s, now), (0, 2), "both slots in flight");
        assert_eq!(lanes.room("b", &s, now), (2, 0), "another lane is not affected");
        assert_eq!(lanes.ended("a", "1", Sent::Failed, &s), None);
        assert_eq!(lanes.ended("a", "2", Sent::Failed, &s), None);
        assert_eq!(lanes.room("a", &s, Instant::now()), (2, 0));
        lanes.started("a", "3");
        let pause = lanes
            .ended("a", "3", Sent::Failed, &s)
            .expect("the third failure in a row pauses");
        assert!(
            pause >= Duration::from_millis(500) && pause <= Duration::from_secs(1),
            "{pause:?}"
        );
        assert_eq!(lanes.room("a", &s, Instant::now()), (0, 0), "paused");
        tokio::time::advance(pause).await;
        assert_eq!(
            lanes.room("a", &s, Instant::now()),
            (1, 0),
            "probed one at a time"
        );
        lanes.started("a", "4");
        let longer = lanes
            .ended("a", "4", Sent::Failed, &s)
            .expect("a failed probe pauses again");
        assert!(longer >= Duration::from_secs(1), "{longer:?}");
        tokio::time::advance(longer).await;
        lanes.started("a", "5");
        assert_eq!(lanes.ended("a", "5", Sent::Answered, &s), None);
        assert_eq!(
            lanes.room("a", &s, Instant::now()),
            (2, 0),
            "an answer ends the pause"
        );
        // Nothing sent (another replica had it) changes nothing.
        lanes.started("a", "6");
        assert_eq!(lanes.ended("a", "6", Sent::Nothing, &s), None);
        lanes.tidy();
        assert!(lanes.0.lock().unwrap().is_empty());
    }
}
