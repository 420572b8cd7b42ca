//! Certificates for mapped domains from an ACME server (Let's Encrypt by default), with the
//! `instant-acme` client.
//!
//! [`AcmeManager`] keeps one task per managed domain. The task first looks in
//! `<dir>/certs/<domain>/` for a stored certificate that covers the domain and is not yet due
//! for renewal (two thirds into its lifetime): when there is one it is used as is, with no new
//! order. Otherwise it orders one: it answers the authorization with TLS-ALPN-01 (a challenge
//! certificate the HTTPS ingress presents to clients that offer ALPN `acme-tls/1`) when the
//! server offers it, else HTTP-01 (the key authorization the plain HTTP ingress answers at
//! `/.well-known/acme-challenge/TOKEN`), both published through [`AcmeChallenges`]. The new
//! certificate and its key (0600) are stored, handed to the ingress's [`Certificates`], and
//! renewed on time. A failed order is retried with exponential back-off (longer when the
//! server says it is rate-limited), and [`AcmeManager::status`] tells why meanwhile.
//!
//! The account key is kept in `<dir>/account.json` (0600) and reused, for the same directory.
//! It does not decide which domains to manage (domain mappings do), nor serve HTTP (the proxy
//! answers HTTP-01 from [`AcmeChallenges`]).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::tls::Certificates;

/// Let's Encrypt's production directory, the default ACME server.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of HTTP-01 validation requests (RFC 8555, 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The first wait after a failed order; it doubles with each failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// The least wait after the ACME server said the account or domain is rate-limited.
const RATE_LIMITED_BACKOFF: Duration = Duration::from_secs(3600);

/// The shortest wait before renewing a certificate just issued.
const MIN_RENEWAL_WAIT: Duration = Duration::from_secs(60);

/// How long to wait after the `failures`-th failed order in a row: 30 s, doubling, at most
/// 6 h; at least 1 h when the server said we are rate-limited.
fn retry_wait(failures: u32, rate_limited: bool) -> Duration {
    let wait = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    if rate_limited { wait.max(RATE_LIMITED_BACKOFF) } else { wait }
}

/// Why an ACME step failed, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{step}")]
    Acme {
        step: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ACME server refused the authorization of {domain}: {reason}")]
    Invalid { domain: String, reason: String },
    #[error("the ACME server offers no {wanted} challenge for {domain}")]
    NoChallenge { domain: String, wanted: &'static str },
    #[error("cannot make a {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("the certificate the ACME server issued is unusable: {0}")]
    BadCertificate(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl AcmeError {
    fn acme(step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
        move |source| AcmeError::Acme { step, source }
    }

    /// The server asked us to slow down.
    fn rate_limited(&self) -> bool {
        matches!(self, AcmeError::Acme { source: instant_acme::Error::Api(problem), .. }
            if problem.r#type.as_deref().is_some_and(|t| t.ends_with(":rateLimited")))
    }
}

/// What the ingress answers ACME validation with, while an order is in progress.
#[derive(Default)]
pub struct AcmeChallenges {
    /// HTTP-01: token -> key authorization.
    http01: RwLock<HashMap<String, String>>,
    /// TLS-ALPN-01: domain -> the challenge certificate.
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for AcmeChallenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeChallenges")
            .field("http01", &self.http01.read().unwrap_or_else(|p| p.into_inner()).len())
            .field("tls_alpn01", &self.tls_alpn01.read().unwrap_or_else(|p| p.into_inner()).len())
            .finish()
    }
}

impl AcmeChallenges {
    /// The key authorization for an HTTP-01 `token`, while its order is in progress.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.read().unwrap_or_else(|p| p.into_inner()).get(token).cloned()
    }

    /// Answers HTTP-01 `token` with `key_authorization` until [`AcmeChallenges::remove_http01`].
    pub fn insert_http01(&self, token: &str, key_authorization: &str) {
        self.http01.write().unwrap_or_else(|p| p.into_inner()).insert(token.to_owned(), key_authorization.to_owned());
    }

    pub fn remove_http01(&self, token: &str) {
        self.http01.write().unwrap_or_else(|p| p.into_inner()).remove(token);
    }

    /// The TLS-ALPN-01 certificate for `domain`, while its order is in progress.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01.read().unwrap_or_else(|p| p.into_inner()).get(&domain.to_ascii_lowercase()).cloned()
    }
}

/// Removes the challenge answers an order published, however the order ends.
struct Published<'a> {
    challenges: &'a AcmeChallenges,
    tokens: Vec<String>,
    domains: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.challenges.remove_http01(token);
        }
        let mut tls = self.challenges.tls_alpn01.write().unwrap_or_else(|p| p.into_inner());
        for domain in &self.domains {
            tls.remove(domain);
        }
    }
}

