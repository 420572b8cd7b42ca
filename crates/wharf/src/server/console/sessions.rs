//! Console sessions: what a signed-in browser holds instead of a credential.
//!
//! Signing in trades a Wharf credential (the owner token, a user's token) for a random
//! 256-bit session id in an `HttpOnly; SameSite=Strict` cookie. The server keeps, in its state
//! database so that sessions outlive a restart, only the SHA-256 of that id with the principal,
//! the credential sealed (AES-256-GCM) under a second key derived from the id, a per-session
//! CSRF secret and the session's times; the database alone therefore opens no session and
//! reveals no credential. The API re-authenticates the credential on every request, so a
//! deleted user or a revoked token stops working in the console at once.
//!
//! The API accepts the cookie as authentication only under [`Sessions::authenticate_cookie`]'s
//! rules: a state-changing request must carry the session's CSRF secret in `X-CSRF-Token` and
//! must not come from another site (`Sec-Fetch-Site`, `Origin`), else 403. This module knows
//! nothing of HTTP routing; `console/mod.rs` serves the sign-in endpoints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use axum::http::{HeaderMap, Method, header};
use sha2::{Digest as _, Sha256};
use wharf_store::rusqlite::{OptionalExtension as _, params};
use wharf_store::{Store, StoreError};
use zeroize::Zeroizing;

/// The cookie that carries the session id.
pub const COOKIE_NAME: &str = "wharf_session";
/// The header a state-changing request authenticated by the cookie must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after its last use.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// A session ends this long after sign-in, however busy.
pub const MAX_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// At most this many sessions at once; the least recently used are dropped first when more
/// sign in.
const MAX_SESSIONS: i64 = 10_000;
/// A session's last use is written at most this often (reads would otherwise all write).
const TOUCH_EVERY: Duration = Duration::from_secs(60);
const NONCE_BYTES: usize = 12;

/// Why a cookie could not authenticate a request.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    /// No session has this id (never existed, signed out, or expired).
    #[error("the console session has expired or was signed out; sign in again at /console")]
    UnknownSession,
    /// A state-changing request without the session's CSRF secret.
    #[error(
        "a request authenticated by the console's session cookie must send the session's CSRF token in the X-CSRF-Token header (GET /console/session returns it); API clients send Authorization: Bearer instead"
    )]
    MissingCsrfToken,
    #[error("the X-CSRF-Token header does not match this console session's; reload the console")]
    WrongCsrfToken,
    /// The browser says the request came from another site.
    #[error("cross-site request refused: {0}")]
    CrossSite(String),
    /// The session table could not be read or written.
    #[error("cannot read or write the console's sessions")]
    Store(#[source] StoreError),
}

impl PartialEq for CookieError {
    fn eq(&self, other: &CookieError) -> bool {
        match (self, other) {
            (CookieError::CrossSite(a), CookieError::CrossSite(b)) => a == b,
            (CookieError::Store(_), _) | (_, CookieError::Store(_)) => false,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl CookieError {
    /// A refusal (403) rather than a missing or stale credential (401).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, CookieError::UnknownSession | CookieError::Store(_))
    }

    /// The server's own failure (500), not the client's.
    pub fn is_internal(&self) -> bool {
        matches!(self, CookieError::Store(_))
    }
}

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NewSessionError {
    #[error("cannot draw a random session id")]
    Random(#[source] getrandom::Error),
    #[error("cannot seal the session's credential")]
    Seal,
    #[error("cannot store the session")]
    Store(#[source] StoreError),
}

/// A session just created: the cookie value and the CSRF secret to hand to the browser.
#[derive(Debug)]
pub struct NewSession {
    pub id: String,
    pub csrf_token: String,
}

/// What the console learns about its own session.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub principal: String,
    pub csrf_token: String,
    /// Seconds until the session ends if left idle.
    pub expires_in_seconds: u64,
}

/// One stored session, its credential still sealed.
struct Row {
    principal: String,
    sealed_credential: Vec<u8>,
    csrf_token: String,
    created_at: i64,
    last_used_at: i64,
}

fn expired(created_at: i64, last_used_at: i64, now: i64) -> bool {
    now - last_used_at >= secs(IDLE_TIMEOUT) || now - created_at >= secs(MAX_LIFETIME)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The server's console sessions, in the state database. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Store,
}

/// Where a session is found: SHA-256 of its id.
fn id_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The key a session's credential is sealed under: derived from the id, apart from its
/// lookup hash, so only the cookie's holder can unseal it.
fn credential_key(id: &str) -> Zeroizing<[u8; 32]> {
    let mut hasher = Sha256::new();
    hasher.update(b"wharf console session credential key\0");
    hasher.update(id.as_bytes());
    Zeroizing::new(hasher.finalize().into())
}

fn seal(id: &str, credential: &str) -> Result<Vec<u8>, NewSessionError> {
    let key = credential_key(id);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_slice()));
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(NewSessionError::Random)?;
    let sealed = cipher.encrypt(Nonce::from_slice(&nonce), credential.as_bytes()).map_err(|_| NewSessionError::Seal)?;
    Ok([nonce.as_slice(), &sealed].concat())
}

/// The credential, or `None` when the sealed bytes were not sealed under this id's key.
fn unseal(id: &str, sealed: &[u8]) -> Option<Zeroizing<String>> {
    if sealed.len() < NONCE_BYTES {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    let key = credential_key(id);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_slice()));
    let plain = Zeroizing::new(cipher.decrypt(Nonce::from_slice(nonce), ciphertext).ok()?);
    String::from_utf8(plain.to_vec()).ok().map(Zeroizing::new)
}

fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Equal strings, compared in time independent of where they first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// Sessions kept in `store` (its `console_sessions` table).
    pub fn open(store: Store) -> Sessions {
        Sessions { store }
    }

    /// Starts a session for an already authenticated `credential` of `principal`; drops
    /// expired sessions, and the least recently used ones past the cap.
    pub fn create(&self, credential: &str, principal: String) -> Result<NewSession, NewSessionError> {
        let id = random_hex().map_err(NewSessionError::Random)?;
        let csrf_token = random_hex().map_err(NewSessionError::Random)?;
        let sealed = seal(&id, credential)?;
        let now = unix_now();
        self.store
            .write(|tx| {
                tx.execute(
                    "DELETE FROM console_sessions WHERE last_used_at <= ?1 OR created_at <= ?2",
                    params![now - secs(IDLE_TIMEOUT), now - secs(MAX_LIFETIME)],
                )?;
                tx.execute(
                    "DELETE FROM console_sessions WHERE id_hash IN (SELECT id_hash FROM console_sessions
                         ORDER BY last_used_at DESC LIMIT -1 OFFSET ?1)",
                    params![MAX_SESSIONS - 1],
                )?;
                tx.execute(
                    "INSERT INTO console_sessions (id_hash, principal, sealed_credential, csrf_token, created_at, last_used_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![id_hash(&id).as_slice(), principal, sealed, csrf_token, now],
                )?;
                Ok::<_, StoreError>(())
            })
            .map_err(NewSessionError::Store)?;
        Ok(NewSession { id, csrf_token })
    }

    /// The live session `id` names, its credential unsealed, after marking it used.
    /// Expired sessions are deleted when met.
    fn live(&self, id: &str) -> Result<Option<(Row, Zeroizing<String>)>, StoreError> {
        let hash = id_hash(id);
        let row = self.store.read(|c| {
            c.query_row(
                "SELECT principal, sealed_credential, csrf_token, created_at, last_used_at
                 FROM console_sessions WHERE id_hash = ?1",
                [hash.as_slice()],
                |r| {
                    Ok(Row {
                        principal: r.get(0)?,
                        sealed_credential: r.get(1)?,
                        csrf_token: r.get(2)?,
                        created_at: r.get(3)?,
                        last_used_at: r.get(4)?,
                    })
                },
            )
            .optional()
        })?;
        let Some(row) = row else { return Ok(None) };
        let now = unix_now();
        let credential = unseal(id, &row.sealed_credential);
        if expired(row.created_at, row.last_used_at, now) || credential.is_none() {
            self.store.write(|tx| {
                Ok::<_, StoreError>(tx.execute("DELETE FROM console_sessions WHERE id_hash = ?1", [hash.as_slice()])?)
            })?;
            return Ok(None);
        }
        if now - row.last_used_at >= secs(TOUCH_EVERY) {
            self.store.write(|tx| {
                Ok::<_, StoreError>(tx.execute(
                    "UPDATE console_sessions SET last_used_at = ?1 WHERE id_hash = ?2",
                    params![now, hash.as_slice()],
                )?)
            })?;
        }
        Ok(credential.map(|credential| (row, credential)))
    }

    /// The session `id` names, if it is live (and marks it used).
    pub fn view(&self, id: &str) -> Result<Option<SessionView>, StoreError> {
        Ok(self.live(id)?.map(|(row, _)| SessionView {
            principal: row.principal,
            csrf_token: row.csrf_token,
            expires_in_seconds: IDLE_TIMEOUT.as_secs(),
        }))
    }

    /// Ends the session `id` (sign-out). True if it existed.
    pub fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self.store.write(|tx| {
            Ok::<_, StoreError>(
                tx.execute("DELETE FROM console_sessions WHERE id_hash = ?1", [id_hash(id).as_slice()])?,
            )
        })?;
        Ok(removed > 0)
    }

    /// The credential a request's session cookie stands for, or `Ok(None)` when the request
    /// has no session cookie. A state-changing request (anything but GET, HEAD, OPTIONS) must
    /// carry the session's CSRF secret and must not say it comes from another site.
    pub fn authenticate_cookie(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Option<Zeroizing<String>>, CookieError> {
        let Some(id) = session_cookie(headers) else { return Ok(None) };
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            check_same_origin(headers)?;
        }
        let (row, credential) = self.live(id).map_err(CookieError::Store)?.ok_or(CookieError::UnknownSession)?;
        if !safe {
            let sent = headers.get(CSRF_HEADER).ok_or(CookieError::MissingCsrfToken)?;
            if !constant_time_eq(sent.as_bytes(), row.csrf_token.as_bytes()) {
                return Err(CookieError::WrongCsrfToken);
            }
        }
        Ok(Some(credential))
    }
}

