//! Stopping an instance: SIGTERM, the grace period (10 s by default), then SIGKILL, carried
//! out by the instance's shim. Returns once the reaper has released everything.

use super::{Instance, InstanceState, InstanceStatus};
use crate::runtime::Runtime;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tracing::Instrument as _;

impl Runtime {
    /// Stops `instance` gracefully and waits until it is torn down, in the instance's span.
    pub async fn stop(&self, instance: &Instance) -> InstanceStatus {
        let span = tracing::info_span!("instance", id = %instance.id);
        async {
            tracing::debug!(grace = ?instance.grace_period, "stopping");
            instance.set_state(InstanceState::Stopping);
            send_stop(instance, instance.grace_period).await;
            instance.wait_terminal().await
        }
        .instrument(span)
        .await
    }

    /// Kills `instance` at once for a platform `reason` (it ends `Failed` with that reason).
    pub(crate) async fn kill(&self, instance: &Instance, reason: String) {
        tracing::debug!(%reason, "killing");
        *instance.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        send_stop(instance, Duration::ZERO).await;
    }
}

async fn send_stop(instance: &Instance, grace: Duration) {
    let mut control = instance.control.lock().await;
    if let Some(stdin) = control.as_mut() {
        let command = format!("stop {}\n", grace.as_millis());
        if stdin.write_all(command.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            // The shim is already gone; the reaper takes it from here.
            *control = None;
        }
    }
}
