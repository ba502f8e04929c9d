//! Box's rate limits, kept by the gateway before Box has to: every Box call (through
//! `BoxClient::send`, beside the retries of `retry.rs`) first takes its place in its principal's
//! budget, shared by every replica through the state store (`StateStore::rate_take`).
//!
//! Box limits each user (the service account, each `As-User`, each token's own user) to about 1,000
//! calls and 240 upload calls (new sessions, direct uploads) a minute, and answers 429 past them. The
//! pacer keeps two GCRA lanes per principal (`state/rate.rs`): calls, and upload calls. Three kinds of
//! waiting:
//! - a new upload reserves its first upload call (`reserve_upload_call`) before any byte of its body
//!   is read: it waits at most `wait` for an upload call and a call, fairly among the API keys waiting
//!   for the same principal (round-robin, in this process), then is refused (503 `box_rate_limited`
//!   with `Retry-After`); an upload refused before it made that call gives it back (`give_back`);
//! - every other call of an upload (parts, commits, checks, retries) waits for its place until the
//!   call's deadline (`call`, `box_call_deadline_secs`): when the room comes later than that (a pause
//!   past it), it fails at once with the time the room is expected (503 `box_rate_limited` with
//!   `Retry-After`), like any other Box failure, instead of holding the upload. Those waits are
//!   otherwise short: admissions are paced to what the call budget can carry;
//! - cleanup (aborting a session, deleting a file that is not what was sent) never waits
//!   (`cleanup`): it takes its place when there is one and goes anyway when there is not, since
//!   held back it would keep the client, a drain and the session waiting.
//!
//! A 429 from Box (`throttled`) pauses the principal for every replica until its `Retry-After`, at
//! most `max_pause` (`box_rate_max_pause_secs`), and halves the rate, which climbs back linearly
//! over `RECOVERY` (a lower limit than configured, such as Box's temporary ones, is found instead of
//! fought). If the state store fails, calls go unpaced (logged): Box's own 429s and the retries
//! still hold the line.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::metrics::GatewayMetrics;
use crate::state::rate::{Lane, RateTake, RateThrottle};
use crate::state::{now_ms, StateStore};

/// From half the rate back to the full rate in half of this (linear).
const RECOVERY: Duration = Duration::from_secs(300);
/// The 429s of one burst (all replicas, all calls in flight) halve the rate once.
const THROTTLE_GRACE: Duration = Duration::from_secs(5);
/// The rate is never lowered below this fraction of the configured one.
const FLOOR: f64 = 0.1;
/// A 429 without `Retry-After` pauses the principal this long.
const DEFAULT_PAUSE: Duration = Duration::from_secs(2);
/// Longest single sleep of a waiter before it asks the store again (another replica's 429 or a
/// store that came back are noticed this soon).
const MAX_NAP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct PacerSettings {
    /// 0: calls are not paced.
    pub calls_per_minute: u32,
    /// 0: upload calls are not paced (nor admissions).
    pub uploads_per_minute: u32,
    /// How long a new upload may wait for capacity before 503 `box_rate_limited`.
    pub wait: Duration,
    /// The longest principal-wide pause a 429 starts, whatever its `Retry-After`
    /// (`box_rate_max_pause_secs`).
    pub max_pause: Duration,
}

/// A principal as the pacer knows it: a digest, never a token or a user id in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaceKey {
    /// The state store's key.
    key: Arc<str>,
    /// A short form for metrics labels (12 hex digits of the digest; `passthrough` for callers' tokens).
    label: Arc<str>,
}

