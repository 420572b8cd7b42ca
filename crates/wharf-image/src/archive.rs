//! Reading images from files on disk for `wharf images import`: an OCI image layout directory
//! (`oci-layout`, `index.json`, `blobs/`) or a `docker save` tarball (either the classic
//! `manifest.json` form or the OCI layout inside a tar). The result lists the blobs and
//! manifests to push, children before parents.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{self, Descriptor, Manifest, ManifestError};

/// An image read from disk, ready to push.
#[derive(Debug)]
pub struct ImageArchive {
    /// Config and layer blobs, each with the file that holds it.
    pub blobs: Vec<(Digest, PathBuf)>,
    /// Manifests as `(digest, media type, bytes)`, children first: push in this order.
    pub manifests: Vec<(Digest, String, Vec<u8>)>,
    /// Tags the archive itself records (docker-archive `RepoTags`), for information.
    pub repo_tags: Vec<String>,
    /// Keeps an unpacked docker-archive alive while its blobs are pushed.
    _unpacked: Option<tempfile::TempDir>,
}

impl ImageArchive {
    /// Reads `path`: a directory is an OCI layout, a file a docker-archive tarball.
    /// `tag` picks among several images of an OCI layout by their `ref.name` annotation.
    pub fn open(path: &Path, tag: Option<&str>) -> Result<ImageArchive, ImageError> {
        let meta = fs::metadata(path).map_err(ImageError::io("read", path))?;
        if meta.is_dir() {
            return read_oci_layout(path, tag);
        }
        let dir = tempfile::tempdir().map_err(ImageError::io("create temporary directory", "/tmp"))?;
        let file = fs::File::open(path).map_err(ImageError::io("open", path))?;
        let reader =
            crate::snapshot::decompress(std::io::BufReader::new(file)).map_err(ImageError::io("read", path))?;
        // The tarball is unpacked with the same safe extraction as image layers.
        let limits = crate::snapshot::UnpackLimits::sized_for(dir.path())
            .map_err(ImageError::io("measure free space of", dir.path()))?;
        crate::snapshot::unpack_layer(reader, dir.path(), &Digest::of(path.to_string_lossy().as_bytes()), &limits)?;
        let mut archive = if dir.path().join("index.json").exists() && !dir.path().join("manifest.json").exists() {
            read_oci_layout(dir.path(), tag)?
        } else {
            read_docker_archive(dir.path())?
        };
        archive._unpacked = Some(dir);
        Ok(archive)
    }
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> ImageError {
    ManifestError::Archive { path: path.to_owned(), reason: why.to_string() }.into()
}

/// A manifest file of the archive that does not parse.
fn invalid_manifest(path: &Path) -> impl FnOnce(ManifestError) -> ImageError {
    move |error| ManifestError::InFile { path: path.to_owned(), error: Box::new(error) }.into()
}

fn read_oci_layout(dir: &Path, tag: Option<&str>) -> Result<ImageArchive, ImageError> {
    if !dir.join("oci-layout").exists() {
        return Err(invalid(dir, "not an OCI image layout (no oci-layout file)"));
    }
    let index_path = dir.join("index.json");
    let index = fs::read(&index_path).map_err(ImageError::io("read", &index_path))?;
    let Manifest::Index { manifests, .. } =
        Manifest::parse(Some(manifest::OCI_INDEX), &index).map_err(invalid_manifest(&index_path))?
    else {
        return Err(invalid(&index_path, "index.json is not an image index"));
    };
    let ref_name =
        |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name")).cloned();
    let chosen = match tag {
        Some(tag) => manifests
            .iter()
            .find(|d| ref_name(d).as_deref() == Some(tag))
            .or_else(|| (manifests.len() == 1).then(|| &manifests[0])),
        None if manifests.len() == 1 => manifests.first(),
        None => None,
    };
    let Some(chosen) = chosen else {
        let names: Vec<String> = manifests.iter().filter_map(ref_name).collect();
        return Err(invalid(dir, format!("choose one of the images it holds with --tag: {}", names.join(", "))));
    };
    let blob_path = |d: &Digest| dir.join("blobs").join("sha256").join(d.hex());
    let mut archive = ImageArchive { blobs: Vec::new(), manifests: Vec::new(), repo_tags: Vec::new(), _unpacked: None };
    collect_manifest(&blob_path, chosen, &mut archive, 0)?;
    Ok(archive)
}

fn collect_manifest(
    blob_path: &dyn Fn(&Digest) -> PathBuf,
    descriptor: &Descriptor,
    archive: &mut ImageArchive,
    depth: usize,
) -> Result<(), ImageError> {
    if depth > 2 {
        return Err(ManifestError::NestedTooDeep { digest: descriptor.digest.clone() }.into());
    }
    let path = blob_path(&descriptor.digest);
    let bytes = fs::read(&path).map_err(ImageError::io("read", &path))?;
    let actual = Digest::of(&bytes);
    if actual != descriptor.digest {
        return Err(ImageError::DigestMismatch { expected: descriptor.digest.clone(), actual });
    }
    let parsed = Manifest::parse(Some(&descriptor.media_type), &bytes).map_err(invalid_manifest(&path))?;
    match &parsed {
        Manifest::Image { config, layers, .. } => {
            for blob in std::iter::once(config).chain(layers) {
                let path = blob_path(&blob.digest);
                if !path.exists() {
                    return Err(invalid(&path, "blob named by the manifest is missing"));
                }
                archive.blobs.push((blob.digest.clone(), path));
            }
        }
        Manifest::Index { manifests, .. } => {
            for child in manifests {
                collect_manifest(blob_path, child, archive, depth + 1)?;
            }
        }
    }
    archive.manifests.push((actual, parsed.media_type().to_owned(), bytes));
    Ok(())
}

/// An entry of a `docker save` tarball's `manifest.json`: Docker's own format, which neither
/// the OCI image spec nor oci-spec describes.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn read_docker_archive(dir: &Path) -> Result<ImageArchive, ImageError> {
    let manifest_path = dir.join("manifest.json");
    let text = fs::read(&manifest_path).map_err(ImageError::io("read", &manifest_path))?;
    let entries: Vec<DockerArchiveEntry> = serde_json::from_slice(&text).map_err(|e| invalid(&manifest_path, e))?;
    let [entry] = entries.as_slice() else {
        return Err(invalid(&manifest_path, "expected exactly one image in the archive"));
    };
    let inside = |name: &str| -> Result<PathBuf, ImageError> {
        if Path::new(name).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(invalid(&manifest_path, format!("path {name:?} leaves the archive")));
        }
        Ok(dir.join(name))
    };
    let digest_file = |path: &Path| -> Result<(Digest, u64), ImageError> {
        let file = fs::File::open(path).map_err(ImageError::io("open", path))?;
        Digest::of_reader(std::io::BufReader::new(file)).map_err(ImageError::io("read", path))
    };
    let mut blobs = Vec::new();
    let config_path = inside(&entry.config)?;
    let (config_digest, config_size) = digest_file(&config_path)?;
    blobs.push((config_digest.clone(), config_path));
    let mut layers = Vec::new();
    for layer in &entry.layers {
        let path = inside(layer)?;
        let (digest, size) = digest_file(&path)?;
        let mut magic = [0u8; 4];
        let n = std::io::Read::read(&mut fs::File::open(&path).map_err(ImageError::io("open", &path))?, &mut magic)
            .map_err(ImageError::io("read", &path))?;
        let media_type = match &magic[..n] {
            [0x1f, 0x8b, ..] => manifest::OCI_LAYER_GZIP,
            [0x28, 0xb5, 0x2f, 0xfd] => manifest::OCI_LAYER_ZSTD,
            _ => manifest::OCI_LAYER_TAR,
        };
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
        blobs.push((digest, path));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": manifest::OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(&manifest_path, e))?;
    Ok(ImageArchive {
        blobs,
        manifests: vec![(Digest::of(&bytes), manifest::OCI_MANIFEST.to_owned(), bytes)],
        repo_tags: entry.repo_tags.clone().unwrap_or_default(),
        _unpacked: None,
    })
}
