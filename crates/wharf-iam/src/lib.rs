//! Identity and access: who is calling Wharf ([`Iam::authenticate`]) and what they may do
//! ([`Iam::authorize`]).
//!
//! Every API and registry request passes through [`Iam::authenticate`], the single place
//! where credentials are checked: the owner's token, which `wharf server` creates on first
//! start in `<data-dir>/owner.token` (mode 0600, root only), a user's token
//! ([`accounts`]), an access token Wharf minted ([`Iam::mint_access_token`]), or a JWT signed
//! with a service-account key ([`keys`]). The database keeps only SHA-256 hashes of tokens
//! and only the public halves of keys. A service account's credentials work only while it
//! exists and is enabled.
//! Authorization is IAM's model: predefined roles ([`roles`]) bound to members ([`member`]) in
//! per-resource policies inherited from the project ([`policy`]).

pub mod accounts;
pub mod keys;
pub mod member;
pub mod oidc;
pub mod policy;
pub mod roles;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use wharf_store::Store;
use wharf_store::rusqlite::{OptionalExtension, params};

/// The file, inside the data directory, holding the owner's token.
pub const OWNER_TOKEN_FILE: &str = "owner.token";

pub use member::{Member, Principal};
pub use oidc::{IdClaims, IdTokenError, Issuer};
pub use policy::{AuthorizeError, Denied, Policies, Policy, Resource};

/// An access token minted for a principal, and when it stops being accepted.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_at: i64,
}

/// Why a request was not authenticated. Both variants are 401s; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "request has no credentials: send 'Authorization: Bearer <token>' (the owner token is in <data-dir>/owner.token, or set WHARF_TOKEN)"
    )]
    Missing,
    #[error("request credentials are not valid: {0}")]
    Invalid(&'static str),
    #[error("request credentials have expired: get a new token")]
    Expired,
    #[error("the signed JWT is not valid: {0}")]
    InvalidJwt(String),
    #[error("service account {0} is disabled or deleted: its credentials are not accepted")]
    AccountDisabled(String),
    #[error("credential check failed")]
    Store(#[from] wharf_store::StoreError),
    #[error("the system random source failed")]
    Random,
}

/// Failure to set up credentials at start-up.
#[derive(Debug, thiserror::Error)]
pub enum IamError {
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] wharf_store::StoreError),
}

#[derive(Debug, Clone)]
pub struct Iam {
    db: Store,
    pub policies: Policies,
    /// Signs and verifies Wharf's ID tokens (see [`oidc`]).
    pub issuer: Issuer,
    /// Tokens recently found in the database: hash -> who and until when, and when it was
    /// looked up. Keeps the per-request check of the ingress off SQLite.
    known_tokens: Arc<RwLock<HashMap<String, KnownToken>>>,
    /// Whether a service account was usable (exists, enabled) when last looked up, and when:
    /// keeps the per-request check of an ID token's account at the ingress off SQLite.
    known_accounts: Arc<RwLock<HashMap<String, (bool, Instant)>>>,
}

#[derive(Debug, Clone)]
struct KnownToken {
    principal: Principal,
    expires_at: Option<i64>,
    looked_up: Instant,
}

/// How long a token found in the database is trusted from memory before it is looked up again.
const KNOWN_TOKEN_TTL: Duration = Duration::from_secs(30);
const KNOWN_TOKEN_LIMIT: usize = 10_000;

