//! Names: repository names and tags as the OCI distribution spec allows them, and image
//! references (`[registry/]repository[:tag][@digest]`) as users type them.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestParseError};

/// Why a repository name, tag or image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("repository name {name:?} must be 1 to 255 characters")]
    RepositoryLength { name: String },
    #[error(
        "repository name {name:?} is invalid: each '/'-separated part must be lowercase \
         letters and digits, optionally separated by '.', '_', '__' or dashes"
    )]
    RepositoryInvalid { name: String },
    #[error("tag {tag:?} is invalid: use up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")]
    TagInvalid { tag: String },
    /// The part after `@` is not a digest.
    #[error("invalid image reference {input:?}: {reason}")]
    Digest { input: String, reason: DigestParseError },
    /// The repository or tag part of a reference is invalid.
    #[error("invalid image reference {input:?}: {reason}")]
    Image { input: String, reason: Box<ReferenceError> },
}

/// The registry unqualified names resolve against, as in Docker.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Checks a repository name against the distribution spec's grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
pub fn validate_repository(name: &str) -> Result<(), ReferenceError> {
    if name.is_empty() || name.len() > 255 {
        return Err(ReferenceError::RepositoryLength { name: name.to_owned() });
    }
    if !name.split('/').all(valid_component) {
        return Err(ReferenceError::RepositoryInvalid { name: name.to_owned() });
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-')));
    if ok { Ok(()) } else { Err(ReferenceError::TagInvalid { tag: tag.to_owned() }) }
}

/// A parsed image reference such as `127.0.0.1:5000/hello:v1` or `nginx@sha256:...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// Registry host and optional port, `docker.io` when the user named none.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// The tag or digest to ask a registry for; `latest` when neither was given.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// `registry/repository`, the name under which a pulled image is kept locally.
    pub fn qualified_repository(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<ImageReference, ReferenceError> {
        let invalid = |reason| ReferenceError::Image { input: input.to_owned(), reason: Box::new(reason) };
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest =
                    d.parse::<Digest>().map_err(|reason| ReferenceError::Digest { input: input.to_owned(), reason })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_owned())),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(invalid)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository).map_err(invalid)?;
        Ok(ImageReference { registry, repository, tag, digest })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        for good in ["a", "hello", "library/nginx", "a.b_c__d---e/f0", "x/y/z"] {
            assert_eq!(validate_repository(good), Ok(()), "{good}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a___b", "a//b", "/a", "a/", "a b", "../x"] {
            validate_repository(bad).expect_err(bad);
        }
    }

    #[test]
    fn tags() {
        assert_eq!(validate_tag("v1.0-rc_1"), Ok(()));
        validate_tag(".x").unwrap_err();
        validate_tag(&"a".repeat(129)).unwrap_err();
    }

    #[test]
    fn parses_references() {
        let r: ImageReference = "127.0.0.1:5000/hello/app:v1".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "hello/app", Some("v1"))
        );
        let r: ImageReference = "nginx".parse().unwrap();
        assert_eq!(r.qualified_repository(), "docker.io/library/nginx");
        assert_eq!(r.reference(), "latest");
        let d = Digest::of(b"x");
        let r: ImageReference = format!("localhost:5000/a@{d}").parse().unwrap();
        assert_eq!(r.reference(), d.to_string());
        "Hello:v1".parse::<ImageReference>().unwrap_err();
        let err = "a:b:c".parse::<ImageReference>().unwrap_err();
        let ReferenceError::Image { input, reason } = &err else { panic!("{err:?}") };
        assert_eq!(input, "a:b:c");
        assert_eq!(**reason, ReferenceError::RepositoryInvalid { name: "library/a:b".into() });
    }
}
