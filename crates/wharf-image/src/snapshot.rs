//! Layer snapshots: each layer blob unpacked once into `<root>/sha256/<hex>`, shared read-only
//! by every instance whose rootfs stacks it (the runtime mounts snapshots as overlay lower
//! directories). Whiteouts are stored in overlayfs's own format: `.wh.NAME` becomes a 0/0
//! character device and `.wh..wh..opq` the `trusted.overlay.opaque` xattr on its directory.
//!
//! Layers come from users and remote registries, so extraction trusts nothing in them: entries
//! with `..` are refused, absolute paths are taken relative to the snapshot, an entry whose
//! parent path passes through a symlink is refused (that is how a tar escapes its directory),
//! hard links may only name entries inside the snapshot, device nodes are skipped (an
//! instance's `/dev` comes from the runtime), and `trusted.*` xattrs, which would steer
//! overlayfs, are dropped. Whiteouts must name a plain entry (`.wh..` and `.wh...` would
//! remove the directory itself or its parent). Sparse entries (GNU and pax) are refused, and
//! the [`UnpackLimits`] (size, entries, path length and depth, tar metadata) are checked
//! against what each header declares before anything is written, so a decompression bomb is
//! refused without filling the disk ([`limits`]). A snapshot is unpacked into a staging
//! directory and renamed into place only when complete, so a failed unpack leaves nothing
//! behind.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};

use crate::blobs::BlobStore;
use crate::digest::Digest;
use crate::error::ImageError;

pub mod limits;

pub use limits::{LimitExceeded, UnpackLimits};
use limits::{Meter, MeteredReader};

const WHITEOUT_PREFIX: &str = ".wh.";
/// Where a snapshot directory records its unpacked size (trusted.*: instances cannot read it).
const SIZE_XATTR: &str = "trusted.wharf.unpacked_bytes";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
    blobs: BlobStore,
    limits: UnpackLimits,
    /// One lock per layer being unpacked, so concurrent starts unpack a layer once.
    in_progress: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
}

