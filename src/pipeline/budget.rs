//! The process-wide memory budget: file bytes held in memory, counted as they arrive, shared fairly
//! between the callers that hold them.
//!
//! Backpressure by bytes held (style.md, convention 3, as this budget keeps it): an upload takes budget
//! for each piece of its body as that piece joins a part, before the next piece is read; when it gets
//! none, it stops polling its body and TCP slows its client down. Nothing is taken for bytes a client
//! only promised (a declared size, a part not yet sent). Bound: file bytes held by the pipeline <=
//! `memory_budget_bytes`, plus one piece per upload being read (the piece actix-http handed over, about
//! its read buffer) and actix-http's own buffers per connection, both capped by `max_connections`
//! (docs/operations.md, "Sizing the memory budget").
//!
//! Fair shares. Every byte is held by a `Holder`: the caller's owner (an API key, one upload link, one
//! token's user, the anonymous caller), and a link's bytes count under its key as well. No account
//! (a key with its links, or one link) may have more than `share` bytes held or promised to parts it
//! is filling (`memory_budget_share_per_key` of the budget): whatever one tenant does, the rest of the
//! budget stays for the others. Waiters for budget are served fairly, not in arrival order: the one
//! whose tenant holds least goes first, so a tenant that holds much waits behind those that hold little.
//!
//! Why "promised" appears at all. A part (or a direct upload's whole file) is held whole until Box has
//! it: once an upload started filling one, it holds its bytes until the last one comes, so uploads that
//! each hold some of a part and wait for more could wait on one another for ever. Two rules keep that
//! from happening, without taking budget for bytes not yet sent:
//! - within a tenant, a part may start filling only when the tenant's share has room for all of it
//!   (`Hold::reserve_unit`: the tenant's promises never pass its share, so its own parts can always be
//!   finished within it: in arrival order, as before this budget was shared);
//! - across tenants, a piece is given budget only if every part being filled can still be finished
//!   (the banker's rule, `Ledger::safe`: in some order, each one's missing bytes fit in what is free
//!   plus what the ones before it will give back).
//!
//! The wait is bounded (`budget_wait_secs`): an upload that gets no budget in that time is refused
//! (503 `busy`) instead of waiting for ever, and while it waits its body is not read, so nothing else
//! would end the wait. How long bytes stay held is bounded by the client's body deadlines: an upload
//! holds its bytes only while its client keeps sending (`client_idle_timeout_secs`,
//! `client_min_bytes_per_sec`), and a part's bytes until Box has answered for it.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntGauge, IntGaugeVec};
use tokio::sync::oneshot;

/// Who holds budget bytes: the accounts they count under (the caller's owner first, then the key a
/// link belongs to) and the label of `gateway_buffered_bytes_by_key` (a key's name, never a link id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    accounts: Arc<[Arc<str>]>,
    label: Arc<str>,
}

impl Holder {
    /// `accounts`: the owner's own first, then wider ones (a link's key); duplicates are dropped.
    pub fn new(label: impl Into<Arc<str>>, accounts: impl IntoIterator<Item = String>) -> Self {
        let mut unique: Vec<Arc<str>> = Vec::new();
        for account in accounts {
            if !unique.iter().any(|a| **a == *account) {
                unique.push(account.into());
            }
        }
        Self {
            accounts: unique.into(),
            label: label.into(),
        }
    }

    /// The holder of uploads made by the gateway itself, or with no known owner.
    pub fn gateway() -> Self {
        Self::new("gateway", ["gateway".to_owned()])
    }

    fn own(&self) -> &Arc<str> {
        &self.accounts[0]
    }

    fn widest(&self) -> &Arc<str> {
        &self.accounts[self.accounts.len() - 1]
    }
}

#[derive(Clone)]
pub struct MemoryBudget {
    shared: Arc<Shared>,
    /// None: wait as long as it takes.
    max_wait: Option<Duration>,
}

struct Shared {
    total: u64,
    /// The most one account may hold and promise (`memory_budget_share_per_key` of `total`).
    share: u64,
    ledger: Mutex<Ledger>,
    gauge: IntGauge,
    peak: IntGauge,
    by_key: Option<IntGaugeVec>,
}

