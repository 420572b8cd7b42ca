//! The routing table: which revisions serve a host, and with what weight. The control plane
//! replaces a service's route as a whole; a request reads the table once. It does not
//! create or close the pools it points to (the control plane does).
//!
//! Mapped domains (domain mappings) are names for a service's own host: a request for one is
//! routed as its service's host is, whatever its traffic split is now. The table also holds
//! what the plain HTTP ingress needs to treat them: where HTTPS is ([`HttpsPolicy`]: mapped
//! domains are redirected there) and the ACME challenges it answers.

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

/// How mapped domains are served over HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpsPolicy {
    /// The HTTPS ingress's port, for redirects (omitted from the URL when 443).
    pub port: u16,
    /// `Strict-Transport-Security: max-age=...` on mapped domains' HTTPS responses, when set.
    pub hsts_max_age: Option<u64>,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    routes: RwLock<HashMap<String, Arc<ServiceRoute>>>,
    /// Mapped domain -> the service host it is routed as.
    domains: RwLock<HashMap<String, String>>,
    https: RwLock<Option<HttpsPolicy>>,
    acme: Arc<crate::acme::AcmeChallenges>,
    /// The server's own site on the HTTPS ingress (the web console), if any.
    site: RwLock<Option<Arc<dyn crate::site::LocalSite>>>,
}

impl RoutingTable {
    /// Routes requests for `host` (lowercase, no port) to `route`.
    pub fn set(&self, host: &str, route: ServiceRoute) {
        self.routes.write().unwrap_or_else(|p| p.into_inner()).insert(host.to_ascii_lowercase(), Arc::new(route));
    }

    pub fn remove(&self, host: &str) {
        self.routes.write().unwrap_or_else(|p| p.into_inner()).remove(&host.to_ascii_lowercase());
    }

    /// The route for a `Host` header value (any port is ignored), a mapped domain's included.
    pub fn lookup(&self, host: &str) -> Option<Arc<ServiceRoute>> {
        let name = host_name(host).to_ascii_lowercase();
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = routes.get(&name) {
            return Some(route.clone());
        }
        let target = self.domains.read().unwrap_or_else(|p| p.into_inner()).get(&name).cloned()?;
        routes.get(&target).cloned()
    }

    /// Routes `domain` as `service_host` is routed, from now on.
    pub fn map_domain(&self, domain: &str, service_host: &str) {
        self.domains
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_ascii_lowercase(), service_host.to_ascii_lowercase());
    }

    pub fn unmap_domain(&self, domain: &str) {
        self.domains.write().unwrap_or_else(|p| p.into_inner()).remove(&domain.to_ascii_lowercase());
    }

    /// Whether a `Host` header value names a mapped domain.
    pub fn is_mapped_domain(&self, host: &str) -> bool {
        self.domains.read().unwrap_or_else(|p| p.into_inner()).contains_key(&host_name(host).to_ascii_lowercase())
    }

    /// Mapped domains are served over HTTPS as `policy` says (`None`: the server has no HTTPS
    /// for them, and plain HTTP serves them).
    pub fn set_https_policy(&self, policy: Option<HttpsPolicy>) {
        *self.https.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    pub fn https_policy(&self) -> Option<HttpsPolicy> {
        *self.https.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `site` for its host on the HTTPS ingress from now on (`None`: no site).
    pub fn set_local_site(&self, site: Option<Arc<dyn crate::site::LocalSite>>) {
        *self.site.write().unwrap_or_else(|p| p.into_inner()) = site;
    }

    /// The server's own site when a `Host` header value (any port ignored) names it.
    pub fn local_site(&self, host: &str) -> Option<Arc<dyn crate::site::LocalSite>> {
        let site = self.site.read().unwrap_or_else(|p| p.into_inner());
        site.as_ref().filter(|site| host_name(host).eq_ignore_ascii_case(site.host())).cloned()
    }

    /// Whether `name` (an SNI server name) is the server's own site.
    pub fn is_local_site(&self, name: &str) -> bool {
        self.local_site(name).is_some()
    }

    /// The ACME challenge answers the ingress serves.
    pub fn acme_challenges(&self) -> &Arc<crate::acme::AcmeChallenges> {
        &self.acme
    }
}

/// A `Host` header value without its port.
fn host_name(host: &str) -> &str {
    host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(h, _)| h)
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
    async fn a_mapped_domain_follows_its_service_host() {
        let table = RoutingTable::default();
        table.map_domain("API.Example.org", "hello.example.com");
        assert!(table.is_mapped_domain("api.example.org:8443"));
        assert!(!table.is_mapped_domain("hello.example.com"));
        // No route for the service yet: the domain routes nowhere.
        assert!(table.lookup("api.example.org").is_none());
        let route = |revision| ServiceRoute {
            service: "hello".to_owned(),
            targets: vec![(pool(revision), 100)],
            access: open_access(),
        };
        table.set("hello.example.com", route("a"));
        let revision = |host| table.lookup(host).map(|r| r.targets[0].0.revision.clone());
        assert_eq!(revision("api.example.org:443").as_deref(), Some("a"));
        table.set("hello.example.com", route("b"));
        assert_eq!(revision("api.example.org").as_deref(), Some("b"));
        table.unmap_domain("api.example.org");
        assert_eq!(revision("api.example.org"), None);
        assert!(!table.is_mapped_domain("api.example.org"));
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
