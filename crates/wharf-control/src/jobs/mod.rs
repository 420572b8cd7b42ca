//! Jobs: run-to-completion work. A job is a stored template; `run` creates an execution of
//! `taskCount` tasks, run `parallelism` at a time, each retried up to `maxRetries` times with
//! the next attempt number, each attempt bounded by the task timeout ([`runner`]). An
//! execution succeeds when every task succeeds, fails as soon as one task exhausts its
//! retries (the others are stopped), and can be cancelled (running tasks get SIGTERM, then
//! SIGKILL). [`store`] owns the tables and their typed states.
//!
//! After a restart, an execution that was running resumes: tasks that were running count as a
//! failed attempt and are retried under the retry policy; pending tasks start as usual.

mod render;
mod runner;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use wharf_api::jobs::{
    CancelExecutionRequest, EXECUTION_TYPE, Execution, ExecutionTemplate, JOB_TYPE, Job, ListExecutionsResponse,
    ListJobsResponse, ListTasksResponse, RunJobRequest, Task,
};
use wharf_api::names::Parent;
use wharf_api::{Code, Operation, Status};

use crate::operations::OperationBuilder;
use crate::paging::{PageRequest, check_etag};
use crate::validate::{self, Workload, container, duration_in};
use crate::{ControlError, ControlPlane};
use runner::ExecutionRunner;
use store::{ExecutionRow, ExecutionSpec, ExecutionState, JobRow};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Cloud Run's longest task timeout: 168 hours (7 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(168 * 3600);

/// Running executions, while the server runs.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    /// Cancellation of running executions, by `{parent}/{execution}`.
    cancels: Mutex<HashMap<String, CancellationToken>>,
    /// Every execution runner, so a stopping server can wait for them.
    runners: TaskTracker,
    /// Cancelled when the server stops: runners stop their tasks and leave executions running
    /// in the database, to be resumed by the next start.
    pub(crate) stopping: CancellationToken,
}

impl Runs {
    fn cancels(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.cancels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every runner (leaving executions running in the database) and waits, up to
    /// `budget`, for them to stop their tasks.
    pub(crate) async fn stop_all(&self, budget: Duration) {
        self.stopping.cancel();
        self.runners.close();
        if tokio::time::timeout(budget, self.runners.wait()).await.is_err() {
            tracing::warn!(running = self.runners.len(), "job runners did not stop in time");
        }
    }
}

fn invalid(m: impl Into<String>) -> ControlError {
    ControlError::InvalidArgument(m.into())
}

fn job_path(parent: &Parent, job: &str) -> String {
    format!("{}/jobs/{job}", parent.path())
}

fn job_not_found(parent: &Parent, name: &str) -> ControlError {
    ControlError::NotFound(format!("Resource '{}' was not found", job_path(parent, name)))
}

/// A job's execution template, checked: how many tasks, how many at once, retries, timeout,
/// and the validated instance template with the image as written.
#[derive(Debug, Clone)]
struct CheckedTemplate {
    task_count: u32,
    parallelism: u32,
    max_retries: u32,
    timeout: Duration,
    image: String,
    instance: crate::backend::InstanceTemplate,
}

fn check_template(t: &ExecutionTemplate) -> Result<CheckedTemplate, ControlError> {
    let task_count = match t.task_count {
        0 => 1,
        n @ 1..=10_000 => n.unsigned_abs(),
        n => return Err(invalid(format!("task count {n} is out of range: 1 to 10000"))),
    };
    let parallelism = match t.parallelism {
        n if n < 0 => {
            return Err(invalid(format!(
                "parallelism {n} is out of range: it must be between 0 (automatic) and the task count"
            )));
        }
        0 => default_parallelism(task_count),
        n => n.unsigned_abs().min(task_count),
    };
    let max_retries = match t.template.max_retries {
        None => 3,
        Some(n @ 0..=10) => n.unsigned_abs(),
        Some(n) => return Err(invalid(format!("max retries {n} is out of range: 0 to 10"))),
    };
    let timeout = match &t.template.timeout {
        None => DEFAULT_TIMEOUT,
        Some(v) => duration_in("template.template.timeout (task timeout)", v, Duration::from_secs(1), MAX_TIMEOUT)?,
    };
    validate::labels("template.labels", &t.labels)?;
    if t.template.service_account.len() > validate::limits::PATH_BYTES {
        return Err(invalid("template.template.serviceAccount is too long: at most 1024 bytes"));
    }
    let (image, mut instance) = container(&t.template.containers, &t.template.volumes, Workload::Task)?;
    instance.vpc = validate::vpc_access("template.template.vpcAccess", t.template.vpc_access.as_ref())?;
    Ok(CheckedTemplate { task_count, parallelism, max_retries, timeout, image, instance })
}

/// As many tasks at once as the machine can take, bounded.
fn default_parallelism(tasks: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2));
    tasks.min((cores * 4).max(4))
}

