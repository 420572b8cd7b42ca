//! `/v2/projects/{project}/locations/{location}/operations/{operation}` (GET) and its
//! `:wait` method (POST).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;

use super::{ApiError, ApiJson, respond};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    Router::new().route("/v2/projects/{project}/locations/{location}/operations/{operation}", get(get_one).post(wait))
}

async fn get_one(
    State(platform): State<Platform>,
    Path((project, location, operation)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let name = format!("projects/{project}/locations/{location}/operations/{operation}");
    Ok(respond(raw.as_deref(), &platform.control.get_operation(&name)?))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct WaitRequest {
    timeout: Option<String>,
}

async fn wait(
    State(platform): State<Platform>,
    Path((project, location, operation)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ApiJson(request): ApiJson<WaitRequest>,
) -> Result<Response, ApiError> {
    let Some(operation) = operation.strip_suffix(":wait") else {
        return Err(ApiError::NotFound(format!(
            "POST {operation} is not an API method; did you mean {operation}:wait?"
        )));
    };
    let timeout = match &request.timeout {
        Some(t) => wharf_control::validate::parse_duration("timeout", t)?,
        None => Duration::from_secs(60),
    }
    .min(Duration::from_secs(600));
    let name = format!("projects/{project}/locations/{location}/operations/{operation}");
    Ok(respond(raw.as_deref(), &platform.control.wait_operation(&name, timeout).await?))
}
