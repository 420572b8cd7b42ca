//! Service-account keys and the JWTs signed with them.
//!
//! `keys create` generates an RSA-2048 key pair, hands the private half to the caller once in
//! Google's JSON key-file format ([`KeyFile`]) and stores only the public half. Google's auth
//! libraries then sign RS256 JWTs with it, which Wharf accepts two ways, both verified by
//! [`Iam::verify_signed_jwt`] (signature by the key the header's `kid` names, `iss` = the
//! key's account, `iat`/`exp` window, account enabled):
//! - the RFC 7523 JWT-bearer grant at the token endpoint (`aud` = the key file's `token_uri`,
//!   or Google's token URL, which google-auth always sends), answered with an access token ([`Iam::mint_access_token`]);
//! - as a bearer credential itself ("self-signed JWT", what google-auth sends when a client
//!   library sets `always_use_jwt_access`, as Google's Cloud Run client does).

use rsa::pkcs8::{DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde::{Deserialize, Serialize};
use wharf_store::rusqlite::{self, OptionalExtension, params};

use crate::accounts::{AccountError, rfc3339};
use crate::{AuthError, Iam, Principal};

/// The longest lifetime of a signed JWT Wharf accepts (Google's limit).
pub const MAX_JWT_LIFETIME_SECS: i64 = 3600;
/// The `aud` google-auth puts in a JWT-bearer grant whatever the key file's `token_uri` is
/// (`google.oauth2.service_account`: `_GOOGLE_OAUTH2_TOKEN_ENDPOINT`), so the token endpoint
/// accepts it besides its own URL: the JWT is still signed by a key only Wharf knows.
pub const GOOGLE_TOKEN_AUDIENCE: &str = "https://oauth2.googleapis.com/token";
/// Clock skew tolerated on `iat`.
const CLOCK_SKEW_SECS: i64 = 300;
/// Keys do not expire unless deleted (Google's default `validBeforeTime`: 9999-12-31).
const KEY_VALID_BEFORE: i64 = 253_402_300_799;

/// Google's service-account key file (`"type": "service_account"`), what
/// `google.oauth2.service_account.Credentials.from_service_account_file` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    #[serde(rename = "type")]
    pub kind: String,
    pub project_id: String,
    pub private_key_id: String,
    pub private_key: String,
    pub client_email: String,
    pub client_id: String,
    pub auth_uri: String,
    pub token_uri: String,
    pub auth_provider_x509_cert_url: String,
    pub client_x509_cert_url: String,
    pub universe_domain: String,
}

/// A key's public record (`google.iam.admin.v1.ServiceAccountKey` without key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountKey {
    pub name: String,
    pub valid_after_time: String,
    pub valid_before_time: String,
    pub key_algorithm: &'static str,
    pub key_origin: &'static str,
    pub key_type: &'static str,
}

