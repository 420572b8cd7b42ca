//! A build's disk quota, enforced while it runs: what the build writes lands in new layer
//! directories of buildah's storage (`overlay/<id>` or `vfs/dir/<id>`: the base images it
//! pulls, each step's working container, the layers it commits). A [`Watch`] notes the
//! directories present when the build starts, then every [`PERIOD`] adds up the disk the new
//! ones use; past the quota it records why and cancels the build, whose processes are then
//! killed like a cancelled build's.
//!
//! What this does not do: stop a write at the byte (the build can overshoot by what it writes
//! in one period), or tell two concurrent builds' layers apart (with `--build-concurrency`
//! above 1 each build's count includes the others' new layers, which errs on the strict side).
//! The layer cache kept between builds is bounded separately (`max_storage_bytes`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often usage is measured.
pub const PERIOD: Duration = Duration::from_millis(500);

/// The layer directories of buildah's storage, by driver.
fn layer_dirs(storage: &Path) -> [PathBuf; 2] {
    [storage.join("overlay"), storage.join("vfs").join("dir")]
}

/// The layer directories present now.
pub fn snapshot(storage: &Path) -> HashSet<PathBuf> {
    let mut present = HashSet::new();
    for dir in layer_dirs(storage) {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            present.extend(entries.flatten().map(|e| e.path()));
        }
    }
    present
}

/// Bytes used by the layer directories that are not in `before`.
pub fn written_since(storage: &Path, before: &HashSet<PathBuf>) -> u64 {
    snapshot(storage).into_iter().filter(|p| !before.contains(p)).map(|p| crate::buildah::disk_usage(&p)).sum()
}

/// A running quota check; [`Watch::stop`] ends it.
#[derive(Debug)]
pub struct Watch {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Watch {
    /// Starts checking `storage` against `quota_bytes`. Past it, `reason` gets `over(used)`
    /// (unless a reason is there already) and `cancel` fires.
    pub fn start<R: Send + 'static>(
        storage: &Path,
        quota_bytes: u64,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<R>>>,
        over: impl Fn(u64) -> R + Send + 'static,
    ) -> Watch {
        let stop = CancellationToken::new();
        let storage = storage.to_owned();
        let before = snapshot(&storage);
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let before = Arc::new(before);
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stopped.cancelled() => return,
                }
                let (storage, before) = (storage.clone(), before.clone());
                let used = tokio::task::spawn_blocking(move || written_since(&storage, &before)).await.unwrap_or(0);
                if used > quota_bytes {
                    tracing::info!(used, quota_bytes, "build over its disk quota: stopping it");
                    reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert_with(|| over(used));
                    cancel.cancel();
                    return;
                }
            }
        });
        Watch { stop, task: Some(task) }
    }

    /// Stops checking (the build's steps are over).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_layers_past_the_quota_cancel_the_build_and_say_how_much() {
        let storage = tempfile::tempdir().unwrap();
        let old = storage.path().join("overlay/old/diff");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("cached"), vec![1u8; 4 << 20]).unwrap();
        let before = snapshot(storage.path());
        assert_eq!(written_since(storage.path(), &before), 0, "a cached layer is not the build's");
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let watch = Watch::start(storage.path(), 1 << 20, cancel.clone(), reason.clone(), |used| used);
        let new = storage.path().join("overlay/new/diff");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("big"), vec![1u8; 2 << 20]).unwrap();
        assert!(written_since(storage.path(), &before) >= 2 << 20);
        tokio::time::timeout(Duration::from_secs(30), cancel.cancelled()).await.unwrap();
        let used = reason.lock().unwrap().unwrap();
        assert!(used >= 2 << 20, "{used}");
        watch.stop().await;
    }
}
