//! The admin API on `--api-addr`: Cloud Run Admin API v2 resources under `/v2/projects/...`
//! ([`services`], [`operations`]), Cloud Run's v1 domain mappings ([`domains`]) and Wharf's own image endpoints under `/wharf/v1/images`.
//! Every request is authenticated first, in one middleware (an `Authorization` header, or the
//! web console's session cookie, which a change must back with the session's CSRF token:
//! `console::sessions`); every handler then checks the
//! caller's permission on the resource it touches with [`authorize`] (403 `PERMISSION_DENIED`
//! naming the permission, as Google words it) before doing anything; identity itself (IAM
//! policies, service accounts, keys, users, the token endpoint) is [`iam`]. Handlers only
//! parse the request into a control-plane call; errors are rendered once, in [`ApiError`], as Google APIs render
//! them (`{"error": {"code", "message", "status", "details"}}`, with a `google.rpc.BadRequest`
//! naming the field for invalid arguments). Request bodies are read strictly
//! ([`wharf_api::fields`]): unknown fields and Cloud Run fields Wharf lacks are refused by name.

mod builds;
mod domains;
mod iam;
mod identity;
mod jobs;
mod logging;
mod operations;
pub mod secrets;
mod service_metrics;
mod services;
mod usage;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wharf_api::Code;
use wharf_iam::accounts::AccountError;
use wharf_iam::policy::PolicyError;
use wharf_iam::roles::perm;
use wharf_iam::{AuthError, AuthorizeError, Denied, Principal, Resource};
use wharf_image::ImageError;
use wharf_image::content::ImageSummary;
use wharf_image::hostfile::HostFileError;

use super::Platform;

