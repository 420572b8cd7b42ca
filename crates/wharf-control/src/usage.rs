//! Usage metering: what Cloud Run would bill, in its units, per revision of a service and
//! per execution of a job, kept in the state database (table `usage`) so that it survives a
//! restart and outlives deleted revisions and executions.
//!
//! - **Services**, both of Cloud Run's CPU allocation modes whatever the revision is set to,
//!   so a user can compare: *CPU throttled* (request-based billing, the default) bills an
//!   instance only while it has a request in flight (overlapping requests count once); *CPU
//!   always allocated* (`--no-cpu-throttling`) bills it from joining its pool (ready) until it
//!   leaves. The figures come from the revision pools' accounting
//!   ([`wharf_router::PoolReport`]): [`Meter`] adds what each pool accounted since the last
//!   flush to the revision's row (every few seconds, when a pool closes, at shutdown and
//!   before usage is read), so a restart loses at most the seconds since the last flush.
//! - **Jobs** are never throttled: each task attempt's run time, from the start of its
//!   instance to its end, is added to the execution's row when the attempt ends.
//!
//! vCPU-seconds are instance seconds times the CPU limit, GiB-seconds instance seconds times
//! the memory limit in GiB. Cloud Run's rounding of each billable interval up to 100 ms and
//! its free tier are not applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use wharf_api::names::Parent;
use wharf_router::{PoolReport, RevisionPool};
use wharf_store::Store;
use wharf_store::rusqlite::params;

use crate::ControlError;

const GIB: f64 = (1u64 << 30) as f64;

/// How often the pools' accounting is written to the store: what a crash can lose.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Instance time and what it comes to in Cloud Run's billing units.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Billable {
    pub instance_seconds: f64,
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
}

impl Billable {
    fn of(seconds: f64, vcpu: f64, memory_gib: f64) -> Billable {
        Billable { instance_seconds: seconds, vcpu_seconds: seconds * vcpu, gib_seconds: seconds * memory_gib }
    }

    fn add(&mut self, part: &Billable) {
        self.instance_seconds += part.instance_seconds;
        self.vcpu_seconds += part.vcpu_seconds;
        self.gib_seconds += part.gib_seconds;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionUsage {
    pub revision: String,
    pub vcpu: f64,
    pub memory_gib: f64,
    pub requests: u64,
    pub cpu_throttled: Billable,
    pub cpu_always_allocated: Billable,
}

/// One service's usage, as `wharf run services usage` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceUsage {
    /// `projects/P/locations/L/services/S`.
    pub name: String,
    pub requests: u64,
    pub cpu_throttled: Billable,
    pub cpu_always_allocated: Billable,
    /// Every revision that ever ran, deleted ones included.
    pub revisions: Vec<RevisionUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionUsage {
    pub execution: String,
    pub vcpu: f64,
    pub memory_gib: f64,
    /// Task attempts' run time, summed, and its vCPU- and GiB-seconds.
    pub tasks: Billable,
}

/// One job's usage, as `wharf run jobs usage` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobUsage {
    /// `projects/P/locations/L/jobs/J`.
    pub name: String,
    pub tasks: Billable,
    /// Every execution that ran a task, deleted ones included.
    pub executions: Vec<ExecutionUsage>,
}

/// One row of the `usage` table: a revision's or an execution's totals.
#[derive(Debug, Clone, PartialEq)]
struct UsageRow {
    part: String,
    vcpu: f64,
    memory_gib: f64,
    requests: u64,
    /// Services: time with a request in flight; jobs: task run time.
    busy_seconds: f64,
    /// Services: time in the pool; jobs: task run time.
    instance_seconds: f64,
}

/// What a pool had accounted at the last flush.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    busy: Duration,
    instance: Duration,
    requests: u64,
}

/// Adds the pools' accounting to the store, each figure once.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// Per pool key, the pool flushed last (a pool started again for the same revision counts
    /// from zero) and what it had accounted then.
    flushed: Mutex<HashMap<String, (Weak<RevisionPool>, Flushed)>>,
}

#[allow(clippy::cast_precision_loss)]
fn limits_of(cpu_millis: u64, memory_bytes: u64) -> (f64, f64) {
    (cpu_millis as f64 / 1000.0, memory_bytes as f64 / GIB)
}

