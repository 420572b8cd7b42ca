//! Identity and access on the API, in Google's shapes:
//! - policies of services and jobs (`GET {resource}:getIamPolicy`, `POST {resource}:setIamPolicy`,
//!   `POST {resource}:testIamPermissions`, as in Cloud Run Admin API v2; dispatched here from
//!   `services.rs` and `jobs.rs`), of projects (Cloud Resource Manager v1,
//!   `POST /v1/projects/{p}:getIamPolicy|setIamPolicy|testIamPermissions`) and of service
//!   accounts (IAM v1, the same three on `projects/{p}/serviceAccounts/{email}`);
//! - service accounts and their keys (IAM v1 `projects/{p}/serviceAccounts[/{email}[/keys]]`,
//!   `:disable`, `:enable`), predefined roles (`/v1/roles[/{role}]`);
//! - users (Wharf's own `/wharf/v1/users`, managed by the server owner only);
//! - the token endpoint (`POST /token`, unauthenticated, RFC 7523 JWT-bearer grant).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use wharf_iam::policy::Policy;
use wharf_iam::roles::{self, perm};
use wharf_iam::{Principal, Resource};

use super::{ApiError, ApiJson, Caller, authorize};
use crate::server::Platform;

/// How long an access token from the token endpoint lives (Google's hour).
const ACCESS_TOKEN_LIFETIME_SECS: i64 = 3600;

pub fn routes() -> Router<Platform> {
    let accounts = "/v1/projects/{project}/serviceAccounts";
    Router::new()
        .route("/v1/projects/{project}", post(project_method))
        .route(accounts, get(list_accounts).post(create_account))
        .route(&format!("{accounts}/{{account}}"), get(get_account).delete(delete_account).post(account_method))
        .route(&format!("{accounts}/{{account}}/keys"), get(list_keys).post(create_key))
        .route(&format!("{accounts}/{{account}}/keys/{{key}}"), delete(delete_key))
        .route("/v1/roles", get(list_roles))
        .route("/v1/roles/{role}", get(get_role))
        .route("/wharf/v1/users", get(list_users).post(create_user))
        .route("/wharf/v1/users/{email}", delete(delete_user))
}

/// The one route that takes no credentials: the token endpoint authenticates by the signed
/// JWT in its body.
pub fn token_route() -> Router<Platform> {
    Router::new().route("/token", post(token))
}

/// The permissions that guard a kind of resource's policy.
pub struct PolicyPermissions {
    pub get: &'static str,
    pub set: &'static str,
}

pub const SERVICE_POLICY: PolicyPermissions =
    PolicyPermissions { get: perm::SERVICES_GET_IAM_POLICY, set: perm::SERVICES_SET_IAM_POLICY };
pub const JOB_POLICY: PolicyPermissions =
    PolicyPermissions { get: perm::JOBS_GET_IAM_POLICY, set: perm::JOBS_SET_IAM_POLICY };
const PROJECT_POLICY: PolicyPermissions =
    PolicyPermissions { get: perm::PROJECTS_GET_IAM_POLICY, set: perm::PROJECTS_SET_IAM_POLICY };
const ACCOUNT_POLICY: PolicyPermissions =
    PolicyPermissions { get: perm::SERVICE_ACCOUNTS_GET_IAM_POLICY, set: perm::SERVICE_ACCOUNTS_SET_IAM_POLICY };

/// `google.iam.v1.SetIamPolicyRequest` (the resource is in the URL).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetIamPolicyRequest {
    #[serde(default)]
    resource: Option<String>,
    policy: Policy,
    #[serde(default)]
    update_mask: Option<String>,
}

/// `google.iam.v1.TestIamPermissionsRequest`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestIamPermissionsRequest {
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
}

/// `google.iam.v1.GetIamPolicyRequest` as a POST body (Resource Manager and IAM v1).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetIamPolicyRequest {
    #[serde(default)]
    resource: Option<String>,
    /// `requestedPolicyVersion`: any is answered with version 1 (Wharf has no conditions).
    #[serde(default, rename = "options")]
    _options: Option<serde_json::Value>,
}

/// Which of the three policy methods a `{resource}:method` URL names.
pub enum PolicyMethod {
    /// With the resource the body names, if it names one.
    Get(Option<String>),
    Set(SetIamPolicyRequest),
    Test(TestIamPermissionsRequest),
}

