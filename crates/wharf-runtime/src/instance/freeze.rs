//! CPU only during requests, Cloud Run's default CPU allocation: an instance whose template
//! is throttled ([`CpuAllocation::throttled`](wharf_control::backend::CpuAllocation)) runs
//! while it starts (until ready), while at least one request is in flight, and while it stops;
//! between requests its cgroup is frozen ([`crate::cgroup::Freezer`]), so a background loop
//! makes no progress and the instance uses no CPU at all.
//!
//! [`CpuGate`] counts the instance's requests in flight. The router tells it when a request
//! begins (before the request is written to the instance: the first one thaws the cgroup, a
//! write that returns with every process runnable, so the request sees no delay beyond that
//! system call) and when it ends (its response body or upgraded stream is done). A liveness
//! probe counts as a request, so a frozen, healthy instance answers its probes.
//!
//! When the count drops to zero the instance is frozen after [`FREEZE_GRACE`] if no request
//! came meanwhile ([`freeze_when_idle`], one task per throttled instance). The grace lets the
//! app finish what a response leaves behind (flushing a log line, closing a keep-alive
//! read) and saves a freeze and a thaw between requests that follow each other closely.
//! Before the instance is stopped or killed it is thawed for good ([`CpuGate::release`]), so
//! that it can handle SIGTERM and exit gracefully.
//!
//! Counting and freezing are under one lock per instance, so a freeze can never land after a
//! thaw that a newer request needed. Not the gate's business: how many requests an instance
//! may take (the router's pool) and job tasks (never throttled).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cgroup::Freezer;

/// How long an instance keeps its CPU after its last request ended.
pub const FREEZE_GRACE: Duration = Duration::from_millis(50);

/// An instance's CPU allocation: always on, or frozen between requests.
#[derive(Debug)]
pub(crate) struct CpuGate {
    /// `None`: CPU always on (`cpuIdle: false`, job tasks).
    freezer: Option<Freezer>,
    state: Mutex<GateState>,
    /// Raised when the last request in flight ends.
    went_idle: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct GateState {
    in_flight: u32,
    frozen: bool,
    /// Thawed for good: the instance is stopping.
    released: bool,
    /// Counts the times the instance went idle, so that a freeze waits for the latest.
    idle_count: u64,
}

impl CpuGate {
    pub(crate) fn always_on() -> CpuGate {
        CpuGate { freezer: None, state: Mutex::default(), went_idle: tokio::sync::Notify::new() }
    }

    pub(crate) fn throttled(freezer: Freezer) -> CpuGate {
        CpuGate { freezer: Some(freezer), ..CpuGate::always_on() }
    }

    pub(crate) fn is_throttled(&self) -> bool {
        self.freezer.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request begins: thaws the instance if it is frozen; returns once it can run.
    pub(crate) fn request_started(&self) {
        let Some(freezer) = &self.freezer else { return };
        let mut st = self.lock();
        st.in_flight += 1;
        if st.frozen {
            st.frozen = false;
            if let Err(e) = freezer.thaw() {
                // The cgroup is gone: the instance exited, and the request fails as it would.
                tracing::debug!(error = %e, "thawing for a request failed");
            }
        }
    }

    /// A request ended; the last one arms the freeze.
    pub(crate) fn request_ended(&self) {
        if self.freezer.is_none() {
            return;
        }
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            st.idle_count += 1;
            drop(st);
            self.went_idle.notify_one();
        }
    }

    /// The instance is ready: from now on it is frozen whenever it is idle.
    pub(crate) fn arm(&self) {
        if self.freezer.is_some() && self.lock().in_flight == 0 {
            self.request_started();
            self.request_ended();
        }
    }

    /// Thaws the instance for good, before it is asked to stop or killed.
    pub(crate) fn release(&self) {
        let Some(freezer) = &self.freezer else { return };
        let mut st = self.lock();
        st.released = true;
        if st.frozen {
            st.frozen = false;
            if let Err(e) = freezer.thaw() {
                tracing::debug!(error = %e, "thawing before the stop failed");
            }
        }
    }

