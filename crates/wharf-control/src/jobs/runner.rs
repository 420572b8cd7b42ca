//! Running an execution: [`ExecutionRunner`] starts a [`TaskRunner`] per unfinished task, at
//! most `parallelism` at a time, and decides how the execution ends; a task runner runs its
//! task's attempts through the instance backend, each bounded by the task timeout, until one
//! succeeds or the retries are spent. When one task fails for good the others are stopped
//! (Cloud Run's execution fails as a whole). Cancellation stops every task; a server stop
//! leaves the execution running in the database, to resume on the next start.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wharf_api::names::Parent;

use super::store::{self, ExecutionSpec, ExecutionState, TaskState, TaskUpdate};
use crate::ControlPlane;
use crate::backend::{InstanceHandle, InstanceIdentity, InstanceTemplate, LaunchSpec, Owner, Severity};

/// One execution's run: shared by its task runners.
#[derive(Debug)]
pub(crate) struct ExecutionRunner {
    pub(crate) control: ControlPlane,
    pub(crate) parent: Parent,
    pub(crate) job: String,
    pub(crate) execution: String,
    pub(crate) spec: ExecutionSpec,
    /// The user (or a delete) cancelled the execution.
    pub(crate) cancel: CancellationToken,
    /// A task failed for good: the others stop.
    failed: CancellationToken,
    /// At most `parallelism` tasks run at once.
    slots: Semaphore,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecutionOutcome {
    pub(crate) state: ExecutionState,
    pub(crate) message: String,
}

impl ExecutionRunner {
    pub(crate) fn new(
        control: ControlPlane,
        parent: Parent,
        job: String,
        execution: String,
        spec: ExecutionSpec,
        cancel: CancellationToken,
    ) -> ExecutionRunner {
        let slots = Semaphore::new(usize::try_from(spec.parallelism.max(1)).unwrap_or(1));
        ExecutionRunner { control, parent, job, execution, spec, cancel, failed: CancellationToken::new(), slots }
    }

    /// Runs every unfinished task; returns how the execution ended.
    pub(crate) async fn run(self: Arc<Self>) -> ExecutionOutcome {
        let failed = |message: String| ExecutionOutcome { state: ExecutionState::Failed, message };
        let template = match self.spec.instance() {
            Ok(t) => t,
            Err(e) => return failed(format!("the task template is invalid: {e}")),
        };
        let tasks = match store::tasks(&self.control.inner.db, &self.parent, &self.execution) {
            Ok(tasks) => tasks,
            Err(e) => return failed(format!("the execution's tasks could not be read: {e}")),
        };
        let mut runners = tokio::task::JoinSet::new();
        for task in tasks.into_iter().filter(|t| !t.state.is_final()) {
            let runner = TaskRunner { execution: self.clone(), template: template.clone(), index: task.index };
            let span = tracing::info_span!("task", index = task.index);
            runners.spawn(runner.run(task.attempts).instrument(span));
        }
        let mut failure = None;
        while let Some(result) = runners.join_next().await {
            let result = result.unwrap_or_else(|e| Err(format!("the task runner panicked: {e}")));
            if let Err(reason) = result
                && failure.is_none()
            {
                failure = Some(reason);
                self.failed.cancel();
            }
        }
        if self.cancel.is_cancelled() {
            ExecutionOutcome { state: ExecutionState::Cancelled, message: "The execution was cancelled.".to_owned() }
        } else if let Some(reason) = failure {
            failed(reason)
        } else {
            ExecutionOutcome { state: ExecutionState::Succeeded, message: String::new() }
        }
    }
}

/// Runs one task's attempts.
#[derive(Debug)]
struct TaskRunner {
    execution: Arc<ExecutionRunner>,
    template: InstanceTemplate,
    index: u32,
}

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    Succeeded,
    /// Failed (exit code, crash, timeout, could not start): retried while retries remain.
    Failed {
        exit_code: Option<i32>,
        message: String,
    },
    /// Cancelled, or stopped because another task failed.
    Stopped {
        why: &'static str,
    },
    /// The server is stopping: the task stays running in the database.
    Interrupted,
}

impl TaskRunner {
    /// Runs attempts from number `attempt` until one succeeds or retries are spent; `Err` is
    /// the reason the task failed for good.
    async fn run(self, mut attempt: u32) -> Result<(), String> {
        let max_retries = self.execution.spec.max_retries;
        if attempt > max_retries {
            // Its last attempt was interrupted by a server restart, which counts as a failure.
            let message = "the task's last attempt was interrupted by a server restart";
            self.record(TaskState::Failed, attempt, None, message, false, true);
            return Err(format!(
                "Task {} failed after {attempt} attempt(s) (max retries {max_retries}): {message}",
                self.index
            ));
        }
        loop {
            let outcome = match self.wait_for_slot().await {
                Some(stopped) => stopped,
                None => self.attempt(attempt).instrument(tracing::info_span!("attempt", attempt)).await,
            };
            match outcome {
                Attempt::Interrupted => return Ok(()),
                Attempt::Stopped { why } => {
                    self.record(TaskState::Cancelled, attempt, None, why, false, true);
                    return Ok(());
                }
                Attempt::Succeeded => {
                    self.record(TaskState::Succeeded, attempt + 1, Some(0), "", false, true);
                    return Ok(());
                }
                Attempt::Failed { exit_code, message } => {
                    attempt += 1;
                    tracing::info!(attempt, %message, "task attempt failed");
                    if attempt > max_retries {
                        self.record(TaskState::Failed, attempt, exit_code, &message, false, true);
                        return Err(format!(
                            "Task {} failed after {attempt} attempt(s) (max retries {max_retries}): {message}",
                            self.index
                        ));
                    }
                    self.record(TaskState::Pending, attempt, exit_code, &message, false, false);
                }
            }
        }
    }