/// How a server gets certificates for mapped domains.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory: String,
    /// A PEM root certificate to trust for the ACME server's HTTPS (a private ACME CA);
    /// `None`: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// The account's contact address.
    pub email: Option<String>,
    /// Where the account and certificates are kept.
    pub dir: PathBuf,
    /// The HTTPS ingress answers TLS-ALPN-01; when false, HTTP-01 is used.
    pub tls_alpn01: bool,
}

/// Whether a mapped domain has its certificate, as a mapping's `CertificateProvisioned`
/// condition shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    /// `Some(true)`: provisioned; `Some(false)`: failed or impossible; `None`: in progress.
    pub provisioned: Option<bool>,
    pub reason: &'static str,
    pub message: String,
}

/// What mapped domains get their certificates from: [`AcmeManager`], or nothing (a server
/// without HTTPS or without ACME), which says why.
pub trait DomainCertificates: Send + Sync + fmt::Debug {
    /// Starts getting (and keeping) a certificate for `domain`; calling it again is harmless.
    fn manage(&self, domain: &str);
    /// Stops presenting and renewing `domain`'s certificate, and forgets it.
    fn release(&self, domain: &str);
    fn status(&self, domain: &str) -> CertificateStatus;
}

/// Mapped domains get no certificate, for the reason given.
#[derive(Debug)]
pub struct NoCertificates {
    pub reason: &'static str,
    pub message: String,
}

impl DomainCertificates for NoCertificates {
    fn manage(&self, _domain: &str) {}
    fn release(&self, _domain: &str) {}
    fn status(&self, _domain: &str) -> CertificateStatus {
        CertificateStatus { provisioned: Some(false), reason: self.reason, message: self.message.clone() }
    }
}

#[derive(Debug, Clone)]
enum State {
    Pending { attempt: u32 },
    Failed { reason: String, attempts: u32, retry_at: SystemTime },
    Ready { not_after: SystemTime, renew_at: SystemTime, stored: bool },
}

#[derive(Debug)]
struct Managed {
    state: State,
    stop: CancellationToken,
}

/// Gets, stores and renews certificates for mapped domains (see the module docs).
pub struct AcmeManager {
    config: AcmeConfig,
    certificates: Arc<Certificates>,
    challenges: Arc<AcmeChallenges>,
    domains: Mutex<HashMap<String, Managed>>,
    account: tokio::sync::Mutex<Option<Account>>,
    shutdown: CancellationToken,
    /// This manager, for the tasks it spawns.
    this: Weak<AcmeManager>,
}

impl fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeManager").field("config", &self.config).finish()
    }
}

impl AcmeManager {
    /// A manager presenting its certificates through `certificates` and its challenge
    /// answers through `challenges`; its tasks end at `shutdown`.
    pub fn new(
        config: AcmeConfig,
        certificates: Arc<Certificates>,
        challenges: Arc<AcmeChallenges>,
        shutdown: CancellationToken,
    ) -> Arc<AcmeManager> {
        Arc::new_cyclic(|this| AcmeManager {
            config,
            certificates,
            challenges,
            domains: Mutex::default(),
            account: tokio::sync::Mutex::new(None),
            shutdown,
            this: this.clone(),
        })
    }

    fn set_state(&self, domain: &str, state: State) {
        if let Some(managed) = self.domains.lock().unwrap_or_else(|p| p.into_inner()).get_mut(domain) {
            managed.state = state;
        }
    }

    fn cert_dir(&self, domain: &str) -> PathBuf {
        self.config.dir.join("certs").join(domain)
    }

