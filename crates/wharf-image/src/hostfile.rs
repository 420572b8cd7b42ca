//! Reading files that come from images, on the host, without trusting them.
//!
//! An image decides what its `/etc/passwd` is: a symlink to `/dev/zero` or to a host file, a
//! FIFO that blocks the reader forever, or a file of many gigabytes. Everything the server
//! reads out of an image (today: `/etc/passwd` and `/etc/group` for user resolution, and
//! image config and manifest blobs) goes through here:
//!
//! - paths inside an unpacked image are opened with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to the rootfs, so every symlink
//!   (absolute or `../..`) resolves as it would inside the container and can never leave the
//!   rootfs, `/proc` magic links are refused, and no other mount is entered;
//! - files are opened with `O_NONBLOCK` (a FIFO cannot block the open) and `O_NOCTTY`, then
//!   checked with `fstat` to be regular files; anything else is refused;
//! - at most a stated number of bytes is read, and a larger file is refused.
//!
//! It knows nothing of what the files mean.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// Why a file of an image was not read.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    #[error("{path} in the image is a {kind}, not a regular file; refusing to read it")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} in the image is {size} bytes, more than the {limit} bytes Wharf reads")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("cannot open {path} in the image")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path} in the image")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads `path` (as the container would see it, e.g. `/etc/passwd`) from the image rootfs
/// mounted or unpacked at `rootfs`. `Ok(None)` when it does not exist (nor a symlink's
/// target, resolved inside the rootfs). Refused: escaping the rootfs is impossible by
/// construction; non-regular files and files over `limit` bytes are errors.
pub fn read_in_root(rootfs: &Path, path: &Path, limit: u64) -> Result<Option<Vec<u8>>, HostFileError> {
    let open_err = |source| HostFileError::Open { path: path.to_owned(), source };
    let root =
        File::options().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(rootfs).map_err(open_err)?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV);
    let fd = match openat2(&root, relative, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(open_err(e.into())),
    };
    read_regular(File::from(fd), path, limit).map(Some)
}

/// Reads a file the server itself stored (a blob), refusing a symlink in its place,
/// anything but a regular file, and more than `limit` bytes.
pub fn read_stored(path: &Path, limit: u64) -> Result<Vec<u8>, HostFileError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| HostFileError::Open { path: path.to_owned(), source })?;
    read_regular(file, path, limit)
}