/// Why an invocation's credentials were not accepted (a 401 at the ingress).
#[derive(Debug, thiserror::Error)]
pub enum InvokerAuthError {
    #[error(transparent)]
    IdToken(#[from] IdTokenError),
    #[error(transparent)]
    Token(#[from] AuthError),
}

impl Iam {
    /// Opens IAM, creating the owner credential in `data_dir` if it does not exist yet.
    /// An existing `owner.token` file is authoritative: its hash is (re)recorded.
    pub fn open(db: Store, data_dir: &Path) -> Result<Iam, IamError> {
        let path = data_dir.join(OWNER_TOKEN_FILE);
        let io = |op, source| IamError::Io { op, path: path.clone(), source };
        let token = match fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
            Ok(_) => write_new_token(&path).map_err(|e| io("write", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new_token(&path).map_err(|e| io("write", e))?,
            Err(e) => return Err(io("read", e)),
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| io("chmod", e))?;
        let hash = token_hash(&token);
        db.write(|tx| {
            tx.execute(
                "INSERT INTO principals (name, token_sha256, role, created_at) VALUES ('owner', ?1, 'owner', ?2)
                 ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256",
                params![hash, wharf_store::unix_now()],
            )
            .map_err(wharf_store::StoreError::Query)
        })?;
        Ok(Iam {
            policies: Policies::new(db.clone()),
            issuer: Issuer::new(db.clone()),
            db,
            known_tokens: Arc::default(),
            known_accounts: Arc::default(),
        })
    }

    /// Authenticates the caller of a service: `bearer` is the token of an `Authorization` or
    /// `X-Serverless-Authorization: Bearer` header. A JWT must be a Wharf ID token whose
    /// audience `audience_ok` accepts (the service's URLs); anything else must be a token
    /// [`Iam::authenticate`] accepts (the owner's, or a minted access token). An ID token of
    /// a service account that was disabled or deleted since it was signed is refused, like
    /// every other credential of that account.
    pub fn authenticate_invoker(
        &self,
        bearer: &str,
        audience_ok: impl Fn(&str) -> bool,
    ) -> Result<Principal, InvokerAuthError> {
        if bearer.starts_with("eyJ") && bearer.matches('.').count() == 2 {
            let principal = self.issuer.verify(bearer, audience_ok)?.principal();
            if !self.account_usable_remembered(&principal).map_err(AuthError::Store)? {
                return Err(AuthError::AccountDisabled(oidc::email_of(&principal)).into());
            }
            return Ok(principal);
        }
        Ok(self.authenticate_token(bearer)?)
    }

    /// [`Iam::account_usable`], from memory when looked up in the last [`KNOWN_TOKEN_TTL`]
    /// (every change to accounts forgets what is remembered, see [`Iam::forget_known_tokens`]).
    fn account_usable_remembered(&self, principal: &Principal) -> Result<bool, wharf_store::StoreError> {
        let Principal::ServiceAccount(email) = principal else { return Ok(true) };
        let known = self.known_accounts.read().unwrap_or_else(|e| e.into_inner()).get(email).copied();
        if let Some((usable, _)) = known.filter(|(_, at)| at.elapsed() < KNOWN_TOKEN_TTL) {
            return Ok(usable);
        }
        let usable = self.account_usable(principal)?;
        let mut known = self.known_accounts.write().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_TOKEN_LIMIT {
            known.clear();
        }
        known.insert(email.clone(), (usable, Instant::now()));
        Ok(usable)
    }

    /// Checks an `Authorization` header value: `Bearer <token>`, or `Basic` with the token as
    /// the password (any user name), which is what `docker login` and `skopeo --creds` send.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let header = authorization.map(str::trim).filter(|h| !h.is_empty()).ok_or(AuthError::Missing)?;
        let (scheme, value) = header.split_once(' ').ok_or(AuthError::Invalid("malformed Authorization header"))?;
        let token = if scheme.eq_ignore_ascii_case("bearer") {
            value.trim().to_owned()
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| AuthError::Invalid("Basic credentials are not base64"))?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| AuthError::Invalid("Basic credentials are not UTF-8"))?;
            let (_, password) =
                decoded.split_once(':').ok_or(AuthError::Invalid("Basic credentials must be user:token"))?;
            password.to_owned()
        } else {
            return Err(AuthError::Invalid("unsupported scheme; use Bearer or Basic"));
        };
        if keys::looks_like_jwt(&token) {
            return self.verify_signed_jwt(&token, None);
        }
        self.authenticate_token(&token)
    }

