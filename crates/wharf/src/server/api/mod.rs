//! The admin API on `--api-addr`: Cloud Run Admin API v2 resources under `/v2/projects/...`
//! ([`services`], [`operations`]) and Wharf's own image endpoints under `/wharf/v1/images`.
//! Every request is authenticated first, in one middleware; handlers only parse the request
//! into a control-plane call; errors are rendered once, in [`ApiError`], as Google APIs render
//! them (`{"error": {"code", "message", "status", "details"}}`, with a `google.rpc.BadRequest`
//! naming the field for invalid arguments). Request bodies are read strictly
//! ([`wharf_api::fields`]): unknown fields and Cloud Run fields Wharf lacks are refused by name.

mod identity;
mod jobs;
mod operations;
mod services;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wharf_api::Code;
use wharf_iam::AuthError;
use wharf_image::ImageError;
use wharf_image::content::ImageSummary;
use wharf_image::hostfile::HostFileError;

use super::Platform;

/// An API failure, classified into an HTTP status and a Google API error status once.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The caller lacks a permission (403 `PERMISSION_DENIED`, worded as Google words it).
    #[error(transparent)]
    Denied(#[from] wharf_iam::Denied),
    #[error("the IAM policy cannot be read: {0}")]
    Policy(#[from] wharf_iam::policy::PolicyError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Control(#[from] wharf_control::ControlError),
    #[error("{0}")]
    InvalidArgument(String),
    /// A request body field that is unknown, unsupported or of the wrong form.
    #[error(transparent)]
    Field(#[from] wharf_api::fields::FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not a method of {path}; the Allow header lists the methods it takes")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    Internal(String),
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
            ApiError::Denied(_) => Code::PermissionDenied,
            ApiError::Policy(_) => Code::Internal,
            ApiError::InvalidArgument(_) | ApiError::Field(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::MethodNotAllowed { .. } => Code::Unimplemented,
            ApiError::Internal(_) => Code::Internal,
            ApiError::BodyTooLarge { .. } => Code::InvalidArgument,
            ApiError::BodyTimeout { .. } => Code::DeadlineExceeded,
            ApiError::Control(e) => e.code(),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = match self {
            // INVALID_ARGUMENT, but HTTP says precisely what was wrong.
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
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
                _ => String::new(),
            };
            error["details"] = serde_json::json!([{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }]);
        }
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if matches!(self, ApiError::BodyTooLarge { .. } | ApiError::BodyTimeout { .. }) {
            // The body was not read to its end, so this connection cannot carry another
            // request: say so, or a client reusing it sees it closed under its next request.
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<wharf_iam::AuthorizeError> for ApiError {
    fn from(e: wharf_iam::AuthorizeError) -> Self {
        match e {
            wharf_iam::AuthorizeError::Denied(denied) => ApiError::Denied(denied),
            wharf_iam::AuthorizeError::Policy(e) => ApiError::Policy(e),
        }
    }
}

/// The API's routes. JSON bodies over `max_body_bytes` are refused with a 413. The OIDC
/// discovery document and the JWKS are public; everything else is authenticated.
pub fn router(platform: Platform, max_body_bytes: usize) -> Router {
    let public = identity::public_routes().with_state(platform.clone());
    Router::new()
        .merge(identity::routes())
        .merge(services::routes())
        .merge(operations::routes())
        .merge(jobs::routes())
        .route("/wharf/v1/images", get(list_images).delete(delete_image))
        .route("/wharf/v1/images:pull", post(pull_image))
        .route("/wharf/v1/images:gc", post(collect_image_garbage))
        .route("/wharf/v1/logs", get(read_logs))
        .fallback(|request: Request| async move {
            ApiError::NotFound(format!("{} {} is not an API method", request.method(), request.uri().path()))
        })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(platform.clone(), authenticate))
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
async fn authenticate(State(platform): State<Platform>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match platform.iam.authenticate(header) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(serde::Serialize)]
struct ImageList {
    images: Vec<ImageSummary>,
}

async fn list_images(State(platform): State<Platform>) -> Result<Json<ImageList>, ApiError> {
    Ok(Json(ImageList { images: platform.images.list_images()? }))
}

/// Expires abandoned uploads and removes blobs and snapshots no manifest, revision, job or
/// execution needs (older than the server's grace period).
async fn collect_image_garbage(
    State(platform): State<Platform>,
) -> Result<Json<super::housekeeping::HousekeepingReport>, ApiError> {
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
    ApiJson(request): ApiJson<PullRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
}

/// Log entries, newest last: `?service=&revision=&job=&execution=&task=&severity=&limit=&afterId=`.
async fn read_logs(
    State(platform): State<Platform>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
        instance: None,
        min_severity,
        after_id: q.after_id,
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
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
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
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
        let limit = request.extensions().get::<BodyLimit>().map(|l| l.0);
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::Bytes::from_request(request, state));
        let bytes =
            read.await.map_err(|_| ApiError::BodyTimeout { after: BODY_READ_TIMEOUT })?.map_err(|e| match limit {
                Some(limit) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge { limit },
                _ => ApiError::InvalidArgument(format!("cannot read the request body: {e}")),
            })?;
        let mut value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::InvalidArgument(format!("the request body is not valid JSON: {e}")))?
        };
        wharf_api::enums::decode_ints(&mut value);
        Ok(ApiJson(wharf_api::fields::parse(value)?))
    }
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