/// Runs a policy method on `resource` for `caller`. `exists` is checked after the
/// permission (so a caller without it learns nothing about existence).
pub fn policy_method(
    platform: &Platform,
    caller: &Principal,
    resource: &Resource,
    perms: &PolicyPermissions,
    method: PolicyMethod,
    exists: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let named = |given: &Option<String>| -> Result<(), ApiError> {
        match given.as_deref().filter(|r| !r.is_empty()) {
            Some(r) if r != resource.to_string() => {
                Err(ApiError::InvalidArgument(format!("the body names resource {r:?} but the URL names {resource}")))
            }
            _ => Ok(()),
        }
    };
    match method {
        PolicyMethod::Get(given) => {
            named(&given)?;
            authorize(platform, caller, perms.get, resource)?;
            exists()?;
            Ok(axum::Json(platform.iam.policies.get(resource)?).into_response())
        }
        PolicyMethod::Set(request) => {
            named(&request.resource)?;
            authorize(platform, caller, perms.set, resource)?;
            exists()?;
            if let Some(mask) = request.update_mask.as_deref().filter(|m| !m.is_empty()) {
                for path in mask.split(',').map(str::trim) {
                    if !matches!(path, "bindings" | "etag" | "version") {
                        return Err(ApiError::InvalidArgument(format!(
                            "updateMask path {path:?} is not supported: Wharf policies have bindings, etag and version only (no auditConfigs)"
                        )));
                    }
                }
            }
            let stored = platform.iam.policies.set(resource, &request.policy)?;
            tracing::info!(%resource, caller = %caller.name(), etag = ?stored.etag, "IAM policy set");
            Ok(axum::Json(stored).into_response())
        }
        PolicyMethod::Test(request) => {
            named(&request.resource)?;
            // Anyone may ask what they hold; the answer names only permissions they have.
            let held = platform.iam.policies.held(Some(caller), &request.permissions, resource)?;
            Ok(axum::Json(serde_json::json!({ "permissions": held })).into_response())
        }
    }
}

/// Parses the body of `POST {resource}:setIamPolicy|testIamPermissions|getIamPolicy`.
pub fn parse_policy_method(method: &str, body: serde_json::Value) -> Result<Option<PolicyMethod>, ApiError> {
    use wharf_api::fields::parse;
    Ok(Some(match method {
        "getIamPolicy" => {
            let request: GetIamPolicyRequest = parse(body)?;
            PolicyMethod::Get(request.resource)
        }
        "setIamPolicy" => PolicyMethod::Set(parse(body)?),
        "testIamPermissions" => PolicyMethod::Test(parse(body)?),
        _ => return Ok(None),
    }))
}

/// `POST /v1/projects/{project}:getIamPolicy|setIamPolicy|testIamPermissions`.
async fn project_method(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path(project): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let (project, method) = split_method(&project)?;
    valid_project(project)?;
    let Some(method) = parse_policy_method(method, body)? else {
        return Err(not_a_method(project, method));
    };
    policy_method(&platform, &caller, &Resource::project(project), &PROJECT_POLICY, method, || Ok(()))
}

fn valid_project(project: &str) -> Result<(), ApiError> {
    let ok = !project.is_empty()
        && project.len() <= 63
        && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "project {project:?} is not a valid project id (lower-case letters, digits and hyphens)"
        )))
    }
}

/// `name:method` -> (`name`, `method`).
pub fn split_method(segment: &str) -> Result<(&str, &str), ApiError> {
    segment.split_once(':').ok_or_else(|| {
        ApiError::NotFound(format!(
            "POST {segment} is not an API method; did you mean {segment}:getIamPolicy, :setIamPolicy or :testIamPermissions?"
        ))
    })
}

pub fn not_a_method(resource: &str, method: &str) -> ApiError {
    ApiError::NotFound(format!("{resource}:{method} is not an API method"))
}

// --- Service accounts (IAM v1) ---

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateAccountRequest {
    account_id: String,
    #[serde(default)]
    service_account: Option<AccountFields>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccountFields {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: String,
}

/// The project of `projects/{project}/serviceAccounts/{email}`; `-` means the email's.
fn account_project<'a>(project: &'a str, email: &'a str) -> Result<&'a str, ApiError> {
    if project != "-" {
        return Ok(project);
    }
    wharf_iam::Iam::service_account_project(email).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "projects/-/serviceAccounts/{email}: name the project for a default service account"
        ))
    })
}

async fn create_account(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path(project): Path<String>,
    ApiJson(request): ApiJson<CreateAccountRequest>,
) -> Result<Response, ApiError> {
    valid_project(&project)?;
    authorize(&platform, &caller, perm::SERVICE_ACCOUNTS_CREATE, &Resource::project(&project))?;
    let fields = request.service_account.unwrap_or_default();
    let account = platform.iam.create_service_account(
        &project,
        &request.account_id,
        &fields.display_name,
        &fields.description,
    )?;
    Ok(axum::Json(account).into_response())
}