    /// Freezes the instance if it has stayed idle since it went idle the `idle_count`th time.
    fn freeze_if_still_idle(&self, idle_count: u64) {
        let Some(freezer) = &self.freezer else { return };
        let mut st = self.lock();
        if st.in_flight > 0 || st.frozen || st.released || st.idle_count != idle_count {
            return;
        }
        match freezer.freeze() {
            Ok(()) => st.frozen = true,
            Err(e) => tracing::debug!(error = %e, "freezing an idle instance failed"),
        }
    }

    fn idle_count(&self) -> u64 {
        self.lock().idle_count
    }

    /// Whether the gate froze the instance (the kernel may still be freezing it).
    pub(crate) fn is_frozen(&self) -> bool {
        self.lock().frozen
    }
}

/// Freezes `instance` each time it stays idle for [`FREEZE_GRACE`], until it stops being
/// ready (stopping, failed, gone). Spawned once the instance is ready, for throttled ones.
pub(crate) async fn freeze_when_idle(instance: Arc<super::Instance>) {
    let gate = &instance.cpu;
    let mut status = instance.status.subscribe();
    loop {
        tokio::select! {
            () = gate.went_idle.notified() => {}
            _ = status.wait_for(|s| s.state != super::InstanceState::Ready) => return,
        }
        let idle_count = gate.idle_count();
        tokio::select! {
            () = tokio::time::sleep(FREEZE_GRACE) => {}
            _ = status.wait_for(|s| s.state != super::InstanceState::Ready) => return,
        }
        gate.freeze_if_still_idle(idle_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Layout;

    /// A freezer whose file is a plain file in a temporary directory (v1 layout): what the
    /// gate writes, in order, without a cgroup.
    fn recording_gate(dir: &std::path::Path) -> (CpuGate, std::path::PathBuf) {
        let freezer = Freezer::for_directory(Layout::V1, dir.to_owned());
        (CpuGate::throttled(freezer), dir.join("freezer.state"))
    }

    #[test]
    fn a_request_thaws_and_only_the_latest_idle_period_freezes() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, file) = recording_gate(dir.path());
        let read = || std::fs::read_to_string(&file).unwrap_or_default();
        gate.arm();
        let first_idle = gate.idle_count();
        gate.freeze_if_still_idle(first_idle);
        assert_eq!((read().as_str(), gate.is_frozen()), ("FROZEN", true));

        // The next request thaws before it goes on, two overlap, and the end of the first
        // does not arm a freeze while the second is in flight.
        gate.request_started();
        assert_eq!((read().as_str(), gate.is_frozen()), ("THAWED", false));
        gate.request_started();
        gate.request_ended();
        gate.freeze_if_still_idle(gate.idle_count());
        assert_eq!(read(), "THAWED", "frozen with a request in flight");
        gate.request_ended();
        let stale = gate.idle_count();
        // A request that came and went during the grace period: the older idle period does
        // not freeze, the newer one does.
        gate.request_started();
        gate.request_ended();
        gate.freeze_if_still_idle(stale);
        assert_eq!(read(), "THAWED");
        gate.freeze_if_still_idle(gate.idle_count());
        assert_eq!(read(), "FROZEN");

        // Stopping thaws for good.
        gate.release();
        assert_eq!((read().as_str(), gate.is_frozen()), ("THAWED", false));
        gate.request_started();
        gate.request_ended();
        gate.freeze_if_still_idle(gate.idle_count());
        assert_eq!(read(), "THAWED", "frozen after the release");
    }

    #[test]
    fn an_always_on_gate_never_writes() {
        let gate = CpuGate::always_on();
        gate.arm();
        gate.request_started();
        gate.request_ended();
        gate.freeze_if_still_idle(gate.idle_count());
        gate.release();
        assert!(!gate.is_frozen() && !gate.is_throttled());
    }
}