impl SnapshotStore {
    pub fn open(root: &Path, blobs: BlobStore) -> Result<SnapshotStore, ImageError> {
        for dir in [root.join("sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(ImageError::io("create directory", &dir))?;
        }
        // Half-unpacked layers from an interrupted run are never referenced: drop them.
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for entry in entries.flatten() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(SnapshotStore {
            root: root.to_owned(),
            blobs,
            limits: UnpackLimits::default(),
            in_progress: Mutex::default(),
        })
    }

    /// Unpacks layers within `limits` from now on (the default is [`UnpackLimits::default`]).
    pub fn with_limits(mut self, limits: UnpackLimits) -> SnapshotStore {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &UnpackLimits {
        &self.limits
    }

    /// The directory holding one snapshot per layer digest (for garbage collection).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    pub fn path(&self, layer: &Digest) -> PathBuf {
        self.root.join("sha256").join(layer.hex())
    }

    /// Returns the snapshot directory of `layer`, unpacking the blob first if needed.
    /// Blocking: call from a blocking thread.
    pub fn ensure(&self, layer: &Digest) -> Result<PathBuf, ImageError> {
        self.ensure_within(layer, self.limits.max_bytes).map(|(path, _)| path)
    }

    /// Returns the snapshot directories of an image's `layers` (bottom first), unpacking
    /// those not unpacked yet, within [`UnpackLimits::max_bytes`] for all of them together:
    /// each layer is unpacked within what the layers before it left, so nothing past the
    /// limit is written. Blocking: call from a blocking thread.
    pub fn ensure_image(&self, layers: &[Digest]) -> Result<Vec<PathBuf>, ImageError> {
        let limit = self.limits.max_bytes;
        let mut used = 0u64;
        let mut paths = Vec::with_capacity(layers.len());
        for layer in layers {
            let (path, size) = self.ensure_within(layer, limit.saturating_sub(used)).map_err(|e| match e {
                // Report the image's limit, not what was left of it.
                ImageError::LayerLimit { layer, entry, limit: LimitExceeded::Bytes { .. } } => {
                    ImageError::LayerLimit { layer, entry, limit: LimitExceeded::Bytes { limit } }
                }
                other => other,
            })?;
            used = used.saturating_add(size);
            if used > limit {
                // A layer unpacked earlier, for another image, that does not fit beside these.
                return Err(ImageError::LayerLimit {
                    layer: layer.clone(),
                    entry: String::new(),
                    limit: LimitExceeded::Bytes { limit },
                });
            }
            paths.push(path);
        }
        Ok(paths)
    }

    /// The bytes the snapshot of `layer` holds (as its entries declared), recorded when it
    /// was unpacked; 0 when not recorded (unpacked by an older version, or not as root).
    pub fn unpacked_size(&self, layer: &Digest) -> u64 {
        recorded_size(&self.path(layer))
    }

    /// Ensures `layer` within `budget` bytes; returns its directory and unpacked size.
    fn ensure_within(&self, layer: &Digest, budget: u64) -> Result<(PathBuf, u64), ImageError> {
        let target = self.path(layer);
        if target.is_dir() {
            return Ok((target.clone(), recorded_size(&target)));
        }
        let lock = {
            let mut map = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(layer.clone()).or_default().clone()
        };
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if target.is_dir() {
            return Ok((target.clone(), recorded_size(&target)));
        }
        let limits = UnpackLimits { max_bytes: budget.min(self.limits.max_bytes), ..self.limits };
        let staging = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        fs::create_dir(&staging).map_err(ImageError::io("create directory", &staging))?;
        let result = self
            .open_layer(layer)
            .and_then(|reader| unpack_counted(reader, &staging, layer, &limits))
            .and_then(|size| {
                // trusted.* needs root (the server is); without it the size is not recorded.
                let _ = xattr::set(&staging, SIZE_XATTR, size.to_string().as_bytes());
                fs::rename(&staging, &target).map_err(ImageError::io("rename snapshot", &target))?;
                Ok(size)
            });
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        self.in_progress.lock().unwrap_or_else(|p| p.into_inner()).remove(layer);
        result.map(|size| (target, size))
    }

    fn open_layer(&self, layer: &Digest) -> Result<Box<dyn Read>, ImageError> {
        let path = self.blobs.path(layer);
        let file = File::open(&path).map_err(ImageError::io("open layer", &path))?;
        decompress(BufReader::with_capacity(1 << 20, file)).map_err(ImageError::io("read layer", &path))
    }

    /// Deletes the snapshot of `layer`, if any.
    pub fn remove(&self, layer: &Digest) -> Result<(), ImageError> {
        let path = self.path(layer);
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::io("remove snapshot", path)(e)),
            _ => Ok(()),
        }
    }
}

/// Wraps `reader` in the decompressor its magic bytes call for: gzip, zstd, or none.
pub fn decompress<R: io::BufRead + 'static>(mut reader: R) -> io::Result<Box<dyn Read>> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

fn recorded_size(snapshot: &Path) -> u64 {
    xattr::get(snapshot, SIZE_XATTR).ok().flatten().and_then(|v| String::from_utf8(v).ok()?.parse().ok()).unwrap_or(0)
}

/// Unpacks the tar stream `reader` into the empty directory `root`, within `limits`.
/// On an error, what was written so far stays in `root` for the caller to remove.
pub fn unpack_layer(reader: impl Read, root: &Path, layer: &Digest, limits: &UnpackLimits) -> Result<(), ImageError> {
    unpack_counted(reader, root, layer, limits).map(|_| ())
}