impl Iam {
    /// Creates a key for a user-created service account and returns its record and the key
    /// file. Key generation takes a few hundred milliseconds: call it off the async runtime.
    pub fn create_key(
        &self,
        project: &str,
        email: &str,
        token_uri: &str,
    ) -> Result<(ServiceAccountKey, KeyFile), AccountError> {
        let account = self.service_account(project, email)?;
        if account.unique_id.is_empty() {
            return Err(AccountError::DefaultAccount { email: account.email });
        }
        let failed = |reason: String| AccountError::KeyGeneration { email: account.email.clone(), reason };
        let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(|e| failed(e.to_string()))?;
        let private_pem = private.to_pkcs8_pem(LineEnding::LF).map_err(|e| failed(e.to_string()))?;
        let public_pem =
            private.to_public_key().to_public_key_pem(LineEnding::LF).map_err(|e| failed(e.to_string()))?;
        let key_id = hex::encode(crate::random_bytes::<20>().map_err(AccountError::Random)?);
        let now = wharf_store::unix_now();
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO service_account_keys (key_id, email, public_key_pem, valid_after, valid_before)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key_id, account.email, public_pem, now, KEY_VALID_BEFORE],
            )?;
            Ok::<_, AccountError>(())
        })?;
        tracing::info!(account = %account.email, key = %key_id, "service account key created");
        let file = KeyFile {
            kind: "service_account".to_owned(),
            project_id: account.project_id.clone(),
            private_key_id: key_id.clone(),
            private_key: private_pem.to_string(),
            client_email: account.email.clone(),
            client_id: account.unique_id.clone(),
            auth_uri: "https://accounts.google.com/o/oauth2/auth".to_owned(),
            token_uri: token_uri.to_owned(),
            auth_provider_x509_cert_url: "https://www.googleapis.com/oauth2/v1/certs".to_owned(),
            client_x509_cert_url: String::new(),
            universe_domain: "googleapis.com".to_owned(),
        };
        Ok((key_record(&account.project_id, &account.email, &key_id, now, KEY_VALID_BEFORE), file))
    }

    pub fn list_keys(&self, project: &str, email: &str) -> Result<Vec<ServiceAccountKey>, AccountError> {
        let account = self.service_account(project, email)?;
        Ok(self.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT key_id, valid_after, valid_before FROM service_account_keys WHERE email = ?1 ORDER BY valid_after, key_id",
            )?;
            let rows = stmt.query_map([&account.email], |r| {
                Ok(key_record(&account.project_id, &account.email, &r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?)
    }

    /// Deletes a key: JWTs it signed stop being accepted (access tokens minted from them
    /// before live out their hour, as on Google).
    pub fn delete_key(&self, project: &str, email: &str, key_id: &str) -> Result<(), AccountError> {
        let account = self.service_account(project, email)?;
        self.db.write(|tx| {
            let deleted = tx.execute(
                "DELETE FROM service_account_keys WHERE key_id = ?1 AND email = ?2",
                params![key_id, account.email],
            )?;
            if deleted == 0 {
                return Err(AccountError::NotFound { what: "key", name: format!("{}/keys/{key_id}", account.name) });
            }
            Ok(())
        })?;
        tracing::info!(account = %account.email, key = %key_id, "service account key deleted");
        Ok(())
    }

    /// Verifies an RS256 JWT signed with a service-account key and returns the account.
    /// `audience`: the `aud` the JWT must carry (the token endpoint's URL), or `None` for a
    /// self-signed JWT used as a bearer credential, which must carry an `aud` or a `scope`.
    pub fn verify_signed_jwt(&self, jwt: &str, audience: Option<&str>) -> Result<Principal, AuthError> {
        use base64::Engine as _;
        let invalid = |why: String| AuthError::InvalidJwt(why);
        let mut parts = jwt.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("it is not three base64url parts separated by dots".into()));
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let decode = |part: &str, what: &str| {
            b64.decode(part.trim_end_matches('=')).map_err(|_| invalid(format!("its {what} is not base64url")))
        };
        let header: JwtHeader = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|e| invalid(format!("its header is not a JWT header: {e}")))?;
        if header.alg != "RS256" {
            return Err(invalid(format!("it is signed with {:?}; Wharf accepts RS256", header.alg)));
        }
        let claims: JwtClaims = serde_json::from_slice(&decode(payload, "payload")?)
            .map_err(|e| invalid(format!("its claims are not valid: {e}")))?;
        let signature = decode(signature, "signature")?;
        let kid = header.kid.ok_or_else(|| invalid("its header has no kid (the key file's private_key_id)".into()))?;
        let found: Option<(String, String, i64, i64)> = self.db.read(|c| {
            c.query_row(
                "SELECT email, public_key_pem, valid_after, valid_before FROM service_account_keys WHERE key_id = ?1",
                [&kid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
        })?;
        let (email, public_pem, valid_after, valid_before) =
            found.ok_or_else(|| invalid(format!("key {kid} does not exist (deleted, or never created by Wharf)")))?;
        if claims.iss != email {
            return Err(invalid(format!("its iss {:?} is not the account of key {kid}", claims.iss)));
        }
        let public = rsa::PublicKey::from_public_key_pem(&public_pem)
            .map_err(|e| invalid(format!("the stored key {kid} is unreadable: {e}")))?;
        let signed_len = jwt.len() - jwt.rsplit('.').next().map_or(0, str::len) - 1;
        public
            .pkcs1v15_verify::<sha2::Sha256>(&jwt.as_bytes()[..signed_len], &signature)
            .map_err(|_| invalid(format!("its signature does not verify with key {kid}")))?;
        let now = wharf_store::unix_now();
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        if claims.iat > now + CLOCK_SKEW_SECS || claims.iat < valid_after - CLOCK_SKEW_SECS || now > valid_before {
            return Err(invalid("its iat is in the future or before the key existed".into()));
        }
        if claims.exp - claims.iat > MAX_JWT_LIFETIME_SECS {
            return Err(invalid(format!("its lifetime (exp - iat) exceeds {MAX_JWT_LIFETIME_SECS} seconds")));
        }
        match (audience, claims.aud.as_deref()) {
            (Some(expected), Some(aud)) if aud == expected || aud == GOOGLE_TOKEN_AUDIENCE => {}
            (Some(expected), aud) => {
                return Err(invalid(format!(
                    "its aud {} is not this token endpoint ({expected}) nor {GOOGLE_TOKEN_AUDIENCE}",
                    aud.unwrap_or("(none)")
                )));
            }
            (None, None) if claims.scope.as_deref().is_none_or(str::is_empty) => {
                return Err(invalid("a self-signed JWT needs an aud or a scope claim".into()));
            }
            (None, _) => {}
        }
        let principal = Principal::ServiceAccount(email.clone());
        if !self.account_usable(&principal)? {
            return Err(AuthError::AccountDisabled(email));
        }
        Ok(principal)
    }
}

/// Whether a bearer credential looks like a JWT (base64url JSON object, three parts).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.matches('.').count() == 2
}

#[derive(Debug, Deserialize)]
struct JwtHeader {
    alg: String,
    kid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JwtClaims {
    iss: String,
    aud: Option<String>,
    iat: i64,
    exp: i64,
    scope: Option<String>,
}

fn key_record(project: &str, email: &str, key_id: &str, after: i64, before: i64) -> ServiceAccountKey {
    ServiceAccountKey {
        name: format!("projects/{project}/serviceAccounts/{email}/keys/{key_id}"),
        valid_after_time: rfc3339(after),
        valid_before_time: rfc3339(before),
        key_algorithm: "KEY_ALG_RSA_2048",
        key_origin: "GOOGLE_PROVIDED",
        key_type: "USER_MANAGED",
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use rsa::pkcs8::DecodePrivateKey as _;

    use super::*;

    fn sign(file: &KeyFile, claims: serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": file.private_key_id});
        let signed = format!("{}.{}", b64.encode(header.to_string()), b64.encode(claims.to_string()));
        let key = rsa::PrivateKey::from_pkcs8_pem(&file.private_key).unwrap();
        let signature = key.pkcs1v15_sign::<sha2::Sha256>(signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64.encode(signature))
    }

    #[test]
    fn signed_jwts_verify_until_the_account_is_disabled_or_the_key_deleted() {
        let (_dir, iam, _) = crate::tests::setup();
        let sa = iam.create_service_account("p", "api-caller", "", "").unwrap();
        let (record, file) = iam.create_key("p", &sa.email, "http://x/token").unwrap();
        assert_eq!(file.client_email, sa.email);
        assert!(file.private_key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let now = wharf_store::unix_now();
        let grant = serde_json::json!({"iss": sa.email, "aud": "http://x/token", "iat": now, "exp": now + 3600});
        let principal = Principal::ServiceAccount(sa.email.clone());
        assert_eq!(iam.verify_signed_jwt(&sign(&file, grant.clone()), Some("http://x/token")).unwrap(), principal);
        let wrong_aud = iam.verify_signed_jwt(&sign(&file, grant.clone()), Some("http://y/token")).unwrap_err();
        assert!(wrong_aud.to_string().contains("aud"), "{wrong_aud}");
        let long = serde_json::json!({"iss": sa.email, "scope": "s", "iat": now, "exp": now + 7200});
        assert!(iam.verify_signed_jwt(&sign(&file, long), None).unwrap_err().to_string().contains("lifetime"));
        let expired = serde_json::json!({"iss": sa.email, "scope": "s", "iat": now - 100, "exp": now - 1});
        assert!(matches!(iam.verify_signed_jwt(&sign(&file, expired), None), Err(AuthError::Expired)));
        // Tampered claims fail the signature.
        let good = sign(&file, serde_json::json!({"iss": sa.email, "scope": "s", "iat": now, "exp": now + 60}));
        let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!({"iss": sa.email, "scope": "s", "iat": now, "exp": now + 3000}).to_string());
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert!(iam.verify_signed_jwt(&forged, None).unwrap_err().to_string().contains("signature"));
        assert_eq!(iam.authenticate(Some(&format!("Bearer {good}"))).unwrap(), principal);

        iam.set_service_account_disabled("p", &sa.email, true).unwrap();
        assert!(matches!(iam.authenticate(Some(&format!("Bearer {good}"))), Err(AuthError::AccountDisabled(_))));
        iam.set_service_account_disabled("p", &sa.email, false).unwrap();
        iam.authenticate(Some(&format!("Bearer {good}"))).unwrap();
        let key_id = record.name.rsplit('/').next().unwrap();
        iam.delete_key("p", &sa.email, key_id).unwrap();
        assert!(iam.authenticate(Some(&format!("Bearer {good}"))).unwrap_err().to_string().contains("does not exist"));
    }
}