async fn list_accounts(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path(project): Path<String>,
) -> Result<Response, ApiError> {
    valid_project(&project)?;
    authorize(&platform, &caller, perm::SERVICE_ACCOUNTS_LIST, &Resource::project(&project))?;
    let accounts = platform.iam.list_service_accounts(&project)?;
    Ok(axum::Json(serde_json::json!({ "accounts": accounts })).into_response())
}

async fn get_account(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, email)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let project = account_project(&project, &email)?;
    authorize(&platform, &caller, perm::SERVICE_ACCOUNTS_GET, &Resource::service_account(project, &email))?;
    Ok(axum::Json(platform.iam.service_account(project, &email)?).into_response())
}

async fn delete_account(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, email)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let project = account_project(&project, &email)?;
    authorize(&platform, &caller, perm::SERVICE_ACCOUNTS_DELETE, &Resource::service_account(project, &email))?;
    platform.iam.delete_service_account(project, &email)?;
    Ok(axum::Json(serde_json::json!({})).into_response())
}

/// `POST .../serviceAccounts/{email}:disable|enable|getIamPolicy|setIamPolicy|testIamPermissions`.
async fn account_method(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, account)): Path<(String, String)>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let (email, method) = split_method(&account)?;
    if matches!(method, "generateIdToken" | "generateAccessToken") {
        let answer = super::identity::credentials_method(&platform, &caller, &project, email, method, body)?;
        return Ok(answer.into_response());
    }
    let project = account_project(&project, email)?;
    let resource = Resource::service_account(project, email);
    match method {
        "disable" | "enable" => {
            authorize(&platform, &caller, perm::SERVICE_ACCOUNTS_DISABLE, &resource)?;
            let _: serde_json::Map<String, serde_json::Value> = wharf_api::fields::parse(body)?;
            platform.iam.set_service_account_disabled(project, email, method == "disable")?;
            Ok(axum::Json(serde_json::json!({})).into_response())
        }
        other => {
            let Some(method) = parse_policy_method(other, body)? else {
                return Err(not_a_method(&resource.to_string(), other));
            };
            let exists = || platform.iam.service_account(project, email).map(drop).map_err(ApiError::from);
            policy_method(&platform, &caller, &resource, &ACCOUNT_POLICY, method, exists)
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKeyRequest {
    #[serde(default)]
    private_key_type: Option<String>,
    #[serde(default)]
    key_algorithm: Option<String>,
}

/// Creates a key; the response carries the key file once (`privateKeyData`, base64 of the
/// JSON, as IAM v1 returns it). Its `token_uri` is this API's `/token` as the caller reached it.
async fn create_key(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, email)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> Result<Response, ApiError> {
    let project = account_project(&project, &email)?.to_owned();
    authorize(&platform, &caller, perm::SERVICE_ACCOUNT_KEYS_CREATE, &Resource::service_account(&project, &email))?;
    if let Some(kind) = request.private_key_type.as_deref().filter(|k| *k != "TYPE_GOOGLE_CREDENTIALS_FILE") {
        return Err(ApiError::InvalidArgument(format!(
            "privateKeyType {kind} is not supported: Wharf writes Google's JSON key file (TYPE_GOOGLE_CREDENTIALS_FILE)"
        )));
    }
    if let Some(alg) = request.key_algorithm.as_deref().filter(|a| *a != "KEY_ALG_RSA_2048") {
        return Err(ApiError::InvalidArgument(format!("keyAlgorithm {alg} is not supported: use KEY_ALG_RSA_2048")));
    }
    let token_uri = format!("{}/token", request_base_url(&headers));
    let iam = platform.iam.clone();
    let (record, file) = tokio::task::spawn_blocking(move || iam.create_key(&project, &email, &token_uri))
        .await
        .map_err(|e| ApiError::Internal(format!("key generation task failed: {e}")))??;
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec_pretty(&file).map_err(|e| ApiError::Internal(e.to_string()))?);
    let mut value = serde_json::to_value(record).map_err(|e| ApiError::Internal(e.to_string()))?;
    value["privateKeyType"] = "TYPE_GOOGLE_CREDENTIALS_FILE".into();
    value["privateKeyData"] = data.into();
    Ok(axum::Json(value).into_response())
}

async fn list_keys(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, email)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let project = account_project(&project, &email)?;
    authorize(&platform, &caller, perm::SERVICE_ACCOUNT_KEYS_LIST, &Resource::service_account(project, &email))?;
    let keys = platform.iam.list_keys(project, &email)?;
    Ok(axum::Json(serde_json::json!({ "keys": keys })).into_response())
}

async fn delete_key(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, email, key)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let project = account_project(&project, &email)?;
    authorize(&platform, &caller, perm::SERVICE_ACCOUNT_KEYS_DELETE, &Resource::service_account(project, &email))?;
    platform.iam.delete_key(project, &email, &key)?;
    Ok(axum::Json(serde_json::json!({})).into_response())
}

