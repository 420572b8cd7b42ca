//! Source builds on the API, over [`wharf_build::Builder`]:
//!
//! - `POST /wharf/v1/projects/{p}/locations/{l}/sources`: the source as a gzipped tarball
//!   (the body, streamed to disk within the server's source size limit); answers
//!   `{"bucket", "object"}`, which a submit names as its `storageSource` (Cloud Run's
//!   `SubmitBuild` takes a Cloud Storage object; Wharf stores the upload itself).
//! - `POST /v2/projects/{p}/locations/{l}/builds:submit`: Cloud Run Admin API v2's
//!   `Builds.SubmitBuild` (`storageSource`, `imageUri`, `dockerBuild` or `buildpackBuild`);
//!   answers a `SubmitBuildResponse` whose `buildOperation` carries the build in its metadata.
//! - `GET .../builds`, `GET .../builds/{id}`: build resources (status, duration, image
//!   digest, log location); `GET .../builds/{id}/log?offset=N`: the log from byte N on, as
//!   text, with the build's status in `X-Wharf-Build-Status` (the CLI follows a build this way).
//! - `POST .../builds/{id}:cancel`: stops a queued or running build (its processes killed);
//!   answers the build, `CANCELLED`. Needs `run.builds.create`, as submitting does.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use wharf_iam::Resource;
use wharf_iam::roles::perm;

use super::{ApiError, ApiJson, Caller, Params, authorize};
use crate::server::Platform;

/// How long a source upload may take to arrive.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

pub fn routes() -> Router<Platform> {
    let base = "/v2/projects/{project}/locations/{location}";
    Router::new()
        .route("/wharf/v1/projects/{project}/locations/{location}/sources", post(upload))
        .route(&format!("{base}/builds:submit"), post(submit))
        .route(&format!("{base}/builds"), get(list))
        .route(&format!("{base}/builds/{{build}}"), get(get_one).post(cancel))
        .route(&format!("{base}/builds/{{build}}/log"), get(log))
}

/// `projects/{p}/locations/{l}`, checked; builds need a concrete location.
fn parent(platform: &Platform, project: &str, location: &str) -> Result<String, ApiError> {
    if location == "-" {
        return Err(ApiError::InvalidArgument(
            "builds live in one location: name it instead of \"-\" (e.g. us-central1)".into(),
        ));
    }
    let parent = platform.control.parent(project, location)?;
    Ok(format!("projects/{}/locations/{}", parent.project, parent.location))
}