/// Why the budget's bytes were not given.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error("no {wanted} bytes of the memory budget came free within {waited:?}")]
    Busy { wanted: u64, waited: Duration },
}

/// A part (or a direct upload's file) larger than one caller's share of the budget: it could never
/// be held whole.
#[derive(Debug, thiserror::Error)]
#[error("{wanted} bytes can never fit in one caller's share of the memory budget ({share} of {total} bytes)")]
pub struct OverBudget {
    pub wanted: u64,
    pub share: u64,
    pub total: u64,
}

impl MemoryBudget {
    /// A budget of `total` bytes that one caller may take whole (see `with_share`).
    pub fn new(total: u64, gauge: IntGauge, peak: IntGauge) -> Self {
        Self {
            shared: Arc::new(Shared {
                total,
                share: total,
                ledger: Mutex::default(),
                gauge,
                peak,
                by_key: None,
            }),
            max_wait: None,
        }
    }

    /// The same budget, of which one account may hold and promise at most `share` bytes
    /// (`memory_budget_share_per_key` of the total), with what each key holds shown in `by_key`.
    /// Made before any upload uses the budget.
    pub fn with_share(self, share: u64, by_key: IntGaugeVec) -> Self {
        let shared = Shared {
            total: self.shared.total,
            share: share.min(self.shared.total),
            ledger: Mutex::default(),
            gauge: self.shared.gauge.clone(),
            peak: self.shared.peak.clone(),
            by_key: Some(by_key),
        };
        Self {
            shared: Arc::new(shared),
            ..self
        }
    }