impl PaceKey {
    /// `principal_id` from `TokenProvider::principal_id`, and the `As-User` if any.
    pub fn of(principal_id: &str, as_user: Option<&str>) -> Self {
        let mut h = Sha256::new();
        h.update(principal_id.as_bytes());
        h.update([0]);
        h.update(as_user.unwrap_or("").as_bytes());
        let digest = hex::encode(h.finalize());
        // Pass-through tokens are many and short-lived (Box's last an hour): one label for all of
        // them keeps the metric's series bounded; configured principals each get their own.
        let label = match principal_id.starts_with("token:") {
            true => "passthrough",
            false => &digest[..12],
        };
        Self {
            key: Arc::from(crate::state::keys::pace(&digest[..32])),
            label: Arc::from(label),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// A new upload's admission: it paid for its first upload call, which the client then sends without
/// taking from the budget again.
#[derive(Debug, Clone, Default)]
pub struct Admission(Arc<AtomicBool>);

impl Admission {
    /// Whether the prepaid upload call was still there (it is used once).
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// An admission that found no capacity within the wait, or a call none before its deadline.
#[derive(Debug, Clone, Copy)]
pub struct NoCapacity {
    pub waited: Duration,
    /// A fair guess of when capacity may be there: for an admission, the upload interval times the
    /// uploads waiting ahead of this one; for a call, when the store expects its room (the pause's
    /// end, or the budget's next place).
    pub retry_after: Duration,
}

pub struct Pacer {
    store: Arc<dyn StateStore>,
    settings: PacerSettings,
    metrics: Arc<GatewayMetrics>,
    queues: Mutex<HashMap<PaceKey, Arc<FairQueue>>>,
}

/// The admissions waiting for one principal in this process: one FIFO per API key, served
/// round-robin, so a key with many uploads waiting gets one turn in each round, like any other.
#[derive(Default)]
struct FairQueue {
    state: Mutex<Fair>,
    notify: Notify,
}

#[derive(Default)]
struct Fair {
    next_ticket: u64,
    /// Tickets waiting, by key.
    waiting: HashMap<Arc<str>, VecDeque<u64>>,
    /// Keys with tickets, in the order of their turns.
    turns: VecDeque<Arc<str>>,
    count: usize,
}

impl Fair {
    /// A new waiter of `who`: its ticket.
    fn join(&mut self, who: &Arc<str>) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let entry = self.waiting.entry(who.clone()).or_default();
        if entry.is_empty() {
            self.turns.push_back(who.clone());
        }
        entry.push_back(ticket);
        self.count += 1;
        ticket
    }

    /// Tickets that came before `ticket` and still wait.
    fn ahead_of(&self, ticket: u64) -> usize {
        self.waiting
            .values()
            .map(|q| q.iter().filter(|t| **t < ticket).count())
            .sum()
    }

    fn head(&self) -> Option<u64> {
        let who = self.turns.front()?;
        self.waiting.get(who)?.front().copied()
    }

    /// Removes `ticket` of `who`; `served`: its key's turn is over (it goes to the back).
    fn remove(&mut self, who: &Arc<str>, ticket: u64, served: bool) {
        let Some(queue) = self.waiting.get_mut(who) else {
            return;
        };
        let before = queue.len();
        queue.retain(|t| *t != ticket);
        self.count -= before - queue.len();
        let empty = queue.is_empty();
        if empty {
            self.waiting.remove(who);
        }
        if empty || served {
            if let Some(at) = self.turns.iter().position(|w| w == who) {
                self.turns.remove(at);
            }
            if !empty {
                self.turns.push_back(who.clone());
            }
        }
    }
}

impl Pacer {
    pub fn new(store: Arc<dyn StateStore>, settings: PacerSettings, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            store,
            settings,
            metrics,
            queues: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &PacerSettings {
        &self.settings
    }

    fn lane(per_minute: u32) -> Option<Lane> {
        (per_minute > 0).then(|| Lane {
            interval_ms: 60_000.0 / per_minute as f64,
            // Two seconds' worth at once: Box counts per minute, and a burst much larger than that
            // meets Box's own limit when several replicas start together.
            burst: (per_minute as f64 / 30.0).floor().max(1.0),
            cost: 1.0,
        })
    }

    /// `admission`: a new upload, which gets a call only while half the call burst is left for the
    /// calls of uploads under way. Those come first: when their parts fill the call budget, new
    /// uploads wait (and are refused after `wait`) instead of queueing behind them, so the calls of
    /// an upload under way never wait long (far less than `box_call_deadline_secs`).
    fn take_of(&self, upload: bool, admission: bool) -> RateTake {
        let mut calls = Self::lane(self.settings.calls_per_minute);
        if let (Some(lane), true) = (&mut calls, admission) {
            lane.burst = (lane.burst / 2.0).floor().max(1.0);
        }
        RateTake {
            now_ms: now_ms(),
            lanes: [
                calls,
                upload
                    .then(|| Self::lane(self.settings.uploads_per_minute))
                    .flatten(),
            ],
            recovery_ms: RECOVERY.as_millis() as u64,
        }
    }

    /// One try: 0 (taken) or the milliseconds to wait. A store that fails lets the call go.
    async fn try_take(&self, key: &PaceKey, upload: bool, admission: bool) -> u64 {
        let take = self.take_of(upload, admission);
        if take.lanes.iter().all(Option::is_none) {
            return 0;
        }
        match self.store.rate_take(&key.key, take).await {
            Ok(wait) => wait,
            Err(err) => {
                tracing::warn!(error = %err, "the state store could not pace a Box call; it goes unpaced");
                0
            }
        }
    }

    /// Waits for the call's place in its principal's budget until `deadline` (the call's, across its
    /// retries): a place that comes later (a pause past it) is not waited for at all, the call fails
    /// at once with when the room is expected.
    pub async fn call(
        &self,
        key: &PaceKey,
        upload: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(), NoCapacity> {
        let started = tokio::time::Instant::now();
        loop {
            let wait = self.try_take(key, upload, false).await;
            if wait == 0 {
                break;
            }
            let room_in = Duration::from_millis(wait);
            if tokio::time::Instant::now() + room_in > deadline {
                let waited = started.elapsed();
                self.observe("call", waited);
                tracing::warn!(
                    principal = key.label(),
                    ?room_in,
                    "no Box capacity for this principal before the call's deadline: the call fails instead of waiting"
                );
                return Err(NoCapacity {
                    waited,
                    retry_after: room_in,
                });
            }
            tokio::time::sleep(nap(wait)).await;
        }
        self.observe("call", started.elapsed());
        Ok(())
    }

    /// A cleanup call (an abort, a delete): it takes its place when there is one, so the budget
    /// knows of it, and goes at once either way (counted). Box may answer it 429 during a pause; the
    /// caller retries it then (`SessionGuard`, in the background).
    pub async fn cleanup(&self, key: &PaceKey, endpoint: &'static str) {
        if self.try_take(key, false, false).await > 0 {
            tracing::info!(
                endpoint,
                principal = key.label(),
                "a cleanup call goes to Box at once although the pacer has no room for it now"
            );
            self.metrics
                .box_rate_cleanups_unpaced
                .with_label_values(&[endpoint])
                .inc();
        }
    }

    /// Counts a call that goes to Box for `key` (by hashed principal).
    pub fn count(&self, key: &PaceKey) {
        self.metrics
            .box_calls_by_principal
            .with_label_values(&[key.label()])
            .inc();
    }

    /// Waits, at most `settings.wait` and fairly among `who`s (API key names) waiting for the same
    /// principal, for one upload call and one call: the new upload's first call is paid for.
    pub async fn reserve_upload_call(&self, key: &PaceKey, who: &str) -> Result<Admission, NoCapacity> {
        let started = tokio::time::Instant::now();
        if self.settings.uploads_per_minute == 0 && self.settings.calls_per_minute == 0 {
            return Ok(Admission::default());
        }
        let deadline = started + self.settings.wait;
        let queue = self.queue(key);
        let who: Arc<str> = Arc::from(who);
        let ticket = queue.state.lock().unwrap_or_else(|p| p.into_inner()).join(&who);
        let mut guard = Leave {
            pacer: self,
            key,
            queue: &queue,
            who: &who,
            ticket,
            served: false,
        };
        // What the store last said this upload would wait, as the head: a pause's rest.
        let mut room_in = Duration::ZERO;
        loop {
            let notified = queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let head = queue.state.lock().unwrap_or_else(|p| p.into_inner()).head() == Some(ticket);
            let now = tokio::time::Instant::now();
            if head {
                let wait = self.try_take(key, true, true).await;
                if wait == 0 {
                    guard.served = true;
                    drop(guard);
                    self.observe("admission", started.elapsed());
                    return Ok(Admission(Arc::new(AtomicBool::new(true))));
                }
                room_in = Duration::from_millis(wait);
                let until = tokio::time::Instant::now() + nap(wait);
                if until > deadline {
                    break;
                }
                tokio::time::sleep_until(until).await;
            } else {
                if now >= deadline {
                    break;
                }
                // Woken when the head is served or leaves; the nap bounds a missed wake-up.
                let _ = tokio::time::timeout_at(deadline.min(now + MAX_NAP), notified).await;
            }
        }
        // Each refused upload is told when its turn would have come (its place in the queue), so
        // the refused come back spread out and keep the budget busy, not all at once; and not
        // before the room the store named (the rest of a pause, at most `max_pause`).
        let ahead = queue
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ahead_of(ticket);
        drop(guard);
        let waited = started.elapsed();
        self.observe("admission", waited);
        let per_minute = match self.settings.uploads_per_minute {
            0 => self.settings.calls_per_minute,
            n => n,
        };
        let interval = 60.0 / per_minute.max(1) as f64;
        let retry_after =
            Duration::from_secs_f64((interval * (ahead + 1) as f64).clamp(1.0, 60.0)).max(room_in);
        self.metrics.box_rate_refused.with_label_values(&[&who]).inc();
        Err(NoCapacity { waited, retry_after })
    }

    /// Gives the prepaid call of `admission` back to `key`'s budget, unless it was made: its upload
    /// was refused before it reached Box (a later gate, its client gone). Whether it was given back.
    pub async fn give_back(&self, key: &PaceKey, admission: &Admission) -> bool {
        if !admission.take() {
            return false;
        }
        let take = self.take_of(true, true);
        if take.lanes.iter().all(Option::is_none) {
            return false;
        }
        if let Err(err) = self.store.rate_give_back(&key.key, take).await {
            tracing::warn!(error = %err, "the state store could not take back an unused Box admission");
            return false;
        }
        true
    }

    /// Box answered 429 to a call for `key`: every replica pauses that principal until `retry_after`
    /// (at most `max_pause`) and slows down.
    pub async fn throttled(&self, key: &PaceKey, endpoint: &'static str, retry_after: Option<Duration>) {
        let now = now_ms();
        let pause = self.pause_of(retry_after);
        let throttle = RateThrottle {
            now_ms: now,
            until_ms: now + pause.as_millis() as u64,
            recovery_ms: RECOVERY.as_millis() as u64,
            grace_ms: THROTTLE_GRACE.as_millis() as u64,
            floor: FLOOR,
        };
        tracing::warn!(
            endpoint,
            principal = key.label(),
            ?pause,
            "Box answered 429: the principal is paused and slowed down"
        );
        if let Err(err) = self.store.rate_throttle(&key.key, throttle).await {
            tracing::warn!(error = %err, "the state store could not record Box's 429");
        }
        // Counted once the pause is in the store: whoever sees the count also sees the pause.
        self.metrics.box_rate_limited.with_label_values(&[endpoint]).inc();
    }

    /// How long a 429 with this `Retry-After` pauses its principal. An hour-long pause (a proxy's
    /// odd header, `Retry-After: 100000000000000000000` read as the parser's ceiling) would stop every
    /// upload of that Box user on every replica; past `max_pause`, Box's next 429 pauses again.
    fn pause_of(&self, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or(DEFAULT_PAUSE).min(self.settings.max_pause)
    }

    fn queue(&self, key: &PaceKey) -> Arc<FairQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(key.clone()).or_default().clone()
    }

    fn observe(&self, kind: &str, waited: Duration) {
        self.metrics
            .box_rate_wait
            .with_label_values(&[kind])
            .observe(waited.as_secs_f64());
    }
}

/// Takes a waiter out of its queue however it ends (served, refused, or its request dropped), and
/// wakes the others: the next head must not wait for a nap to notice.
struct Leave<'a> {
    pacer: &'a Pacer,
    key: &'a PaceKey,
    queue: &'a Arc<FairQueue>,
    who: &'a Arc<str>,
    ticket: u64,
    served: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let empty = {
            let mut fair = self.queue.state.lock().unwrap_or_else(|p| p.into_inner());
            fair.remove(self.who, self.ticket, self.served);
            fair.count == 0
        };
        self.queue.notify.notify_waiters();
        if empty {
            // Queues of principals nobody waits for are dropped (pass-through has one per token).
            let mut queues = self.pacer.queues.lock().unwrap_or_else(|p| p.into_inner());
            let idle = queues.get(self.key).is_some_and(|q| {
                Arc::strong_count(q) <= 2 && q.state.lock().map(|f| f.count == 0).unwrap_or(false)
            });
            if idle {
                queues.remove(self.key);
            }
        }
    }
}

/// A sleep of about `wait_ms`, bounded by `MAX_NAP`, with a little jitter so the waiters of several
/// replicas do not ask the store in lockstep.
fn nap(wait_ms: u64) -> Duration {
    let jitter = fastrand::u64(0..=wait_ms / 10 + 5);
    Duration::from_millis(wait_ms + jitter).min(MAX_NAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_the_principal_and_the_user() {
        let a = PaceKey::of("token:abc", None);
        assert_eq!(a, PaceKey::of("token:abc", None));
        assert_ne!(a, PaceKey::of("token:abc", Some("7")));
        assert_ne!(a, PaceKey::of("gateway", None));
        assert!(!a.key.contains("abc") && a.label() == "passthrough");
        let own = PaceKey::of("gateway", Some("7"));
        assert_eq!(own.label().len(), 12);
    }

    #[test]
    fn turns_go_round_the_keys() {
        let mut fair = Fair::default();
        let (h, o): (Arc<str>, Arc<str>) = (Arc::from("hammer"), Arc::from("occasional"));
        for (who, ticket) in [(&h, 0), (&h, 1), (&h, 2), (&o, 3)] {
            assert_eq!(fair.join(who), ticket);
        }
        assert_eq!(fair.head(), Some(0));
        fair.remove(&h, 0, true);
        assert_eq!(fair.head(), Some(3), "the other key's turn");
        fair.remove(&o, 3, true);
        assert_eq!(fair.head(), Some(1));
        // A waiter that gives up does not cost its key the turn.
        fair.remove(&h, 1, false);
        assert_eq!(fair.head(), Some(2));
        fair.remove(&h, 2, true);
        assert_eq!((fair.head(), fair.count, fair.turns.len()), (None, 0, 0));
    }

    /// A pacer over a fresh embedded store (kept alive by the returned directory).
    fn pacer_of(settings: PacerSettings) -> (Pacer, Arc<GatewayMetrics>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> =
            Arc::new(crate::state::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let metrics = Arc::new(GatewayMetrics::new(&prometheus::Registry::new()).unwrap());
        (Pacer::new(store, settings, metrics.clone()), metrics, dir)
    }

    /// The defaults' rates, with `max_pause`.
    fn paced(max_pause: Duration) -> (Pacer, Arc<GatewayMetrics>, tempfile::TempDir) {
        pacer_of(PacerSettings {
            calls_per_minute: 900,
            uploads_per_minute: 220,
            wait: Duration::from_secs(10),
            max_pause,
        })
    }

    #[tokio::test]
    async fn calls_of_uploads_under_way_come_before_new_uploads() {
        let (pacer, _metrics, _dir) = pacer_of(PacerSettings {
            calls_per_minute: 60, // one a second, two at once
            uploads_per_minute: 600,
            wait: Duration::from_millis(300),
            max_pause: Duration::from_secs(120),
        });
        let key = PaceKey::of("gateway", None);
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(60);
        pacer.call(&key, false, deadline).await.unwrap();
        // Half the call burst is spent: a new upload waits (and is refused after the wait) ...
        assert!(pacer.reserve_upload_call(&key, "k").await.is_err());
        // ... while a call of an upload under way still goes at once.
        pacer.call(&key, false, deadline).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn admissions_are_bounded_and_fair() {
        let (pacer, _metrics, _dir) = pacer_of(PacerSettings {
            calls_per_minute: 6000,
            uploads_per_minute: 60, // one a second, two at once
            wait: Duration::from_secs(3),
            max_pause: Duration::from_secs(120),
        });
        let pacer = Arc::new(pacer);
        let key = PaceKey::of("gateway", None);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pacer, key, order) = (pacer.clone(), key.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let got = pacer.reserve_upload_call(&key, "hammer").await;
                if got.is_ok() {
                    order.lock().unwrap().push("hammer");
                }
                got.err()
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (p, k) = (pacer.clone(), key.clone());
        let occasional = p.reserve_upload_call(&k, "occasional").await;
        assert!(occasional.is_ok(), "the occasional key got its turn");
        order.lock().unwrap().push("occasional");
        let mut refused = Vec::new();
        for t in tasks {
            refused.extend(t.await.unwrap());
        }
        let order = order.lock().unwrap().clone();
        // The burst of two went to the key that came first; the occasional key then waited one
        // turn of the other (not behind its six other waiters).
        let at = order.iter().position(|w| *w == "occasional").unwrap();
        assert!(at <= 3, "{order:?}");
        // Three seconds at one a second after a burst of two: about five admitted, the rest refused
        // with a Retry-After.
        assert!((3..=6).contains(&order.len()), "{order:?}");
        assert!(!refused.is_empty());
        for r in refused {
            assert!(r.retry_after >= Duration::from_secs(1), "{r:?}");
            assert!(r.waited >= Duration::from_millis(900), "{r:?}");
        }
    }

    /// The header: `Retry-After: 100000000000000000000`, read as the parser's ceiling (an
    /// hour), pauses the principal for `max_pause` only; a call whose deadline comes before the
    /// pause's end does not wait for it at all, and is told when the room comes.
    #[tokio::test(start_paused = true)]
    async fn a_pause_is_capped_and_a_call_it_outlasts_fails_at_once() {
        let (pacer, _metrics, _dir) = paced(Duration::from_secs(120));
        let key = PaceKey::of("gateway", None);
        let asked =
            crate::box_api::error::retry_after_value("100000000000000000000", std::time::SystemTime::now());
        assert_eq!(asked, Some(crate::box_api::MAX_RETRY_AFTER));
        pacer.throttled(&key, "upload_part", asked).await;
        let started = tokio::time::Instant::now();
        let refused = pacer
            .call(&key, false, started + Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO, "not waited for");
        assert!(
            refused.retry_after > Duration::from_secs(110) && refused.retry_after <= Duration::from_secs(120),
            "the capped pause, not an hour: {refused:?}"
        );
        // Another principal is not paused.
        let other = PaceKey::of("gateway", Some("7"));
        pacer
            .call(&other, true, started + Duration::from_secs(1))
            .await
            .unwrap();
    }

    /// No `Retry-After` pauses for `DEFAULT_PAUSE`; a `max_pause` below that caps it too.
    #[test]
    fn pauses_are_capped_by_the_setting() {
        let (pacer, _metrics, _dir) = paced(Duration::from_secs(120));
        assert_eq!(pacer.pause_of(None), DEFAULT_PAUSE);
        assert_eq!(
            pacer.pause_of(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            pacer.pause_of(Some(crate::box_api::MAX_RETRY_AFTER)),
            Duration::from_secs(120)
        );
        let (short, _metrics, _dir) = paced(Duration::from_secs(1));
        assert_eq!(short.pause_of(None), Duration::from_secs(1));
    }

    /// A pause that ends before the deadline is waited out (on the wall clock the store keeps).
    #[tokio::test]
    async fn a_call_waits_for_a_pause_that_ends_before_its_deadline() {
        let (pacer, _metrics, _dir) = paced(Duration::from_secs(120));
        let key = PaceKey::of("gateway", None);
        pacer
            .throttled(&key, "upload_part", Some(Duration::from_millis(300)))
            .await;
        let started = tokio::time::Instant::now();
        pacer
            .call(&key, false, started + Duration::from_secs(5))
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    /// Cleanup is never held by a pause: it goes at once, counted as unpaced.
    #[tokio::test(start_paused = true)]
    async fn cleanup_goes_at_once_during_a_pause() {
        let (pacer, metrics, _dir) = paced(Duration::from_secs(120));
        let key = PaceKey::of("gateway", None);
        let started = tokio::time::Instant::now();
        pacer.cleanup(&key, "abort").await;
        let unpaced = || {
            metrics
                .box_rate_cleanups_unpaced
                .with_label_values(&["abort"])
                .get()
        };
        assert_eq!(unpaced(), 0, "there was room: it took its place");
        pacer
            .throttled(&key, "upload_part", Some(Duration::from_secs(3600)))
            .await;
        pacer.cleanup(&key, "abort").await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(unpaced(), 1);
    }
}
