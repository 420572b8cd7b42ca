//! Wharf's control plane: the declarative core behind the admin API.
//!
//! Commands record desired state in SQLite and answer with long-running operations at once;
//! reconcilers and runners then converge toward it. Each domain owns its commands, its tables
//! and its run-time state:
//!
//! - [`services`]: services and revisions; the reconciler proves a new revision ready and
//!   routes traffic through per-revision pools of the router.
//! - [`domains`]: domain mappings: custom domains routed to services, with certificates.
//! - [`jobs`]: jobs, executions and tasks; runners run tasks with parallelism, retries and
//!   timeouts.
//! - [`operations`]: the operation resources every mutation answers with.
//! - [`paging`]: `pageSize`/`pageToken` and `etag` checks, the same for every RPC.
//! - [`validate`]: Cloud Run's rules for what users ask to run, checked once; the result is
//!   stored and used as is by every start.
//! - [`backend`]: the seam to whatever runs instances ([`backend::InstanceBackend`]), owned
//!   here; `wharf-runtime` implements it, [`backend::fake`] fakes it for tests.
//!
//! Nothing here knows about HTTP: the API layer turns requests into calls on
//! [`ControlPlane`] and maps [`ControlError::code`] to statuses.

pub mod backend;
pub mod domains;
mod error;
pub mod jobs;
pub(crate) mod operations;
pub mod paging;
mod pinned;
pub mod services;
pub mod time;
pub mod usage;
pub mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use wharf_image::Resolver;
use wharf_router::{RevisionPool, RoutingTable};
use wharf_store::Store;

pub use backend::InstanceBackend;
pub use error::ControlError;

/// Settings the control plane runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Service hosts are `{service}-{project}.{domain}`.
    pub domain: String,
    /// The ingress port, for URLs.
    pub ingress_port: u16,
    /// How long an instance may sit idle before it is stopped (down to min-instances).
    pub idle_timeout: Duration,
    /// How long a request may wait for an instance before a 503.
    pub queue_timeout: Duration,
    /// The names of the private networks revisions and jobs may opt into (`vpcAccess`), from
    /// the server's `--vpc-network`; the runtime holds their address ranges.
    pub vpc_networks: Vec<String>,
}

/// The control plane: cheap to clone, shared by the API handlers.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Store,
    pub(crate) resolver: Resolver,
    pub(crate) backend: Arc<dyn InstanceBackend>,
    pub(crate) settings: Settings,
    pub(crate) operations: operations::Operations,
    pub(crate) serving: services::Serving,
    pub(crate) jobs: jobs::Runs,
    pub(crate) domains: domains::DomainState,
    pub(crate) usage: usage::Meter,
}

/// How long a stopping server gives job runners to stop their tasks.
const JOB_STOP_BUDGET: Duration = Duration::from_secs(15);
/// How long a stopping server lets in-flight requests finish.
const DRAIN_BUDGET: Duration = Duration::from_secs(10);

impl ControlPlane {
    /// Opens the control plane and restores what was running: routes for every service, the
    /// pools of revisions that serve (which bring back min-instances), reconciles that an
    /// earlier run left unfinished, and running job executions.
    pub async fn open(
        db: Store,
        resolver: Resolver,
        backend: Arc<dyn InstanceBackend>,
        table: Arc<RoutingTable>,
        settings: Settings,
    ) -> Result<ControlPlane, ControlError> {
        let control = ControlPlane {
            inner: Arc::new(Inner {
                operations: operations::Operations::new(db.clone()),
                db,
                resolver,
                backend,
                settings,
                serving: services::Serving::new(table),
                jobs: jobs::Runs::default(),
                domains: domains::DomainState::new(),
                usage: usage::Meter::default(),
            }),
        };
        let mut claimed = control.restore()?;
        claimed.extend(control.resume_executions()?);
        control.settle_operations(&claimed)?;
        control.spawn_usage_flush();
        Ok(control)
    }

    /// After a restart: completes every unfinished operation that no reconcile or execution
    /// took over (`claimed`), so none stays running forever. A service operation whose service
    /// is gone was a committed delete: done. An execution's operation whose execution already
    /// ended completes as the execution did. Anything else fails with the reason.
    fn settle_operations(&self, claimed: &[String]) -> Result<(), ControlError> {
        for op in self.inner.operations.unfinished()? {
            if claimed.contains(&op.name) {
                continue;
            }
            let Some(parent) = operation_parent(&op.name) else { continue };
            let metadata = op.metadata.clone().unwrap_or_default();
            let type_url = metadata.get("@type").and_then(|t| t.as_str()).unwrap_or_default().to_owned();
            let resource = metadata.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_owned();
            let restarted = |what: &str| {
                wharf_api::Status::new(
                    wharf_api::Code::Aborted,
                    format!("The server restarted before this operation completed; {what}"),
                )
            };
            let builder = operations::OperationBuilder::from_any(&parent, metadata);
            let settled = if type_url == wharf_api::SERVICE_TYPE {
                let service = resource.rsplit('/').next().unwrap_or_default();
                if services::store::get_service(&self.inner.db, &parent, service)?.is_none() {
                    builder.finish(&op.name, None)
                } else {
                    builder.finish(&op.name, Some(restarted("read the service to see its state")))
                }
            } else if type_url == wharf_api::jobs::EXECUTION_TYPE {
                match self.execution_of(&resource) {
                    Some(execution) => {
                        let ok = execution.conditions.iter().any(|c| c.state == wharf_api::CONDITION_SUCCEEDED);
                        let error = (!ok).then(|| {
                            let message = execution.conditions.first().map(|c| c.message.clone()).unwrap_or_default();
                            wharf_api::Status::new(wharf_api::Code::Aborted, message)
                        });
                        operations::OperationBuilder::new(&parent, &type_url, &execution).finish(&op.name, error)
                    }
                    None => builder.finish(&op.name, Some(restarted("its execution no longer exists"))),
                }
            } else {
                builder.finish(&op.name, Some(restarted("read the resource to see its state")))
            };
            tracing::info!(operation = %op.name, failed = settled.error.is_some(), "settled an operation left unfinished");
            self.inner.operations.complete(&settled)?;
        }
        Ok(())
    }