    /// Keeps `domain`'s certificate valid until `stop`: the stored one while it is good, else
    /// a new order, retried with back-off.
    async fn keep(self: Arc<Self>, domain: String, stop: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let wait = match self.stored(&domain) {
                Some((not_after, renew_at)) if SystemTime::now() < renew_at => {
                    self.set_state(&domain, State::Ready { not_after, renew_at, stored: true });
                    renew_at.duration_since(SystemTime::now()).unwrap_or_default()
                }
                _ => {
                    self.set_state(&domain, State::Pending { attempt: failures + 1 });
                    let span = tracing::info_span!("acme_order", %domain, attempt = failures + 1);
                    let ordered = tokio::select! {
                        ordered = tracing::Instrument::instrument(self.order(&domain), span) => ordered,
                        _ = stop.cancelled() => return,
                    };
                    match ordered {
                        Ok((not_after, renew_at)) => {
                            failures = 0;
                            tracing::info!(%domain, directory = %self.config.directory, "obtained a certificate");
                            self.set_state(&domain, State::Ready { not_after, renew_at, stored: false });
                            // At least a minute, whatever the certificate's lifetime: never a
                            // loop of orders.
                            renew_at.duration_since(SystemTime::now()).unwrap_or_default().max(MIN_RENEWAL_WAIT)
                        }
                        Err(error) => {
                            failures += 1;
                            let wait = retry_wait(failures, error.rate_limited());
                            let reason = crate::tls::chain(&error);
                            tracing::warn!(%domain, error = %reason, retry_in_s = wait.as_secs(), "ACME order failed");
                            let retry_at = SystemTime::now() + wait;
                            self.set_state(&domain, State::Failed { reason, attempts: failures, retry_at });
                            wait
                        }
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Loads the stored certificate for `domain` into the ingress if it covers the domain and
    /// is still valid; returns its expiry and renewal time.
    fn stored(&self, domain: &str) -> Option<(SystemTime, SystemTime)> {
        let dir = self.cert_dir(domain);
        let chain = std::fs::read_to_string(dir.join("chain.pem")).ok()?;
        let key = std::fs::read_to_string(dir.join("key.pem")).ok()?;
        let (not_before, not_after) = match validity(&chain, domain) {
            Ok(v) => v,
            Err(problem) => {
                tracing::warn!(%domain, %problem, "ignoring the stored certificate");
                return None;
            }
        };
        if SystemTime::now() >= not_after {
            return None;
        }
        if let Err(error) = self.certificates.set(domain, &chain, &key) {
            tracing::warn!(%domain, error = %crate::tls::chain(&error), "ignoring the stored certificate");
            return None;
        }
        Some((not_after, renew_time(not_before, not_after)))
    }

    /// The account, created (and stored) on first use, or restored from `account.json`.
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let path = self.config.dir.join("account.json");
        let builder = || match &self.config.ca_file {
            Some(ca) => Account::builder_with_root(ca).map_err(AcmeError::acme("trust the --acme-ca-file root")),
            None => Account::builder().map_err(AcmeError::acme("set up the ACME HTTP client")),
        };
        let stored: Option<StoredAccount> =
            std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let account = match stored {
            Some(stored) if stored.directory == self.config.directory => builder()?
                .from_credentials(stored.credentials)
                .await
                .map_err(AcmeError::acme("restore the ACME account"))?,
            _ => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) = builder()?
                    .create(&new, self.config.directory.clone(), None)
                    .await
                    .map_err(AcmeError::acme("create an ACME account"))?;
                let stored = StoredAccount { directory: self.config.directory.clone(), credentials };
                let bytes = serde_json::to_vec(&stored).map_err(|e| AcmeError::BadCertificate(e.to_string()))?;
                std::fs::create_dir_all(&self.config.dir).map_err(|source| AcmeError::Io {
                    op: "create directory",
                    path: self.config.dir.clone(),
                    source,
                })?;
                crate::tls::write_private(&path, &bytes)?;
                tracing::info!(directory = %self.config.directory, "created an ACME account");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `domain`, answers its challenge, and stores and presents it;
    /// returns its expiry and renewal time.
    async fn order(&self, domain: &str) -> Result<(SystemTime, SystemTime), AcmeError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let mut order =
            account.new_order(&NewOrder::new(&identifiers)).await.map_err(AcmeError::acme("create an order"))?;
        let mut published = Published { challenges: &self.challenges, tokens: Vec::new(), domains: Vec::new() };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(AcmeError::acme("read an authorization"))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Invalid {
                        domain: domain.to_owned(),
                        reason: format!("the authorization is {other:?}"),
                    });
                }
            }
            let (kind, name) = if self.config.tls_alpn01 {
                (ChallengeType::TlsAlpn01, "tls-alpn-01")
            } else {
                (ChallengeType::Http01, "http-01")
            };
            let mut challenge = authorization
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::NoChallenge { domain: domain.to_owned(), wanted: name })?;
            let key_authorization = challenge.key_authorization();
            if kind == ChallengeType::TlsAlpn01 {
                let certificate = alpn_challenge_certificate(domain, key_authorization.digest().as_ref())?;
                self.challenges
                    .tls_alpn01
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(domain.to_ascii_lowercase(), Arc::new(certificate));
                published.domains.push(domain.to_ascii_lowercase());
            } else {
                self.challenges.insert_http01(&challenge.token, key_authorization.as_str());
                published.tokens.push(challenge.token.clone());
            }
            challenge.set_ready().await.map_err(AcmeError::acme("answer the challenge"))?;
        }
        let polling = RetryPolicy::new().initial_delay(Duration::from_millis(250)).timeout(Duration::from_secs(90));
        let status = order.poll_ready(&polling).await.map_err(AcmeError::acme("wait for the validation"))?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Invalid { domain: domain.to_owned(), reason: challenge_error(&mut order).await });
        }
        drop(published);

        let key =
            rcgen::KeyPair::generate().map_err(|source| AcmeError::Generate { what: "certificate key", source })?;
        let csr = rcgen::CertificateParams::new(vec![domain.to_owned()])
            .and_then(|params| params.serialize_request(&key))
            .map_err(|source| AcmeError::Generate { what: "certificate request", source })?;
        order.finalize_csr(csr.der()).await.map_err(AcmeError::acme("finalize the order"))?;
        let chain = order.poll_certificate(&polling).await.map_err(AcmeError::acme("download the certificate"))?;
        let (not_before, not_after) = validity(&chain, domain).map_err(AcmeError::BadCertificate)?;
        let key_pem = key.serialize_pem();
        self.certificates.set(domain, &chain, &key_pem)?;

        let dir = self.cert_dir(domain);
        std::fs::create_dir_all(&dir).map_err(|source| AcmeError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        // The key first: a directory with a chain always has its key.
        crate::tls::write_private(&dir.join("key.pem"), key_pem.as_bytes())?;
        crate::tls::write_private(&dir.join("chain.pem"), chain.as_bytes())?;
        Ok((not_after, renew_time(not_before, not_after)))
    }
}

