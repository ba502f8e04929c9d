//! The emulator's TLS: a certificate made at start (signed by a CA made with it, whose PEM clients are
//! given to trust, as a corporate CA would be), or one read from files.
use super::TlsSource;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// What the listener serves, and the CA a client trusts it with (None for certificates from files:
/// whoever made them knows their issuer).
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_pem: Option<String>,
}

/// The names the generated certificate is valid for: the emulator is for loopback.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

pub fn server_tls(source: &TlsSource) -> io::Result<ServerTls> {
    let (chain, key, ca_pem) = match source {
        TlsSource::Generated => generate()?,
        TlsSource::Files { cert, key } => (read_chain(cert)?, read_key(key)?, None),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| invalid(format!("TLS certificate: {e}")))?;
    // As Box's hosts: HTTP/2 to a client that offers it, else HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        ca_pem,
    })
}

type Generated = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    Option<String>,
);

fn generate() -> io::Result<Generated> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let failed = |e: rcgen::Error| invalid(format!("cannot make the emulator's certificate: {e}"));
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "box-upload-gateway emulator CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(failed)?;
    let mut leaf = CertificateParams::new(NAMES.map(String::from)).map_err(failed)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "box-upload-gateway emulator");
    let cert = leaf.signed_by(&key, &issuer).map_err(failed)?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(invalid)?;
    Ok((vec![cert.der().clone()], key, Some(ca_cert.pem())))
}

fn read_chain(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("--tls-cert {}: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!(
            "--tls-cert {}: no certificate in it",
            path.display()
        )));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid(format!("--tls-key {}: {e}", path.display())))
}

fn invalid(message: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_string())
}