    /// Checks a bearer token (the owner's or a minted access token), from memory when it was
    /// looked up in the last [`KNOWN_TOKEN_TTL`].
    fn authenticate_token(&self, token: &str) -> Result<Principal, AuthError> {
        let hash = token_hash(token);
        let now = wharf_store::unix_now();
        let known = self.known_tokens.read().unwrap_or_else(|e| e.into_inner()).get(&hash).cloned();
        if let Some(known) = known.filter(|k| k.looked_up.elapsed() < KNOWN_TOKEN_TTL) {
            if known.expires_at.is_some_and(|at| at <= now) {
                return Err(AuthError::Expired);
            }
            return Ok(known.principal);
        }
        let found = self.db.read(|c| {
            let principal: Option<(String, Option<i64>)> = c
                .query_row("SELECT name, NULL FROM principals WHERE token_sha256 = ?1", [&hash], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            match principal {
                Some(found) => Ok(Some(found)),
                None => c
                    .query_row(
                        "SELECT principal, expires_at FROM access_tokens WHERE token_sha256 = ?1",
                        [&hash],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional(),
            }
        })?;
        let (name, expires_at) = found.ok_or(AuthError::Invalid("unknown token"))?;
        if expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired);
        }
        let principal = Principal::from_name(&name).ok_or(AuthError::Invalid("token names an unknown principal"))?;
        if !self.account_usable(&principal)? {
            return Err(AuthError::AccountDisabled(name));
        }
        let mut known = self.known_tokens.write().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_TOKEN_LIMIT {
            known.clear();
        }
        known.insert(hash, KnownToken { principal: principal.clone(), expires_at, looked_up: Instant::now() });
        Ok(principal)
    }