/// An API failure, classified into an HTTP status and a Google API error status once.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A console session cookie that cannot authenticate this request (stale, or a change
    /// without the session's CSRF token).
    #[error(transparent)]
    Cookie(#[from] crate::server::console::sessions::CookieError),
    /// The caller lacks a permission (403 `PERMISSION_DENIED`, worded as Google words it).
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("only the server's owner can manage users; {caller} is not the owner")]
    OwnerOnly { caller: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Build(#[from] wharf_build::BuildError),
    #[error(transparent)]
    Control(#[from] wharf_control::ControlError),
    #[error(transparent)]
    Secrets(#[from] wharf_secrets::SecretsError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request body field that is unknown, unsupported or of the wrong form.
    #[error(transparent)]
    Field(#[from] wharf_api::fields::FieldError),
    #[error("{0}")]
    NotFound(String),
    /// A Google API surface Wharf does not implement (501 `UNIMPLEMENTED`), named.
    #[error("{0}")]
    Unimplemented(String),
    #[error("{method} is not a method of {path}; the Allow header lists the methods it takes")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    Internal(String),
    /// Too many failed console sign-ins from one address (429 with `Retry-After`).
    #[error(transparent)]
    TooManySignIns(#[from] crate::server::console::rate_limit::TooManyFailures),
    #[error(
        "the request body is larger than the server accepts ({limit} bytes, set by --max-api-body-bytes); send a smaller resource"
    )]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {}s; send it at once", .after.as_secs())]
    BodyTimeout { after: std::time::Duration },
}

impl ApiError {
    /// The one place an API failure gets its `google.rpc.Code` (and so its HTTP status).
    fn code(&self) -> Code {
        use ImageError as I;
        match self {
            ApiError::Auth(AuthError::Store(_) | AuthError::Random) => Code::Internal,
            ApiError::Auth(_) => Code::Unauthenticated,
            ApiError::Cookie(e) if e.is_internal() => Code::Internal,
            ApiError::Cookie(e) if e.is_refusal() => Code::PermissionDenied,
            ApiError::Cookie(_) => Code::Unauthenticated,
            ApiError::Denied(_) | ApiError::OwnerOnly { .. } => Code::PermissionDenied,
            ApiError::Account(e) => match e {
                AccountError::InvalidArgument(_) => Code::InvalidArgument,
                AccountError::AlreadyExists { .. } => Code::AlreadyExists,
                AccountError::NotFound { .. } => Code::NotFound,
                AccountError::DefaultAccount { .. } => Code::FailedPrecondition,
                AccountError::KeyGeneration { .. }
                | AccountError::Store(_)
                | AccountError::Policy(_)
                | AccountError::Random(_) => Code::Internal,
            },
            ApiError::InvalidArgument(_) | ApiError::Field(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::MethodNotAllowed { .. } | ApiError::Unimplemented(_) => Code::Unimplemented,
            ApiError::Internal(_) => Code::Internal,
            ApiError::TooManySignIns(_) => Code::ResourceExhausted,
            ApiError::BodyTooLarge { .. } => Code::InvalidArgument,
            ApiError::BodyTimeout { .. } => Code::DeadlineExceeded,
            ApiError::Control(e) => e.code(),
            ApiError::Build(e) => match e {
                wharf_build::BuildError::Invalid(_)
                | wharf_build::BuildError::SourceTooLarge { .. }
                | wharf_build::BuildError::Upload(_) => Code::InvalidArgument,
                wharf_build::BuildError::NotFound(_) => Code::NotFound,
                wharf_build::BuildError::NotRunning(_) => Code::FailedPrecondition,
                wharf_build::BuildError::Source { .. }
                | wharf_build::BuildError::Record(_)
                | wharf_build::BuildError::Buildah(_) => Code::Internal,
            },
            ApiError::Secrets(e) => e.code(),
            ApiError::Policy(e) => policy_code(e),
            ApiError::Image(e) => match e {
                I::BlobUnknown { .. } | I::ManifestUnknown { .. } | I::NameUnknown(_) => Code::NotFound,
                I::DigestMismatch { .. }
                | I::DigestInvalid(_)
                | I::ManifestInvalid(_)
                | I::ManifestBlobUnknown { .. }
                | I::NameInvalid(_)
                | I::TagInvalid(_)
                | I::ReferenceInvalid(_)
                | I::UnsafeLayer { .. }
                | I::LayerLimit { .. }
                | I::ImageFile(HostFileError::NotRegular { .. } | HostFileError::TooLarge { .. }) => {
                    Code::InvalidArgument
                }
                I::Pull { .. } => Code::Unavailable,
                I::UploadUnknown(_) | I::UploadOutOfOrder { .. } => Code::FailedPrecondition,
                I::BlobTooLarge { .. } => Code::InvalidArgument,
                I::TooManyUploads { .. } => Code::ResourceExhausted,
                I::ImageFile(_) | I::Unpack { .. } | I::Io { .. } | I::Task(_) | I::Store(_) => Code::Internal,
            },
        }
    }
}

fn policy_code(e: &wharf_iam::policy::PolicyError) -> Code {
    use wharf_iam::policy::PolicyError as P;
    match e {
        P::UnknownRole(_) | P::Member { .. } | P::Condition(_) | P::Version(_) => Code::InvalidArgument,
        P::EtagMismatch { .. } => Code::Aborted,
        P::Corrupt { .. } | P::Store(_) => Code::Internal,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = match self {
            // INVALID_ARGUMENT, but HTTP says precisely what was wrong.
            ApiError::BodyTooLarge { .. } | ApiError::Build(wharf_build::BuildError::SourceTooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            // HTTP's own answer to a wrong method, with Google's body.
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = ?self, "API request failed");
            "Internal error; see the wharf server log.".to_owned()
        } else {
            self.to_string()
        };
        let mut error = serde_json::json!({"code": status.as_u16(), "message": message, "status": code.name()});
        if code == Code::InvalidArgument {
            // google.rpc.BadRequest: which field was wrong, when the error knows it.
            let field = match &self {
                ApiError::Field(e) => e.field.clone(),
                ApiError::Secrets(e) => e.field().unwrap_or_default().to_owned(),
                _ => String::new(),
            };
            error["details"] = serde_json::json!([{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }]);
        }
        let retry_after = match &self {
            ApiError::TooManySignIns(e) => Some(e.retry_after_seconds),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            error["details"] = serde_json::json!([{
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{seconds}s"),
            }]);
        }
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        if matches!(
            self,
            ApiError::BodyTooLarge { .. }
                | ApiError::BodyTimeout { .. }
                | ApiError::Build(wharf_build::BuildError::SourceTooLarge { .. })
        ) {
            // The body was not read to its end, so this connection cannot carry another
            // request: say so, or a client reusing it sees it closed under its next request.
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}

/// The API's routes. JSON bodies over `max_body_bytes` are refused with a 413. The OIDC
/// discovery document and the JWKS are public; everything else is authenticated.
pub fn router(platform: Platform, max_body_bytes: usize) -> Router {
    let public = identity::public_routes().merge(super::console::routes()).with_state(platform.clone());
    let authenticated = Router::new()
        .merge(identity::routes())
        .merge(services::routes())
        .merge(domains::routes())
        .merge(iam::routes())
        .merge(operations::routes())
        .merge(jobs::routes())
        .merge(logging::routes())
        .merge(builds::routes())
        .merge(secrets::routes())
        .merge(usage::routes())
        .merge(service_metrics::routes())
        .route("/wharf/v1/images", get(list_images).delete(delete_image))
        .route("/wharf/v1/images:pull", post(pull_image))
        .route("/wharf/v1/images:gc", post(collect_image_garbage))
        .route("/wharf/v1/logs", get(read_logs))
        .fallback(|request: Request| async move {
            ApiError::NotFound(format!("{} {} is not an API method", request.method(), request.uri().path()))
        })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(platform.clone(), authenticate));
    iam::token_route()
        .merge(authenticated)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(BodyLimit(max_body_bytes)))
        .with_state(platform)
        .merge(public)
}

/// A known path with a method it does not take: `405` with a `google.rpc.Status` body (axum
/// adds the `Allow` header).
async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed { method: request.method().to_string(), path: request.uri().path().to_owned() }
}

/// The one place every API request is authenticated. The caller's [`wharf_iam::Principal`]
/// rides in the request's extensions for the handler's authorization check.
/// It also writes the admin audit log: every mutation (any method but GET and HEAD) and every
/// refusal (401, 403), with who, what and the outcome ([`audit`]).
async fn authenticate(State(platform): State<Platform>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // Without an Authorization header, the console's session cookie (and, for a change, its
    // CSRF token) stands for the credential the user signed in with.
    let authenticated = match header {
        Some(_) => platform.iam.authenticate(header).map_err(ApiError::from),
        None => match platform.console_sessions.authenticate_cookie(&method, request.headers()) {
            Ok(Some(credential)) => {
                platform.iam.authenticate(Some(&format!("Bearer {}", credential.as_str()))).map_err(ApiError::from)
            }
            Ok(None) => Err(ApiError::Auth(AuthError::Missing)),
            Err(e) => Err(ApiError::from(e)),
        },
    };
    let (caller, response) = match authenticated {
        Ok(principal) => {
            let caller = principal.name();
            request.extensions_mut().insert(principal);
            (caller, next.run(request).await)
        }
        Err(e) => {
            let caller = match &e {
                ApiError::Auth(AuthError::Missing) => "anonymous",
                ApiError::Cookie(_) => "console session",
                _ => "invalid credentials",
            };
            (caller.to_owned(), e.into_response())
        }
    };
    let status = response.status();
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if refused || !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD) {
        audit(&platform, &caller, &method, &path, status).await;
    }
    response
}

/// One admin audit entry (`wharf logs read --audit`): the caller, the method and resource
/// path, and whether it was allowed (denied for 401/403; the 403's permission is in the
/// server log's `permission denied` line).
pub(crate) async fn audit(
    platform: &Platform,
    caller: &str,
    method: &axum::http::Method,
    path: &str,
    status: StatusCode,
) {
    let outcome = match status {
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "denied",
        _ => "allowed",
    };
    let severity = if outcome == "allowed" { "NOTICE" } else { "WARNING" };
    let message = format!("{caller} {method} {path}: {outcome} ({})", status.as_u16());
    let payload = serde_json::json!({
        "principal": caller,
        "method": method.as_str(),
        "resource": path,
        "outcome": outcome,
        "status": status.as_u16(),
    });
    platform.logs.audit(severity, message, payload).await;
}

/// The authenticated caller, as the middleware left it in the request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Principal>().cloned().map(Caller).ok_or(ApiError::Auth(AuthError::Missing))
    }
}

