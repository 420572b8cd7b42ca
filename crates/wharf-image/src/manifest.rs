//! Manifest formats: OCI image manifests and indexes, Docker schema2 manifests and manifest
//! lists, and image configs. Parsing (with oci-spec's image types) validates structure and
//! extracts what a manifest references; the bytes themselves are always stored exactly as
//! pushed, since their digest is their identity. It does not fetch or store anything.

use std::collections::HashMap;
use std::path::PathBuf;

pub use oci_spec::image::Config as ContainerConfig;
pub use oci_spec::image::Platform;
use oci_spec::image::{Arch, Descriptor as OciDescriptor, ImageIndex, ImageManifest, Os};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestParseError};

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

/// The largest manifest stored or read, as the distribution spec recommends.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest image config read (configs carry history and labels; real ones are KiBs).
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Every manifest media type the registry accepts.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// Why a manifest or image config is refused. Messages carry the offending value, and print
/// the JSON error when there is one (the registry shows a manifest's error to its pusher).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {error}")]
    NotJson { error: serde_json::Error },
    #[error("manifest must have schemaVersion 2, not {found}")]
    SchemaVersion { found: String },
    #[error("Content-Type {header} does not match the manifest's mediaType {media_type}")]
    MediaTypeMismatch { header: String, media_type: String },
    #[error("unsupported manifest media type {media_type}; supported: {}", MANIFEST_MEDIA_TYPES.join(", "))]
    UnsupportedMediaType { media_type: String },
    #[error("{media_type} manifest is malformed: {error}")]
    Malformed { media_type: String, error: serde_json::Error },
    #[error("manifest names a blob by {digest:?}, which Wharf cannot store: {reason}")]
    Digest { digest: String, reason: &'static str },
    #[error("image config {digest} is not valid: {error}")]
    Config { digest: Digest, error: serde_json::Error },
    #[error("image is for {os}/{architecture}, but Wharf runs linux/amd64")]
    WrongPlatform { os: String, architecture: String },
    #[error("{reference} has no linux/amd64 image")]
    NoLinuxAmd64 { reference: String },
    #[error("index {index} names another index ({child}) for linux/amd64")]
    NestedIndex { index: String, child: Digest },
    #[error("indexes nested too deeply at {digest}")]
    NestedTooDeep { digest: Digest },
    /// An image archive on disk is not laid out as its format requires.
    #[error("{path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    /// A manifest read from a file in an image archive is refused.
    #[error("{path}: {error}")]
    InFile { path: PathBuf, error: Box<ManifestError> },
    #[error("the image archive holds no manifest")]
    EmptyArchive,
}

/// A content descriptor: what a manifest says about a blob or a child manifest. Parsed by
/// oci-spec's `Descriptor`, then kept as this view whose digest is a [`Digest`] Wharf stores:
/// oci-spec's digest type also admits sha512 and unregistered algorithms, which the blob store
/// cannot hold, so the check happens once, here, rather than at every use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Box<Platform>>,
    pub annotations: Option<HashMap<String, String>>,
}

impl TryFrom<&OciDescriptor> for Descriptor {
    type Error = ManifestError;

    fn try_from(d: &OciDescriptor) -> Result<Descriptor, ManifestError> {
        let digest = d.digest().as_ref();
        let digest: Digest = digest
            .parse()
            .map_err(|e: DigestParseError| ManifestError::Digest { digest: e.value, reason: e.reason })?;
        Ok(Descriptor {
            media_type: d.media_type().to_string(),
            digest,
            size: d.size(),
            platform: d.platform().clone().map(Box::new),
            annotations: d.annotations().clone(),
        })
    }
}

/// A manifest's structure, as far as the registry and resolver need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An image: one config blob and its layers, bottom first.
    Image { media_type: String, config: Descriptor, layers: Vec<Descriptor> },
    /// An index or manifest list: one manifest per platform.
    Index { media_type: String, manifests: Vec<Descriptor> },
}

impl Manifest {
    /// Parses `bytes`, using the request's `Content-Type` (when one of the manifest types)
    /// and the document's own `mediaType` field, which must agree when both are present.
    /// OCI and Docker schema2 documents share their shape, so both parse as oci-spec's
    /// `ImageManifest` (image) or `ImageIndex` (index, manifest list).
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| ManifestError::NotJson { error })?;
        let schema_version = doc.get("schemaVersion");
        if schema_version.and_then(serde_json::Value::as_i64) != Some(2) {
            let found = schema_version.map_or_else(|| "none".to_owned(), ToString::to_string);
            return Err(ManifestError::SchemaVersion { found });
        }
        let header =
            content_type.map(|c| c.split(';').next().unwrap_or(c).trim()).filter(|c| MANIFEST_MEDIA_TYPES.contains(c));
        let media_type = match (header, doc.get("mediaType").and_then(serde_json::Value::as_str)) {
            (Some(h), Some(m)) if h != m => {
                return Err(ManifestError::MediaTypeMismatch { header: h.to_owned(), media_type: m.to_owned() });
            }
            (_, Some(m)) => m.to_owned(),
            (Some(h), None) => h.to_owned(),
            // OCI manifests may omit mediaType; tell them apart by shape.
            (None, None) if doc.get("manifests").is_some() => OCI_INDEX.to_owned(),
            (None, None) => OCI_MANIFEST.to_owned(),
        };
        let descriptors = |list: &[OciDescriptor]| -> Result<Vec<Descriptor>, ManifestError> {
            list.iter().map(Descriptor::try_from).collect()
        };
        match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let image: ImageManifest = serde_json::from_value(doc)
                    .map_err(|error| ManifestError::Malformed { media_type: media_type.clone(), error })?;
                let config = Descriptor::try_from(image.config())?;
                let layers = descriptors(image.layers())?;
                Ok(Manifest::Image { media_type, config, layers })
            }
            OCI_INDEX | DOCKER_MANIFEST_LIST => {
                let index: ImageIndex = serde_json::from_value(doc)
                    .map_err(|error| ManifestError::Malformed { media_type: media_type.clone(), error })?;
                let manifests = descriptors(index.manifests())?;
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
            Manifest::Index { manifests, .. } => manifests.iter().find(|d| {
                d.platform.as_ref().is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
            }),
            Manifest::Image { .. } => None,
        }
    }
}

