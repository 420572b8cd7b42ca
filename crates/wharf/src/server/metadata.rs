//! The metadata server's view of who is calling: the runtime's table of instance addresses
//! ([`wharf_runtime::Runtime::caller`]), which the runtime fills when it creates an instance's
//! network and empties when it releases it, with the identity the control plane launched the
//! instance as (project, region, service account of its revision or job).

use std::net::IpAddr;

/// [`wharf_metadata::http::Callers`] over the runtime's live table.
#[derive(Debug)]
pub struct RuntimeCallers(pub wharf_runtime::Runtime);

impl wharf_metadata::http::Callers for RuntimeCallers {
    fn caller(&self, ip: IpAddr) -> Option<wharf_metadata::http::Caller> {
        let IpAddr::V4(ip) = ip else { return None };
        let found = self.0.caller(ip)?;
        let identity = found.identity?;
        Some(wharf_metadata::http::Caller {
            instance: found.instance,
            project: identity.project,
            region: identity.region,
            service_account: identity.service_account,
        })
    }
}
