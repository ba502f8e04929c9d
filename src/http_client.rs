//! The HTTP clients the gateway makes (Box, webhook receivers, the OTLP collector) and the TLS
//! provider they share. It sits below everything that speaks HTTP out of the process, so none of them
//! depends on another for the provider having been installed first.
use std::time::Duration;

/// reqwest is built without a TLS crypto provider of its own (aws-lc is the slowest unit of the
/// build); rustls's ring provider serves TLS. SHA-1 never goes through it. Idempotent: every builder
/// below calls it, and so may tests.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn user_agent(role: &str) -> String {
    format!("box-upload-gateway/{}{role}", env!("CARGO_PKG_VERSION"))
}

/// The one client for every Box call (API, upload and token hosts).
pub fn box_client(connect_timeout: Duration, request_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    install_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .user_agent(user_agent(""))
        .build()
}

/// Webhook deliveries: bounded by `timeout`, connecting included; a receiver's redirect is not
/// followed (the signature was made for the URL configured).
pub fn webhook_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    install_tls_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent(" webhooks"))
        .build()
}

/// The OTLP trace exporter's client.
pub fn otlp_client() -> reqwest::Client {
    install_tls_provider();
    reqwest::Client::new()
}
