//! The routing table: which revisions serve a host, and with what weight. The control plane
//! replaces a service's route as a whole; a request reads the table once. It does not
//! create or close the pools it points to (the control plane does).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::access::Access;
use crate::pool::RevisionPool;

/// How one service's traffic is split.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    pub service: String,
    /// Revisions with their percent (summing to 100), in a stable order.
    pub targets: Vec<(Arc<RevisionPool>, u32)>,
    /// Who may call the service (checked by the proxy before anything else).
    pub access: Arc<Access>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeLauncher, config, open_access};

    fn pool(revision: &str) -> Arc<RevisionPool> {
        RevisionPool::start(revision, config(80, 0, 10), FakeLauncher::gated().arc())
    }

    /// Which revision each roll in 0..100 goes to, as runs of (revision, how many rolls).
    fn split(route: &ServiceRoute) -> Vec<(String, u32)> {
        let mut runs: Vec<(String, u32)> = Vec::new();
        for roll in 0..100 {
            let revision = route.pick(roll).map_or("none", |p| p.revision.as_str());
            match runs.last_mut() {
                Some((last, n)) if last == revision => *n += 1,
                _ => runs.push((revision.to_owned(), 1)),
            }
        }
        runs
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_are_matched_without_case_or_port() {
        let table = RoutingTable::default();
        table.set(
            "Hello.Example.com",
            ServiceRoute { service: "hello".to_owned(), targets: vec![(pool("a"), 100)], access: open_access() },
        );

        let service = |host| table.lookup(host).map(|route| route.service.clone());
        assert_eq!(service("hello.example.com:8080").as_deref(), Some("hello"));
        assert_eq!(service("HELLO.example.COM").as_deref(), Some("hello"));
        assert_eq!(service("hello.example.com:http"), None);
        assert_eq!(service("other.example.com"), None);
        table.remove("hello.example.com");
        assert_eq!(service("hello.example.com"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_split_sends_new_requests_to_the_new_revision() {
        let table = RoutingTable::default();
        let (old, new) = (pool("hello-00001"), pool("hello-00002"));
        let route = |targets| ServiceRoute { service: "hello".to_owned(), targets, access: open_access() };
        table.set("hello.example.com", route(vec![(old.clone(), 100)]));
        let before = table.lookup("hello.example.com").unwrap();

        table.set("hello.example.com", route(vec![(old.clone(), 30), (new.clone(), 70)]));
        let canary = table.lookup("hello.example.com").unwrap();
        table.set("hello.example.com", route(vec![(old, 0), (new, 100)]));
        let after = table.lookup("hello.example.com").unwrap();

        assert_eq!(split(&before), vec![("hello-00001".to_owned(), 100)]);
        assert_eq!(split(&canary), vec![("hello-00001".to_owned(), 30), ("hello-00002".to_owned(), 70)]);
        assert_eq!(split(&after), vec![("hello-00002".to_owned(), 100)]);
    }
}