fn read_regular(file: File, path: &Path, limit: u64) -> Result<Vec<u8>, HostFileError> {
    let read_err = |source| HostFileError::Read { path: path.to_owned(), source };
    let meta = file.metadata().map_err(read_err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_fifo() {
            "FIFO"
        } else if kind.is_char_device() {
            "character device"
        } else if kind.is_block_device() {
            "block device"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(HostFileError::NotRegular { path: path.to_owned(), kind });
    }
    if meta.len() > limit {
        return Err(HostFileError::TooLarge { path: path.to_owned(), size: meta.len(), limit });
    }
    // The file may grow between fstat and read: read one byte past the limit to notice.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(HostFileError::TooLarge { path: path.to_owned(), size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A rootfs whose `/etc/passwd`, `/etc/group` and others are the hostile shapes an image
    /// can hold, next to a "host" directory the reads must never reach.
    fn hostile_rootfs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let outer = tempfile::tempdir().unwrap();
        let rootfs = outer.path().join("rootfs");
        let host = outer.path().join("host");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), "host:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/real"), "app:x:1000:1000::/:/bin/sh\n").unwrap();
        (outer, rootfs, host)
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        let (_outer, rootfs, host) = hostile_rootfs();
        // Absolute and relative symlinks that would reach the host's files from outside.
        symlink(host.join("secret"), rootfs.join("etc/abs")).unwrap();
        symlink("../../host/secret", rootfs.join("etc/rel")).unwrap();
        symlink("/etc/real", rootfs.join("etc/inside")).unwrap();
        symlink("/dev/zero", rootfs.join("etc/zero")).unwrap();
        symlink("/proc/self/root/etc/hostname", rootfs.join("etc/magic")).unwrap();
        for escaping in ["etc/abs", "etc/rel", "etc/zero"] {
            assert_eq!(read_in_root(&rootfs, Path::new(escaping), 1 << 20).unwrap(), None, "{escaping}");
        }
        // A symlink that stays inside is followed, as the container would.
        assert_eq!(
            read_in_root(&rootfs, Path::new("/etc/inside"), 1 << 20).unwrap().as_deref(),
            Some(&b"app:x:1000:1000::/:/bin/sh\n"[..])
        );
        // /proc is not in this rootfs; inside a real one it would be a magic link: refused.
        assert_eq!(read_in_root(&rootfs, Path::new("etc/magic"), 1 << 20).unwrap(), None);
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let (_outer, rootfs, _host) = hostile_rootfs();
        nix::unistd::mkfifo(&rootfs.join("etc/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        match read_in_root(&rootfs, Path::new("/etc/fifo"), 1 << 20) {
            Err(HostFileError::NotRegular { kind, .. }) => assert_eq!(kind, "FIFO"),
            other => panic!("expected NotRegular, got {other:?}"),
        }
        match read_in_root(&rootfs, Path::new("/etc"), 1 << 20) {
            Err(HostFileError::NotRegular { kind, .. }) => assert_eq!(kind, "directory"),
            other => panic!("expected NotRegular, got {other:?}"),
        }
        // The host's /dev/zero, read as a stored file, is refused (as is a symlink to it).
        match read_stored(Path::new("/dev/zero"), 1 << 20) {
            Err(HostFileError::NotRegular { kind, .. }) => assert_eq!(kind, "character device"),
            other => panic!("expected NotRegular, got {other:?}"),
        }
        let link = rootfs.join("zero-link");
        symlink("/dev/zero", &link).unwrap();
        assert!(matches!(read_stored(&link, 1 << 20), Err(HostFileError::Open { .. })));
    }

    /// Unmounts on drop, so a failing assertion leaves no mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    /// The runtime reads account files from the instance's merged overlay: resolution there
    /// (one mount, RESOLVE_NO_XDEV) must work as on a plain directory.
    #[test]
    fn reads_through_an_overlay_mount() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // mounting needs root
        }
        let outer = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = ["lower", "upper", "work", "merged"].iter().map(|d| outer.path().join(d)).collect();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir(dirs[0].join("etc")).unwrap();
        std::fs::write(dirs[0].join("etc/passwd"), "app:x:1:1::/:/bin/sh\n").unwrap();
        symlink("/etc/passwd", dirs[0].join("etc/link")).unwrap();
        let options =
            format!("lowerdir={},upperdir={},workdir={}", dirs[0].display(), dirs[1].display(), dirs[2].display());
        let status = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&dirs[3])
            .status()
            .unwrap();
        assert!(status.success());
        let _mounted = Mounted(dirs[3].clone());
        for path in ["/etc/passwd", "/etc/link"] {
            assert_eq!(
                read_in_root(&dirs[3], Path::new(path), 1 << 20).unwrap().as_deref(),
                Some(&b"app:x:1:1::/:/bin/sh\n"[..]),
                "{path}"
            );
        }
    }

    #[test]
    fn large_files_are_refused() {
        let (_outer, rootfs, _host) = hostile_rootfs();
        std::fs::write(rootfs.join("etc/big"), vec![b'x'; 4097]).unwrap();
        match read_in_root(&rootfs, Path::new("/etc/big"), 4096) {
            Err(HostFileError::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (4097, 4096)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(read_in_root(&rootfs, Path::new("/etc/big"), 4097).unwrap().map(|b| b.len()), Some(4097));
        assert_eq!(read_in_root(&rootfs, Path::new("/etc/missing"), 10).unwrap(), None);
    }
}
