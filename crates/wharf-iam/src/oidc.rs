//! Wharf as an OpenID Connect issuer: the RSA keys ID tokens are signed with (RS256, a `kid`
//! each, kept in the state database), the ID tokens themselves (Google's claims: `iss`, `aud`,
//! `sub`, `azp`, `email`, `email_verified`, `iat`, `exp`), their verification, and what other
//! software needs to verify them: the discovery document and the JWKS.
//!
//! Keys rotate without breaking tokens in flight: [`Issuer::rotate`] makes a new key the
//! signing one and retires the old, which stays in the JWKS (and keeps verifying) until every
//! token it can have signed has expired. Verification reads keys from memory and remembers the
//! tokens it verified, so checking a token on every request costs microseconds, not an RSA
//! operation.
//!
//! It does not decide who may have a token for whom (the API checks
//! `iam.serviceAccounts.getOpenIdToken`) nor what a token may do (policies do).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use base64::Engine as _;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rsa::signature::{Signer as _, Verifier as _};
use rsa::traits::PublicKeyParts as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use wharf_store::Store;
use wharf_store::rusqlite::params;

use crate::member::Principal;

/// How long an ID token is valid, as Google's (1 h).
pub const ID_TOKEN_LIFETIME_SECS: i64 = 3600;

/// How long a retired key stays published after it stopped signing: the tokens it signed
/// last are valid this long, plus clock skew.
const RETIRED_KEY_GRACE_SECS: i64 = ID_TOKEN_LIFETIME_SECS + 300;

/// Clock skew tolerated when checking `iat` and `exp`.
const SKEW_SECS: i64 = 60;

/// RSA modulus size, as Google's signing keys.
const KEY_BITS: usize = 2048;

/// How many verified tokens are remembered; past it the memory starts over.
const VERIFIED_CACHE_LIMIT: usize = 10_000;

/// The email the owner has in ID tokens. The owner is no user: `.invalid` is a top-level
/// domain reserved never to exist (RFC 2606), so no real user can carry this address.
pub const OWNER_EMAIL: &str = "owner@wharf.invalid";

/// The claims of a Wharf ID token, as Google's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub azp: String,
    pub email: String,
    pub email_verified: bool,
    pub iat: i64,
    pub exp: i64,
}

impl IdClaims {
    /// Who the token speaks for.
    pub fn principal(&self) -> Principal {
        principal_of_email(&self.email)
    }
}

/// The principal an ID token's `email` names.
pub fn principal_of_email(email: &str) -> Principal {
    if email == OWNER_EMAIL {
        Principal::Owner
    } else if email.ends_with(".gserviceaccount.com") {
        Principal::ServiceAccount(email.to_owned())
    } else {
        Principal::User(email.to_owned())
    }
}

/// The email a principal has in ID tokens.
pub fn email_of(principal: &Principal) -> String {
    match principal {
        Principal::Owner => OWNER_EMAIL.to_owned(),
        Principal::User(email) | Principal::ServiceAccount(email) => email.clone(),
    }
}

/// A principal's unique numeric id (`sub`, `azp`; Google's are 21 digits), stable across
/// restarts and machines.
pub fn unique_id(principal: &Principal) -> String {
    let digest = Sha256::digest(principal.name().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    format!("1{:020}", u64::from_be_bytes(first))
}

/// Why an ID token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    #[error("the token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("the token's header or claims are not valid JSON: {0}")]
    BadJson(String),
    #[error("the token is signed with {0}, Wharf signs with RS256")]
    Algorithm(String),
    #[error("the token was signed by a key Wharf does not have (kid {0:?})")]
    UnknownKey(String),
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token was issued by {found:?}, not by this server ({expected:?})")]
    Issuer { found: String, expected: String },
    #[error("the token expired at {0} (unix time)")]
    Expired(i64),
    #[error("the token is issued in the future")]
    NotYetValid,
    #[error("the token's audience {0:?} is not this service's URL")]
    Audience(String),
}

