//! Starting a revision's instances: the pinned image, its unpacked layers and the validated
//! settings, handed to the runtime. Each instance is handed to the router as a
//! [`RunningInstance`], the router's [`Upstream`] view of it.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use wharf_router::{BoxFuture, LaunchError, Launcher, Upstream};
use wharf_runtime::{Instance, InstanceSpec, InstanceState, Runtime};

#[derive(Debug)]
pub(crate) struct RevisionLauncher {
    pub(crate) runtime: Runtime,
    pub(crate) spec: InstanceSpec,
}

/// A runtime instance as the router routes to it.
#[derive(Debug)]
pub(crate) struct RunningInstance(pub(crate) Arc<Instance>);

impl Upstream for RunningInstance {
    fn id(&self) -> &str {
        &self.0.id
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn is_gone(&self) -> bool {
        // The exit flag is an atomic, raised before the state changes: checked first.
        self.0.has_exited() || !matches!(self.0.state(), InstanceState::Starting | InstanceState::Ready)
    }
}

impl Launcher for RevisionLauncher {
    fn launch(&self) -> BoxFuture<Result<Arc<dyn Upstream>, LaunchError>> {
        let (runtime, spec) = (self.runtime.clone(), self.spec.clone());
        Box::pin(async move {
            let instance = runtime.start(spec).await.map_err(LaunchError::new)?;
            Ok(Arc::new(RunningInstance(instance)) as Arc<dyn Upstream>)
        })
    }

    fn stop(&self, upstream: Arc<dyn Upstream>) -> BoxFuture<()> {
        let runtime = self.runtime.clone();
        Box::pin(async move {
            let any: Arc<dyn Any + Send + Sync> = upstream.clone();
            match any.downcast::<RunningInstance>() {
                Ok(instance) => {
                    runtime.stop(&instance.0).await;
                }
                Err(_) => {
                    tracing::error!(instance = %upstream.id(), "asked to stop an instance this launcher did not start");
                }
            }
        })
    }
}

/// The grace period between SIGTERM and SIGKILL, as Cloud Run gives.
pub(crate) const GRACE_PERIOD: Duration = Duration::from_secs(10);
