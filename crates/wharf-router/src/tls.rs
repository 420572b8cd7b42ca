//! TLS for the ingress: the rustls server configuration (TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`, the aws-lc-rs provider) and the choice of a certificate by SNI.
//!
//! [`Certificates`] answers each handshake's server name with, in order: a certificate set for
//! that exact name ([`Certificates::set`]: what custom domains and ACME will hand in), else,
//! when the server has a [`LocalCa`] and the name is one the ingress routes, a certificate the
//! local CA issues for it on the spot (cached; the CA's certificate is what a developer trusts
//! to use HTTPS on default service hosts). A name neither covers gets no certificate: the
//! handshake fails, so the ingress never presents a certificate for a name it does not serve.
//!
//! A handshake offering ALPN `acme-tls/1` is an ACME server validating TLS-ALPN-01: it gets
//! the challenge certificate of [`crate::acme`], never a served one, and the connection is
//! closed after the handshake.
//!
//! The local CA's key and certificate live in a directory the server owns (the key 0600) and
//! are reused across restarts. It does not do ACME (certificates for public domains come from
//! elsewhere and are handed in with [`Certificates::set`]).

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why TLS could not be set up, naming the file or the step.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM certificate and key Wharf can use: {problem}")]
    BadPem { path: PathBuf, problem: String },
    #[error("cannot {op}")]
    Generate {
        op: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot use the certificate for {name}")]
    Rustls {
        name: String,
        #[source]
        source: rustls::Error,
    },
}

/// A certificate authority of this server, for hosts with no certificate of their own.
pub struct LocalCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM: what clients are told to trust.
    pub cert_pem: String,
    /// Where the CA certificate is stored.
    pub cert_path: PathBuf,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa").field("cert_path", &self.cert_path).finish()
    }
}

const CA_CERT_FILE: &str = "local-ca.pem";
const CA_KEY_FILE: &str = "local-ca-key.pem";

impl LocalCa {
    /// Loads the CA kept in `dir`, or creates one there (key written 0600, then the
    /// certificate: a CA whose certificate file exists is complete).
    pub fn open(dir: &Path) -> Result<LocalCa, TlsError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { op, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
            let bad = |problem: String| TlsError::BadPem { path: cert_path.clone(), problem };
            let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("its key: {e}")))?;
            ca_der(&cert_pem)?;
            // What issuing needs of the CA is its name and key, both rebuilt exactly as the
            // stored certificate has them (the key identifier derives from the key).
            let issuer = rcgen::Issuer::new(ca_params()?, key);
            return Ok(LocalCa { issuer, cert_pem, cert_path });
        }
        let key =
            rcgen::KeyPair::generate().map_err(|source| TlsError::Generate { op: "generate a CA key", source })?;
        let mut params = ca_params()?;
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(3600)).into();
        params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let cert =
            params.self_signed(&key).map_err(|source| TlsError::Generate { op: "sign the CA certificate", source })?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        let cert_pem = cert.pem();
        write_file(&cert_path, cert_pem.as_bytes())?;
        let issuer = rcgen::Issuer::new(params, key);
        tracing::info!(ca = %cert_path.display(), "created a local CA for the HTTPS ingress");
        Ok(LocalCa { issuer, cert_pem, cert_path })
    }

    /// Issues a certificate for `name` as the ingress would (see [`LocalCa::issue`]), as PEM:
    /// the chain (leaf, then the CA) and the key, e.g. for another server to present the
    /// same kind of certificate in a comparison.
    pub fn issue_pem(&self, name: &str) -> Result<(String, String), TlsError> {
        let (cert, key) = self.sign(name)?;
        Ok((format!("{}{}", cert.pem(), self.cert_pem), key.serialize_pem()))
    }

    fn sign(&self, name: &str) -> Result<(rcgen::Certificate, rcgen::KeyPair), TlsError> {
        let key =
            rcgen::KeyPair::generate().map_err(|source| TlsError::Generate { op: "generate a host key", source })?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
            .map_err(|source| TlsError::Generate { op: "describe a host certificate", source })?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(3600)).into();
        params.not_after = (now + std::time::Duration::from_secs(90 * 24 * 3600)).into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| TlsError::Generate { op: "sign a host certificate", source })?;
        Ok((cert, key))
    }

    /// Issues a certificate for `name`, valid 90 days, with a fresh P-256 key.
    fn issue(&self, name: &str) -> Result<CertifiedKey, TlsError> {
        let (cert, key) = self.sign(name)?;
        let chain = vec![cert.der().clone(), ca_der(&self.cert_pem)?];
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| TlsError::BadPem { path: PathBuf::from(name), problem: e.to_owned() })?;
        certified_key(name, chain, key_der)
    }
}

