//! The `jobs`, `executions` and `tasks` tables: typed rows, typed states, and every query the
//! jobs domain makes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_api::jobs::{ExecutionReference, Job, TaskTemplate};
use wharf_api::names::Parent;
use wharf_store::Store;
use wharf_store::rusqlite::{self, OptionalExtension, Row, Transaction, params};

use crate::ControlError;
use crate::backend::InstanceTemplate;
use crate::error::{from_json, to_json};
use crate::validate::{Workload, container};

/// Defines a state enum stored as its SCREAMING_SNAKE_CASE name.
macro_rules! stored_state {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<$name> {
                let text = value.as_str()?;
                $name::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(format!("unknown {} {text:?}", stringify!($name)).into())
                })
            }
        }
    };
}

stored_state!(
    /// Where an execution is: running until every task ends.
    ExecutionState { Running => "RUNNING", Succeeded => "SUCCEEDED", Failed => "FAILED", Cancelled => "CANCELLED" }
);

stored_state!(
    /// Where a task is. A pending task waits for a slot (first run or a retry).
    TaskState {
        Pending => "PENDING",
        Running => "RUNNING",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
        Cancelled => "CANCELLED",
    }
);

impl TaskState {
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }
}

/// What one execution runs: resolved and validated once, when it is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionSpec {
    pub task_count: u32,
    pub parallelism: u32,
    pub max_retries: u32,
    pub timeout_secs: f64,
    /// The task template as the API shows it.
    pub template: TaskTemplate,
    pub image: wharf_image::ResolvedImage,
    /// The validated instance template (absent in executions stored before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceTemplate>,
}

impl ExecutionSpec {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs)
    }

    /// The validated instance template, validating an older execution's template if needed.
    pub fn instance(&self) -> Result<InstanceTemplate, ControlError> {
        match &self.instance {
            Some(t) => Ok(t.clone()),
            None => Ok(container(&self.template.containers, &self.template.volumes, Workload::Task)?.1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub parent: Parent,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// The user's part of the job (labels, template), as API JSON.
    pub spec: Job,
    pub image: wharf_image::ResolvedImage,
    pub create_time: String,
    pub update_time: String,
    pub execution_count: i64,
}

#[derive(Debug, Clone)]
pub struct ExecutionRow {
    pub parent: Parent,
    pub job: String,
    pub name: String,
    pub uid: String,
    pub spec: ExecutionSpec,
    pub state: ExecutionState,
    pub message: String,
    pub create_time: String,
    pub start_time: Option<String>,
    pub completion_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub index: u32,
    pub state: TaskState,
    /// Attempts finished so far; the attempt running now (if any) is number `attempts`, from 0.
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub message: String,
    pub start_time: Option<String>,
    pub completion_time: Option<String>,
}

/// What changes when a task moves on.
#[derive(Debug, Clone)]
pub struct TaskUpdate<'a> {
    pub state: TaskState,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub message: &'a str,
    /// Stamp the start time (an attempt begins).
    pub started: bool,
    /// Stamp the completion time (the task is final).
    pub completed: bool,
}

const JOB_COLUMNS: &str =
    "project, location, name, uid, generation, spec, image, create_time, update_time, execution_count";
const EXECUTION_COLUMNS: &str =
    "project, location, job, name, uid, spec, state, message, create_time, start_time, completion_time";

fn job_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        parent: Parent { project: r.get(0)?, location: r.get(1)? },
        name: r.get(2)?,
        uid: r.get(3)?,
        generation: r.get(4)?,
        spec: from_json(&r.get::<_, String>(5)?)?,
        image: from_json(&r.get::<_, String>(6)?)?,
        create_time: r.get(7)?,
        update_time: r.get(8)?,
        execution_count: r.get(9)?,
    })
}

