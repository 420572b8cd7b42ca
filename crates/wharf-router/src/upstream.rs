//! The router's seam to whatever runs a revision's code: an [`Upstream`] is one running
//! instance as the router sees it (an id, an address, whether it may still take requests), and
//! a [`Launcher`] starts and stops them. The router owns these traits so that the data plane
//! knows nothing of containers; the control plane implements them over the runtime, and the
//! tests over fakes.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One running instance of a revision, as the router routes to it.
///
/// A launcher gets its own type back in [`Launcher::stop`] through trait upcasting:
/// `let any: Arc<dyn Any + Send + Sync> = upstream; any.downcast::<MyInstance>()`.
pub trait Upstream: Any + Send + Sync + fmt::Debug {
    /// A stable identifier, unique among the revision's instances (it names the instance in
    /// session affinity cookies and traces).
    fn id(&self) -> &str;
    /// Where the instance serves plain HTTP.
    fn addr(&self) -> SocketAddr;
    /// The instance is gone or going (exited, stopping, failed): never route to it again.
    ///
    /// Called on the request path, so it must be cheap (an atomic or a short read lock). Once
    /// it returns true it must keep doing so.
    fn is_gone(&self) -> bool;
}

/// Starts and stops a revision's instances.
pub trait Launcher: Send + Sync + fmt::Debug + 'static {
    /// Starts one instance and resolves when it is ready to take requests, or with why it
    /// could not start.
    fn launch(&self) -> BoxFuture<Result<Arc<dyn Upstream>, LaunchError>>;
    /// Stops an instance this launcher started, gracefully; resolves when it is stopped.
    fn stop(&self, upstream: Arc<dyn Upstream>) -> BoxFuture<()>;
}

/// Why an instance could not start. It keeps its source, shared, so that the pool can hand
/// the last failure to every request it turns away while no instance runs.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct LaunchError(Arc<dyn Error + Send + Sync>);

impl LaunchError {
    pub fn new(source: impl Error + Send + Sync + 'static) -> LaunchError {
        LaunchError(Arc::new(source))
    }

    /// A failure explained by a message alone (the launcher has no error value to keep).
    pub fn message(message: impl Into<String>) -> LaunchError {
        LaunchError::new(Message(message.into()))
    }

    /// The launcher's error, to downcast to its concrete type.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the image has no entrypoint")]
    struct NoEntrypoint;

    #[test]
    fn launch_error_displays_and_keeps_its_source() {
        let error = LaunchError::new(NoEntrypoint);
        let shared = error.clone();
        assert_eq!(shared.to_string(), "the image has no entrypoint");
        assert_eq!(shared.get_ref().downcast_ref::<NoEntrypoint>().map(ToString::to_string), Some(error.to_string()));
        assert_eq!(LaunchError::message("exit status 3").to_string(), "exit status 3");
    }
}
