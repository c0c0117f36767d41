//! TLS for the API's TCP listeners: the server certificate
//! (`api_tls_cert_file`, `api_tls_key_file`), client certificates verified
//! against `api_tls_client_ca_file`, and the client's name for the access
//! policy (the certificate's subject common name).
//!
//! TLS 1.2 and 1.3 are both offered so that Go 1.19 clients (the original
//! `fleetctl`) connect. With a client CA, a client without a certificate
//! signed by it fails the handshake: it never reaches HTTP. Without one,
//! TLS clients authenticate with bearer tokens.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The files of the API's TLS set-up, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<&'a Path>,
}

/// Builds the acceptor for `files`.
///
/// # Errors
/// An unreadable or malformed PEM file, a key that does not match the
/// certificate, or a CA file without certificates; each names the file.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certificates(files.cert)?;
    let key = PrivateKeyDer::from_pem_file(files.key)
        .with_context(|| format!("reading the private key in {}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("choosing the TLS versions")?;
    let builder = match files.client_ca {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(ca_file)? {
                roots
                    .add(cert)
                    .with_context(|| format!("adding a CA certificate of {}", ca_file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("using {} as the client CA", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "using the certificate {} with the key {}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificates in {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The subject common name of the client's certificate, if it sent one
/// (the handshake has verified it against the client CA by then).
pub fn client_name(connection: &rustls::ServerConnection) -> Option<String> {
    let cert = connection.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}