/// The local CA's certificate fields (its validity is set when it is created).
fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|source| TlsError::Generate { op: "describe the CA certificate", source })?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Wharf local CA");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Wharf");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn ca_der(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::BadPem { path: PathBuf::from(CA_CERT_FILE), problem: "no certificate".into() })
}

pub(crate) fn certified_key(
    name: &str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    let provider = aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Rustls { name: name.to_owned(), source })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    std::fs::write(path, bytes).map_err(|source| TlsError::Io { op: "write", path: path.to_owned(), source })
}

/// Writes a secret: created 0600, so it is never readable by others, not even briefly.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| TlsError::Io { op: "write", path: path.to_owned(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Which names the ingress serves (the routing table answers), so that the local CA issues
/// certificates only for them.
pub type ServesName = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The certificates the HTTPS ingress presents, chosen by SNI.
pub struct Certificates {
    by_name: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Certificates the local CA issued, by name.
    issued: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    local_ca: Option<LocalCa>,
    serves: ServesName,
    /// TLS-ALPN-01 challenge certificates, presented only to `acme-tls/1` handshakes.
    challenges: std::sync::OnceLock<Arc<crate::acme::AcmeChallenges>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.by_name.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        f.debug_struct("Certificates").field("names", &names).field("local_ca", &self.local_ca).finish()
    }
}

impl Certificates {
    pub fn new(local_ca: Option<LocalCa>, serves: ServesName) -> Arc<Certificates> {
        Arc::new(Certificates {
            by_name: RwLock::default(),
            issued: RwLock::default(),
            local_ca,
            serves,
            challenges: std::sync::OnceLock::new(),
        })
    }

    /// Answers `acme-tls/1` handshakes (TLS-ALPN-01 validation) from `challenges`; without
    /// it, such handshakes get no certificate. Only the first call has an effect.
    pub fn answer_challenges(&self, challenges: Arc<crate::acme::AcmeChallenges>) {
        let _ = self.challenges.set(challenges);
    }

    pub fn local_ca(&self) -> Option<&LocalCa> {
        self.local_ca.as_ref()
    }

    /// Presents `chain_pem` (leaf first) with `key_pem` for `name` from now on.
    pub fn set(&self, name: &str, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        use rustls::pki_types::pem::PemObject as _;
        let bad = |problem: String| TlsError::BadPem { path: PathBuf::from(name), problem };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("its chain: {e}")))?;
        if chain.is_empty() {
            return Err(bad("no certificate in the chain".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(format!("its key: {e}")))?;
        let certified = certified_key(name, chain, key)?;
        self.by_name.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_ascii_lowercase(), Arc::new(certified));
        Ok(())
    }

    /// Stops presenting the certificate set for `name`.
    pub fn remove(&self, name: &str) {
        self.by_name.write().unwrap_or_else(|p| p.into_inner()).remove(&name.to_ascii_lowercase());
    }

    fn for_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.by_name.read().unwrap_or_else(|p| p.into_inner()).get(&name) {
            return Some(key.clone());
        }
        let ca = self.local_ca.as_ref()?;
        if !(self.serves)(&name) {
            tracing::debug!(sni = %name, "TLS handshake for a name the ingress does not serve");
            return None;
        }
        if let Some(key) = self.issued.read().unwrap_or_else(|p| p.into_inner()).get(&name) {
            return Some(key.clone());
        }
        match ca.issue(&name) {
            Ok(key) => {
                let key = Arc::new(key);
                self.issued.write().unwrap_or_else(|p| p.into_inner()).insert(name, key.clone());
                Some(key)
            }
            Err(error) => {
                tracing::warn!(sni = %name, error = %crate::tls::chain(&error), "the local CA cannot issue a certificate");
                None
            }
        }
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// rustls asks this for each handshake.
#[derive(Debug)]
struct BySni(Arc<Certificates>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI (a client connecting by address): nothing to choose by, no certificate.
        let name = hello.server_name()?;
        let validation = hello.alpn().is_some_and(|mut alpn| alpn.any(|p| p == crate::acme::ACME_TLS_ALPN));
        if validation {
            // An ACME server validating TLS-ALPN-01 gets the challenge certificate, or nothing.
            return self.0.challenges.get()?.tls_alpn01(name);
        }
        self.0.for_name(name)
    }
}

/// The ingress's TLS settings: TLS 1.2 and 1.3, ALPN h2 then http/1.1, certificates by SNI.
pub fn server_config(certificates: Arc<Certificates>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls { name: "the ingress".into(), source })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni(certificates)));
    // `acme-tls/1` last: only ACME validators offer it, and they offer nothing else.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), crate::acme::ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