impl Meter {
    /// Adds what `pool` accounted since its last flush to its revision's row.
    pub(crate) fn flush(&self, db: &Store, key: &str, pool: &Arc<RevisionPool>) -> Result<(), ControlError> {
        let report = pool.report();
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        let entry = flushed.entry(key.to_owned()).or_insert_with(|| (Arc::downgrade(pool), Flushed::default()));
        if !Weak::ptr_eq(&entry.0, &Arc::downgrade(pool)) {
            *entry = (Arc::downgrade(pool), Flushed::default());
        }
        let last = entry.1;
        let now = Flushed { busy: report.busy_time, instance: report.instance_time, requests: report.requests };
        let delta = Flushed {
            busy: now.busy.saturating_sub(last.busy),
            instance: now.instance.saturating_sub(last.instance),
            requests: now.requests.saturating_sub(last.requests),
        };
        if delta.requests == 0 && delta.instance.is_zero() && delta.busy.is_zero() {
            return Ok(());
        }
        add_service_usage(db, &report, delta)?;
        // Recorded only once stored: a failed write is tried again at the next flush.
        entry.1 = now;
        Ok(())
    }

    /// Forgets a pool that is closed and flushed for the last time.
    pub(crate) fn forget(&self, key: &str) {
        self.flushed.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

fn add_service_usage(db: &Store, report: &PoolReport, delta: Flushed) -> Result<(), ControlError> {
    let owner = &report.owner;
    let (vcpu, memory_gib) = limits_of(owner.cpu_millis, owner.memory_bytes);
    db.write(|tx| {
        tx.execute(
            "INSERT INTO usage (project, location, kind, name, part, vcpu, memory_gib, requests, busy_seconds,
                                instance_seconds)
             VALUES (?1, ?2, 'service', ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (project, location, kind, name, part) DO UPDATE SET
                 vcpu = excluded.vcpu, memory_gib = excluded.memory_gib,
                 requests = requests + excluded.requests,
                 busy_seconds = busy_seconds + excluded.busy_seconds,
                 instance_seconds = instance_seconds + excluded.instance_seconds",
            params![
                owner.project,
                owner.location,
                owner.service,
                report.revision,
                vcpu,
                memory_gib,
                i64::try_from(delta.requests).unwrap_or(i64::MAX),
                delta.busy.as_secs_f64(),
                delta.instance.as_secs_f64(),
            ],
        )
        .map(|_| ())
        .map_err(ControlError::from)
    })
}

/// Adds one task attempt's run time to its execution's row.
pub(crate) fn add_task_time(
    db: &Store,
    parent: &Parent,
    job: &str,
    execution: &str,
    (cpu_millis, memory_bytes): (u64, u64),
    ran: Duration,
) -> Result<(), ControlError> {
    let (vcpu, memory_gib) = limits_of(cpu_millis, memory_bytes);
    db.write(|tx| {
        tx.execute(
            "INSERT INTO usage (project, location, kind, name, part, vcpu, memory_gib, busy_seconds, instance_seconds)
             VALUES (?1, ?2, 'job', ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (project, location, kind, name, part) DO UPDATE SET
                 busy_seconds = busy_seconds + excluded.busy_seconds,
                 instance_seconds = instance_seconds + excluded.instance_seconds",
            params![parent.project, parent.location, job, execution, vcpu, memory_gib, ran.as_secs_f64()],
        )
        .map(|_| ())
        .map_err(ControlError::from)
    })
}

fn rows(db: &Store, parent: &Parent, kind: &str, name: &str) -> Result<Vec<UsageRow>, ControlError> {
    Ok(db.read(|c| {
        let mut stmt = c.prepare(
            "SELECT part, vcpu, memory_gib, requests, busy_seconds, instance_seconds FROM usage
             WHERE project = ?1 AND location = ?2 AND kind = ?3 AND name = ?4 ORDER BY part",
        )?;
        let rows = stmt.query_map(params![parent.project, parent.location, kind, name], |r| {
            Ok(UsageRow {
                part: r.get(0)?,
                vcpu: r.get(1)?,
                memory_gib: r.get(2)?,
                requests: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                busy_seconds: r.get(4)?,
                instance_seconds: r.get(5)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()
    })?)
}

/// A service's usage from its rows.
fn service_usage(name: String, rows: Vec<UsageRow>) -> ServiceUsage {
    let mut usage = ServiceUsage {
        name,
        requests: 0,
        cpu_throttled: Billable::default(),
        cpu_always_allocated: Billable::default(),
        revisions: Vec::new(),
    };
    for row in rows {
        let revision = RevisionUsage {
            cpu_throttled: Billable::of(row.busy_seconds, row.vcpu, row.memory_gib),
            cpu_always_allocated: Billable::of(row.instance_seconds, row.vcpu, row.memory_gib),
            revision: row.part,
            vcpu: row.vcpu,
            memory_gib: row.memory_gib,
            requests: row.requests,
        };
        usage.requests += revision.requests;
        usage.cpu_throttled.add(&revision.cpu_throttled);
        usage.cpu_always_allocated.add(&revision.cpu_always_allocated);
        usage.revisions.push(revision);
    }
    usage
}

/// A job's usage from its rows.
fn job_usage(name: String, rows: Vec<UsageRow>) -> JobUsage {
    let mut usage = JobUsage { name, tasks: Billable::default(), executions: Vec::new() };
    for row in rows {
        let execution = ExecutionUsage {
            tasks: Billable::of(row.instance_seconds, row.vcpu, row.memory_gib),
            execution: row.part,
            vcpu: row.vcpu,
            memory_gib: row.memory_gib,
        };
        usage.tasks.add(&execution.tasks);
        usage.executions.push(execution);
    }
    usage
}

impl crate::ControlPlane {
    /// Flushes usage every [`FLUSH_EVERY`] until the control plane stops (or is dropped).
    pub(crate) fn spawn_usage_flush(&self) {
        let inner = Arc::downgrade(&self.inner);
        let stopping = self.inner.jobs.stopping.clone();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(FLUSH_EVERY);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.tick().await;
            loop {
                tokio::select! {
                    _ = stopping.cancelled() => break,
                    _ = timer.tick() => {}
                }
                let Some(inner) = inner.upgrade() else { break };
                if let Err(e) = (crate::ControlPlane { inner }).flush_usage() {
                    tracing::warn!(error = %e, "cannot store usage; trying again at the next flush");
                }
            }
        });
    }

    /// Adds every pool's accounting since the last flush to the store (the server calls this
    /// every few seconds; reads of usage call it first).
    pub fn flush_usage(&self) -> Result<(), ControlError> {
        let pools: Vec<(String, Arc<RevisionPool>)> = self
            .inner
            .serving
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (key, pool) in pools {
            self.inner.usage.flush(&self.inner.db, &key, &pool)?;
        }
        Ok(())
    }

    /// Flushes a pool that was closed (its instances are gone) for the last time.
    pub(crate) fn flush_closed_pool(&self, key: &str, pool: &Arc<RevisionPool>) {
        if let Err(e) = self.inner.usage.flush(&self.inner.db, key, pool) {
            tracing::error!(error = %e, pool = key, "cannot store a closed pool's usage");
        }
        self.inner.usage.forget(key);
    }

    /// The usage of service `service` in `parent`, every revision it ever ran included. The
    /// caller checks the service exists.
    pub fn service_usage(&self, parent: &Parent, service: &str) -> Result<ServiceUsage, ControlError> {
        self.flush_usage()?;
        let name = format!("projects/{}/locations/{}/services/{service}", parent.project, parent.location);
        Ok(service_usage(name, rows(&self.inner.db, parent, "service", service)?))
    }

    /// The usage of job `job` in `parent`: the run time of every task attempt that ended. The
    /// caller checks the job exists.
    pub fn job_usage(&self, parent: &Parent, job: &str) -> Result<JobUsage, ControlError> {
        let name = format!("projects/{}/locations/{}/jobs/{job}", parent.project, parent.location);
        Ok(job_usage(name, rows(&self.inner.db, parent, "job", job)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(part: &str, requests: u64, busy: f64, instance: f64) -> UsageRow {
        UsageRow {
            part: part.into(),
            vcpu: 2.0,
            memory_gib: 0.5,
            requests,
            busy_seconds: busy,
            instance_seconds: instance,
        }
    }

    #[test]
    fn both_billing_modes_are_instance_seconds_times_the_instance_size() {
        let usage = service_usage("s".into(), vec![row("api-1", 8, 10.0, 100.0), row("api-2", 2, 1.0, 4.0)]);
        assert_eq!(usage.requests, 10);
        assert_eq!(
            usage.revisions[0].cpu_throttled,
            Billable { instance_seconds: 10.0, vcpu_seconds: 20.0, gib_seconds: 5.0 }
        );
        assert_eq!(usage.cpu_throttled, Billable { instance_seconds: 11.0, vcpu_seconds: 22.0, gib_seconds: 5.5 });
        assert_eq!(
            usage.cpu_always_allocated,
            Billable { instance_seconds: 104.0, vcpu_seconds: 208.0, gib_seconds: 52.0 }
        );
        let job = job_usage("j".into(), vec![row("j-a", 0, 3.0, 3.0), row("j-b", 0, 1.0, 1.0)]);
        assert_eq!(job.tasks, Billable { instance_seconds: 4.0, vcpu_seconds: 8.0, gib_seconds: 2.0 });
        assert_eq!(job.executions.len(), 2);
    }
}