/// How a resource's `creator` and `lastModifier` name a principal, as Cloud Run does: the
/// user's or service account's email; the server's owner is `owner`.
pub fn principal_email(principal: &Principal) -> String {
    match principal {
        Principal::Owner => "owner".to_owned(),
        Principal::User(email) | Principal::ServiceAccount(email) => email.clone(),
    }
}

/// The one authorization check of every handler: `caller` must hold `permission` on
/// `resource` (directly or through the project's policy), else 403 `PERMISSION_DENIED`.
pub fn authorize(
    platform: &Platform,
    caller: &Principal,
    permission: &'static str,
    resource: &Resource,
) -> Result<(), ApiError> {
    Ok(platform.iam.authorize(Some(caller), permission, resource)?)
}

/// The one way an IAM refusal becomes an API error (403 naming the permission, logged), whether
/// it comes through [`authorize`] or a handler's own `iam.authorize(..)?`.
impl From<AuthorizeError> for ApiError {
    fn from(error: AuthorizeError) -> Self {
        match error {
            AuthorizeError::Denied(denied) => {
                tracing::info!(caller = %denied.principal, permission = denied.permission, resource = %denied.resource, "permission denied");
                ApiError::Denied(denied)
            }
            AuthorizeError::Policy(e) => ApiError::Policy(e),
        }
    }
}

