//! Reconcilers: converge instances and routes toward a service's stored spec.
//!
//! For a service, one pass: if its newest revision is pending, start one instance of it to
//! prove it becomes ready (that instance then joins the revision's pool as a warm instance)
//! and record ready or failed; then rebuild the service's route from its traffic spec, with
//! the pools of the revisions it names; revisions that lose traffic keep their pool but
//! scale toward zero; finally complete the operation that asked for the change.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;
use wharf_api::names::Parent;
use wharf_api::{Code, Status};
use wharf_autoscaler::ScalingConfig;
use wharf_router::{Access, IngressSetting, PoolConfig, RevisionPool, ServiceRoute, UpstreamProtocol};

use super::pools::RevisionLauncher;
use super::render;
use super::store::{self, RevisionRow, RevisionState, ServiceRow};
use crate::backend::{InstanceIdentity, LaunchSpec, Owner};
use crate::operations::OperationBuilder;
use crate::validate::RevisionConfig;
use crate::{ControlError, ControlPlane, pool_key};

impl ControlPlane {
    /// Restores routes and pools after a restart, and resumes unfinished work: a service with
    /// unfinished operations, or whose newest revision was never proven, is reconciled (which
    /// completes those operations). Returns the operations handed to reconciles.
    pub(crate) fn restore(&self) -> Result<Vec<String>, ControlError> {
        let unfinished = self.inner.operations.unfinished()?;
        let mut claimed = Vec::new();
        for row in store::all_services(&self.inner.db)? {
            let full_name = render::service_name(&row);
            let ops: Vec<String> = unfinished
                .iter()
                .filter(|o| {
                    o.metadata.as_ref().and_then(|m| m.get("name")).and_then(|n| n.as_str()) == Some(full_name.as_str())
                })
                .map(|o| o.name.clone())
                .collect();
            let revisions = store::list_revisions(&self.inner.db, &row.parent, &row.name)?;
            if !ops.is_empty() || revisions.first().is_some_and(|r| r.state == RevisionState::Pending) {
                claimed.extend(ops.iter().cloned());
                self.spawn_reconcile(row.parent.clone(), row.name.clone(), ops);
            } else {
                self.route(&row, &revisions);
            }
        }
        Ok(claimed)
    }

    /// Reconciles a service in the background; completes `operations` when done.
    pub(crate) fn spawn_reconcile(&self, parent: Parent, name: String, operations: Vec<String>) {
        let control = self.clone();
        let span = tracing::info_span!(
            "reconcile",
            project = %parent.project,
            service = %name,
            operation = operations.last().and_then(|o| o.rsplit('/').next()).unwrap_or("")
        );
        tokio::spawn(
            async move {
                tracing::debug!("reconcile started");
                match control.reconcile(&parent, &name, &operations).await {
                    Ok(()) => tracing::debug!("reconcile done"),
                    Err(e) => tracing::error!(error = %e, source = ?std::error::Error::source(&e), "reconcile failed"),
                }
            }
            .instrument(span),
        );
    }