    /// Drops every remembered token lookup, so that a deleted or disabled principal's tokens
    /// stop working on the very next request (called by every change to principals).
    pub(crate) fn forget_known_tokens(&self) {
        self.known_tokens.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.known_accounts.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether `caller` (None: no credentials) holds `permission` on `resource`.
    pub fn authorize(
        &self,
        caller: Option<&Principal>,
        permission: &'static str,
        resource: &Resource,
    ) -> Result<(), AuthorizeError> {
        self.policies.authorize(caller, permission, resource)
    }

    /// Mints an opaque bearer token that authenticates as `principal` for `lifetime_secs`
    /// (what the token endpoint and the metadata server hand out). Only its hash is stored;
    /// expired tokens are swept as new ones are minted.
    pub fn mint_access_token(&self, principal: &Principal, lifetime_secs: i64) -> Result<AccessToken, AuthError> {
        let token = format!("ya29.wharf_{}", hex::encode(random_bytes::<32>().map_err(|_| AuthError::Random)?));
        let now = wharf_store::unix_now();
        let expires_at = now + lifetime_secs;
        self.db.write(|tx| {
            tx.execute("DELETE FROM access_tokens WHERE expires_at <= ?1", [now])
                .and_then(|_| {
                    tx.execute(
                        "INSERT INTO access_tokens (token_sha256, principal, expires_at) VALUES (?1, ?2, ?3)",
                        params![token_hash(&token), principal.name(), expires_at],
                    )
                })
                .map_err(wharf_store::StoreError::Query)
        })?;
        Ok(AccessToken { token, expires_at })
    }
}

/// A project's numeric id (`project/numeric-project-id` on the metadata server, the number in
/// the default service account's email): twelve digits derived from the project id, stable
/// across restarts and machines.
pub fn project_number(project: &str) -> u64 {
    let digest = Sha256::digest(project.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    100_000_000_000 + u64::from_be_bytes(first) % 900_000_000_000
}

/// The service account a revision or job runs as when it names none, as on Cloud Run (the
/// project's default compute account).
pub fn default_service_account(project: &str) -> String {
    format!("{}-compute@developer.gserviceaccount.com", project_number(project))
}

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut random = [0u8; N];
    fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(random)
}

/// Mints a random token and writes it to `path` (mode 0600, written under a temporary name
/// and renamed so no reader sees a partial token).
fn write_new_token(path: &Path) -> std::io::Result<String> {
    let random = random_bytes::<24>()?;
    let token = format!("wharf_{}", hex::encode(random));
    let staged = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&staged)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&staged, path)?;
    Ok(token)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn setup() -> (tempfile::TempDir, Iam, String) {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let iam = Iam::open(db, dir.path()).unwrap();
        let token = fs::read_to_string(dir.path().join(OWNER_TOKEN_FILE)).unwrap().trim().to_owned();
        (dir, iam, token)
    }

    #[test]
    fn owner_token_is_private_and_stable() {
        let (dir, _, token) = setup();
        let mode = fs::metadata(dir.path().join(OWNER_TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let iam = Iam::open(db, dir.path()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join(OWNER_TOKEN_FILE)).unwrap().trim(), token);
        assert_eq!(iam.authenticate(Some(&format!("Bearer {token}"))).unwrap(), Principal::Owner);
    }

    #[test]
    fn accepts_bearer_and_basic() {
        let (_dir, iam, token) = setup();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{token}"));
        assert_eq!(iam.authenticate(Some(&format!("Basic {basic}"))).unwrap(), Principal::Owner);
        assert_eq!(iam.authenticate(Some(&format!("bearer {token}"))).unwrap(), Principal::Owner);
    }

    #[test]
    fn the_default_service_account_is_stable_and_shaped_like_googles() {
        let email = default_service_account("my-project");
        assert_eq!(email, default_service_account("my-project"));
        assert_ne!(email, default_service_account("other"));
        let (number, domain) = email.split_once("-compute@").unwrap();
        assert_eq!((number.len(), domain), (12, "developer.gserviceaccount.com"));
        Member::parse(&format!("serviceAccount:{email}")).unwrap();
    }

    #[test]
    fn minted_access_tokens_authenticate_until_they_expire() {
        let (_dir, iam, _) = setup();
        let sa = Principal::ServiceAccount(iam.create_service_account("p", "api-sa", "", "").unwrap().email);
        let live = iam.mint_access_token(&sa, 3600).unwrap();
        assert_eq!(iam.authenticate(Some(&format!("Bearer {}", live.token))).unwrap(), sa);
        let dead = iam.mint_access_token(&sa, 0).unwrap();
        assert!(matches!(iam.authenticate(Some(&format!("Bearer {}", dead.token))), Err(AuthError::Expired)));
    }

    #[test]
    fn a_disabled_or_deleted_accounts_id_token_no_longer_invokes() {
        let (_dir, iam, _) = setup();
        iam.issuer.set_url("http://127.0.0.1:8000");
        let email = iam.create_service_account("p", "caller", "", "").unwrap().email;
        let sa = Principal::ServiceAccount(email.clone());
        let (token, _) = iam.issuer.sign_id_token(&sa, "http://api.example").unwrap();
        let any = |_: &str| true;
        assert_eq!(iam.authenticate_invoker(&token, any).unwrap(), sa);
        iam.set_service_account_disabled("p", &email, true).unwrap();
        let refused = iam.authenticate_invoker(&token, any).unwrap_err();
        assert!(matches!(&refused, InvokerAuthError::Token(AuthError::AccountDisabled(_))), "{refused}");
        assert_eq!(
            refused.to_string(),
            format!("service account {email} is disabled or deleted: its credentials are not accepted")
        );
        iam.set_service_account_disabled("p", &email, false).unwrap();
        assert_eq!(iam.authenticate_invoker(&token, any).unwrap(), sa);
        iam.delete_service_account("p", &email).unwrap();
        assert!(matches!(
            iam.authenticate_invoker(&token, any),
            Err(InvokerAuthError::Token(AuthError::AccountDisabled(_)))
        ));
        // The default account always exists; the owner's tokens are not an account's.
        let default = Principal::ServiceAccount(default_service_account("p"));
        let (token, _) = iam.issuer.sign_id_token(&default, "http://api.example").unwrap();
        assert_eq!(iam.authenticate_invoker(&token, any).unwrap(), default);
    }

    #[test]
    fn rejects_missing_and_wrong_credentials() {
        let (_dir, iam, _) = setup();
        assert!(matches!(iam.authenticate(None), Err(AuthError::Missing)));
        assert!(matches!(iam.authenticate(Some("Bearer wharf_nope")), Err(AuthError::Invalid("unknown token"))));
        assert!(matches!(iam.authenticate(Some("Digest x")), Err(AuthError::Invalid(_))));
        assert!(matches!(iam.authenticate(Some("Basic !!!")), Err(AuthError::Invalid(_))));
    }
}
