//! Secret Manager v1 on the admin API: `/v1/projects/{project}/secrets[/{secret}[/versions[/{version}]]]`
//! with the custom methods `:addVersion`, `:getIamPolicy`, `:setIamPolicy`, `:testIamPermissions`, `:access`,
//! `:enable`, `:disable`, `:destroy` (the path segment carries them after a colon, as Google's
//! REST mapping writes them), and `POST /wharf/v1/secrets:rotateKey` (owner only).
//!
//! Every handler authorizes the caller with the `secretmanager.*` permission Google's API
//! checks, on the secret (or on the project for create and list), then calls
//! [`wharf_secrets::SecretManager`]. Only `:access` answers with a payload.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use wharf_iam::roles::perm;
use wharf_iam::{Policy, Principal, Resource};
use wharf_secrets::{SecretInput, VersionAction, VersionRef};
use zeroize::Zeroizing;

use super::{ApiError, JsonBody, Params};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    let base = "/v1/projects/{project}/secrets";
    Router::new()
        .route(base, get(list).post(create))
        .route(&format!("{base}/{{secret}}"), get(get_secret).patch(update).delete(delete).post(secret_method))
        .route(&format!("{base}/{{secret}}/versions"), get(list_versions))
        .route(&format!("{base}/{{secret}}/versions/{{version}}"), get(get_version).post(version_method))
        .route("/wharf/v1/secrets:rotateKey", post(rotate_key))
        .route("/v1/projects/{project}/locations/{location}/secrets", any(regional))
        .route("/v1/projects/{project}/locations/{location}/secrets/{*rest}", any(regional))
}

/// Regional secrets (`projects/P/locations/L/secrets`, Secret Manager's regional endpoint):
/// Wharf's secrets are global, and answering for them under a regional name would give
/// them names Google never would. Refused by name, with the path to use.
async fn regional(Path(params): Path<std::collections::HashMap<String, String>>) -> ApiError {
    let project = params.get("project").map_or("PROJECT", String::as_str);
    let location = params.get("location").map_or("LOCATION", String::as_str);
    ApiError::Unimplemented(format!(
        "regional secrets (projects/{project}/locations/{location}/secrets) are not supported by Wharf: \
         its secrets are global, with automatic replication; use /v1/projects/{project}/secrets \
         (a client's regional endpoint or location setting must be dropped)"
    ))
}

fn authorize(p: &Platform, caller: &Principal, permission: &'static str, resource: &Resource) -> Result<(), ApiError> {
    Ok(p.iam.authorize(Some(caller), permission, resource)?)
}

/// Splits `name:method` into the name and the method.
fn split_method(segment: &str) -> (&str, Option<&str>) {
    match segment.split_once(':') {
        Some((name, method)) => (name, Some(method)),
        None => (segment, None),
    }
}

fn unknown_method(method: &str, on: &str, known: &str) -> ApiError {
    ApiError::NotFound(format!(":{method} is not a method of {on}; the methods are {known}"))
}

async fn create(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path(project): Path<String>,
    params: Params,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    authorize(&p, &caller, perm::SECRETS_CREATE, &Resource::project(&project))?;
    let id = params.get("secretId").filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::InvalidArgument("secretId is required: POST /v1/projects/PROJECT/secrets?secretId=NAME".into())
    })?;
    let input = SecretInput::from_json(&body)?;
    Ok(Json(p.secrets.create_secret(&project, id, &input)?).into_response())
}

async fn list(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path(project): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&p, &caller, perm::SECRETS_LIST, &Resource::project(&project))?;
    refuse_filter(&params)?;
    let page = p.secrets.list_secrets(&project, page_size(&params)?, params.get("pageToken").unwrap_or_default())?;
    Ok(Json(list_json("secrets", page)).into_response())
}

