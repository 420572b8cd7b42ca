//! Image housekeeping of a running server: abandoned upload sessions are expired on a timer,
//! and garbage collection of blobs and snapshots runs after every image delete (registry
//! `DELETE` or `wharf images delete`) and on request (`wharf images gc`). The control plane
//! says which images are still pinned by revisions, jobs and executions; the image store does
//! the collecting (`wharf_image::gc`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wharf_image::gc::GcReport;
use wharf_image::{ImageError, ImageStore, SnapshotStore};

/// What the server's image housekeeping needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageHousekeeping {
    pub images: ImageStore,
    pub snapshots: Arc<SnapshotStore>,
    pub control: wharf_control::ControlPlane,
    /// Blobs and snapshots modified more recently than this are kept (pushes in flight).
    pub grace: Duration,
}

/// A collection's result as the API reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HousekeepingReport {
    #[serde(flatten)]
    pub gc: GcReport,
    pub uploads_expired: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HousekeepingError {
    #[error("cannot list the images revisions and jobs pin")]
    Pinned(#[source] wharf_control::ControlError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl ImageHousekeeping {
    /// Expires abandoned uploads, then collects garbage now.
    pub async fn collect(&self) -> Result<HousekeepingReport, HousekeepingError> {
        let pinned = self.control.pinned_images().map_err(HousekeepingError::Pinned)?;
        let this = self.clone();
        let span = tracing::info_span!("image_gc", pinned = pinned.len());
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let uploads_expired = this.images.expire_uploads()?;
            let gc = this.images.collect_garbage(&this.snapshots, &pinned, this.grace)?;
            Ok(HousekeepingReport { gc, uploads_expired })
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
    }

    /// Runs until `shutdown`: expires uploads every `sweep` (a quarter of the upload expiry,
    /// between 1 s and 5 min) and collects garbage after deletions.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let sweep = (self.images.limits().upload_expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        let deletions = self.images.deletions();
        tokio::spawn(
            async move {
                let mut timer = tokio::time::interval(sweep);
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = timer.tick() => {
                            let images = self.images.clone();
                            match tokio::task::spawn_blocking(move || images.expire_uploads()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => tracing::warn!(error = %e, "expiring uploads failed"),
                                Err(e) => tracing::warn!(error = %e, "expiring uploads failed"),
                            }
                        }
                        _ = deletions.notified() => {
                            if let Err(e) = self.collect().await {
                                tracing::warn!(error = %e, "garbage collection after a delete failed");
                            }
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("image_housekeeping")),
        )
    }
}
