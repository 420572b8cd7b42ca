//! Python test images: the host's Debian `python3` (the interpreter, its standard library and
//! the shared libraries `ldd` lists for it and its extension modules), pure-Python packages
//! installed with `pip install --target` from PyPI (google-auth, requests, gunicorn, flask...),
//! and the test's own files, written as an OCI image layout with uncompressed layers (no
//! compression to wait for in debug builds).
//!
//! The interpreter layer is the same for every image; packages are installed once per set of
//! requirements into `target/wharf-python/<hash>/` and reused by later runs (delete it to
//! reinstall). The only network used is pip's, to PyPI.
//!
//! [`python_build_image`] is a base image for source builds instead: the same interpreter, plus
//! `/bin/sh` (Debian's `busybox-static`), pip (from PyPI, on `PYTHONPATH`) with `pip` and
//! `python` commands, so a Dockerfile's `RUN pip install -r requirements.txt` works in it.
//!
//! Inside the image: `/usr/bin/python3`, packages on `PYTHONPATH` at `/opt/python-packages`,
//! the app's files under `/app`, entrypoint `python3`, command `/app/main.py` (override with
//! `--command`/`--args`), `PYTHONUNBUFFERED=1` so prints reach the logs at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, bail};
use wharf_image::Digest;
use wharf_image::manifest::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST};

use crate::image::{
    LayerTar, TestImage, append_dir, append_file, append_file_with_mtime, append_symlink, shared_libraries,
};

/// Debian's interpreter (not one from pyenv or a venv earlier on PATH): the one whose
/// libraries and standard library are where `ldd` and `sysconfig` say.
const HOST_PYTHON: &str = "/usr/bin/python3";

/// Where pip puts packages inside the image.
pub const PACKAGES_DIR: &str = "/opt/python-packages";

/// Parts of the standard library no test needs (tests, IDLE, Tk, the static library and
/// build configuration): left out to keep the layer small.
const STDLIB_SKIPPED: &[&str] =
    &["test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "distutils", "venv"];

/// Writes a Python image into `dir/<tag>-oci` (an OCI layout tagged `tag`): the host's
/// python3, `pip_packages` (pip requirement specifiers) and `app_files` (path below `/app`,
/// contents).
pub fn python_image(
    dir: &Path,
    tag: &str,
    pip_packages: &[&str],
    app_files: &[(&str, &[u8])],
) -> anyhow::Result<TestImage> {
    let interpreter = interpreter_layer()?;
    let packages = packages_layer(pip_packages)?;
    let app = app_layer(app_files)?;
    let config = serde_json::json!({
        "Entrypoint": ["/usr/bin/python3"],
        "Cmd": ["/app/main.py"],
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            format!("PYTHONPATH={PACKAGES_DIR}"),
            "PYTHONUNBUFFERED=1",
            "PYTHONDONTWRITEBYTECODE=1",
            "LANG=C.UTF-8",
        ],
        "WorkingDir": "/app",
        "ExposedPorts": {"8080/tcp": {}}
    });
    let history = [
        "wharf-testsupport: the host's python3, its standard library and shared libraries".to_owned(),
        format!("wharf-testsupport: pip install --target {PACKAGES_DIR} {}", pip_packages.join(" ")),
        "wharf-testsupport: /app and /etc files".to_owned(),
    ];
    write_layout(dir, tag, &[&interpreter, &packages, &app], config, &history)
}

/// Where `busybox-static` puts its binary.
pub(crate) const BUSYBOX: &str = "/bin/busybox";