/// The value of the `wharf_session` cookie, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Defence in depth behind the CSRF token: a browser that says the request comes from
/// another site (`Sec-Fetch-Site: cross-site|same-site`), or an `Origin` that is not this
/// server's own (`Host`), is refused. Requests without these headers (old browsers, tools)
/// still need the CSRF token.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), CookieError> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(CookieError::CrossSite(format!("Sec-Fetch-Site is {site:?}, not same-origin")));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || origin_host != Some(host) {
            return Err(CookieError::CrossSite(format!("Origin {origin:?} is not this server ({host:?})")));
        }
    }
    Ok(())
}

/// The `Set-Cookie` value that stores session `id` in the browser: `HttpOnly`,
/// `SameSite=Strict`, `Path=/`, and `Secure` when the console was reached over HTTPS.
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", MAX_LIFETIME.as_secs())
}

/// The `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn sessions() -> (tempfile::TempDir, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, Sessions::open(store))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_cookie_reads_without_a_csrf_token_but_changes_only_with_it() {
        let (_dir, sessions) = sessions();
        let new = sessions.create("wharf_secret", "user:a@example.com".into()).unwrap();
        let cookie = format!("other=1; {COOKIE_NAME}={}", new.id);
        let read = sessions.authenticate_cookie(&Method::GET, &headers(&[("cookie", &cookie)])).unwrap();
        assert_eq!(read.as_deref().map(String::as_str), Some("wharf_secret"));

        let post = |extra: &[(&'static str, &str)]| {
            let mut all = vec![("cookie", cookie.as_str()), ("host", "127.0.0.1:8080")];
            all.extend_from_slice(extra);
            sessions.authenticate_cookie(&Method::POST, &headers(&all)).map(|c| c.map(|c| c.to_string()))
        };
        assert_eq!(post(&[]), Err(CookieError::MissingCsrfToken));
        assert_eq!(post(&[("x-csrf-token", "nope")]), Err(CookieError::WrongCsrfToken));
        assert_eq!(post(&[("x-csrf-token", &new.csrf_token)]), Ok(Some("wharf_secret".into())));
        let cross = post(&[("x-csrf-token", &new.csrf_token), ("sec-fetch-site", "cross-site")]);
        assert!(matches!(cross, Err(CookieError::CrossSite(_))), "{cross:?}");
        let foreign = post(&[("x-csrf-token", &new.csrf_token), ("origin", "http://evil.example")]);
        assert!(matches!(foreign, Err(CookieError::CrossSite(_))), "{foreign:?}");
        assert_eq!(
            post(&[("x-csrf-token", &new.csrf_token), ("origin", "http://127.0.0.1:8080")]),
            Ok(Some("wharf_secret".into()))
        );

        assert!(sessions.remove(&new.id).unwrap());
        assert_eq!(
            sessions.authenticate_cookie(&Method::GET, &headers(&[("cookie", &cookie)])),
            Err(CookieError::UnknownSession)
        );
        assert_eq!(sessions.authenticate_cookie(&Method::GET, &HeaderMap::new()), Ok(None));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_on_https() {
        let plain = set_cookie("abc", false);
        assert!(plain.starts_with("wharf_session=abc; HttpOnly; SameSite=Strict; Path=/"), "{plain}");
        assert!(!plain.contains("Secure"), "{plain}");
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn sessions_are_random_and_distinct() {
        let (_dir, sessions) = sessions();
        let a = sessions.create("t", "owner".into()).unwrap();
        let b = sessions.create("t", "owner".into()).unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf_token, b.csrf_token);
        assert_eq!(a.id.len(), 64);
        assert_eq!(sessions.view(&a.id).unwrap().unwrap().csrf_token, a.csrf_token);
        assert!(sessions.view("not-a-session").unwrap().is_none());
    }

    #[test]
    fn the_database_holds_neither_the_id_nor_the_credential_and_sessions_outlive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let new = Sessions::open(Store::open(&path).unwrap()).create("wharf_owner_secret", "owner".into()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let wal = std::fs::read(dir.path().join("state.db-wal")).unwrap_or_default();
        for haystack in [&bytes, &wal] {
            let contains = |needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
            assert!(!contains(b"wharf_owner_secret"), "the credential is stored sealed");
            assert!(!contains(new.id.as_bytes()), "the session id is not stored");
        }
        // Another process (a restarted server) finds the session by the cookie alone.
        let reopened = Sessions::open(Store::open(&path).unwrap());
        let cookie = format!("{COOKIE_NAME}={}", new.id);
        let credential = reopened.authenticate_cookie(&Method::GET, &headers(&[("cookie", &cookie)])).unwrap();
        assert_eq!(credential.as_deref().map(String::as_str), Some("wharf_owner_secret"));
        // A row whose credential was sealed under another id opens nothing.
        let other = reopened.create("t", "owner".into()).unwrap();
        reopened
            .store
            .write(|tx| {
                Ok::<_, StoreError>(tx.execute(
                    "UPDATE console_sessions SET sealed_credential = (SELECT sealed_credential FROM console_sessions WHERE id_hash = ?1) WHERE id_hash = ?2",
                    params![id_hash(&new.id).as_slice(), id_hash(&other.id).as_slice()],
                )?)
            })
            .unwrap();
        assert!(reopened.view(&other.id).unwrap().is_none());
    }

    #[test]
    fn idle_and_old_sessions_expire() {
        assert!(!expired(0, 0, secs(IDLE_TIMEOUT) - 1));
        assert!(expired(0, 0, secs(IDLE_TIMEOUT)));
        assert!(!expired(0, secs(MAX_LIFETIME) - 10, secs(MAX_LIFETIME) - 1));
        assert!(expired(0, secs(MAX_LIFETIME) - 10, secs(MAX_LIFETIME)));
        let (_dir, sessions) = sessions();
        let new = sessions.create("t", "owner".into()).unwrap();
        sessions
            .store
            .write(|tx| {
                Ok::<_, StoreError>(
                    tx.execute("UPDATE console_sessions SET last_used_at = last_used_at - ?1", [secs(IDLE_TIMEOUT)])?,
                )
            })
            .unwrap();
        assert!(sessions.view(&new.id).unwrap().is_none());
        let left: i64 =
            sessions.store.read(|c| c.query_row("SELECT count(*) FROM console_sessions", [], |r| r.get(0))).unwrap();
        assert_eq!(left, 0, "an expired session is deleted when met");
    }
}
