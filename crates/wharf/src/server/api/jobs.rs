//! `/v2/projects/{project}/locations/{location}/jobs[/{job}[:run]]`, executions (with
//! `:cancel`) and tasks, and a job's IAM policy methods
//! (`{job}:getIamPolicy|setIamPolicy|testIamPermissions`).

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use wharf_api::jobs::{CancelExecutionRequest, Job, RunJobRequest};
use wharf_iam::Resource;
use wharf_iam::roles::perm;

use super::iam::{JOB_POLICY, PolicyMethod};
use super::{ApiError, ApiJson, Caller, Params, authorize, respond};
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
    Caller(caller): Caller,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(mut body): ApiJson<Job>,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    authorize(&p, &caller, perm::JOBS_CREATE, &Resource::project(&project))?;
    super::check_service_account(
        &p,
        &caller,
        &project,
        "template.template.serviceAccount",
        &body.template.template.service_account,
    )?;
    check_secrets(&p, &project, &mut body)?;
    let id = params
        .get("jobId")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::InvalidArgument("jobId is required: POST .../jobs?jobId=NAME".into()))?;
    Ok(respond(raw.as_deref(), &p.control.create_job(&parent, id, body, params.flag("validateOnly")?).await?))
}

async fn list(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location)): Path<(String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    authorize(&p, &caller, perm::JOBS_LIST, &Resource::project(&project))?;
    Ok(respond(raw.as_deref(), &p.control.list_jobs(&parent, &params.page()?)?))
}

async fn get_one(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    if let Some((name, method)) = job.split_once(':') {
        if method != "getIamPolicy" {
            return Err(super::iam::not_a_method(&job, method));
        }
        return policy(&p, &caller, &project, &location, name, PolicyMethod::Get(None));
    }
    authorize(&p, &caller, perm::JOBS_GET, &Resource::job(&project, &location, &job))?;
    Ok(respond(raw.as_deref(), &p.control.get_job(&parent, &job)?))
}

async fn update(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
    ApiJson(mut body): ApiJson<Job>,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    authorize(&p, &caller, perm::JOBS_UPDATE, &Resource::job(&project, &location, &job))?;
    super::check_service_account(
        &p,
        &caller,
        &project,
        "template.template.serviceAccount",
        &body.template.template.service_account,
    )?;
    check_secrets(&p, &project, &mut body)?;
    if !body.name.is_empty() && !body.name.ends_with(&format!("/jobs/{job}")) {
        return Err(ApiError::InvalidArgument(format!("the body names job {:?} but the URL names {job:?}", body.name)));
    }
    let (allow_missing, validate_only) = (params.flag("allowMissing")?, params.flag("validateOnly")?);
    Ok(respond(raw.as_deref(), &p.control.update_job(&parent, &job, body, allow_missing, validate_only).await?))
}

async fn delete(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    let resource = Resource::job(&project, &location, &job);
    authorize(&p, &caller, perm::JOBS_DELETE, &resource)?;
    let etag = params.get("etag").unwrap_or_default();
    let validate_only = params.flag("validateOnly")?;
    let op = p.control.delete_job(&parent, &job, etag, validate_only).await?;
    if !validate_only {
        // The delete is committed: a new job of the same name starts with no policy.
        p.iam.policies.forget(&resource)?;
    }
    Ok(respond(raw.as_deref(), &op))
}

/// `POST .../jobs/{job}:run`, and the job's policy methods.
async fn run(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    let Some(job) = job.strip_suffix(":run") else {
        let Some((name, method)) = job.split_once(':') else {
            return Err(ApiError::NotFound(format!("POST {job} is not an API method; did you mean {job}:run?")));
        };
        let Some(method) = super::iam::parse_policy_method(method, body)? else {
            return Err(super::iam::not_a_method(name, method));
        };
        return policy(&p, &caller, &project, &location, name, method);
    };
    let mut body: RunJobRequest = wharf_api::fields::parse(body)?;
    let permission = if body.overrides.is_some() { perm::JOBS_RUN_WITH_OVERRIDES } else { perm::JOBS_RUN };
    authorize(&p, &caller, permission, &Resource::job(&project, &location, job))?;
    check_override_secrets(&p, &parent, &project, job, &mut body)?;
    Ok(respond(raw.as_deref(), &p.control.run_job(&parent, job, body).await?))
}

