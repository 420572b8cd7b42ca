//! The image content store: which repository holds which blobs and manifests, where tags
//! point, and blob uploads in progress. Bytes live in the [`BlobStore`]; everything else is a
//! row in the state database, changed in one transaction per operation so an interrupted push
//! leaves the store as it was.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use wharf_store::Store;
use wharf_store::rusqlite::{OptionalExtension, params};

use crate::blobs::BlobStore;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{Manifest, ManifestError};
use crate::reference::{validate_repository, validate_tag};

/// A manifest as stored: its bytes exactly as pushed, and how to serve them.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// One row of `wharf images list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    /// The manifest plus the config and layers it names (for an index: its own size only).
    pub size: u64,
    pub updated_at: i64,
}

/// Whether a manifest reference names a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRef {
    Tag(String),
    Digest(Digest),
}

impl ManifestRef {
    pub fn parse(reference: &str) -> Result<ManifestRef, ImageError> {
        if reference.contains(':') {
            reference
                .parse()
                .map(ManifestRef::Digest)
                .map_err(|e: crate::digest::DigestParseError| ImageError::DigestInvalid(e.to_string()))
        } else {
            validate_tag(reference).map_err(ImageError::TagInvalid)?;
            Ok(ManifestRef::Tag(reference.to_owned()))
        }
    }
}

/// What the store accepts from pushers (server settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// The largest blob an upload may grow to.
    pub max_blob_bytes: u64,
    /// Upload sessions open at once; more are refused until some finish or expire.
    pub max_uploads: u64,
    /// An upload session that received nothing for this long is deleted
    /// ([`ImageStore::expire_uploads`]).
    pub upload_expiry: Duration,
}

impl Default for StoreLimits {
    /// 10 GiB blobs (Docker Hub's layer limit), 1,000 open uploads, expiry after an idle hour.
    fn default() -> StoreLimits {
        StoreLimits { max_blob_bytes: 10 << 30, max_uploads: 1000, upload_expiry: Duration::from_secs(3600) }
    }
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    db: Store,
    blobs: BlobStore,
    uploads: PathBuf,
    limits: StoreLimits,
    /// Held shared while a manifest's children are checked and the manifest recorded, and
    /// exclusively by garbage collection, so a collection never removes a blob between the
    /// check and the write of a manifest that names it.
    pub(crate) gc_lock: Arc<RwLock<()>>,
    /// Notified when a manifest, tag or blob link is deleted, so a collector can run.
    deletions: Arc<tokio::sync::Notify>,
}

impl ImageStore {
    /// Opens the store under `data_dir` (`blobs/`, `uploads/`) with metadata in `db`.
    pub fn open(data_dir: &Path, db: Store) -> Result<ImageStore, ImageError> {
        let blobs = BlobStore::open(&data_dir.join("blobs"))?;
        let uploads = data_dir.join("uploads");
        fs::create_dir_all(&uploads).map_err(ImageError::io("create directory", &uploads))?;
        Ok(ImageStore {
            db,
            blobs,
            uploads,
            limits: StoreLimits::default(),
            gc_lock: Arc::default(),
            deletions: Arc::default(),
        })
    }

