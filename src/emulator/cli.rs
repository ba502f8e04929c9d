//! `box-upload-gateway emulator ...`
use super::{
    Emulator, EmulatorConfig, FaultPlan, LinkShape, TlsSource, WireConfig, BOX_MIN_CHUNKED_SIZE,
    DEFAULT_ENTERPRISE_ID, H2_DEFAULT_WINDOW_BYTES,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Run the strict Box-compatible emulator.
/// Session and token lifetimes are added to the clock as dates: a huge one would overflow them.
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Where uploaded bytes go (a temporary directory when absent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Bearer token to accept (repeatable); none: `emulator-dev-token`.
    #[arg(long = "token")]
    pub tokens: Vec<String>,
    /// Fixed part size in bytes (default: Box-like tiers by file size).
    #[arg(long)]
    pub part_size: Option<u64>,
    /// Smallest file_size a chunked session accepts.
    #[arg(long, default_value_t = BOX_MIN_CHUNKED_SIZE)]
    pub min_chunked_size: u64,
    /// Answer 403 storage_limit_exceeded past this many stored bytes.
    #[arg(long)]
    pub storage_limit_bytes: Option<u64>,
    /// Send 409 context_info.conflicts as an array instead of an object.
    #[arg(long)]
    pub conflicts_as_array: bool,
    /// Upload session lifetime in seconds (at most ten years: dates past that are not Box's).
    #[arg(long, default_value_t = 7 * 24 * 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS))]
    pub session_ttl_secs: u64,
    /// expires_in of issued tokens, in seconds (at most ten years).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS))]
    pub token_ttl_secs: u64,
    /// JWT public key to verify assertions signed with that key id: KID=PEM_FILE (repeatable).
    #[arg(long = "jwt-public-key", value_parser = parse_key_arg)]
    pub jwt_public_keys: Vec<(String, PathBuf)>,
    /// Client id and secret the token endpoint accepts: ID:SECRET (repeatable); none: the dev pair.
    #[arg(long = "client", value_parser = parse_client_arg)]
    pub clients: Vec<(String, String)>,
    /// The enterprise id that token grants may name as their enterprise subject (default: any).
    #[arg(long)]
    pub enterprise_id: Option<String>,
    /// A user id that token grants may name as their user subject (repeatable; default: any).
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// Fault plan as JSON, or @FILE to read it from a file (see docs/emulator.md, "Fault plan").
    #[arg(long)]
    pub faults: Option<String>,
    /// Delay every request by this many milliseconds.
    #[arg(long)]
    pub delay_ms: Option<u64>,
    /// Cap request-body reads at this many bytes per second per connection.
    #[arg(long)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Benchmarks only: hash nothing on chunked uploads, believe the Digest headers.
    #[arg(long)]
    pub trust_digests: bool,
    /// Benchmarks only: do not write chunked-upload bytes (implies --trust-digests).
    #[arg(long)]
    pub discard_content: bool,
    /// Box's rate limit on calls per token and As-User over any 60 s (429 rate_limit_exceeded).
    #[arg(long)]
    pub rate_calls_per_minute: Option<u32>,
    /// The same for upload calls (new sessions, direct uploads).
    #[arg(long)]
    pub rate_uploads_per_minute: Option<u32>,
    /// Metadata templates, a JSON file: a list of templates in the shape of Box's create-template
    /// body (`scope`, `templateKey`, `fields` of `type`, `key`, `options`), or `{"entries": [...]}`
    /// (see docs/emulator.md, "Metadata").
    #[arg(long)]
    pub metadata_templates: Option<PathBuf>,
    /// Serve HTTPS, offering h2 and http/1.1 by ALPN as Box's hosts do. Without --tls-cert, with a
    /// certificate for localhost, 127.0.0.1 and ::1 made at start, signed by a CA whose PEM is written
    /// to DATA_DIR/tls/ca.pem (give it to clients: BOX_CA_FILE, curl --cacert).
    #[arg(long)]
    pub tls: bool,
    /// Serve HTTPS with this PEM certificate chain (implies --tls; needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Add this many milliseconds to every round trip on every connection, as a WAN link does.
    #[arg(long, default_value_t = 0)]
    pub rtt_ms: u64,
    /// Cap each connection at this many bytes per second each way (below TLS, as a link would).
    #[arg(long)]
    pub conn_bytes_per_sec: Option<u64>,
    /// The HTTP/2 window the emulator gives each stream (request), in bytes.
    #[arg(long, default_value_t = H2_DEFAULT_WINDOW_BYTES)]
    pub h2_stream_window_bytes: u32,
    /// The HTTP/2 window the emulator gives each connection, shared by its streams, in bytes.
    #[arg(long, default_value_t = H2_DEFAULT_WINDOW_BYTES)]
    pub h2_connection_window_bytes: u32,
}

fn parse_key_arg(s: &str) -> Result<(String, PathBuf), String> {
    let (kid, file) = s.split_once('=').ok_or("expected KID=PEM_FILE")?;
    Ok((kid.to_owned(), PathBuf::from(file)))
}

fn parse_client_arg(s: &str) -> Result<(String, String), String> {
    let (id, secret) = s.split_once(':').ok_or("expected ID:SECRET")?;
    Ok((id.to_owned(), secret.to_owned()))
}

impl EmulatorArgs {
    pub fn into_config(self) -> std::io::Result<EmulatorConfig> {
        let mut faults = match &self.faults {
            Some(spec) => parse_plan(spec)?,
            None => FaultPlan::default(),
        };
        faults.delay_ms = self.delay_ms.unwrap_or(faults.delay_ms);
        faults.bandwidth_bytes_per_sec = self.bandwidth_bytes_per_sec.or(faults.bandwidth_bytes_per_sec);
        faults.rate_calls_per_minute = self.rate_calls_per_minute.or(faults.rate_calls_per_minute);
        faults.rate_uploads_per_minute = self.rate_uploads_per_minute.or(faults.rate_uploads_per_minute);
        let jwt_public_keys = self
            .jwt_public_keys
            .iter()
            .map(|(kid, file)| Ok((kid.clone(), std::fs::read_to_string(file)?)))
            .collect::<std::io::Result<_>>()?;
        let metadata_templates = match &self.metadata_templates {
            Some(file) => {
                let enterprise = self.enterprise_id.as_deref().unwrap_or(DEFAULT_ENTERPRISE_ID);
                super::metadata::parse_templates(&std::fs::read(file)?, enterprise).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("--metadata-templates {}: {e}", file.display()),
                    )
                })?
            }
            None => Vec::new(),
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSource::Files { cert, key }),
            _ if self.tls => Some(TlsSource::Generated),
            _ => None,
        };
        let wire = WireConfig {
            tls,
            link: LinkShape {
                rtt: Duration::from_millis(self.rtt_ms),
                bytes_per_sec: self.conn_bytes_per_sec,
            },
            h2_stream_window_bytes: self.h2_stream_window_bytes,
            h2_connection_window_bytes: self.h2_connection_window_bytes,
        };
        Ok(EmulatorConfig {
            listen: self.listen,
            data_dir: self.data_dir,
            tokens: self.tokens,
            part_size: self.part_size,
            min_chunked_size: self.min_chunked_size,
            storage_limit_bytes: self.storage_limit_bytes,
            conflicts_as_array: self.conflicts_as_array,
            session_ttl: Duration::from_secs(self.session_ttl_secs),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            jwt_public_keys,
            clients: self.clients,
            enterprise_id: self.enterprise_id,
            users: self.users,
            faults,
            trust_digests: self.trust_digests,
            discard_content: self.discard_content,
            metadata_templates,
            wire,
        })
    }
}