    /// The same budget, whose waits give up after `max_wait` (`budget_wait_secs`).
    pub fn with_max_wait(self, max_wait: Duration) -> Self {
        Self {
            max_wait: Some(max_wait),
            ..self
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> u64 {
        self.shared.total
    }

    /// The most one account may hold.
    pub fn share(&self) -> u64 {
        self.shared.share
    }

    /// What one upload holds, while it reads its body: empty until its first part is reserved.
    pub fn hold(&self, holder: &Holder) -> Hold {
        let id = self.ledger().next_id();
        Hold {
            budget: self.clone(),
            holder: holder.clone(),
            id,
            prepaid: 0,
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger's updates are whole under the lock (no await, no panic between its steps).
        self.shared.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the ledger grants `request` (at once, if it can), at most `max_wait`.
    async fn wait(&self, request: Request) -> Result<(), BudgetError> {
        let (wake, woken) = oneshot::channel();
        let ticket = {
            let mut ledger = self.ledger();
            if ledger.at_once(&request, &self.shared) {
                ledger.apply(&request, &self.shared);
                return Ok(());
            }
            let ticket = ledger.next_id();
            ledger.waiters.push(Waiter {
                ticket,
                request: request.clone(),
                wake,
            });
            ledger.dispatch(&self.shared);
            if ledger.granted.remove(&ticket) {
                return Ok(());
            }
            ticket
        };
        let mut pending = PendingWait {
            budget: self,
            ticket,
            request,
            armed: true,
        };
        let waited = match self.max_wait {
            Some(max_wait) => tokio::time::timeout(max_wait, woken).await.is_ok(),
            None => woken.await.is_ok(),
        };
        pending.armed = false;
        let mut ledger = self.ledger();
        if ledger.granted.remove(&ticket) {
            return Ok(());
        }
        // The wait is over: the waiter leaves the queue, and those it held back may go.
        ledger.waiters.retain(|w| w.ticket != ticket);
        ledger.dispatch(&self.shared);
        let wanted = pending.request.bytes;
        debug_assert!(!waited, "woken without a grant");
        Err(BudgetError::Busy {
            wanted,
            waited: self.max_wait.unwrap_or_default(),
        })
    }
}

/// What one upload holds while it reads its body: the part it is filling (its reservation, and the
/// bytes of it that arrived). Given back when dropped; a filled part's bytes go on with its `take`n
/// permit until Box has them.
pub struct Hold {
    budget: MemoryBudget,
    holder: Holder,
    id: u64,
    /// Bytes charged before they were read (a stored part, read back from the state store), which the
    /// next `charge`s use first.
    prepaid: u64,
}

impl Hold {
    /// The part being filled is `bytes` long: reserves, in the holder's share, what is not reserved
    /// yet (nothing of the global budget is taken: bytes are, as they arrive). Waits, in the holder's
    /// arrival order, for the holder's own other parts to leave room, at most `budget_wait_secs`.
    pub async fn reserve_unit(&mut self, bytes: u64) -> Result<(), BudgetError> {
        let reserved = self.budget.ledger().reserved(self.id);
        if bytes <= reserved {
            return Ok(());
        }
        let shared = &self.budget.shared;
        if bytes > shared.share {
            return Err(OverBudget {
                wanted: bytes,
                share: shared.share,
                total: shared.total,
            }
            .into());
        }
        self.budget
            .wait(Request {
                kind: Kind::Reserve,
                hold: self.id,
                holder: self.holder.clone(),
                bytes: bytes - reserved,
            })
            .await
    }

    /// `bytes` arrived for the part being filled (within its reservation): takes them from the budget,
    /// fairly and bounded by `budget_wait_secs`, before the next bytes are read.
    pub async fn charge(&mut self, bytes: u64) -> Result<(), BudgetError> {
        let prepaid = bytes.min(self.prepaid);
        self.prepaid -= prepaid;
        match bytes - prepaid {
            0 => Ok(()),
            n => {
                self.budget
                    .wait(Request {
                        kind: Kind::Charge,
                        hold: self.id,
                        holder: self.holder.clone(),
                        bytes: n,
                    })
                    .await
            }
        }
    }

    /// Takes `bytes` now, for bytes about to be read in one go (a stored unfinished part): the next
    /// `charge`s of as many bytes are already paid for.
    pub async fn prepay(&mut self, bytes: u64) -> Result<(), BudgetError> {
        let prepaid = self.prepaid;
        self.prepaid = 0;
        self.charge(bytes).await?;
        self.prepaid = prepaid + bytes;
        Ok(())
    }

    /// The filled part's bytes, held until the permit is dropped (when Box has them); the hold is
    /// ready for the next part.
    pub fn take(&mut self) -> BudgetPermit {
        let bytes = self.budget.ledger().take(self.id, &self.budget.shared);
        BudgetPermit {
            budget: self.budget.clone(),
            holder: self.holder.clone(),
            bytes,
        }
    }

    /// Bytes held now (charged, not yet taken).
    pub fn held(&self) -> u64 {
        self.budget.ledger().units.get(&self.id).map_or(0, |u| u.held)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut ledger = self.budget.ledger();
        if let Some(unit) = ledger.units.remove(&self.id) {
            ledger.release(&self.holder, unit.held, unit.reserved, &self.budget.shared);
            ledger.dispatch(&self.budget.shared);
        }
    }
}

/// A filled part's bytes, taken from the budget, given back on drop.
pub struct BudgetPermit {
    budget: MemoryBudget,
    holder: Holder,
    bytes: u64,
}

impl BudgetPermit {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut ledger = self.budget.ledger();
        ledger.in_flight -= self.bytes;
        ledger.release(&self.holder, self.bytes, self.bytes, &self.budget.shared);
        ledger.dispatch(&self.budget.shared);
    }
}

/// A wait that was not settled: when its future is dropped (the client left), it leaves the queue,
/// or gives back what was granted meanwhile.
struct PendingWait<'a> {
    budget: &'a MemoryBudget,
    ticket: u64,
    request: Request,
    armed: bool,
}

impl Drop for PendingWait<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let shared = &self.budget.shared;
        let mut ledger = self.budget.ledger();
        if ledger.granted.remove(&self.ticket) {
            ledger.undo(&self.request, shared);
        } else {
            ledger.waiters.retain(|w| w.ticket != self.ticket);
        }
        ledger.dispatch(shared);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Room in the holder's share for a part about to be filled.
    Reserve,
    /// Bytes of the global budget for bytes that arrived.
    Charge,
}

#[derive(Clone, Debug)]
struct Request {
    kind: Kind,
    hold: u64,
    holder: Holder,
    bytes: u64,
}

struct Waiter {
    ticket: u64,
    request: Request,
    wake: oneshot::Sender<()>,
}

/// What one account has: bytes held, and bytes held or promised to its parts being filled.
#[derive(Default)]
struct Account {
    held: u64,
    committed: u64,
}

/// The part one upload is filling: its reservation, and what of it arrived.
struct Unit {
    holder: Holder,
    reserved: u64,
    held: u64,
}

/// The budget's books, kept under one lock.
#[derive(Default)]
struct Ledger {
    held: u64,
    /// Held by filled parts (permits): given back when Box has them, whatever anyone else does.
    in_flight: u64,
    accounts: HashMap<Arc<str>, Account>,
    units: HashMap<u64, Unit>,
    /// In arrival order.
    waiters: Vec<Waiter>,
    /// Tickets granted, not yet claimed by their waiter.
    granted: HashSet<u64>,
    next: u64,
}

impl Ledger {
    fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn reserved(&self, hold: u64) -> u64 {
        self.units.get(&hold).map_or(0, |u| u.reserved)
    }

