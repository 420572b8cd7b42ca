//! Jobs: run-to-completion work. A job is a stored template; `run` creates an execution of
//! `taskCount` tasks, run `parallelism` at a time, each retried up to `maxRetries` times with
//! the next attempt number, each attempt bounded by the task timeout. An execution succeeds
//! when every task succeeds, fails as soon as one task exhausts its retries (the others are
//! stopped), and can be cancelled (running tasks get SIGTERM, then SIGKILL).
//!
//! After a restart, an execution that was running resumes: tasks that were running count as a
//! failed attempt and are retried under the retry policy; pending tasks start as usual.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken as CancelToken;

/// The cancellation handle of a running execution.
pub type CancelHandle = CancelToken;
use wharf_api::jobs::{
    EXECUTION_TYPE, Execution, ExecutionReference, JOB_TYPE, Job, ListExecutionsResponse, ListJobsResponse,
    ListTasksResponse, RunJobRequest, Task, TaskAttemptResult,
};
use wharf_api::names::Parent;
use wharf_api::{CONDITION_FAILED, CONDITION_RECONCILING, CONDITION_SUCCEEDED, Condition, Operation, RevisionTemplate};
use wharf_runtime::{InstanceSpec, InstanceState, Owner};
use wharf_store::rusqlite::{OptionalExtension, params};

use crate::validate::{parse_duration, validate};
use crate::{ControlError, ControlPlane};

/// An execution row: job, uid, spec, state, create, start and completion times, message.
type ExecutionColumns = (String, String, String, String, String, Option<String>, Option<String>, String);
/// A task row: index, state, attempts, exit code, message, start and completion times.
type TaskColumns = (i64, String, i64, Option<i32>, String, Option<String>, Option<String>);

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// What one execution runs: resolved once when it is created.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ExecutionSpec {
    task_count: u32,
    parallelism: u32,
    max_retries: u32,
    timeout_secs: f64,
    template: wharf_api::jobs::TaskTemplate,
    image: wharf_image::ResolvedImage,
}

fn invalid(m: impl Into<String>) -> ControlError {
    ControlError::InvalidArgument(m.into())
}

fn job_path(parent: &Parent, job: &str) -> String {
    format!("{}/jobs/{job}", parent.path())
}

/// Checks a job's execution template; returns (task count, parallelism, retries, timeout).
fn check_template(t: &wharf_api::jobs::ExecutionTemplate) -> Result<(u32, u32, u32, Duration), ControlError> {
    let tasks = match t.task_count {
        0 => 1,
        n @ 1..=10_000 => n.unsigned_abs(),
        n => return Err(invalid(format!("task count {n} is out of range: 1 to 10000"))),
    };
    let parallelism = match t.parallelism {
        n if n < 0 => return Err(invalid(format!("parallelism {n} may not be negative"))),
        0 => default_parallelism(tasks),
        n => n.unsigned_abs().min(tasks),
    };
    let retries = match t.template.max_retries {
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
    let as_revision = RevisionTemplate { containers: t.template.containers.clone(), ..RevisionTemplate::default() };
    validate(&as_revision)?;
    Ok((tasks, parallelism, retries, timeout))
}

/// As many tasks at once as the machine can take, bounded.
fn default_parallelism(tasks: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2));
    tasks.min((cores * 4).max(4))
}

/// Deletes an execution and its tasks inside `tx`.
fn delete_execution_rows(
    tx: &wharf_store::rusqlite::Transaction<'_>,
    parent: &Parent,
    execution: &str,
) -> Result<(), ControlError> {
    tx.execute(
        "DELETE FROM tasks WHERE project = ?1 AND location = ?2 AND execution = ?3",
        params![parent.project, parent.location, execution],
    )?;
    tx.execute(
        "DELETE FROM executions WHERE project = ?1 AND location = ?2 AND name = ?3",
        params![parent.project, parent.location, execution],
    )?;
    Ok(())
}

#[derive(Debug, Clone)]
struct JobRow {
    parent: Parent,
    name: String,
    uid: String,
    generation: i64,
    spec: Job,
    image: wharf_image::ResolvedImage,
    create_time: String,
    update_time: String,
    execution_count: i64,
}