fn parse_plan(spec: &str) -> std::io::Result<FaultPlan> {
    let text = match spec.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)?,
        None => spec.to_owned(),
    };
    serde_json::from_str(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--faults: {e}")))
}

/// Runs until Ctrl-C.
pub async fn run(args: EmulatorArgs) -> std::io::Result<()> {
    let config = args.into_config()?;
    let handle = Emulator::spawn(config).await?;
    tracing::info!(
        api = %handle.api_url(),
        upload = %handle.upload_url(),
        token = %handle.token_url(),
        control = %format!("{}/_emulator/state", handle.base_url()),
        "Box emulator listening"
    );
    println!(
        "Box emulator: api {} upload {} token {}",
        handle.api_url(),
        handle.upload_url(),
        handle.token_url()
    );
    if let Some(ca) = handle.ca_file() {
        println!("Box emulator: TLS certificate's CA in {}", ca.display());
    }
    crate::lifecycle::shutdown_signal().await;
    handle.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    fn config(argv: &[&str]) -> EmulatorConfig {
        let argv = std::iter::once("emulator").chain(argv.iter().copied());
        Cli::try_parse_from(argv).unwrap().args.into_config().unwrap()
    }

    #[test]
    fn defaults_match_box() {
        let c = config(&[]);
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            (c.min_chunked_size, c.part_size, c.conflicts_as_array),
            (20_000_000, None, false)
        );
        assert_eq!(c.session_ttl, Duration::from_secs(7 * 24 * 3600));
        assert!(c.tokens.is_empty() && c.faults == FaultPlan::default());
        assert_eq!(c.wire, WireConfig::default());
    }

    #[test]
    fn lifetimes_that_would_overflow_a_date_are_refused() {
        for flag in ["--session-ttl-secs", "--token-ttl-secs"] {
            let argv = ["emulator", flag, "18446744073709551615"];
            assert!(Cli::try_parse_from(argv).is_err(), "{flag}");
        }
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let c = config(&[
            "--listen",
            "127.0.0.1:9001",
            "--data-dir",
            "d",
            "--token",
            "a",
            "--token",
            "b",
            "--part-size",
            "1048576",
            "--min-chunked-size",
            "5",
            "--storage-limit-bytes",
            "9",
            "--conflicts-as-array",
            "--session-ttl-secs",
            "60",
            "--token-ttl-secs",
            "30",
            "--client",
            "id:secret",
            "--delay-ms",
            "7",
            "--bandwidth-bytes-per-sec",
            "1000",
            "--trust-digests",
            "--rate-calls-per-minute",
            "240",
            "--rate-uploads-per-minute",
            "40",
            "--faults",
            r#"{"rules": [{"endpoint": "commit", "action": {"type": "parts_mismatch"}}]}"#,
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--rtt-ms",
            "50",
            "--conn-bytes-per-sec",
            "25000000",
            "--h2-stream-window-bytes",
            "1048576",
            "--h2-connection-window-bytes",
            "4194304",
        ]);
        let tls = TlsSource::Files {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        };
        assert_eq!(c.wire.tls, Some(tls));
        assert_eq!(
            (c.wire.link.rtt, c.wire.link.bytes_per_sec),
            (Duration::from_millis(50), Some(25_000_000))
        );
        assert_eq!(
            (c.wire.h2_stream_window_bytes, c.wire.h2_connection_window_bytes),
            (1 << 20, 4 << 20)
        );
        assert_eq!(c.tokens, ["a", "b"]);
        assert_eq!(
            (c.faults.rate_calls_per_minute, c.faults.rate_uploads_per_minute),
            (Some(240), Some(40))
        );
        assert_eq!(
            (c.part_size, c.min_chunked_size, c.storage_limit_bytes),
            (Some(1 << 20), 5, Some(9))
        );
        assert!(c.conflicts_as_array);
        assert_eq!((c.session_ttl.as_secs(), c.token_ttl.as_secs()), (60, 30));
        assert_eq!(c.clients, [("id".to_owned(), "secret".to_owned())]);
        assert_eq!(
            (c.faults.delay_ms, c.faults.bandwidth_bytes_per_sec),
            (7, Some(1000))
        );
        assert_eq!(c.faults.rules.len(), 1);
        assert_eq!(c.data_dir, Some(PathBuf::from("d")));
        assert!(c.trust_digests);
    }

    #[test]
    fn metadata_templates_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"[{"scope": "enterprise", "templateKey": "invoiceData", "fields": [{"type": "float", "key": "amount"}]}]"#,
        )
        .unwrap();
        let c = config(&[
            "--metadata-templates",
            good.to_str().unwrap(),
            "--enterprise-id",
            "42",
        ]);
        assert_eq!(c.metadata_templates[0].scope, "enterprise_42");
        assert_eq!(
            c.metadata_templates[0].fields[0].kind,
            super::super::FieldKind::Float
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"[{"scope": "enterprise", "templateKey": "9lives"}]"#).unwrap();
        let args = Cli::try_parse_from(["emulator", "--metadata-templates", bad.to_str().unwrap()])
            .unwrap()
            .args;
        let err = args.into_config().unwrap_err().to_string();
        assert!(err.contains("templateKey"), "{err}");
    }

    #[test]
    fn tls_alone_makes_a_certificate_and_a_key_needs_its_certificate() {
        assert_eq!(config(&["--tls"]).wire.tls, Some(TlsSource::Generated));
        assert!(Cli::try_parse_from(["emulator", "--tls-key", "k.pem"]).is_err());
    }

    #[test]
    fn a_bad_fault_plan_is_an_error() {
        let args = Cli::try_parse_from(["emulator", "--faults", "{\"rules\": 3}"])
            .unwrap()
            .args;
        assert!(args.into_config().is_err());
    }
}
