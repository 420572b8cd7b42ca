//! Usage metering per service: what Cloud Run would bill, in its units, computed from the
//! revision pools' accounting ([`wharf_router::PoolReport`]) and the request counts of the
//! [`crate::metrics::Metrics`] registry.
//!
//! Both of Cloud Run's CPU allocation modes are computed, whatever the revision is set to,
//! so a user can compare:
//! - **CPU throttled** (request-based billing, Cloud Run's default): instance time is billed
//!   only while an instance has at least one request in flight (overlapping requests on one
//!   instance count once);
//! - **CPU always allocated** (instance-based billing, `--no-cpu-throttling`): an instance is
//!   billed from joining its pool (ready) until it leaves it.
//!
//! vCPU-seconds are instance seconds times the instance's CPU limit, GiB-seconds instance
//! seconds times its memory limit in GiB. Cloud Run rounds each billable interval up to the
//! next 100 ms and adds its free tier; neither is applied here. Figures cover the revisions
//! that exist now, since the server started (a restart or a deleted revision starts them
//! again).

use serde::Serialize;

use crate::metrics::MetricsSnapshot;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Billable {
    pub instance_seconds: f64,
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
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
    pub revisions: Vec<RevisionUsage>,
}

const GIB: f64 = (1u64 << 30) as f64;

fn billable(seconds: f64, vcpu: f64, memory_gib: f64) -> Billable {
    Billable { instance_seconds: seconds, vcpu_seconds: seconds * vcpu, gib_seconds: seconds * memory_gib }
}

fn add(total: &mut Billable, part: &Billable) {
    total.instance_seconds += part.instance_seconds;
    total.vcpu_seconds += part.vcpu_seconds;
    total.gib_seconds += part.gib_seconds;
}

/// The usage of service `service` of `project` in `location`, from a metrics snapshot.
pub fn service_usage(snapshot: &MetricsSnapshot, project: &str, location: &str, service: &str) -> ServiceUsage {
    let mut usage = ServiceUsage {
        name: format!("projects/{project}/locations/{location}/services/{service}"),
        requests: 0,
        cpu_throttled: Billable::default(),
        cpu_always_allocated: Billable::default(),
        revisions: Vec::new(),
    };
    for r in &snapshot.revisions {
        let l = &r.labels;
        if l.project_id != project || l.location != location || l.service_name != service {
            continue;
        }
        usage.requests += r.requests();
        let Some(pool) = &r.pool else { continue };
        #[allow(clippy::cast_precision_loss)]
        let (vcpu, memory_gib) = (pool.owner.cpu_millis as f64 / 1000.0, pool.owner.memory_bytes as f64 / GIB);
        let revision = RevisionUsage {
            revision: l.revision_name.clone(),
            vcpu,
            memory_gib,
            requests: r.requests(),
            cpu_throttled: billable(pool.busy_time.as_secs_f64(), vcpu, memory_gib),
            cpu_always_allocated: billable(pool.instance_time.as_secs_f64(), vcpu, memory_gib),
        };
        add(&mut usage.cpu_throttled, &revision.cpu_throttled);
        add(&mut usage.cpu_always_allocated, &revision.cpu_always_allocated);
        usage.revisions.push(revision);
    }
    usage
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use wharf_router::observe::Histogram;
    use wharf_router::{PoolOwner, PoolReport};

    use super::*;
    use crate::metrics::{RevisionLabels, RevisionSnapshot};

    #[test]
    fn both_billing_modes_are_instance_seconds_times_the_instance_size() {
        let owner = PoolOwner {
            project: "p".into(),
            location: "l".into(),
            service: "api".into(),
            cpu_millis: 2000,
            memory_bytes: 512 << 20,
        };
        let pool = PoolReport {
            owner: Arc::new(owner),
            revision: "api-1".into(),
            active: 0,
            idle: 1,
            starting: 0,
            in_flight: 0,
            queued: 0,
            desired: 1,
            max_concurrency: 1,
            startups: Histogram::default().snapshot(),
            instance_time: Duration::from_secs(100),
            busy_time: Duration::from_secs(10),
        };
        let labels = RevisionLabels {
            project_id: "p".into(),
            location: "l".into(),
            service_name: "api".into(),
            revision_name: "api-1".into(),
        };
        let snapshot = MetricsSnapshot {
            revisions: vec![RevisionSnapshot {
                labels,
                requests_by_code: BTreeMap::from([(Some(200), 7), (Some(500), 1)]),
                latency: Histogram::default().snapshot(),
                cold_start_requests: 0,
                pool: Some(pool),
            }],
            surface_requests: Vec::new(),
            request_log_dropped: 0,
        };
        let usage = service_usage(&snapshot, "p", "l", "api");
        assert_eq!(usage.requests, 8);
        assert_eq!(usage.cpu_throttled, Billable { instance_seconds: 10.0, vcpu_seconds: 20.0, gib_seconds: 5.0 });
        assert_eq!(
            usage.cpu_always_allocated,
            Billable { instance_seconds: 100.0, vcpu_seconds: 200.0, gib_seconds: 50.0 }
        );
        assert_eq!(service_usage(&snapshot, "p", "l", "web").revisions, []);
    }
}