/// `http://HOST` as the client addressed this API (the `Host` header).
fn request_base_url(headers: &HeaderMap) -> String {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

// --- Roles ---

fn role_json(role: &roles::Role, full: bool) -> serde_json::Value {
    let mut value = serde_json::json!({"name": role.name, "title": role.title, "stage": "GA"});
    if full {
        let mut permissions: Vec<&str> = role.permissions().collect();
        permissions.sort_unstable();
        permissions.dedup();
        value["includedPermissions"] = permissions.into();
    }
    value
}

/// `GET /v1/roles`: every predefined role (readable by any authenticated caller, as on Google).
async fn list_roles() -> Response {
    let roles: Vec<_> = roles::ROLES.iter().map(|r| role_json(r, false)).collect();
    axum::Json(serde_json::json!({ "roles": roles })).into_response()
}

/// `GET /v1/roles/{role}` (`roles/run.invoker` is `/v1/roles/run.invoker`).
async fn get_role(Path(role): Path<String>) -> Result<Response, ApiError> {
    let name = format!("roles/{role}");
    let role = roles::role(&name).ok_or_else(|| {
        ApiError::NotFound(format!("role {name} is not a role Wharf knows; see `wharf iam roles list`"))
    })?;
    Ok(axum::Json(role_json(role, true)).into_response())
}

// --- Users (Wharf's own: Google has no API for its accounts) ---

fn owner_only(caller: &Principal) -> Result<(), ApiError> {
    if *caller == Principal::Owner { Ok(()) } else { Err(ApiError::OwnerOnly { caller: caller.name() }) }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserRequest {
    email: String,
}

async fn create_user(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    ApiJson(request): ApiJson<CreateUserRequest>,
) -> Result<Response, ApiError> {
    owner_only(&caller)?;
    let token = platform.iam.create_user(&request.email)?;
    let email = request.email.to_ascii_lowercase();
    Ok(axum::Json(serde_json::json!({"email": email, "member": format!("user:{email}"), "token": token}))
        .into_response())
}

async fn list_users(State(platform): State<Platform>, Caller(caller): Caller) -> Result<Response, ApiError> {
    owner_only(&caller)?;
    Ok(axum::Json(serde_json::json!({ "users": platform.iam.list_users()? })).into_response())
}

async fn delete_user(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path(email): Path<String>,
) -> Result<Response, ApiError> {
    owner_only(&caller)?;
    platform.iam.delete_user(&email)?;
    Ok(axum::Json(serde_json::json!({})).into_response())
}

// --- The token endpoint ---

/// `POST /token` (form body): the RFC 7523 JWT-bearer grant google-auth sends
/// (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`). Errors are
/// RFC 6749's (`{"error", "error_description"}`), which google-auth reports as they are.
async fn token(State(platform): State<Platform>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let oauth_error = |status: StatusCode, error: &str, description: String| {
        (status, axum::Json(serde_json::json!({"error": error, "error_description": description}))).into_response()
    };
    let form: std::collections::HashMap<String, String> = match serde_urlencoded_pairs(&body) {
        Some(form) => form,
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be application/x-www-form-urlencoded".into(),
            );
        }
    };
    const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER) => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported: Wharf's token endpoint takes {JWT_BEARER}"),
            );
        }
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing".into()),
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "assertion (the signed JWT) is missing".into());
    };
    let audience = format!("{}/token", request_base_url(&headers));
    let principal = match platform.iam.verify_signed_jwt(assertion, Some(&audience)) {
        Ok(principal) => principal,
        Err(e @ (wharf_iam::AuthError::Store(_) | wharf_iam::AuthError::Random)) => {
            tracing::error!(error = ?e, "token endpoint failed");
            return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "see the wharf server log".into());
        }
        Err(e) => {
            tracing::info!(error = %e, "token request refused");
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", e.to_string());
        }
    };
    match platform.iam.mint_access_token(&principal, ACCESS_TOKEN_LIFETIME_SECS) {
        Ok(token) => {
            tracing::info!(principal = %principal.name(), "access token issued");
            axum::Json(serde_json::json!({
                "access_token": token.token,
                "expires_in": ACCESS_TOKEN_LIFETIME_SECS,
                "token_type": "Bearer",
            }))
            .into_response()
        }
        Err(e) => {
            tracing::error!(error = ?e, "cannot mint an access token");
            oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "see the wharf server log".into())
        }
    }
}

/// Parses `a=b&c=d` (percent- and plus-decoded); `None` if not UTF-8.
fn serde_urlencoded_pairs(body: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    let decode =
        |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8().ok().map(|s| s.into_owned());
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}
