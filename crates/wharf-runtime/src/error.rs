//! The runtime's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {target} failed")]
    Mount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A netlink request setting up instance networking failed.
    #[error(transparent)]
    Netlink(#[from] crate::network::NetlinkError),
    /// The revision's env sets a name it may not.
    #[error(transparent)]
    InvalidEnv(#[from] crate::contract::EnvError),
    /// The image and settings do not make a runnable container (no command, unknown user).
    #[error(transparent)]
    InvalidSpec(#[from] crate::spec::SpecError),
    #[error("the container helper failed: {0}")]
    Shim(String),
    /// The instance supervisor process could not be started or reached.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// The container did not become ready; `reason` is what a user needs to see.
    #[error("{reason}")]
    StartupFailed { reason: String },
    /// The instance does not fit in the server-wide memory limit.
    #[error(transparent)]
    NoCapacity(#[from] crate::admission::NoCapacity),
    /// The parent cgroup could not be set up.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The revision opted into a private network the server does not have (any more).
    #[error("the VPC network {name:?} is not one of this server's --vpc-network names ({known})")]
    UnknownVpcNetwork { name: String, known: String },
    #[error("no free instance address left in {0}")]
    AddressesExhausted(String),
    #[error(transparent)]
    Image(#[from] wharf_image::ImageError),
    #[error(transparent)]
    Store(#[from] wharf_store::StoreError),
}

impl RuntimeError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.into();
        move |source| RuntimeError::Io { op, path, source }
    }
}
