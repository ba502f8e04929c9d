//! The HTTP clients the gateway makes (Box, webhook receivers, the OTLP collector) and the TLS
//! provider they share. It sits below everything that speaks HTTP out of the process, so none of them
//! depends on another for the provider having been installed first.
use std::sync::{Arc, Mutex};
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

/// Which HTTP versions the gateway offers Box's hosts (`box_http_version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxHttpVersion {
    /// HTTP/1.1 only: every part in flight has a TCP connection of its own.
    Http1,
    /// HTTP/2 only (ALPN `h2` over TLS, prior knowledge over `http://`), one connection per lane.
    Http2,
    /// Both offered by ALPN, the host picks (reqwest's default); HTTP/1.1 over `http://`.
    Auto,
}

impl BoxHttpVersion {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "http1" => Some(Self::Http1),
            "http2" => Some(Self::Http2),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Auto => "auto",
        }
    }
}

/// How the gateway connects to Box's hosts, validated.
#[derive(Clone, Debug)]
pub struct BoxConnections {
    pub version: BoxHttpVersion,
    /// The most part uploads the whole process can have in flight at once: each needs a connection of
    /// its own to keep the bandwidth its own (see `BoxHttp`).
    pub parts_in_flight: usize,
    /// CA certificates trusted for Box's hosts on top of the system's (`box_ca_file`).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// The clients for Box, in lanes. A part upload takes the lane with the fewest parts on it and keeps
/// it to its end, so parts in flight spread over connections:
///
/// - HTTP/1.1 carries one request at a time per connection, so one client does: its pool opens a
///   connection per part in flight and keeps up to `parts_in_flight` of them idle between parts
///   (a new one costs a TCP and a TLS handshake, two round trips).
/// - HTTP/2 multiplexes: one reqwest client keeps one connection per host, and every part on it shares
///   that connection's bandwidth and the flow-control windows the host advertises (65,535 bytes by
///   default: at 50 ms a round trip, ~1.3 MB/s for all of them together). So `http2` and `auto` get
///   `parts_in_flight` lanes, a client (a connection) each. The gateway's own HTTP/2 windows are left at
///   hyper's defaults: they bound only what Box sends back, small JSON answers.
#[derive(Clone)]
pub struct BoxHttp {
    lanes: Arc<Lanes>,
}

struct Lanes {
    clients: Vec<reqwest::Client>,
    /// Parts in flight on each lane.
    parts: Mutex<Vec<usize>>,
}

/// A part upload's lane, given back when dropped.
pub struct PartLane {
    lanes: Arc<Lanes>,
    index: usize,
}

impl PartLane {
    pub fn client(&self) -> &reqwest::Client {
        &self.lanes.clients[self.index]
    }
}

impl Drop for PartLane {
    fn drop(&mut self) {
        self.lanes.parts.lock().unwrap_or_else(|p| p.into_inner())[self.index] -= 1;
    }
}

impl BoxHttp {
    pub fn build(connections: &BoxConnections) -> reqwest::Result<Self> {
        install_tls_provider();
        let lanes = match connections.version {
            BoxHttpVersion::Http1 => 1,
            BoxHttpVersion::Http2 | BoxHttpVersion::Auto => connections.parts_in_flight.max(1),
        };
        let clients = (0..lanes)
            .map(|_| box_client(connections, lanes))
            .collect::<reqwest::Result<Vec<_>>>()?;
        Ok(Self::from_clients(clients))
    }

    fn from_clients(clients: Vec<reqwest::Client>) -> Self {
        let parts = Mutex::new(vec![0; clients.len()]);
        Self {
            lanes: Arc::new(Lanes { clients, parts }),
        }
    }

    /// For calls that carry no file bytes (sessions, commits, reads, tokens): the first lane.
    pub fn client(&self) -> &reqwest::Client {
        &self.lanes.clients[0]
    }

    /// The lane with the fewest parts in flight; among equals the first, so a quiet gateway keeps
    /// using the same warm connections.
    pub fn part_lane(&self) -> PartLane {
        let mut parts = self.lanes.parts.lock().unwrap_or_else(|p| p.into_inner());
        let index = (0..parts.len()).min_by_key(|&i| parts[i]).unwrap_or(0);
        parts[index] += 1;
        PartLane {
            lanes: self.lanes.clone(),
            index,
        }
    }

    pub fn lanes(&self) -> usize {
        self.lanes.clients.len()
    }
}

/// One client for everything (tests that build a `BoxClient` by hand).
impl From<reqwest::Client> for BoxHttp {
    fn from(client: reqwest::Client) -> Self {
        Self::from_clients(vec![client])
    }
}

/// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their lower-case forms) are honoured:
/// reqwest reads them when a client is built, with or without its `system-proxy` feature (which only
/// adds macOS's and Windows's system settings).
fn box_client(connections: &BoxConnections, lanes: usize) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connections.connect_timeout)
        .timeout(connections.request_timeout)
        .user_agent(user_agent(""))
        // One lane: a connection per part in flight, kept between parts. Several: each lane's
        // client mostly carries one part at a time (and, on lane 0, the calls between parts).
        .pool_max_idle_per_host(if lanes == 1 {
            connections.parts_in_flight
        } else {
            2
        });
    builder = match connections.version {
        BoxHttpVersion::Http1 => builder.http1_only(),
        BoxHttpVersion::Http2 => builder.http2_prior_knowledge(),
        BoxHttpVersion::Auto => builder,
    };
    let roots = connections
        .extra_roots
        .iter()
        .map(|der| reqwest::Certificate::from_der(der));
    builder
        .tls_certs_merge(roots.collect::<reqwest::Result<Vec<_>>>()?)
        .build()
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
