//! Reconcilers: converge instances and routes toward a service's stored spec.
//!
//! For a service, one pass: if its newest revision is pending, start one instance of it to
//! prove it becomes ready (that instance then joins the revision's pool as a warm instance)
//! and record ready or failed; then rebuild the service's route from its traffic spec, with
//! the pools of the revisions it names; revisions that lose traffic keep their pool but
//! scale toward zero; finally complete the operation that asked for the change.

use std::sync::Arc;
use std::time::Duration;

use wharf_api::names::Parent;
use wharf_autoscaler::ScalingConfig;
use wharf_router::{PoolConfig, RevisionPool, ServiceRoute};
use wharf_runtime::{InstanceSpec, Owner};

use crate::launcher::{GRACE_PERIOD, RevisionLauncher};
use crate::store::{self, RevisionRow, RevisionState, ServiceRow};
use crate::validate::{RevisionConfig, validate};
use crate::{ControlError, ControlPlane, pool_key, render};

impl ControlPlane {
    /// Restores routes and pools after a restart, and resumes unfinished work.
    pub(crate) async fn restore(&self) -> Result<(), ControlError> {
        let unfinished = store::unfinished_operations(&self.inner.db)?;
        for row in store::all_services(&self.inner.db)? {
            let op = unfinished
                .iter()
                .find(|o| {
                    o.metadata.as_ref().and_then(|m| m.get("name")).and_then(|n| n.as_str())
                        == Some(render::service_name(&row).as_str())
                })
                .map(|o| o.name.clone());
            let revisions = store::list_revisions(&self.inner.db, &row.parent, &row.name)?;
            if op.is_some() || revisions.first().is_some_and(|r| r.state == RevisionState::Pending) {
                self.spawn_reconcile(row.parent.clone(), row.name.clone(), op);
            } else {
                self.route(&row, &revisions).await;
            }
        }
        Ok(())
    }

    pub(crate) fn spawn_reconcile(&self, parent: Parent, name: String, operation: Option<String>) {
        let control = self.clone();
        tokio::spawn(async move {
            if let Err(e) = control.reconcile(&parent, &name, operation.as_deref()).await {
                tracing::error!(service = %name, error = %e, "reconcile failed");
            }
        });
    }

    async fn reconcile(&self, parent: &Parent, name: &str, operation: Option<&str>) -> Result<(), ControlError> {
        let lock = self.service_lock(&format!("{}/{name}", parent.path()));
        let _guard = lock.lock().await;
        let Some(row) = store::get_service(&self.inner.db, parent, name)? else { return Ok(()) };
        let mut revisions = store::list_revisions(&self.inner.db, parent, name)?;
        if let Some(latest) = revisions.first().filter(|r| r.state == RevisionState::Pending).cloned() {
            let (state, message) = match self.prove_ready(&latest).await {
                Ok(()) => (RevisionState::Ready, String::new()),
                Err(reason) => (RevisionState::Failed, reason),
            };
            store::set_revision_state(&self.inner.db, parent, &latest.name, state, &message)?;
            revisions = store::list_revisions(&self.inner.db, parent, name)?;
        }
        self.route(&row, &revisions).await;
        store::set_observed_generation(&self.inner.db, parent, name, row.generation)?;
        if let Some(op) = operation {
            let row = store::get_service(&self.inner.db, parent, name)?.unwrap_or(row);
            let service = render::service(&row, &revisions, &self.inner.settings);
            let failed = revisions.first().filter(|r| r.state == RevisionState::Failed);
            let error = failed.map(|r| wharf_api::Status {
                code: 9,
                message: format!("Revision '{}' is not ready and cannot serve traffic. {}", r.name, r.message),
                details: vec![],
            });
            self.finish_operation(op, &service, error)?;
        }
        Ok(())
    }

    /// Starts one instance of a new revision; it joins the revision's pool when ready.
    async fn prove_ready(&self, revision: &RevisionRow) -> Result<(), String> {
        let pool = self.ensure_pool(revision).await?;
        let launcher = self.launcher(revision).await?;
        let instance = wharf_router::Launcher::launch(&launcher).await.map_err(|e| e.to_string())?;
        pool.adopt(instance);
        Ok(())
    }