/// Writes a Python *base image for builds* into `dir/<tag>-oci`: the host's python3,
/// `/bin/sh` (busybox-static), pip on `PYTHONPATH` with `/usr/local/bin/pip` and
/// `/usr/local/bin/python`. `pip install` in it installs into `/usr/local` (Debian's scheme),
/// console scripts (gunicorn) into `/usr/local/bin`. No entrypoint; command `python3`.
pub fn python_build_image(dir: &Path, tag: &str) -> anyhow::Result<TestImage> {
    let interpreter = interpreter_layer()?;
    let pip = packages_layer(&["pip"])?;
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("cannot read {BUSYBOX} (install it: apt-get install busybox-static)"))?;
    let tools = tar_layer(|b| {
        append_file(b, Path::new("bin/busybox"), &busybox, 0o755)?;
        append_symlink(b, Path::new("bin/sh"), "busybox")?;
        append_symlink(b, Path::new("usr/local/bin/python"), "/usr/bin/python3")?;
        append_file(
            b,
            Path::new("usr/local/bin/pip"),
            b"#!/usr/bin/python3
import sys
from pip._internal.cli.main import main
sys.exit(main())
",
            0o755,
        )?;
        Ok(())
    })?;
    let config = serde_json::json!({
        "Cmd": ["python3"],
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            format!("PYTHONPATH={PACKAGES_DIR}"),
            "PYTHONUNBUFFERED=1",
            "PYTHONDONTWRITEBYTECODE=1",
            "PIP_DISABLE_PIP_VERSION_CHECK=1",
            "PIP_ROOT_USER_ACTION=ignore",
            "LANG=C.UTF-8",
        ],
        "WorkingDir": "/",
    });
    let history = [
        "wharf-testsupport: the host's python3, its standard library and shared libraries".to_owned(),
        format!("wharf-testsupport: pip install --target {PACKAGES_DIR} pip"),
        "wharf-testsupport: /bin/sh (busybox-static), pip and python commands".to_owned(),
    ];
    write_layout(dir, tag, &[&interpreter, &pip, &tools], config, &history)
}

