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
    /// A request took a slot on this instance ([`crate::pool::Lease`]); it is written to the
    /// instance only after this returns. An instance whose CPU is allocated only during
    /// requests is resumed here. Called once per lease, on the request path.
    fn request_started(&self) {}
    /// A lease begun with [`Upstream::request_started`] ended: its response body, or its
    /// upgraded (WebSocket) stream, is done. Called exactly once per lease.
    fn request_ended(&self) {}
    /// What the instance uses now (CPU time so far, memory), for utilisation metrics; `None`
    /// when the implementation cannot tell or the instance is gone. Called when metrics are
    /// read, outside the pool's lock; may read a few files.
    fn resource_usage(&self) -> Option<ResourceUsage> {
        None
    }
}

/// One instance's resource use at one moment ([`Upstream::resource_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceUsage {
    /// CPU time all its processes used since it started, in microseconds.
    pub cpu_usage_us: u64,
    /// Memory in use now, without the page cache the kernel can drop (the working set).
    pub memory_bytes: u64,
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
///
/// A start refused because the machine has no room for another instance now
/// ([`LaunchError::no_capacity`]) is not the revision's fault: requests that need a new
/// instance get a 429 with the reason, rather than the 503 of an instance that cannot start.
#[derive(Debug, Clone)]
pub struct LaunchError {
    error: Arc<dyn Error + Send + Sync>,
    no_capacity: bool,
}

/// Transparent: displays as the launcher's error and has its source.
impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl Error for LaunchError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.source()
    }
}

impl LaunchError {
    pub fn new(source: impl Error + Send + Sync + 'static) -> LaunchError {
        LaunchError { error: Arc::new(source), no_capacity: false }
    }

    /// The platform has no capacity for another instance now (it may later).
    pub fn no_capacity(source: impl Error + Send + Sync + 'static) -> LaunchError {
        LaunchError { error: Arc::new(source), no_capacity: true }
    }

    pub fn is_no_capacity(&self) -> bool {
        self.no_capacity
    }

    /// A failure explained by a message alone (the launcher has no error value to keep).
    pub fn message(message: impl Into<String>) -> LaunchError {
        LaunchError::new(Message(message.into()))
    }

    /// The launcher's error, to downcast to its concrete type.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.error
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
