//! Token providers: where the bearer token of a Box call comes from.
//!
//! The gateway asks a provider for a token before each call and tells it when Box refused one, so
//! providers that can mint tokens (client credentials, JWT) can refresh, and a pass-through provider can
//! carry the caller's own token.
use futures_util::future::BoxFuture;
use std::fmt;

use super::error::BoxError;

/// A secret string: never printed by `Debug` or `Display`, so it cannot leak into logs or errors.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

pub trait TokenProvider: Send + Sync + 'static {
    /// A token good for the next call.
    fn token(&self) -> BoxFuture<'_, Result<Secret, BoxError>>;
    /// Box answered 401 to `token`: forget it. Returns whether a retry with a fresh token may help.
    fn invalidate(&self, token: &Secret) -> bool;
}

/// A fixed token (a developer token, or the emulator's): nothing to refresh.
pub struct StaticToken(Secret);

impl StaticToken {
    pub fn new(token: Secret) -> Self {
        Self(token)
    }
}

impl TokenProvider for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<Secret, BoxError>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
    fn invalidate(&self, _token: &Secret) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }
}
