//! Cloud Logging's view of Wharf's logs: the query language ([`filter`]), stored lines as
//! Logging v2 entries ([`entry`]), and queries answered from the log store's indexes
//! ([`query`]). The admin API's `entries:list` and `wharf logging read` are built on these.
//! Also what the server observes of its traffic: request log entries ([`requests`]) and the
//! metrics registry with its Prometheus exposition ([`metrics`]), and the last hour of each
//! service's metrics for charts ([`history`]). Usage metering, which must outlive a restart, is
//! the control plane's (`wharf_control::usage`).

pub mod entry;
pub mod filter;
pub mod history;
pub mod metrics;
pub mod query;
pub mod requests;

pub use entry::Origin;
pub use filter::{Filter, ParseError};
pub use query::{Order, Page, QueryError};
