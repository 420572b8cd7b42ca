//! A pool's scaling loop: every 100 ms (and at once when a request arrives at an empty pool
//! or the config changes) it samples in-flight plus queued requests, asks the autoscaler how
//! many instances the revision needs, and starts or stops instances through the launcher.
//! A failed start is remembered (queued requests get its reason) and retried after a back-off.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::RevisionPool;

/// How often the loop samples the pool's load (the autoscaler's bucket width).
const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// After a failed start, how long before the next one.
pub(super) const RETRY_BACKOFF: Duration = Duration::from_secs(1);

pub(super) async fn scaling_loop(pool: Weak<RevisionPool>, closed: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let Some(p) = pool.upgrade() else { return };
        tokio::select! {
            _ = tick.tick() => {}
            _ = p.wake.notified() => {}
            _ = closed.cancelled() => return,
        }
        if closed.is_cancelled() {
            return;
        }
        scale_once(&p);
    }
}

fn scale_once(pool: &Arc<RevisionPool>) {
    let now = Instant::now();
    let mut to_stop = Vec::new();
    let to_start;
    {
        let mut st = pool.lock();
        st.prune_gone();
        let in_flight = st.in_flight();
        let sample = f64::from(in_flight + st.queued());
        st.autoscaler.record(now, sample);
        let current = u32::try_from(st.slots.len()).unwrap_or(u32::MAX) + st.starting;
        let mut desired = st.autoscaler.decide(now, current).desired;
        if st.queued() > 0 {
            // Requests are waiting for capacity: start what they need now, without waiting
            // for the windows to fill (what Knative's activator does for a cold revision).
            let limit = st.config.scaling.container_concurrency.max(1);
            let needed = (in_flight + st.queued()).div_ceil(limit).min(st.config.scaling.max_instances);
            desired = desired.max(needed);
        }
        st.meter.desired = desired;
        let backing_off = st.retry_after.is_some_and(|t| now < t);
        to_start = if backing_off { 0 } else { desired.saturating_sub(current) };
        st.starting += to_start;
        if desired < current && st.starting == 0 {
            let mut excess = current - desired;
            // Stop the instances idle the longest first; busy ones are never stopped.
            st.slots.sort_by_key(|s| (s.in_flight, s.idle_since));
            while excess > 0 && st.slots.first().is_some_and(|s| s.in_flight == 0) {
                to_stop.push(st.remove_slot(0).upstream);
                excess -= 1;
            }
        }
    }
    for upstream in to_stop {
        tracing::debug!(revision = %pool.revision, instance = %upstream.id(), "scaling down");
        tokio::spawn(pool.launcher.stop(upstream));
    }
    for _ in 0..to_start {
        tokio::spawn(start_one(pool.clone()));
    }
}

/// Starts one instance (already counted in `starting`) and adds it to the pool, or stops it
/// if the pool was closed and drained meanwhile.
async fn start_one(pool: Arc<RevisionPool>) {
    let began = Instant::now();
    let result = pool.launcher.launch().await;
    if result.is_ok() {
        pool.startups.observe(began.elapsed());
    }
    let unwanted = {
        let mut st = pool.lock();
        st.starting -= 1;
        match result {
            Ok(upstream) if st.drained => Some(upstream),
            Ok(upstream) => {
                st.last_error = None;
                st.retry_after = None;
                st.add(upstream);
                None
            }
            Err(error) => {
                tracing::warn!(revision = %pool.revision, %error, "instance failed to start");
                st.last_error = Some(error);
                st.retry_after = Some(Instant::now() + RETRY_BACKOFF);
                None
            }
        }
    };
    pool.changed.notify_waiters();
    if let Some(upstream) = unwanted {
        pool.launcher.stop(upstream).await;
    }
}
