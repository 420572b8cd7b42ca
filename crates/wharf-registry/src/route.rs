//! Parsing a registry request path into what it addresses.

/// The resource a `/v2/...` path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/` (start) or `/v2/<name>/blobs/uploads/<id>` (session)
    Upload { name: String, id: Option<String> },
}

impl Route {
    /// Parses `path`; `None` when it is not a registry path.
    pub fn parse(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() || rest == "/" {
            return Some(Route::Base);
        }
        let rest = rest.strip_prefix('/')?;
        if rest == "_catalog" {
            return Some(Route::Catalog);
        }
        let name = |n: &str| (!n.is_empty()).then(|| n.to_owned());
        if let Some(n) = rest.strip_suffix("/tags/list") {
            return Some(Route::Tags { name: name(n)? });
        }
        if let Some(n) = rest.strip_suffix("/blobs/uploads").or_else(|| rest.strip_suffix("/blobs/uploads/")) {
            return Some(Route::Upload { name: name(n)?, id: None });
        }
        if let Some(i) = rest.rfind("/blobs/uploads/") {
            let id = &rest[i + "/blobs/uploads/".len()..];
            return Some(Route::Upload { name: name(&rest[..i])?, id: name(id) });
        }
        if let Some(i) = rest.rfind("/manifests/") {
            let reference = &rest[i + "/manifests/".len()..];
            return Some(Route::Manifest { name: name(&rest[..i])?, reference: name(reference)? });
        }
        if let Some(i) = rest.rfind("/blobs/") {
            let digest = &rest[i + "/blobs/".len()..];
            return Some(Route::Blob { name: name(&rest[..i])?, digest: name(digest)? });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_endpoint() {
        let n = || "team/app".to_owned();
        assert_eq!(Route::parse("/v2/"), Some(Route::Base));
        assert_eq!(Route::parse("/v2"), Some(Route::Base));
        assert_eq!(Route::parse("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(Route::parse("/v2/team/app/tags/list"), Some(Route::Tags { name: n() }));
        assert_eq!(
            Route::parse("/v2/team/app/manifests/v1"),
            Some(Route::Manifest { name: n(), reference: "v1".into() })
        );
        assert_eq!(
            Route::parse("/v2/team/app/blobs/sha256:ab"),
            Some(Route::Blob { name: n(), digest: "sha256:ab".into() })
        );
        assert_eq!(Route::parse("/v2/team/app/blobs/uploads/"), Some(Route::Upload { name: n(), id: None }));
        assert_eq!(
            Route::parse("/v2/team/app/blobs/uploads/abc-1"),
            Some(Route::Upload { name: n(), id: Some("abc-1".into()) })
        );
        // A repository may itself contain a component named like an endpoint.
        assert_eq!(
            Route::parse("/v2/blobs/manifests/manifests/x"),
            Some(Route::Manifest { name: "blobs/manifests".into(), reference: "x".into() })
        );
        assert_eq!(Route::parse("/v2//manifests/x"), None);
        assert_eq!(Route::parse("/other"), None);
    }
}
