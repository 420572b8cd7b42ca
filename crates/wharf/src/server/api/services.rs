//! `/v2/projects/{project}/locations/{location}/services[/{service}[/revisions[/{revision}]]]`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use wharf_api::Service;

use super::{ApiError, ApiJson, respond};
use crate::server::Platform;

type Params = Query<HashMap<String, String>>;

pub fn routes() -> Router<Platform> {
    let base = "/v2/projects/{project}/locations/{location}/services";
    Router::new()
        .route(base, get(list).post(create))
        .route(&format!("{base}/{{service}}"), get(get_one).patch(update).delete(delete))
        .route(&format!("{base}/{{service}}/revisions"), get(list_revisions))
        .route(&format!("{base}/{{service}}/revisions/{{revision}}"), get(get_revision).delete(delete_revision))
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn page_size(params: &HashMap<String, String>) -> Result<Option<usize>, ApiError> {
    params
        .get("pageSize")
        .map(|n| n.parse().map_err(|_| ApiError::InvalidArgument(format!("pageSize {n:?} is not a number"))))
        .transpose()
}

async fn create(
    State(platform): State<Platform>,
    Path((project, location)): Path<(String, String)>,
    Query(params): Params,
    RawQuery(raw): RawQuery,
    ApiJson(body): ApiJson<Service>,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let service_id = params
        .get("serviceId")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::InvalidArgument("serviceId is required: POST .../services?serviceId=NAME".into()))?;
    let op = platform.control.create_service(&parent, service_id, body, flag(&params, "validateOnly")).await?;
    Ok(respond(raw.as_deref(), &op))
}

async fn list(
    State(platform): State<Platform>,
    Path((project, location)): Path<(String, String)>,
    Query(params): Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let token = params.get("pageToken").map_or("", String::as_str);
    let list = platform.control.list_services(&parent, page_size(&params)?, token)?;
    Ok(respond(raw.as_deref(), &list))
}

async fn get_one(
    State(platform): State<Platform>,
    Path((project, location, service)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &platform.control.get_service(&parent, &service)?))
}

async fn update(
    State(platform): State<Platform>,
    Path((project, location, service)): Path<(String, String, String)>,
    Query(params): Params,
    RawQuery(raw): RawQuery,
    ApiJson(body): ApiJson<Service>,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    if !body.name.is_empty() && !body.name.ends_with(&format!("/services/{service}")) {
        return Err(ApiError::InvalidArgument(format!(
            "the body names service {:?} but the URL names {service:?}",
            body.name
        )));
    }
    let mask = params
        .get("updateMask")
        .filter(|m| !m.is_empty())
        .map(|m| m.split(',').map(|p| p.trim().to_owned()).collect::<Vec<_>>());
    let op = platform
        .control
        .update_service(&parent, &service, body, mask, flag(&params, "allowMissing"), flag(&params, "validateOnly"))
        .await?;
    Ok(respond(raw.as_deref(), &op))
}

async fn delete(
    State(platform): State<Platform>,
    Path((project, location, service)): Path<(String, String, String)>,
    Query(params): Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let etag = params.get("etag").map_or("", String::as_str);
    Ok(respond(raw.as_deref(), &platform.control.delete_service(&parent, &service, etag).await?))
}

async fn list_revisions(
    State(platform): State<Platform>,
    Path((project, location, service)): Path<(String, String, String)>,
    Query(params): Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let token = params.get("pageToken").map_or("", String::as_str);
    let list = platform.control.list_revisions(&parent, &service, page_size(&params)?, token)?;
    Ok(respond(raw.as_deref(), &list))
}

async fn get_revision(
    State(platform): State<Platform>,
    Path((project, location, service, revision)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &platform.control.get_revision(&parent, &service, &revision)?))
}

async fn delete_revision(
    State(platform): State<Platform>,
    Path((project, location, service, revision)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &platform.control.delete_revision(&parent, &service, &revision).await?))
}
