//! `/v2/projects/{project}/locations/{location}/jobs[/{job}[:run]]`, executions (with
//! `:cancel`) and tasks.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use wharf_api::jobs::{CancelExecutionRequest, Job, RunJobRequest};

use super::{ApiError, ApiJson, Params, respond};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    let base = "/v2/projects/{project}/locations/{location}/jobs";
    Router::new()
        .route(base, get(list).post(create))
        .route(&format!("{base}/{{job}}"), get(get_one).patch(update).delete(delete).post(run))
        .route(&format!("{base}/{{job}}/executions"), get(list_executions))
        .route(
            &format!("{base}/{{job}}/executions/{{execution}}"),
            get(get_execution).delete(delete_execution).post(cancel),
        )
        .route(&format!("{base}/{{job}}/executions/{{execution}}/tasks"), get(list_tasks))
        .route(&format!("{base}/{{job}}/executions/{{execution}}/tasks/{{task}}"), get(get_task))
}

async fn create(
    State(p): State<Platform>,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(mut body): ApiJson<Job>,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    check_secrets(&p, &project, &mut body)?;
    let id = params
        .get("jobId")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::InvalidArgument("jobId is required: POST .../jobs?jobId=NAME".into()))?;
    Ok(respond(raw.as_deref(), &p.control.create_job(&parent, id, body, params.flag("validateOnly")?).await?))
}

async fn list(
    State(p): State<Platform>,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &p.control.list_jobs(&parent, &params.page()?)?))
}

async fn get_one(
    State(p): State<Platform>,
    Path((project, location, job)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &p.control.get_job(&parent, &job)?))
}

async fn update(
    State(p): State<Platform>,
    Path((project, location, job)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(mut body): ApiJson<Job>,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    check_secrets(&p, &project, &mut body)?;
    if !body.name.is_empty() && !body.name.ends_with(&format!("/jobs/{job}")) {
        return Err(ApiError::InvalidArgument(format!("the body names job {:?} but the URL names {job:?}", body.name)));
    }
    let (allow_missing, validate_only) = (params.flag("allowMissing")?, params.flag("validateOnly")?);
    Ok(respond(raw.as_deref(), &p.control.update_job(&parent, &job, body, allow_missing, validate_only).await?))
}

async fn delete(
    State(p): State<Platform>,
    Path((project, location, job)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    let etag = params.get("etag").unwrap_or_default();
    Ok(respond(raw.as_deref(), &p.control.delete_job(&parent, &job, etag, params.flag("validateOnly")?).await?))
}

/// `POST .../jobs/{job}:run`.
async fn run(
    State(p): State<Platform>,
    Path((project, location, job)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ApiJson(body): ApiJson<RunJobRequest>,
) -> Result<Response, ApiError> {
    let Some(job) = job.strip_suffix(":run") else {
        return Err(ApiError::NotFound(format!("POST {job} is not an API method; did you mean {job}:run?")));
    };
    let parent = p.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &p.control.run_job(&parent, job, body).await?))
}

async fn list_executions(
    State(p): State<Platform>,
    Path((project, location, job)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    if job != "-" {
        p.control.get_job(&parent, &job)?;
    }
    Ok(respond(raw.as_deref(), &p.control.list_executions(&parent, &job, &params.page()?)?))
}

async fn get_execution(
    State(p): State<Platform>,
    Path((project, location, job, execution)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &p.control.get_execution(&parent, &job, &execution)?))
}

async fn delete_execution(
    State(p): State<Platform>,
    Path((project, location, job, execution)): Path<(String, String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    let etag = params.get("etag").unwrap_or_default();
    let op = p.control.delete_execution(&parent, &job, &execution, etag, params.flag("validateOnly")?)?;
    Ok(respond(raw.as_deref(), &op))
}

/// `POST .../executions/{execution}:cancel`.
async fn cancel(
    State(p): State<Platform>,
    Path((project, location, job, execution)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
    ApiJson(body): ApiJson<CancelExecutionRequest>,
) -> Result<Response, ApiError> {
    let Some(execution) = execution.strip_suffix(":cancel") else {
        return Err(ApiError::NotFound(format!(
            "POST {execution} is not an API method; did you mean {execution}:cancel?"
        )));
    };
    let parent = p.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &p.control.cancel_execution(&parent, &job, execution, &body)?))
}

async fn list_tasks(
    State(p): State<Platform>,
    Path((project, location, job, execution)): Path<(String, String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &p.control.list_tasks(&parent, &job, &execution, &params.page()?)?))
}

async fn get_task(
    State(p): State<Platform>,
    Path((project, location, job, execution, task)): Path<(String, String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    Ok(respond(raw.as_deref(), &p.control.get_task(&parent, &job, &execution, &task)?))
}

/// The task template's secret references, qualified and checked (see
/// [`super::secrets::check_template_secrets`]).
fn check_secrets(p: &Platform, project: &str, body: &mut Job) -> Result<(), ApiError> {
    let task = &mut body.template.template;
    super::secrets::check_template_secrets(p, project, &task.service_account, &mut task.containers, &mut task.volumes)
}