impl ControlPlane {
    fn job_row(&self, parent: &Parent, name: &str) -> Result<Option<JobRow>, ControlError> {
        let row = self.inner.db.read(|c| {
            c.query_row(
                "SELECT uid, generation, spec, image, create_time, update_time, execution_count FROM jobs
                 WHERE project = ?1 AND location = ?2 AND name = ?3",
                params![parent.project, parent.location, name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()
        })?;
        let Some((uid, generation, spec, image, create_time, update_time, execution_count)) = row else {
            return Ok(None);
        };
        Ok(Some(JobRow {
            parent: parent.clone(),
            name: name.to_owned(),
            uid,
            generation,
            spec: serde_json::from_str(&spec).map_err(|e| ControlError::Internal(e.to_string()))?,
            image: serde_json::from_str(&image).map_err(|e| ControlError::Internal(e.to_string()))?,
            create_time,
            update_time,
            execution_count,
        }))
    }

    fn render_job(&self, row: &JobRow) -> Result<Job, ControlError> {
        let mut job = row.spec.clone();
        job.name = job_path(&row.parent, &row.name);
        job.uid = row.uid.clone();
        job.generation = row.generation.to_string();
        job.create_time = Some(row.create_time.clone());
        job.update_time = Some(row.update_time.clone());
        job.execution_count = i32::try_from(row.execution_count).unwrap_or(i32::MAX);
        job.etag = format!("\"{}\"", row.generation);
        job.terminal_condition = Some(Condition::new("Ready", CONDITION_SUCCEEDED, "", &row.update_time));
        let latest = self.inner.db.read(|c| {
            c.query_row(
                "SELECT name, create_time, completion_time FROM executions WHERE project = ?1 AND location = ?2 AND job = ?3
                 ORDER BY create_time DESC LIMIT 1",
                params![row.parent.project, row.parent.location, row.name],
                |r| Ok(ExecutionReference { name: r.get(0)?, create_time: r.get(1)?, completion_time: r.get(2)? }),
            )
            .optional()
        })?;
        job.latest_created_execution = latest.map(|mut e| {
            e.name = format!("{}/executions/{}", job.name, e.name);
            e
        });
        Ok(job)
    }

    fn job_not_found(parent: &Parent, name: &str) -> ControlError {
        ControlError::NotFound(format!("Resource '{}' was not found", job_path(parent, name)))
    }

    fn done_operation(
        &self,
        parent: &Parent,
        type_url: &str,
        resource: &impl serde::Serialize,
    ) -> Result<Operation, ControlError> {
        let any = wharf_api::to_any(type_url, resource);
        let op = Operation {
            name: format!("{}/operations/{}", parent.path(), uuid::Uuid::new_v4()),
            metadata: Some(any.clone()),
            done: true,
            error: None,
            response: Some(any),
        };
        self.inner.db.write(|tx| crate::store::insert_operation(tx, &op, &crate::time::now()))?;
        Ok(op)
    }

    pub async fn create_job(&self, parent: &Parent, job_id: &str, body: Job) -> Result<Operation, ControlError> {
        wharf_api::validate_service_name("job", job_id).map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        check_template(&body.template)?;
        if self.job_row(parent, job_id)?.is_some() {
            return Err(ControlError::AlreadyExists(format!("Resource '{}' already exists", job_path(parent, job_id))));
        }
        let image = self.resolve_job_image(&body).await?;
        let now = crate::time::now();
        let spec = Job { labels: body.labels.clone(), template: body.template.clone(), ..Job::default() };
        let spec_text = serde_json::to_string(&spec).map_err(|e| ControlError::Internal(e.to_string()))?;
        let image_text = serde_json::to_string(&image).map_err(|e| ControlError::Internal(e.to_string()))?;
        self.inner.db.write(|tx| {
            tx.execute(
                "INSERT INTO jobs (project, location, name, uid, generation, spec, image, create_time, update_time)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?7)",
                params![
                    parent.project,
                    parent.location,
                    job_id,
                    uuid::Uuid::new_v4().to_string(),
                    spec_text,
                    image_text,
                    now
                ],
            )
            .map_err(ControlError::from_sql)
        })?;
        let job = self.get_job(parent, job_id)?;
        self.done_operation(parent, JOB_TYPE, &job)
    }

    async fn resolve_job_image(&self, body: &Job) -> Result<wharf_image::ResolvedImage, ControlError> {
        let image = &body.template.template.containers.first().map(|c| c.image.clone()).unwrap_or_default();
        self.inner
            .resolver
            .resolve(image)
            .await
            .map_err(|e| invalid(format!("Image '{image}' could not be resolved: {e}")))
    }

    pub fn get_job(&self, parent: &Parent, name: &str) -> Result<Job, ControlError> {
        let row = self.job_row(parent, name)?.ok_or_else(|| Self::job_not_found(parent, name))?;
        self.render_job(&row)
    }

    pub fn list_jobs(&self, parent: &Parent) -> Result<ListJobsResponse, ControlError> {
        let names: Vec<String> = self.inner.db.read(|c| {
            let mut stmt = c.prepare("SELECT name FROM jobs WHERE project = ?1 AND location = ?2 ORDER BY name")?;
            let rows = stmt.query_map(params![parent.project, parent.location], |r| r.get(0))?;
            rows.collect()
        })?;
        let jobs = names.iter().map(|n| self.get_job(parent, n)).collect::<Result<_, _>>()?;
        Ok(ListJobsResponse { jobs })
    }

    pub async fn update_job(&self, parent: &Parent, name: &str, body: Job) -> Result<Operation, ControlError> {
        let row = self.job_row(parent, name)?.ok_or_else(|| Self::job_not_found(parent, name))?;
        check_template(&body.template)?;
        let image = self.resolve_job_image(&body).await?;
        let spec = Job { labels: body.labels.clone(), template: body.template.clone(), ..Job::default() };
        let spec_text = serde_json::to_string(&spec).map_err(|e| ControlError::Internal(e.to_string()))?;
        let image_text = serde_json::to_string(&image).map_err(|e| ControlError::Internal(e.to_string()))?;
        self.inner.db.write(|tx| {
            tx.execute(
                "UPDATE jobs SET spec = ?4, image = ?5, generation = ?6, update_time = ?7
                 WHERE project = ?1 AND location = ?2 AND name = ?3",
                params![
                    parent.project,
                    parent.location,
                    name,
                    spec_text,
                    image_text,
                    row.generation + 1,
                    crate::time::now()
                ],
            )
            .map_err(ControlError::from_sql)
        })?;
        let job = self.get_job(parent, name)?;
        self.done_operation(parent, JOB_TYPE, &job)
    }

    pub async fn delete_job(&self, parent: &Parent, name: &str) -> Result<Operation, ControlError> {
        let job = self.get_job(parent, name)?;
        let executions = self.list_executions(parent, name)?;
        for e in &executions.executions {
            let id = e.name.rsplit('/').next().unwrap_or("");
            self.cancel_running(parent, id);
        }
        self.inner.db.write(|tx| {
            for e in &executions.executions {
                delete_execution_rows(tx, parent, e.name.rsplit('/').next().unwrap_or(""))?;
            }
            tx.execute(
                "DELETE FROM jobs WHERE project = ?1 AND location = ?2 AND name = ?3",
                params![parent.project, parent.location, name],
            )
            .map_err(ControlError::from_sql)
        })?;
        self.done_operation(parent, JOB_TYPE, &job)
    }

    /// Starts an execution of `job` (with `request`'s overrides for this execution only).
    /// The operation completes when the execution does.
    pub async fn run_job(
        &self,
        parent: &Parent,
        name: &str,
        request: RunJobRequest,
    ) -> Result<Operation, ControlError> {
        let row = self.job_row(parent, name)?.ok_or_else(|| Self::job_not_found(parent, name))?;
        let mut template = row.spec.template.clone();
        if let Some(o) = &request.overrides {
            if let Some(n) = o.task_count {
                template.task_count = n;
            }
            if let Some(t) = &o.timeout {
                template.template.timeout = Some(t.clone());
            }
            if let (Some(c), Some(container)) =
                (o.container_overrides.first(), template.template.containers.first_mut())
            {
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
        }
        let (task_count, parallelism, max_retries, timeout) = check_template(&template)?;
        let spec = ExecutionSpec {
            task_count,
            parallelism,
            max_retries,
            timeout_secs: timeout.as_secs_f64(),
            template: template.template.clone(),
            image: row.image.clone(),
        };
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let suffix: String = uuid::Uuid::new_v4().as_bytes()[..5]
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        let id = format!("{name}-{suffix}");
        let now = crate::time::now();
        let spec_text = serde_json::to_string(&spec).map_err(|e| ControlError::Internal(e.to_string()))?;
        let op_name = format!("{}/operations/{}", parent.path(), uuid::Uuid::new_v4());
        self.inner.db.write(|tx| {
            tx.execute(
                "INSERT INTO executions (project, location, job, name, uid, spec, state, create_time, start_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'RUNNING', ?7, ?7)",
                params![parent.project, parent.location, name, id, uuid::Uuid::new_v4().to_string(), spec_text, now],
            )?;
            for index in 0..task_count {
                tx.execute(
                    "INSERT INTO tasks (project, location, execution, idx, state) VALUES (?1, ?2, ?3, ?4, 'PENDING')",
                    params![parent.project, parent.location, id, index],
                )?;
            }
            tx.execute(
                "UPDATE jobs SET execution_count = execution_count + 1 WHERE project = ?1 AND location = ?2 AND name = ?3",
                params![parent.project, parent.location, name],
            )
            .map_err(ControlError::from_sql)?;
            let execution = Execution { name: format!("{}/executions/{id}", job_path(parent, name)), ..Execution::default() };
            let op = Operation {
                name: op_name.clone(),
                metadata: Some(wharf_api::to_any(EXECUTION_TYPE, &execution)),
                ..Operation::default()
            };
            crate::store::insert_operation(tx, &op, &now)
        })?;
        self.spawn_execution(parent.clone(), name.to_owned(), id.clone(), spec, Some(op_name.clone()));
        self.get_operation(&op_name)
    }

    fn spawn_execution(&self, parent: Parent, job: String, id: String, spec: ExecutionSpec, op: Option<String>) {
        let cancel = CancelToken::default();
        self.inner
            .execution_cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("{}/{id}", parent.path()), cancel.clone());
        let control = self.clone();
        tokio::spawn(async move {
            let (state, message) = control.run_execution(&parent, &job, &id, &spec, &cancel).await;
            if control.inner.stopping.is_cancelled() {
                // The server is stopping: the execution stays running, to resume on restart.
                control
                    .inner
                    .execution_cancels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&format!("{}/{id}", parent.path()));
                return;
            }
            let now = crate::time::now();
            let _ = control.inner.db.write(|tx| {
                tx.execute(
                    "UPDATE executions SET state = ?4, message = ?5, completion_time = ?6 WHERE project = ?1 AND location = ?2 AND name = ?3",
                    params![parent.project, parent.location, id, state, message, now],
                )
                .map_err(ControlError::from_sql)
            });
            control
                .inner
                .execution_cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&format!("{}/{id}", parent.path()));
            if let Some(op) = op
                && let Ok(execution) = control.get_execution(&parent, &job, &id)
            {
                let error = (state != "SUCCEEDED").then(|| wharf_api::Status {
                    code: 10,
                    message: message.clone(),
                    details: vec![],
                });
                let operation = Operation {
                    name: op.clone(),
                    metadata: Some(wharf_api::to_any(EXECUTION_TYPE, &execution)),
                    done: true,
                    response: error.is_none().then(|| wharf_api::to_any(EXECUTION_TYPE, &execution)),
                    error,
                };
                let _ = crate::store::finish_operation(&control.inner.db, &operation);
                control.inner.operation_done.notify_waiters();
            }
        });
    }