fn execution_row(r: &Row<'_>) -> rusqlite::Result<ExecutionRow> {
    Ok(ExecutionRow {
        parent: Parent { project: r.get(0)?, location: r.get(1)? },
        job: r.get(2)?,
        name: r.get(3)?,
        uid: r.get(4)?,
        spec: from_json(&r.get::<_, String>(5)?)?,
        state: r.get(6)?,
        message: r.get(7)?,
        create_time: r.get(8)?,
        start_time: r.get(9)?,
        completion_time: r.get(10)?,
    })
}

fn task_row(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        index: r.get(0)?,
        state: r.get(1)?,
        attempts: r.get(2)?,
        exit_code: r.get(3)?,
        message: r.get(4)?,
        start_time: r.get(5)?,
        completion_time: r.get(6)?,
    })
}

pub fn get_job(db: &Store, parent: &Parent, name: &str) -> Result<Option<JobRow>, ControlError> {
    Ok(db.read(|c| {
        c.query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE project = ?1 AND location = ?2 AND name = ?3"),
            params![parent.project, parent.location, name],
            job_row,
        )
        .optional()
    })?)
}

pub fn list_jobs(db: &Store, parent: &Parent) -> Result<Vec<JobRow>, ControlError> {
    Ok(db.read(|c| {
        let mut stmt = c.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE project = ?1 AND (location = ?2 OR ?2 = '-') ORDER BY name"
        ))?;
        let rows = stmt.query_map(params![parent.project, parent.location], job_row)?;
        rows.collect()
    })?)
}

/// Inserts a job, or replaces its spec and image and bumps its generation.
pub fn upsert_job(db: &Store, row: &JobRow) -> Result<(), ControlError> {
    let (spec, image) = (to_json("job spec", &row.spec)?, to_json("job image", &row.image)?);
    db.write(|tx| {
        tx.execute(
            &format!(
                "INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (project, location, name) DO UPDATE SET
                     generation = excluded.generation, spec = excluded.spec, image = excluded.image,
                     update_time = excluded.update_time"
            ),
            params![
                row.parent.project,
                row.parent.location,
                row.name,
                row.uid,
                row.generation,
                spec,
                image,
                row.create_time,
                row.update_time,
                row.execution_count
            ],
        )
        .map_err(ControlError::from)
    })?;
    Ok(())
}

/// Deletes a job with all its executions and their tasks.
pub fn delete_job(db: &Store, parent: &Parent, name: &str) -> Result<(), ControlError> {
    db.write(|tx| {
        let executions: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT name FROM executions WHERE project = ?1 AND location = ?2 AND job = ?3")?;
            let rows = stmt.query_map(params![parent.project, parent.location, name], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for execution in executions {
            delete_execution_rows(tx, parent, &execution)?;
        }
        tx.execute(
            "DELETE FROM jobs WHERE project = ?1 AND location = ?2 AND name = ?3",
            params![parent.project, parent.location, name],
        )?;
        Ok::<_, ControlError>(())
    })
}

/// The job's newest execution, for its `latestCreatedExecution`.
pub fn latest_execution(db: &Store, parent: &Parent, job: &str) -> Result<Option<ExecutionReference>, ControlError> {
    Ok(db.read(|c| {
        c.query_row(
            "SELECT name, create_time, completion_time FROM executions WHERE project = ?1 AND location = ?2 AND job = ?3
             ORDER BY create_time DESC LIMIT 1",
            params![parent.project, parent.location, job],
            |r| Ok(ExecutionReference { name: r.get(0)?, create_time: r.get(1)?, completion_time: r.get(2)? }),
        )
        .optional()
    })?)
}

/// Inserts a new running execution with its pending tasks and counts it on its job.
pub fn insert_execution(tx: &Transaction<'_>, row: &ExecutionRow) -> Result<(), ControlError> {
    let p = &row.parent;
    tx.execute(
        &format!("INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            p.project,
            p.location,
            row.job,
            row.name,
            row.uid,
            to_json("execution spec", &row.spec)?,
            row.state,
            row.message,
            row.create_time,
            row.start_time,
            row.completion_time
        ],
    )?;
    for index in 0..row.spec.task_count {
        tx.execute(
            "INSERT INTO tasks (project, location, execution, idx, state) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.project, p.location, row.name, index, TaskState::Pending],
        )?;
    }
    tx.execute(
        "UPDATE jobs SET execution_count = execution_count + 1 WHERE project = ?1 AND location = ?2 AND name = ?3",
        params![p.project, p.location, row.job],
    )?;
    Ok(())
}

pub fn get_execution(db: &Store, parent: &Parent, name: &str) -> Result<Option<ExecutionRow>, ControlError> {
    Ok(db.read(|c| {
        c.query_row(
            &format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE project = ?1 AND location = ?2 AND name = ?3"),
            params![parent.project, parent.location, name],
            execution_row,
        )
        .optional()
    })?)
}

/// Executions of `job` (or of every job for `-`), newest first.
pub fn list_executions(db: &Store, parent: &Parent, job: &str) -> Result<Vec<ExecutionRow>, ControlError> {
    Ok(db.read(|c| {
        let mut stmt = c.prepare(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE project = ?1 AND location = ?2 AND (job = ?3 OR ?3 = '-')
             ORDER BY create_time DESC"
        ))?;
        let rows = stmt.query_map(params![parent.project, parent.location, job], execution_row)?;
        rows.collect()
    })?)
}