/// When a certificate is renewed: two thirds into its lifetime.
fn renew_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    not_before + not_after.duration_since(not_before).unwrap_or_default() * 2 / 3
}

/// Why an order became invalid: the first challenge error the server reports.
async fn challenge_error(order: &mut instant_acme::Order) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        for challenge in &authorization.challenges {
            if let Some(error) = &challenge.error {
                return error.to_string();
            }
        }
    }
    "the order became invalid without a reason".to_owned()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// A TLS-ALPN-01 challenge certificate (RFC 8737): self-signed for `domain`, with the
/// critical acmeIdentifier extension holding the key authorization's SHA-256.
fn alpn_challenge_certificate(domain: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let generate = |what| move |source| AcmeError::Generate { what, source };
    let key = rcgen::KeyPair::generate().map_err(generate("challenge key"))?;
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(generate("challenge certificate"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(generate("challenge certificate"))?;
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| AcmeError::BadCertificate(e.to_owned()))?;
    // Not `CertifiedKey::from_der`: its check that the key matches parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension that is the point here.
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| crate::tls::TlsError::Rustls { name: domain.to_owned(), source })?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// The leaf's validity, once it is known to name `domain`.
fn validity(chain_pem: &str, domain: &str) -> Result<(SystemTime, SystemTime), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| "no certificate in the chain".to_owned())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| format!("not X.509: {e}"))?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !names.iter().any(|n| n == &domain.to_ascii_lowercase()) {
        return Err(format!("it names {names:?}, not {domain}"));
    }
    let at = |seconds: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    Ok((at(cert.validity().not_before.timestamp()), at(cert.validity().not_after.timestamp())))
}

