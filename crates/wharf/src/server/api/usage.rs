//! Usage in Cloud Run's billing units ([`wharf_control::usage`]), kept across restarts:
//! - `GET /wharf/v1/projects/{project}/locations/{location}/services/{service}/usage`: per
//!   revision, deleted ones included, with and without CPU throttling; needs
//!   `run.services.get` on the service;
//! - `GET /wharf/v1/projects/{project}/locations/{location}/jobs/{job}/usage`: per execution,
//!   from task run time; needs `run.jobs.get` on the job.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use wharf_control::usage::{JobUsage, ServiceUsage};
use wharf_iam::Resource;
use wharf_iam::roles::perm;

use super::{ApiError, Caller, authorize};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    Router::new()
        .route("/wharf/v1/projects/{project}/locations/{location}/services/{service}/usage", get(service_usage))
        .route("/wharf/v1/projects/{project}/locations/{location}/jobs/{job}/usage", get(job_usage))
}

async fn service_usage(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service)): Path<(String, String, String)>,
) -> Result<Json<ServiceUsage>, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::SERVICES_GET, &Resource::service(&project, &location, &service))?;
    // A service that does not exist is a 404, not zero usage.
    platform.control.get_service(&parent, &service)?;
    Ok(Json(platform.control.service_usage(&parent, &service)?))
}

async fn job_usage(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job)): Path<(String, String, String)>,
) -> Result<Json<JobUsage>, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::JOBS_GET, &Resource::job(&project, &location, &job))?;
    platform.control.get_job(&parent, &job)?;
    Ok(Json(platform.control.job_usage(&parent, &job)?))
}