/// Executions left running (by a server that stopped), everywhere.
pub fn running_executions(db: &Store) -> Result<Vec<ExecutionRow>, ControlError> {
    Ok(db.read(|c| {
        let mut stmt = c.prepare(&format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE state = ?1"))?;
        let rows = stmt.query_map([ExecutionState::Running], execution_row)?;
        rows.collect()
    })?)
}

pub fn finish_execution(
    db: &Store,
    parent: &Parent,
    name: &str,
    state: ExecutionState,
    message: &str,
) -> Result<(), ControlError> {
    db.write(|tx| {
        tx.execute(
            "UPDATE executions SET state = ?4, message = ?5, completion_time = ?6
             WHERE project = ?1 AND location = ?2 AND name = ?3",
            params![parent.project, parent.location, name, state, message, crate::time::now()],
        )
        .map_err(ControlError::from)
    })?;
    Ok(())
}

pub fn delete_execution(db: &Store, parent: &Parent, name: &str) -> Result<(), ControlError> {
    db.write(|tx| delete_execution_rows(tx, parent, name))
}

fn delete_execution_rows(tx: &Transaction<'_>, parent: &Parent, execution: &str) -> Result<(), ControlError> {
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

pub fn tasks(db: &Store, parent: &Parent, execution: &str) -> Result<Vec<TaskRow>, ControlError> {
    Ok(db.read(|c| {
        let mut stmt = c.prepare(
            "SELECT idx, state, attempts, exit_code, message, start_time, completion_time FROM tasks
             WHERE project = ?1 AND location = ?2 AND execution = ?3 ORDER BY idx",
        )?;
        let rows = stmt.query_map(params![parent.project, parent.location, execution], task_row)?;
        rows.collect()
    })?)
}

pub fn update_task(
    db: &Store,
    parent: &Parent,
    execution: &str,
    index: u32,
    update: &TaskUpdate<'_>,
) -> Result<(), ControlError> {
    db.write(|tx| {
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
                update.state,
                update.attempts,
                update.exit_code,
                update.message,
                update.started,
                crate::time::now(),
                update.completed
            ],
        )
        .map_err(ControlError::from)
    })?;
    Ok(())
}

/// After a restart: attempts that were running count as failed attempts, to be retried.
pub fn interrupt_running_tasks(db: &Store, parent: &Parent, execution: &str) -> Result<(), ControlError> {
    db.write(|tx| {
        tx.execute(
            "UPDATE tasks SET state = ?4, attempts = attempts + 1,
                message = 'the attempt was interrupted by a server restart'
             WHERE project = ?1 AND location = ?2 AND execution = ?3 AND state = ?5",
            params![parent.project, parent.location, execution, TaskState::Pending, TaskState::Running],
        )
        .map_err(ControlError::from)
    })?;
    Ok(())
}
