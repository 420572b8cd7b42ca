//! Jobs, executions and tasks in Cloud Run Admin API v2 form.

use serde::{Deserialize, Serialize};

use crate::types::{Condition, Container, Labels};

fn is_zero32(n: &i32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Job {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub generation: String,
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
    pub template: ExecutionTemplate,
    #[serde(skip_serializing_if = "is_zero32")]
    pub execution_count: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_created_execution: Option<ExecutionReference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal_condition: Option<Condition>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reconciling: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub etag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ExecutionTemplate {
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    #[serde(skip_serializing_if = "is_zero32")]
    pub parallelism: i32,
    #[serde(skip_serializing_if = "is_zero32")]
    pub task_count: i32,
    pub template: TaskTemplate,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TaskTemplate {
    pub containers: Vec<Container>,
    /// Per attempt, e.g. `"600s"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    /// Private networks the tasks may reach (Cloud Run's VPC egress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_access: Option<crate::VpcAccess>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::types::Volume>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ExecutionReference {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Execution {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub job: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    pub parallelism: i32,
    pub task_count: i32,
    pub template: TaskTemplate,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reconciling: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    pub running_count: i32,
    pub succeeded_count: i32,
    pub failed_count: i32,
    pub cancelled_count: i32,
    pub retried_count: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub etag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Task {
    pub name: String,
    pub job: String,
    pub execution: String,
    pub index: i32,
    /// How many times the task was retried (attempts - 1).
    pub retried: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_result: Option<TaskAttemptResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    pub max_retries: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskAttemptResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::Status>,
    pub exit_code: i32,
}

/// `jobs/{job}:run` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RunJobRequest {
    /// The job's full name; when given, it must be the one the URL names.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub validate_only: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub etag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Overrides>,
}

/// `executions/{execution}:cancel` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CancelExecutionRequest {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub validate_only: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub etag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_overrides: Vec<ContainerOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ContainerOverride {
    /// The container to override; Wharf's jobs have one, so empty or that container's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<crate::EnvVar>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub clear_args: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListJobsResponse {
    pub jobs: Vec<Job>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListExecutionsResponse {
    pub executions: Vec<Execution>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListTasksResponse {
    pub tasks: Vec<Task>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

pub const JOB_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Job";
pub const EXECUTION_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Execution";
