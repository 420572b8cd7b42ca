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
    EXECUTION_TYPE, Execution, ExecutionTemplate, JOB_TYPE, Job, ListExecutionsResponse, ListJobsResponse,
    ListTasksResponse, RunJobRequest,
};
use wharf_api::names::Parent;
use wharf_api::{Code, Operation, Status};

use crate::operations::OperationBuilder;
use crate::validate::{Workload, container, parse_duration};
use crate::{ControlError, ControlPlane};
use runner::ExecutionRunner;
use store::{ExecutionRow, ExecutionSpec, ExecutionState, JobRow};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

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
        n if n < 0 => return Err(invalid(format!("parallelism {n} may not be negative"))),
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
        Some(v) => parse_duration("task timeout", v)?,
    };
    if timeout < Duration::from_secs(1) || timeout > MAX_TIMEOUT {
        return Err(invalid(format!("task timeout {}s is out of range: 1s to 24h", timeout.as_secs())));
    }
    crate::validate::no_vpc_access(t.template.vpc_access.as_ref())?;
    let (image, instance) = container(&t.template.containers, Workload::Task)?;
    Ok(CheckedTemplate { task_count, parallelism, max_retries, timeout, image, instance })
}

/// As many tasks at once as the machine can take, bounded.
fn default_parallelism(tasks: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2));
    tasks.min((cores * 4).max(4))
}

/// Applies a run request's overrides to a copy of the job's template.
fn apply_overrides(mut template: ExecutionTemplate, request: &RunJobRequest) -> ExecutionTemplate {
    let Some(o) = &request.overrides else { return template };
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
    template
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

    pub async fn create_job(&self, parent: &Parent, job_id: &str, body: Job) -> Result<Operation, ControlError> {
        wharf_api::validate_service_name("job", job_id).map_err(|e| invalid(e.to_string()))?;
        let checked = check_template(&body.template)?;
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
        store::upsert_job(&self.inner.db, &row)?;
        let job = self.get_job(parent, job_id)?;
        self.inner.operations.record(OperationBuilder::new(parent, JOB_TYPE, &job).done())
    }

    pub fn get_job(&self, parent: &Parent, name: &str) -> Result<Job, ControlError> {
        let row = self.job_row(parent, name)?;
        let latest = store::latest_execution(&self.inner.db, parent, name)?;
        Ok(render::job(&row, latest))
    }

    pub fn list_jobs(&self, parent: &Parent) -> Result<ListJobsResponse, ControlError> {
        let mut jobs = Vec::new();
        for row in store::list_jobs(&self.inner.db, parent)? {
            let latest = store::latest_execution(&self.inner.db, parent, &row.name)?;
            jobs.push(render::job(&row, latest));
        }
        Ok(ListJobsResponse { jobs })
    }

    pub async fn update_job(&self, parent: &Parent, name: &str, body: Job) -> Result<Operation, ControlError> {
        let mut row = self.job_row(parent, name)?;
        let checked = check_template(&body.template)?;
        row.image = self.resolve_job_image(&checked.image).await?;
        row.spec = Job { labels: body.labels.clone(), template: body.template.clone(), ..Job::default() };
        row.generation += 1;
        row.update_time = crate::time::now();
        store::upsert_job(&self.inner.db, &row)?;
        let job = self.get_job(parent, name)?;
        self.inner.operations.record(OperationBuilder::new(parent, JOB_TYPE, &job).done())
    }

    pub async fn delete_job(&self, parent: &Parent, name: &str) -> Result<Operation, ControlError> {
        let job = self.get_job(parent, name)?;
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
        let template = apply_overrides(row.spec.template.clone(), &request);
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
                if let Some(op) = operation
                    && let Ok(execution) = control.get_execution(parent, job, id)
                {
                    let error = (outcome.state != ExecutionState::Succeeded)
                        .then(|| Status::new(Code::Aborted, outcome.message.clone()));
                    let op = OperationBuilder::new(parent, EXECUTION_TYPE, &execution).finish(&op, error);
                    if let Err(e) = control.inner.operations.complete(&op) {
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

    pub fn cancel_execution(&self, parent: &Parent, job: &str, execution: &str) -> Result<Operation, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        if !self.cancel_running(parent, execution) {
            return Err(ControlError::FailedPrecondition(format!("Execution '{execution}' is not running")));
        }
        self.inner.operations.record(OperationBuilder::new(parent, EXECUTION_TYPE, &e).done())
    }

    pub fn delete_execution(&self, parent: &Parent, job: &str, execution: &str) -> Result<Operation, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        self.cancel_running(parent, execution);
        store::delete_execution(&self.inner.db, parent, execution)?;
        self.inner.operations.record(OperationBuilder::new(parent, EXECUTION_TYPE, &e).done())
    }

    pub fn list_executions(&self, parent: &Parent, job: &str) -> Result<ListExecutionsResponse, ControlError> {
        let mut executions = Vec::new();
        for row in store::list_executions(&self.inner.db, parent, job)? {
            let tasks = store::tasks(&self.inner.db, parent, &row.name)?;
            executions.push(render::execution(&row, &tasks));
        }
        Ok(ListExecutionsResponse { executions })
    }

    pub fn get_execution(&self, parent: &Parent, job: &str, name: &str) -> Result<Execution, ControlError> {
        let row = store::get_execution(&self.inner.db, parent, name)?
            .filter(|row| job == "-" || row.job == job)
            .ok_or_else(|| ControlError::NotFound(format!("Execution '{name}' was not found")))?;
        let tasks = store::tasks(&self.inner.db, parent, name)?;
        Ok(render::execution(&row, &tasks))
    }

    pub fn list_tasks(&self, parent: &Parent, job: &str, execution: &str) -> Result<ListTasksResponse, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        let tasks = store::tasks(&self.inner.db, parent, execution)?;
        Ok(ListTasksResponse { tasks: tasks.iter().map(|t| render::task(&e, execution, t)).collect() })
    }

    /// After a restart: executions that were running continue (see the module doc).
    pub(crate) fn resume_executions(&self) -> Result<(), ControlError> {
        let unfinished = self.inner.operations.unfinished()?;
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
            self.spawn_execution(execution, operation);
        }
        Ok(())
    }
}
