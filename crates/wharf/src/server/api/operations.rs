//! `/v2/projects/{project}/locations/{location}/operations[/{operation}]`: list (GET on the
//! collection), get and delete, and the `:wait` method (POST).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;

use wharf_iam::Resource;
use wharf_iam::roles::perm;

use super::{ApiError, ApiJson, Caller, Params, authorize, respond};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    let base = "/v2/projects/{project}/locations/{location}/operations";
    Router::new().route(base, get(list)).route(&format!("{base}/{{operation}}"), get(get_one).delete(delete).post(wait))
}

fn full_name(project: &str, location: &str, operation: &str) -> String {
    format!("projects/{project}/locations/{location}/operations/{operation}")
}

async fn list(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::OPERATIONS_LIST, &Resource::project(&project))?;
    let filter = params.get("filter").unwrap_or_default();
    Ok(respond(raw.as_deref(), &platform.control.list_operations(&parent, filter, &params.page()?)?))
}

async fn get_one(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, operation)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::OPERATIONS_GET, &Resource::project(&project))?;
    // A build's operation is its build record's view (`builds.rs`).
    if let Some(build) = operation.strip_prefix("build-") {
        let parent = format!("projects/{project}/locations/{location}");
        let build = platform.builds.get(&parent, build)?;
        return Ok(axum::Json(super::builds::build_operation(&parent, &build)).into_response());
    }
    Ok(respond(raw.as_deref(), &platform.control.get_operation(&full_name(&project, &location, &operation))?))
}

/// `DeleteOperation`: answers `{}` (google.protobuf.Empty).
async fn delete(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, operation)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::OPERATIONS_DELETE, &Resource::project(&project))?;
    platform.control.delete_operation(&full_name(&project, &location, &operation))?;
    Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct WaitRequest {
    name: Option<String>,
    timeout: Option<String>,
}

async fn wait(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, operation)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ApiJson(request): ApiJson<WaitRequest>,
) -> Result<Response, ApiError> {
    let Some(operation) = operation.strip_suffix(":wait") else {
        return Err(ApiError::NotFound(format!(
            "POST {operation} is not an API method; did you mean {operation}:wait?"
        )));
    };
    authorize(&platform, &caller, perm::OPERATIONS_GET, &Resource::project(&project))?;
    let name = full_name(&project, &location, operation);
    if let Some(given) = request.name.as_deref().filter(|n| !n.is_empty() && *n != name) {
        return Err(ApiError::InvalidArgument(format!(
            "name {given:?} in the body is not the operation the URL names"
        )));
    }
    let timeout = match &request.timeout {
        Some(t) => wharf_control::validate::parse_duration("timeout", t)?,
        None => Duration::from_secs(60),
    }
    .min(Duration::from_secs(600));
    Ok(respond(raw.as_deref(), &platform.control.wait_operation(&name, timeout).await?))
}
