//! `/v2/projects/{project}/locations/{location}/services[/{service}[/revisions[/{revision}]]]`,
//! and a service's IAM policy methods (`{service}:getIamPolicy|setIamPolicy|testIamPermissions`).

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use wharf_api::Service;
use wharf_iam::Resource;
use wharf_iam::roles::perm;

use super::iam::{PolicyMethod, SERVICE_POLICY};
use super::{ApiError, ApiJson, Caller, Params, authorize, respond};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    let base = "/v2/projects/{project}/locations/{location}/services";
    Router::new()
        .route(base, get(list).post(create))
        .route(&format!("{base}/{{service}}"), get(get_one).patch(update).delete(delete).post(service_method))
        .route(&format!("{base}/{{service}}/revisions"), get(list_revisions))
        .route(&format!("{base}/{{service}}/revisions/{{revision}}"), get(get_revision).delete(delete_revision))
}

async fn create(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(mut body): ApiJson<Service>,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::SERVICES_CREATE, &Resource::project(&project))?;
    super::check_service_account(
        &platform,
        &caller,
        &project,
        "template.serviceAccount",
        &body.template.service_account,
    )?;
    check_secrets(&platform, &project, &mut body)?;
    body.creator = super::principal_email(&caller);
    body.last_modifier = body.creator.clone();
    let service_id = params
        .get("serviceId")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::InvalidArgument("serviceId is required: POST .../services?serviceId=NAME".into()))?;
    let op = platform.control.create_service(&parent, service_id, body, params.flag("validateOnly")?).await?;
    Ok(respond(raw.as_deref(), &op))
}

async fn list(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::SERVICES_LIST, &Resource::project(&project))?;
    let list = platform.control.list_services(&parent, &params.page()?)?;
    Ok(respond(raw.as_deref(), &list))
}

async fn get_one(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    if let Some((name, method)) = service.split_once(':') {
        if method != "getIamPolicy" {
            return Err(super::iam::not_a_method(&service, method));
        }
        return policy(&platform, &caller, &project, &location, name, PolicyMethod::Get(None));
    }
    authorize(&platform, &caller, perm::SERVICES_GET, &Resource::service(&project, &location, &service))?;
    Ok(respond(raw.as_deref(), &platform.control.get_service(&parent, &service)?))
}

async fn update(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(mut body): ApiJson<Service>,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::SERVICES_UPDATE, &Resource::service(&project, &location, &service))?;
    super::check_service_account(
        &platform,
        &caller,
        &project,
        "template.serviceAccount",
        &body.template.service_account,
    )?;
    check_secrets(&platform, &project, &mut body)?;
    // The creator stays the service's own; it is this caller's only if allowMissing creates it.
    body.creator = super::principal_email(&caller);
    body.last_modifier = body.creator.clone();
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
    Caller(caller): Caller,
    Path((project, location, service)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    let resource = Resource::service(&project, &location, &service);
    authorize(&platform, &caller, perm::SERVICES_DELETE, &resource)?;
    let etag = params.get("etag").unwrap_or_default();
    let validate_only = params.flag("validateOnly")?;
    let op = platform.control.delete_service(&parent, &service, etag, validate_only).await?;
    if !validate_only {
        // The delete is committed: a new service of the same name starts with no policy.
        platform.iam.policies.forget(&resource)?;
    }
    Ok(respond(raw.as_deref(), &op))
}

/// `POST .../services/{service}:setIamPolicy|testIamPermissions|getIamPolicy`.
async fn service_method(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    platform.control.parent(&project, &location)?;
    let (name, method) = super::iam::split_method(&service)?;
    let Some(method) = super::iam::parse_policy_method(method, body)? else {
        return Err(super::iam::not_a_method(&service, method));
    };
    policy(&platform, &caller, &project, &location, name, method)
}

fn policy(
    platform: &Platform,
    caller: &wharf_iam::Principal,
    project: &str,
    location: &str,
    service: &str,
    method: PolicyMethod,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(project, location)?;
    let resource = Resource::service(project, location, service);
    let exists = || platform.control.get_service(&parent, service).map(drop).map_err(ApiError::from);
    super::iam::policy_method(platform, caller, &resource, &SERVICE_POLICY, method, exists)
}

async fn list_revisions(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::REVISIONS_LIST, &Resource::service(&project, &location, &service))?;
    let list = platform.control.list_revisions(&parent, &service, &params.page()?)?;
    Ok(respond(raw.as_deref(), &list))
}

async fn get_revision(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service, revision)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::REVISIONS_GET, &Resource::service(&project, &location, &service))?;
    Ok(respond(raw.as_deref(), &platform.control.get_revision(&parent, &service, &revision)?))
}

async fn delete_revision(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service, revision)): Path<(String, String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::REVISIONS_DELETE, &Resource::service(&project, &location, &service))?;
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