async fn upload(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    parent(&platform, &project, &location)?;
    authorize(&platform, &caller, perm::BUILDS_CREATE, &Resource::project(&project))?;
    let body = request.into_body().into_data_stream();
    let stored = tokio::time::timeout(UPLOAD_TIMEOUT, platform.builds.store_source(body))
        .await
        .map_err(|_| ApiError::BodyTimeout { after: UPLOAD_TIMEOUT })??;
    let (bucket, object) = stored;
    Ok(axum::Json(serde_json::json!({ "bucket": bucket, "object": object })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StorageSource {
    bucket: String,
    object: String,
    #[serde(default)]
    generation: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DockerBuild {
    /// Wharf's addition: the Dockerfile's path in the source (`--dockerfile`).
    #[serde(default)]
    dockerfile: Option<String>,
    /// Wharf's addition: build environment variables (`--set-build-env-vars`), passed as
    /// `--build-arg`s (the Dockerfile sees those it declares with `ARG`).
    #[serde(default)]
    environment_variables: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BuildpackBuild {
    #[serde(default)]
    base_image: Option<String>,
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    function_target: Option<String>,
    #[serde(default)]
    cache_image_uri: Option<String>,
    #[serde(default)]
    environment_variables: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    enable_automatic_updates: Option<bool>,
    #[serde(default)]
    project_descriptor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubmitBuildRequest {
    storage_source: StorageSource,
    image_uri: String,
    #[serde(default)]
    docker_build: Option<DockerBuild>,
    #[serde(default)]
    buildpack_build: Option<BuildpackBuild>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    worker_pool: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

async fn submit(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location)): Path<(String, String)>,
    ApiJson(request): ApiJson<SubmitBuildRequest>,
) -> Result<Response, ApiError> {
    let parent = parent(&platform, &project, &location)?;
    authorize(&platform, &caller, perm::BUILDS_CREATE, &Resource::project(&project))?;
    let unsupported = |field: &str, why: &str| {
        Err(ApiError::InvalidArgument(format!("{field} is not supported by Wharf's builds: {why}")))
    };
    if request.storage_source.generation.is_some() {
        return unsupported("storageSource.generation", "uploads have one generation; remove it");
    }
    if request.service_account.as_deref().is_some_and(|s| !s.is_empty()) {
        return unsupported("serviceAccount", "builds run as the server; remove it");
    }
    if request.worker_pool.as_deref().is_some_and(|s| !s.is_empty()) {
        return unsupported("workerPool", "builds run on the server; remove it");
    }
    if !request.tags.is_empty() {
        return unsupported("tags", "remove them");
    }
    let (dockerfile, base_image, build_env) = match (request.docker_build, request.buildpack_build) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidArgument("give dockerBuild or buildpackBuild, not both".into()));
        }
        (Some(docker), None) => (docker.dockerfile, None, docker.environment_variables),
        (None, buildpack) => {
            let b = buildpack.unwrap_or_default();
            if b.runtime.is_some() {
                return unsupported("buildpackBuild.runtime", "the language is detected from the source");
            }
            if b.function_target.is_some() {
                return unsupported("buildpackBuild.functionTarget", "functions are not built; serve HTTP on $PORT");
            }
            if b.cache_image_uri.is_some() {
                return unsupported("buildpackBuild.cacheImageUri", "the layer cache is kept on the server");
            }
            if b.enable_automatic_updates == Some(true) {
                return unsupported("buildpackBuild.enableAutomaticUpdates", "remove it");
            }
            if b.project_descriptor.is_some() {
                return unsupported("buildpackBuild.projectDescriptor", "remove it");
            }
            (None, b.base_image, b.environment_variables)
        }
    };
    let expected_bucket = "wharf-build-sources";
    if request.storage_source.bucket != expected_bucket {
        return Err(ApiError::InvalidArgument(format!(
            "storageSource.bucket {:?} is not {expected_bucket:?}: upload the source to /wharf/v1/{parent}/sources first",
            request.storage_source.bucket
        )));
    }
    let build = platform.builds.submit(wharf_build::SubmitRequest {
        parent: parent.clone(),
        source: request.storage_source.object,
        image_uri: request.image_uri,
        dockerfile,
        base_image: base_image.clone(),
        build_env,
    })?;
    let operation = build_operation(&parent, &build);
    Ok(axum::Json(serde_json::json!({
        "buildOperation": operation,
        "baseImageUri": base_image.unwrap_or_default(),
    }))
    .into_response())
}

/// A build as a long-running operation (`BuildOperationMetadata`, as Cloud Build has it).
pub fn build_operation(parent: &str, build: &wharf_build::Build) -> serde_json::Value {
    let mut op = serde_json::json!({
        "name": format!("{parent}/operations/build-{}", build.id),
        "metadata": {
            "@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata",
            "build": build,
        },
    });
    if build.status.is_done() {
        op["done"] = serde_json::Value::Bool(true);
        if build.status == wharf_build::BuildStatus::Success {
            op["response"] = serde_json::to_value(build).unwrap_or_default();
        } else {
            op["error"] = serde_json::json!({
                "code": wharf_api::Code::FailedPrecondition as i32,
                "message": build.failure_detail.clone().unwrap_or_default(),
            });
        }
    }
    op
}

async fn list(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let parent = parent(&platform, &project, &location)?;
    authorize(&platform, &caller, perm::BUILDS_LIST, &Resource::project(&project))?;
    Ok(axum::Json(serde_json::json!({ "builds": platform.builds.list(&parent)? })).into_response())
}

async fn get_one(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, build)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let parent = parent(&platform, &project, &location)?;
    authorize(&platform, &caller, perm::BUILDS_GET, &Resource::project(&project))?;
    Ok(axum::Json(platform.builds.get(&parent, &build)?).into_response())
}

/// `POST .../builds/{id}:cancel`.
async fn cancel(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, build)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let Some(id) = build.strip_suffix(":cancel") else {
        return Err(ApiError::NotFound(format!("POST {build} is not an API method; did you mean {build}:cancel?")));
    };
    let parent = parent(&platform, &project, &location)?;
    authorize(&platform, &caller, perm::BUILDS_CREATE, &Resource::project(&project))?;
    let cancelled = platform.builds.cancel(&parent, id, &caller.name()).await?;
    Ok(axum::Json(cancelled).into_response())
}

async fn log(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, build)): Path<(String, String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let parent = parent(&platform, &project, &location)?;
    authorize(&platform, &caller, perm::BUILDS_GET, &Resource::project(&project))?;
    let offset = match params.get("offset") {
        None => 0,
        Some(n) => n.parse::<u64>().map_err(|_| {
            ApiError::InvalidArgument(format!("offset {n:?} is not a byte offset (a whole number, 0 or more)"))
        })?,
    };
    let (bytes, build) = platform.builds.log(&parent, &build, offset)?;
    let next = offset + bytes.len() as u64;
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    let status = serde_json::to_value(build.status).ok().and_then(|v| v.as_str().map(str::to_owned));
    if let Ok(value) = HeaderValue::from_str(&status.unwrap_or_default()) {
        headers.insert("x-wharf-build-status", value);
    }
    if let Ok(value) = HeaderValue::from_str(&next.to_string()) {
        headers.insert("x-wharf-log-offset", value);
    }
    Ok(response)
}
