//! Manifest formats: OCI image manifests and indexes, Docker schema2 manifests and manifest
//! lists. Parsing here validates structure and extracts what a manifest references; the bytes
//! themselves are always stored exactly as pushed, since their digest is their identity.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type the registry accepts.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// Why pushed or pulled bytes are not a manifest Wharf understands.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {reason}")]
    Json { reason: serde_json::Error },
    #[error("manifest must have schemaVersion 2 (it has {found:?})")]
    SchemaVersion { found: Option<i64> },
    #[error("Content-Type {header} does not match the manifest's mediaType {media_type}")]
    MediaTypeMismatch { header: String, media_type: String },
    #[error("image manifest has no config descriptor")]
    NoConfig,
    #[error("image manifest has no layers array")]
    NoLayers,
    #[error("index has no manifests array")]
    NoManifests,
    #[error("unsupported manifest media type {media_type}; supported: {}", MANIFEST_MEDIA_TYPES.join(", "))]
    UnsupportedMediaType { media_type: String },
}

/// A content descriptor: what a manifest says about a blob or a child manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A manifest's structure, as far as the registry and resolver need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An image: one config blob and its layers, bottom first.
    Image { media_type: String, config: Descriptor, layers: Vec<Descriptor> },
    /// An index or manifest list: one manifest per platform.
    Index { media_type: String, manifests: Vec<Descriptor> },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Parses `bytes`, using the request's `Content-Type` (when one of the manifest types)
    /// and the document's own `mediaType` field, which must agree when both are present.
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|reason| ManifestError::Json { reason })?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion { found: raw.schema_version });
        }
        let header =
            content_type.map(|c| c.split(';').next().unwrap_or(c).trim()).filter(|c| MANIFEST_MEDIA_TYPES.contains(c));
        let media_type = match (header, raw.media_type.as_deref()) {
            (Some(h), Some(m)) if h != m => {
                return Err(ManifestError::MediaTypeMismatch { header: h.to_owned(), media_type: m.to_owned() });
            }
            (_, Some(m)) => m.to_owned(),
            (Some(h), None) => h.to_owned(),
            // OCI manifests may omit mediaType; tell them apart by shape.
            (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
            (None, None) => OCI_MANIFEST.to_owned(),
        };
        match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let config = raw.config.ok_or(ManifestError::NoConfig)?;
                let layers = raw.layers.ok_or(ManifestError::NoLayers)?;
                Ok(Manifest::Image { media_type, config, layers })
            }
            OCI_INDEX | DOCKER_MANIFEST_LIST => {
                let manifests = raw.manifests.ok_or(ManifestError::NoManifests)?;
                Ok(Manifest::Index { media_type, manifests })
            }
            _ => Err(ManifestError::UnsupportedMediaType { media_type }),
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image { media_type, .. } | Manifest::Index { media_type, .. } => media_type,
        }
    }

    /// For an index, the child manifest for linux/amd64 (the only platform Wharf runs).
    pub fn pick_linux_amd64(&self) -> Option<&Descriptor> {
        match self {
            Manifest::Index { manifests, .. } => manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64")),
            Manifest::Image { .. } => None,
        }
    }
}

/// The parts of an image config that decide how its container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: ContainerConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(media_type: &str) -> String {
        let d = Digest::of(b"x");
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        )
    }

    #[test]
    fn parses_each_format() {
        let m = Manifest::parse(Some(OCI_MANIFEST), image(OCI_MANIFEST).as_bytes()).unwrap();
        assert_eq!(m.media_type(), OCI_MANIFEST);
        let m = Manifest::parse(None, image(DOCKER_MANIFEST).as_bytes()).unwrap();
        assert_eq!(m.media_type(), DOCKER_MANIFEST);
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":3,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            Digest::of(b"y")
        );
        let m = Manifest::parse(None, list.as_bytes()).unwrap();
        assert_eq!(m.pick_linux_amd64().unwrap().digest, Digest::of(b"y"));
    }

    #[test]
    fn rejects_bad_manifests() {
        Manifest::parse(None, b"{").unwrap_err();
        Manifest::parse(None, br#"{"schemaVersion":1}"#).unwrap_err();
        let err = Manifest::parse(Some(OCI_INDEX), image(OCI_MANIFEST).as_bytes()).unwrap_err();
        assert!(matches!(&err, ManifestError::MediaTypeMismatch { header, .. } if header == OCI_INDEX), "{err}");
        let no_config = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        Manifest::parse(None, no_config.as_bytes()).unwrap_err();
    }
}
