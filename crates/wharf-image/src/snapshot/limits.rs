//! What unpacking an image's layers may cost, and the meter that enforces it while the tar stream is
//! read. A layer is a few bytes of gzip or zstd that may expand to anything, so every bound
//! is checked against what the tar headers *declare* before the bytes are written: nothing
//! past a limit reaches the disk, and the tar reader is never asked to hold more than
//! [`UnpackLimits::MAX_METADATA_BYTES`] of long names or pax records in memory.

use std::cell::Cell;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// Bounds on one layer's unpacking (server settings; see `docs/security.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// The sum of the sizes the entries of an image's layers declare, all layers together
    /// (files, and the data of entries that are skipped, so the decompressed stream is
    /// bounded too). Sparse files are refused, so a file's declared size is what it occupies.
    pub max_bytes: u64,
    /// Entries (files, directories, links, ...) in one layer.
    pub max_entries: u64,
    /// Bytes in an entry's path, or in a symlink's or hard link's target.
    pub max_path_bytes: usize,
    /// Components in an entry's path.
    pub max_depth: usize,
}

impl UnpackLimits {
    /// Far more than real images hold (a large `node_modules` layer has ~100,000 entries),
    /// few enough that a layer of empty files cannot exhaust the inodes of the data disk.
    pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
    /// Linux's PATH_MAX.
    pub const DEFAULT_MAX_PATH_BYTES: usize = 4096;
    pub const DEFAULT_MAX_DEPTH: usize = 256;
    /// The largest default for [`UnpackLimits::max_bytes`], whatever the free space.
    pub const DEFAULT_MAX_BYTES_CAP: u64 = 64 * GIB;
    /// Tar metadata read for one entry: a GNU long name or link name, or a pax header
    /// (which may carry xattrs). The tar reader holds each in memory.
    pub const MAX_METADATA_BYTES: u64 = 1 << 20;

    /// The defaults, with `max_bytes` as given.
    pub fn with_max_bytes(max_bytes: u64) -> UnpackLimits {
        UnpackLimits {
            max_bytes,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_path_bytes: Self::DEFAULT_MAX_PATH_BYTES,
            max_depth: Self::DEFAULT_MAX_DEPTH,
        }
    }

    /// The default for a server whose snapshots live under `dir`: an image may unpack to at
    /// most half the space free there when the server starts, and never more than 64 GiB.
    pub fn sized_for(dir: &Path) -> io::Result<UnpackLimits> {
        let stat = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
        let free = stat.blocks_available().saturating_mul(stat.fragment_size());
        Ok(Self::for_free_space(free))
    }

    /// The default when `free` bytes are free where snapshots live: half of it, at least
    /// 1 MiB and at most [`Self::DEFAULT_MAX_BYTES_CAP`].
    pub fn for_free_space(free: u64) -> UnpackLimits {
        Self::with_max_bytes((free / 2).clamp(1 << 20, Self::DEFAULT_MAX_BYTES_CAP))
    }
}

impl Default for UnpackLimits {
    fn default() -> UnpackLimits {
        Self::with_max_bytes(Self::DEFAULT_MAX_BYTES_CAP)
    }
}

/// Which limit a layer went past; the message names it and the setting that raises it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error(
        "the unpacked size limit of {limit} bytes per image, all layers together (server setting --max-image-size)"
    )]
    Bytes { limit: u64 },
    #[error("the limit of {limit} entries per layer")]
    Entries { limit: u64 },
    #[error("the path length limit of {limit} bytes")]
    PathLength { limit: usize },
    #[error("the path depth limit of {limit} components")]
    PathDepth { limit: usize },
    #[error("the limit of {limit} bytes of tar metadata (long names, pax records) per entry")]
    Metadata { limit: u64 },
}

/// How many more bytes of the decompressed tar stream may be read; shared between the
/// unpacker (which grants) and the [`MeteredReader`] the tar reader reads through.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    allowance: Cell<u64>,
    tripped: Cell<bool>,
}

impl Meter {
    /// Adds `bytes` to what may still be read.
    pub(crate) fn grant(&self, bytes: u64) {
        self.allowance.set(self.allowance.get().saturating_add(bytes));
    }

    /// Replaces what may still be read with `bytes`.
    pub(crate) fn set(&self, bytes: u64) {
        self.allowance.set(bytes);
    }

    /// Whether a read was refused for want of allowance.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.get()
    }
}

/// A reader that refuses to read past its [`Meter`]'s allowance.
#[derive(Debug)]
pub(crate) struct MeteredReader<R> {
    pub(crate) inner: R,
    pub(crate) meter: Rc<Meter>,
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let allowance = self.meter.allowance.get();
        if allowance == 0 {
            self.meter.tripped.set(true);
            return Err(io::Error::other("the layer's tar stream is longer than its entries allow"));
        }
        let want = usize::try_from(allowance).unwrap_or(usize::MAX).min(buf.len());
        let got = self.inner.read(&mut buf[..want])?;
        self.meter.allowance.set(allowance - got as u64);
        Ok(got)
    }
}
