//! Stopping an instance: thawed for good if its CPU was throttled, then SIGTERM, the grace
//! period (10 s by default), then SIGKILL, carried out by the instance's shim. Returns once the reaper has released everything.

use super::{Instance, InstanceState, InstanceStatus};
use crate::runtime::Runtime;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tracing::Instrument as _;

impl Runtime {
    /// Stops `instance` gracefully (its own grace period) and waits until it is torn down.
    pub async fn stop(&self, instance: &Instance) -> InstanceStatus {
        self.stop_within(instance, instance.grace_period).await
    }

    /// Stops `instance`: SIGTERM, SIGKILL after `grace`; waits until it is torn down, in the
    /// instance's span.
    pub async fn stop_within(&self, instance: &Instance, grace: Duration) -> InstanceStatus {
        let span = tracing::info_span!("instance", id = %instance.id);
        async {
            tracing::debug!(?grace, "stopping");
            // A frozen instance could not handle SIGTERM: it gets its CPU back for good first.
            instance.cpu.release();
            instance.set_state(InstanceState::Stopping);
            send_stop(instance, grace).await;
            instance.wait_terminal().await
        }
        .instrument(span)
        .await
    }

    /// Sends signal `signo` to the container's main process; false if its shim is gone.
    pub async fn signal(&self, instance: &Instance, signo: i32) -> bool {
        send_command(instance, &format!("signal {signo}\n")).await
    }

    /// Kills `instance` at once for a platform `reason` (it ends `Failed` with that reason).
    pub(crate) async fn kill(&self, instance: &Instance, reason: String) {
        tracing::debug!(%reason, "killing");
        *instance.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        instance.cpu.release();
        send_stop(instance, Duration::ZERO).await;
    }
}

async fn send_stop(instance: &Instance, grace: Duration) {
    send_command(instance, &format!("stop {}\n", grace.as_millis())).await;
}

/// Writes one command line to the instance's shim; false if the shim is gone.
async fn send_command(instance: &Instance, command: &str) -> bool {
    let mut control = instance.control.lock().await;
    let Some(stdin) = control.as_mut() else { return false };
    if stdin.write_all(command.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
        // The shim is already gone; the reaper takes it from here.
        *control = None;
        return false;
    }
    true
}
