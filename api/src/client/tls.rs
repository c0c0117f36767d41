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

/// What a TLS alert from the API means for its client, when the chain of
/// `error` holds one: with TLS 1.3 the server checks the client certificate
/// after the client's side of the handshake is done, so the refusal only shows
/// as an alert on the first read, which hyper reports as "connection error".
pub(super) fn refusal_hint(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        let tls = current.downcast_ref::<rustls::Error>().or_else(|| {
            current
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return alert_hint(*alert);
        }
        cause = current.source();
    }
    None
}

fn alert_hint(alert: rustls::AlertDescription) -> Option<&'static str> {
    use rustls::AlertDescription as Alert;
    match alert {
        Alert::CertificateRequired => Some(
            "the API requires a client certificate signed by its CA: give a certificate and its key",
        ),
        Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown => Some(
            "the API refused the client certificate: it must be signed by the CA the API trusts \
             (api_tls_client_ca_file)",
        ),
        Alert::CertificateExpired => Some("the API refused the client certificate: it has expired"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_about_the_client_certificate_are_explained_through_io_errors() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, alert);
        let hint = refusal_hint(&wrapped).expect("a hint");
        assert!(hint.contains("requires a client certificate"), "{hint}");
        let unknown = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        assert!(refusal_hint(&unknown).is_some_and(|hint| hint.contains("signed by the CA")));
        let other = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert_eq!(refusal_hint(&other), None);
        assert_eq!(refusal_hint(&io::Error::other("reset")), None);
    }
}