/// A template's `serviceAccount` (revision or task): the caller needs
/// `iam.serviceAccounts.actAs` on it (the owner passes), and it must be one of the project's
/// accounts (its default one included). Empty means the default: nothing to check.
pub fn check_service_account(
    platform: &Platform,
    caller: &Principal,
    project: &str,
    field: &str,
    email: &str,
) -> Result<(), ApiError> {
    if email.is_empty() {
        return Ok(());
    }
    authorize(platform, caller, perm::SERVICE_ACCOUNTS_ACT_AS, &Resource::service_account(project, email))?;
    match platform.iam.service_account(project, email) {
        Ok(_) => Ok(()),
        Err(AccountError::NotFound { .. }) => Err(ApiError::Field(wharf_api::fields::FieldError {
            field: field.to_owned(),
            kind: wharf_api::fields::FieldErrorKind::Invalid(format!(
                "service account {email} does not exist in project {project}: create it with `wharf iam service-accounts create NAME --project {project}`, or name an existing one"
            )),
        })),
        Err(e) => Err(e.into()),
    }
}

/// Wharf's image store, registry and instance logs are server-wide, not per project: their
/// permissions (`artifactregistry.*`, `logging.logEntries.list`) are checked on this project.
pub const SERVER_WIDE_PROJECT: &str = wharf_registry::SERVER_WIDE_PROJECT;

fn server_wide() -> Resource {
    Resource::project(SERVER_WIDE_PROJECT)
}

#[derive(serde::Serialize)]
struct ImageList {
    images: Vec<ImageSummary>,
}

