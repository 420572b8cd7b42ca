//! Resource names and Cloud Run's naming rules.

use std::fmt;

/// `projects/{project}/locations/{location}`, the parent of services and jobs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Parent {
    pub project: String,
    pub location: String,
}

impl Parent {
    pub fn path(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.location)
    }
}

/// A full resource name: a parent plus a collection and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceName {
    pub parent: Parent,
    pub collection: &'static str,
    pub id: String,
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.parent.path(), self.collection, self.id)
    }
}

/// Why a name was refused; each variant carries the name and explains the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "{kind} name {name:?} is invalid: it must use only lowercase letters, digits and hyphens, \
         start with a letter, not end with a hyphen, and be at most 49 characters"
    )]
    Service { kind: String, name: String },
    #[error("{kind} {id:?} is invalid: use lowercase letters, digits and hyphens")]
    ParentId { kind: String, id: String },
    #[error(
        "revision name {revision:?} is invalid: it must be {service}-<suffix>, with lowercase letters, digits \
         and hyphens, at most 63 characters"
    )]
    Revision { service: String, revision: String },
}

/// Checks a service (or job) name: lowercase letters, digits and hyphens, starting with a
/// letter, not ending with a hyphen, at most 49 characters.
pub fn validate_service_name(kind: &str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 49
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok { Ok(()) } else { Err(NameError::Service { kind: kind.to_owned(), name: name.to_owned() }) }
}

/// Checks a project or location id: lowercase letters, digits and hyphens, at most 63.
pub fn validate_parent_id(kind: &str, id: &str) -> Result<(), NameError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok { Ok(()) } else { Err(NameError::ParentId { kind: kind.to_owned(), id: id.to_owned() }) }
}

/// Checks a full revision name given for a service: `{service}-{suffix}` where the whole is a
/// DNS label (at most 63 characters).
pub fn validate_revision_name(service: &str, revision: &str) -> Result<(), NameError> {
    let prefix = format!("{service}-");
    let ok = revision.starts_with(&prefix)
        && revision.len() > prefix.len()
        && revision.len() <= 63
        && !revision.ends_with('-')
        && revision.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok { Ok(()) } else { Err(NameError::Revision { service: service.to_owned(), revision: revision.to_owned() }) }
}

/// The DNS label that names a service on the ingress: `{service}-{hash}`, the hash a stable
/// ten-character digest of the project (as Cloud Run's `{service}-{project number}`). The
/// hash has a fixed length, so the label splits back into one service and one project hash:
/// service `a-b` in project `c` and service `a` in project `b-c` get different hosts.
pub fn service_host_label(service: &str, project: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(project.as_bytes());
    // 50 bits as ten base-32 letters and digits (a-z, 2-7): DNS-safe and lowercase.
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bits = digest.iter().take(8).fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let hash: String = (0..10).map(|i| char::from(ALPHABET[((bits >> (59 - 5 * i)) & 31) as usize])).collect();
    format!("{service}-{hash}")
}

/// A service's host: `{service}-{hash}.{location}.{domain}`, unique per project and region.
pub fn service_host(service: &str, parent: &Parent, domain: &str) -> String {
    format!("{}.{}.{domain}", service_host_label(service, &parent.project), parent.location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_hosts_never_collide_across_projects_or_regions() {
        let at = |project: &str, location: &str| Parent { project: project.into(), location: location.into() };
        let a = service_host("a-b", &at("c", "us-central1"), "localhost");
        let b = service_host("a", &at("b-c", "us-central1"), "localhost");
        assert_ne!(a, b);
        assert_ne!(
            service_host("api", &at("p", "us-central1"), "localhost"),
            service_host("api", &at("p", "europe-west1"), "localhost")
        );
        let host = service_host("hello", &at("demo", "us-central1"), "localhost");
        assert_eq!(host, service_host("hello", &at("demo", "us-central1"), "localhost"), "stable");
        let label = host.split('.').next().unwrap();
        assert!(label.len() <= 63 && label.starts_with("hello-") && label.len() == "hello-".len() + 10, "{host}");
        assert!(host.ends_with(".us-central1.localhost"), "{host}");
    }

    #[test]
    fn service_names_follow_cloud_run() {
        for good in ["hello", "a", "my-service-2", &"a".repeat(49)] {
            assert_eq!(validate_service_name("service", good), Ok(()), "{good}");
        }
        for bad in ["", "Hello", "1abc", "abc-", "a_b", "a.b", &"a".repeat(50)] {
            validate_service_name("service", bad).expect_err(bad);
        }
    }

    #[test]
    fn revision_names() {
        assert_eq!(validate_revision_name("hello", "hello-green"), Ok(()));
        validate_revision_name("hello", "other-green").unwrap_err();
        validate_revision_name("hello", "hello-").unwrap_err();
        let err = validate_revision_name("hello", "hello-Green").unwrap_err();
        assert_eq!(
            err.to_string(),
            "revision name \"hello-Green\" is invalid: it must be hello-<suffix>, with lowercase letters, digits \
             and hyphens, at most 63 characters"
        );
    }
}
