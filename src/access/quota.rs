//! A key's own quotas (`max_uploads_per_minute`, `max_bytes_per_day`), kept in the state store so
//! that every replica counts against the same quota. A quota taken for an upload that is then refused
//! before it reaches Box is given back (`give_back_quota`): a refusal costs the key nothing.
use actix_web::http::StatusCode;

use super::{Access, Caller};
use crate::error::ApiError;
use crate::state::rate::{Lane, RateTake};

/// A key's quotas.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyQuota {
    pub uploads_per_minute: Option<u32>,
    pub bytes_per_day: Option<u64>,
}

/// What an upload spends of its key's quotas.
#[derive(Debug, Clone, Copy)]
pub enum QuotaCost {
    /// One new upload (`max_uploads_per_minute`), taken before any byte of its body is read.
    Upload,
    /// Its bytes (`max_bytes_per_day`), taken once its size is known, before any byte goes to Box.
    Bytes(u64),
}

/// A quota taken: what giving it back needs.
#[derive(Debug, Clone)]
pub struct QuotaTaken {
    store_key: String,
    take: RateTake,
    /// `uploads_per_minute` or `bytes_per_day`, for the metric of what was given back.
    pub quota: &'static str,
}

impl Access {
    /// Takes `cost` from the caller's key's quota: 429 `rate_limited` with `Retry-After` when it is
    /// spent (shared by every replica through the store). Keys without this quota, and callers
    /// without keys, pass (None). A store that fails lets the upload go (logged): a quota is not worth
    /// failing uploads for.
    pub async fn take_quota(&self, caller: &Caller, cost: QuotaCost) -> Result<Option<QuotaTaken>, ApiError> {
        let Some(quota) = self.quotas.get(&caller.key_label) else {
            return Ok(None);
        };
        let (what, per, window_ms, amount) = match cost {
            QuotaCost::Upload => (
                "uploads_per_minute",
                quota.uploads_per_minute.map(u64::from),
                60_000.0,
                1,
            ),
            QuotaCost::Bytes(n) => ("bytes_per_day", quota.bytes_per_day, 86_400_000.0, n),
        };
        let Some(per) = per else { return Ok(None) };
        if amount == 0 {
            return Ok(None);
        }
        // A take is clipped to the quota's size (`state/rate.rs`): a file larger than a whole day's
        // bytes would otherwise pass with a full bucket and cost only one day. It never fits.
        if matches!(cost, QuotaCost::Bytes(_)) && amount > per {
            self.metrics
                .key_quota_refused
                .with_label_values(&[&caller.key_label, what])
                .inc();
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_too_large",
                format!("the file ({amount} bytes) is larger than this API key's whole daily quota ({per} bytes a day)"),
            ));
        }
        let taken = QuotaTaken {
            store_key: crate::state::keys::quota(what, &caller.key_label),
            take: RateTake {
                now_ms: crate::state::now_ms(),
                // The whole quota at once, refilled evenly over its window.
                lanes: [
                    Some(Lane {
                        interval_ms: window_ms / per as f64,
                        burst: per as f64,
                        cost: amount as f64,
                    }),
                    None,
                ],
                recovery_ms: 0,
            },
            quota: what,
        };
        let wait = match self.store.rate_take(&taken.store_key, taken.take).await {
            Ok(wait) => wait,
            Err(err) => {
                tracing::warn!(key = %caller.key_label, error = %err, "the state store could not check a key's quota; the upload goes");
                return Ok(None);
            }
        };
        if wait == 0 {
            return Ok(Some(taken));
        }
        self.metrics
            .key_quota_refused
            .with_label_values(&[&caller.key_label, what])
            .inc();
        let unit = match cost {
            QuotaCost::Upload => format!("{per} uploads a minute"),
            QuotaCost::Bytes(_) => format!("{per} bytes a day"),
        };
        Err(ApiError {
            retry_after_secs: Some(wait.div_ceil(1000).max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this API key's quota ({unit}) is spent for now; nothing was sent to Box: try again after Retry-After"),
            )
        })
    }

    /// Gives back a quota taken for an upload that never reached Box.
    pub async fn give_back_quota(&self, taken: QuotaTaken) {
        let take = RateTake {
            now_ms: crate::state::now_ms(),
            ..taken.take
        };
        if let Err(err) = self.store.rate_give_back(&taken.store_key, take).await {
            tracing::warn!(error = %err, quota = taken.quota, "could not give a key's quota back; it refills by itself");
        }
    }
}

pub(super) fn quotas_of(keys: &[super::ApiKeyConfig]) -> impl Iterator<Item = Option<KeyQuota>> + '_ {
    keys.iter().map(|k| {
        (k.max_uploads_per_minute.is_some() || k.max_bytes_per_day.is_some()).then_some(KeyQuota {
            uploads_per_minute: k.max_uploads_per_minute,
            bytes_per_day: k.max_bytes_per_day,
        })
    })
}
