//! Starting a revision's instances: the pinned image, its unpacked layers and the validated
//! settings, handed to the runtime.

use std::sync::Arc;
use std::time::Duration;

use wharf_router::Launcher;
use wharf_router::pool::BoxFuture;
use wharf_runtime::{Instance, InstanceSpec, Runtime};

#[derive(Debug)]
pub(crate) struct RevisionLauncher {
    pub(crate) runtime: Runtime,
    pub(crate) spec: InstanceSpec,
}

impl Launcher for RevisionLauncher {
    fn launch(&self) -> BoxFuture<Result<Arc<Instance>, String>> {
        let (runtime, spec) = (self.runtime.clone(), self.spec.clone());
        Box::pin(async move { runtime.start(spec).await.map_err(|e| e.to_string()) })
    }

    fn stop(&self, instance: Arc<Instance>) -> BoxFuture<()> {
        let runtime = self.runtime.clone();
        Box::pin(async move {
            runtime.stop(&instance).await;
        })
    }
}

/// The grace period between SIGTERM and SIGKILL, as Cloud Run gives.
pub(crate) const GRACE_PERIOD: Duration = Duration::from_secs(10);