    fn account(&mut self, name: &Arc<str>) -> &mut Account {
        self.accounts.entry(name.clone()).or_default()
    }

    fn held_by(&self, name: &Arc<str>) -> u64 {
        self.accounts.get(name).map_or(0, |a| a.held)
    }

    fn fits_share(&self, request: &Request, share: u64) -> bool {
        request.holder.accounts.iter().all(|a| {
            self.accounts
                .get(a)
                .map_or(0, |acc| acc.committed)
                .saturating_add(request.bytes)
                <= share
        })
    }

    /// Whether `request` may be granted without queueing: nobody it must let go first is waiting,
    /// and it fits (the common case, so a piece costs no queue entry).
    fn at_once(&self, request: &Request, shared: &Shared) -> bool {
        let waiting = |kind: Kind| self.waiters.iter().any(|w| w.request.kind == kind);
        match request.kind {
            Kind::Reserve => {
                !self.waiters.iter().any(|w| {
                    w.request.kind == Kind::Reserve
                        && w.request
                            .holder
                            .accounts
                            .iter()
                            .any(|a| request.holder.accounts.contains(a))
                }) && self.fits_share(request, shared.share)
            }
            Kind::Charge => {
                !waiting(Kind::Charge)
                    && request.bytes <= shared.total - self.held
                    && self.safe(request, shared.total)
            }
        }
    }

    /// The banker's rule: after `request` is granted, can every part being filled still be finished?
    /// In order of what each still misses, each must fit in what is free plus what the parts in
    /// flight and the ones finished before it give back.
    fn safe(&self, request: &Request, total: u64) -> bool {
        let free = total - self.held - request.bytes;
        let mut needs: Vec<(u64, u64)> = self
            .units
            .iter()
            .map(|(id, u)| {
                let held = u.held + if *id == request.hold { request.bytes } else { 0 };
                (u.reserved.saturating_sub(held), held)
            })
            .collect();
        let mut available = free + self.in_flight;
        if needs.iter().all(|(need, _)| *need <= available) {
            return true;
        }
        needs.sort_unstable();
        for (need, held) in needs {
            if need > available {
                return false;
            }
            available += held;
        }
        true
    }

    fn apply(&mut self, request: &Request, shared: &Shared) {
        let n = request.bytes;
        let unit = self.units.entry(request.hold).or_insert_with(|| Unit {
            holder: request.holder.clone(),
            reserved: 0,
            held: 0,
        });
        // A charge past the reservation reserves the rest as well: those bytes are here already.
        let committed = match request.kind {
            Kind::Reserve => n,
            Kind::Charge => (unit.held + n).saturating_sub(unit.reserved),
        };
        unit.reserved += committed;
        if request.kind == Kind::Charge {
            unit.held += n;
        }
        for a in request.holder.accounts.iter() {
            self.account(a).committed += committed;
        }
        match request.kind {
            Kind::Reserve => {}
            Kind::Charge => {
                for a in request.holder.accounts.iter() {
                    self.account(a).held += n;
                }
                self.held += n;
                shared.gauge.add(n as i64);
                if self.held as i64 > shared.peak.get() {
                    shared.peak.set(self.held as i64);
                }
                if let Some(by_key) = &shared.by_key {
                    by_key.with_label_values(&[&*request.holder.label]).add(n as i64);
                }
            }
        }
    }

