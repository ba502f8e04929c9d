//! Token providers: where the bearer token of a Box call comes from.
//!
//! The gateway asks a provider for a token before each call and tells it when Box refused one, so
//! providers that can mint tokens (client credentials, JWT) can refresh, and a pass-through provider can
//! carry the caller's own token. The pipeline never knows which mode is on.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::error::{BoxError, BoxErrorKind};
use super::grants::Grant;
use super::retry::RetryPolicy;
use super::types::BoxErrorBody;
use crate::metrics::GatewayMetrics;
use crate::secret::{Secret, SecretSource};

pub trait TokenProvider: Send + Sync + 'static {
    /// A token good for the next call.
    fn token(&self) -> BoxFuture<'_, Result<Secret, BoxError>>;
    /// Box answered 401 to `token`: forget it. Returns whether a retry with a fresh token may help.
    fn invalidate(&self, token: &Secret) -> bool;
    /// Whom Box counts this provider's calls against (its rate limits are per user), as a string
    /// the pacer hashes: never a secret in the clear. The default: the gateway's own credentials.
    fn principal_id(&self) -> String {
        "gateway".into()
    }
}

/// A fixed token: a developer token, the emulator's, or a caller's own (pass-through). Nothing to
/// refresh: a 401 is final.
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
    /// A caller's own token (pass-through): each token is its own principal, known by its digest.
    fn principal_id(&self) -> String {
        use sha2::Digest;
        format!(
            "token:{}",
            hex::encode(sha2::Sha256::digest(self.0.expose().as_bytes()))
        )
    }
}

/// No credentials of the gateway's own (`box_auth = "passthrough"`): every upload brings its token, so
/// a call that reaches this provider is a bug, refused without contacting Box.
pub struct NoCredentials;

impl TokenProvider for NoCredentials {
    fn token(&self) -> BoxFuture<'_, Result<Secret, BoxError>> {
        Box::pin(async {
            Err(BoxError::new(
                "token",
                BoxErrorKind::Credentials(
                    "box_auth = passthrough: the gateway has no Box credentials of its own".into(),
                ),
            ))
        })
    }
    fn invalidate(&self, _token: &Secret) -> bool {
        false
    }
}

/// A developer token read from its source at each call (a file may be rotated).
pub struct DeveloperToken(SecretSource);

impl DeveloperToken {
    pub fn new(source: SecretSource) -> Self {
        Self(source)
    }
}

impl TokenProvider for DeveloperToken {
    fn token(&self) -> BoxFuture<'_, Result<Secret, BoxError>> {
        let token = self
            .0
            .read()
            .map_err(|why| BoxError::new("token", BoxErrorKind::Credentials(why)));
        Box::pin(async move { token })
    }
    fn invalidate(&self, _token: &Secret) -> bool {
        // A rotated file may hold a newer token by now.
        matches!(self.0, SecretSource::File(_))
    }
}

/// How long a refusal by the token endpoint is remembered: uploads fail fast with `box_auth_failed`
/// instead of each one asking Box again with credentials it has just refused.
const REFUSAL_MEMORY: Duration = Duration::from_secs(10);
/// A token is replaced this long before Box would expire it (at most a tenth of its life).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Tokens minted at the token endpoint by a grant (client credentials or JWT), cached and shared by
/// every upload. At most one token request is under way at a time (single flight): callers that find
/// the cache empty or stale wait for the one refresh instead of each asking Box.
pub struct MintedToken {
    grant: Grant,
    http: reqwest::Client,
    token_url: String,
    retry: RetryPolicy,
    metrics: Arc<GatewayMetrics>,
    cache: Mutex<Cache>,
    /// The single-flight gate; it holds the failure of the last refresh, so callers that queued
    /// behind a refresh share its outcome instead of each asking the token endpoint again (and each
    /// waiting out its faults again).
    refresh: tokio::sync::Mutex<Option<BoxError>>,
    /// Refreshes finished so far: read before queueing, to know whether one ended meanwhile.
    finished: std::sync::atomic::AtomicU64,
}

enum Cache {
    Empty,
    Valid {
        token: Secret,
        refresh_at: Instant,
    },
    Refused {
        status: u16,
        body: Box<BoxErrorBody>,
        until: Instant,
    },
}