    /// Refuses an instance template whose `vpcAccess` names a network this server does not
    /// have, naming the ones it has.
    pub(crate) fn check_vpc_network(
        &self,
        field: &str,
        template: &backend::InstanceTemplate,
    ) -> Result<(), ControlError> {
        let Some(vpc) = &template.vpc else { return Ok(()) };
        let known = &self.inner.settings.vpc_networks;
        if known.contains(&vpc.network) {
            return Ok(());
        }
        Err(ControlError::InvalidArgument(if known.is_empty() {
            format!(
                "{field} names the network {:?}, but this server allows no VPC networks: start wharf server with \
                 --vpc-network NAME=CIDR[,CIDR...] to allow one",
                vpc.network
            )
        } else {
            format!(
                "{field} names the network {:?}, which this server does not have; its networks are: {} (wharf server \
                 --vpc-network)",
                vpc.network,
                known.join(", ")
            )
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Stops job runners (their executions resume at the next start), then every revision's
    /// instances, draining in-flight requests first.
    pub async fn shutdown(&self) {
        self.inner.jobs.stop_all(JOB_STOP_BUDGET).await;
        let pools: Vec<(String, Arc<RevisionPool>)> =
            self.inner.serving.pools.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        let closes: Vec<_> = pools.iter().map(|(_, p)| p.close(DRAIN_BUDGET)).collect();
        futures::future::join_all(closes).await;
        for (key, pool) in &pools {
            self.flush_closed_pool(key, pool);
        }
    }

    /// The operation `name`.
    pub fn get_operation(&self, name: &str) -> Result<wharf_api::Operation, ControlError> {
        self.inner.operations.get(name)
    }

    /// The operations in `parent`, oldest first (`ListOperations`).
    pub fn list_operations(
        &self,
        parent: &wharf_api::names::Parent,
        filter: &str,
        page: &paging::PageRequest,
    ) -> Result<wharf_api::ListOperationsResponse, ControlError> {
        self.inner.operations.list(parent, filter, page)
    }

    /// Forgets the operation `name` (`DeleteOperation`).
    pub fn delete_operation(&self, name: &str) -> Result<(), ControlError> {
        self.inner.operations.delete(name)
    }

    /// Waits until the operation is done or `timeout` passes, then returns it as it is.
    pub async fn wait_operation(&self, name: &str, timeout: Duration) -> Result<wharf_api::Operation, ControlError> {
        self.inner.operations.wait(name, timeout).await
    }

    /// One lock per service: commands and reconciles of a service do not interleave.
    pub(crate) fn service_lock(&self, parent: &wharf_api::names::Parent, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!("{}/{service}", parent.path());
        self.inner.serving.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone()
    }

    /// The pool of a revision, if it has one.
    pub fn pool(&self, project: &str, location: &str, revision: &str) -> Option<Arc<RevisionPool>> {
        let pools = self.inner.serving.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.get(&pool_key(project, location, revision)).cloned()
    }

    /// What every revision pool reports now (instances by state, the autoscaler's wish,
    /// startups, instance and busy time, each instance's resource use), for metrics. A deleted
    /// revision's pool is gone from here, and so are its metric series.
    pub fn pool_reports(&self) -> Vec<wharf_router::PoolReport> {
        let pools: Vec<Arc<RevisionPool>> =
            self.inner.serving.pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        pools.iter().map(|p| p.report_with_usage()).collect()
    }
}

/// `len` random lowercase letters and digits, for generated names (revisions, executions).
pub(crate) fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes.iter().take(len.min(bytes.len())).map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

/// The parent of an operation named `projects/{p}/locations/{l}/operations/{id}`.
fn operation_parent(name: &str) -> Option<wharf_api::names::Parent> {
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("projects"), Some(project), Some("locations"), Some(location)) => {
            Some(wharf_api::names::Parent { project: project.to_owned(), location: location.to_owned() })
        }
        _ => None,
    }
}

pub(crate) fn pool_key(project: &str, location: &str, revision: &str) -> String {
    format!("{project}/{location}/{revision}")
}