    /// Enforces `limits` from now on (the default is [`StoreLimits::default`]).
    pub fn with_limits(mut self, limits: StoreLimits) -> ImageStore {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Notified after every deletion of a manifest, tag or blob link.
    pub fn deletions(&self) -> Arc<tokio::sync::Notify> {
        self.deletions.clone()
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    pub fn db(&self) -> &Store {
        &self.db
    }

    // ---- repositories -------------------------------------------------------------------

    pub fn repository_exists(&self, repo: &str) -> Result<bool, ImageError> {
        Ok(self.db.read(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM manifests WHERE repo = ?1)
                     OR EXISTS(SELECT 1 FROM repo_blobs WHERE repo = ?1)",
                [repo],
                |r| r.get(0),
            )
        })?)
    }

    /// Repository names in lexical order, at most `n`, after `last` (the spec's pagination).
    pub fn catalog(&self, n: usize, last: Option<&str>) -> Result<Vec<String>, ImageError> {
        Ok(self.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT repo FROM (SELECT repo FROM manifests UNION SELECT repo FROM repo_blobs)
                 WHERE repo > ?1 ORDER BY repo LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![last.unwrap_or(""), limit(n)], |r| r.get(0))?;
            rows.collect()
        })?)
    }

    /// Tags of `repo` in lexical order, paginated like [`ImageStore::catalog`].
    pub fn tags(&self, repo: &str, n: usize, last: Option<&str>) -> Result<Vec<String>, ImageError> {
        if !self.repository_exists(repo)? {
            return Err(ImageError::NameUnknown(repo.to_owned()));
        }
        Ok(self.db.read(|c| {
            let mut stmt = c.prepare("SELECT tag FROM tags WHERE repo = ?1 AND tag > ?2 ORDER BY tag LIMIT ?3")?;
            let rows = stmt.query_map(params![repo, last.unwrap_or(""), limit(n)], |r| r.get(0))?;
            rows.collect()
        })?)
    }

    // ---- blobs --------------------------------------------------------------------------

    /// The size of `digest` if `repo` holds it.
    pub fn blob_in_repo(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, ImageError> {
        let linked: bool = self.db.read(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM repo_blobs WHERE repo = ?1 AND digest = ?2)
                     OR EXISTS(SELECT 1 FROM manifests WHERE repo = ?1 AND digest = ?2)",
                params![repo, digest.as_str()],
                |r| r.get(0),
            )
        })?;
        Ok(if linked { self.blobs.size(digest) } else { None })
    }

    /// Records that `repo` holds `digest`, which must already be in the blob store.
    pub fn link_blob(&self, repo: &str, digest: &Digest) -> Result<(), ImageError> {
        validate_repository(repo).map_err(ImageError::NameInvalid)?;
        self.db.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO repo_blobs (repo, digest) VALUES (?1, ?2)",
                params![repo, digest.as_str()],
            )
            .map_err(ImageError::from)
        })?;
        Ok(())
    }

    /// Cross-repository mount: links `digest` into `to` if `from` holds it. Returns whether it did.
    pub fn mount_blob(&self, from: &str, to: &str, digest: &Digest) -> Result<bool, ImageError> {
        if self.blob_in_repo(from, digest)?.is_none() {
            return Ok(false);
        }
        self.link_blob(to, digest)?;
        Ok(true)
    }

    /// Removes `digest` from `repo`. The bytes stay until no repository references them.
    pub fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<(), ImageError> {
        let removed = self.db.write(|tx| {
            tx.execute("DELETE FROM repo_blobs WHERE repo = ?1 AND digest = ?2", params![repo, digest.as_str()])
                .map_err(ImageError::from)
        })?;
        if removed == 0 {
            return Err(ImageError::BlobUnknown { repo: repo.to_owned(), digest: digest.clone() });
        }
        self.deletions.notify_one();
        Ok(())
    }

    // ---- uploads ------------------------------------------------------------------------

    /// Starts an upload session into `repo` and returns its id.
    pub fn start_upload(&self, repo: &str) -> Result<String, ImageError> {
        validate_repository(repo).map_err(ImageError::NameInvalid)?;
        let open: i64 = self.db.read(|c| c.query_row("SELECT COUNT(*) FROM uploads", [], |r| r.get(0)))?;
        if u64::try_from(open).unwrap_or(0) >= self.limits.max_uploads {
            return Err(ImageError::TooManyUploads { limit: self.limits.max_uploads });
        }
        let id = uuid::Uuid::new_v4().to_string();
        let path = self.upload_path(&id);
        File::create(&path).map_err(ImageError::io("create upload", &path))?;
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO uploads (id, repo, started_at) VALUES (?1, ?2, ?3)",
                params![id, repo, wharf_store::unix_now()],
            )
            .map_err(ImageError::from)
        })?;
        Ok(id)
    }

    /// How many bytes upload `id` of `repo` has received.
    pub fn upload_offset(&self, repo: &str, id: &str) -> Result<u64, ImageError> {
        self.check_upload(repo, id)?;
        let path = self.upload_path(id);
        fs::metadata(&path).map(|m| m.len()).map_err(ImageError::io("stat upload", path))
    }

    /// Opens upload `id` for appending a chunk that starts at `start` (the current offset when
    /// `None`). A chunk that does not start at the current offset is refused.
    pub fn open_upload_for_append(&self, repo: &str, id: &str, start: Option<u64>) -> Result<(File, u64), ImageError> {
        let offset = self.upload_offset(repo, id)?;
        if let Some(start) = start
            && start != offset
        {
            return Err(ImageError::UploadOutOfOrder { expected: offset, got: start });
        }
        let path = self.upload_path(id);
        let file = OpenOptions::new().append(true).open(&path).map_err(ImageError::io("open upload", &path))?;
        Ok((file, offset))
    }

    /// Completes upload `id`: verifies that its content hashes to `digest`, stores the blob and
    /// links it into `repo`. The session ends either way; on a mismatch nothing is stored.
    pub fn finish_upload(&self, repo: &str, id: &str, digest: &Digest) -> Result<u64, ImageError> {
        self.check_upload(repo, id)?;
        let path = self.upload_path(id);
        let result = self.blobs.ingest(&path, digest);
        self.forget_upload(id)?;
        let size = result?;
        self.link_blob(repo, digest)?;
        Ok(size)
    }

    /// Abandons upload `id`, deleting what it received.
    pub fn cancel_upload(&self, repo: &str, id: &str) -> Result<(), ImageError> {
        self.check_upload(repo, id)?;
        self.forget_upload(id)
    }

    /// Deletes upload sessions that received nothing for [`StoreLimits::upload_expiry`] (by
    /// their file's mtime, which every chunk moves), and upload files no session owns (left
    /// by a crash). Returns how many sessions it ended.
    pub fn expire_uploads(&self) -> Result<u64, ImageError> {
        let cutoff = SystemTime::now().checked_sub(self.limits.upload_expiry).unwrap_or(SystemTime::UNIX_EPOCH);
        let rows: Vec<(String, i64)> = self.db.read(|c| {
            let mut stmt = c.prepare("SELECT id, started_at FROM uploads")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut expired = 0;
        for (id, started_at) in &rows {
            let started = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(*started_at).unwrap_or(0));
            let touched = fs::metadata(self.upload_path(id)).and_then(|m| m.modified()).unwrap_or(started);
            if started.max(touched) < cutoff {
                tracing::info!(upload = %id, "expiring abandoned upload session");
                self.forget_upload(id)?;
                expired += 1;
            }
        }
        let known: std::collections::HashSet<PathBuf> = rows.iter().map(|(id, _)| self.upload_path(id)).collect();
        for entry in fs::read_dir(&self.uploads).map_err(ImageError::io("list", &self.uploads))?.flatten() {
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
            if old && !known.contains(&entry.path()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(expired)
    }

    fn forget_upload(&self, id: &str) -> Result<(), ImageError> {
        let _ = fs::remove_file(self.upload_path(id));
        self.db.write(|tx| tx.execute("DELETE FROM uploads WHERE id = ?1", [id]).map_err(ImageError::from))?;
        Ok(())
    }

    fn check_upload(&self, repo: &str, id: &str) -> Result<(), ImageError> {
        let found: Option<String> =
            self.db.read(|c| c.query_row("SELECT repo FROM uploads WHERE id = ?1", [id], |r| r.get(0)).optional())?;
        match found {
            Some(r) if r == repo => Ok(()),
            _ => Err(ImageError::UploadUnknown(id.to_owned())),
        }
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        // Ids are uuids we minted; anything else would have failed check_upload first, but
        // keep the path inside the uploads directory regardless.
        let safe: String = id.chars().filter(|c| c.is_ascii_hexdigit() || *c == '-').collect();
        self.uploads.join(safe)
    }

    // ---- manifests ----------------------------------------------------------------------

    /// Validates and stores a manifest under `reference` (a tag, or the manifest's own digest).
    /// Every blob or child manifest it references must already be in `repo`.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<Digest, ImageError> {
        self.store_manifest(repo, reference, content_type, bytes, true)
    }

    /// Stores an index pulled from a remote registry, of which only the linux/amd64 image was
    /// fetched: its other children are allowed to be absent.
    pub(crate) fn put_pulled_index(&self, repo: &str, reference: &str, bytes: &[u8]) -> Result<Digest, ImageError> {
        self.store_manifest(repo, reference, None, bytes, false)
    }

    fn store_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: Option<&str>,
        bytes: &[u8],
        require_all_children: bool,
    ) -> Result<Digest, ImageError> {
        validate_repository(repo).map_err(ImageError::NameInvalid)?;
        let reference = ManifestRef::parse(reference)?;
        let digest = Digest::of(bytes);
        if let ManifestRef::Digest(expected) = &reference
            && expected != &digest
        {
            return Err(ImageError::DigestMismatch { expected: expected.clone(), actual: digest });
        }
        let manifest = Manifest::parse(content_type, bytes)?;
        let children: Vec<&Digest> = match &manifest {
            Manifest::Image { config, layers, .. } => {
                std::iter::once(config).chain(layers).map(|d| &d.digest).collect()
            }
            Manifest::Index { manifests, .. } => manifests.iter().map(|d| &d.digest).collect(),
        };
        let check_children = require_all_children || matches!(manifest, Manifest::Image { .. });
        let _no_collection = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        for child in children.iter().filter(|_| check_children) {
            if self.blob_in_repo(repo, child)?.is_none() {
                return Err(ImageError::ManifestBlobUnknown { repo: repo.to_owned(), digest: (*child).clone() });
            }
        }
        self.blobs.put(bytes, &digest)?;
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let now = wharf_store::unix_now();
        self.db.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO manifests (repo, digest, media_type, size, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![repo, digest.as_str(), manifest.media_type(), size, now],
            )?;
            for child in &children {
                tx.execute(
                    "INSERT OR IGNORE INTO manifest_refs (parent, child) VALUES (?1, ?2)",
                    params![digest.as_str(), child.as_str()],
                )?;
            }
            if let ManifestRef::Tag(tag) = &reference {
                tx.execute(
                    "INSERT INTO tags (repo, tag, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
                    params![repo, tag, digest.as_str(), now],
                )?;
            }
            Ok::<_, ImageError>(())
        })?;
        Ok(digest)
    }

    /// The digest, media type and size of the manifest `reference` names in `repo`.
    pub fn manifest_info(&self, repo: &str, reference: &str) -> Result<(Digest, String, u64), ImageError> {
        let unknown = || ImageError::ManifestUnknown { repo: repo.to_owned(), reference: reference.to_owned() };
        let row: Option<(String, String, i64)> = match ManifestRef::parse(reference)? {
            ManifestRef::Tag(tag) => self.db.read(|c| {
                c.query_row(
                    "SELECT m.digest, m.media_type, m.size FROM tags t
                     JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest
                     WHERE t.repo = ?1 AND t.tag = ?2",
                    params![repo, tag],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })?,
            ManifestRef::Digest(d) => self.db.read(|c| {
                c.query_row(
                    "SELECT digest, media_type, size FROM manifests WHERE repo = ?1 AND digest = ?2",
                    params![repo, d.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })?,
        };
        if row.is_none() && !self.repository_exists(repo)? {
            return Err(ImageError::NameUnknown(repo.to_owned()));
        }
        let (digest, media_type, size) = row.ok_or_else(unknown)?;
        let digest = digest.parse().map_err(|_| unknown())?;
        Ok((digest, media_type, u64::try_from(size).unwrap_or(0)))
    }

    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<StoredManifest, ImageError> {
        let (digest, media_type, _) = self.manifest_info(repo, reference)?;
        let bytes = self.blobs.read_limited(&digest, crate::manifest::MAX_MANIFEST_BYTES)?;
        Ok(StoredManifest { digest, media_type, bytes })
    }

    /// Deletes a tag (when `reference` is a tag) or a manifest and every tag pointing at it
    /// (when it is a digest).
    pub fn delete_manifest(&self, repo: &str, reference: &str) -> Result<(), ImageError> {
        let unknown = || ImageError::ManifestUnknown { repo: repo.to_owned(), reference: reference.to_owned() };
        let removed = match ManifestRef::parse(reference)? {
            ManifestRef::Tag(tag) => self.db.write(|tx| {
                tx.execute("DELETE FROM tags WHERE repo = ?1 AND tag = ?2", params![repo, tag])
                    .map_err(ImageError::from)
            })?,
            ManifestRef::Digest(d) => self.db.write(|tx| {
                tx.execute("DELETE FROM tags WHERE repo = ?1 AND digest = ?2", params![repo, d.as_str()])?;
                tx.execute("DELETE FROM manifests WHERE repo = ?1 AND digest = ?2", params![repo, d.as_str()])
                    .map_err(ImageError::from)
            })?,
        };
        if removed == 0 {
            return Err(unknown());
        }
        self.deletions.notify_one();
        Ok(())
    }

    /// Imports an image read from disk (see [`crate::archive`]) into `repo`, tagging its top
    /// manifest `tag`. Returns the top manifest's digest.
    pub fn import(&self, archive: &crate::archive::ImageArchive, repo: &str, tag: &str) -> Result<Digest, ImageError> {
        for (digest, path) in &archive.blobs {
            if self.blobs.size(digest).is_none() {
                let staged = self.blobs.staging_path();
                fs::copy(path, &staged).map_err(ImageError::io("copy", path))?;
                self.blobs.ingest(&staged, digest)?;
            }
            self.link_blob(repo, digest)?;
        }
        let mut top = None;
        let count = archive.manifests.len();
        for (i, (digest, media_type, bytes)) in archive.manifests.iter().enumerate() {
            let reference = if i + 1 == count { tag.to_owned() } else { digest.to_string() };
            top = Some(self.put_manifest(repo, &reference, Some(media_type), bytes)?);
        }
        top.ok_or(ImageError::ManifestInvalid(ManifestError::EmptyArchive))
    }

    /// Every tagged manifest, plus manifests that are neither tagged nor part of an index.
    pub fn list_images(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let rows: Vec<(String, Option<String>, String, String, i64, i64)> = self.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT m.repo, t.tag, m.digest, m.media_type, m.size,
                        COALESCE(t.updated_at, m.created_at) AS updated
                 FROM manifests m LEFT JOIN tags t ON t.repo = m.repo AND t.digest = m.digest
                 WHERE t.tag IS NOT NULL
                    OR NOT EXISTS (SELECT 1 FROM manifest_refs r
                                   JOIN manifests p ON p.digest = r.parent AND p.repo = m.repo
                                   WHERE r.child = m.digest)
                 ORDER BY m.repo, t.tag",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
            rows.collect()
        })?;
        let mut images = Vec::with_capacity(rows.len());
        for (repository, tag, digest, media_type, size, updated_at) in rows {
            let Ok(digest) = digest.parse::<Digest>() else { continue };
            let size = u64::try_from(size).unwrap_or(0) + self.referenced_size(&digest)?;
            images.push(ImageSummary { repository, tag, digest, media_type, size, updated_at });
        }
        Ok(images)
    }

    fn referenced_size(&self, manifest: &Digest) -> Result<u64, ImageError> {
        let children: Vec<String> = self.db.read(|c| {
            let mut stmt = c.prepare("SELECT child FROM manifest_refs WHERE parent = ?1")?;
            let rows = stmt.query_map([manifest.as_str()], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(children.iter().filter_map(|c| c.parse::<Digest>().ok()).filter_map(|d| self.blobs.size(&d)).sum())
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
