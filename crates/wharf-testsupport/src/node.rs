//! A Node.js *base image for source builds*, made from the host's own Node.js with nothing
//! downloaded: `/usr/bin/node` and the shared libraries `ldd` lists for it, npm (the package
//! directory `/usr/bin/npm` leads to, at the same path, plus Debian's shared module
//! directories when npm is Debian's), `/bin/sh` and `/usr/bin/env` (Debian's
//! `busybox-static`), so a generated Dockerfile's `RUN npm install` and `CMD npm start` work in
//! it. Written as an OCI image layout with uncompressed layers, like [`crate::python`]'s.
//!
//! The node layer is built once per process (node is ~100 MB: reading it is the cost).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, bail};

use crate::image::{LayerTar, TestImage, append_file, append_symlink, shared_libraries};
use crate::python::{BUSYBOX, TarLayer, append_etc, append_host_file, tar_layer, write_layout};

/// The host's Node.js (Debian's `nodejs`, or NodeSource's build of it).
const HOST_NODE: &str = "/usr/bin/node";
/// The host's npm command: a symlink to `<npm package>/bin/npm-cli.js`.
const HOST_NPM: &str = "/usr/bin/npm";
/// Where Debian's `nodejs` and `node-*` packages keep modules npm (Debian's) requires.
const DEBIAN_NODE_MODULE_DIRS: &[&str] = &["/usr/share/nodejs", "/usr/lib/nodejs", "/usr/lib/x86_64-linux-gnu/nodejs"];

/// Writes a Node.js base image for builds into `dir/<tag>-oci`: the host's node and npm,
/// `/bin/sh` and `/usr/bin/env` (busybox), `/etc/passwd` with root, `/tmp`, `/root`. No
/// entrypoint; command `node`. npm's update check, audit and funding messages are off in its
/// environment (`NPM_CONFIG_*`), so an install talks to the registry for packages only.
pub fn node_build_image(dir: &Path, tag: &str) -> anyhow::Result<TestImage> {
    let node = node_layer()?;
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("cannot read {BUSYBOX} (install it: apt-get install busybox-static)"))?;
    let npm_cli = npm_cli()?;
    let tools = tar_layer(|b| {
        append_file(b, Path::new("bin/busybox"), &busybox, 0o755)?;
        append_symlink(b, Path::new("bin/sh"), "busybox")?;
        // Packages' bin scripts start `#!/usr/bin/env node`.
        append_symlink(b, Path::new("usr/bin/env"), "/bin/busybox")?;
        let npm = format!("#!/bin/sh\nexec /usr/bin/node {} \"$@\"\n", npm_cli.display());
        append_file(b, Path::new("usr/bin/npm"), npm.as_bytes(), 0o755)?;
        let npx = npm_cli.with_file_name("npx-cli.js");
        if npx.is_file() {
            let npx = format!("#!/bin/sh\nexec /usr/bin/node {} \"$@\"\n", npx.display());
            append_file(b, Path::new("usr/bin/npx"), npx.as_bytes(), 0o755)?;
        }
        Ok(())
    })?;
    let config = serde_json::json!({
        "Cmd": ["node"],
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "NPM_CONFIG_UPDATE_NOTIFIER=false",
            "NPM_CONFIG_FUND=false",
            "NPM_CONFIG_AUDIT=false",
            "LANG=C.UTF-8",
        ],
        "WorkingDir": "/",
    });
    let history = [
        "wharf-testsupport: the host's node, its shared libraries and npm".to_owned(),
        "wharf-testsupport: /bin/sh and /usr/bin/env (busybox-static), npm and npx commands".to_owned(),
    ];
    write_layout(dir, tag, &[&node, &tools], config, &history)
}

/// `npm-cli.js` of the host's npm, where it really is.
fn npm_cli() -> anyhow::Result<PathBuf> {
    let cli = std::fs::canonicalize(HOST_NPM)
        .with_context(|| format!("cannot find the host's npm at {HOST_NPM} (install it: apt-get install npm)"))?;
    if cli.file_name().is_none_or(|n| n != "npm-cli.js") {
        bail!("{HOST_NPM} leads to {}, not to npm's bin/npm-cli.js", cli.display());
    }
    Ok(cli)
}

/// The node layer, built once per process.
fn node_layer() -> anyhow::Result<TarLayer> {
    static LAYER: OnceLock<Result<TarLayer, String>> = OnceLock::new();
    LAYER.get_or_init(|| build_node_layer().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn build_node_layer() -> anyhow::Result<TarLayer> {
    let node = std::fs::canonicalize(HOST_NODE)
        .with_context(|| format!("cannot find the host's node at {HOST_NODE} (install it: apt-get install nodejs)"))?;
    let npm_cli = npm_cli()?;
    // <package>/bin/npm-cli.js
    let npm_package = npm_cli.parent().and_then(Path::parent).context("npm-cli.js has no package directory")?;
    let mut trees = vec![npm_package.to_owned()];
    if npm_package.starts_with("/usr/share/nodejs") {
        // Debian's npm requires its dependencies from Debian's module directories.
        trees.extend(DEBIAN_NODE_MODULE_DIRS.iter().map(PathBuf::from).filter(|d| d.is_dir()));
    }
    tar_layer(|b| {
        append_host_file(b, &node, Path::new("usr/bin/node"))?;
        for lib in shared_libraries(&node)? {
            let inside = lib.strip_prefix("/").unwrap_or(&lib).to_owned();
            append_host_file(b, &std::fs::canonicalize(&lib)?, &inside)?;
        }
        for tree in &trees {
            append_tree_as_is(b, tree)?;
        }
        append_etc(b)
    })
}

/// Appends every file and symbolic link below `dir` at its own path (symbolic links stay links,
/// so a tree that links into itself, as Debian's module directories do, stays one tree).
fn append_tree_as_is(b: &mut LayerTar, dir: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let inside = path.strip_prefix("/").unwrap_or(&path);
        let file_type = entry.file_type()?;
        if file_type.is_symlink() {
            let target = std::fs::read_link(&path)?;
            append_symlink(b, inside, &target.to_string_lossy())?;
        } else if file_type.is_dir() {
            append_tree_as_is(b, &path)?;
        } else if file_type.is_file() {
            append_host_file(b, &path, inside)?;
        }
    }
    Ok(())
}
