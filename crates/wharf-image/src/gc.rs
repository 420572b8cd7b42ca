//! Garbage collection of blobs and layer snapshots no image needs any more.
//!
//! A blob is live when a stored manifest reaches it (the manifest itself, its config and
//! layers, an index's children, transitively through `manifest_refs`) or when it belongs to
//! an image the caller pins (the control plane pins every revision's, job's and execution's
//! image, so instances, rollbacks and job runs keep their layers after the registry forgets
//! the tag). Everything else is removed, with two guards for work in flight:
//!
//! - **grace**: a blob or snapshot modified less than `grace` ago is kept. A push uploads its
//!   blobs before the manifest that names them; the blob's mtime is its upload time (and is
//!   refreshed when a client finds it already present: `BlobStore::touch`), so a push
//!   younger than `grace` survives any collection. Upload sessions themselves are files in
//!   `uploads/`, not blobs, and only expire (`ImageStore::expire_uploads`).
//! - **the collection lock**: manifests are checked and recorded under a shared lock that a
//!   collection takes exclusively, so no manifest can come to name a blob between the moment
//!   a collection decides it is garbage and its removal.
//!
//! It decides nothing about which images are pinned: that is the caller's knowledge.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::{Duration, SystemTime};

use wharf_store::rusqlite::params;

use crate::content::ImageStore;
#[cfg(test)]
use crate::content::StoreLimits;
use crate::error::ImageError;
use crate::resolve::ResolvedImage;
use crate::snapshot::SnapshotStore;

/// What a collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub snapshots_removed: u64,
}

impl ImageStore {
    /// Removes blobs and snapshots that neither a stored manifest nor `pinned` reaches and
    /// that were not modified within `grace`. Blocking: call from a blocking thread.
    pub fn collect_garbage(
        &self,
        snapshots: &SnapshotStore,
        pinned: &[ResolvedImage],
        grace: Duration,
    ) -> Result<GcReport, ImageError> {
        let _exclusive = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let live = self.live_digests(pinned)?;
        let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let recent = |meta: &fs::Metadata| meta.modified().map_or(true, |t| t >= cutoff);
        let mut report = GcReport::default();

        let blobs_dir = self.blobs().digests_dir();
        let mut removed = Vec::new();
        for entry in fs::read_dir(&blobs_dir).map_err(ImageError::io("list", &blobs_dir))?.flatten() {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            let Ok(meta) = entry.metadata() else { continue };
            if live.contains(&digest) || recent(&meta) {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    report.blobs_removed += 1;
                    report.bytes_freed += meta.len();
                    removed.push(digest);
                }
                Err(e) => tracing::warn!(%digest, error = %e, "cannot remove unreferenced blob"),
            }
        }
        self.db().write(|tx| {
            for digest in &removed {
                tx.execute("DELETE FROM repo_blobs WHERE digest = ?1", [digest])?;
                tx.execute("DELETE FROM manifest_refs WHERE parent = ?1", params![digest])?;
            }
            Ok::<_, ImageError>(())
        })?;

