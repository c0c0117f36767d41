//! A throwaway certificate authority for tests (feature `testing`), made with
//! `rcgen` in-process: no `openssl` binary, no shelling out, P-256 keys that
//! take a millisecond to generate.
//!
//! One [`Pki`] writes `ca.pem` into its directory and signs server
//! certificates (for IP addresses and DNS names) and client certificates (a
//! common name, the identity fleetd's access policy and etcd's client
//! certificate auth read).
//!
//! ```no_run
//! use fleet_registry::testing::pki::Pki;
//! let dir = tempfile::tempdir().unwrap();
//! let pki = Pki::new(dir.path());
//! let (cert, key) = pki.sign_server("etcd", &["127.0.0.1", "localhost"]);
//! let (client_cert, client_key) = pki.sign_client("root");
//! ```

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A test CA and the directory its files go to.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// Makes a new CA and writes its certificate to `dir/ca.pem`.
    ///
    /// # Panics
    /// When the key cannot be made or the file cannot be written (a test
    /// fixture: there is nothing to recover).
    pub fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "fleet test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        write(&dir.join("ca.pem"), &cert.pem());
        Pki {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM) every certificate of this PKI chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Signs a server certificate for `names` (IP addresses become IP
    /// subject alternative names, the rest DNS names); returns the
    /// certificate and key files `<name>.pem` and `<name>-key.pem`.
    pub fn sign_server(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        self.sign(name, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Signs a client certificate whose common name is `name`; returns the
    /// certificate and key files `<name>.pem` and `<name>-key.pem`.
    pub fn sign_client(&self, name: &str) -> (PathBuf, PathBuf) {
        self.sign(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(
        &self,
        name: &str,
        alt_names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(alt_names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        let cert_file = self.dir.join(format!("{name}.pem"));
        let key_file = self.dir.join(format!("{name}-key.pem"));
        write(&cert_file, &cert.pem());
        write(&key_file, &key.serialize_pem());
        (cert_file, key_file)
    }
}

fn write(path: &Path, contents: &str) {
    if let Err(error) = std::fs::write(path, contents) {
        panic!("writing {}: {error}", path.display());
    }
}
