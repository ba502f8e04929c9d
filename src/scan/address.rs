//! Where clamd listens: `clamd_address` (`GATEWAY_CLAMD_ADDRESS`), parsed once at the edge.
use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;

/// clamd's `TCPSocket` (with `TCPAddr`) or its `LocalSocket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `tcp://host:port`: a name, an IPv4 address or a bracketed IPv6 address (`tcp://[::1]:3310`).
    Tcp { host: String, port: u16 },
    /// `unix:/path/to/clamd.ctl` (or `unix:///path/...`).
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clamd_address {given:?} {why}: expected tcp://host:port or unix:/path/to/clamd.ctl")]
pub struct AddressError {
    given: String,
    why: &'static str,
}

impl FromStr for ClamdAddress {
    type Err = AddressError;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        let refuse = |why| AddressError {
            given: given.to_owned(),
            why,
        };
        if let Some(path) = given.strip_prefix("unix:") {
            // `unix:///p` is the URL form of `unix:/p`; `unix://p` would name a host, which a socket
            // path has not.
            let path = match path.strip_prefix("//") {
                Some(rest) if rest.starts_with('/') => rest,
                Some(_) => return Err(refuse("names no absolute path")),
                None => path,
            };
            if !path.starts_with('/') || path.len() < 2 {
                return Err(refuse("names no absolute path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let Some(rest) = given.strip_prefix("tcp://") else {
            return Err(refuse("has no tcp:// or unix: scheme"));
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(refuse("has no port"));
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(refuse("has no port between 1 and 65535")),
        };
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            }
        };
        if !host_ok {
            return Err(refuse("has no valid host (a name, an IPv4 address or [IPv6])"));
        }
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ClamdAddress {
    /// In this pod or host: a Unix socket, or TCP on a loopback address (`localhost`, 127.0.0.0/8,
    /// `::1`). Such a clamd is this replica's own (a sidecar), not one every replica shares.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Unix(_) => true,
            Self::Tcp { host, .. } => {
                let host = Self::tcp_host(host);
                host.eq_ignore_ascii_case("localhost")
                    || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// The host as a resolver takes it: an IPv6 address without its brackets.
    pub(crate) fn tcp_host(host: &str) -> &str {
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> ClamdAddress {
        ClamdAddress::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn a_sidecar_is_local_and_a_service_is_not() {
        for local in [
            "tcp://127.0.0.1:3310",
            "tcp://localhost:3310",
            "tcp://[::1]:3310",
            "unix:/run/c.ctl",
        ] {
            assert!(local.parse::<ClamdAddress>().unwrap().is_local(), "{local}");
        }
        for remote in [
            "tcp://clamav.scan.svc:3310",
            "tcp://10.0.0.7:3310",
            "tcp://[fd00::1]:3310",
        ] {
            assert!(!remote.parse::<ClamdAddress>().unwrap().is_local(), "{remote}");
        }
    }

    #[test]
    fn parses_what_clamd_listens_on() {
        assert_eq!("tcp://127.0.0.1:3310".parse(), Ok(tcp("127.0.0.1", 3310)));
        assert_eq!(
            "tcp://clamav.scan.svc:3310".parse(),
            Ok(tcp("clamav.scan.svc", 3310))
        );
        assert_eq!("tcp://[::1]:3310".parse(), Ok(tcp("[::1]", 3310)));
        assert_eq!(
            "unix:/run/clamav/clamd.ctl".parse(),
            Ok(ClamdAddress::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            "unix:///tmp/clamd.sock".parse(),
            Ok(ClamdAddress::Unix("/tmp/clamd.sock".into()))
        );
    }

    #[test]
    fn prints_as_it_is_written() {
        for given in ["tcp://127.0.0.1:3310", "tcp://[::1]:1", "unix:/tmp/clamd.sock"] {
            assert_eq!(given.parse::<ClamdAddress>().unwrap().to_string(), given);
        }
        assert_eq!(ClamdAddress::tcp_host("[::1]"), "::1");
        assert_eq!(ClamdAddress::tcp_host("clamav"), "clamav");
    }

    #[test]
    fn refuses_what_names_no_socket() {
        for given in [
            "",
            "127.0.0.1:3310",
            "http://clamav:3310",
            "tcp://clamav",
            "tcp://clamav:",
            "tcp://clamav:0",
            "tcp://clamav:65536",
            "tcp://:3310",
            "tcp://user@clamav:3310",
            "tcp://clamav:3310/",
            "tcp://clamav/x:3310",
            "tcp://[::1:3310",
            "tcp://[not-v6]:3310",
            "tcp://::1:3310",
            "unix:",
            "unix:relative/clamd.sock",
            "unix://host/clamd.sock",
            "unix:/",
        ] {
            let err = given.parse::<ClamdAddress>().unwrap_err();
            assert!(
                err.to_string().contains("expected tcp://host:port"),
                "{given}: {err}"
            );
        }
    }
}
