//! Stopping an instance: thawed for good if its CPU was throttled, then SIGTERM, the grace
//! period (10 s by default), then SIGKILL, carried out by the instance supervisor. Returns
//! once the reaper has released everything.

use super::{Instance, InstanceState, InstanceStatus};
use crate::runtime::Runtime;
use crate::supervisor::SupervisorCommand;
use std::time::Duration;
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
            self.send_stop(instance, grace).await;
            instance.wait_terminal().await
        }
        .instrument(span)
        .await
    }

    /// Sends signal `signo` to the container's main process; false if it has exited.
    pub async fn signal(&self, instance: &Instance, signo: i32) -> bool {
        if instance.has_exited() {
            return false;
        }
        let command = SupervisorCommand::Signal { id: instance.id.clone(), signal: signo };
        self.inner.supervisor.command(&command).await
    }

    /// Kills `instance` at once for a platform `reason` (it ends `Failed` with that reason).
    pub(crate) async fn kill(&self, instance: &Instance, reason: String) {
        tracing::debug!(%reason, "killing");
        *instance.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        instance.cpu.release();
        self.send_stop(instance, Duration::ZERO).await;
    }

    async fn send_stop(&self, instance: &Instance, grace: Duration) {
        if instance.has_exited() {
            return;
        }
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.inner.supervisor.command(&SupervisorCommand::Stop { id: instance.id.clone(), grace_ms }).await;
    }
}
