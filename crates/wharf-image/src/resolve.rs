//! Resolution: from the image reference a user typed to a pinned, locally stored image.
//! References naming Wharf's own registry resolve in the local store; any other reference is
//! pulled from its registry first. Indexes resolve to their linux/amd64 image.

use std::path::PathBuf;
use std::sync::Arc;

use crate::content::ImageStore;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{ImageConfig, Manifest, ManifestError};
use crate::reference::ImageReference;
use crate::remote::RemoteRegistry;
use crate::snapshot::SnapshotStore;

/// An image pinned by digest, with everything needed to run it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedImage {
    /// The local repository holding the image.
    pub repository: String,
    /// The linux/amd64 image manifest's digest: what a revision pins.
    pub digest: Digest,
    pub config: ImageConfig,
    /// Layer digests, bottom first.
    pub layers: Vec<Digest>,
}

#[derive(Debug, Clone)]
pub struct Resolver {
    images: ImageStore,
    snapshots: Arc<SnapshotStore>,
    remote: Arc<RemoteRegistry>,
    /// Registry names that mean "Wharf's own registry" (`127.0.0.1:5000`, `localhost:5000`).
    local_registries: Vec<String>,
}

impl Resolver {
    pub fn new(
        images: ImageStore,
        snapshots: Arc<SnapshotStore>,
        remote: Arc<RemoteRegistry>,
        local_registries: Vec<String>,
    ) -> Resolver {
        Resolver { images, snapshots, remote, local_registries }
    }

    pub fn is_local(&self, reference: &ImageReference) -> bool {
        self.local_registries.iter().any(|r| r == &reference.registry)
    }

    /// Resolves `input` to a pinned image, pulling it when it lives in a remote registry.
    /// A remote reference by digest that is already stored needs no network.
    pub async fn resolve(&self, input: &str) -> Result<ResolvedImage, ImageError> {
        let reference: ImageReference = input.parse().map_err(ImageError::ReferenceInvalid)?;
        if self.is_local(&reference) {
            return self.load(&reference.repository, &reference.reference());
        }
        let repo = RemoteRegistry::local_repository(&reference);
        if let Some(digest) = &reference.digest
            && let Ok(image) = self.load(&repo, digest.as_str())
        {
            return Ok(image);
        }
        let pulled = self.remote.pull(&self.images, &reference).await?;
        self.load(&pulled.repository, pulled.image.as_str())
    }

    /// Loads the image `reference` (tag or digest) names in local `repository`.
    pub fn load(&self, repository: &str, reference: &str) -> Result<ResolvedImage, ImageError> {
        let stored = self.images.get_manifest(repository, reference)?;
        let manifest = Manifest::parse(Some(&stored.media_type), &stored.bytes)?;
        let (digest, manifest) = match &manifest {
            Manifest::Index { .. } => {
                let child = manifest
                    .pick_linux_amd64()
                    .ok_or_else(|| ManifestError::NoLinuxAmd64 { reference: format!("{repository}:{reference}") })?;
                let stored = self.images.get_manifest(repository, child.digest.as_str())?;
                (stored.digest, Manifest::parse(Some(&stored.media_type), &stored.bytes)?)
            }
            Manifest::Image { .. } => (stored.digest, manifest),
        };
        let Manifest::Image { config, layers, .. } = manifest else {
            return Err(ManifestError::NestedIndex { index: format!("{repository}:{reference}"), child: digest }.into());
        };
        let config_bytes = self.images.blobs().read_limited(&config.digest, crate::manifest::MAX_CONFIG_BYTES)?;
        let config = ImageConfig::parse(&config.digest, &config_bytes)?;
        Ok(ResolvedImage {
            repository: repository.to_owned(),
            digest,
            config,
            layers: layers.into_iter().map(|l| l.digest).collect(),
        })
    }

    /// Unpacks the image's layers (once each) and returns their snapshot directories,
    /// bottom first.
    pub async fn snapshots(&self, image: &ResolvedImage) -> Result<Vec<PathBuf>, ImageError> {
        let snapshots = self.snapshots.clone();
        let layers = image.layers.clone();
        tokio::task::spawn_blocking(move || snapshots.ensure_image(&layers))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
    }
}
