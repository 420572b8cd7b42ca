//! The content-addressed blob directory: `<root>/sha256/<hex>`. A blob enters only through
//! [`BlobStore::ingest`], which verifies its digest before an atomic rename, so a reader never
//! sees a partial or wrong blob.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::ImageError;

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens the store under `root`, creating its directories.
    pub fn open(root: &Path) -> Result<BlobStore, ImageError> {
        for dir in [root.join("sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(ImageError::io("create directory", &dir))?;
        }
        // Leftovers of writes interrupted by a crash are never referenced: drop them.
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(BlobStore { root: root.to_owned() })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// The blob's size, or `None` when it is not stored.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Moves the finished file at `staged` into the store if its content hashes to `expected`.
    /// `staged` must be on the same filesystem as the store. On a mismatch `staged` is deleted
    /// and nothing is stored.
    pub fn ingest(&self, staged: &Path, expected: &Digest) -> Result<u64, ImageError> {
        let file = File::open(staged).map_err(ImageError::io("open", staged))?;
        let (actual, size) = Digest::of_reader(std::io::BufReader::with_capacity(1 << 20, &file))
            .map_err(ImageError::io("read", staged))?;
        if &actual != expected {
            let _ = fs::remove_file(staged);
            return Err(ImageError::DigestMismatch { expected: expected.clone(), actual });
        }
        file.sync_all().map_err(ImageError::io("sync", staged))?;
        let target = self.path(expected);
        if target.exists() {
            let _ = fs::remove_file(staged);
            self.touch(expected);
        } else {
            fs::rename(staged, &target).map_err(ImageError::io("rename into blob store", &target))?;
        }
        Ok(size)
    }

    /// Stores `bytes`, which must hash to `expected`.
    pub fn put(&self, bytes: &[u8], expected: &Digest) -> Result<(), ImageError> {
        if self.size(expected).is_some() {
            return Ok(());
        }
        let staged = self.staging_path();
        let mut f = File::create(&staged).map_err(ImageError::io("create", &staged))?;
        f.write_all(bytes).map_err(ImageError::io("write", &staged))?;
        drop(f);
        self.ingest(&staged, expected).map(|_| ())
    }

    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest);
        fs::read(&path).map_err(ImageError::io("read blob", path))
    }

    /// Reads a blob the server will parse (a manifest, an image config): refused when it is
    /// larger than `limit` or not a regular file ([`crate::hostfile::read_stored`]).
    pub fn read_limited(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, ImageError> {
        Ok(crate::hostfile::read_stored(&self.path(digest), limit)?)
    }

    /// Marks `digest` as just used, so garbage collection's grace period starts again (a
    /// client that found a blob present will reference it soon). Best effort.
    pub fn touch(&self, digest: &Digest) {
        if let Ok(file) = File::options().append(true).open(self.path(digest)) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    /// The directory holding one file per blob, named by its digest's hex.
    pub fn digests_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// A fresh path in the store's staging directory (same filesystem as the blobs).
    pub fn staging_path(&self) -> PathBuf {
        self.root.join("tmp").join(uuid::Uuid::new_v4().to_string())
    }

    pub fn remove(&self, digest: &Digest) -> Result<(), ImageError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io("remove blob", path)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verifies_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let staged = store.staging_path();
        fs::write(&staged, b"hello").unwrap();
        let wrong = Digest::of(b"other");
        let err = store.ingest(&staged, &wrong).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(!staged.exists());
        assert_eq!(store.size(&wrong), None);

        let right = Digest::of(b"hello");
        store.put(b"hello", &right).unwrap();
        assert_eq!(store.read(&right).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
