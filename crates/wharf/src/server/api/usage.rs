//! `GET /wharf/v1/projects/{project}/locations/{location}/services/{service}/usage`: a
//! service's usage in Cloud Run's billing units, with and without CPU throttling
//! ([`wharf_logging::usage`]). Needs `run.services.get` on the service.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use wharf_iam::Resource;
use wharf_iam::roles::perm;
use wharf_logging::usage::{ServiceUsage, service_usage};

use super::{ApiError, Caller, authorize};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    Router::new().route("/wharf/v1/projects/{project}/locations/{location}/services/{service}/usage", get(usage))
}

async fn usage(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service)): Path<(String, String, String)>,
) -> Result<Json<ServiceUsage>, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::SERVICES_GET, &Resource::service(&project, &location, &service))?;
    // A service that does not exist is a 404, not zero usage.
    platform.control.get_service(&parent, &service)?;
    Ok(Json(service_usage(&platform.metrics.snapshot(), &project, &location, &service)))
}