    /// Takes back a grant its waiter never claimed (its future was dropped).
    fn undo(&mut self, request: &Request, shared: &Shared) {
        let Some(unit) = self.units.get_mut(&request.hold) else {
            return;
        };
        let (held, reserved) = match request.kind {
            Kind::Reserve => {
                unit.reserved -= request.bytes;
                (0, request.bytes)
            }
            Kind::Charge => {
                unit.held -= request.bytes;
                // The account's commitment stays with the unit's reservation.
                self.release_held(&request.holder, request.bytes, shared);
                return;
            }
        };
        self.release(&request.holder, held, reserved, shared);
    }

    fn release_held(&mut self, holder: &Holder, bytes: u64, shared: &Shared) {
        for a in holder.accounts.iter() {
            self.account(a).held -= bytes;
        }
        self.held -= bytes;
        shared.gauge.sub(bytes as i64);
        if let Some(by_key) = &shared.by_key {
            by_key.with_label_values(&[&*holder.label]).sub(bytes as i64);
        }
    }

    /// `held` bytes given back, and `committed` bytes of the holder's share (held ones included).
    fn release(&mut self, holder: &Holder, held: u64, committed: u64, shared: &Shared) {
        if held > 0 {
            self.release_held(holder, held, shared);
        }
        for a in holder.accounts.iter() {
            let account = self.account(a);
            account.committed -= committed;
            if account.committed == 0 && account.held == 0 {
                self.accounts.remove(a);
            }
        }
    }

    /// The unit's held bytes become a permit's (in flight); what it reserved beyond them is freed.
    fn take(&mut self, hold: u64, shared: &Shared) -> u64 {
        let Some(unit) = self.units.remove(&hold) else {
            return 0;
        };
        self.in_flight += unit.held;
        self.release(&unit.holder, 0, unit.reserved - unit.held, shared);
        self.dispatch(shared);
        unit.held
    }

    fn grant(&mut self, index: usize, shared: &Shared) {
        let waiter = self.waiters.remove(index);
        self.apply(&waiter.request, shared);
        self.granted.insert(waiter.ticket);
        // A waiter whose future is gone is settled by its drop guard (`PendingWait`).
        let _ = waiter.wake.send(());
    }

    /// Grants what can be granted: reservations in arrival order within each tenant (one that does
    /// not fit holds back the later ones of its accounts), then pieces, the tenant that holds least
    /// first.
    fn dispatch(&mut self, shared: &Shared) {
        let mut blocked: HashSet<Arc<str>> = HashSet::new();
        let mut i = 0;
        while i < self.waiters.len() {
            let request = &self.waiters[i].request;
            if request.kind != Kind::Reserve {
                i += 1;
                continue;
            }
            let held_back = request.holder.accounts.iter().any(|a| blocked.contains(a));
            if !held_back && self.fits_share(request, shared.share) {
                self.grant(i, shared);
                continue;
            }
            blocked.extend(request.holder.accounts.iter().cloned());
            i += 1;
        }
        'pieces: loop {
            let mut order: Vec<(u64, u64, u64, usize)> = self
                .waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| w.request.kind == Kind::Charge)
                .map(|(i, w)| {
                    let holder = &w.request.holder;
                    (
                        self.held_by(holder.widest()),
                        self.held_by(holder.own()),
                        w.ticket,
                        i,
                    )
                })
                .collect();
            order.sort_unstable();
            for (_, _, _, i) in order {
                let request = &self.waiters[i].request;
                let free = shared.total - self.held;
                if request.bytes > free {
                    // Parts in flight will make room for it: nobody overtakes it meanwhile (a large
                    // piece is not starved by small ones). Otherwise others go first.
                    if free + self.in_flight >= request.bytes {
                        break 'pieces;
                    }
                    continue;
                }
                if self.safe(request, shared.total) {
                    self.grant(i, shared);
                    continue 'pieces;
                }
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: u64, share: u64) -> MemoryBudget {
        MemoryBudget::new(
            total,
            IntGauge::new("g", "g").unwrap(),
            IntGauge::new("p", "p").unwrap(),
        )
        .with_share(
            share,
            IntGaugeVec::new(prometheus::Opts::new("k", "k"), &["key"]).unwrap(),
        )
    }

