//! The testapp image: the `wharf-testapp` binary plus the shared libraries it links, written
//! as an OCI image layout directory with three layers (libraries, app, etc files) so tests
//! exercise multi-layer images.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use wharf_image::Digest;
use wharf_image::manifest::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST};

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layout: PathBuf,
    pub tag: String,
    pub manifest_digest: Digest,
    pub layers: Vec<Digest>,
}

/// Path of the `wharf-testapp` binary, built (once per process) with the same profile as the
/// running test. Set `WHARF_TESTAPP` to use a prebuilt binary instead.
pub fn testapp_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY.get_or_init(|| build_testapp().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn build_testapp() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WHARF_TESTAPP") {
        return Ok(PathBuf::from(path));
    }
    // Test binaries live in target/<profile>/deps/, other binaries in target/<profile>/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .ancestors()
        .find(|dir| matches!(dir.file_name().and_then(|n| n.to_str()), Some("debug" | "release")))
        .context("cannot locate the target directory")?;
    let profile = profile_dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug").to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    cmd.args(["build", "--quiet", "-p", "wharf-testapp", "--bin", "wharf-testapp", "--manifest-path"]).arg(workspace);
    if profile == "release" {
        cmd.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let status = cmd.status().context("cannot run cargo to build wharf-testapp")?;
    if !status.success() {
        bail!("building wharf-testapp failed: {status}");
    }
    let binary = profile_dir.join("wharf-testapp");
    if !binary.exists() {
        bail!("built wharf-testapp, but {} does not exist", binary.display());
    }
    Ok(binary)
}

/// The image's blobs, built once per process (compressing the libraries is slow in debug
/// builds) and written out for each test.
#[derive(Debug, Clone)]
struct Built {
    blobs: Vec<(Digest, Vec<u8>)>,
    manifest_digest: Digest,
    manifest_size: usize,
    layers: Vec<Digest>,
}

fn built() -> anyhow::Result<Built> {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    BUILT.get_or_init(|| build_blobs().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

/// Writes the testapp image into `dir` (an OCI layout) and returns where it is.
pub fn testapp_image(dir: &Path, tag: &str) -> anyhow::Result<TestImage> {
    let built = built()?;
    let layout = dir.join("testapp-oci");
    let blobs = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for (digest, bytes) in &built.blobs {
        std::fs::write(blobs.join(digest.hex()), bytes)?;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": built.manifest_digest, "size": built.manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(TestImage { layout, tag: tag.to_owned(), manifest_digest: built.manifest_digest, layers: built.layers })
}

fn build_blobs() -> anyhow::Result<Built> {
    let binary = testapp_binary()?;
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    layers.push(layer(&mut blobs, |b| {
        for lib in shared_libraries(&binary)? {
            let inside = lib.strip_prefix("/").unwrap_or(&lib).to_owned();
            let real = std::fs::canonicalize(&lib)?;
            append_file(b, &inside, &std::fs::read(real)?, 0o755)?;
        }
        Ok(())
    })?);
    layers.push(layer(&mut blobs, |b| append_file(b, Path::new("app/testapp"), &std::fs::read(&binary)?, 0o755))?);
    layers.push(layer(&mut blobs, |b| {
        append_file(
            b,
            Path::new("etc/passwd"),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            0o644,
        )?;
        append_file(b, Path::new("etc/group"), b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
        append_dir(b, Path::new("tmp"), 0o1777)?;
        Ok(())
    })?);

    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/app/testapp"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "ExposedPorts": {"8080/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        // One entry per layer, as image builders write it (buildah needs it to build on top).
        "history": [
            {"created_by": "wharf-testsupport: shared libraries"},
            {"created_by": "wharf-testsupport: /app/testapp"},
            {"created_by": "wharf-testsupport: /etc files and /tmp"},
        ],
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = add_blob(&mut blobs, config_bytes.clone());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": l.size
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_size = manifest_bytes.len();
    let manifest_digest = add_blob(&mut blobs, manifest_bytes);
    Ok(Built { blobs, manifest_digest, manifest_size, layers: layers.into_iter().map(|l| l.digest).collect() })
}

struct Layer {
    digest: Digest,
    diff_id: Digest,
    size: usize,
}

/// A layer's tar being written: each path goes in once (containers/storage, under buildah and
/// podman, refuses a layer with duplicate paths).
pub(crate) struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
    written: std::collections::BTreeSet<PathBuf>,
}

impl LayerTar {
    pub(crate) fn new() -> LayerTar {
        LayerTar { builder: tar::Builder::new(Vec::new()), written: Default::default() }
    }

    /// The finished tar.
    pub(crate) fn into_tar(self) -> std::io::Result<Vec<u8>> {
        self.builder.into_inner()
    }

    /// Whether `path` is new to this layer (and marks it written).
    fn first(&mut self, path: &Path) -> bool {
        self.written.insert(path.to_owned())
    }
}

fn layer(
    blobs: &mut Vec<(Digest, Vec<u8>)>,
    fill: impl FnOnce(&mut LayerTar) -> anyhow::Result<()>,
) -> anyhow::Result<Layer> {
    let mut tar = LayerTar::new();
    fill(&mut tar)?;
    let tar_bytes = tar.into_tar()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_bytes)?;
    let gz = gz.finish()?;
    let size = gz.len();
    let digest = add_blob(blobs, gz);
    Ok(Layer { digest, diff_id: Digest::of(&tar_bytes), size })
}

fn add_blob(blobs: &mut Vec<(Digest, Vec<u8>)>, bytes: Vec<u8>) -> Digest {
    let digest = Digest::of(&bytes);
    blobs.push((digest.clone(), bytes));
    digest
}

fn append_dirs_above(b: &mut LayerTar, path: &Path) -> anyhow::Result<()> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()).collect();
    ancestors.reverse();
    for dir in ancestors {
        append_dir(b, dir, 0o755)?;
    }
    Ok(())
}

pub(crate) fn append_dir(b: &mut LayerTar, path: &Path, mode: u32) -> anyhow::Result<()> {
    if !b.first(path) {
        return Ok(());
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(mode);
    header.set_size(0);
    header.set_mtime(0);
    b.builder.append_data(&mut header, path, std::io::empty())?;
    Ok(())
}

pub(crate) fn append_file(b: &mut LayerTar, path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    append_file_with_mtime(b, path, data, mode, 0)
}

/// [`append_file`] with a modification time (seconds since the epoch).
pub(crate) fn append_file_with_mtime(
    b: &mut LayerTar,
    path: &Path,
    data: &[u8],
    mode: u32,
    mtime: u64,
) -> anyhow::Result<()> {
    append_dirs_above(b, path)?;
    if !b.first(path) {
        return Ok(());
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(mtime);
    b.builder.append_data(&mut header, path, data)?;
    Ok(())
}

/// A symbolic link at `path` to `target`.
pub(crate) fn append_symlink(b: &mut LayerTar, path: &Path, target: &str) -> anyhow::Result<()> {
    append_dirs_above(b, path)?;
    if !b.first(path) {
        return Ok(());
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_mode(0o777);
    header.set_size(0);
    header.set_mtime(0);
    b.builder.append_link(&mut header, path, target)?;
    Ok(())
}

/// The libraries `ldd` says `binary` loads, by the paths the dynamic loader will look for.
pub(crate) fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
