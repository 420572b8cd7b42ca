//! Wharf's control plane: the declarative core behind the admin API.
//!
//! Commands ([`services`], [`operations`]) record desired state in SQLite ([`store`]) and
//! answer with long-running operations at once; reconcilers ([`reconcile`]) then converge
//! toward it: a new revision is started once to prove it becomes ready, routes are rebuilt, the
//! operation completes. [`render`] derives a resource's status (conditions, latest revisions,
//! traffic statuses, URL) from what is stored. [`validate`] holds Cloud Run's rules for a
//! revision template. Nothing here knows about HTTP: the API layer turns requests into calls
//! on [`ControlPlane`] and maps [`ControlError`] to statuses.

pub mod jobs;
mod launcher;
pub mod operations;
pub mod reconcile;
pub mod render;
pub mod services;
pub mod store;
pub mod time;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use wharf_image::Resolver;
use wharf_router::{RevisionPool, RoutingTable};
use wharf_runtime::Runtime;
use wharf_store::Store;

/// Why a command was refused or failed; the API maps each to an HTTP status once.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// An `etag` did not match: someone else changed the resource.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    pub(crate) fn from_sql(e: wharf_store::rusqlite::Error) -> ControlError {
        ControlError::Internal(format!("state database: {e}"))
    }
}

impl From<wharf_store::rusqlite::Error> for ControlError {
    fn from(e: wharf_store::rusqlite::Error) -> ControlError {
        ControlError::from_sql(e)
    }
}

impl From<wharf_store::StoreError> for ControlError {
    fn from(e: wharf_store::StoreError) -> ControlError {
        ControlError::Internal(format!("state database: {e}"))
    }
}

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
}

#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Store,
    pub(crate) resolver: Resolver,
    pub(crate) runtime: Runtime,
    pub(crate) table: Arc<RoutingTable>,
    pub(crate) settings: Settings,
    /// Revision pools by `{project}/{location}/{revision}`.
    pub(crate) pools: Mutex<HashMap<String, Arc<RevisionPool>>>,
    /// One reconcile at a time per service.
    pub(crate) service_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Signalled whenever an operation completes.
    pub(crate) operation_done: Notify,
    /// The tag hosts (`{tag}---{host}`) routed for each service, to remove stale ones.
    pub(crate) tag_hosts: Mutex<HashMap<String, Vec<String>>>,
    /// Cancellation of running job executions, by `{parent}/{execution}`.
    pub(crate) execution_cancels: Mutex<HashMap<String, jobs::CancelHandle>>,
    /// Cancelled when the server stops: job runners stop their tasks and leave executions
    /// running in the database, to be resumed by the next start.
    pub(crate) stopping: jobs::CancelHandle,
}

impl ControlPlane {
    /// Opens the control plane and restores what was running: routes for every service, the
    /// pools of revisions that serve (which bring back min-instances), and reconciles that an
    /// earlier run left unfinished.
    pub async fn open(
        db: Store,
        resolver: Resolver,
        runtime: Runtime,
        table: Arc<RoutingTable>,
        settings: Settings,
    ) -> Result<ControlPlane, ControlError> {
        let control = ControlPlane {
            inner: Arc::new(Inner {
                db,
                resolver,
                runtime,
                table,
                settings,
                pools: Mutex::default(),
                service_locks: Mutex::default(),
                operation_done: Notify::new(),
                tag_hosts: Mutex::default(),
                execution_cancels: Mutex::default(),
                stopping: jobs::CancelHandle::default(),
            }),
        };
        control.restore().await?;
        control.resume_executions()?;
        Ok(control)
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Stops every revision's instances (draining in-flight requests first).
    pub async fn shutdown(&self) {
        self.inner.stopping.cancel();
        let runners: Vec<_> =
            self.inner.execution_cancels.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        // Give job runners a moment to stop their tasks before the runtime goes down.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !runners.is_empty()
            && !self.inner.execution_cancels.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pools: Vec<Arc<RevisionPool>> =
            self.inner.pools.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, p)| p).collect();
        let closes: Vec<_> = pools.iter().map(|p| p.close(Duration::from_secs(10))).collect();
        futures::future::join_all(closes).await;
    }

    pub(crate) fn service_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.service_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_owned()).or_default().clone()
    }

    /// The pool of a revision, if it has one.
    pub fn pool(&self, project: &str, location: &str, revision: &str) -> Option<Arc<RevisionPool>> {
        self.inner.pools.lock().unwrap_or_else(|p| p.into_inner()).get(&pool_key(project, location, revision)).cloned()
    }
}

pub(crate) fn pool_key(project: &str, location: &str, revision: &str) -> String {
    format!("{project}/{location}/{revision}")
}
