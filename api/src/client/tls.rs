//! TLS for `https://` endpoints: the CA that signs the API's certificate
//! (`--ca-file`, else the system's bundle) and an optional client
//! certificate (`--cert-file`, `--key-file`) for the API's access policy.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::Connection;

/// Where the system's CA bundle lives on Debian-like hosts (Go's first choice too).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS files of a client; all optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates to verify the API with; `None`: the system's bundle.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (chain), with `key_file`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Why a TLS set-up is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {detail}")]
    File {
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("--cert-file and --key-file must be given together")]
    HalfClientCertificate,
    #[error("TLS set-up: {0}")]
    Config(String),
}

fn file_error(what: &'static str, path: &Path, detail: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|error| file_error(what, path, error))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The connector for `tls`: TLS 1.2 and 1.3 with ring.
pub(super) fn connector(tls: &ClientTls) -> Result<TlsConnector, TlsError> {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(TlsError::HalfClientCertificate);
    }
    let ca_path = tls
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    for cert in read_certificates("CA certificates", &ca_path)? {
        roots
            .add(cert)
            .map_err(|error| file_error("CA certificates", &ca_path, error))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let certs = read_certificates("the client certificate", cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|error| file_error("the client key", key_file, error))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|error| TlsError::Config(error.to_string()))?
        }
        _ => return Err(TlsError::HalfClientCertificate),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The TLS handshake on a connected stream to `authority` (`host:port`);
/// the certificate must name the host.
pub(super) async fn handshake(
    connector: &TlsConnector,
    authority: &str,
    stream: tokio::net::TcpStream,
) -> io::Result<Box<dyn Connection>> {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    let name = ServerName::try_from(host.to_owned()).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS server name {host:?}: {error}"),
        )
    })?;
    let stream = connector.connect(name, stream).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("TLS handshake with {authority}: {error}"),
        )
    })?;
    Ok(Box::new(stream) as Box<dyn Connection>)
}