/// Env overrides of a `:run` that name secrets get the same qualification and access check
/// as the job's own template: the job's service account must be able to read each one.
fn check_override_secrets(
    p: &Platform,
    parent: &wharf_api::names::Parent,
    project: &str,
    job: &str,
    body: &mut RunJobRequest,
) -> Result<(), ApiError> {
    let Some(overrides) = body.overrides.as_mut() else { return Ok(()) };
    if !overrides.container_overrides.iter().any(|c| c.env.iter().any(|e| e.value_source.is_some())) {
        return Ok(());
    }
    let stored = p.control.get_job(parent, job)?;
    let account = &stored.template.template.service_account;
    for container_override in &mut overrides.container_overrides {
        let mut containers =
            [wharf_api::Container { env: std::mem::take(&mut container_override.env), ..Default::default() }];
        let checked = super::secrets::check_template_secrets(p, project, account, &mut containers, &mut []);
        container_override.env = std::mem::take(&mut containers[0].env);
        checked?;
    }
    Ok(())
}

fn policy(
    p: &Platform,
    caller: &wharf_iam::Principal,
    project: &str,
    location: &str,
    job: &str,
    method: PolicyMethod,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(project, location)?;
    let exists = || p.control.get_job(&parent, job).map(drop).map_err(ApiError::from);
    super::iam::policy_method(p, caller, &Resource::job(project, location, job), &JOB_POLICY, method, exists)
}

async fn list_executions(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job)): Path<(String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    let resource = if job == "-" { Resource::project(&project) } else { Resource::job(&project, &location, &job) };
    authorize(&p, &caller, perm::EXECUTIONS_LIST, &resource)?;
    if job != "-" {
        p.control.get_job(&parent, &job)?;
    }
    Ok(respond(raw.as_deref(), &p.control.list_executions(&parent, &job, &params.page()?)?))
}

async fn get_execution(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job, execution)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    authorize(&p, &caller, perm::EXECUTIONS_GET, &Resource::job(&project, &location, &job))?;
    Ok(respond(raw.as_deref(), &p.control.get_execution(&parent, &job, &execution)?))
}

async fn delete_execution(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job, execution)): Path<(String, String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    authorize(&p, &caller, perm::EXECUTIONS_DELETE, &Resource::job(&project, &location, &job))?;
    let etag = params.get("etag").unwrap_or_default();
    let op = p.control.delete_execution(&parent, &job, &execution, etag, params.flag("validateOnly")?)?;
    Ok(respond(raw.as_deref(), &op))
}

/// `POST .../executions/{execution}:cancel`.
async fn cancel(
    State(p): State<Platform>,
    Caller(caller): Caller,
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
    authorize(&p, &caller, perm::EXECUTIONS_CANCEL, &Resource::job(&project, &location, &job))?;
    Ok(respond(raw.as_deref(), &p.control.cancel_execution(&parent, &job, execution, &body)?))
}

async fn list_tasks(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job, execution)): Path<(String, String, String, String)>,
    params: Params,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    authorize(&p, &caller, perm::TASKS_LIST, &Resource::job(&project, &location, &job))?;
    Ok(respond(raw.as_deref(), &p.control.list_tasks(&parent, &job, &execution, &params.page()?)?))
}

async fn get_task(
    State(p): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, job, execution, task)): Path<(String, String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let parent = p.control.parent(&project, &location)?;
    authorize(&p, &caller, perm::TASKS_GET, &Resource::job(&project, &location, &job))?;
    Ok(respond(raw.as_deref(), &p.control.get_task(&parent, &job, &execution, &task)?))
}

/// The task template's secret references, qualified and checked (see
/// [`super::secrets::check_template_secrets`]).
fn check_secrets(p: &Platform, project: &str, body: &mut Job) -> Result<(), ApiError> {
    let task = &mut body.template.template;
    super::secrets::check_template_secrets(p, project, &task.service_account, &mut task.containers, &mut task.volumes)
}
