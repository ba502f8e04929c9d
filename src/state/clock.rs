//! Wall-clock time as the state store keeps it: Unix seconds and milliseconds, shared by every replica
//! (expiries, rate buckets, the outbox's schedule). Not for measuring durations: use `Instant`.
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
