//! The uploaded source of a build: a gzipped tarball the CLI made with
//! [`crate::ignore::pack`], unpacked into the build's work directory within limits. The
//! tarball comes from a client, so it is untrusted: entries that would land outside the
//! directory (absolute paths, `..`, through a symlink) are refused, as are device nodes and
//! FIFOs, and unpacking stops at the byte and entry limits.

use std::path::{Path, PathBuf};

/// Most entries a source tarball may hold.
const MAX_ENTRIES: u64 = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the source archive is not a gzipped tarball, or is damaged")]
    Damaged(#[source] std::io::Error),
    #[error("the source archive entry {path:?} would be written outside the source directory")]
    Escapes { path: String },
    #[error("the source archive entry {path:?} is a device or FIFO; sources hold files, directories and symlinks")]
    SpecialFile { path: String },
    #[error(
        "the source unpacks to more than {limit} bytes (or {MAX_ENTRIES} entries); leave build outputs and dependencies out with .gcloudignore"
    )]
    TooLarge { limit: u64 },
    #[error("cannot unpack the source into {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Unpacks the gzipped tarball `archive` into `dest` (created), at most `max_bytes` of file
/// content. Returns the bytes unpacked.
pub fn unpack(archive: &Path, dest: &Path, max_bytes: u64) -> Result<u64, ContextError> {
    std::fs::create_dir_all(dest).map_err(|source| ContextError::Write { path: dest.to_owned(), source })?;
    let file = std::fs::File::open(archive).map_err(ContextError::Damaged)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    tar.set_preserve_permissions(true);
    tar.set_unpack_xattrs(false);
    tar.set_preserve_mtime(true);
    let (mut bytes, mut entries) = (0u64, 0u64);
    for entry in tar.entries().map_err(ContextError::Damaged)? {
        let mut entry = entry.map_err(ContextError::Damaged)?;
        let path = entry.path().map_err(ContextError::Damaged)?.to_string_lossy().into_owned();
        entries += 1;
        bytes = bytes.saturating_add(entry.header().size().map_err(ContextError::Damaged)?);
        if bytes > max_bytes || entries > MAX_ENTRIES {
            return Err(ContextError::TooLarge { limit: max_bytes });
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(ContextError::SpecialFile { path });
        }
        if path.starts_with('/') || Path::new(&path).components().any(|c| c == std::path::Component::ParentDir) {
            return Err(ContextError::Escapes { path });
        }
        // `unpack_in` refuses a path that resolves outside `dest` (through symlinks too).
        let inside = entry.unpack_in(dest).map_err(|source| ContextError::Write { path: dest.join(&path), source })?;
        if !inside {
            return Err(ContextError::Escapes { path });
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path, build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>)) -> PathBuf {
        let path = dir.join("src.tar.gz");
        let file = std::fs::File::create(&path).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
        build(&mut builder);
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    fn file_header(size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    #[test]
    fn unpacks_files_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tarball(dir.path(), |b| {
            b.append_data(&mut file_header(5), "app/main.py", &b"print"[..]).unwrap();
        });
        let dest = dir.path().join("ctx");
        assert_eq!(unpack(&archive, &dest, 100).unwrap(), 5);
        assert_eq!(std::fs::read_to_string(dest.join("app/main.py")).unwrap(), "print");
        let e = unpack(&archive, &dir.path().join("ctx2"), 4).unwrap_err();
        assert!(matches!(e, ContextError::TooLarge { limit: 4 }), "{e}");
    }

    #[test]
    fn refuses_entries_that_escape_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let archive = tarball(dir.path(), |b| {
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            b.append_link(&mut link, "up", &outside).unwrap();
            b.append_data(&mut file_header(1), "up/pwned", &b"x"[..]).unwrap();
        });
        let e = unpack(&archive, &dir.path().join("ctx"), 100).unwrap_err();
        assert!(matches!(e, ContextError::Escapes { .. } | ContextError::Write { .. }), "{e}");
        assert!(!outside.join("pwned").exists(), "the archive wrote outside the source directory");
    }

    #[test]
    fn refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"not a tarball").unwrap();
        assert!(matches!(unpack(&path, &dir.path().join("ctx"), 100), Err(ContextError::Damaged(_))));
    }
}
