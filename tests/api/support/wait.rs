//! Waiting for a condition instead of for a clock: a test waits as long as its assertion needs, and
//! no longer, on a fast machine as on a loaded one.
use std::future::Future;
use std::time::Duration;

/// How often `eventually` asks again: small against every wait of the suite, large enough that a
/// check over HTTP (a `/metrics` scrape) stays cheap.
const POLL: Duration = Duration::from_millis(20);

/// What a check answers: `bool` (done or not), or `Option<T>` (done with a value).
pub trait Settled {
    type Value;
    fn settled(self) -> Option<Self::Value>;
}

impl Settled for bool {
    type Value = ();
    fn settled(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Settled for Option<T> {
    type Value = T;
    fn settled(self) -> Option<T> {
        self
    }
}

/// Polls `check` until it settles and returns its value; panics naming `what` if it has not within
/// `within`. A check that reads a value held in the test is `|| ready(...)`
/// (`std::future::ready`); one that asks over HTTP is `|| async move { ... }` over references.
pub async fn eventually<C, F, S>(what: &str, within: Duration, check: C) -> S::Value
where
    C: FnMut() -> F,
    F: Future<Output = S>,
    S: Settled,
{
    eventually_every(what, within, POLL, check).await
}

/// `eventually`, asking every `every`: for a check that costs (a whole upload sent again).
pub async fn eventually_every<C, F, S>(what: &str, within: Duration, every: Duration, check: C) -> S::Value
where
    C: FnMut() -> F,
    F: Future<Output = S>,
    S: Settled,
{
    settle(within, every, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

/// `eventually` for a test that says itself what failed: whether `check` held within `within`.
pub async fn holds_within<C, F>(within: Duration, check: C) -> bool
where
    C: FnMut() -> F,
    F: Future<Output = bool>,
{
    settle(within, POLL, check).await.is_some()
}

async fn settle<C, F, S>(within: Duration, every: Duration, mut check: C) -> Option<S::Value>
where
    C: FnMut() -> F,
    F: Future<Output = S>,
    S: Settled,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await.settled() {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