    fn key(name: &str) -> Holder {
        Holder::new(name, [name.to_owned()])
    }

    fn link(key: &str, id: &str) -> Holder {
        Holder::new(key, [format!("link:{key}:{id}"), key.to_owned()])
    }

    async fn part(b: &MemoryBudget, holder: &Holder, bytes: u64) -> Hold {
        let mut hold = b.hold(holder);
        hold.reserve_unit(bytes).await.unwrap();
        hold.charge(bytes).await.unwrap();
        hold
    }

    fn held(b: &MemoryBudget) -> i64 {
        b.shared.gauge.get()
    }

    /// Nothing is taken for a part's promise: only its bytes, as they arrive.
    #[tokio::test]
    async fn bytes_are_charged_as_they_arrive_not_when_promised() {
        let b = budget(100, 100);
        let mut hold = b.hold(&key("a"));
        hold.reserve_unit(80).await.unwrap();
        assert_eq!(held(&b), 0);
        hold.charge(30).await.unwrap();
        hold.charge(50).await.unwrap();
        assert_eq!((held(&b), hold.held()), (80, 80));
        let permit = hold.take();
        assert_eq!((permit.bytes(), hold.held()), (80, 0));
        assert_eq!(held(&b), 80, "the filled part stays held until Box has it");
        drop(permit);
        assert_eq!(held(&b), 0);
        assert_eq!(b.shared.peak.get(), 80);
        // A hold dropped mid-part gives its bytes back.
        let mut hold = b.hold(&key("a"));
        hold.reserve_unit(50).await.unwrap();
        hold.charge(20).await.unwrap();
        drop(hold);
        assert_eq!(held(&b), 0);
        assert!(b.ledger().accounts.is_empty(), "nothing left in the books");
    }

    #[tokio::test]
    async fn a_part_larger_than_a_share_can_never_fit() {
        let b = budget(100, 50);
        assert!(matches!(
            b.hold(&key("a")).reserve_unit(51).await,
            Err(BudgetError::OverBudget(OverBudget {
                wanted: 51,
                share: 50,
                total: 100
            }))
        ));
        assert!(b.hold(&key("a")).reserve_unit(50).await.is_ok());
    }

