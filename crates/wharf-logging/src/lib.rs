//! Cloud Logging's view of Wharf's logs: the query language ([`filter`]), stored lines as
//! Logging v2 entries ([`entry`]), and queries answered from the log store's indexes
//! ([`query`]). The admin API's `entries:list` and `wharf logging read` are built on these.

pub mod entry;
pub mod filter;
pub mod query;

pub use entry::Origin;
pub use filter::{Filter, ParseError};
pub use query::{Order, Page, QueryError};