    /// Waits for a free slot; `Some` if the task must stop instead.
    async fn wait_for_slot(&self) -> Option<Attempt> {
        let e = &self.execution;
        // A slot is taken per attempt, so a task waiting for its retry does not hold one.
        tokio::select! {
            permit = e.slots.acquire() => { permit.ok()?.forget(); None }
            _ = e.cancel.cancelled() => Some(Attempt::Stopped { why: "cancelled" }),
            _ = e.failed.cancelled() => Some(Attempt::Stopped { why: "another task failed" }),
            _ = e.control.inner.jobs.stopping.cancelled() => Some(Attempt::Interrupted),
        }
    }

    /// One attempt: start the task's instance, wait for it to end, the timeout, a cancel or
    /// the server stopping. Releases the slot when done.
    async fn attempt(&self, attempt: u32) -> Attempt {
        let e = &self.execution;
        let _slot = SlotGuard(&e.slots);
        self.record(TaskState::Running, attempt, None, "", true, false);
        let spec = LaunchSpec {
            owner: Owner::Task {
                job: e.job.clone(),
                execution: e.execution.clone(),
                index: self.index,
                attempt,
                count: e.spec.task_count,
            },
            identity: InstanceIdentity {
                project: e.parent.project.clone(),
                region: e.parent.location.clone(),
                service_account: e.spec.template.service_account.clone(),
            },
            image: e.spec.image.clone(),
            template: self.template.clone(),
        };
        let backend = &e.control.inner.backend;
        let started = tokio::time::Instant::now();
        let instance = match backend.start(spec).await {
            Ok(instance) => instance,
            Err(err) => {
                return Attempt::Failed { exit_code: None, message: format!("the task could not start: {err}") };
            }
        };
        tracing::debug!(instance = %instance.id(), "task instance running");
        let timeout = e.spec.timeout();
        let ended = tokio::select! {
            status = instance.wait_terminal() => {
                if status.succeeded() {
                    Attempt::Succeeded
                } else {
                    let message = status.reason.unwrap_or_else(|| "the task failed".to_owned());
                    Attempt::Failed { exit_code: status.exit.and_then(|x| x.code), message }
                }
            }
            _ = tokio::time::sleep(timeout) => {
                self.stop(&instance).await;
                let secs = timeout.as_secs();
                let log = format!("Task {} attempt {attempt} exceeded its timeout of {secs}s and was stopped.", self.index);
                backend.log(instance.as_ref(), Severity::Error, log).await;
                Attempt::Failed { exit_code: None, message: format!("Task {} exceeded its timeout of {secs}s.", self.index) }
            }
            _ = e.cancel.cancelled() => { self.stop(&instance).await; Attempt::Stopped { why: "cancelled" } }
            _ = e.failed.cancelled() => { self.stop(&instance).await; Attempt::Stopped { why: "another task failed" } }
            _ = e.control.inner.jobs.stopping.cancelled() => {
                // Left RUNNING: the next start counts this attempt as failed and retries it.
                self.stop(&instance).await;
                Attempt::Interrupted
            }
        };
        // Billed like Cloud Run's jobs: from the instance's start until it is gone, whatever
        // the outcome.
        let resources = (self.template.resources.cpu_millis, self.template.resources.memory_bytes);
        let ran = started.elapsed();
        if let Err(err) =
            crate::usage::add_task_time(&e.control.inner.db, &e.parent, &e.job, &e.execution, resources, ran)
        {
            tracing::error!(error = %err, "cannot record the task's usage");
        }
        ended
    }

    async fn stop(&self, instance: &Arc<dyn InstanceHandle>) {
        let backend = &self.execution.control.inner.backend;
        backend.stop(instance.clone(), self.template.grace_period).await;
    }

    fn record(
        &self,
        state: TaskState,
        attempts: u32,
        exit_code: Option<i32>,
        message: &str,
        started: bool,
        completed: bool,
    ) {
        let e = &self.execution;
        let update = TaskUpdate { state, attempts, exit_code, message, started, completed };
        if let Err(err) = store::update_task(&e.control.inner.db, &e.parent, &e.execution, self.index, &update) {
            tracing::error!(error = %err, ?state, "cannot record the task's state");
        }
    }
}

/// Gives a slot back when an attempt ends, however it ends.
struct SlotGuard<'a>(&'a Semaphore);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}