    async fn launcher(&self, revision: &RevisionRow) -> Result<RevisionLauncher, String> {
        let config = validate(&revision.template).map_err(|e| e.to_string())?;
        let layers = self.inner.resolver.snapshots(&revision.image).await.map_err(|e| e.to_string())?;
        Ok(RevisionLauncher {
            runtime: self.inner.runtime.clone(),
            spec: InstanceSpec {
                owner: Owner::Service {
                    service: revision.service.clone(),
                    revision: revision.name.clone(),
                    configuration: revision.service.clone(),
                },
                image: revision.image.clone(),
                layers,
                command: config.command.clone(),
                args: config.args.clone(),
                env: config.env.clone(),
                port: config.port,
                resources: config.resources,
                startup_probe: Some(config.startup_probe.clone()),
                liveness_probe: config.liveness_probe.clone(),
                grace_period: GRACE_PERIOD,
            },
        })
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
        }
    }

    /// The pool of `revision`, created (not yet serving) if it has none.
    async fn ensure_pool(&self, revision: &RevisionRow) -> Result<Arc<RevisionPool>, String> {
        let key = pool_key(&revision.parent.project, &revision.parent.location, &revision.name);
        if let Some(pool) = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(pool.clone());
        }
        let config = validate(&revision.template).map_err(|e| e.to_string())?;
        let launcher = Arc::new(self.launcher(revision).await?);
        let pool = RevisionPool::start(&revision.name, self.pool_config(&config, false), launcher);
        let mut pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
        Ok(pools.entry(key).or_insert(pool).clone())
    }

    /// Points the service's host at the revisions its traffic names.
    pub(crate) async fn route(&self, row: &ServiceRow, revisions: &[RevisionRow]) {
        let host = render::host(&row.name, &row.parent.project, &self.inner.settings);
        let mut targets = Vec::new();
        let mut tagged = Vec::new();
        for (revision, percent, tag, _latest) in render::resolve_traffic(&row.spec, revisions) {
            let Some(rev) = revision.and_then(|name| revisions.iter().find(|r| r.name == name)) else { continue };
            if rev.state != RevisionState::Ready || (percent <= 0 && tag.is_empty()) {
                continue;
            }
            let pool = match self.ensure_pool(rev).await {
                Ok(pool) => pool,
                Err(e) => {
                    tracing::error!(revision = %rev.name, error = %e, "cannot build the revision's pool");
                    continue;
                }
            };
            if !tag.is_empty() {
                tagged.push((format!("{tag}---{host}"), pool.clone()));
            }
            if percent > 0 {
                targets.push((pool, percent.unsigned_abs()));
            }
        }
        self.route_tags(&row.parent.path(), &row.name, tagged);
        // Serving revisions keep their min-instances; the others scale toward zero.
        for rev in revisions {
            let Some(pool) = self.pool(&rev.parent.project, &rev.parent.location, &rev.name) else { continue };
            let serving = targets.iter().any(|(p, _)| Arc::ptr_eq(p, &pool));
            if let Ok(config) = validate(&rev.template) {
                pool.set_config(self.pool_config(&config, serving));
            }
        }
        if targets.is_empty() {
            self.inner.table.remove(&host);
        } else {
            self.inner.table.set(&host, ServiceRoute { service: row.name.clone(), targets });
        }
    }

    /// Routes each tag's own host to its revision, and drops tag hosts no longer in use.
    pub(crate) fn route_tags(&self, parent: &str, service: &str, tagged: Vec<(String, Arc<RevisionPool>)>) {
        let key = format!("{parent}/{service}");
        let hosts: Vec<String> = tagged.iter().map(|(h, _)| h.clone()).collect();
        let previous = self.inner.tag_hosts.lock().unwrap_or_else(|p| p.into_inner()).insert(key, hosts.clone());
        for old in previous.unwrap_or_default() {
            if !hosts.contains(&old) {
                self.inner.table.remove(&old);
            }
        }
        for (host, pool) in tagged {
            self.inner.table.set(&host, ServiceRoute { service: service.to_owned(), targets: vec![(pool, 100)] });
        }
    }

    /// Closes and forgets a revision's pool (its instances drain, then stop).
    pub(crate) async fn close_pool(&self, parent: &Parent, revision: &str) {
        let key = pool_key(&parent.project, &parent.location, revision);
        let pool = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        if let Some(pool) = pool {
            pool.close(Duration::from_secs(10)).await;
        }
    }
}
