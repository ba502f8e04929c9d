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

/// Webhook deliveries: bounded by `timeout`, connecting included, and the connection alone by the
/// shorter `connect_timeout` (a receiver that is down, or a black-holed address, costs a slot that
/// long, not the whole `timeout`); a receiver's redirect is not followed (the signature was made for
/// the URL configured).
pub fn webhook_client(connect_timeout: Duration, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    install_tls_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(connect_timeout.min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent(" webhooks"))
        .build()
}

/// The OTLP trace exporter's client.
pub fn otlp_client() -> reqwest::Client {
    install_tls_provider();
    reqwest::Client::new()
}

/// A URL as logs and error messages may show it: scheme, host, port and path, without user info,
/// query or fragment, where webhook and collector URLs carry their credentials
/// (`https://user:pass@…`, `?token=…`). Anything that is not a URL with a host is not shown at all.
pub fn loggable_url(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(mut u) if u.has_host() => {
            // Both fail only for URLs without a host, excluded above.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        _ => "[not a URL with a host]".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_keep_no_user_info_query_or_fragment() {
        assert_eq!(
            loggable_url("https://user:hunter2@hooks.example:8443/a/b?token=t0p&x=1#frag"),
            "https://hooks.example:8443/a/b"
        );
        assert_eq!(
            loggable_url("http://127.0.0.1:9/hooks"),
            "http://127.0.0.1:9/hooks"
        );
        assert_eq!(loggable_url("https://:hunter2@h/"), "https://h/");
        for not_shown in ["user:hunter2@host/x", "hunter2", "mailto:a@hunter2", ""] {
            assert_eq!(loggable_url(not_shown), "[not a URL with a host]", "{not_shown}");
        }
    }
}