/// Applies a run request's overrides to a copy of the job's template.
fn apply_overrides(
    mut template: ExecutionTemplate,
    request: &RunJobRequest,
) -> Result<ExecutionTemplate, ControlError> {
    let Some(o) = &request.overrides else { return Ok(template) };
    if o.container_overrides.len() > 1 {
        return Err(invalid("overrides.containerOverrides: Wharf's jobs run one container; give at most one override"));
    }
    if let (Some(c), Some(container)) = (o.container_overrides.first(), template.template.containers.first())
        && !c.name.is_empty()
        && c.name != container.name
    {
        return Err(invalid(format!(
            "overrides.containerOverrides[0].name {:?} is not a container of this job (its container is {:?})",
            c.name, container.name
        )));
    }
    if let Some(n) = o.task_count {
        template.task_count = n;
    }
    if let Some(t) = &o.timeout {
        template.template.timeout = Some(t.clone());
    }
    if let (Some(c), Some(container)) = (o.container_overrides.first(), template.template.containers.first_mut()) {
        if c.clear_args {
            container.args.clear();
        }
        if !c.args.is_empty() {
            container.args = c.args.clone();
        }
        for var in &c.env {
            container.env.retain(|e| e.name != var.name);
            container.env.push(var.clone());
        }
    }
    Ok(template)
}

impl ControlPlane {
    fn job_row(&self, parent: &Parent, name: &str) -> Result<JobRow, ControlError> {
        store::get_job(&self.inner.db, parent, name)?.ok_or_else(|| job_not_found(parent, name))
    }

    async fn resolve_job_image(&self, image: &str) -> Result<wharf_image::ResolvedImage, ControlError> {
        self.inner
            .resolver
            .resolve(image)
            .await
            .map_err(|e| invalid(format!("Image '{image}' could not be resolved: {e}")))
    }

    /// Creates a job; a dry run (`validate_only`) checks everything and stores nothing.
    pub async fn create_job(
        &self,
        parent: &Parent,
        job_id: &str,
        body: Job,
        validate_only: bool,
    ) -> Result<Operation, ControlError> {
        wharf_api::validate_service_name("job", job_id).map_err(|e| invalid(e.to_string()))?;
        validate::labels("labels", &body.labels)?;
        let checked = check_template(&body.template)?;
        self.check_vpc_network("template.template.vpcAccess", &checked.instance)?;
        if store::get_job(&self.inner.db, parent, job_id)?.is_some() {
            return Err(ControlError::AlreadyExists(format!("Resource '{}' already exists", job_path(parent, job_id))));
        }
        let image = self.resolve_job_image(&checked.image).await?;
        let now = crate::time::now();
        let row = JobRow {
            parent: parent.clone(),
            name: job_id.to_owned(),
            uid: uuid::Uuid::new_v4().to_string(),
            generation: 1,
            spec: Job { labels: body.labels.clone(), template: body.template.clone(), ..Job::default() },
            image,
            create_time: now.clone(),
            update_time: now,
            execution_count: 0,
        };
        if validate_only {
            return Ok(OperationBuilder::new(parent, JOB_TYPE, &render::job(&row, None)).dry_run());
        }
        store::upsert_job(&self.inner.db, &row)?;
        let job = self.get_job(parent, job_id)?;
        self.inner.operations.record(OperationBuilder::new(parent, JOB_TYPE, &job).done())
    }

    pub fn get_job(&self, parent: &Parent, name: &str) -> Result<Job, ControlError> {
        let row = self.job_row(parent, name)?;
        let latest = store::latest_execution(&self.inner.db, parent, name)?;
        Ok(render::job(&row, latest))
    }

    /// Jobs of `parent`; location `-` lists every location, as for services.
    pub fn list_jobs(&self, parent: &Parent, page: &PageRequest) -> Result<ListJobsResponse, ControlError> {
        let (rows, next_page_token) = page.page(store::list_jobs(&self.inner.db, parent)?, |r| &r.name)?;
        let mut jobs = Vec::new();
        for row in rows {
            let latest = store::latest_execution(&self.inner.db, &row.parent, &row.name)?;
            jobs.push(render::job(&row, latest));
        }
        Ok(ListJobsResponse { jobs, next_page_token })
    }

