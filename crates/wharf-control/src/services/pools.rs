//! A revision's instances as the router sees them: [`RevisionLauncher`] implements the
//! router's `Launcher` over the instance backend, with the revision's stored template, and
//! [`ServingInstance`] is a backend instance seen as the router's `Upstream`.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::Instrument as _;
use wharf_router::{BoxFuture, LaunchError, Launcher, ResourceUsage, Upstream};

use crate::backend::{BackendError, InstanceBackend, InstanceHandle, InstanceState, LaunchSpec};

/// Starts and stops one revision's instances through the backend.
#[derive(Debug)]
pub(crate) struct RevisionLauncher {
    pub(crate) backend: Arc<dyn InstanceBackend>,
    pub(crate) spec: LaunchSpec,
}

/// A running instance of a revision, routed to by the router.
#[derive(Debug)]
pub(crate) struct ServingInstance {
    pub(crate) handle: Arc<dyn InstanceHandle>,
    /// The backend that started it, asked for its resource use.
    pub(crate) backend: Arc<dyn InstanceBackend>,
}

impl Upstream for ServingInstance {
    fn id(&self) -> &str {
        self.handle.id()
    }

    fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    fn is_gone(&self) -> bool {
        self.handle.has_exited() || !matches!(self.handle.state(), InstanceState::Starting | InstanceState::Ready)
    }

    fn request_started(&self) {
        self.handle.request_started();
    }

    fn request_ended(&self) {
        self.handle.request_ended();
    }

    fn resource_usage(&self) -> Option<ResourceUsage> {
        let stats = self.backend.stats(self.handle.as_ref())?;
        Some(ResourceUsage { cpu_usage_us: stats.cpu_usage_us, memory_bytes: stats.memory_bytes })
    }
}

impl RevisionLauncher {
    /// Starts one instance and waits until it is ready.
    pub(crate) async fn start(&self) -> Result<Arc<ServingInstance>, BackendError> {
        let handle = self.backend.start(self.spec.clone()).await?;
        Ok(Arc::new(ServingInstance { handle, backend: self.backend.clone() }))
    }
}

impl Launcher for RevisionLauncher {
    fn launch(&self) -> BoxFuture<Result<Arc<dyn Upstream>, LaunchError>> {
        let launcher = RevisionLauncher { backend: self.backend.clone(), spec: self.spec.clone() };
        let span = tracing::info_span!("instance.start", revision = %revision_of(&self.spec));
        Box::pin(
            async move {
                let instance = launcher.start().await.map_err(|e| match e {
                    // No room on the machine now: the router answers 429, not "failed".
                    e @ BackendError::NoCapacity { .. } => LaunchError::no_capacity(e),
                    e => LaunchError::new(e),
                })?;
                tracing::debug!(instance = %instance.handle.id(), "instance ready");
                Ok(instance as Arc<dyn Upstream>)
            }
            .instrument(span),
        )
    }

    fn stop(&self, upstream: Arc<dyn Upstream>) -> BoxFuture<()> {
        let backend = self.backend.clone();
        let grace = self.spec.template.grace_period;
        Box::pin(async move {
            let any: Arc<dyn Any + Send + Sync> = upstream;
            match any.downcast::<ServingInstance>() {
                Ok(instance) => {
                    tracing::debug!(instance = %instance.handle.id(), "stopping instance");
                    backend.stop(instance.handle.clone(), grace).await;
                }
                Err(_) => tracing::error!("asked to stop an instance this launcher did not start"),
            }
        })
    }
}

fn revision_of(spec: &LaunchSpec) -> &str {
    match &spec.owner {
        crate::backend::Owner::Service { revision, .. } => revision,
        crate::backend::Owner::Task { execution, .. } => execution,
    }
}