async fn list_images(State(platform): State<Platform>, Caller(caller): Caller) -> Result<Json<ImageList>, ApiError> {
    authorize(&platform, &caller, perm::IMAGES_DOWNLOAD, &server_wide())?;
    Ok(Json(ImageList { images: platform.images.list_images()? }))
}

/// Expires abandoned uploads and removes blobs and snapshots no manifest, revision, job or
/// execution needs (older than the server's grace period).
async fn collect_image_garbage(
    State(platform): State<Platform>,
    Caller(caller): Caller,
) -> Result<Json<super::housekeeping::HousekeepingReport>, ApiError> {
    authorize(&platform, &caller, perm::IMAGES_DELETE, &server_wide())?;
    match platform.housekeeping.collect().await {
        Ok(report) => Ok(Json(report)),
        Err(super::housekeeping::HousekeepingError::Image(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Internal(format!(
            "{e}: {}",
            std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()
        ))),
    }
}

#[derive(Deserialize)]
struct PullRequest {
    image: String,
}

async fn pull_image(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    ApiJson(request): ApiJson<PullRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&platform, &caller, perm::IMAGES_UPLOAD, &server_wide())?;
    let image = platform.resolver.resolve(&request.image).await?;
    platform.resolver.snapshots(&image).await?;
    Ok(Json(serde_json::json!({
        "image": request.image,
        "repository": image.repository,
        "digest": image.digest,
        "layers": image.layers,
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogsQuery {
    service: Option<String>,
    revision: Option<String>,
    job: Option<String>,
    execution: Option<String>,
    task: Option<u32>,
    severity: Option<String>,
    limit: Option<usize>,
    after_id: Option<i64>,
    /// Only the admin audit log.
    audit: Option<bool>,
}

/// Log entries, newest last: `?service=&revision=&job=&execution=&task=&severity=&limit=&afterId=`;
/// `?audit=true` reads the admin audit log.
async fn read_logs(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Query(q): Query<LogsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&platform, &caller, perm::LOGS_LIST, &server_wide())?;
    let min_severity = match &q.severity {
        None => None,
        Some(s) => Some(wharf_runtime::logs::severity_number(s).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "severity {s:?} is not one of DEFAULT, DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL, ALERT, EMERGENCY"
            ))
        })?),
    };
    let filter = wharf_runtime::logs::LogFilter {
        service: q.service,
        revision: q.revision,
        job: q.job,
        execution: q.execution,
        task_index: q.task,
        instance: q.audit.unwrap_or(false).then(|| wharf_runtime::logs::AUDIT_INSTANCE.to_owned()),
        min_severity,
        after_id: q.after_id,
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
        ..wharf_runtime::logs::LogFilter::default()
    };
    let entries = platform.logs.query(&filter).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(serde_json::json!({ "entries": entries })))
}

#[derive(Deserialize)]
struct DeleteQuery {
    reference: String,
}

