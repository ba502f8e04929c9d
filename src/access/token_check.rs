//! Pass-through: Box's verdict on each caller's token (`GET /users/me`), cached by the token's
//! SHA-256 (never the token itself), so a token Box refuses is 401 before any byte of the body is
//! read, spooled or buffered.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::box_api::{BoxClient, BoxError, Principal};
use crate::secret::Secret;

/// How long Box's verdict on a pass-through token is kept: a token seen again within it is not
/// checked again; a revoked token may pass for this long (its upload then fails at Box with 401).
const TOKEN_CHECK_TTL: Duration = Duration::from_secs(60);
/// Entries kept at most; past it, expired ones go (and if none has, the whole cache).
const TOKEN_CHECK_ENTRIES: usize = 10_000;

/// Box's verdicts on pass-through tokens, by the token's SHA-256.
pub(super) struct TokenCheck {
    client: BoxClient,
    verdicts: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
}

#[derive(Clone)]
pub(super) enum Verdict {
    /// The Box user the token acts as.
    Accepted(Arc<str>),
    Refused,
}

impl TokenCheck {
    pub fn new(client: BoxClient) -> Self {
        Self {
            client,
            verdicts: Mutex::default(),
        }
    }

    /// Box's verdict on `token` (acting as `principal`), from the cache when it is fresh. Box out of
    /// reach, or failing: the error, not a verdict.
    pub async fn verdict(&self, principal: &Principal, token: &Secret) -> Result<Verdict, BoxError> {
        let key: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let cached = {
            let verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
            verdicts
                .get(&key)
                .filter(|(_, at)| at.elapsed() < TOKEN_CHECK_TTL)
                .map(|(v, _)| v.clone())
        };
        if let Some(verdict) = cached {
            return Ok(verdict);
        }
        let verdict = match self.client.acting_as(principal).users_me().await {
            Ok(id) => Verdict::Accepted(Arc::from(id)),
            Err(err) if err.status() == Some(401) => Verdict::Refused,
            Err(err) => return Err(err),
        };
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if verdicts.len() >= TOKEN_CHECK_ENTRIES {
            verdicts.retain(|_, (_, at)| at.elapsed() < TOKEN_CHECK_TTL);
            if verdicts.len() >= TOKEN_CHECK_ENTRIES {
                verdicts.clear();
            }
        }
        verdicts.insert(key, (verdict.clone(), Instant::now()));
        Ok(verdict)
    }
}
