//! The server's own site on the HTTPS ingress: a host name (say `console.example.com`)
//! whose requests the HTTPS listener does not proxy to a service but hands, whole, to a
//! [`LocalSite`] the server provides (Wharf's web console and the API it calls). The router
//! knows nothing of what the site serves; the site gets the request as received, with
//! `X-Forwarded-Proto: https` and the client's address, and answers it.
//!
//! Only the HTTPS listener serves it: a console over the plain HTTP ingress would carry
//! session cookies in the clear. The site's name is looked at first, so a service host or
//! mapped domain of the same name would not be reachable over HTTPS; the server's default
//! name, `console.{domain}`, can be no service's host (those carry a region label).

use std::fmt;
use std::net::SocketAddr;

use hyper::Request;
use hyper::body::Incoming;

use crate::proxy::ProxyBody;
use crate::upstream::BoxFuture;

/// What answers the requests for the server's own host on the HTTPS ingress.
pub trait LocalSite: Send + Sync + fmt::Debug + 'static {
    /// The host name served (lowercase, no port).
    fn host(&self) -> &str;
    /// Answers one request; `remote` is the client's address. The request's
    /// `X-Forwarded-Proto` and `X-Forwarded-For` are the ingress's, never the client's.
    fn serve(&self, request: Request<Incoming>, remote: SocketAddr) -> BoxFuture<hyper::Response<ProxyBody>>;
}