    /// Replaces a job's template and labels. `allow_missing` creates a job that does not
    /// exist; the body's `etag`, when given, must be the job's current one; a dry run
    /// (`validate_only`) stores nothing.
    pub async fn update_job(
        &self,
        parent: &Parent,
        name: &str,
        body: Job,
        allow_missing: bool,
        validate_only: bool,
    ) -> Result<Operation, ControlError> {
        let Some(mut row) = store::get_job(&self.inner.db, parent, name)? else {
            if allow_missing {
                return self.create_job(parent, name, body, validate_only).await;
            }
            return Err(job_not_found(parent, name));
        };
        check_etag(&body.etag, &render::job(&row, None).etag, &format!("Job '{name}'"))?;
        validate::labels("labels", &body.labels)?;
        let checked = check_template(&body.template)?;
        self.check_vpc_network("template.template.vpcAccess", &checked.instance)?;
        let spec = Job { labels: body.labels.clone(), template: body.template.clone(), ..Job::default() };
        if spec == row.spec {
            // Nothing changes (a `jobs replace` of an unchanged export): nothing is written.
            return Ok(OperationBuilder::new(parent, JOB_TYPE, &self.get_job(parent, name)?).dry_run());
        }
        row.image = self.resolve_job_image(&checked.image).await?;
        row.spec = spec;
        row.generation += 1;
        row.update_time = crate::time::now();
        if validate_only {
            return Ok(OperationBuilder::new(parent, JOB_TYPE, &render::job(&row, None)).dry_run());
        }
        store::upsert_job(&self.inner.db, &row)?;
        let job = self.get_job(parent, name)?;
        self.inner.operations.record(OperationBuilder::new(parent, JOB_TYPE, &job).done())
    }

    /// Deletes a job, cancelling its running executions (a dry run only checks).
    pub async fn delete_job(
        &self,
        parent: &Parent,
        name: &str,
        etag: &str,
        validate_only: bool,
    ) -> Result<Operation, ControlError> {
        let job = self.get_job(parent, name)?;
        check_etag(etag, &job.etag, &format!("Job '{name}'"))?;
        if validate_only {
            return Ok(OperationBuilder::new(parent, JOB_TYPE, &job).dry_run());
        }
        for e in store::list_executions(&self.inner.db, parent, name)? {
            self.cancel_running(parent, &e.name);
        }
        store::delete_job(&self.inner.db, parent, name)?;
        self.inner.operations.record(OperationBuilder::new(parent, JOB_TYPE, &job).done())
    }

    /// Starts an execution of `job` (with `request`'s overrides for this execution only).
    /// The operation completes when the execution does.
    pub async fn run_job(
        &self,
        parent: &Parent,
        name: &str,
        request: RunJobRequest,
    ) -> Result<Operation, ControlError> {
        let row = self.job_row(parent, name)?;
        if !request.name.is_empty() && request.name != job_path(parent, name) {
            return Err(invalid(format!(
                "name {:?} in the body is not the job the URL names ({})",
                request.name,
                job_path(parent, name)
            )));
        }
        check_etag(&request.etag, &render::job(&row, None).etag, &format!("Job '{name}'"))?;
        let template = apply_overrides(row.spec.template.clone(), &request)?;
        let checked = check_template(&template)?;
        let now = crate::time::now();
        let execution = ExecutionRow {
            parent: parent.clone(),
            job: name.to_owned(),
            name: format!("{name}-{}", crate::random_suffix(5)),
            uid: uuid::Uuid::new_v4().to_string(),
            spec: ExecutionSpec {
                task_count: checked.task_count,
                parallelism: checked.parallelism,
                max_retries: checked.max_retries,
                timeout_secs: checked.timeout.as_secs_f64(),
                template: template.template.clone(),
                image: row.image.clone(),
                instance: Some(checked.instance),
            },
            state: ExecutionState::Running,
            message: String::new(),
            create_time: now.clone(),
            start_time: Some(now),
            completion_time: None,
        };
        let reference = Execution {
            name: format!("{}/executions/{}", job_path(parent, name), execution.name),
            ..Execution::default()
        };
        if request.validate_only {
            return Ok(OperationBuilder::new(parent, EXECUTION_TYPE, &render::execution(&execution, &[])).dry_run());
        }
        let op = OperationBuilder::new(parent, EXECUTION_TYPE, &reference).running();
        self.inner.db.write(|tx| {
            store::insert_execution(tx, &execution)?;
            self.inner.operations.insert(tx, &op)
        })?;
        self.spawn_execution(execution, Some(op.name.clone()));
        Ok(op)
    }

