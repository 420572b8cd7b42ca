//! Wharf's container runtime: turns a pinned image plus a revision's settings into a running,
//! isolated, resource-limited instance, and tears it down leaving nothing behind.
//!
//! - [`Runtime`] (`runtime.rs`): the handle; opening it sweeps leftovers of an unclean exit.
//! - [`instance`]: an instance's lifecycle, one file per operation (start, probe, stop, reap).
//! - [`shim`]: the helper process that drives youki's libcontainer, one per instance start,
//!   so the multi-threaded server never forks a container itself; [`supervisor`]: the one
//!   helper process per runtime that parents, stops and reaps every container.
//! - [`rootfs`], [`network`], [`spec`]: the sandbox: overlay on a memory-charged
//!   tmpfs, a network namespace with NAT egress and no instance-to-instance traffic, cgroup
//!   limits, and the OCI runtime spec.
//! - [`cgroup`]: the parent cgroup with the server-wide limits, and admission against them
//!   ([`Admission`]); [`devices`]: the BPF device filter cgroup v2 needs.
//! - [`seccomp`]: the syscall filter installed in every instance right before its command runs.
//! - [`backend`]: the runtime as the control plane's instance backend.
//! - [`contract`]: Cloud Run's environment contract; [`resources`]: limit syntax.
//! - [`logs`]: captured output, stored durably with retention.
//!
//! It knows nothing of services, revisions or HTTP: callers hand it an [`InstanceSpec`].

pub mod admission;
pub mod backend;
pub mod build_network;
pub mod cgroup;
pub mod contract;
pub mod devices;
mod error;
mod forker;
pub mod instance;
pub mod logs;
pub mod network;
pub mod resources;
pub mod rootfs;
mod runtime;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod supervisor;

pub use backend::RuntimeBackend;
pub use contract::Owner;
pub use error::RuntimeError;
pub use instance::{Instance, InstanceSpec, InstanceState, InstanceStatus, Probe, ProbeAction, StartPhases};
pub use resources::Resources;
pub use runtime::{InstanceCaller, Runtime, RuntimeConfig};