impl DomainCertificates for AcmeManager {
    fn manage(&self, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        if domains.contains_key(&domain) {
            return;
        }
        let stop = self.shutdown.child_token();
        domains.insert(domain.clone(), Managed { state: State::Pending { attempt: 1 }, stop: stop.clone() });
        drop(domains);
        // The manager lives as long as the server; tasks hold it through this handle.
        let Some(this) = self.self_arc() else { return };
        tokio::spawn(this.keep(domain, stop));
    }

    fn release(&self, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        if let Some(managed) = self.domains.lock().unwrap_or_else(|p| p.into_inner()).remove(&domain) {
            managed.stop.cancel();
        }
        self.certificates.remove(&domain);
        let dir = self.cert_dir(&domain);
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), %error, "cannot remove a released domain's certificate");
        }
    }

    fn status(&self, domain: &str) -> CertificateStatus {
        let state = self
            .domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&domain.to_ascii_lowercase())
            .map(|m| m.state.clone());
        let directory = &self.config.directory;
        match state {
            None | Some(State::Pending { attempt: 1 }) => CertificateStatus {
                provisioned: None,
                reason: "CertificatePending",
                message: format!("Requesting a certificate from {directory}."),
            },
            Some(State::Pending { attempt }) => CertificateStatus {
                provisioned: None,
                reason: "CertificatePending",
                message: format!("Requesting a certificate from {directory} (attempt {attempt})."),
            },
            Some(State::Failed { reason, attempts, retry_at }) => CertificateStatus {
                provisioned: Some(false),
                reason: "CertificateFailed",
                message: format!(
                    "Certificate request to {directory} failed ({attempts} attempt{}): {reason}. Retrying at {}.",
                    if attempts == 1 { "" } else { "s" },
                    rfc3339(retry_at)
                ),
            },
            Some(State::Ready { not_after, renew_at, stored }) => CertificateStatus {
                provisioned: Some(true),
                reason: if stored { "CertificateStored" } else { "CertificateIssued" },
                message: format!(
                    "Certificate from {directory}, valid until {}; renewed from {}.",
                    rfc3339(not_after),
                    rfc3339(renew_at)
                ),
            },
        }
    }
}

impl AcmeManager {
    fn self_arc(&self) -> Option<Arc<AcmeManager>> {
        self.this.upgrade()
    }
}

/// `2026-11-24T05:00:00Z`.
fn rfc3339(time: SystemTime) -> String {
    let timestamp = jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{:.0}", timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_orders_back_off_exponentially_and_longer_when_rate_limited() {
        let waits: Vec<u64> = (1..=4).map(|n| retry_wait(n, false).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240]);
        assert_eq!(retry_wait(40, false), MAX_BACKOFF);
        assert_eq!(retry_wait(1, true), RATE_LIMITED_BACKOFF);
        assert_eq!(retry_wait(40, true), MAX_BACKOFF);
    }

    #[test]
    fn certificates_renew_two_thirds_into_their_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(90 * 86_400);
        assert_eq!(renew_time(start, end), start + Duration::from_secs(60 * 86_400));
    }

    /// A stored chain is used only for the domain it names, with its validity read from it.
    #[test]
    fn a_stored_certificate_is_read_for_its_names_and_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["api.example.org".to_owned()]).unwrap();
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        params.not_before = not_before.into();
        params.not_after = (not_before + Duration::from_secs(7_776_000)).into();
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(validity(&pem, "API.example.org"), Ok((not_before, not_before + Duration::from_secs(7_776_000))));
        let other = validity(&pem, "www.example.org").unwrap_err();
        assert!(other.contains("not www.example.org"), "{other}");
        assert_eq!(validity("", "api.example.org").unwrap_err(), "no certificate in the chain");
    }

    /// The TLS-ALPN-01 certificate names the domain and carries the critical acmeIdentifier
    /// extension with the key authorization's digest (RFC 8737, 3).
    #[test]
    fn the_tls_alpn_challenge_certificate_carries_the_digest() {
        let digest = [7u8; 32];
        let certified = alpn_challenge_certificate("api.example.org", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&certified.cert[0]).unwrap();
        let extension = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(extension.critical);
        // An OCTET STRING (0x04) of 32 bytes holding the digest.
        assert_eq!(extension.value[..2], [0x04, 32]);
        assert_eq!(&extension.value[2..], &digest);
        let names = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(names.value.general_names, [x509_parser::extensions::GeneralName::DNSName("api.example.org")]);
    }
}
