//! Who may call a service through the ingress, checked on every request before it takes a
//! place in a queue or on an instance, as Cloud Run checks it:
//!
//! 1. **Ingress setting** ([`IngressSetting`]): an `internal` service answers only requests
//!    from Wharf's own instances (their network) and from loopback; others get the same 404 as
//!    an unknown host, so an internal service is not even seen to exist.
//! 2. **Credentials**: `Authorization: Bearer` or `X-Serverless-Authorization: Bearer` (the
//!    latter wins, so an app can keep its own `Authorization`): a Wharf ID token whose audience
//!    is one of the service's URLs, or a Wharf access token (the owner's included). Missing or
//!    not valid: 401. Not needed when the policy grants `run.routes.invoke` to `allUsers`, or
//!    when the service turned the IAM check off (`invokerIamDisabled`).
//! 3. **Permission**: the caller needs `run.routes.invoke` on the service, through the service's
//!    policy or the project's. Refused: 403.
//!
//! Keys, verified tokens and policies are all in memory ([`wharf_iam`] caches them), so the
//! check costs microseconds. It does not decide what the policies say (the admin API sets them).

use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::HeaderMap;
use wharf_iam::roles::perm;
use wharf_iam::{AuthorizeError, Iam, InvokerAuthError, Principal, Resource};

/// Cloud Run's `ingress` setting of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressSetting {
    /// `INGRESS_TRAFFIC_ALL`: anyone who can reach the ingress.
    All,
    /// `INGRESS_TRAFFIC_INTERNAL_ONLY`: Wharf's instances and loopback only.
    Internal,
    /// `INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER`: as internal (Wharf has no load balancer of its
    /// own in front; one on this machine connects from loopback).
    InternalAndCloudLoadBalancing,
}

impl IngressSetting {
    /// From the API's enum name; unset and unspecified mean all.
    pub fn from_api(value: Option<&str>) -> IngressSetting {
        match value {
            Some("INGRESS_TRAFFIC_INTERNAL_ONLY") => IngressSetting::Internal,
            Some("INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER") => IngressSetting::InternalAndCloudLoadBalancing,
            _ => IngressSetting::All,
        }
    }
}

/// The access rules of one service, set with its route.
#[derive(Debug, Clone)]
pub struct Access {
    /// The service, for its policy.
    pub resource: Resource,
    /// The hosts of the service's URLs (lowercase, no port): an ID token's audience must be
    /// a URL on one of them or on one of its tag hosts (`{tag}---{host}`).
    pub hosts: Vec<String>,
    /// Cloud Run's `invokerIamDisabled`: anyone may invoke, no credentials checked.
    pub invoker_iam_disabled: bool,
    pub ingress: IngressSetting,
}

impl Access {
    /// Whether `audience` (a URL, with or without a path) names this service.
    pub fn audience_matches(&self, audience: &str) -> bool {
        let rest = audience.strip_prefix("https://").or_else(|| audience.strip_prefix("http://")).unwrap_or(audience);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(authority, |(host, _)| host)
            .to_ascii_lowercase();
        self.hosts.iter().any(|own| {
            host == *own || host.strip_suffix(own.as_str()).is_some_and(|tag| tag.ends_with("---") && tag.len() > 3)
        })
    }
}

/// Why a request was not let through.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The service is internal and the request came from outside.
    #[error("the service only accepts internal traffic")]
    NotInternal,
    /// No credentials, or credentials that are not valid.
    #[error("the request is not authenticated: {0}")]
    Unauthenticated(String),
    /// Valid credentials without `run.routes.invoke`.
    #[error("{principal} may not invoke the service")]
    Forbidden { principal: String },
    /// The policy could not be read.
    #[error("the service's policy cannot be read: {0}")]
    Policy(String),
}

/// The ingress's access check: IAM, and the networks whose requests count as internal.
#[derive(Debug, Clone)]
pub struct Gate {
    iam: Iam,
    /// IPv4 networks (address, prefix length) of Wharf's instances.
    internal_networks: Arc<[(std::net::Ipv4Addr, u8)]>,
}

impl Gate {
    pub fn new(iam: Iam, internal_networks: Vec<(std::net::Ipv4Addr, u8)>) -> Gate {
        Gate { iam, internal_networks: internal_networks.into() }
    }