    /// Runs `execution` in the background; completes `operation` when it ends.
    fn spawn_execution(&self, execution: ExecutionRow, operation: Option<String>) {
        let key = format!("{}/{}", execution.parent.path(), execution.name);
        let cancel = CancellationToken::new();
        self.inner.jobs.cancels().insert(key.clone(), cancel.clone());
        let span = tracing::info_span!("execution", job = %execution.job, execution = %execution.name);
        let ExecutionRow { parent, job, name, spec, .. } = execution;
        let runner = Arc::new(ExecutionRunner::new(self.clone(), parent, job, name, spec, cancel));
        let control = self.clone();
        self.inner.jobs.runners.spawn(
            async move {
                tracing::info!(
                    tasks = runner.spec.task_count,
                    parallelism = runner.spec.parallelism,
                    "execution started"
                );
                let outcome = runner.clone().run().await;
                control.inner.jobs.cancels().remove(&key);
                if control.inner.jobs.stopping.is_cancelled() {
                    tracing::info!("execution left running for the next start");
                    return;
                }
                tracing::info!(state = ?outcome.state, message = %outcome.message, "execution ended");
                let (parent, job, id) = (&runner.parent, &runner.job, &runner.execution);
                if let Err(e) = store::finish_execution(&control.inner.db, parent, id, outcome.state, &outcome.message)
                {
                    tracing::error!(error = %e, "cannot record the execution's end");
                }
                if let Some(op) = operation {
                    let finished = match control.get_execution(parent, job, id) {
                        Ok(execution) => {
                            let error = (outcome.state != ExecutionState::Succeeded)
                                .then(|| Status::new(Code::Aborted, outcome.message.clone()));
                            OperationBuilder::new(parent, EXECUTION_TYPE, &execution).finish(&op, error)
                        }
                        // Deleted (with its job, or alone) while it ran: the operation still ends.
                        Err(_) => {
                            let reference = Execution {
                                name: format!("{}/executions/{id}", job_path(parent, job)),
                                ..Execution::default()
                            };
                            let status = Status::new(Code::Aborted, "The execution was deleted before it completed.");
                            OperationBuilder::new(parent, EXECUTION_TYPE, &reference).finish(&op, Some(status))
                        }
                    };
                    if let Err(e) = control.inner.operations.complete(&finished) {
                        tracing::error!(error = %e, "cannot complete the execution's operation");
                    }
                }
            }
            .instrument(span),
        );
    }

    fn cancel_running(&self, parent: &Parent, execution: &str) -> bool {
        let key = format!("{}/{execution}", parent.path());
        let token = self.inner.jobs.cancels().get(&key).cloned();
        token.map(|t| t.cancel()).is_some()
    }

