//! The suite's knobs: environment variables that make a test run longer or harder than the default,
//! which is sized to prove its point quickly on a 2-core machine. Every one keeps what the test
//! asserts; only the clock and the sample counts move. The issue-length run (docs/testing.md) sets
//! them all: `RATE_WINDOW_SECS=60 RATE_PHASE_SECS=45 WEBHOOK_OUTAGE_SECS=30
//! MEMORY_BODY_MIB=40 FUZZ_CASES=100000`.
//!
//! | variable | default | where |
//! | --- | --- | --- |
//! | `RATE_WINDOW_SECS` | 15 | rate_limits.rs: the emulator's Box rate window (Box: 60), limits scaled with it |
//! | `RATE_PHASE_SECS` | 3/4 of the window | rate_limits.rs: how long the clients hammer |
//! | `WEBHOOK_OUTAGE_SECS` | 0 | webhooks.rs: the least the receiver stays down (it stays down until 40 retries failed) |
//! | `MEMORY_BODY_MIB` | 20 | hostile/memory.rs: the 1-byte-chunk bodies (the smallest that is still a chunked upload) |
//! | `FUZZ_CASES` | 20,000 | src/routes/fuzz.rs: cases per property |
//! | `FUZZ_HTTP_CASES` | 1,000 | fuzz.rs: fuzzed requests over HTTP |
//! | `SOAK_UPLOADS`, `SOAK_TUS_UPLOADS`, `SOAK_SEED` | 200, 16, fixed | soak.rs, soak_tus.rs |

/// The variable `key`, else `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