/// Writes an OCI layout of `layers` with the image `config` (its `config` field) into
/// `dir/<tag>-oci`.
pub(crate) fn write_layout(
    dir: &Path,
    tag: &str,
    layers: &[&TarLayer],
    image_config: serde_json::Value,
    history: &[String],
) -> anyhow::Result<TestImage> {
    let layout = dir.join(format!("{tag}-oci"));
    let blob_dir = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for layer in layers.iter() {
        std::fs::write(blob_dir.join(layer.digest.hex()), &layer.tar)?;
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>()},
        "history": history.iter().map(|h| serde_json::json!({"created_by": h})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = Digest::of(&config_bytes);
    std::fs::write(blob_dir.join(config_digest.hex()), &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": OCI_LAYER_TAR, "digest": l.digest, "size": l.tar.len()
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = Digest::of(&manifest_bytes);
    std::fs::write(blob_dir.join(manifest_digest.hex()), &manifest_bytes)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(TestImage {
        layout,
        tag: tag.to_owned(),
        manifest_digest,
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
    })
}

/// An uncompressed layer: its tar and digest (also its diff id).
#[derive(Debug, Clone)]
pub(crate) struct TarLayer {
    tar: Vec<u8>,
    digest: Digest,
}

pub(crate) fn tar_layer(fill: impl FnOnce(&mut LayerTar) -> anyhow::Result<()>) -> anyhow::Result<TarLayer> {
    let mut tar = LayerTar::new();
    fill(&mut tar)?;
    let tar = tar.into_tar()?;
    Ok(TarLayer { digest: Digest::of(&tar), tar })
}

/// The interpreter layer, built once per process.
fn interpreter_layer() -> anyhow::Result<TarLayer> {
    static LAYER: OnceLock<Result<TarLayer, String>> = OnceLock::new();
    LAYER.get_or_init(|| build_interpreter_layer().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

/// The host interpreter's version directory name (`python3.11`) and its stdlib directory.
fn host_python() -> anyhow::Result<(PathBuf, PathBuf)> {
    let out = Command::new(HOST_PYTHON)
        .args(["-c", "import sys, sysconfig; print(sys.executable); print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .context("cannot run the host's python3 (install it: apt-get install python3)")?;
    if !out.status.success() {
        bail!("python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    let (Some(executable), Some(stdlib)) = (lines.next(), lines.next()) else {
        bail!("python3 did not say where it lives: {text:?}");
    };
    Ok((std::fs::canonicalize(executable)?, PathBuf::from(stdlib)))
}

fn build_interpreter_layer() -> anyhow::Result<TarLayer> {
    let (executable, stdlib) = host_python()?;
    tar_layer(|b| {
        let mut libraries = shared_libraries(&executable)?;
        append_host_file(b, &executable, Path::new("usr/bin/python3"))?;
        let mut extension_modules = Vec::new();
        let at_host_path = |path: &Path| path.strip_prefix("/").unwrap_or(path).to_owned();
        append_tree(
            b,
            &stdlib,
            &mut |path| {
                let relative = path.strip_prefix(&stdlib).unwrap_or(path);
                let first = relative.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
                // Debian's EXTERNALLY-MANAGED marker would make pip refuse to install in build images.
                let skip = STDLIB_SKIPPED.contains(&first)
                    || first.starts_with("config-")
                    || first == "site-packages"
                    || first == "EXTERNALLY-MANAGED";
                if !skip && path.extension().is_some_and(|e| e == "so") {
                    extension_modules.push(path.to_owned());
                }
                !skip
            },
            &at_host_path,
        )?;
        for module in &extension_modules {
            libraries.extend(shared_libraries(module)?);
        }
        libraries.extend(libgcc_s());
        libraries.sort();
        libraries.dedup();
        for lib in libraries {
            let inside = lib.strip_prefix("/").unwrap_or(&lib).to_owned();
            append_host_file(b, &std::fs::canonicalize(&lib)?, &inside)?;
        }
        append_etc(b)
    })
}

/// Where the dynamic loader finds `libgcc_s.so.1` on the host. No binary of the image links
/// it, but glibc loads it when a thread exits with `pthread_exit` (Python threads at
/// interpreter exit, pip's among them): without it such a process aborts ("libgcc_s.so.1 must
/// be installed for pthread_exit to work").
fn libgcc_s() -> Option<PathBuf> {
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]
        .iter()
        .map(|dir| Path::new(dir).join("libgcc_s.so.1"))
        .find(|lib| lib.is_file())
}

/// Appends the files below `dir` for which `keep` is true, at the paths `inside` gives, with
/// their modification times (so the `.pyc` files next to them stay valid).
fn append_tree(
    b: &mut LayerTar,
    dir: &Path,
    keep: &mut dyn FnMut(&Path) -> bool,
    inside: &dyn Fn(&Path) -> PathBuf,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        if !keep(&path) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            append_tree(b, &path, keep, inside)?;
        } else {
            let target = std::fs::canonicalize(&path)?;
            if target.is_file() {
                append_host_file(b, &target, &inside(&path))?;
            }
        }
    }
    Ok(())
}

/// Every regular file below `dir`.
fn files_below(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            files.extend(files_below(&entry.path())?);
        } else if file_type.is_file() {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// Appends host file `source` at `inside` with its mode and modification time.
pub(crate) fn append_host_file(b: &mut LayerTar, source: &Path, inside: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let metadata = std::fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
    let data = std::fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
    let mtime = u64::try_from(metadata.mtime()).unwrap_or(0);
    append_file_with_mtime(b, inside, &data, metadata.permissions().mode() & 0o7777, mtime)
}

pub(crate) fn append_etc(b: &mut LayerTar) -> anyhow::Result<()> {
    append_file(
        b,
        Path::new("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    )?;
    append_file(b, Path::new("etc/group"), b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    append_dir(b, Path::new("tmp"), 0o1777)?;
    append_dir(b, Path::new("root"), 0o700)
}

/// The packages layer for `requirements`, built once per process per set.
fn packages_layer(requirements: &[&str]) -> anyhow::Result<TarLayer> {
    static LAYERS: OnceLock<Mutex<HashMap<Vec<String>, TarLayer>>> = OnceLock::new();
    let mut key: Vec<String> = requirements.iter().map(|r| (*r).to_owned()).collect();
    key.sort();
    let layers = LAYERS.get_or_init(Mutex::default);
    if let Some(layer) = layers.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(layer.clone());
    }
    let installed = installed_packages(&key)?;
    let packages_dir = Path::new(PACKAGES_DIR.trim_start_matches('/'));
    let layer = tar_layer(|b| {
        let keep = &mut |path: &Path| {
            // pip's console scripts name the build machine's python; not needed.
            !(path.parent() == Some(installed.as_path()) && path.file_name().is_some_and(|n| n == "bin"))
        };
        append_tree(b, &installed, keep, &|path| packages_dir.join(path.strip_prefix(&installed).unwrap_or(path)))?;
        // Binary wheels (cryptography's Rust extension, say) load libraries of their own
        // (libgcc_s): the host's copies, where `ldd` finds them.
        let mut libraries = Vec::new();
        for module in files_below(&installed)?.into_iter().filter(|p| p.to_string_lossy().contains(".so")) {
            libraries.extend(shared_libraries(&module)?);
        }
        libraries.sort();
        libraries.dedup();
        for lib in libraries {
            append_host_file(b, &std::fs::canonicalize(&lib)?, lib.strip_prefix("/").unwrap_or(&lib))?;
        }
        Ok(())
    })?;
    layers.lock().unwrap_or_else(|p| p.into_inner()).insert(key, layer.clone());
    Ok(layer)
}

/// `pip install --target` of `requirements` into `target/wharf-python/<hash>/`, done once per
/// set of requirements and python version (a `complete` marker says the install finished).
fn installed_packages(requirements: &[String]) -> anyhow::Result<PathBuf> {
    let (executable, _) = host_python()?;
    let key = format!("{}\0{}", executable.display(), requirements.join("\0"));
    let hash = Digest::of(key.as_bytes()).hex()[..16].to_owned();
    let cache = target_dir()?.join("wharf-python").join(hash);
    let site = cache.join("site-packages");
    if cache.join("complete").exists() {
        return Ok(site);
    }
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&site)?;
    if requirements.is_empty() {
        // An app on the standard library alone: an empty packages directory.
        std::fs::write(cache.join("complete"), "")?;
        return Ok(site);
    }
    let out = Command::new(HOST_PYTHON)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
        .arg(&site)
        .args(requirements)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output()
        .context("cannot run python3 -m pip (install it: apt-get install python3-pip)")?;
    if !out.status.success() {
        bail!(
            "pip install --target {} {requirements:?} failed: {}",
            site.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(cache.join("complete"), requirements.join("\n"))?;
    Ok(site)
}

/// `target/` of the running test binary (`target/<profile>/deps/<test>`).
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .ancestors()
        .find(|dir| matches!(dir.file_name().and_then(|n| n.to_str()), Some("debug" | "release")))
        .context("cannot locate the target directory")?;
    Ok(profile_dir.parent().context("the profile directory has no parent")?.to_owned())
}

/// The app's files under `/app`, and its working directory.
fn app_layer(files: &[(&str, &[u8])]) -> anyhow::Result<TarLayer> {
    tar_layer(|b| {
        append_dir(b, Path::new("app"), 0o755)?;
        for (path, data) in files {
            let relative = Path::new(path.trim_start_matches('/'));
            if relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                bail!("app file path {path:?} must be relative, without ..");
            }
            append_file(b, &Path::new("app").join(relative), data, 0o644)?;
        }
        Ok(())
    })
}

/// Downloads the wheels of `requirements` (and their dependencies) for the host's Debian
/// python3 with the host's pip, into `target/wharf-python/wheels-<hash>/` (once; reused by
/// later runs), so a test can serve them to a build as a package index: builds never reach
/// PyPI themselves.
pub fn download_wheels(requirements: &[&str]) -> anyhow::Result<PathBuf> {
    let (executable, _) = host_python()?;
    let key = format!("{}\0wheels\0{}", executable.display(), requirements.join("\0"));
    let cache = target_dir()?.join("wharf-python").join(format!("wheels-{}", &Digest::of(key.as_bytes()).hex()[..16]));
    let wheels = cache.join("wheels");
    if cache.join("complete").exists() {
        return Ok(wheels);
    }
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&wheels)?;
    let out = Command::new(HOST_PYTHON)
        .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-input", "--only-binary=:all:"])
        .arg("--dest")
        .arg(&wheels)
        .args(requirements)
        .output()
        .context("cannot run python3 -m pip (install it: apt-get install python3-pip)")?;
    if !out.status.success() {
        bail!("pip download {requirements:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(cache.join("complete"), requirements.join("\n"))?;
    Ok(wheels)
}
