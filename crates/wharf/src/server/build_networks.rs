//! Builds' `RUN` step networks for `--build-network egress`, made by the container runtime
//! (`wharf_runtime::build_network`: an instance's network and egress policy, DNS only of
//! Wharf's services) and handed to the builder through its [`wharf_build::EgressNetworks`]
//! seam. Owns only the map from a build to its network while the build runs.

use std::collections::HashMap;
use std::sync::Mutex;

use wharf_build::egress::BoxFuture;
use wharf_runtime::build_network::BuildNetwork;

#[derive(Debug)]
pub(crate) struct RuntimeBuildNetworks {
    runtime: wharf_runtime::Runtime,
    networks: Mutex<HashMap<String, BuildNetwork>>,
}

impl RuntimeBuildNetworks {
    pub(crate) fn new(runtime: wharf_runtime::Runtime) -> RuntimeBuildNetworks {
        RuntimeBuildNetworks { runtime, networks: Mutex::default() }
    }
}

impl wharf_build::EgressNetworks for RuntimeBuildNetworks {
    fn create<'a>(
        &'a self,
        build_id: &'a str,
    ) -> BoxFuture<'a, Result<wharf_build::EgressNetwork, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            let network = self.runtime.create_build_network(build_id).await?;
            let made =
                wharf_build::EgressNetwork { netns_path: network.netns_path(), nameserver: network.nameserver() };
            self.networks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(build_id.to_owned(), network);
            Ok(made)
        })
    }

    fn remove<'a>(&'a self, build_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let network = self.networks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(build_id);
            if let Some(network) = network {
                self.runtime.remove_build_network(&network).await;
            }
        })
    }
}
