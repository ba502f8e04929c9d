//! Readiness: the background check of Box behind `/readyz` (the verdict itself lives in `lifecycle`).
use std::sync::Arc;
use std::time::Duration;

use crate::box_api::BoxClient;
use crate::lifecycle::{Lifecycle, NotReady};

/// The background check behind `/readyz`: every `every`, one cheap Box call (`BoxClient::probe`) with
/// the gateway's own credentials (pass-through has none: then only whether Box answers). A change is
/// logged once: a refusal names the mode and Box's error code, never a secret.
///
/// Readiness follows only what this replica can fix by being replaced: refused credentials. Box out
/// of reach is the same for every replica, so it does not take them all out of the Service at once
/// (uploads meanwhile get 503 `box_unavailable` with `Retry-After`); it sets `gateway_box_reachable`
/// to 0, which an alert watches. Out of reach at start, the last verdict on the credentials (none
/// yet: accepted) stands.
pub async fn check_box(
    client: BoxClient,
    with_credentials: bool,
    mode: &'static str,
    lifecycle: Arc<Lifecycle>,
    every: Duration,
    reachable: prometheus::IntGauge,
) {
    let mut last: Option<Option<&'static str>> = None;
    loop {
        let problem = match client.probe(with_credentials).await {
            Ok(()) => None,
            Err(err) if with_credentials && err.is_auth_failure() => {
                let code = err.code().unwrap_or("-");
                if last != Some(Some("box_credentials_refused")) {
                    tracing::error!(box_auth = mode, box_code = code, error = %err,
                        "Box refused the gateway's credentials: uploads fail with 502 box_auth_failed until they are fixed");
                }
                Some(NotReady {
                    reason: "box_credentials_refused",
                    message: format!("Box refused the gateway's credentials ({mode}: {code})"),
                })
            }
            Err(err) => {
                if last != Some(Some("box_unreachable")) {
                    tracing::warn!(box_auth = mode, error = %err,
                        "Box did not answer the background check; this replica stays ready (uploads get 503 box_unavailable meanwhile)");
                }
                reachable.set(0);
                last = Some(Some("box_unreachable"));
                lifecycle.box_unreachable();
                tokio::time::sleep(every).await;
                continue;
            }
        };
        reachable.set(1);
        if problem.is_none() && last != Some(None) {
            match with_credentials {
                true => tracing::info!(
                    box_auth = mode,
                    "Box answers and accepts the gateway's credentials"
                ),
                false => tracing::info!(
                    box_auth = mode,
                    "Box answers (pass-through: callers bring their own tokens)"
                ),
            }
        }
        last = Some(problem.as_ref().map(|p| p.reason));
        lifecycle.set_box_problem(problem);
        tokio::time::sleep(every).await;
    }
}

/// The background ping of clamd (`Scanner::ping`, every `every`): it keeps `gateway_scanner_up`
/// and the engine an upload's answer names (`VERSION`) current, and logs a change once.
///
/// A dead clamd fails every upload of the replicas that use it (fail closed: 503
/// `scanner_unavailable`). When it is this replica's own (`local`: the pod's sidecar on loopback or
/// a Unix socket), the replica is not ready meanwhile, so the Service sends uploads to pods whose
/// clamd answers, and Kubernetes restarts the sidecar (its liveness probe). A clamd every replica
/// shares (a Service address) is the same for all of them, like Box: it does not take them all out
/// of the Service at once; uploads get 503 with `Retry-After` and `BoxUploadGatewayScannerUnavailable`
/// fires.
pub async fn check_scanner(
    scanner: crate::scan::Scanner,
    local: bool,
    lifecycle: Arc<Lifecycle>,
    every: Duration,
) {
    let mut was_up = None;
    loop {
        let result = scanner.ping().await;
        let up = result.is_ok();
        if was_up != Some(up) {
            match &result {
                Ok(()) => {
                    tracing::info!(clamd = %scanner.address(), engine = scanner.engine().as_deref(), "clamd answers")
                }
                Err(err) => tracing::error!(clamd = %scanner.address(), error = %err, local,
                    "clamd does not answer PING: every upload fails with 503 scanner_unavailable until it does"),
            }
        }
        was_up = Some(up);
        lifecycle.set_scanner_problem(match (&result, local) {
            (Err(err), true) => Some(NotReady {
                reason: "scanner_unavailable",
                message: format!("this replica's clamd does not answer ({})", err.kind),
            }),
            _ => None,
        });
        tokio::time::sleep(every).await;
    }
}