    /// One pass, in three steps so that the service's lock is never held across a start or a
    /// readiness probe: read what to do (under the lock); prove the newest revision ready if it
    /// is pending (no lock: a delete or update may run meanwhile); then, under the lock again,
    /// record the result only if the service and revision still exist (else stop the instance
    /// the proof started), route, and complete `operations`. Reconciles of one service run one
    /// at a time (their own lock), so a revision is proven once.
    async fn reconcile(&self, parent: &Parent, name: &str, operations: &[String]) -> Result<(), ControlError> {
        let serial = self.reconcile_lock(parent, name);
        let _serial = serial.lock().await;
        let lock = self.service_lock(parent, name);
        let (generation, pending) = {
            let _guard = lock.lock().await;
            let Some(row) = store::get_service(&self.inner.db, parent, name)? else {
                return self.abandon(parent, operations);
            };
            let revisions = store::list_revisions(&self.inner.db, parent, name)?;
            (row.generation, revisions.into_iter().next().filter(|r| r.state == RevisionState::Pending))
        };
        let proof = match pending {
            Some(revision) => {
                let span = tracing::info_span!("revision", revision = %revision.name);
                let result = self.launcher(&revision).start().instrument(span).await.map_err(|e| e.to_string());
                Some((revision, result))
            }
            None => None,
        };
        let guard = lock.lock().await;
        let current = store::get_service(&self.inner.db, parent, name)?;
        let revision_exists = match &proof {
            Some((r, _)) => current.is_some() && store::get_revision(&self.inner.db, parent, &r.name)?.is_some(),
            None => true,
        };
        if let Some((revision, result)) = proof {
            match result {
                Ok(instance) if revision_exists => {
                    // The proving instance stays as the revision's first warm instance.
                    self.ensure_pool(&revision).adopt(instance);
                    store::set_revision_state(&self.inner.db, parent, &revision.name, RevisionState::Ready, "")?;
                    tracing::info!(revision = %revision.name, "revision ready");
                }
                Ok(instance) => {
                    tracing::info!(revision = %revision.name, "revision deleted while it was proven; stopping");
                    let backend = self.inner.backend.clone();
                    let grace = revision.config.instance.grace_period;
                    tokio::spawn(async move { backend.stop(instance.handle.clone(), grace).await });
                }
                Err(reason) if revision_exists => {
                    tracing::info!(revision = %revision.name, %reason, "revision failed");
                    store::set_revision_state(&self.inner.db, parent, &revision.name, RevisionState::Failed, &reason)?;
                }
                Err(_) => {}
            }
        }
        let Some(row) = current else {
            drop(guard);
            return self.abandon(parent, operations);
        };
        let revisions = store::list_revisions(&self.inner.db, parent, name)?;
        self.route(&row, &revisions);
        store::set_observed_generation(&self.inner.db, parent, name, generation)?;
        let service = render::service(&row, &revisions, &self.inner.settings);
        let failed = revisions.first().filter(|r| r.state == RevisionState::Failed);
        for op in operations {
            let error = failed.map(|r| {
                Status::new(
                    Code::FailedPrecondition,
                    format!("Revision '{}' is not ready and cannot serve traffic. {}", r.name, r.message),
                )
            });
            let op = OperationBuilder::new(parent, wharf_api::SERVICE_TYPE, &service).finish(op, error);
            self.inner.operations.complete(&op)?;
        }
        Ok(())
    }

    /// Fails `operations` of a service that was deleted before they completed.
    fn abandon(&self, parent: &Parent, operations: &[String]) -> Result<(), ControlError> {
        for name in operations {
            let op = self.inner.operations.get(name)?;
            if op.done {
                continue;
            }
            let status = Status::new(Code::Aborted, "The service was deleted before this operation completed.");
            let resource = op.metadata.unwrap_or_default();
            self.inner.operations.complete(&OperationBuilder::from_any(parent, resource).finish(name, Some(status)))?;
        }
        Ok(())
    }