async fn get_secret(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path((project, segment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (secret, method) = split_method(&segment);
    let resource = Resource::secret(&project, secret);
    match method {
        None => {
            authorize(&p, &caller, perm::SECRETS_GET, &resource)?;
            Ok(Json(p.secrets.get_secret(&project, secret)?).into_response())
        }
        Some("getIamPolicy") => {
            authorize(&p, &caller, perm::SECRETS_GET_IAM_POLICY, &resource)?;
            p.secrets.get_secret(&project, secret)?;
            Ok(Json(p.iam.policies.get(&resource)?).into_response())
        }
        Some(other) => Err(unknown_method(other, "a secret (GET)", ":getIamPolicy")),
    }
}

async fn update(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path((project, secret)): Path<(String, String)>,
    params: Params,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    authorize(&p, &caller, perm::SECRETS_UPDATE, &Resource::secret(&project, &secret))?;
    let input = SecretInput::from_json(&body)?;
    let mask: Vec<String> = params
        .get("updateMask")
        .unwrap_or_default()
        .split(',')
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect();
    Ok(Json(p.secrets.update_secret(&project, &secret, &input, &mask)?).into_response())
}

async fn delete(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path((project, secret)): Path<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let resource = Resource::secret(&project, &secret);
    authorize(&p, &caller, perm::SECRETS_DELETE, &resource)?;
    p.secrets.delete_secret(&project, &secret, params.get("etag"))?;
    p.iam.policies.forget(&resource)?;
    Ok(Json(serde_json::json!({})).into_response())
}

/// `POST .../secrets/{secret}:addVersion` and `:setIamPolicy`.
async fn secret_method(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path((project, segment)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (secret, method) = split_method(&segment);
    let resource = Resource::secret(&project, secret);
    match method {
        Some("addVersion") => {
            authorize(&p, &caller, perm::VERSIONS_ADD, &resource)?;
            let (data, crc32c) = read_payload(&body)?;
            Ok(Json(p.secrets.add_version(&project, secret, &data, crc32c)?).into_response())
        }
        Some("setIamPolicy") => {
            authorize(&p, &caller, perm::SECRETS_SET_IAM_POLICY, &resource)?;
            p.secrets.get_secret(&project, secret)?;
            let policy = read_set_iam_policy(body)?;
            Ok(Json(p.iam.policies.set(&resource, &policy)?).into_response())
        }
        Some("testIamPermissions") => {
            p.secrets.get_secret(&project, secret)?;
            let asked: Vec<String> = body
                .get("permissions")
                .and_then(|list| serde_json::from_value(list.clone()).ok())
                .ok_or_else(|| ApiError::InvalidArgument("permissions must be a list of permission names".into()))?;
            let held = p.iam.policies.held(Some(&caller), &asked, &resource)?;
            Ok(Json(serde_json::json!({ "permissions": held })).into_response())
        }
        Some(other) => Err(unknown_method(other, "a secret (POST)", ":addVersion, :setIamPolicy, :testIamPermissions")),
        None => Err(ApiError::MethodNotAllowed {
            method: "POST".into(),
            path: format!("/v1/projects/{project}/secrets/{secret}"),
        }),
    }
}

async fn list_versions(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path((project, secret)): Path<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&p, &caller, perm::VERSIONS_LIST, &Resource::secret(&project, &secret))?;
    refuse_filter(&params)?;
    let page =
        p.secrets.list_versions(&project, &secret, page_size(&params)?, params.get("pageToken").unwrap_or_default())?;
    Ok(Json(list_json("versions", page)).into_response())
}

/// `GET .../versions/{version}` and `GET .../versions/{version}:access`.
async fn get_version(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path((project, secret, segment)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (version, method) = split_method(&segment);
    let version = VersionRef::parse(version)?;
    let resource = Resource::secret(&project, &secret);
    match method {
        None => {
            authorize(&p, &caller, perm::VERSIONS_GET, &resource)?;
            Ok(Json(p.secrets.get_version(&project, &secret, version)?).into_response())
        }
        Some("access") => {
            authorize(&p, &caller, perm::VERSIONS_ACCESS, &resource)?;
            let payload = p.secrets.access(&project, &secret, version)?;
            Ok(Json(payload.to_response()).into_response())
        }
        Some(other) => Err(unknown_method(other, "a secret version (GET)", ":access")),
    }
}

/// `POST .../versions/{version}:enable|:disable|:destroy` with an optional `{"etag"}`.
async fn version_method(
    State(p): State<Platform>,
    Extension(caller): Extension<Principal>,
    Path((project, secret, segment)): Path<(String, String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (version, method) = split_method(&segment);
    let (action, permission) = match method {
        Some("enable") => (VersionAction::Enable, perm::VERSIONS_ENABLE),
        Some("disable") => (VersionAction::Disable, perm::VERSIONS_DISABLE),
        Some("destroy") => (VersionAction::Destroy, perm::VERSIONS_DESTROY),
        Some(other) => return Err(unknown_method(other, "a secret version (POST)", ":enable, :disable, :destroy")),
        None => {
            return Err(ApiError::MethodNotAllowed {
                method: "POST".into(),
                path: format!("/v1/projects/{project}/secrets/{secret}/versions/{version}"),
            });
        }
    };
    let version = VersionRef::parse(version)?;
    authorize(&p, &caller, permission, &Resource::secret(&project, &secret))?;
    let etag = read_etag_body(&body)?;
    Ok(Json(p.secrets.change_state(&project, &secret, version, action, etag.as_deref())?).into_response())
}

/// Generates a new key-encryption key and re-wraps every data key; the owner only.
async fn rotate_key(State(p): State<Platform>, Extension(caller): Extension<Principal>) -> Result<Response, ApiError> {
    if caller != Principal::Owner {
        return Err(ApiError::Denied(wharf_iam::Denied {
            permission: "wharf.secrets.rotateKey",
            resource: "the secrets key-encryption key".into(),
            principal: caller.name(),
        }));
    }
    let secrets = p.secrets.clone();
    let report = tokio::task::spawn_blocking(move || secrets.rotate_key())
        .await
        .map_err(|e| ApiError::Internal(format!("the key rotation task failed: {e}")))??;
    Ok(Json(report).into_response())
}

/// `AddSecretVersionRequest`: `{"payload": {"data": BASE64, "dataCrc32c": INT64}}`.
fn read_payload(body: &serde_json::Value) -> Result<(Zeroizing<Vec<u8>>, Option<u32>), ApiError> {
    let invalid = |field: &str, why: &str| wharf_secrets::SecretsError::InvalidArgument {
        field: field.to_owned(),
        message: format!("{field} {why}"),
    };
    let object = body.as_object().ok_or_else(|| invalid("body", "must be an AddSecretVersionRequest object"))?;
    for field in object.keys() {
        if !matches!(field.as_str(), "payload" | "parent") {
            return Err(invalid(field, "is not a field of AddSecretVersionRequest").into());
        }
    }
    let payload = object
        .get("payload")
        .and_then(|p| p.as_object())
        .ok_or_else(|| invalid("payload", "is required: {\"payload\": {\"data\": BASE64}}"))?;
    let mut data = Zeroizing::new(Vec::new());
    let mut crc32c = None;
    for (field, value) in payload {
        match field.as_str() {
            "data" => {
                let text = value.as_str().ok_or_else(|| invalid("payload.data", "must be a base64 string"))?;
                let engine = if text.contains(['-', '_']) {
                    &base64::engine::general_purpose::URL_SAFE
                } else {
                    &base64::engine::general_purpose::STANDARD
                };
                data = Zeroizing::new(engine.decode(text).map_err(|_| invalid("payload.data", "is not valid base64"))?);
            }
            "dataCrc32c" => {
                let number = match value {
                    serde_json::Value::String(s) => s.parse::<u64>().ok(),
                    serde_json::Value::Number(n) => n.as_u64(),
                    _ => None,
                };
                let number = number.and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    invalid("payload.dataCrc32c", "must be the payload's CRC32C, a 32-bit unsigned number")
                })?;
                crc32c = Some(number);
            }
            other => return Err(invalid(&format!("payload.{other}"), "is not a field of SecretPayload").into()),
        }
    }
    Ok((data, crc32c))
}

/// `SetIamPolicyRequest`: `{"policy": Policy, "updateMask"?}`.
fn read_set_iam_policy(mut body: serde_json::Value) -> Result<Policy, ApiError> {
    let object = body
        .as_object_mut()
        .ok_or_else(|| ApiError::InvalidArgument("the body must be a SetIamPolicyRequest".into()))?;
    if let Some(field) = object.keys().find(|k| !matches!(k.as_str(), "policy" | "updateMask" | "resource")) {
        return Err(ApiError::InvalidArgument(format!("{field} is not a field of SetIamPolicyRequest")));
    }
    let policy = object.remove("policy").ok_or_else(|| ApiError::InvalidArgument("policy is required".into()))?;
    serde_json::from_value(policy).map_err(|e| ApiError::InvalidArgument(format!("policy is not a valid Policy: {e}")))
}

/// The body of `:enable`, `:disable` and `:destroy`: an optional etag.
fn read_etag_body(body: &serde_json::Value) -> Result<Option<String>, ApiError> {
    let object = body.as_object().ok_or_else(|| ApiError::InvalidArgument("the body must be a JSON object".into()))?;
    let mut etag = None;
    for (field, value) in object {
        match field.as_str() {
            "etag" => etag = value.as_str().map(str::to_owned),
            "name" => {}
            other => return Err(ApiError::InvalidArgument(format!("{other} is not a field of this request"))),
        }
    }
    Ok(etag)
}

fn refuse_filter(params: &Params) -> Result<(), ApiError> {
    match params.get("filter") {
        Some(filter) if !filter.is_empty() => Err(ApiError::InvalidArgument(format!(
            "filter {filter:?} is not supported by Wharf: list without a filter and select on the client"
        ))),
        _ => Ok(()),
    }
}

fn page_size(params: &Params) -> Result<usize, ApiError> {
    match params.get("pageSize") {
        None | Some("") => Ok(0),
        Some(n) => n.parse::<usize>().map_err(|_| {
            ApiError::InvalidArgument(format!("pageSize {n:?} is not a number of items (0 means the default)"))
        }),
    }
}

fn list_json<T: serde::Serialize>(key: &str, page: wharf_secrets::Page<T>) -> serde_json::Value {
    let mut out = serde_json::json!({ key: page.items, "totalSize": page.total_size });
    if !page.next_page_token.is_empty() {
        out["nextPageToken"] = page.next_page_token.into();
    }
    out
}

/// Before a service or job template naming secrets is stored: qualifies each reference with
/// the resource's project (`NAME` -> `projects/PROJECT/secrets/NAME`, what the instance start
/// reads), and checks that each secret exists and that the template's service account (the
/// project's default compute account when none is named) holds `secretmanager.versions.access`
/// on it, as Cloud Run checks at deploy. On failure nothing is created.
pub(super) fn check_template_secrets(
    p: &Platform,
    project: &str,
    service_account: &str,
    containers: &mut [wharf_api::Container],
    volumes: &mut [wharf_api::types::Volume],
) -> Result<(), ApiError> {
    let account = if service_account.is_empty() {
        wharf_iam::default_service_account(project)
    } else {
        service_account.to_ascii_lowercase()
    };
    let mut references: Vec<&mut String> = Vec::new();
    for container in containers.iter_mut() {
        for var in container.env.iter_mut() {
            if let Some(secret) =
                var.value_source.as_mut().and_then(|s| s.get_mut("secretKeyRef")).and_then(|r| r.get_mut("secret"))
                && let serde_json::Value::String(name) = secret
            {
                references.push(name);
            }
        }
    }
    for volume in volumes.iter_mut() {
        if let Some(source) = volume.secret.as_mut() {
            references.push(&mut source.secret);
        }
    }
    for reference in references {
        let (secret_project, secret) = match reference.strip_prefix("projects/").and_then(|r| r.split_once("/secrets/"))
        {
            Some((secret_project, secret)) => (secret_project.to_owned(), secret.to_owned()),
            None => (project.to_owned(), reference.clone()),
        };
        if secret.is_empty() || p.secrets.get_secret(&secret_project, &secret).is_err() {
            return Err(ApiError::FailedPrecondition(format!(
                "Secret projects/{secret_project}/secrets/{secret} was not found: create it with `wharf secrets create {secret} --data-file=FILE`"
            )));
        }
        // Google grants the default compute account Editor on its project, and Editor may
        // read secret versions.
        let default_of_project = account == wharf_iam::default_service_account(&secret_project);
        if !default_of_project {
            let principal = Principal::ServiceAccount(account.clone());
            match p.iam.authorize(Some(&principal), perm::VERSIONS_ACCESS, &Resource::secret(&secret_project, &secret))
            {
                Ok(()) => {}
                Err(wharf_iam::AuthorizeError::Denied(_)) => {
                    return Err(ApiError::FailedPrecondition(format!(
                        "Permission denied on secret: projects/{secret_project}/secrets/{secret} for Revision service account {account}. \
                         The service account used must be granted the 'Secret Manager Secret Accessor' role \
                         (roles/secretmanager.secretAccessor) at the secret, project or higher level: \
                         `wharf secrets add-iam-policy-binding {secret} --member=serviceAccount:{account} --role=roles/secretmanager.secretAccessor`"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        *reference = wharf_secrets::secret_name(&secret_project, &secret);
    }
    Ok(())
}

/// What instances read secrets through: Secret Manager, by full secret name.
#[derive(Debug)]
pub struct InstanceSecrets(pub wharf_secrets::SecretManager);

impl wharf_control::backend::SecretSource for InstanceSecrets {
    fn access(&self, secret: &str, version: &str) -> Result<Vec<u8>, String> {
        let Some((project, name)) = secret.strip_prefix("projects/").and_then(|r| r.split_once("/secrets/")) else {
            return Err(format!("{secret:?} is not a full secret name (projects/PROJECT/secrets/NAME)"));
        };
        let version = VersionRef::parse(version).map_err(|e| e.to_string())?;
        let payload = self.0.access(project, name, version).map_err(|e| e.to_string())?;
        Ok(payload.data.to_vec())
    }
}
