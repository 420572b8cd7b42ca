//! Jobs, executions and tasks as the API shows them: stored rows plus status derived from
//! task states.

use wharf_api::jobs::{Execution, ExecutionReference, Job, Task, TaskAttemptResult};
use wharf_api::{CONDITION_FAILED, CONDITION_RECONCILING, CONDITION_SUCCEEDED, Code, Condition, Status};

use super::job_path;
use super::store::{ExecutionRow, ExecutionState, JobRow, TaskRow, TaskState};

/// `google.cloud.run.v2.Condition.ExecutionReason` values.
const NON_ZERO_EXIT_CODE: &str = "NON_ZERO_EXIT_CODE";
const EXECUTION_CANCELLED: &str = "CANCELLED";

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(super) fn job(row: &JobRow, latest: Option<ExecutionReference>) -> Job {
    let mut job = row.spec.clone();
    job.name = job_path(&row.parent, &row.name);
    job.uid = row.uid.clone();
    job.generation = row.generation.to_string();
    job.create_time = Some(row.create_time.clone());
    job.update_time = Some(row.update_time.clone());
    job.execution_count = i32::try_from(row.execution_count).unwrap_or(i32::MAX);
    job.etag = format!("\"{}\"", row.generation);
    job.terminal_condition = Some(Condition::new("Ready", CONDITION_SUCCEEDED, "", &row.update_time));
    job.latest_created_execution = latest.map(|mut e| {
        e.name = format!("{}/executions/{}", job.name, e.name);
        e
    });
    job
}

pub(super) fn execution(row: &ExecutionRow, tasks: &[TaskRow]) -> Execution {
    let in_state = |s: TaskState| count(tasks.iter().filter(|t| t.state == s).count());
    let retried: u32 = tasks.iter().map(|t| t.attempts.saturating_sub(1)).sum();
    let condition_state = match row.state {
        ExecutionState::Succeeded => CONDITION_SUCCEEDED,
        ExecutionState::Running => CONDITION_RECONCILING,
        ExecutionState::Failed | ExecutionState::Cancelled => CONDITION_FAILED,
    };
    let time = row.completion_time.clone().unwrap_or_else(|| row.create_time.clone());
    let mut completed = Condition::new("Completed", condition_state, row.message.clone(), &time);
    completed.execution_reason = match row.state {
        ExecutionState::Cancelled => Some(EXECUTION_CANCELLED.to_owned()),
        ExecutionState::Failed if tasks.iter().any(|t| t.exit_code.is_some_and(|c| c != 0)) => {
            Some(NON_ZERO_EXIT_CODE.to_owned())
        }
        _ => None,
    };
    let job = job_path(&row.parent, &row.job);
    let mut execution = Execution {
        name: format!("{job}/executions/{}", row.name),
        uid: row.uid.clone(),
        job,
        create_time: Some(row.create_time.clone()),
        start_time: row.start_time.clone(),
        completion_time: row.completion_time.clone(),
        parallelism: i32::try_from(row.spec.parallelism).unwrap_or(i32::MAX),
        task_count: i32::try_from(row.spec.task_count).unwrap_or(i32::MAX),
        template: row.spec.template.clone(),
        reconciling: row.state == ExecutionState::Running,
        conditions: vec![completed],
        running_count: in_state(TaskState::Running),
        succeeded_count: in_state(TaskState::Succeeded),
        failed_count: in_state(TaskState::Failed),
        cancelled_count: in_state(TaskState::Cancelled),
        retried_count: i32::try_from(retried).unwrap_or(i32::MAX),
        etag: String::new(),
    };
    execution.etag = fingerprint(&execution);
    execution
}

/// An etag for a resource whose every change shows in its rendering: a hash of it.
fn fingerprint(resource: &impl serde::Serialize) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_string(resource).unwrap_or_default().hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

pub(super) fn task(execution: &Execution, execution_id: &str, t: &TaskRow) -> Task {
    let condition_state = match t.state {
        TaskState::Succeeded => CONDITION_SUCCEEDED,
        TaskState::Running | TaskState::Pending => CONDITION_RECONCILING,
        TaskState::Failed | TaskState::Cancelled => CONDITION_FAILED,
    };
    let time = t.completion_time.clone().or(t.start_time.clone()).unwrap_or_default();
    let mut condition = Condition::new("Completed", condition_state, t.message.clone(), &time);
    condition.execution_reason = match t.state {
        TaskState::Cancelled => Some(EXECUTION_CANCELLED.to_owned()),
        TaskState::Failed if t.exit_code.is_some_and(|c| c != 0) => Some(NON_ZERO_EXIT_CODE.to_owned()),
        _ => None,
    };
    Task {
        name: format!("{}/tasks/{execution_id}-{}", execution.name, t.index),
        job: execution.job.clone(),
        execution: execution.name.clone(),
        index: i32::try_from(t.index).unwrap_or(0),
        retried: i32::try_from(t.attempts.saturating_sub(1)).unwrap_or(0),
        start_time: t.start_time.clone(),
        completion_time: t.completion_time.clone(),
        last_attempt_result: t.exit_code.map(|code| TaskAttemptResult {
            status: (code != 0).then(|| Status::new(Code::Unknown, t.message.clone())),
            exit_code: code,
        }),
        conditions: vec![condition],
        max_retries: execution.template.max_retries.unwrap_or(3),
        timeout: execution.template.timeout.clone(),
    }
}