    /// Runs every pending task; returns the execution's final state and message.
    async fn run_execution(
        &self,
        parent: &Parent,
        job: &str,
        id: &str,
        spec: &ExecutionSpec,
        cancel: &CancelToken,
    ) -> (&'static str, String) {
        let layers = match self.inner.resolver.snapshots(&spec.image).await {
            Ok(l) => l,
            Err(e) => return ("FAILED", format!("the image could not be unpacked: {e}")),
        };
        let permits = Arc::new(Semaphore::new(usize::try_from(spec.parallelism.max(1)).unwrap_or(1)));
        let failed = CancelToken::default();
        let mut runners = tokio::task::JoinSet::new();
        let pending: Vec<(u32, u32)> = self
            .inner
            .db
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT idx, attempts FROM tasks WHERE project = ?1 AND location = ?2 AND execution = ?3 AND state IN ('PENDING', 'RUNNING') ORDER BY idx",
                )?;
                let rows = stmt.query_map(params![parent.project, parent.location, id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .unwrap_or_default();
        for (index, attempts) in pending {
            let (control, parent, job, id, spec, layers) =
                (self.clone(), parent.clone(), job.to_owned(), id.to_owned(), spec.clone(), layers.clone());
            let (permits, cancel, failed) = (permits.clone(), cancel.clone(), failed.clone());
            runners.spawn(async move {
                control.run_task(&parent, &job, &id, &spec, &layers, index, attempts, &permits, &cancel, &failed).await
            });
        }
        let mut failure = None;
        while let Some(result) = runners.join_next().await {
            if let Ok(Err(reason)) = result
                && failure.is_none()
            {
                failure = Some(reason);
                failed.cancel();
            }
        }
        if cancel.is_cancelled() {
            ("CANCELLED", "The execution was cancelled.".to_owned())
        } else if let Some(reason) = failure {
            ("FAILED", reason)
        } else {
            ("SUCCEEDED", String::new())
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_task(
        &self,
        parent: &Parent,
        job: &str,
        execution: &str,
        spec: &ExecutionSpec,
        layers: &[std::path::PathBuf],
        index: u32,
        mut attempt: u32,
        permits: &Semaphore,
        cancel: &CancelToken,
        failed: &CancelToken,
    ) -> Result<(), String> {
        let set = |state: &str, attempts: u32, exit: Option<i32>, message: &str, start: bool, end: bool| {
            let now = crate::time::now();
            let _ = self.inner.db.write(|tx| {
                tx.execute(
                    "UPDATE tasks SET state = ?5, attempts = ?6, exit_code = ?7, message = ?8,
                        start_time = CASE WHEN ?9 THEN ?10 ELSE start_time END,
                        completion_time = CASE WHEN ?11 THEN ?10 ELSE completion_time END
                     WHERE project = ?1 AND location = ?2 AND execution = ?3 AND idx = ?4",
                    params![
                        parent.project,
                        parent.location,
                        execution,
                        index,
                        state,
                        attempts,
                        exit,
                        message,
                        start,
                        now,
                        end
                    ],
                )
                .map_err(ControlError::from_sql)
            });
        };
        let container = spec.template.containers.first().cloned().unwrap_or_default();
        let config = validate(&RevisionTemplate { containers: vec![container], ..RevisionTemplate::default() })
            .map_err(|e| e.to_string())?;
        let timeout = Duration::from_secs_f64(spec.timeout_secs);
        loop {
            let _permit = tokio::select! {
                p = permits.acquire() => p.map_err(|e| e.to_string())?,
                _ = cancel.cancelled() => { set("CANCELLED", attempt, None, "cancelled", false, true); return Ok(()); }
                _ = failed.cancelled() => { set("CANCELLED", attempt, None, "another task failed", false, true); return Ok(()); }
                _ = self.inner.stopping.cancelled() => return Ok(()),
            };
            set("RUNNING", attempt, None, "", true, false);
            let instance_spec = InstanceSpec {
                owner: Owner::Task {
                    job: job.to_owned(),
                    execution: execution.to_owned(),
                    index,
                    attempt,
                    count: spec.task_count,
                },
                image: spec.image.clone(),
                layers: layers.to_vec(),
                command: config.command.clone(),
                args: config.args.clone(),
                env: config.env.clone(),
                port: config.port,
                resources: config.resources,
                startup_probe: None,
                liveness_probe: None,
                grace_period: crate::launcher::GRACE_PERIOD,
            };
            let outcome = match self.inner.runtime.start(instance_spec).await {
                Err(e) => Err((None, format!("the task could not start: {e}"))),
                Ok(instance) => {
                    let status = tokio::select! {
                        s = instance.wait_terminal() => s,
                        _ = tokio::time::sleep(timeout) => {
                            self.inner.runtime.stop(&instance).await;
                            let _ = self.inner.runtime.logs().platform(&instance.owner, &instance.id, "ERROR",
                                &format!("Task {index} attempt {attempt} exceeded its timeout of {}s and was stopped.", timeout.as_secs())).await;
                            let msg = format!("Task {index} exceeded its timeout of {}s.", timeout.as_secs());
                            drop(_permit);
                            attempt += 1;
                            if attempt > spec.max_retries {
                                set("FAILED", attempt, None, &msg, false, true);
                                return Err(format!(
                                    "{msg} It failed after {attempt} attempt(s) (max retries {}).",
                                    spec.max_retries
                                ));
                            }
                            set("PENDING", attempt, None, &msg, false, false);
                            continue;
                        }
                        _ = cancel.cancelled() => {
                            self.inner.runtime.stop(&instance).await;
                            set("CANCELLED", attempt + 1, None, "cancelled", false, true);
                            return Ok(());
                        }
                        _ = failed.cancelled() => {
                            self.inner.runtime.stop(&instance).await;
                            set("CANCELLED", attempt + 1, None, "another task failed", false, true);
                            return Ok(());
                        }
                        _ = self.inner.stopping.cancelled() => {
                            // Left RUNNING: the next start counts this attempt as failed and retries.
                            self.inner.runtime.stop(&instance).await;
                            return Ok(());
                        }
                    };
                    match status.exit.and_then(|e| e.code) {
                        Some(0) if status.state == InstanceState::Stopped => Ok(()),
                        code => Err((code, status.reason.unwrap_or_else(|| "the task failed".to_owned()))),
                    }
                }
            };
            drop(_permit);
            attempt += 1;
            match outcome {
                Ok(()) => {
                    set("SUCCEEDED", attempt, Some(0), "", false, true);
                    return Ok(());
                }
                Err((code, message)) => {
                    if attempt > spec.max_retries {
                        set("FAILED", attempt, code, &message, false, true);
                        return Err(format!(
                            "Task {index} failed after {attempt} attempt(s) (max retries {}): {message}",
                            spec.max_retries
                        ));
                    }
                    set("PENDING", attempt, code, &message, false, false);
                }
            }
        }
    }

    fn cancel_running(&self, parent: &Parent, execution: &str) -> bool {
        let key = format!("{}/{execution}", parent.path());
        let token = self.inner.execution_cancels.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        token.map(|t| t.cancel()).is_some()
    }

    pub fn cancel_execution(&self, parent: &Parent, job: &str, execution: &str) -> Result<Operation, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        if !self.cancel_running(parent, execution) {
            return Err(ControlError::FailedPrecondition(format!("Execution '{execution}' is not running")));
        }
        self.done_operation(parent, EXECUTION_TYPE, &e)
    }

    pub fn delete_execution(&self, parent: &Parent, job: &str, execution: &str) -> Result<Operation, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        self.cancel_running(parent, execution);
        self.inner.db.write(|tx| delete_execution_rows(tx, parent, execution))?;
        self.done_operation(parent, EXECUTION_TYPE, &e)
    }

    pub fn list_executions(&self, parent: &Parent, job: &str) -> Result<ListExecutionsResponse, ControlError> {
        let names: Vec<(String, String)> = self.inner.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT job, name FROM executions WHERE project = ?1 AND location = ?2 AND (job = ?3 OR ?3 = '-') ORDER BY create_time DESC",
            )?;
            let rows = stmt.query_map(params![parent.project, parent.location, job], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let executions = names.iter().map(|(j, n)| self.get_execution(parent, j, n)).collect::<Result<_, _>>()?;
        Ok(ListExecutionsResponse { executions })
    }

    pub fn get_execution(&self, parent: &Parent, job: &str, name: &str) -> Result<Execution, ControlError> {
        let not_found = || ControlError::NotFound(format!("Execution '{name}' was not found"));
        let row: Option<ExecutionColumns> = self.inner.db.read(|c| {
            c.query_row(
                "SELECT job, uid, spec, state, create_time, start_time, completion_time, message FROM executions
                 WHERE project = ?1 AND location = ?2 AND name = ?3",
                params![parent.project, parent.location, name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
            )
            .optional()
        })?;
        let (row_job, uid, spec, state, create_time, start_time, completion_time, message) =
            row.ok_or_else(not_found)?;
        if job != "-" && row_job != job {
            return Err(not_found());
        }
        let spec: ExecutionSpec = serde_json::from_str(&spec).map_err(|e| ControlError::Internal(e.to_string()))?;
        let counts: Vec<(String, i64)> = self.inner.db.read(|c| {
            let mut stmt =
                c.prepare("SELECT state, attempts FROM tasks WHERE project = ?1 AND location = ?2 AND execution = ?3")?;
            let rows =
                stmt.query_map(params![parent.project, parent.location, name], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let count = |s: &str| i32::try_from(counts.iter().filter(|(st, _)| st == s).count()).unwrap_or(i32::MAX);
        let retried = counts.iter().map(|(_, a)| (a - 1).max(0)).sum::<i64>();
        let condition_state = match state.as_str() {
            "SUCCEEDED" => CONDITION_SUCCEEDED,
            "RUNNING" => CONDITION_RECONCILING,
            _ => CONDITION_FAILED,
        };
        let time = completion_time.clone().unwrap_or_else(|| create_time.clone());
        let mut completed = Condition::new("Completed", condition_state, message, &time);
        if state == "CANCELLED" {
            completed.reason = Some("CANCELLED".to_owned());
        }
        Ok(Execution {
            name: format!("{}/executions/{name}", job_path(parent, &row_job)),
            uid,
            job: job_path(parent, &row_job),
            create_time: Some(create_time),
            start_time,
            completion_time,
            parallelism: i32::try_from(spec.parallelism).unwrap_or(i32::MAX),
            task_count: i32::try_from(spec.task_count).unwrap_or(i32::MAX),
            template: spec.template,
            reconciling: state == "RUNNING",
            conditions: vec![completed],
            running_count: count("RUNNING"),
            succeeded_count: count("SUCCEEDED"),
            failed_count: count("FAILED"),
            cancelled_count: count("CANCELLED"),
            retried_count: i32::try_from(retried).unwrap_or(i32::MAX),
            etag: String::new(),
        })
    }

    pub fn list_tasks(&self, parent: &Parent, job: &str, execution: &str) -> Result<ListTasksResponse, ControlError> {
        let e = self.get_execution(parent, job, execution)?;
        let rows: Vec<TaskColumns> = self.inner.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT idx, state, attempts, exit_code, message, start_time, completion_time FROM tasks
                 WHERE project = ?1 AND location = ?2 AND execution = ?3 ORDER BY idx",
            )?;
            let rows = stmt.query_map(params![parent.project, parent.location, execution], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })?;
            rows.collect()
        })?;
        let tasks = rows
            .into_iter()
            .map(|(index, state, attempts, exit_code, message, start_time, completion_time)| {
                let condition_state = match state.as_str() {
                    "SUCCEEDED" => CONDITION_SUCCEEDED,
                    "RUNNING" | "PENDING" => CONDITION_RECONCILING,
                    _ => CONDITION_FAILED,
                };
                let time = completion_time.clone().or(start_time.clone()).unwrap_or_default();
                let mut condition = Condition::new("Completed", condition_state, message.clone(), &time);
                condition.reason = Some(state);
                Task {
                    name: format!("{}/tasks/{}-{index}", e.name, execution),
                    job: e.job.clone(),
                    execution: e.name.clone(),
                    index: i32::try_from(index).unwrap_or(0),
                    retried: i32::try_from((attempts - 1).max(0)).unwrap_or(0),
                    start_time,
                    completion_time,
                    last_attempt_result: exit_code.map(|code| TaskAttemptResult {
                        status: (code != 0).then(|| wharf_api::Status { code: 2, message, details: vec![] }),
                        exit_code: code,
                    }),
                    conditions: vec![condition],
                    max_retries: e.template.max_retries.unwrap_or(3),
                    timeout: e.template.timeout.clone(),
                }
            })
            .collect();
        Ok(ListTasksResponse { tasks })
    }

    /// After a restart: executions that were running continue (see the module doc).
    pub(crate) fn resume_executions(&self) -> Result<(), ControlError> {
        let running: Vec<(String, String, String, String, String)> = self.inner.db.read(|c| {
            let mut stmt =
                c.prepare("SELECT project, location, job, name, spec FROM executions WHERE state = 'RUNNING'")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            rows.collect()
        })?;
        for (project, location, job, id, spec) in running {
            let Ok(spec) = serde_json::from_str::<ExecutionSpec>(&spec) else { continue };
            let parent = Parent { project, location };
            // Attempts that were running when the server stopped count as failed attempts.
            self.inner.db.write(|tx| {
                tx.execute(
                    "UPDATE tasks SET state = 'PENDING', attempts = attempts + 1,
                        message = 'the attempt was interrupted by a server restart'
                     WHERE project = ?1 AND location = ?2 AND execution = ?3 AND state = 'RUNNING'",
                    params![parent.project, parent.location, id],
                )
                .map_err(ControlError::from_sql)
            })?;
            tracing::info!(execution = %id, "resuming an execution after restart");
            self.spawn_execution(parent, job, id, spec, None);
        }
        Ok(())
    }
}