    /// Cancels a running execution: its running tasks get SIGTERM, then SIGKILL.
    pub fn cancel_execution(
        &self,
        parent: &Parent,
        job: &str,
        execution: &str,
        request: &CancelExecutionRequest,
    ) -> Result<Operation, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        if !request.name.is_empty() && request.name != e.name {
            return Err(invalid(format!(
                "name {:?} in the body is not the execution the URL names ({})",
                request.name, e.name
            )));
        }
        check_etag(&request.etag, &e.etag, &format!("Execution '{execution}'"))?;
        let key = format!("{}/{execution}", parent.path());
        if !self.inner.jobs.cancels().contains_key(&key) {
            return Err(ControlError::FailedPrecondition(format!("Execution '{execution}' is not running")));
        }
        if request.validate_only {
            return Ok(OperationBuilder::new(parent, EXECUTION_TYPE, &e).dry_run());
        }
        if !self.cancel_running(parent, execution) {
            return Err(ControlError::FailedPrecondition(format!("Execution '{execution}' is not running")));
        }
        self.inner.operations.record(OperationBuilder::new(parent, EXECUTION_TYPE, &e).done())
    }

    /// Deletes an execution (cancelling it if it runs); a dry run only checks.
    pub fn delete_execution(
        &self,
        parent: &Parent,
        job: &str,
        execution: &str,
        etag: &str,
        validate_only: bool,
    ) -> Result<Operation, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        check_etag(etag, &e.etag, &format!("Execution '{execution}'"))?;
        if validate_only {
            return Ok(OperationBuilder::new(parent, EXECUTION_TYPE, &e).dry_run());
        }
        self.cancel_running(parent, execution);
        store::delete_execution(&self.inner.db, parent, execution)?;
        self.inner.operations.record(OperationBuilder::new(parent, EXECUTION_TYPE, &e).done())
    }

    pub fn list_executions(
        &self,
        parent: &Parent,
        job: &str,
        page: &PageRequest,
    ) -> Result<ListExecutionsResponse, ControlError> {
        let rows = store::list_executions(&self.inner.db, parent, job)?;
        let (rows, next_page_token) = page.page(rows, |r| &r.name)?;
        let mut executions = Vec::new();
        for row in rows {
            let tasks = store::tasks(&self.inner.db, parent, &row.name)?;
            executions.push(render::execution(&row, &tasks));
        }
        Ok(ListExecutionsResponse { executions, next_page_token })
    }

    pub fn get_execution(&self, parent: &Parent, job: &str, name: &str) -> Result<Execution, ControlError> {
        let row = store::get_execution(&self.inner.db, parent, name)?
            .filter(|row| job == "-" || row.job == job)
            .ok_or_else(|| ControlError::NotFound(format!("Execution '{name}' was not found")))?;
        let tasks = store::tasks(&self.inner.db, parent, name)?;
        Ok(render::execution(&row, &tasks))
    }

    pub fn list_tasks(
        &self,
        parent: &Parent,
        job: &str,
        execution: &str,
        page: &PageRequest,
    ) -> Result<ListTasksResponse, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        let tasks: Vec<_> =
            store::tasks(&self.inner.db, parent, execution)?.iter().map(|t| render::task(&e, execution, t)).collect();
        let (tasks, next_page_token) = page.page(tasks, |t| &t.name)?;
        Ok(ListTasksResponse { tasks, next_page_token })
    }

    pub fn get_task(&self, parent: &Parent, job: &str, execution: &str, task: &str) -> Result<Task, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        store::tasks(&self.inner.db, parent, execution)?
            .iter()
            .map(|t| render::task(&e, execution, t))
            .find(|t| t.name.ends_with(&format!("/tasks/{task}")))
            .ok_or_else(|| ControlError::NotFound(format!("Task '{task}' was not found")))
    }

    /// After a restart: executions that were running continue (see the module doc).
    /// Returns the operations handed to resumed executions.
    pub(crate) fn resume_executions(&self) -> Result<Vec<String>, ControlError> {
        let unfinished = self.inner.operations.unfinished()?;
        let mut claimed = Vec::new();
        for execution in store::running_executions(&self.inner.db)? {
            store::interrupt_running_tasks(&self.inner.db, &execution.parent, &execution.name)?;
            tracing::info!(execution = %execution.name, "resuming an execution after restart");
            // The operation `run` answered with completes when the resumed execution ends.
            let full_name = format!("{}/executions/{}", job_path(&execution.parent, &execution.job), execution.name);
            let operation = unfinished
                .iter()
                .find(|op| {
                    op.metadata.as_ref().and_then(|m| m.get("name")).and_then(|n| n.as_str()) == Some(&full_name)
                })
                .map(|op| op.name.clone());
            claimed.extend(operation.iter().cloned());
            self.spawn_execution(execution, operation);
        }
        Ok(claimed)
    }

    /// The execution an operation is about, rendered now, if it still exists.
    pub(crate) fn execution_of(&self, resource_name: &str) -> Option<Execution> {
        let mut parts = resource_name.split('/');
        let (Some("projects"), Some(project), Some("locations"), Some(location), Some("jobs"), Some(job)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let (Some("executions"), Some(id)) = (parts.next(), parts.next()) else { return None };
        let parent = Parent { project: project.to_owned(), location: location.to_owned() };
        self.get_execution(&parent, job, id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use wharf_api::Container;
    use wharf_api::jobs::TaskTemplate;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever a client sends as an execution template, checking it answers (never
        /// panics), and what it accepts is within Cloud Run's ranges.
        #[test]
        fn accepted_execution_templates_are_within_range(
            task_count in prop_oneof![any::<i32>(), -2..10_010i32],
            parallelism in prop_oneof![any::<i32>(), -2..100i32],
            max_retries in proptest::option::of(prop_oneof![any::<i32>(), -2..12i32]),
            timeout in proptest::option::of(prop_oneof!["[0-9]{1,22}(s|m|h|d)?", ".{0,12}"]),
        ) {
            let template = ExecutionTemplate {
                task_count,
                parallelism,
                template: TaskTemplate {
                    containers: vec![Container { image: "127.0.0.1:5000/job:v1".into(), ..Container::default() }],
                    timeout,
                    max_retries,
                    ..TaskTemplate::default()
                },
                ..ExecutionTemplate::default()
            };
            if let Ok(t) = check_template(&template) {
                prop_assert!((1..=10_000).contains(&t.task_count));
                prop_assert!(t.parallelism >= 1 && t.parallelism <= t.task_count);
                prop_assert!(t.max_retries <= 10);
                prop_assert!(t.timeout >= Duration::from_secs(1) && t.timeout <= MAX_TIMEOUT);
            }
        }
    }
}