/// The parts of an image config that decide how its container runs; the container part is
/// oci-spec's `Config`. The whole is ours rather than oci-spec's `ImageConfiguration` for two
/// reasons: it is stored with every revision (`ResolvedImage`), where the config's history and
/// layer diff ids do not belong and from which older rows must still load; and
/// `ImageConfiguration` requires `rootfs`, `os` and `architecture`, which Wharf does not use
/// (`os` and `architecture` are checked when present), so configs that ran before still run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: ContainerConfig,
}

impl ImageConfig {
    /// Parses the config blob `digest` (OCI and Docker configs share their JSON) and checks
    /// that it is for linux/amd64 when it names a platform.
    pub fn parse(digest: &Digest, bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
        let config: ImageConfig =
            serde_json::from_slice(bytes).map_err(|error| ManifestError::Config { digest: digest.clone(), error })?;
        if !config.os.is_empty() && (config.os != "linux" || config.architecture != "amd64") {
            return Err(ManifestError::WrongPlatform { os: config.os, architecture: config.architecture });
        }
        Ok(config)
    }
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
        assert!(
            matches!(&err, ManifestError::MediaTypeMismatch { header, media_type } if header == OCI_INDEX && media_type == OCI_MANIFEST),
            "{err}"
        );
        let no_config = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        let err = Manifest::parse(None, no_config.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("missing field `config`"), "{err}");
        let sha512 = format!("sha512:{}", "a".repeat(128));
        let odd_digest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{sha512}","size":1}},"layers":[]}}"#
        );
        match Manifest::parse(None, odd_digest.as_bytes()) {
            Err(ManifestError::Digest { digest, .. }) => assert_eq!(digest, sha512),
            other => panic!("expected a digest error, got {other:?}"),
        }
        let unknown = r#"{"schemaVersion":2,"mediaType":"application/x-nope"}"#;
        match Manifest::parse(None, unknown.as_bytes()) {
            Err(ManifestError::UnsupportedMediaType { media_type }) => assert_eq!(media_type, "application/x-nope"),
            other => panic!("expected an unsupported media type, got {other:?}"),
        }
    }

    #[test]
    fn docker_configs_parse_and_platform_is_checked() {
        let d = Digest::of(b"config");
        let docker = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Entrypoint":null,
            "Cmd":["/app"],"ExposedPorts":{"8080/tcp":{}},"WorkingDir":"/srv","User":"app","Labels":null},
            "rootfs":{"type":"layers","diff_ids":[]},"history":[{"created_by":"x"}]}"#;
        let config = ImageConfig::parse(&d, docker).unwrap();
        assert_eq!(config.config.cmd().as_deref(), Some(&["/app".to_owned()][..]));
        assert_eq!(config.config.entrypoint(), &None);
        assert_eq!(config.config.working_dir().as_deref(), Some("/srv"));
        assert_eq!(config.config.user().as_deref(), Some("app"));
        // A config naming no platform (and no rootfs) is accepted, as before.
        assert_eq!(ImageConfig::parse(&d, br#"{"config":{}}"#).unwrap(), ImageConfig::default());
        match ImageConfig::parse(&d, br#"{"architecture":"arm64","os":"linux"}"#) {
            Err(ManifestError::WrongPlatform { os, architecture }) => {
                assert_eq!((os, architecture), ("linux".into(), "arm64".into()))
            }
            other => panic!("expected WrongPlatform, got {other:?}"),
        }
        match ImageConfig::parse(&d, b"[1]") {
            Err(ManifestError::Config { digest, .. }) => assert_eq!(digest, d),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    /// Revisions store their `ImageConfig`: what earlier versions wrote must still load, and
    /// what this one writes must read back the same.
    #[test]
    fn stored_image_configs_round_trip() {
        let stored =
            r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/app"],"Env":["A=1"],"WorkingDir":"/w"}}"#;
        let config: ImageConfig = serde_json::from_str(stored).unwrap();
        assert_eq!(config.config.entrypoint().as_deref(), Some(&["/app".to_owned()][..]));
        let again: serde_json::Value = serde_json::to_value(&config).unwrap();
        assert_eq!(again, serde_json::from_str::<serde_json::Value>(stored).unwrap());
    }
}
