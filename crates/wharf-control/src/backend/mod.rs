//! The instance backend: the seam between the control plane and whatever runs containers.
//!
//! The control plane owns this trait and decides *what* runs ([`LaunchSpec`]: an owner, a
//! pinned image and a validated [`InstanceTemplate`]); a backend decides *how*. `wharf-runtime`
//! implements it with youki's libcontainer on this machine; [`fake`] implements it in memory
//! for tests of pools, reconcilers and jobs that run without root and with paused time. A
//! gVisor or Kubernetes backend would go behind the same trait.
//!
//! An instance is seen through an [`InstanceHandle`]: its id, address and status (a watch the
//! backend keeps current until the instance is released).

pub mod fake;
pub mod resources;
pub mod template;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use resources::Resources;
pub use template::{
    CpuAllocation, InstanceTemplate, MemoryVolume, Owner, Probe, ProbeAction, SecretEnv, SecretFile, VpcEgress,
};

/// Where a backend reads the secret versions an instance needs when it starts (Wharf's
/// Secret Manager). `secret` is `projects/PROJECT/secrets/NAME`, `version` a number or
/// `latest`. The error says why, naming the version (disabled, destroyed, not found).
pub trait SecretSource: Send + Sync + fmt::Debug + 'static {
    fn access(&self, secret: &str, version: &str) -> Result<Vec<u8>, String>;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to run: who it runs for, the image pinned by digest, and the validated template.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub owner: Owner,
    /// Who the instance acts as (its metadata server's answers and tokens).
    pub identity: InstanceIdentity,
    pub image: wharf_image::ResolvedImage,
    pub template: InstanceTemplate,
}

/// Who an instance acts as: the project and region of its revision or job, and the service
/// account its revision or job runs as. A backend hands it to the metadata server for the
/// instance's address (what `google.auth.default()` finds inside); it is taken from the
/// control plane's records, never from anything the instance says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceIdentity {
    pub project: String,
    /// The location (`us-central1`).
    pub region: String,
    /// The template's `serviceAccount`; empty: the project's default account.
    pub service_account: String,
}

/// Runs instances. Every method may be called concurrently.
pub trait InstanceBackend: Send + Sync + fmt::Debug + 'static {
    /// Starts an instance and resolves once it is ready: for a service when its startup probe
    /// passes, for a job task (no probe) once its process runs. On error nothing of the
    /// instance is left behind.
    fn start(&self, spec: LaunchSpec) -> BoxFuture<'static, Result<Arc<dyn InstanceHandle>, BackendError>>;

    /// Stops the instance gracefully (SIGTERM, then SIGKILL after `grace`) and resolves once it
    /// is released, with how it ended. Stopping an instance that already ended returns at once.
    fn stop(&self, instance: Arc<dyn InstanceHandle>, grace: Duration) -> BoxFuture<'static, InstanceStatus>;

    /// Sends `signal` to the instance's main process now, without waiting.
    fn signal(&self, instance: &dyn InstanceHandle, signal: Signal) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Records a line the platform says about the instance (a timeout, a kill), next to the
    /// instance's own output.
    fn log(&self, instance: &dyn InstanceHandle, severity: Severity, message: String) -> BoxFuture<'static, ()>;

    /// Resource usage while the instance runs; `None` once it is gone.
    fn stats(&self, instance: &dyn InstanceHandle) -> Option<InstanceStats>;
}

/// A started instance as the control plane and router see it.
pub trait InstanceHandle: Send + Sync + fmt::Debug + 'static {
    fn id(&self) -> &str;
    fn owner(&self) -> &Owner;
    /// Where the platform reaches the container's port.
    fn addr(&self) -> SocketAddr;
    fn status(&self) -> InstanceStatus;
    /// The state alone (cheap: called on the request path).
    fn state(&self) -> InstanceState;
    /// Whether the container process has exited (its release may still be under way).
    fn has_exited(&self) -> bool;
    /// Resolves once the instance is stopped or failed and released.
    fn wait_terminal(&self) -> BoxFuture<'_, InstanceStatus>;
    /// A request to the instance begins: the router calls this before it writes the request
    /// upstream (and the runtime before a liveness probe). An instance whose CPU is throttled
    /// ([`CpuAllocation::throttled`]) is thawed, and runnable, when this returns. Called on
    /// the request path: cheap unless it thaws.
    fn request_started(&self) {}
    /// A request begun with [`InstanceHandle::request_started`] ended (its response body or
    /// upgraded stream is done). When none is left, a throttled instance is frozen again
    /// shortly after.
    fn request_ended(&self) {}
}

/// Signals the control plane may send to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Kill,
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Terminate => 15,
            Signal::Kill => 9,
        }
    }
}

/// Log severities the platform writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
        }
    }
}

/// CPU and memory use of a running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStats {
    /// CPU time the instance's cgroup used, all its processes together.
    #[serde(default)]
    pub cpu_usage_us: u64,
    /// Frozen now: CPU throttled between requests.
    #[serde(default)]
    pub frozen: bool,
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_us: u64,
    /// Memory in use now, without the page cache the kernel can reclaim (the working set
    /// that counts toward the memory limit before an out-of-memory kill).
    #[serde(default)]
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Starting,
    Ready,
    Stopping,
    Stopped,
    Failed,
}

impl InstanceState {
    /// Stopped or failed: the instance is gone and everything it used is released.
    pub fn is_terminal(self) -> bool {
        matches!(self, InstanceState::Stopped | InstanceState::Failed)
    }
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    pub state: InstanceState,
    /// Why the instance failed, in words for the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
}

impl InstanceStatus {
    /// Whether the process ran to completion with exit code 0 (a task's success).
    pub fn succeeded(&self) -> bool {
        self.state == InstanceState::Stopped && self.exit.is_some_and(|e| e.code == Some(0))
    }
}

/// Why a backend could not do what was asked. The message is for the user (it ends up in a
/// revision's or task's status); the source, when there is one, says what failed below.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The instance's image, template or environment cannot run (a bad user, a missing
    /// entrypoint, a reserved variable).
    #[error("{0}")]
    InvalidSpec(String),
    /// The instance started but never became ready, or exited while starting.
    #[error("{message}")]
    NotReady { message: String },
    /// The machine could not provide what the instance needs (unpacking layers, mounts,
    /// networking, the shim).
    #[error("{what}")]
    Platform {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The machine has no room for the instance now (the server-wide memory limit of
    /// instances is used up); it may fit later, when others stop. The message says how much
    /// is used, of what, and what the instance needs.
    #[error("{message}")]
    NoCapacity { message: String },
    /// The instance is gone.
    #[error("instance {0} is not running")]
    Gone(String),
}