/// Deletes `name:tag` (the tag) or `name@digest` (the manifest and its tags).
async fn delete_image(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    authorize(&platform, &caller, perm::IMAGES_DELETE, &server_wide())?;
    let (repo, reference) = split_local_reference(&query.reference)?;
    platform.images.delete_manifest(&repo, &reference)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Splits `[host:port/]name(:tag|@digest)` into the local repository and the tag or digest.
/// A leading registry host is dropped: this API addresses Wharf's own registry.
pub fn split_local_reference(input: &str) -> Result<(String, String), ApiError> {
    let bad = |why: &str| ApiError::InvalidArgument(format!("image reference {input:?} {why}"));
    let (name, reference) = if let Some((name, digest)) = input.split_once('@') {
        (name, digest.to_owned())
    } else {
        let slash = input.rfind('/').map_or(0, |i| i + 1);
        match input[slash..].rfind(':') {
            Some(i) => (&input[..slash + i], input[slash + i + 1..].to_owned()),
            None => return Err(bad("needs a :tag or @digest")),
        }
    };
    let name = match name.split_once('/') {
        Some((first, rest)) if first.contains(':') || first.contains('.') || first == "localhost" => rest,
        _ => name,
    };
    wharf_image::reference::validate_repository(name).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    Ok((name.to_owned(), reference))
}

/// A request's query parameters, read the way every RPC reads them.
#[derive(Debug, Default)]
pub struct Params(std::collections::HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let Query(map) = Query::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidArgument(format!("the query string is not valid: {e}")))?;
        Ok(Params(map))
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A boolean parameter (`validateOnly`, `allowMissing`, `force`): `true`/`false`, absent
    /// is false.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false" | "0" | "") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => {
                Err(ApiError::InvalidArgument(format!("{name}={other:?} is not a boolean: use true or false")))
            }
        }
    }

    /// `pageSize` and `pageToken`.
    pub fn page(&self) -> Result<wharf_control::paging::PageRequest, ApiError> {
        let size = self
            .get("pageSize")
            .map(|n| {
                n.parse::<usize>().map_err(|_| {
                    ApiError::InvalidArgument(format!("pageSize {n:?} is not a number of items (0 means the default)"))
                })
            })
            .transpose()?;
        Ok(wharf_control::paging::PageRequest::new(size, self.get("pageToken").unwrap_or_default()))
    }
}

/// How long the API waits for a whole JSON body once its headers are in: a client trickling
/// a body would otherwise hold its connection (and a handler task) for as long as it likes.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The API's body limit, for the error that names it.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

/// A JSON body parsed as the API reads one: enum numbers become names first. A body over
/// the limit is a 413 naming it; one that takes longer than 30 s to arrive, a 408.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let mut value = read_json_body(request, state).await?;
        wharf_api::enums::decode_ints(&mut value);
        Ok(ApiJson(wharf_api::fields::parse(value)?))
    }
}

/// A JSON body read under the same limits as [`ApiJson`], left as JSON for a handler whose
/// resource reads itself strictly (Secret Manager's).
pub struct JsonBody(pub serde_json::Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Ok(JsonBody(read_json_body(request, state).await?))
    }
}

/// Reads a request's JSON body (an empty body is `{}`): a 413 over the limit, a 408 when it
/// takes longer than [`BODY_READ_TIMEOUT`].
async fn read_json_body<S: Send + Sync>(request: Request, state: &S) -> Result<serde_json::Value, ApiError> {
    use axum::extract::FromRequest as _;
    let limit = request.extensions().get::<BodyLimit>().map(|l| l.0);
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::Bytes::from_request(request, state));
    let bytes =
        read.await.map_err(|_| ApiError::BodyTimeout { after: BODY_READ_TIMEOUT })?.map_err(|e| match limit {
            Some(limit) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge { limit },
            _ => ApiError::InvalidArgument(format!("cannot read the request body: {e}")),
        })?;
    if bytes.is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    // serde_json's message names a position, never the body's content (which may be a secret).
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::InvalidArgument(format!("the request body is not valid JSON: {e}")))
}

/// A response in the API's JSON, with integer enums when the client asked for them.
pub fn respond(query: Option<&str>, resource: &impl serde::Serialize) -> Response {
    let mut value = serde_json::to_value(resource).unwrap_or_default();
    if wharf_api::enums::wants_ints(query) {
        wharf_api::enums::encode_as_ints(&mut value);
    }
    Json(value).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        let split = |s| split_local_reference(s).map_err(|e| e.to_string());
        assert_eq!(split("hello:v1"), Ok(("hello".into(), "v1".into())));
        assert_eq!(split("127.0.0.1:5000/team/app:v2"), Ok(("team/app".into(), "v2".into())));
        assert_eq!(split("app@sha256:abc"), Ok(("app".into(), "sha256:abc".into())));
        split("hello").unwrap_err();
        split("Bad:v1").unwrap_err();
    }
}