/// [`unpack_layer`], returning the bytes the entries declared (what the layer occupies).
fn unpack_counted(reader: impl Read, root: &Path, layer: &Digest, limits: &UnpackLimits) -> Result<u64, ImageError> {
    let meter = Rc::new(Meter::default());
    let mut archive = tar::Archive::new(MeteredReader { inner: reader, meter: meter.clone() });
    let is_root = Uid::effective().is_root();
    // Directory times are set last: creating entries inside a directory changes its mtime.
    let mut dir_times = Vec::new();
    let (mut entry_count, mut declared_bytes) = (0u64, 0u64);
    let too_much = |entry: &str, limit| ImageError::LayerLimit { layer: layer.clone(), entry: entry.to_owned(), limit };
    let read_failed = |source| {
        if meter.tripped() {
            too_much("", LimitExceeded::Metadata { limit: UnpackLimits::MAX_METADATA_BYTES })
        } else {
            ImageError::Unpack { layer: layer.clone(), entry: String::new(), source }
        }
    };
    let mut entries = archive.entries().map_err(read_failed)?;
    loop {
        // What is left unread of the previous entry (the tar reader skips it), plus the next
        // header and its long names or pax records.
        meter.grant(UnpackLimits::MAX_METADATA_BYTES);
        let Some(entry) = entries.next() else { break };
        let mut entry = entry.map_err(read_failed)?;
        let raw = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        let name = raw.to_string_lossy().into_owned();
        entry_count += 1;
        if entry_count > limits.max_entries {
            return Err(too_much(&name, LimitExceeded::Entries { limit: limits.max_entries }));
        }
        declared_bytes = declared_bytes.saturating_add(entry.size());
        if declared_bytes > limits.max_bytes {
            return Err(too_much(&name, LimitExceeded::Bytes { limit: limits.max_bytes }));
        }
        // The entry's data and the padding up to the next 512-byte block.
        meter.set(entry.size().div_ceil(512).saturating_mul(512));
        let unsafe_entry = |reason| ImageError::UnsafeLayer { layer: layer.clone(), entry: name.clone(), reason };
        let io_err = |source| ImageError::Unpack { layer: layer.clone(), entry: name.clone(), source };

        if raw.as_os_str().len() > limits.max_path_bytes {
            return Err(too_much(&name, LimitExceeded::PathLength { limit: limits.max_path_bytes }));
        }
        if raw.components().count() > limits.max_depth {
            return Err(too_much(&name, LimitExceeded::PathDepth { limit: limits.max_depth }));
        }
        if let Ok(Some(link)) = entry.link_name()
            && link.as_os_str().len() > limits.max_path_bytes
        {
            return Err(too_much(&name, LimitExceeded::PathLength { limit: limits.max_path_bytes }));
        }
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::GNUSparse {
            return Err(unsafe_entry("GNU sparse files are not supported; rebuild the layer without --sparse"));
        }
        if let Some(extensions) = entry.pax_extensions().map_err(io_err)? {
            for ext in extensions {
                if ext.map_err(io_err)?.key_bytes().starts_with(b"GNU.sparse.") {
                    return Err(unsafe_entry("pax sparse files are not supported; rebuild the layer without --sparse"));
                }
            }
        }

        let rel = relative_entry_path(&raw).map_err(unsafe_entry)?;
        let Some(file_name) = rel.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue; // the layer's root directory itself
        };
        let parent = ensure_parent(root, &rel).map_err(|e| match e {
            ParentError::Unsafe(reason) => unsafe_entry(reason),
            ParentError::Io(source) => io_err(source),
        })?;

        if file_name == OPAQUE_MARKER {
            xattr::set(&parent, "trusted.overlay.opaque", b"y").map_err(io_err)?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(unsafe_entry("whiteout does not name an entry (.wh., .wh.. and .wh... are refused)"));
            }
            let target = parent.join(hidden);
            remove_existing(&target).map_err(io_err)?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| io_err(e.into()))?;
            continue;
        }

        let target = root.join(&rel);
        let header = entry.header().clone();
        let mode = header.mode().map_err(io_err)? & 0o7777;
        match kind {
            tar::EntryType::Directory => match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    remove_existing(&target).map_err(io_err)?;
                    fs::create_dir(&target).map_err(io_err)?;
                }
                Err(_) => fs::create_dir(&target).map_err(io_err)?,
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&target).map_err(io_err)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_err)?;
                // Exactly the declared size, already counted against the limit.
                io::copy(&mut entry, &mut file).map_err(io_err)?;
            }
            tar::EntryType::Symlink => {
                let link =
                    header.link_name().map_err(io_err)?.ok_or_else(|| unsafe_entry("symlink without a target"))?;
                remove_existing(&target).map_err(io_err)?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_err)?;
            }
            tar::EntryType::Link => {
                let link =
                    header.link_name().map_err(io_err)?.ok_or_else(|| unsafe_entry("hard link without a target"))?;
                let link_rel = relative_entry_path(&link).map_err(unsafe_entry)?;
                let source = ensure_parent(root, &link_rel)
                    .map_err(|_| unsafe_entry("hard link target passes through a symlink"))?
                    .join(link_rel.file_name().ok_or_else(|| unsafe_entry("hard link to the root"))?);
                if !fs::symlink_metadata(&source).is_ok_and(|m| !m.is_dir()) {
                    return Err(unsafe_entry("hard link target is not an earlier file of this layer"));
                }
                remove_existing(&target).map_err(io_err)?;
                fs::hard_link(&source, &target).map_err(io_err)?;
                continue; // a hard link shares its target's metadata
            }
            tar::EntryType::Fifo => {
                remove_existing(&target).map_err(io_err)?;
                mkfifo(&target, Mode::from_bits_truncate(0o600)).map_err(|e| io_err(e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                tracing::debug!(%layer, entry = %name, "skipping device node in layer");
                continue;
            }
            _ => continue, // pax/GNU metadata entries are consumed by the tar reader
        }

        let is_symlink = kind == tar::EntryType::Symlink;
        if is_root {
            let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok()).unwrap_or(0);
            let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok()).unwrap_or(0);
            fchownat(
                nix::fcntl::AT_FDCWD,
                &target,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(e.into()))?;
        }
        if !is_symlink {
            // After chown, which clears setuid/setgid bits.
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(io_err)?;
        }
        if let Some(extensions) = entry.pax_extensions().map_err(io_err)? {
            for ext in extensions {
                let ext = ext.map_err(io_err)?;
                let Some(attr) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) else { continue };
                if attr.starts_with("trusted.") {
                    tracing::warn!(%layer, entry = %name, attr, "dropping trusted.* xattr from layer");
                    continue;
                }
                if !is_symlink || attr.starts_with("user.") {
                    xattr::set(&target, attr, ext.value_bytes()).map_err(io_err)?;
                }
            }
        }
        let mtime = header.mtime().unwrap_or(0);
        if kind == tar::EntryType::Directory {
            dir_times.push((target, mtime));
        } else {
            set_mtime(&target, mtime).map_err(io_err)?;
        }
    }
    for (dir, mtime) in dir_times.iter().rev() {
        let _ = set_mtime(dir, *mtime);
    }
    Ok(declared_bytes)
}

/// The entry's path relative to the snapshot root. `..` is refused; a leading `/` or `./`
/// is dropped, as GNU tar does.
fn relative_entry_path(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'"),
            Component::Prefix(_) => return Err("path has a prefix"),
        }
    }
    Ok(rel)
}

enum ParentError {
    Unsafe(&'static str),
    Io(io::Error),
}

/// Creates the missing directories above `rel` and returns the absolute parent path, refusing
/// to pass through a symlink or a non-directory.
fn ensure_parent(root: &Path, rel: &Path) -> Result<PathBuf, ParentError> {
    let mut current = root.to_path_buf();
    let Some(parent) = rel.parent() else { return Ok(current) };
    for component in parent.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ParentError::Unsafe("path passes through a symlink"));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ParentError::Unsafe("a parent of the path is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(ParentError::Io)?;
            }
            Err(e) => return Err(ParentError::Io(e)),
        }
    }
    Ok(current)
}

/// Removes whatever is at `path` (without following a symlink there).
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let ts = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    utimensat(nix::fcntl::AT_FDCWD, path, &ts, &ts, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

#[cfg(test)]
mod tests;
