//! Cloud Run's domain mappings, in the shape of its v1 (Knative-style) API,
//! `domains.cloudrun.com/v1`: a `DomainMapping` names a custom domain (its `metadata.name`)
//! and the service it routes to (`spec.routeName`); its status carries the `Ready`,
//! `CertificateProvisioned` and `DomainRoutable` conditions, the DNS records to create and
//! the URL. Also the rule for which domain names may be mapped ([`validate_domain`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "domains.cloudrun.com/v1";
pub const KIND: &str = "DomainMapping";
pub const LIST_KIND: &str = "DomainMappingList";
/// The label that names a v1 resource's region.
pub const LOCATION_LABEL: &str = "cloud.googleapis.com/location";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainMapping {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DomainMappingSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DomainMappingStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub self_link: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainMappingSpec {
    /// The service the domain routes to.
    #[serde(default)]
    pub route_name: String,
    /// `AUTOMATIC` (managed certificate, the only mode Wharf has) or `NONE`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_mode: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_override: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DomainMappingStatus {
    pub conditions: Vec<Condition>,
    pub observed_generation: i64,
    pub resource_records: Vec<ResourceRecord>,
    pub mapped_route_name: String,
    pub url: String,
}

/// A Knative condition: `status` is `"True"`, `"False"` or `"Unknown"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    pub r#type: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
}

/// A DNS record to create for the domain to reach the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceRecord {
    pub name: String,
    pub rrdata: String,
    /// `A`, `AAAA` or `CNAME`.
    pub r#type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainMappingList {
    pub api_version: String,
    pub kind: String,
    pub metadata: BTreeMap<String, String>,
    pub items: Vec<DomainMapping>,
}

/// Why a domain name cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the domain {domain:?} {problem}")]
pub struct DomainError {
    pub domain: String,
    pub problem: String,
}

/// Checks `domain` is a fully qualified DNS host name Wharf can map: lowercase letters,
/// digits and hyphens in labels of 1-63 characters (not starting or ending with a hyphen), at
/// least two labels, at most 253 characters, no wildcard, no trailing dot, not an IP address.
pub fn validate_domain(domain: &str) -> Result<(), DomainError> {
    let bad = |problem: &str| Err(DomainError { domain: domain.to_owned(), problem: problem.to_owned() });
    if domain.is_empty() {
        return bad("is empty; give a domain name such as api.example.com");
    }
    if domain.len() > 253 {
        return bad("is longer than 253 characters");
    }
    if domain.ends_with('.') {
        return bad("ends with a dot; give it without the trailing dot");
    }
    if domain.starts_with("*.") {
        return bad("is a wildcard; map each name on its own");
    }
    if domain.parse::<std::net::IpAddr>().is_ok() {
        return bad("is an IP address; map a domain name");
    }
    if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("has uppercase letters; give it in lowercase");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return bad("is a single label; give a fully qualified name such as api.example.com");
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return bad("has an empty label or one longer than 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return bad("may only have letters a-z, digits and hyphens in its labels (IDNs in their xn-- form)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with a hyphen");
        }
    }
    if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return bad("ends in an all-numeric label, which is not a top-level domain");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked_by_name() {
        for good in ["api.example.com", "a.b", "xn--bcher-kva.example", "a-b.c-d.example.org"] {
            assert_eq!(validate_domain(good), Ok(()), "{good}");
        }
        let problem = |d: &str| validate_domain(d).unwrap_err().problem;
        assert!(problem("").contains("empty"));
        assert!(problem("localhost").contains("single label"));
        assert!(problem("API.example.com").contains("lowercase"));
        assert!(problem("api.example.com.").contains("trailing dot"));
        assert!(problem("*.example.com").contains("wildcard"));
        assert!(problem("10.0.0.1").contains("IP address"));
        assert!(problem("a_b.example.com").contains("letters a-z"));
        assert!(problem("-a.example.com").contains("hyphen"));
        assert!(problem("a..example.com").contains("empty label"));
        assert!(problem(&format!("{}.com", "a".repeat(64))).contains("63"));
        assert!(problem("example.123").contains("all-numeric"));
        assert_eq!(
            validate_domain("a/b.com").unwrap_err().to_string(),
            "the domain \"a/b.com\" may only have letters a-z, digits and hyphens in its labels (IDNs in their xn-- form)"
        );
    }

    #[test]
    fn a_mapping_reads_and_writes_in_the_v1_shape() {
        let text = r#"{"apiVersion":"domains.cloudrun.com/v1","kind":"DomainMapping",
            "metadata":{"name":"api.example.com","labels":{"cloud.googleapis.com/location":"us-central1"}},
            "spec":{"routeName":"hello","certificateMode":"AUTOMATIC"}}"#;
        let mapping: DomainMapping = serde_json::from_str(text).unwrap();
        assert_eq!(mapping.spec.route_name, "hello");
        assert_eq!(mapping.metadata.labels.get(LOCATION_LABEL).map(String::as_str), Some("us-central1"));
        let json = serde_json::to_value(&mapping).unwrap();
        assert_eq!(json["spec"]["routeName"], "hello");
        assert!(json.get("status").is_none());
    }
}