    /// Whether a request from `remote` is internal: loopback, or one of Wharf's instances.
    pub fn is_internal(&self, remote: IpAddr) -> bool {
        let remote = match remote {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return v6.is_loopback(),
            },
            v4 => v4,
        };
        let IpAddr::V4(v4) = remote else { return false };
        v4.is_loopback()
            || self.internal_networks.iter().any(|(net, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                u32::from(v4) & mask == u32::from(*net) & mask
            })
    }

    /// Checks one request to a service with `access`, from `remote`. Returns who called
    /// (None: anonymous, allowed because the service is open to `allUsers` or has the IAM
    /// check off).
    pub fn admit(&self, access: &Access, headers: &HeaderMap, remote: IpAddr) -> Result<Option<Principal>, Refusal> {
        if access.ingress != IngressSetting::All && !self.is_internal(remote) {
            return Err(Refusal::NotInternal);
        }
        if access.invoker_iam_disabled {
            return Ok(None);
        }
        let caller = match bearer(headers) {
            Some(token) => Some(
                self.iam
                    .authenticate_invoker(token, |aud| access.audience_matches(aud))
                    .map_err(|e| Refusal::Unauthenticated(e.to_string()))?,
            ),
            None => None,
        };
        match self.iam.authorize(caller.as_ref(), perm::ROUTES_INVOKE, &access.resource) {
            Ok(()) => Ok(caller),
            Err(AuthorizeError::Denied(denied)) => match caller {
                None => Err(Refusal::Unauthenticated("no credentials were sent".to_owned())),
                Some(_) => Err(Refusal::Forbidden { principal: denied.principal }),
            },
            Err(AuthorizeError::Policy(e)) => Err(Refusal::Policy(e.to_string())),
        }
    }
}

impl From<InvokerAuthError> for Refusal {
    fn from(e: InvokerAuthError) -> Self {
        Refusal::Unauthenticated(e.to_string())
    }
}

/// The bearer token of `X-Serverless-Authorization`, else of `Authorization`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_header(headers).map(|(_, token)| token)
}

/// The header [`Gate::admit`] takes the caller's token from, and the token.
fn bearer_header(headers: &HeaderMap) -> Option<(&'static str, &str)> {
    ["x-serverless-authorization", "authorization"].into_iter().find_map(|name| {
        let value = headers.get(name)?.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| (name, token.trim())).filter(|(_, t)| !t.is_empty())
    })
}

/// What the instance gets of an ID token the gate verified: as Cloud Run does, the token
/// without its signature (`header.payload.`), so the app can read who called (the claims)
/// but cannot replay a credential valid for this service. Rewrites the header
/// [`Gate::admit`] read the token from; any other token (an access token, the app's own
/// `Authorization` next to `X-Serverless-Authorization`) is left as it came. Call it only
/// after `admit` accepted the request with a caller.
pub fn strip_id_token_signature(headers: &mut HeaderMap) {
    let Some((name, token)) = bearer_header(headers) else { return };
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    if let Ok(value) = hyper::header::HeaderValue::from_str(&format!("Bearer {header}.{payload}.")) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(hosts: &[&str]) -> Access {
        Access {
            resource: Resource::service("p", "us-central1", "api"),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            invoker_iam_disabled: false,
            ingress: IngressSetting::All,
        }
    }

    #[test]
    fn only_the_verified_id_tokens_signature_is_stripped() {
        let header = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, value.parse().unwrap());
            }
            strip_id_token_signature(&mut headers);
            headers
        };
        let stripped = header(&[("authorization", "Bearer eyJh.eyJw.c2ln")]);
        assert_eq!(stripped["authorization"], "Bearer eyJh.eyJw.");
        // X-Serverless-Authorization carried the checked token; the app's own header stays.
        let both =
            header(&[("authorization", "Bearer app.own.jwt"), ("x-serverless-authorization", "bearer eyJh.eyJw.c2ln")]);
        assert_eq!(
            (both["authorization"].to_str().unwrap(), both["x-serverless-authorization"].to_str().unwrap()),
            ("Bearer app.own.jwt", "Bearer eyJh.eyJw.")
        );
        // Access tokens and other schemes pass as they are.
        assert_eq!(header(&[("authorization", "Bearer ya29.wharf_abc")])["authorization"], "Bearer ya29.wharf_abc");
        assert_eq!(header(&[("authorization", "Basic dXNlcjpwdw==")])["authorization"], "Basic dXNlcjpwdw==");
    }

    #[test]
    fn audiences_are_the_service_urls_with_or_without_path_or_port() {
        let a = access(&["api-abc.us-central1.localhost"]);
        for ok in [
            "http://api-abc.us-central1.localhost",
            "http://api-abc.us-central1.localhost:8080",
            "https://API-abc.us-central1.localhost/some/path?q=1",
            "http://v2---api-abc.us-central1.localhost:8080/",
        ] {
            assert!(a.audience_matches(ok), "{ok}");
        }
        for bad in [
            "http://other-abc.us-central1.localhost",
            "http://api-abc.us-central1.localhost.evil.example",
            "http://xapi-abc.us-central1.localhost",
            "http://---api-abc.us-central1.localhost",
            "",
        ] {
            assert!(!a.audience_matches(bad), "{bad}");
        }
    }
}
