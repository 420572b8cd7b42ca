//! Cloud Run's domain mappings in its v1 API:
//! `/apis/domains.cloudrun.com/v1/namespaces/{project}/domainmappings[/{domain}]` (create,
//! list, get, delete), authorized with `run.domainmappings.*` on the project. The work is
//! [`wharf_control::ControlPlane`]'s; this only reads requests and renders answers.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use wharf_api::domains::DomainMapping;
use wharf_iam::Resource;
use wharf_iam::roles::perm;

use super::{ApiError, ApiJson, Caller, Params, authorize, respond};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    let base = "/apis/domains.cloudrun.com/v1/namespaces/{project}/domainmappings";
    Router::new().route(base, get(list).post(create)).route(&format!("{base}/{{domain}}"), get(get_one).delete(delete))
}

async fn create(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path(project): Path<String>,
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(body): ApiJson<DomainMapping>,
) -> Result<Response, ApiError> {
    authorize(&platform, &caller, perm::DOMAIN_MAPPINGS_CREATE, &Resource::project(&project))?;
    if !body.kind.is_empty() && body.kind != wharf_api::domains::KIND {
        return Err(ApiError::InvalidArgument(format!("kind is {:?}; it must be DomainMapping", body.kind)));
    }
    // Knative's dry run is `dryRun=All`; Google's `validateOnly` is taken too.
    let dry_run = params.get("dryRun").is_some_and(|v| v == "All") || params.flag("validateOnly")?;
    let mapping = platform.control.create_domain_mapping(&project, body, &caller.name(), dry_run)?;
    Ok(respond(raw.as_deref(), &mapping))
}

async fn list(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path(project): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authorize(&platform, &caller, perm::DOMAIN_MAPPINGS_LIST, &Resource::project(&project))?;
    Ok(respond(raw.as_deref(), &platform.control.list_domain_mappings(&project)?))
}

async fn get_one(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, domain)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authorize(&platform, &caller, perm::DOMAIN_MAPPINGS_GET, &Resource::project(&project))?;
    Ok(respond(raw.as_deref(), &platform.control.get_domain_mapping(&project, &domain)?))
}

/// Answers as Knative does: a `Status` saying the mapping is gone.
async fn delete(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, domain)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authorize(&platform, &caller, perm::DOMAIN_MAPPINGS_DELETE, &Resource::project(&project))?;
    let deleted = platform.control.delete_domain_mapping(&project, &domain)?;
    let status = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Success",
        "details": {
            "name": deleted.metadata.name,
            "group": "domains.cloudrun.com",
            "kind": "domainmappings",
            "uid": deleted.metadata.uid,
        },
    });
    Ok(respond(raw.as_deref(), &status))
}
