//! The seam through which a build gets its `RUN` steps' network namespace when the server runs
//! with `--build-network egress`. The builder does not make networks: the server hands it an
//! [`EgressNetworks`] backed by the container runtime's instance network code (same veth, NAT
//! and nftables egress policy as instances), set once the runtime is open.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;

/// A boxed future, as the trait's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A build's network namespace, ready for buildah's `--network ns:<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressNetwork {
    /// The namespace's bind mount (`/run/netns/...`).
    pub netns_path: PathBuf,
    /// The nameserver the steps get in `/etc/resolv.conf` (`--dns`), if any.
    pub nameserver: Option<Ipv4Addr>,
}

/// Makes and removes builds' networks.
pub trait EgressNetworks: Send + Sync + std::fmt::Debug {
    /// Creates build `build_id`'s network. On failure nothing is left.
    fn create<'a>(
        &'a self,
        build_id: &'a str,
    ) -> BoxFuture<'a, Result<EgressNetwork, Box<dyn std::error::Error + Send + Sync>>>;

    /// Removes build `build_id`'s network (once the build's processes are gone).
    fn remove<'a>(&'a self, build_id: &'a str) -> BoxFuture<'a, ()>;
}
