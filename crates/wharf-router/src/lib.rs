//! Wharf's data plane, one in-process proxy with no sidecars.
//!
//! - [`table`]: the routing table, Host -> service -> weighted revisions, swapped atomically
//!   by the control plane.
//! - [`pool`]: a revision's instances: per-instance concurrency enforced here, a bounded
//!   queue for requests that arrive while instances start, and a scaling loop that feeds the
//!   autoscaler and starts and stops instances through a [`Launcher`].
//! - [`upstream`]: the seam to what runs the code: an [`Upstream`] is one instance as the
//!   router sees it, a [`Launcher`] starts and stops them (the control plane implements both
//!   over the runtime).
//! - [`proxy`]: the ingress HTTP server: HTTP/1.1 and h2c, WebSocket upgrades, streamed bodies,
//!   forwarding and trace headers, request timeouts.
//! - [`listener`]: what every listener of the server (ingress, API, registry) does against
//!   hostile clients: connection cap, accept back-off, header-read and idle timeouts, header limits.
//! - [`tls`]: the HTTPS ingress's rustls settings and its certificates, chosen by SNI (set
//!   ones, or issued by the server's local CA for the hosts it routes).
//! - [`acme`]: certificates for mapped domains from an ACME server (HTTP-01, TLS-ALPN-01),
//!   stored in the data dir and renewed.
//! - [`access`]: who may call a service: the ingress setting, credentials (Wharf ID tokens and
//!   access tokens) and `run.routes.invoke`, checked per request.
//! - [`observe`]: what the proxy reports of each request ([`RequestRecord`]) to the server's
//!   [`RequestObserver`] (request logs, metrics), and the pools' startup histograms.
//! - [`site`]: the server's own site on the HTTPS ingress (the web console), by host name.
//! - [`error`]: how every proxy failure is answered, classified in one place.
//!
//! It does not know how instances are built (the launcher does) nor where routes come from.

pub mod access;
pub mod acme;
pub mod error;
pub mod listener;
pub mod observe;
pub mod pool;
pub mod proxy;
pub mod site;
pub mod table;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod upstream;

pub use access::{Access, Gate, IngressSetting};
pub use listener::{Listener, ListenerLimits};
pub use observe::{PoolOwner, RequestObserver, RequestRecord};
pub use pool::{InstanceSample, Lease, PoolConfig, PoolReport, PoolStats, RevisionPool, UpstreamProtocol};
pub use proxy::{BoxError, ProxyBody, bind_ingress, serve, serve_tls};
pub use site::LocalSite;
pub use table::{HttpsPolicy, RoutingTable, ServiceRoute};
pub use upstream::{BoxFuture, LaunchError, Launcher, ResourceUsage, Upstream};
