//! The routing table: which revisions serve a host, and with what weight. The control plane
//! replaces a service's route as a whole; a request reads the table once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::pool::RevisionPool;

/// How one service's traffic is split.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    pub service: String,
    /// Revisions with their percent (summing to 100), in a stable order.
    pub targets: Vec<(Arc<RevisionPool>, u32)>,
}

impl ServiceRoute {
    /// Picks a revision for one request: `roll` is uniform in 0..100.
    pub fn pick(&self, roll: u32) -> Option<&Arc<RevisionPool>> {
        let mut acc = 0;
        for (pool, percent) in &self.targets {
            acc += percent;
            if roll < acc {
                return Some(pool);
            }
        }
        self.targets.iter().rev().find(|(_, p)| *p > 0).map(|(pool, _)| pool)
    }
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    routes: RwLock<HashMap<String, Arc<ServiceRoute>>>,
}

impl RoutingTable {
    /// Routes requests for `host` (lowercase, no port) to `route`.
    pub fn set(&self, host: &str, route: ServiceRoute) {
        self.routes.write().unwrap_or_else(|p| p.into_inner()).insert(host.to_ascii_lowercase(), Arc::new(route));
    }

    pub fn remove(&self, host: &str) {
        self.routes.write().unwrap_or_else(|p| p.into_inner()).remove(&host.to_ascii_lowercase());
    }

    /// The route for a `Host` header value (any port is ignored).
    pub fn lookup(&self, host: &str) -> Option<Arc<ServiceRoute>> {
        let name = host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(h, _)| h);
        self.routes.read().unwrap_or_else(|p| p.into_inner()).get(&name.to_ascii_lowercase()).cloned()
    }
}
