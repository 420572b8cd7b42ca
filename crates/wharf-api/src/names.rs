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

#[cfg(test)]
mod tests {
    use super::*;

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