/// Failure to load, create or rotate signing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate an RSA signing key")]
    Generate(#[source] rsa::Error),
    #[error("signing key {kid} stored in the database is unreadable")]
    Corrupt {
        kid: String,
        #[source]
        source: rsa::pkcs8::Error,
    },
    #[error("cannot encode a new signing key")]
    Encode(#[source] rsa::pkcs8::Error),
    #[error("the issuer URL is not set: the server sets it once its API listens")]
    NoIssuer,
    #[error(transparent)]
    Store(#[from] wharf_store::StoreError),
}

/// One published key.
struct PublishedKey {
    kid: String,
    verifying: VerifyingKey<Sha256>,
    jwk: serde_json::Value,
}

/// The keys in memory: the one that signs, and every one that verifies.
struct KeySet {
    signing: (String, SigningKey<Sha256>),
    published: Vec<PublishedKey>,
}

/// Signs and verifies Wharf's ID tokens. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Issuer {
    db: Store,
    issuer: Arc<OnceLock<String>>,
    keys: Arc<RwLock<Option<Arc<KeySet>>>>,
    /// Tokens whose signature, issuer and times were verified: token -> claims.
    verified: Arc<RwLock<HashMap<String, Arc<IdClaims>>>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("issuer", &self.issuer.get()).finish_non_exhaustive()
    }
}

impl Issuer {
    pub fn new(db: Store) -> Issuer {
        Issuer { db, issuer: Arc::default(), keys: Arc::default(), verified: Arc::default() }
    }

    /// Sets the issuer URL (`iss`: the API's URL). Only the first call counts: a server has
    /// one API address for its life.
    pub fn set_url(&self, url: &str) {
        let _ = self.issuer.set(url.trim_end_matches('/').to_owned());
    }

    /// The issuer URL, once set.
    pub fn url(&self) -> Option<&str> {
        self.issuer.get().map(String::as_str)
    }

    /// Loads the keys (creating the first one if there is none). Called at start-up so the
    /// first token does not pay for key generation.
    pub fn load(&self) -> Result<(), KeyError> {
        self.key_set().map(|_| ())
    }

    /// Makes a new key the signing key; the previous one is retired and stays published until
    /// the tokens it signed expired. Keys retired longer ago than that are deleted. Returns
    /// the new key's id.
    pub fn rotate(&self) -> Result<String, KeyError> {
        let (kid, pem) = new_key()?;
        let now = wharf_store::unix_now();
        self.db.write(|tx| {
            tx.execute("UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL", [now])
                .and_then(|_| {
                    tx.execute(
                        "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < ?1",
                        [now - RETIRED_KEY_GRACE_SECS],
                    )
                })
                .and_then(|_| {
                    tx.execute(
                        "INSERT INTO signing_keys (kid, private_key_pem, created_at, retired_at) VALUES (?1, ?2, ?3, NULL)",
                        params![kid, pem, now],
                    )
                })
                .map_err(wharf_store::StoreError::Query)
        })?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.load()?;
        tracing::info!(kid, "rotated the ID token signing key");
        Ok(kid)
    }

    /// Signs an ID token for `principal` with audience `audience`, valid for an hour.
    pub fn sign_id_token(&self, principal: &Principal, audience: &str) -> Result<(String, IdClaims), KeyError> {
        let issuer = self.url().ok_or(KeyError::NoIssuer)?.to_owned();
        let keys = self.key_set()?;
        let now = wharf_store::unix_now();
        let id = unique_id(principal);
        let claims = IdClaims {
            iss: issuer,
            aud: audience.to_owned(),
            sub: id.clone(),
            azp: id,
            email: email_of(principal),
            email_verified: true,
            iat: now,
            exp: now + ID_TOKEN_LIFETIME_SECS,
        };
        let (kid, key) = &keys.signing;
        let header = serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let signed =
            format!("{}.{}", b64(header.to_string().as_bytes()), b64(&serde_json::to_vec(&claims).unwrap_or_default()));
        let signature: Signature = key.sign(signed.as_bytes());
        let token = format!("{signed}.{}", b64(&Box::<[u8]>::from(signature)));
        Ok((token, claims))
    }

