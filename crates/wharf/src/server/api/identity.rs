//! Wharf's tokens on the API: the OIDC discovery document and JWKS (public, so any software
//! can verify Wharf's ID tokens), the IAM Credentials API's `generateIdToken` and
//! `generateAccessToken` for service accounts (impersonation, as
//! `iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{email}:...`), the caller's own
//! ID token (`/wharf/v1/idToken`, what `wharf auth print-identity-token` prints) and the
//! rotation of the signing key.
//!
//! Handlers authorize and hand over to [`wharf_iam`]; nothing here signs or verifies.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use wharf_iam::roles::perm;
use wharf_iam::{Principal, Resource};

use super::{ApiError, ApiJson};
use crate::server::Platform;

/// Routes anyone may call: what verifiers of Wharf's tokens fetch.
pub fn public_routes() -> Router<Platform> {
    Router::new().route(wharf_iam::oidc::DISCOVERY_PATH, get(discovery)).route(wharf_iam::oidc::JWKS_PATH, get(jwks))
}

/// Routes behind authentication.
pub fn routes() -> Router<Platform> {
    Router::new()
        .route("/wharf/v1/idToken", post(own_id_token))
        .route("/wharf/v1/signingKeys:rotate", post(rotate_signing_key))
}

async fn discovery(State(platform): State<Platform>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(platform.iam.issuer.discovery().map_err(key_error)?))
}

async fn jwks(State(platform): State<Platform>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(platform.iam.issuer.jwks().map_err(key_error)?))
}

fn key_error(e: wharf_iam::oidc::KeyError) -> ApiError {
    ApiError::Internal(format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()))
}

/// `generateIdToken`'s request (`includeEmail` is accepted: Wharf's tokens always carry it).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenerateIdTokenRequest {
    audience: String,
    #[serde(default)]
    include_email: bool,
    #[serde(default)]
    delegates: Vec<String>,
}

/// `generateAccessToken`'s request; `scope` is accepted and not narrowed (Wharf's access
/// tokens carry the principal's roles, not scopes).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenerateAccessTokenRequest {
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    lifetime: Option<String>,
    #[serde(default)]
    delegates: Vec<String>,
}

/// `POST /v1/projects/{project}/serviceAccounts/{email}:generateIdToken|generateAccessToken`
/// (IAM Credentials' methods), reached through the service-account route of [`super::iam`],
/// which owns `.../serviceAccounts/{account}`.
pub(super) fn credentials_method(
    platform: &Platform,
    caller: &Principal,
    project: &str,
    email: &str,
    method: &str,
    body: serde_json::Value,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = service_account(project, email)?;
    let principal = Principal::ServiceAccount(email.to_ascii_lowercase());
    match method {
        "generateIdToken" => {
            let request: GenerateIdTokenRequest = wharf_api::fields::parse(body)?;
            refuse_delegates(&request.delegates)?;
            let _ = request.include_email;
            if request.audience.is_empty() {
                return Err(ApiError::InvalidArgument("audience is required: the URL the token is for".into()));
            }
            platform.iam.authorize(Some(caller), perm::SERVICE_ACCOUNTS_GET_OPENID_TOKEN, &account)?;
            let (token, _) = platform.iam.issuer.sign_id_token(&principal, &request.audience).map_err(key_error)?;
            Ok(Json(serde_json::json!({ "token": token })))
        }
        "generateAccessToken" => {
            let request: GenerateAccessTokenRequest = wharf_api::fields::parse(body)?;
            refuse_delegates(&request.delegates)?;
            let _ = request.scope;
            let lifetime = match request.lifetime.as_deref() {
                None | Some("") => 3600,
                Some(text) => {
                    let secs = wharf_api::duration::parse(text)
                        .map_err(|e| ApiError::InvalidArgument(format!("lifetime {text:?}: {e}")))?
                        .as_secs();
                    if !(1..=3600).contains(&secs) {
                        return Err(ApiError::InvalidArgument(format!(
                            "lifetime {text:?} is out of range: between 1s and 3600s"
                        )));
                    }
                    i64::try_from(secs).unwrap_or(3600)
                }
            };
            platform.iam.authorize(Some(caller), perm::SERVICE_ACCOUNTS_GET_ACCESS_TOKEN, &account)?;
            let minted = platform.iam.mint_access_token(&principal, lifetime)?;
            let expire = jiff::Timestamp::from_second(minted.expires_at)
                .map_err(|e| ApiError::Internal(format!("token expiry out of range: {e}")))?;
            Ok(Json(serde_json::json!({ "accessToken": minted.token, "expireTime": expire.to_string() })))
        }
        other => Err(ApiError::NotFound(format!(
            "{other} is not a method of service accounts: use generateIdToken or generateAccessToken"
        ))),
    }
}

fn refuse_delegates(delegates: &[String]) -> Result<(), ApiError> {
    if delegates.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(
            "delegates is not supported by Wharf: impersonate the service account directly".into(),
        ))
    }
}

/// The resource of a service account named in a path: the project is the path's, or with
/// `-`, the one in the account's email (`NAME@PROJECT.iam.gserviceaccount.com`).
fn service_account(project: &str, email: &str) -> Result<Resource, ApiError> {
    let bad = || {
        ApiError::InvalidArgument(format!(
            "{email:?} is not a service account email (NAME@PROJECT.iam.gserviceaccount.com or \
             NUMBER-compute@developer.gserviceaccount.com)"
        ))
    };
    let (_, domain) = email.split_once('@').ok_or_else(bad)?;
    let project = if project != "-" {
        project.to_owned()
    } else if let Some(project) = domain.strip_suffix(".iam.gserviceaccount.com") {
        project.to_owned()
    } else if domain == "developer.gserviceaccount.com" {
        return Err(ApiError::InvalidArgument(format!(
            "name the project of {email} in the path: projects/PROJECT/serviceAccounts/{email}"
        )));
    } else {
        return Err(bad());
    };
    Ok(Resource::service_account(&project, &email.to_ascii_lowercase()))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnIdTokenRequest {
    audience: String,
}

/// The caller's own ID token for `audience`.
async fn own_id_token(
    State(platform): State<Platform>,
    Extension(caller): Extension<Principal>,
    ApiJson(request): ApiJson<OwnIdTokenRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if request.audience.is_empty() {
        return Err(ApiError::InvalidArgument("audience is required: the URL the token is for".into()));
    }
    let (token, claims) = platform.iam.issuer.sign_id_token(&caller, &request.audience).map_err(key_error)?;
    Ok(Json(serde_json::json!({ "token": token, "expiresAt": claims.exp })))
}

/// Makes a new key sign ID tokens; the old one keeps verifying until its tokens expired.
/// Only the owner may.
async fn rotate_signing_key(
    State(platform): State<Platform>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if caller != Principal::Owner {
        return Err(ApiError::Denied(wharf_iam::Denied {
            permission: "wharf.signingKeys.rotate",
            resource: "signingKeys".to_owned(),
            principal: caller.name(),
        }));
    }
    let kid = platform.iam.issuer.rotate().map_err(key_error)?;
    Ok(Json(serde_json::json!({ "kid": kid })))
}
