//! What an instance finds at 169.254.169.254, as on Google's VMs: Wharf's DNS resolver
//! ([`dns`]) and the metadata HTTP server ([`http`]). Both listen on host-side sockets of the
//! server (loopback by default); the runtime DNATs each instance's packets to them, so they
//! see instances' queries and requests as ordinary connections. How the packets get here,
//! and that nothing else of the host is reachable, is the runtime's business
//! (`wharf_runtime::network`).

pub mod dns;
pub mod http;

pub use dns::{DnsError, DnsServer, LocalNames};