    /// The lock that makes reconciles of one service run one at a time.
    fn reconcile_lock(&self, parent: &Parent, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!("{}/{service}", parent.path());
        let mut locks = self.inner.serving.reconciles.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key).or_default().clone()
    }

    /// Starts instances of `revision` from its stored configuration.
    fn launcher(&self, revision: &RevisionRow) -> RevisionLauncher {
        RevisionLauncher {
            backend: self.inner.backend.clone(),
            spec: LaunchSpec {
                owner: Owner::Service {
                    service: revision.service.clone(),
                    revision: revision.name.clone(),
                    configuration: revision.service.clone(),
                },
                identity: InstanceIdentity {
                    project: revision.parent.project.clone(),
                    region: revision.parent.location.clone(),
                    service_account: revision.template.service_account.clone(),
                },
                image: revision.image.clone(),
                template: revision.config.instance.clone(),
            },
        }
    }

    pub(crate) fn pool_config(&self, config: &RevisionConfig, serving: bool) -> PoolConfig {
        let concurrency = config.concurrency;
        PoolConfig {
            scaling: ScalingConfig {
                container_concurrency: concurrency,
                min_instances: if serving { config.min_instances } else { 0 },
                max_instances: config.max_instances,
                idle_timeout: self.inner.settings.idle_timeout,
                ..ScalingConfig::default()
            },
            request_timeout: config.timeout,
            max_queue: usize::try_from((2 * concurrency * config.max_instances).clamp(100, 10_000)).unwrap_or(100),
            queue_timeout: self.inner.settings.queue_timeout.min(config.timeout),
            session_affinity: config.session_affinity,
            protocol: if config.use_http2 { UpstreamProtocol::H2c } else { UpstreamProtocol::Http1 },
        }
    }

    /// The pool of `revision`, created (not yet serving) if it has none.
    fn ensure_pool(&self, revision: &RevisionRow) -> Arc<RevisionPool> {
        let key = pool_key(&revision.parent.project, &revision.parent.location, &revision.name);
        let mut pools = self.inner.serving.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(key)
            .or_insert_with(|| {
                let launcher = Arc::new(self.launcher(revision));
                let owner = wharf_router::PoolOwner {
                    project: revision.parent.project.clone(),
                    location: revision.parent.location.clone(),
                    service: revision.service.clone(),
                    cpu_millis: revision.config.instance.resources.cpu_millis,
                    memory_bytes: revision.config.instance.resources.memory_bytes,
                };
                RevisionPool::start_owned(owner, &revision.name, self.pool_config(&revision.config, false), launcher)
            })
            .clone()
    }

    /// Points the service's host at the revisions its traffic names.
    pub(crate) fn route(&self, row: &ServiceRow, revisions: &[RevisionRow]) {
        tracing::debug!(service = %row.name, "routing");
        let hosts = render::hosts(row, &self.inner.settings);
        let mut targets = Vec::new();
        let mut tagged = Vec::new();
        for (revision, percent, tag, _latest) in render::resolve_traffic(&row.spec, revisions) {
            let Some(rev) = revision.and_then(|name| revisions.iter().find(|r| r.name == name)) else { continue };
            if rev.state != RevisionState::Ready || (percent <= 0 && tag.is_empty()) {
                continue;
            }
            let pool = self.ensure_pool(rev);
            if !tag.is_empty() {
                tagged.extend(hosts.iter().map(|host| (format!("{tag}---{host}"), pool.clone())));
            }
            if percent > 0 {
                targets.push((pool, percent.unsigned_abs()));
            }
        }
        let access = Arc::new(access(row, &hosts));
        self.route_tags(&row.parent.path(), &row.name, tagged, &access);
        // Serving revisions keep their min-instances; the others scale toward zero.
        for rev in revisions {
            let Some(pool) = self.pool(&rev.parent.project, &rev.parent.location, &rev.name) else { continue };
            let serving = targets.iter().any(|(p, _)| Arc::ptr_eq(p, &pool));
            pool.set_config(self.pool_config(&rev.config, serving));
        }
        for host in &hosts {
            if targets.is_empty() {
                self.inner.serving.table.remove(host);
            } else {
                self.inner.serving.table.set(
                    host,
                    ServiceRoute { service: row.name.clone(), targets: targets.clone(), access: access.clone() },
                );
            }
        }
    }

    /// Routes each tag's own host to its revision, and drops tag hosts no longer in use.
    pub(crate) fn route_tags(
        &self,
        parent: &str,
        service: &str,
        tagged: Vec<(String, Arc<RevisionPool>)>,
        access: &Arc<Access>,
    ) {
        let key = format!("{parent}/{service}");
        let hosts: Vec<String> = tagged.iter().map(|(h, _)| h.clone()).collect();
        let previous =
            self.inner.serving.tag_hosts.lock().unwrap_or_else(|p| p.into_inner()).insert(key, hosts.clone());
        for old in previous.unwrap_or_default() {
            if !hosts.contains(&old) {
                self.inner.serving.table.remove(&old);
            }
        }
        for (host, pool) in tagged {
            self.inner.serving.table.set(
                &host,
                ServiceRoute { service: service.to_owned(), targets: vec![(pool, 100)], access: access.clone() },
            );
        }
    }

    /// Closes and forgets a revision's pool (its instances drain, then stop).
    pub(crate) async fn close_pool(&self, parent: &Parent, revision: &str) {
        let key = pool_key(&parent.project, &parent.location, revision);
        let pool = self.inner.serving.pools.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        if let Some(pool) = pool {
            pool.close(Duration::from_secs(10)).await;
            // Its usage stays counted in the service after the revision is gone.
            self.flush_closed_pool(&key, &pool);
        }
    }
}

/// Who may call the service: its policy (as a resource), its URLs' hosts (ID token audiences),
/// `invokerIamDisabled` and its ingress setting.
pub(crate) fn access(row: &ServiceRow, hosts: &[String]) -> Access {
    Access {
        resource: wharf_iam::Resource::service(&row.parent.project, &row.parent.location, &row.name),
        hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        invoker_iam_disabled: row.spec.invoker_iam_disabled,
        ingress: IngressSetting::from_api(row.spec.ingress.as_deref()),
    }
}