    /// Verifies an ID token's signature (with any published key), issuer and validity times,
    /// then asks `audience_ok` about its audience. A token verified before is not verified
    /// again, only its times and audience are checked.
    pub fn verify(&self, token: &str, audience_ok: impl Fn(&str) -> bool) -> Result<Arc<IdClaims>, IdTokenError> {
        let cached = self.verified.read().unwrap_or_else(|e| e.into_inner()).get(token).cloned();
        let claims = match cached {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(self.verify_signed(token)?);
                let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
                if verified.len() >= VERIFIED_CACHE_LIMIT {
                    verified.clear();
                }
                verified.insert(token.to_owned(), claims.clone());
                claims
            }
        };
        let now = wharf_store::unix_now();
        if claims.exp + SKEW_SECS <= now {
            return Err(IdTokenError::Expired(claims.exp));
        }
        if !audience_ok(&claims.aud) {
            return Err(IdTokenError::Audience(claims.aud.clone()));
        }
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<IdClaims, IdTokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdTokenError::Malformed);
        };
        let decode = |part: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| IdTokenError::Malformed)
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            #[serde(default)]
            kid: String,
        }
        let head: Header =
            serde_json::from_slice(&decode(header)?).map_err(|e| IdTokenError::BadJson(e.to_string()))?;
        if head.alg != "RS256" {
            return Err(IdTokenError::Algorithm(head.alg));
        }
        let keys = self.key_set().map_err(|_| IdTokenError::UnknownKey(head.kid.clone()))?;
        let key = keys.published.iter().find(|k| k.kid == head.kid).ok_or(IdTokenError::UnknownKey(head.kid))?;
        let signature = Signature::try_from(decode(signature)?.as_slice()).map_err(|_| IdTokenError::Signature)?;
        let signed_len = header.len() + 1 + payload.len();
        key.verifying.verify(&token.as_bytes()[..signed_len], &signature).map_err(|_| IdTokenError::Signature)?;
        let claims: IdClaims =
            serde_json::from_slice(&decode(payload)?).map_err(|e| IdTokenError::BadJson(e.to_string()))?;
        let expected = self.url().unwrap_or_default();
        if claims.iss != expected {
            return Err(IdTokenError::Issuer { found: claims.iss, expected: expected.to_owned() });
        }
        let now = wharf_store::unix_now();
        if claims.iat > now + SKEW_SECS {
            return Err(IdTokenError::NotYetValid);
        }
        if claims.exp + SKEW_SECS <= now {
            return Err(IdTokenError::Expired(claims.exp));
        }
        Ok(claims)
    }

    /// The JWKS document (`{"keys": [...]}`): every key that may have signed a valid token.
    pub fn jwks(&self) -> Result<serde_json::Value, KeyError> {
        let keys = self.key_set()?;
        Ok(serde_json::json!({ "keys": keys.published.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }))
    }

    /// The OIDC discovery document, naming `jwks_uri` under the issuer URL.
    pub fn discovery(&self) -> Result<serde_json::Value, KeyError> {
        let issuer = self.url().ok_or(KeyError::NoIssuer)?;
        Ok(serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}{JWKS_PATH}"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"],
        }))
    }

    /// The keys, from memory, else from the database (creating the first key if none exists).
    fn key_set(&self) -> Result<Arc<KeySet>, KeyError> {
        if let Some(keys) = self.keys.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(keys.clone());
        }
        let mut slot = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if let Some(keys) = slot.as_ref() {
            return Ok(keys.clone());
        }
        let now = wharf_store::unix_now();
        let read = || {
            self.db.read(|c| {
                let mut stmt = c.prepare(
                    "SELECT kid, private_key_pem, retired_at FROM signing_keys
                     WHERE retired_at IS NULL OR retired_at >= ?1
                     ORDER BY retired_at IS NOT NULL, COALESCE(retired_at, created_at) DESC, kid",
                )?;
                let rows: Vec<(String, String, Option<i64>)> = stmt
                    .query_map([now - RETIRED_KEY_GRACE_SECS], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<i64>>(2)?))
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(rows)
            })
        };
        let mut rows = read()?;
        if !rows.iter().any(|(_, _, retired)| retired.is_none()) {
            let (kid, pem) = new_key()?;
            self.db.write(|tx| {
                tx.execute(
                    "INSERT INTO signing_keys (kid, private_key_pem, created_at, retired_at) VALUES (?1, ?2, ?3, NULL)",
                    params![kid, pem, now],
                )
                .map_err(wharf_store::StoreError::Query)
            })?;
            rows = read()?;
        }
        let mut signing = None;
        let mut published = Vec::new();
        for (kid, pem, retired) in rows {
            let private = rsa::PrivateKey::from_pkcs8_pem(&pem)
                .map_err(|source| KeyError::Corrupt { kid: kid.clone(), source })?;
            let public = private.to_public_key();
            let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            let jwk = serde_json::json!({
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                "n": b64(&public.n_bytes()), "e": b64(&public.e_bytes()),
            });
            published.push(PublishedKey { kid: kid.clone(), verifying: VerifyingKey::new(public), jwk });
            if retired.is_none() && signing.is_none() {
                signing = Some((kid, SigningKey::new(private)));
            }
        }
        let signing = signing.ok_or(KeyError::NoIssuer)?;
        let keys = Arc::new(KeySet { signing, published });
        *slot = Some(keys.clone());
        Ok(keys)
    }
}

