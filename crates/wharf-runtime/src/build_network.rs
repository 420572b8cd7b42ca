//! Network namespaces for builds' `RUN` steps (`wharf server --build-network egress`): the
//! same namespace, veth, address, NAT and nftables egress policy as an instance's
//! ([`crate::network`]), reaching only the server's DNS resolver of its services. A step can
//! download from the internet (package registries) but reaches no address of the host (Wharf's
//! API, registry and listeners, loopback), no private or link-local range (169.254.169.254
//! included: it has no metadata DNAT, so its packets there are dropped) and no instance.
//!
//! Each network is recorded in `<data-dir>/build-networks/<name>.json` before it is created
//! and forgotten after it is removed, so what a crashed server left is removed when the
//! runtime next opens on the same data directory. Not owned here: running the build (the
//! builder passes the namespace's path to buildah).

use std::path::PathBuf;

use crate::error::RuntimeError;
use crate::network::{InstanceNetwork, METADATA_ADDR};
use crate::runtime::Runtime;

/// A build's network namespace, as created by [`Runtime::create_build_network`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildNetwork {
    network: InstanceNetwork,
}

impl BuildNetwork {
    /// `/run/netns/wharf-bld<id>`: what buildah's `--network` takes (as `ns:<path>`).
    pub fn netns_path(&self) -> PathBuf {
        self.network.netns_path()
    }

    /// The address the build's steps have (in the instance subnet).
    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.network.ip
    }

    /// The nameserver the build's steps should use: the server's DNS resolver, DNAT'd at
    /// 169.254.169.254:53 as for instances (none when the server maps no services).
    pub fn nameserver(&self) -> Option<std::net::Ipv4Addr> {
        (!self.network.service_keys.is_empty()).then_some(METADATA_ADDR)
    }
}

/// The runtime's name for a build's network: `bld` and the first 9 letters or digits of the
/// build's id (interface `whbld...`, 14 characters; instance ids are 12 hex digits and `l` is
/// not one, so the names never meet).
fn network_id(build_id: &str) -> Result<String, RuntimeError> {
    let compact: String = build_id.chars().filter(char::is_ascii_alphanumeric).take(9).collect();
    if compact.len() < 8 {
        return Err(RuntimeError::io("name a build network for", build_id)(std::io::Error::other(
            "a build id needs at least 8 letters or digits",
        )));
    }
    Ok(format!("bld{}", compact.to_ascii_lowercase()))
}

impl Runtime {
    fn build_networks_dir(&self) -> PathBuf {
        self.inner.instances_dir.with_file_name("build-networks")
    }

    /// Creates the network of build `build_id`'s `RUN` steps (see the module docs). On
    /// failure nothing is left; on success [`Runtime::remove_build_network`] must follow
    /// (a crash is swept at the next start).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn create_build_network(&self, build_id: &str) -> Result<BuildNetwork, RuntimeError> {
        let id = network_id(build_id)?;
        let dir = self.build_networks_dir();
        std::fs::create_dir_all(&dir).map_err(RuntimeError::io("create directory", &dir))?;
        let record = dir.join(format!("{id}.json"));
        // Recorded under its names before anything exists, so a crash half-way is swept.
        let planned = InstanceNetwork {
            netns: format!("wharf-{id}"),
            host_interface: format!("wh{id}"),
            ip: std::net::Ipv4Addr::UNSPECIFIED,
            service_keys: vec![(METADATA_ADDR, crate::network::DNS_PORT)],
            vpc_mapped: false,
        };
        write_record(&record, &planned)?;
        match self.inner.network.create_for_build(&id).await {
            Ok(network) => {
                write_record(&record, &network)?;
                tracing::debug!(build = build_id, ip = %network.ip, netns = %network.netns, "build network ready");
                Ok(BuildNetwork { network })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&record);
                Err(e)
            }
        }
    }

    /// Removes a build's network (namespace, veth, host route, DNAT element) and its record.
    pub async fn remove_build_network(&self, network: &BuildNetwork) {
        self.inner.network.destroy(&network.network).await;
        let record = self.build_networks_dir().join(format!("{}.json", &network.network.host_interface[2..]));
        let _ = std::fs::remove_file(record);
    }

    /// Removes the build networks a previous server on this data directory left.
    pub(crate) async fn sweep_build_networks(&self) {
        let Ok(entries) = std::fs::read_dir(self.build_networks_dir()) else { return };
        for entry in entries.flatten() {
            let network: Option<InstanceNetwork> =
                std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(network) = network {
                tracing::warn!(netns = %network.netns, "sweeping up a build network left by a previous run");
                self.inner.network.destroy(&network).await;
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn write_record(path: &std::path::Path, network: &InstanceNetwork) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec(network).map_err(|e| RuntimeError::io("serialize", path)(e.into()))?;
    let staged = path.with_extension("tmp");
    std::fs::write(&staged, bytes).map_err(RuntimeError::io("write", &staged))?;
    std::fs::rename(&staged, path).map_err(RuntimeError::io("rename", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_network_names_fit_interfaces_and_never_meet_instance_ids() {
        let id = network_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").unwrap();
        assert_eq!(id, "bld0f1e2d3c4");
        assert_eq!(format!("wh{id}").len(), 14);
        network_id("--").unwrap_err();
    }
}