impl MintedToken {
    pub fn new(
        grant: Grant,
        http: reqwest::Client,
        token_url: String,
        retry: RetryPolicy,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        Self {
            grant,
            http,
            token_url,
            retry,
            metrics,
            cache: Mutex::new(Cache::Empty),
            refresh: tokio::sync::Mutex::new(None),
            finished: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached token if it is still fresh, the remembered refusal if there is one.
    fn cached(&self) -> Option<Result<Secret, BoxError>> {
        let now = Instant::now();
        match &*self.cache() {
            Cache::Valid { token, refresh_at } if now < *refresh_at => Some(Ok(token.clone())),
            Cache::Refused { status, body, until } if now < *until => Some(Err(BoxError::new(
                "token",
                BoxErrorKind::Status {
                    status: *status,
                    body: body.clone(),
                    retry_after: None,
                },
            ))),
            _ => None,
        }
    }

    async fn refresh(&self) -> Result<Secret, BoxError> {
        // Which refresh we queue behind: if one finishes while we wait for the gate, its outcome is
        // ours too. A success lands in the cache; a failure (after the refresh's own retries within
        // its deadline) is answered as is: a transient one stays transient (the caller's own retry
        // loop asks again later), a refusal is remembered for `REFUSAL_MEMORY`.
        use std::sync::atomic::Ordering::SeqCst;
        let queued_behind = self.finished.load(SeqCst);
        let mut last_failure = self.refresh.lock().await;
        // Whoever held the gate before us may have refreshed already.
        if let Some(hit) = self.cached() {
            return hit;
        }
        if self.finished.load(SeqCst) != queued_behind {
            if let Some(failure) = &*last_failure {
                self.metrics
                    .box_token_requests
                    .with_label_values(&["shared_failure"])
                    .inc();
                return Err(failure.shared_copy());
            }
        }
        let result = self.retry.run(&self.metrics, |_| self.mint_once()).await;
        *last_failure = result.as_ref().err().map(BoxError::shared_copy);
        self.finished.fetch_add(1, SeqCst);
        let mut cache = self.cache();
        match &result {
            Ok((token, lifetime)) => {
                let margin = REFRESH_MARGIN.min(*lifetime / 10);
                *cache = Cache::Valid {
                    token: token.clone(),
                    refresh_at: Instant::now() + lifetime.saturating_sub(margin),
                };
                self.metrics
                    .box_token_requests
                    .with_label_values(&["issued"])
                    .inc();
            }
            Err(err) if err.is_refusal() => {
                *cache = Cache::Refused {
                    status: err.status().unwrap_or(400),
                    body: Box::new(err.body().cloned().unwrap_or_default()),
                    until: Instant::now() + REFUSAL_MEMORY,
                };
                self.metrics
                    .box_token_requests
                    .with_label_values(&["refused"])
                    .inc();
            }
            Err(_) => {
                *cache = Cache::Empty;
                self.metrics
                    .box_token_requests
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
        result.map(|(token, _)| token)
    }

    /// One request to the token endpoint: the token and how long Box says it lives.
    async fn mint_once(&self) -> Result<(Secret, Duration), BoxError> {
        let form = self
            .grant
            .form()
            .map_err(|why| BoxError::new("token", BoxErrorKind::Credentials(why)))?;
        let started = Instant::now();
        let result = self.http.post(&self.token_url).form(&form).send().await;
        let label = match &result {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "connection".into(),
        };
        self.metrics.box_calls.with_label_values(&["token", &label]).inc();
        self.metrics
            .box_call_duration
            .with_label_values(&["token"])
            .observe(started.elapsed().as_secs_f64());
        let response = result.map_err(|e| BoxError::transport("token", e))?;
        let status = response.status();
        let retry_after = super::error::parse_retry_after(response.headers());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| BoxError::transport("token", e))?;
        if status.is_success() {
            return token_answer(&bytes);
        }
        Err(token_error(status.as_u16(), retry_after, &bytes))
    }
}

/// A token endpoint's refusal or failure: RFC 6749 bodies (`error`, `error_description`) from the
/// token endpoint, Box's own elsewhere; anything else leaves the body empty.
pub(crate) fn token_error(status: u16, retry_after: Option<Duration>, bytes: &[u8]) -> BoxError {
    let oauth: OAuthError = serde_json::from_slice(bytes).unwrap_or_default();
    let mut body = BoxErrorBody::from_bytes(bytes);
    body.code = body.code.or(oauth.error);
    body.message = body.message.or(oauth.error_description);
    BoxError::new(
        "token",
        BoxErrorKind::Status {
            status,
            body: Box::new(body),
            retry_after,
        },
    )
}

impl TokenProvider for MintedToken {
    fn token(&self) -> BoxFuture<'_, Result<Secret, BoxError>> {
        Box::pin(async move {
            match self.cached() {
                Some(hit) => hit,
                None => self.refresh().await,
            }
        })
    }

    fn invalidate(&self, token: &Secret) -> bool {
        let mut cache = self.cache();
        // Only the token Box refused is dropped: a newer one, minted meanwhile by another upload's
        // refresh, stays, and the caller's retry picks it up without another token request.
        if matches!(&*cache, Cache::Valid { token: t, .. } if t == token) {
            *cache = Cache::Empty;
        }
        true
    }
    /// The subject the grant mints tokens for: each is its own user at Box.
    fn principal_id(&self) -> String {
        match &self.grant {
            Grant::ClientCredentials {
                client_id, subject, ..
            } => {
                format!("cc:{client_id}:{}:{}", subject.kind.as_str(), subject.id)
            }
            Grant::Jwt { subject: Some(s), .. } => format!("jwt:{}:{}", s.kind.as_str(), s.id),
            Grant::Jwt { subject: None, .. } => "jwt:enterprise".into(),
        }
    }
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: Secret,
    /// A number by RFC 6749; read from any JSON so a proxy's `"3600"` or `3600.0` is no failure.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// A 2xx from the token endpoint: the token, and how long it lives. A token that could not go in an
/// `Authorization` header (empty, control characters, non-ASCII) is a protocol error here rather than
/// a request that cannot be built later.
pub(crate) fn token_answer(bytes: &[u8]) -> Result<(Secret, Duration), BoxError> {
    let answer: TokenAnswer = serde_json::from_slice(bytes)
        .map_err(|e| BoxError::protocol("token", format!("bad token answer: {e}")))?;
    let token = answer.access_token.expose();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BoxError::protocol(
            "token",
            "the token answer holds no usable access_token",
        ));
    }
    let secs = match &answer.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    // Box says about 3600 s; a missing or absurd value is taken as a short life, a huge one as a day.
    let secs = secs
        .filter(|s| s.is_finite())
        .unwrap_or(60.0)
        .clamp(1.0, 86_400.0);
    Ok((answer.access_token, Duration::from_secs_f64(secs)))
}

#[derive(Default, serde::Deserialize)]
struct OAuthError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}