/// Where the JWKS is published, under the issuer URL (Google's path).
pub const JWKS_PATH: &str = "/oauth2/v3/certs";

/// The OIDC discovery document's path under the issuer URL.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// A new RSA key: its id (the first 20 hex digits of the SHA-256 of its public key's
/// modulus) and its PKCS#8 PEM.
fn new_key() -> Result<(String, String), KeyError> {
    let private = rsa::PrivateKey::new(&mut getrandom::SysRng, KEY_BITS).map_err(KeyError::Generate)?;
    let kid = hex::encode(&Sha256::digest(private.to_public_key().n_bytes())[..10]);
    let pem = private.to_pkcs8_pem(LineEnding::LF).map_err(KeyError::Encode)?;
    Ok((kid, pem.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> (tempfile::TempDir, Issuer) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Issuer::new(Store::open(&dir.path().join("state.db")).unwrap());
        issuer.set_url("http://127.0.0.1:8000");
        (dir, issuer)
    }

    fn any_audience(_: &str) -> bool {
        true
    }

    #[test]
    fn tokens_verify_with_their_audience_and_say_who_they_are() {
        let (_dir, issuer) = issuer();
        let sa = Principal::ServiceAccount("api@p.iam.gserviceaccount.com".into());
        let (token, claims) = issuer.sign_id_token(&sa, "http://api.example").unwrap();
        assert_eq!(claims.sub.len(), 21);
        let verified = issuer.verify(&token, |aud| aud == "http://api.example").unwrap();
        assert_eq!(verified.principal(), sa);
        assert_eq!(
            issuer.verify(&token, |aud| aud == "http://other.example").unwrap_err(),
            IdTokenError::Audience("http://api.example".into())
        );
        let (owner, _) = issuer.sign_id_token(&Principal::Owner, "a").unwrap();
        assert_eq!(issuer.verify(&owner, any_audience).unwrap().principal(), Principal::Owner);
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let (_dir, issuer) = issuer();
        let (token, _) = issuer.sign_id_token(&Principal::User("ann@example.com".into()), "a").unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        // Claims changed after signing: the signature no longer matches.
        let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"http://127.0.0.1:8000","aud":"a","sub":"1","azp":"1","email":"owner@wharf.invalid","email_verified":true,"iat":0,"exp":9999999999}"#);
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(issuer.verify(&forged, any_audience).unwrap_err(), IdTokenError::Signature);
        assert_eq!(issuer.verify("abc", any_audience).unwrap_err(), IdTokenError::Malformed);
        let none_alg = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            issuer.verify(&format!("{none_alg}.{}.", parts[1]), any_audience).unwrap_err(),
            IdTokenError::Algorithm("none".into())
        );
        // Another issuer's key (another server's database) is unknown here.
        let (_other_dir, other) = self::issuer();
        let (theirs, _) = other.sign_id_token(&Principal::Owner, "a").unwrap();
        assert!(matches!(issuer.verify(&theirs, any_audience), Err(IdTokenError::UnknownKey(_))));
    }

    #[test]
    fn rotation_keeps_tokens_in_flight_valid_and_publishes_both_keys() {
        let (dir, issuer) = issuer();
        let (before, _) = issuer.sign_id_token(&Principal::Owner, "a").unwrap();
        let old_kid = issuer.jwks().unwrap()["keys"][0]["kid"].as_str().unwrap().to_owned();
        let new_kid = issuer.rotate().unwrap();
        assert_ne!(old_kid, new_kid);
        let (after, _) = issuer.sign_id_token(&Principal::Owner, "a").unwrap();
        let kids: Vec<String> = issuer.jwks().unwrap()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().into())
            .collect();
        assert_eq!(kids, vec![new_kid, old_kid]);
        // A fresh process (nothing cached) verifies both.
        let fresh = Issuer::new(Store::open(&dir.path().join("state.db")).unwrap());
        fresh.set_url("http://127.0.0.1:8000");
        fresh.verify(&before, any_audience).unwrap();
        fresh.verify(&after, any_audience).unwrap();
    }
}
