//! Console sessions: what a signed-in browser holds instead of a credential.
//!
//! Signing in trades a Wharf credential (the owner token, a user's token) for a random
//! session id in an `HttpOnly; SameSite=Strict` cookie. The server keeps, in memory only, the
//! SHA-256 of that id with the credential it stands for, a per-session CSRF secret and its
//! expiry; the API re-authenticates the credential on every request, so a deleted user or a
//! revoked token stops working in the console at once. A server restart signs everyone out.
//!
//! The API accepts the cookie as authentication only under [`Sessions::authenticate_cookie`]'s
//! rules: a state-changing request must carry the session's CSRF secret in `X-CSRF-Token` and
//! must not come from another site (`Sec-Fetch-Site`, `Origin`), else 403. This module knows
//! nothing of HTTP routing; `console/mod.rs` serves the sign-in endpoints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, header};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The cookie that carries the session id.
pub const COOKIE_NAME: &str = "wharf_session";
/// The header a state-changing request authenticated by the cookie must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after its last use.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// A session ends this long after sign-in, however busy.
pub const MAX_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// At most this many sessions at once; the oldest are dropped first when more sign in.
const MAX_SESSIONS: usize = 10_000;

/// Why a cookie could not authenticate a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CookieError {
    /// No session has this id (never existed, signed out, expired, or the server restarted).
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
}

impl CookieError {
    /// A refusal (403) rather than a missing or stale credential (401).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, CookieError::UnknownSession)
    }
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

struct Session {
    credential: Zeroizing<String>,
    principal: String,
    csrf_token: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.last_used) >= IDLE_TIMEOUT || now.duration_since(self.created) >= MAX_LIFETIME
    }
}

/// The server's console sessions, in memory. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Sessions {
    by_id_hash: Arc<Mutex<HashMap<[u8; 32], Session>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("count", &self.lock().len()).finish()
    }
}

fn id_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.by_id_hash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session for an already authenticated `credential` of `principal`.
    pub fn create(&self, credential: &str, principal: String) -> Result<NewSession, getrandom::Error> {
        let id = random_hex()?;
        let csrf_token = random_hex()?;
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| !s.expired(now));
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k) else { break };
            sessions.remove(&oldest);
        }
        sessions.insert(
            id_hash(&id),
            Session {
                credential: Zeroizing::new(credential.to_owned()),
                principal,
                csrf_token: csrf_token.clone(),
                created: now,
                last_used: now,
            },
        );
        Ok(NewSession { id, csrf_token })
    }

    /// The session `id` names, if it is live (and marks it used).
    pub fn view(&self, id: &str) -> Option<SessionView> {
        let now = Instant::now();
        let mut sessions = self.lock();
        let hash = id_hash(id);
        let session = sessions.get_mut(&hash)?;
        if session.expired(now) {
            sessions.remove(&hash);
            return None;
        }
        session.last_used = now;
        Some(SessionView {
            principal: session.principal.clone(),
            csrf_token: session.csrf_token.clone(),
            expires_in_seconds: IDLE_TIMEOUT.as_secs(),
        })
    }

    /// Ends the session `id` (sign-out). True if it existed.
    pub fn remove(&self, id: &str) -> bool {
        self.lock().remove(&id_hash(id)).is_some()
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
        let now = Instant::now();
        let mut sessions = self.lock();
        let hash = id_hash(id);
        let session = sessions.get_mut(&hash).ok_or(CookieError::UnknownSession)?;
        if session.expired(now) {
            sessions.remove(&hash);
            return Err(CookieError::UnknownSession);
        }
        if !safe {
            let sent = headers.get(CSRF_HEADER).ok_or(CookieError::MissingCsrfToken)?;
            if !constant_time_eq(sent.as_bytes(), session.csrf_token.as_bytes()) {
                return Err(CookieError::WrongCsrfToken);
            }
        }
        session.last_used = now;
        Ok(Some(session.credential.clone()))
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

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_cookie_reads_without_a_csrf_token_but_changes_only_with_it() {
        let sessions = Sessions::default();
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

        assert!(sessions.remove(&new.id));
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
        let sessions = Sessions::default();
        let a = sessions.create("t", "owner".into()).unwrap();
        let b = sessions.create("t", "owner".into()).unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf_token, b.csrf_token);
        assert_eq!(a.id.len(), 64);
        assert_eq!(sessions.view(&a.id).unwrap().csrf_token, a.csrf_token);
        assert!(sessions.view("not-a-session").is_none());
    }
}