    /// One tenant's promises never pass its share: its next part waits for its own parts, not for
    /// anyone else's, and another tenant's parts go meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_tenant_waits_for_its_own_share_while_others_go() {
        let b = budget(100, 50).with_max_wait(Duration::from_secs(20));
        let first = part(&b, &key("a"), 40).await;
        let b2 = b.clone();
        let second = tokio::spawn(async move { part(&b2, &key("a"), 20).await.held() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!second.is_finished(), "a's share is spent");
        // Another key is not held back by a's waiter.
        let other = part(&b, &key("b"), 50).await;
        drop(first);
        assert_eq!(second.await.unwrap(), 20);
        drop(other);
        // A link's bytes count under its key as well: the key and its links share one share.
        let link_part = part(&b, &link("a", "l1"), 30).await;
        let mut key_part = b.hold(&key("a"));
        match key_part.reserve_unit(30).await {
            Err(BudgetError::Busy { wanted: 30, .. }) => {}
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(link_part);
        assert!(key_part.reserve_unit(30).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_max_wait_is_busy_and_leaves_the_queue() {
        let b = budget(100, 100).with_max_wait(Duration::from_secs(30));
        let held_part = part(&b, &key("a"), 90).await;
        let started = tokio::time::Instant::now();
        let mut hold = b.hold(&key("b"));
        hold.reserve_unit(20).await.unwrap();
        hold.charge(10).await.unwrap();
        match hold.charge(10).await {
            Err(BudgetError::Busy { wanted: 10, waited }) => assert_eq!(waited, Duration::from_secs(30)),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(hold);
        // The timed-out waiter took nothing and holds no place.
        assert_eq!(held(&b), 90);
        assert!(b.ledger().waiters.is_empty());
        drop(held_part);
        assert_eq!(part(&b, &key("c"), 100).await.held(), 100);
    }

    /// The waiter whose tenant holds least is served first, whatever the arrival order.
    #[tokio::test]
    async fn the_tenant_that_holds_least_is_served_first() {
        let b = budget(100, 100);
        let c_small = part(&b, &key("c"), 10).await.take();
        let c_big = part(&b, &key("c"), 40).await.take();
        let _a_held = part(&b, &key("a"), 45).await.take();
        // 5 bytes free. a asks for 10 more, then b asks for 10.
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |name: &'static str| {
            let (b, order) = (b.clone(), order.clone());
            tokio::spawn(async move {
                let hold = part(&b, &key(name), 10).await;
                order.lock().unwrap().push(name);
                hold
            })
        };
        let a_more = waiter("a");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let b_first = waiter("b");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(order.lock().unwrap().is_empty());
        // 15 bytes come free: room for one of them, and b (which holds nothing) gets it.
        drop(c_small);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*order.lock().unwrap(), ["b"]);
        drop(c_big);
        let _ = (a_more.await.unwrap(), b_first.await.unwrap());
        assert_eq!(*order.lock().unwrap(), ["b", "a"]);
    }

    /// Uploads that each hold part of a part never wait on one another for ever: a piece is given only
    /// if every part being filled can still be finished.
    #[tokio::test(start_paused = true)]
    async fn parts_being_filled_never_deadlock() {
        let b = budget(100, 100).with_max_wait(Duration::from_secs(5));
        // Two direct uploads of 60 from two tenants: both could start, but not both finish at once.
        let mut first = b.hold(&key("a"));
        first.reserve_unit(60).await.unwrap();
        let mut second = b.hold(&key("b"));
        second.reserve_unit(60).await.unwrap();
        first.charge(30).await.unwrap();
        second.charge(30).await.unwrap();
        // 40 free: the first may take what it misses (30) ...
        first.charge(20).await.unwrap();
        // ... but the second may not take 20 more now: then neither could finish.
        let started = tokio::time::Instant::now();
        assert!(matches!(second.charge(20).await, Err(BudgetError::Busy { .. })));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        first.charge(10).await.unwrap();
        let permit = first.take();
        drop(permit);
        second.charge(30).await.unwrap();
        assert_eq!(second.held(), 60);
    }

    #[tokio::test]
    async fn a_stored_part_is_paid_for_before_it_is_read_and_not_charged_twice() {
        let b = budget(100, 100);
        let mut hold = b.hold(&key("a"));
        hold.reserve_unit(50).await.unwrap();
        hold.prepay(30).await.unwrap();
        assert_eq!(held(&b), 30);
        // The stored bytes go through the part again: paid already.
        hold.charge(20).await.unwrap();
        hold.charge(10).await.unwrap();
        assert_eq!(held(&b), 30);
        hold.charge(20).await.unwrap();
        assert_eq!(held(&b), 50);
    }

    /// A waiter whose future is dropped (its client left) gives back what it was granted meanwhile.
    #[tokio::test]
    async fn a_dropped_waiter_takes_nothing_with_it() {
        let b = budget(100, 100);
        let held_part = part(&b, &key("a"), 100).await;
        let b2 = b.clone();
        let waiting = tokio::spawn(async move { part(&b2, &key("b"), 50).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(held_part);
        assert_eq!(held(&b), 0);
        assert!(b.ledger().waiters.is_empty() && b.ledger().granted.is_empty());
        assert!(b.ledger().accounts.is_empty());
    }
}
