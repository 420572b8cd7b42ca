//! `/v2/projects/{project}/locations/{location}/services[/{service}[/revisions[/{revision}]]]`.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use wharf_api::Service;

use super::{ApiError, ApiJson, Params, respond};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    let base = "/v2/projects/{project}/locations/{location}/services";
    Router::new()
        .route(base, get(list).post(create))
        .route(&format!("{base}/{{service}}"), get(get_one).patch(update).delete(delete))
        .route(&format!("{base}/{{service}}/revisions"), get(list_revisions))
        .route(&format!("{base}/{{service}}/revisions/{{revision}}"), get(get_revision).delete(delete_revision))
}

async fn create(
    State(platform): State<Platform>,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(mut body): ApiJson<Service>,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    check_secrets(&platform, &project, &mut body)?;
    let service_id = params
        .get("serviceId")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::InvalidArgument("serviceId is required: POST .../services?serviceId=NAME".into()))?;
    let op = platform.control.create_service(&parent, service_id, body, params.flag("validateOnly")?).await?;
    Ok(respond(raw.as_deref(), &op))
}

async fn list(
    State(platform): State<Platform>,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let list = platform.control.list_services(&parent, &params.page()?)?;
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
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(mut body): ApiJson<Service>,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    check_secrets(&platform, &project, &mut body)?;
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
        .update_service(&parent, &service, body, mask, params.flag("allowMissing")?, params.flag("validateOnly")?)
        .await?;
    Ok(respond(raw.as_deref(), &op))
}

async fn delete(
    State(platform): State<Platform>,
    Path((project, location, service)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let etag = params.get("etag").unwrap_or_default();
    let op = platform.control.delete_service(&parent, &service, etag, params.flag("validateOnly")?).await?;
    Ok(respond(raw.as_deref(), &op))
}

async fn list_revisions(
    State(platform): State<Platform>,
    Path((project, location, service)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let list = platform.control.list_revisions(&parent, &service, &params.page()?)?;
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
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let etag = params.get("etag").unwrap_or_default();
    let op = platform.control.delete_revision(&parent, &service, &revision, etag, params.flag("validateOnly")?).await?;
    Ok(respond(raw.as_deref(), &op))
}

/// The template's secret references, qualified and checked (see
/// [`super::secrets::check_template_secrets`]).
fn check_secrets(platform: &Platform, project: &str, body: &mut Service) -> Result<(), ApiError> {
    let template = &mut body.template;
    super::secrets::check_template_secrets(
        platform,
        project,
        &template.service_account,
        &mut template.containers,
        &mut template.volumes,
    )
}