        let snapshots_dir = snapshots.snapshots_dir();
        for entry in fs::read_dir(&snapshots_dir).map_err(ImageError::io("list", &snapshots_dir))?.flatten() {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            let Ok(meta) = entry.metadata() else { continue };
            if live.contains(&digest) || recent(&meta) {
                continue;
            }
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => report.snapshots_removed += 1,
                Err(e) => tracing::warn!(%digest, error = %e, "cannot remove unreferenced snapshot"),
            }
        }
        tracing::info!(
            blobs = report.blobs_removed,
            bytes = report.bytes_freed,
            snapshots = report.snapshots_removed,
            "image garbage collection done"
        );
        Ok(report)
    }

    /// Every digest a stored manifest or a pinned image reaches.
    fn live_digests(&self, pinned: &[ResolvedImage]) -> Result<HashSet<String>, ImageError> {
        let (manifests, refs): (Vec<String>, Vec<(String, String)>) = self.db().read(|c| {
            let mut stmt = c.prepare("SELECT DISTINCT digest FROM manifests")?;
            let manifests = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
            let mut stmt = c.prepare("SELECT parent, child FROM manifest_refs")?;
            let refs = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            Ok((manifests, refs))
        })?;
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for (parent, child) in refs {
            children.entry(parent).or_default().push(child);
        }
        let mut live = HashSet::new();
        let mut queue: Vec<String> = manifests;
        for image in pinned {
            queue.push(image.digest.to_string());
            queue.extend(image.layers.iter().map(ToString::to_string));
        }
        while let Some(digest) = queue.pop() {
            if let Some(next) = children.get(&digest) {
                queue.extend(next.iter().filter(|c| !live.contains(*c)).cloned());
            }
            live.insert(digest);
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::digest::Digest;
    use crate::manifest::{OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};

    struct Fixture {
        _dir: tempfile::TempDir,
        images: ImageStore,
        snapshots: SnapshotStore,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = wharf_store::Store::open(&dir.path().join("state.db")).unwrap();
        let images = ImageStore::open(dir.path(), db).unwrap();
        let snapshots = SnapshotStore::open(&dir.path().join("snapshots"), images.blobs().clone()).unwrap();
        Fixture { _dir: dir, images, snapshots }
    }

    /// Pushes a one-layer image through the store's upload path; returns (manifest, layer).
    fn push(images: &ImageStore, repo: &str, tag: &str, content: &[u8]) -> (Digest, Digest, Digest) {
        let upload = |bytes: &[u8]| {
            let digest = Digest::of(bytes);
            let id = images.start_upload(repo).unwrap();
            let (mut file, _) = images.open_upload_for_append(repo, &id, None).unwrap();
            std::io::Write::write_all(&mut file, bytes).unwrap();
            images.finish_upload(repo, &id, &digest).unwrap();
            digest
        };
        let mut layer_tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        layer_tar.append_data(&mut header, "file", content).unwrap();
        let layer_bytes = layer_tar.into_inner().unwrap();
        let layer = upload(&layer_bytes);
        let config_bytes = format!(r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"c":"{tag}"}}}}}}"#);
        let config = upload(config_bytes.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config}","size":{}}},"layers":[{{"mediaType":"{OCI_LAYER_TAR}","digest":"{layer}","size":{}}}]}}"#,
            config_bytes.len(),
            layer_bytes.len()
        );
        let digest = images.put_manifest(repo, tag, Some(OCI_MANIFEST), manifest.as_bytes()).unwrap();
        (digest, config, layer)
    }

    /// Sets a blob's or snapshot's mtime to two hours ago, as if pushed then.
    fn age(path: &std::path::Path) {
        let then = SystemTime::now() - Duration::from_secs(7200);
        let file = fs::File::open(path).unwrap();
        file.set_modified(then).unwrap();
    }

    fn age_all(f: &Fixture) {
        for dir in [f.images.blobs().digests_dir(), f.snapshots.snapshots_dir()] {
            for entry in fs::read_dir(dir).unwrap() {
                age(&entry.unwrap().path());
            }
        }
    }

    const GRACE: Duration = Duration::from_secs(3600);

    #[test]
    fn deleted_images_are_collected_and_live_ones_kept() {
        let f = fixture();
        let (gone, gone_config, gone_layer) = push(&f.images, "team/app", "old", b"old");
        let (kept, kept_config, kept_layer) = push(&f.images, "team/app", "new", b"new");
        for layer in [&gone_layer, &kept_layer] {
            f.snapshots.ensure(layer).unwrap();
        }
        f.images.delete_manifest("team/app", gone.as_str()).unwrap();
        age_all(&f);

        let report = f.images.collect_garbage(&f.snapshots, &[], GRACE).unwrap();
        assert_eq!((report.blobs_removed, report.snapshots_removed), (3, 1), "{report:?}");
        for d in [&gone, &gone_config, &gone_layer] {
            assert!(!f.images.blobs().path(d).exists(), "{d} should be gone");
        }
        assert!(!f.snapshots.path(&gone_layer).exists());
        for d in [&kept, &kept_config, &kept_layer] {
            assert!(f.images.blobs().path(d).exists(), "{d} should be kept");
        }
        assert!(f.snapshots.path(&kept_layer).exists());
        assert_eq!(f.images.blob_in_repo("team/app", &gone_layer).unwrap(), None);
        // A second run finds nothing more.
        assert_eq!(f.images.collect_garbage(&f.snapshots, &[], GRACE).unwrap(), GcReport::default());
    }

    #[test]
    fn pinned_images_and_young_blobs_survive() {
        let f = fixture();
        let (pinned, _, pinned_layer) = push(&f.images, "svc", "v1", b"pinned");
        let resolver_view = ResolvedImage {
            repository: "svc".into(),
            digest: pinned.clone(),
            config: Default::default(),
            layers: vec![pinned_layer.clone()],
        };
        f.snapshots.ensure(&pinned_layer).unwrap();
        f.images.delete_manifest("svc", pinned.as_str()).unwrap();
        age_all(&f);
        // A blob of a push in progress: uploaded, not yet named by a manifest, young.
        let id = f.images.start_upload("svc").unwrap();
        let (mut file, _) = f.images.open_upload_for_append("svc", &id, None).unwrap();
        std::io::Write::write_all(&mut file, b"in flight").unwrap();
        f.images.finish_upload("svc", &id, &Digest::of(b"in flight")).unwrap();
        // And a chunk of an upload session still open.
        let open = f.images.start_upload("svc").unwrap();
        let (mut file, _) = f.images.open_upload_for_append("svc", &open, None).unwrap();
        std::io::Write::write_all(&mut file, b"partial").unwrap();

        let report = f.images.collect_garbage(&f.snapshots, std::slice::from_ref(&resolver_view), GRACE).unwrap();
        assert_eq!(report, GcReport::default());
        assert!(f.images.blobs().path(&pinned).exists());
        assert!(f.images.blobs().path(&pinned_layer).exists());
        assert!(f.snapshots.path(&pinned_layer).exists());
        assert!(f.images.blobs().path(&Digest::of(b"in flight")).exists());
        assert_eq!(f.images.upload_offset("svc", &open).unwrap(), 7);

        // Unpinned and old, they go.
        age_all(&f);
        let report = f.images.collect_garbage(&f.snapshots, &[], GRACE).unwrap();
        // The pinned manifest, its config and layer, and the finished upload's blob.
        assert_eq!((report.blobs_removed, report.snapshots_removed), (4, 1), "{report:?}");
    }

    #[test]
    fn abandoned_uploads_expire() {
        let dir = tempfile::tempdir().unwrap();
        let db = wharf_store::Store::open(&dir.path().join("state.db")).unwrap();
        let limits = StoreLimits { max_uploads: 2, ..StoreLimits::default() };
        let images = ImageStore::open(dir.path(), db).unwrap().with_limits(limits);
        let stale = images.start_upload("r").unwrap();
        let fresh = images.start_upload("r").unwrap();
        match images.start_upload("r") {
            Err(ImageError::TooManyUploads { limit }) => assert_eq!(limit, 2),
            other => panic!("expected TooManyUploads, got {other:?}"),
        }
        // The stale session's file was last written two hours ago; its row is as old.
        images
            .db()
            .write(|tx| {
                tx.execute("UPDATE uploads SET started_at = started_at - 7200 WHERE id = ?1", [&stale])
                    .map_err(ImageError::from)
            })
            .unwrap();
        age(&dir.path().join("uploads").join(&stale));
        fs::write(dir.path().join("uploads/orphan"), b"left by a crash").unwrap();
        age(&dir.path().join("uploads/orphan"));

        assert_eq!(images.expire_uploads().unwrap(), 1);
        assert!(matches!(images.upload_offset("r", &stale), Err(ImageError::UploadUnknown(_))));
        assert_eq!(images.upload_offset("r", &fresh).unwrap(), 0);
        assert!(!dir.path().join("uploads/orphan").exists());
        images.start_upload("r").unwrap();
    }
}
